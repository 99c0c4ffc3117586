//! `kvfs-bench follow`: read-only mounts that follow a writer mount, both on one S3
//! endpoint with latency, for several follow intervals.
//!
//! - **lag**: the writer mount creates a file, writes a line and fsyncs it; the time
//!   from the fsync's return until the follower shows the file with that content
//!   (looked at every millisecond), `--samples` times: median and p99.
//! - **idle cost**: requests the follower makes while nothing changes, over
//!   `--idle-secs`, counted at the server (GET, HEAD and LIST: the idle writer only
//!   PUTs its lease) and scaled to an hour, with their price at S3 request prices.
//!
//! - **retention cost**: a writer (the engine in this process) overwrites
//!   `--retention-keys` values continuously, checkpointing and collecting garbage
//!   every few seconds, once per retention period in `--retain-secs` (all at once,
//!   on separate prefixes): stored bytes over `--retention-run-secs`, against the
//!   live bytes.
//!
//! Rows go to `follow.csv`, the lag of every sample to `follow.png`, the stored
//! bytes to `follow_retention.csv` and `follow_retention.png`, in `--out`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvfs_testkit::server::{FaultConfig, ServerOptions, TestS3Server};

use crate::support::mount::{mount_kvfs, BenchResult};
use crate::support::plot;
use crate::support::report::{quantile, Table};
use crate::support::server::SimulatedLatency;

#[derive(clap::Args, Debug)]
pub struct FollowArgs {
    /// Fsync'd files whose lag is measured, per interval.
    #[arg(long, default_value_t = 60)]
    samples: usize,
    /// Follow intervals to compare (ms).
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000")]
    intervals_ms: Vec<u64>,
    /// Seconds the follower is watched while idle, per interval.
    #[arg(long, default_value_t = 60)]
    idle_secs: u64,
    #[command(flatten)]
    latency: SimulatedLatency,
    /// Retention periods to compare (seconds; 0 keeps no snapshot).
    #[arg(long, value_delimiter = ',', default_value = "0,30,120")]
    retain_secs: Vec<u64>,
    /// How long the retention workload runs.
    #[arg(long, default_value_t = 150)]
    retention_run_secs: u64,
    /// Keys the retention workload overwrites (512-byte values).
    #[arg(long, default_value_t = 4000)]
    retention_keys: u32,
    /// A short run: 15 samples, 10 idle seconds, retention 0/5/10 s over 20 s.
    #[arg(long)]
    quick: bool,
    /// Where to write follow.csv and follow.png.
    #[arg(long)]
    out: Option<PathBuf>,
}

struct Outcome {
    interval_ms: u64,
    lags_ms: Vec<f64>,
    idle_secs: f64,
    idle_gets: u64,
    idle_lists: u64,
    idle_puts: u64,
    idle_cost_usd: f64,
}

