//! `kvfs-bench gc`: what garbage collection and compaction buy.
//!
//! 1. **Space amplification over time.** `--keys` keys of `--value-bytes` are loaded,
//!    then overwritten uniformly at random at `--overwrites-per-sec` for `--seconds`,
//!    with the background worker running (its intervals scaled down so that the run
//!    reaches a steady state in a minute or two: 250 ms rounds, 2 s minimum age,
//!    `--grace-ms` (1 s), rounds of `--round-bytes` (4 MiB), a checkpoint every 4 MiB
//!    of log). The dead data waiting at any moment is about one round's sources plus
//!    what the workload overwrites during the grace period and the log window, so
//!    those set the steady state together with the cleaning threshold.
//!    Once a second the stored bytes of segments and runs are divided by the live
//!    bytes. Repeated for each `--clean-below-fill` threshold: a higher threshold keeps
//!    less dead data at the price of more copying. Reported: the median space
//!    amplification over the second half of the run (steady state), its maximum, and
//!    bytes the cleaner copied per byte the workload wrote.
//! 2. **Cold scan of a directory.** `--scan-files` files of 1 KiB under `dir/`, written
//!    interleaved with as many files of other directories (so they are scattered over
//!    the log like a directory written over time), read back by a fresh read-only
//!    handle (`scan --prefix dir/`, every value) before and after `kvfs compact`:
//!    GETs, bytes fetched, seconds.
//!
//! 3. **Fixed point and idle cost.** On the store the first overwrite run left,
//!    `kvfs gc` (on-demand cleaning, no grace period) three times in a row: rounds,
//!    objects rewritten and deleted per pass (the second and third must do nothing).
//!    Then a writer with the production defaults (background GC every 5 s, 60 s
//!    grace, 20 s lease) left idle: after its first rounds and one grace period
//!    (which list the store once and delete the manifests the previous writers left),
//!    every request it makes in `--idle-seconds`, by object, as requests per hour
//!    (only lease renewals are expected).
//!
//! All run against the in-process S3 server with `--put-latency-ms` and
//! `--get-latency-ms` injected.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use rand::Rng;

use kvfs::db::{Db, GcOptions, Options};

use kvfs_testkit::recording::{RecordingStore, Request};

use crate::engine::s3put::{BenchResult, LocalEndpoint};
use crate::support::plot;
use crate::support::report::{quantile, Table};
use crate::support::server::SimulatedLatency;

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Keys of the overwrite workload.
    #[arg(long, default_value_t = 50_000)]
    keys: u64,
    /// Value size of the overwrite workload.
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// Duration of the overwrite workload, per threshold.
    #[arg(long, default_value_t = 90)]
    seconds: u64,
    /// Overwrites per second.
    #[arg(long, default_value_t = 2_500)]
    overwrites_per_sec: u64,
    /// Cleaning thresholds to compare, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.7")]
    clean_below_fill: Vec<f64>,
    /// Bytes of objects one background round reads (and the log compaction trigger).
    #[arg(long, default_value_t = 4 << 20)]
    round_bytes: u64,
    /// Grace period before an unneeded object is deleted.
    #[arg(long, default_value_t = 1000)]
    grace_ms: u64,
    /// How long the idle writer of the fixed-point experiment is watched.
    #[arg(long, default_value_t = 60)]
    idle_seconds: u64,
    /// Files in the directory of the cold-scan experiment.
    #[arg(long, default_value_t = 10_000)]
    scan_files: u32,
    #[command(flatten)]
    latency: SimulatedLatency,
    /// A short run: 10,000 keys overwritten at 1,000/s for 20 s, 2,000 files, 20 s
    /// idle.
    #[arg(long)]
    quick: bool,
    /// Write gc_space.csv, gc_space_over_time.csv and gc_scan.csv here.
    #[arg(long)]
    out: Option<PathBuf>,
}

struct Sample {
    t_s: f64,
    live: u64,
    stored: u64,
}

struct SpaceResult {
    fill: f64,
    samples: Vec<Sample>,
    user_bytes: u64,
    gc: kvfs::db::GcCounters,
}

fn space_options(a: &GcArgs, fill: f64) -> Options {
    Options {
        segment_bytes: 1 << 20,
        checkpoint_bytes: 4 << 20,
        gc: GcOptions {
            background: true,
            interval: Duration::from_millis(250),
            grace: Duration::from_millis(a.grace_ms),
            min_age: Duration::from_secs(2),
            clean_below_fill: fill,
            compact_min_bytes: a.round_bytes,
            max_round_bytes: a.round_bytes,
            max_bytes_per_sec: 64 << 20,
            ..GcOptions::default()
        },
        ..Options::default()
    }
}

