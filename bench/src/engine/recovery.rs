//! `kvfs-bench recovery`: how long opening a store takes, against the number of keys
//! (checkpointed) and against the length of log written since the last checkpoint,
//! and how much index memory each key costs.
//!
//! Each store lives under its own prefix of one in-process S3 server (s3s-fs over HTTP
//! on 127.0.0.1; `--get-latency-ms` adds S3-like latency to every GET and LIST).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use kvfs::db::{Db, Options};
use kvfs::store::s3::S3Store;
use kvfs::store::DynStore;
use kvfs_testkit::server::{FaultConfig, ServerOptions, TestS3Server};

use crate::engine::targets::{key, settled_heap};
use crate::support::alloc::peak_rss_bytes;
use crate::support::plot;
use crate::support::report::Table;

#[derive(Args, Debug)]
pub struct RecoveryArgs {
    /// Store sizes (keys, all checkpointed), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,10000,100000,1000000,10000000"
    )]
    keys: Vec<u64>,
    /// Puts written after the last checkpoint, on a store of `--tail-base-keys` keys.
    #[arg(long, value_delimiter = ',', default_value = "0,10000,100000,500000")]
    tail_puts: Vec<u64>,
    /// Keys of the store used for the log-tail runs.
    #[arg(long, default_value_t = 100_000)]
    tail_base_keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Latency added to every GET and LIST at the server.
    #[arg(long, default_value_t = 0)]
    get_latency_ms: u64,
    /// Up to 10^5 keys and 10^5 tail puts: about ten seconds.
    #[arg(long)]
    quick: bool,
    /// Write recovery.csv here.
    #[arg(long)]
    out: Option<PathBuf>,
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

struct Sample {
    keys: u64,
    tail_puts: u64,
    open_read_only_s: f64,
    open_writer_s: f64,
    heap_bytes_per_key: f64,
}

/// Write `keys` keys, close (which checkpoints), then `tail` more puts that no
/// checkpoint covers (the writer is abandoned, as after a crash).
async fn build(store: DynStore, keys: u64, tail: u64, value: &[u8]) -> BenchResult<u64> {
    let opts = Options {
        checkpoint_bytes: u64::MAX,
        ..Options::default()
    };
    let db = Db::open_store(store.clone(), opts.clone()).await?;
    let mut key_bytes = 0;
    for i in 0..keys {
        let k = key(i, keys);
        key_bytes += k.len() as u64;
        db.put(&k, value).await?;
    }
    db.close().await?;
    if tail > 0 {
        let db = Db::open_store(store, opts).await?;
        for i in 0..tail {
            db.put(&key(i.wrapping_mul(7), keys.max(1)), value).await?;
        }
        db.sync().await?;
        // No close: the tail stays in the log, as after a crash. Giving the lease
        // back lets the writer open below start at once.
        db.abandon();
        release_lease(db.store()).await?;
    }
    Ok(key_bytes)
}

async fn release_lease(store: &DynStore) -> BenchResult<()> {
    let g = store.get("lease").await?;
    let mut info = kvfs::db::lease::LeaseInfo::decode(&g.data)?;
    info.released = true;
    store
        .put(
            "lease",
            serde_json::to_vec(&info)?.into(),
            kvfs::store::PutMode::IfMatch(g.etag),
        )
        .await?;
    Ok(())
}

async fn measure(store: DynStore, keys: u64, tail: u64, key_bytes: u64) -> BenchResult<Sample> {
    let before = settled_heap().await;
    let t = Instant::now();
    let ro = Db::open_store(store.clone(), Options::read_only()).await?;
    let open_read_only_s = t.elapsed().as_secs_f64();
    let heap = settled_heap().await as f64 - before as f64;
    let found = ro.len() as u64;
    drop(ro);
    if found != keys {
        return Err(format!("recovered {found} keys, expected {keys}").into());
    }
    let t = Instant::now();
    let w = Db::open_store(store, Options::default()).await?;
    let open_writer_s = t.elapsed().as_secs_f64();
    w.close().await?;
    Ok(Sample {
        keys,
        tail_puts: tail,
        open_read_only_s,
        open_writer_s,
        heap_bytes_per_key: (heap - key_bytes as f64) / keys.max(1) as f64,
    })
}