pub async fn run(mut a: FollowArgs) -> BenchResult<()> {
    if a.quick {
        a.samples = a.samples.min(15);
        a.idle_secs = a.idle_secs.min(10);
        a.retain_secs = vec![0, 5, 10];
        a.retention_run_secs = a.retention_run_secs.min(20);
    }
    if a.samples == 0 || a.intervals_ms.is_empty() {
        return Err("need --samples > 0 and at least one interval".into());
    }
    let work = std::env::temp_dir().join(format!("kvfs-bench-follow-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let root = work.join("s3-follow");
    std::fs::create_dir_all(&root)?;
    let server = TestS3Server::start(
        &root,
        ServerOptions {
            faults: FaultConfig {
                put_latency: Duration::from_millis(a.latency.put_latency_ms),
                get_latency: Duration::from_millis(a.latency.get_latency_ms),
                ..FaultConfig::default()
            },
            ..ServerOptions::default()
        },
    )
    .await?;
    server.create_bucket("bench")?;
    let mut outcomes = Vec::new();
    for &interval in &a.intervals_ms {
        let (samples, idle_secs) = (a.samples, a.idle_secs);
        let work = work.clone();
        let server = &server;
        let o =
            tokio::task::block_in_place(|| measure(server, &work, interval, samples, idle_secs))?;
        eprintln!(
            "interval {interval} ms: lag p50 {:.0} ms, p99 {:.0} ms; idle {:.0} GETs/h",
            quantile(&o.lags_ms, 0.5),
            quantile(&o.lags_ms, 0.99),
            o.idle_gets as f64 * 3600.0 / o.idle_secs
        );
        outcomes.push(o);
    }
    let retention = retention_cost(&server, &a).await?;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&work);
    report(&a, &outcomes)?;
    report_retention(&a, &retention)
}

/// Stored bytes over time of one retention period.
struct Retention {
    retain_secs: u64,
    /// (seconds, stored bytes, live bytes)
    timeline: Vec<(f64, u64, u64)>,
}

async fn retention_cost(server: &TestS3Server, a: &FollowArgs) -> BenchResult<Vec<Retention>> {
    let mut runs = Vec::new();
    for &retain in &a.retain_secs {
        let store: kvfs::store::DynStore =
            std::sync::Arc::new(kvfs::store::s3::S3Store::from_client(
                server.client(),
                "bench",
                &format!("retention-{retain}"),
            ));
        let (keys, secs) = (a.retention_keys.max(1), a.retention_run_secs);
        runs.push(tokio::spawn(async move {
            retention_run(store, retain, keys, secs)
                .await
                .map_err(|e| e.to_string())
        }));
    }
    let mut out = Vec::new();
    for r in runs {
        out.push(r.await??);
    }
    Ok(out)
}

async fn retention_run(
    store: kvfs::store::DynStore,
    retain: u64,
    keys: u32,
    secs: u64,
) -> BenchResult<Retention> {
    use kvfs::db::{Db, GcOptions, Options};
    let opts = Options {
        segment_bytes: 256 << 10,
        checkpoint_bytes: 1 << 20,
        gc: GcOptions {
            background: false,
            grace: Duration::ZERO,
            retain: Duration::from_secs(retain),
            ..GcOptions::default()
        },
        ..Options::default()
    };
    let db = Db::open_store(store, opts).await?;
    let start = Instant::now();
    let mut timeline = Vec::new();
    let mut next_gc = Duration::from_secs(5);
    let mut i = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        let k = (i.wrapping_mul(2654435761) % u64::from(keys)) as u32;
        let value = format!("{i:016} ").repeat(31);
        db.put(format!("key{k:06}").as_bytes(), &value.as_bytes()[..512])
            .await?;
        i += 1;
        if i % 200 == 0 {
            db.sync().await?;
            // About 1 MiB/s of overwrites.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if start.elapsed() >= next_gc {
            db.sync().await?;
            db.gc(&mut |_| {}).await?;
            let s = db.stats().await?;
            timeline.push((start.elapsed().as_secs_f64(), s.stored_bytes, s.live_bytes));
            next_gc += Duration::from_secs(5);
        }
    }
    db.close().await?;
    Ok(Retention {
        retain_secs: retain,
        timeline,
    })
}

fn report_retention(a: &FollowArgs, runs: &[Retention]) -> BenchResult<()> {
    let title = format!(
        "stored bytes under overwrites ({} keys of 512 B, about 1 MiB/s, GC every 5 s) by retention period",
        a.retention_keys
    );
    let mut t = Table::new(
        &title,
        &["retain_secs", "seconds", "stored_bytes", "live_bytes"],
    );
    for r in runs {
        for (sec, stored, live) in &r.timeline {
            t.row(vec![
                r.retain_secs.to_string(),
                format!("{sec:.0}"),
                stored.to_string(),
                live.to_string(),
            ]);
        }
    }
    let mut summary = Table::new(
        "retention cost at the end of the run",
        &["retain_secs", "stored_mib", "live_mib", "stored_per_live"],
    );
    for r in runs {
        if let Some((_, stored, live)) = r.timeline.last() {
            let mib = |b: u64| b as f64 / (1 << 20) as f64;
            summary.row(vec![
                r.retain_secs.to_string(),
                format!("{:.1}", mib(*stored)),
                format!("{:.1}", mib(*live)),
                format!("{:.2}", *stored as f64 / (*live).max(1) as f64),
            ]);
        }
    }
    print!("{}", summary.render());
    let Some(out) = &a.out else {
        return Ok(());
    };
    t.write_csv(out, "follow_retention")?;
    eprintln!("wrote {}", out.join("follow_retention.csv").display());
    let series: Vec<plot::Series> = runs
        .iter()
        .map(|r| plot::Series {
            name: format!("--retain-secs {}", r.retain_secs),
            points: r
                .timeline
                .iter()
                .map(|(s, b, _)| (*s, *b as f64 / (1 << 20) as f64))
                .collect(),
        })
        .collect();
    plot::lines(
        &out.join("follow_retention.png"),
        &plot::Chart {
            title: "Stored bytes of a store under overwrites, by retention period",
            x_label: "seconds",
            y_label: "stored MiB",
            log_x: false,
            log_y: false,
        },
        &series,
    );
    Ok(())
}