async fn space_run(ep: &LocalEndpoint, a: &GcArgs, fill: f64) -> BenchResult<SpaceResult> {
    let store = ep.store(&format!("space-{fill}"));
    let db = Db::open_store(store, space_options(a, fill)).await?;
    let key = |i: u64| format!("k{i:08}").into_bytes();
    let mut value = vec![b'v'; a.value_bytes];
    for i in 0..a.keys {
        db.put(&key(i), &value).await?;
    }
    db.sync().await?;
    eprintln!(
        "  threshold {fill}: loaded {} keys; overwriting for {} s",
        a.keys, a.seconds
    );
    let mut rng = rand::rng();
    let mut samples = Vec::new();
    let mut user_bytes = 0u64;
    let before = db.gc_counters();
    let start = Instant::now();
    let tick = Duration::from_millis(100);
    let per_tick = (a.overwrites_per_sec / 10).max(1);
    let mut next_sample = Duration::ZERO;
    while start.elapsed() < Duration::from_secs(a.seconds) {
        let t = Instant::now();
        for _ in 0..per_tick {
            let i = rng.random_range(0..a.keys);
            rng.fill(&mut value[..8.min(a.value_bytes)]);
            db.put(&key(i), &value).await?;
            user_bytes += (key(i).len() + value.len()) as u64;
        }
        if start.elapsed() >= next_sample {
            let s = db.stats().await?;
            samples.push(Sample {
                t_s: start.elapsed().as_secs_f64(),
                live: s.live_bytes,
                stored: s.segment_bytes + s.run_bytes,
            });
            if samples.len() % 10 == 0 {
                let h = s.fill_histogram;
                eprintln!(
                    "  threshold {fill}: {:.0} s, space amplification {:.2}; {} segments, {} runs; \
                     fill empty/<25/<50/<75/>=75%: {}/{}/{}/{}/{}; reclaimable {} MB",
                    start.elapsed().as_secs_f64(),
                    s.space_amplification(),
                    s.segments,
                    s.runs,
                    h[0],
                    h[1],
                    h[2],
                    h[3],
                    h[4],
                    s.unneeded_bytes >> 20
                );
            }
            next_sample += Duration::from_secs(1);
        }
        tokio::time::sleep(tick.saturating_sub(t.elapsed())).await;
    }
    db.sync().await?;
    let gc = db.gc_counters().since(&before);
    db.close().await?;
    Ok(SpaceResult {
        fill,
        samples,
        user_bytes,
        gc,
    })
}

struct ScanRow {
    phase: &'static str,
    files: u32,
    gets: u64,
    get_bytes: u64,
    seconds: f64,
}

async fn cold_scan(ep: &LocalEndpoint, files: u32, phase: &'static str) -> BenchResult<ScanRow> {
    let db = Db::open_store(ep.store("scan"), Options::read_only()).await?;
    let before = db.metrics();
    let t = Instant::now();
    let rows = db.scan_prefix(b"dir/", usize::MAX, false).await?;
    let seconds = t.elapsed().as_secs_f64();
    if rows.len() != files as usize {
        return Err(format!("scan found {} files, expected {files}", rows.len()).into());
    }
    let m = db.metrics().since(&before);
    db.close().await?;
    Ok(ScanRow {
        phase,
        files,
        gets: m.gets,
        get_bytes: m.get_bytes,
        seconds,
    })
}

async fn scan_experiment(ep: &LocalEndpoint, files: u32) -> BenchResult<Vec<ScanRow>> {
    let opts = Options {
        gc: GcOptions {
            background: false,
            grace: Duration::ZERO,
            ..GcOptions::default()
        },
        ..Options::default()
    };
    let db = Db::open_store(ep.store("scan"), opts.clone()).await?;
    let value = vec![b'f'; 1024];
    for i in 0..files {
        db.put(format!("dir/file{i:06}").as_bytes(), &value).await?;
        db.put(format!("other{}/file{i:06}", i % 10).as_bytes(), &value)
            .await?;
        if i % 500 == 499 {
            db.sync().await?;
        }
    }
    db.sync().await?;
    db.close().await?;
    eprintln!("  wrote {files} files under dir/ (and as many elsewhere); cold scan ...");
    let mut rows = vec![cold_scan(ep, files, "before_compaction").await?];
    let db = Db::open_store(ep.store("scan"), opts).await?;
    let t = Instant::now();
    let m0 = db.metrics();
    let done = db.compact(&mut |m| eprintln!("  compact: {m}")).await?;
    let m = db.metrics().since(&m0);
    db.close().await?;
    eprintln!(
        "  compaction: {done} in {:.1} s ({} PUT, {} GET, {} DELETE)",
        t.elapsed().as_secs_f64(),
        m.puts,
        m.gets,
        m.deletes
    );
    rows.push(cold_scan(ep, files, "after_compaction").await?);
    Ok(rows)
}