/// `recovery.png` (open time against keys) and `recovery_tail.png` (against the log
/// written since the last checkpoint).
fn plot_open_times(out: &std::path::Path, by_keys: &[Sample], by_tail: &[Sample], base: u64) {
    let series = |samples: &[Sample], x: fn(&Sample) -> f64| {
        vec![
            plot::Series {
                name: "open, read-only".into(),
                points: samples.iter().map(|s| (x(s), s.open_read_only_s)).collect(),
            },
            plot::Series {
                name: "open as writer (takes the lease, writes a manifest)".into(),
                points: samples.iter().map(|s| (x(s), s.open_writer_s)).collect(),
            },
        ]
    };
    plot::lines(
        &out.join("recovery.png"),
        &plot::Chart {
            title: "Open time against the number of keys (checkpointed store)",
            x_label: "keys",
            y_label: "seconds",
            log_x: true,
            log_y: true,
        },
        &series(by_keys, |s| s.keys as f64),
    );
    plot::lines(
        &out.join("recovery_tail.png"),
        &plot::Chart {
            title: &format!("Open time against log since the checkpoint ({base} keys)"),
            x_label: "puts since the last checkpoint",
            y_label: "seconds",
            log_x: false,
            log_y: false,
        },
        &series(by_tail, |s| s.tail_puts as f64),
    );
}

pub async fn run(mut a: RecoveryArgs) -> BenchResult<()> {
    if a.quick {
        a.keys.retain(|k| *k <= 100_000);
        a.tail_puts.retain(|t| *t <= 100_000);
        a.tail_base_keys = a.tail_base_keys.min(10_000);
    }
    let work = std::env::temp_dir().join(format!("kvfs-bench-recovery-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let server = TestS3Server::start(&work, ServerOptions::default()).await?;
    server.create_bucket("bench")?;
    let client = server.client();
    let value = vec![b'v'; a.value_bytes];
    let mut samples = Vec::new();
    let run_one = |prefix: String, keys: u64, tail: u64| {
        let store: DynStore = Arc::new(S3Store::from_client(client.clone(), "bench", &prefix));
        let server = &server;
        let value = value.clone();
        let latency = Duration::from_millis(a.get_latency_ms);
        async move {
            eprintln!("  {keys} keys + {tail} puts of log tail: writing ...");
            server.faults().clear();
            let key_bytes = build(store.clone(), keys, tail, &value).await?;
            server.faults().set(FaultConfig {
                get_latency: latency,
                ..FaultConfig::default()
            });
            let s = measure(store, keys, tail, key_bytes).await?;
            server.faults().clear();
            eprintln!(
                "  {keys} keys + {tail} tail puts: open {:.3} s read-only, {:.3} s as writer",
                s.open_read_only_s, s.open_writer_s
            );
            BenchResult::Ok(s)
        }
    };
    eprintln!("open time against store size");
    for &k in &a.keys.clone() {
        samples.push(run_one(format!("keys-{k}"), k, 0).await?);
    }
    eprintln!("open time against log written since the last checkpoint");
    for &t in &a.tail_puts.clone() {
        samples.push(run_one(format!("tail-{t}"), a.tail_base_keys, t).await?);
    }
    let mut table = Table::new(
        &format!(
            "recovery ({} B values, {} ms per GET/LIST at the server)",
            a.value_bytes, a.get_latency_ms
        ),
        &[
            "keys",
            "tail_puts",
            "open_read_only_s",
            "open_writer_s",
            "index_heap_bytes_per_key",
        ],
    );
    for s in &samples {
        table.row(vec![
            s.keys.to_string(),
            s.tail_puts.to_string(),
            format!("{:.3}", s.open_read_only_s),
            format!("{:.3}", s.open_writer_s),
            format!("{:.1}", s.heap_bytes_per_key),
        ]);
    }
    print!("{}", table.render());
    println!(
        "peak RSS of the benchmark process: {:.0} MiB",
        peak_rss_bytes() as f64 / (1 << 20) as f64
    );
    if let Some(out) = &a.out {
        table.write_csv(out, "recovery")?;
        eprintln!("wrote {}", out.join("recovery.csv").display());
        let (by_keys, by_tail) = samples.split_at(a.keys.len().min(samples.len()));
        plot_open_times(out, by_keys, by_tail, a.tail_base_keys);
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