fn measure(
    server: &TestS3Server,
    work: &Path,
    interval_ms: u64,
    samples: usize,
    idle_secs: u64,
) -> BenchResult<Outcome> {
    let store = format!("s3://bench/follow-{interval_ms}");
    let wp = work.join(format!("w{interval_ms}"));
    let rp = work.join(format!("r{interval_ms}"));
    // No background GC on the writer: while idle, its only requests are lease PUTs,
    // so every GET and LIST counted then is the follower's.
    let writer = mount_kvfs(server, &store, &wp, &["--no-background-gc"])?;
    // The follower needs a store to open: one file first.
    write_synced(&writer.point.join("start"), b"start")?;
    let interval = interval_ms.to_string();
    let follower = mount_kvfs(
        server,
        &store,
        &rp,
        &["--read-only", "--follow-interval-ms", &interval],
    )?;
    let mut lags_ms = Vec::with_capacity(samples);
    for i in 0..samples {
        let name = format!("f{i:04}");
        let line = format!("sample {i} at interval {interval_ms}\n");
        write_synced(&writer.point.join(&name), line.as_bytes())?;
        let durable = Instant::now();
        let seen = follower.point.join(&name);
        loop {
            if std::fs::read(&seen).is_ok_and(|c| c == line.as_bytes()) {
                break;
            }
            if durable.elapsed() > Duration::from_secs(60) {
                return Err(format!("{name} never showed on the follower").into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        lags_ms.push(durable.elapsed().as_secs_f64() * 1e3);
        // The next write lands at an evenly spread phase of the follow cycle (the
        // visibility just seen happened right after a round).
        let phase = (i as f64 * 0.618_034).fract() * interval_ms as f64;
        std::thread::sleep(Duration::from_millis(phase as u64));
    }
    // Idle: the writer stays mounted and writes nothing (it only renews its lease,
    // with PUTs); every GET, HEAD and LIST is the follower's.
    std::thread::sleep(Duration::from_millis(2 * interval_ms + 3000));
    let before = server.request_counts();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_secs));
    let idle = server.request_counts().since(&before);
    let idle_secs = started.elapsed().as_secs_f64();
    follower.unmount()?;
    writer.unmount()?;
    Ok(Outcome {
        interval_ms,
        lags_ms,
        idle_secs,
        idle_gets: idle.get + idle.head,
        idle_lists: idle.list,
        idle_puts: idle.put,
        idle_cost_usd: kvfs_testkit::server::RequestCounts {
            put: 0,
            delete: 0,
            other: 0,
            ..idle
        }
        .cost_usd(),
    })
}

fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

fn report(a: &FollowArgs, outcomes: &[Outcome]) -> BenchResult<()> {
    let title = format!(
        "a read-only mount following a writer mount ({} samples; {} ms PUT / {} ms GET)",
        a.samples, a.latency.put_latency_ms, a.latency.get_latency_ms
    );
    let columns = [
        "follow_interval_ms",
        "samples",
        "lag_p50_ms",
        "lag_p99_ms",
        "lag_max_ms",
        "idle_gets_per_hour",
        "idle_lists_per_hour",
        "writer_lease_puts_per_hour",
        "idle_usd_per_month",
    ];
    let mut t = Table::new(&title, &columns);
    for o in outcomes {
        let per_hour = |n: u64| n as f64 * 3600.0 / o.idle_secs;
        t.row(vec![
            o.interval_ms.to_string(),
            o.lags_ms.len().to_string(),
            format!("{:.0}", quantile(&o.lags_ms, 0.5)),
            format!("{:.0}", quantile(&o.lags_ms, 0.99)),
            format!("{:.0}", quantile(&o.lags_ms, 1.0)),
            format!("{:.0}", per_hour(o.idle_gets)),
            format!("{:.0}", per_hour(o.idle_lists)),
            format!("{:.0}", per_hour(o.idle_puts)),
            format!(
                "{:.3}",
                o.idle_cost_usd * 3600.0 / o.idle_secs * 24.0 * 30.0
            ),
        ]);
    }
    print!("{}", t.render());
    let Some(out) = &a.out else {
        return Ok(());
    };
    t.write_csv(out, "follow")?;
    eprintln!("wrote {}", out.join("follow.csv").display());
    let series: Vec<plot::Series> = outcomes
        .iter()
        .map(|o| {
            let mut sorted = o.lags_ms.clone();
            sorted.sort_by(f64::total_cmp);
            let n = sorted.len() as f64;
            plot::Series {
                name: format!("follow every {} ms", o.interval_ms),
                points: sorted
                    .iter()
                    .enumerate()
                    .map(|(i, lag)| (*lag, (i + 1) as f64 / n * 100.0))
                    .collect(),
            }
        })
        .collect();
    plot::lines(
        &out.join("follow.png"),
        &plot::Chart {
            title: "Lag from fsync on the writer mount to visibility on a follower mount",
            x_label: "lag (ms)",
            y_label: "samples seen within (%)",
            log_x: false,
            log_y: false,
        },
        &series,
    );
    Ok(())
}