/// `gc_space.png` (space amplification over time, per threshold) and `gc_scan.png`
/// (GETs of the cold scan before and after compaction).
fn plot_results(out: &std::path::Path, results: &[SpaceResult], scan: &[ScanRow]) {
    let series: Vec<plot::Series> = results
        .iter()
        .map(|r| plot::Series {
            name: format!("clean below {:.0} % fill", r.fill * 100.0),
            points: r
                .samples
                .iter()
                .map(|s| (s.t_s, s.stored as f64 / s.live.max(1) as f64))
                .collect(),
        })
        .collect();
    plot::lines(
        &out.join("gc_space.png"),
        &plot::Chart {
            title: "Space amplification under uniform overwrites (background GC)",
            x_label: "seconds of overwriting",
            y_label: "segment and run bytes / live bytes",
            log_x: false,
            log_y: false,
        },
        &series,
    );
    let groups: Vec<String> = scan.iter().map(|r| r.phase.replace('_', " ")).collect();
    plot::bars(
        &out.join("gc_scan.png"),
        &plot::Chart {
            title: &format!(
                "Cold scan of a directory of {} files of 1 KiB",
                scan.first().map_or(0, |r| r.files)
            ),
            x_label: "",
            y_label: "GET requests",
            log_x: false,
            log_y: true,
        },
        &groups,
        &[plot::Bars {
            name: "GETs".into(),
            values: scan.iter().map(|r| r.gets as f64).collect(),
        }],
    );
}

pub async fn run(mut a: GcArgs) -> BenchResult<()> {
    if a.quick {
        a.keys = a.keys.min(10_000);
        a.overwrites_per_sec = a.overwrites_per_sec.min(1_000);
        a.seconds = a.seconds.min(20);
        a.scan_files = a.scan_files.min(2_000);
        a.idle_seconds = a.idle_seconds.min(20);
    }
    let ep = LocalEndpoint::start(a.latency.put_latency_ms, a.latency.get_latency_ms).await?;
    eprintln!("space amplification under overwrites");
    let mut results = Vec::new();
    for fill in a.clean_below_fill.clone() {
        results.push(space_run(&ep, &a, fill).await?);
    }
    let mut summary = Table::new(
        &format!(
            "space amplification: {} keys of {} B overwritten at {}/s for {} s \
             (segment and run bytes / live bytes)",
            a.keys, a.value_bytes, a.overwrites_per_sec, a.seconds
        ),
        &[
            "clean_below_fill",
            "steady_space_amp_median",
            "space_amp_max",
            "gc_bytes_read_per_user_byte",
            "runs_written",
            "objects_deleted",
        ],
    );
    let mut over_time = Table::new(
        "space amplification over time",
        &[
            "clean_below_fill",
            "t_s",
            "live_bytes",
            "stored_bytes",
            "space_amp",
        ],
    );
    for r in &results {
        let amps: Vec<f64> = r
            .samples
            .iter()
            .map(|s| s.stored as f64 / s.live.max(1) as f64)
            .collect();
        let steady = &amps[amps.len() / 2..];
        summary.row(vec![
            format!("{}", r.fill),
            format!("{:.2}", quantile(steady, 0.5)),
            format!("{:.2}", amps.iter().cloned().fold(0.0, f64::max)),
            format!("{:.2}", r.gc.bytes_read as f64 / r.user_bytes.max(1) as f64),
            r.gc.runs_written.to_string(),
            r.gc.objects_deleted.to_string(),
        ]);
        for (s, amp) in r.samples.iter().zip(&amps) {
            over_time.row(vec![
                format!("{}", r.fill),
                format!("{:.1}", s.t_s),
                s.live.to_string(),
                s.stored.to_string(),
                format!("{amp:.3}"),
            ]);
        }
    }
    print!("{}", summary.render());

    eprintln!("cold scan of one directory before and after compaction");
    let scan = scan_experiment(&ep, a.scan_files).await?;
    let mut scan_table = Table::new(
        &format!(
            "cold scan of a directory of {} files of 1 KiB ({} ms per GET)",
            a.scan_files, a.latency.get_latency_ms
        ),
        &[
            "phase",
            "files",
            "gets",
            "get_bytes",
            "seconds",
            "files_per_get",
        ],
    );
    for r in &scan {
        scan_table.row(vec![
            r.phase.to_string(),
            r.files.to_string(),
            r.gets.to_string(),
            r.get_bytes.to_string(),
            format!("{:.2}", r.seconds),
            format!("{:.1}", r.files as f64 / r.gets.max(1) as f64),
        ]);
    }
    print!("{}", scan_table.render());

    let first = a.clean_below_fill.first().copied().unwrap_or(0.7);
    eprintln!("fixed point: kvfs gc three times on the store of threshold {first}, then idle");
    let fixed = fixed_point(&ep, &format!("space-{first}"), a.idle_seconds).await?;
    print!("{}", fixed.render());
    if let Some(out) = &a.out {
        summary.write_csv(out, "gc_space")?;
        over_time.write_csv(out, "gc_space_over_time")?;
        scan_table.write_csv(out, "gc_scan")?;
        fixed.write_csv(out, "gc_fixed_point")?;
        plot_results(out, &results, &scan);
        eprintln!(
            "wrote gc_space.csv, gc_space_over_time.csv, gc_scan.csv, gc_fixed_point.csv \
             and charts in {}",
            out.display()
        );
    }
    ep.server.shutdown().await;
    let _ = std::fs::remove_dir_all(&ep.root);
    Ok(())
}

/// `kvfs gc` three times on the store at `prefix`, then an idle writer with the
/// production defaults watched for `idle_seconds`.
async fn fixed_point(ep: &LocalEndpoint, prefix: &str, idle_seconds: u64) -> BenchResult<Table> {
    let mut t = Table::new(
        "kvfs gc until nothing is left to do, then an idle writer",
        &["phase", "metric", "value"],
    );
    let opts = Options {
        gc: GcOptions {
            background: false,
            grace: Duration::ZERO,
            ..GcOptions::default()
        },
        ..Options::default()
    };
    for pass in 1..=3 {
        let db = Db::open_store(ep.store(prefix), opts.clone()).await?;
        let started = Instant::now();
        let c = db.gc(&mut |_| {}).await?;
        let seconds = started.elapsed().as_secs_f64();
        db.close().await?;
        eprintln!("  gc pass {pass}: {c} in {seconds:.1} s");
        let phase = format!("gc_pass_{pass}");
        for (metric, value) in [
            ("rounds", c.rewrites as f64),
            ("objects_rewritten", c.objects_rewritten as f64),
            ("runs_written", c.runs_written as f64),
            ("objects_deleted", c.objects_deleted as f64),
            ("metadata_deleted", c.metadata_deleted as f64),
            ("seconds", seconds),
        ] {
            t.row(vec![phase.clone(), metric.to_string(), format!("{value}")]);
        }
    }
    let rec = RecordingStore::new(ep.store(prefix));
    let db = Db::open_store(rec.clone(), Options::default()).await?;
    // The first background rounds list the store once (data objects, old manifests
    // and checkpoints) and, a grace period later, delete the manifest this writer's
    // own opening superseded; watch from after that.
    let defaults = Options::default();
    let warmup = defaults.gc.grace + defaults.gc.interval * 3;
    tokio::time::sleep(warmup).await;
    let first_rounds = rec.len();
    let from = rec.len();
    eprintln!(
        "  idle writer with default options: {first_rounds} requests while opening and in the \
         first {} s; watching for {idle_seconds} s ...",
        warmup.as_secs()
    );
    tokio::time::sleep(Duration::from_secs(idle_seconds)).await;
    let seen = rec.since(from);
    db.close().await?;
    let per_hour = |n: usize| n as f64 * 3600.0 / idle_seconds as f64;
    let puts = seen.iter().filter(|r| r.request == Request::Put).count();
    let lease_puts = seen
        .iter()
        .filter(|r| r.request == Request::Put && r.key == "lease")
        .count();
    let other = seen.iter().filter(|r| r.key != "lease").count();
    for r in seen.iter().filter(|r| r.key != "lease") {
        eprintln!("  idle request beyond the lease: {:?} {}", r.request, r.key);
    }
    eprintln!(
        "  idle: {puts} PUTs ({lease_puts} of the lease), {other} requests for other objects"
    );
    for (metric, value) in [
        ("requests_opening_and_first_rounds", first_rounds as f64),
        ("seconds_watched", idle_seconds as f64),
        ("puts_per_hour", per_hour(puts)),
        ("lease_puts_per_hour", per_hour(lease_puts)),
        ("other_requests_per_hour", per_hour(other)),
    ] {
        t.row(vec![
            "idle".to_string(),
            metric.to_string(),
            format!("{value:.1}"),
        ]);
    }
    Ok(t)
}
