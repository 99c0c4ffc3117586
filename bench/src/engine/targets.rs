//! `kvfs-bench engine`: the engine's targets, measured against an in-process S3
//! server (s3s-fs over HTTP on 127.0.0.1).
//!
//! 1. Throughput: non-durable puts of `--value-bytes` values from one task, then one
//!    sync; puts/s and S3 PUTs per pair.
//! 2. Sync latency: with `--put-latency-ms` / `--get-latency-ms` injected at the
//!    server, the p50 of put+sync against the p50 of one raw PUT of a small object.
//! 3. Recovery: open time of a store of `--keys` keys (checkpointed), and of the same
//!    store with a log tail to replay; index heap bytes per key beyond the key itself.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;

use kvfs::db::{Db, Options};
use kvfs::store::local::LocalStore;
use kvfs::store::s3::S3Store;
use kvfs::store::{DynStore, PutMode};
use kvfs_testkit::server::{FaultConfig, ServerOptions, TestS3Server};

use crate::support::alloc::{live_bytes, peak_rss_bytes};
use crate::support::report::{quantile, Table};
use crate::support::server::SimulatedLatency;

#[derive(Args, Debug)]
pub struct EngineArgs {
    /// Puts in the throughput run.
    #[arg(long, default_value_t = 2_000_000)]
    puts: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Keys in the recovery run.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Extra puts left in the log (not checkpointed) for the log-replay recovery run.
    #[arg(long, default_value_t = 300_000)]
    tail_puts: u64,
    /// Samples in the sync-latency run.
    #[arg(long, default_value_t = 200)]
    syncs: usize,
    #[command(flatten)]
    latency: SimulatedLatency,
    /// A few seconds instead of a minute: 10x fewer puts, keys and syncs.
    #[arg(long)]
    quick: bool,
    /// Directory for the server's data (default: a temporary directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Write engine.csv here.
    #[arg(long)]
    out: Option<PathBuf>,
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

pub(crate) fn key(i: u64, n: u64) -> Vec<u8> {
    // Visit keys in a scrambled order (a bijection on 0..n when gcd(step, n) = 1).
    let step = 2_654_435_761u64 % n.max(1);
    let step = if step == 0 || gcd(step, n) != 1 {
        1
    } else {
        step
    };
    format!("user/{:010}", (i * step) % n.max(1)).into_bytes()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

struct Row {
    metric: &'static str,
    backend: &'static str,
    value: f64,
    unit: &'static str,
    target: String,
    met: Option<bool>,
}

pub async fn run(mut a: EngineArgs) -> BenchResult<()> {
    if a.quick {
        a.puts /= 10;
        a.keys /= 10;
        a.tail_puts /= 10;
        a.syncs = (a.syncs / 4).max(20);
    }
    let tmp;
    let root = match &a.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile_dir()?;
            tmp.clone()
        }
    };
    let server = TestS3Server::start(&root, ServerOptions::default()).await?;
    server.create_bucket("bench")?;
    let client = server.client();
    let store_at = |prefix: &str| -> DynStore {
        Arc::new(S3Store::from_client(client.clone(), "bench", prefix))
    };
    eprintln!(
        "S3 server at {} (data in {})",
        server.endpoint(),
        root.display()
    );
    let mut rows = Vec::new();
    let value = vec![b'v'; a.value_bytes];

    // 1. Throughput, on the S3 server and on the local directory store.
    let keys: Vec<Vec<u8>> = (0..a.puts).map(|i| key(i, a.puts)).collect();
    let local_dir = root.join("local-store");
    let local: DynStore = Arc::new(LocalStore::open(&local_dir)?);
    for (backend, store) in [("s3", store_at("throughput")), ("local", local)] {
        eprintln!(
            "throughput ({backend}): {} non-durable puts of {} B ...",
            a.puts, a.value_bytes
        );
        let t = throughput(store, &keys, &value).await?;
        rows.push(Row {
            metric: "nondurable_puts_per_s",
            backend,
            value: t.puts_per_s,
            unit: "puts/s",
            target: ">= 500000".into(),
            met: Some(t.puts_per_s >= 500_000.0),
        });
        rows.push(Row {
            metric: "durable_puts_per_s_incl_final_sync",
            backend,
            value: t.durable_puts_per_s,
            unit: "puts/s",
            target: String::new(),
            met: None,
        });
        rows.push(Row {
            metric: "s3_puts_per_pair",
            backend,
            value: t.puts_per_pair,
            unit: "PUT/pair",
            target: "<= 0.01".into(),
            met: Some(t.puts_per_pair <= 0.01),
        });
        rows.push(Row {
            metric: "usd_per_million_pairs",
            backend,
            value: t.usd_per_million,
            unit: "USD",
            target: String::new(),
            met: None,
        });
    }
    drop(keys);
    let _ = std::fs::remove_dir_all(&local_dir);

    // 2. Sync latency against one PUT, with S3-like latency at the server.
    eprintln!(
        "sync latency: {} samples with {} ms per PUT, {} ms per GET ...",
        a.syncs, a.latency.put_latency_ms, a.latency.get_latency_ms
    );
    let db = Db::open_store(store_at("sync"), Options::default()).await?;
    server.faults().set(FaultConfig {
        put_latency: Duration::from_millis(a.latency.put_latency_ms),
        get_latency: Duration::from_millis(a.latency.get_latency_ms),
        ..FaultConfig::default()
    });
    let raw = store_at("raw");
    let mut raw_ms = Vec::new();
    let mut sync_ms = Vec::new();
    for i in 0..a.syncs {
        // Interleave the two measurements so both see the same machine load.
        let body = Bytes::from(vec![b'x'; 32 + 11 + 16 + a.value_bytes + 16]);
        let t = Instant::now();
        raw.put(&format!("obj{i}"), body, PutMode::CreateNew)
            .await?;
        raw_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        db.put(&key(i as u64, 1 << 40), &value).await?;
        db.sync().await?;
        sync_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    server.faults().clear();
    db.close().await?;
    let raw_p50 = quantile(&raw_ms, 0.5);
    let sync_p50 = quantile(&sync_ms, 0.5);
    rows.push(Row {
        metric: "segment_put_p50_ms",
        backend: "s3",
        value: raw_p50,
        unit: "ms",
        target: String::new(),
        met: None,
    });
    rows.push(Row {
        metric: "sync_p50_ms",
        backend: "s3",
        value: sync_p50,
        unit: "ms",
        target: String::new(),
        met: None,
    });
    rows.push(Row {
        metric: "sync_p99_ms",
        backend: "s3",
        value: quantile(&sync_ms, 0.99),
        unit: "ms",
        target: String::new(),
        met: None,
    });
    rows.push(Row {
        metric: "sync_p50_over_put_p50",
        backend: "s3",
        value: sync_p50 / raw_p50,
        unit: "ratio",
        target: "<= 1.5".into(),
        met: Some(sync_p50 / raw_p50 <= 1.5),
    });

    // 3. Recovery and index memory.
    eprintln!("recovery: loading {} keys ...", a.keys);
    let store = store_at("recovery");
    let db = Db::open_store(store.clone(), Options::default()).await?;
    let mut key_bytes = 0u64;
    for i in 0..a.keys {
        let k = key(i, a.keys);
        key_bytes += k.len() as u64;
        db.put(&k, &value).await?;
    }
    db.close().await?;
    drop(db);
    // Index memory: the heap a read-only handle holds once opened, measured after the
    // heap settles (the closed writer's tasks and the server's buffers are freed
    // asynchronously), and again as what dropping the handle gives back.
    let heap_before = settled_heap().await;
    let ro = Db::open_store(store.clone(), Options::read_only()).await?;
    let heap_open = settled_heap().await;
    drop(ro);
    let heap_after = settled_heap().await;
    let heap_index =
        (heap_open as f64 - heap_before as f64).min(heap_open as f64 - heap_after as f64);
    let per_key = (heap_index - key_bytes as f64) / a.keys as f64;
    let t = Instant::now();
    let db = Db::open_store(store.clone(), Options::default()).await?;
    let open_secs = t.elapsed().as_secs_f64();
    rows.push(Row {
        metric: "open_checkpointed_s",
        backend: "s3",
        value: open_secs,
        unit: "s",
        target: if a.keys >= 1_000_000 {
            "<= 2".into()
        } else {
            String::new()
        },
        met: (a.keys >= 1_000_000).then_some(open_secs <= 2.0),
    });
    rows.push(Row {
        metric: "index_heap_bytes_per_key_beyond_key",
        backend: "s3",
        value: per_key,
        unit: "B/key",
        target: "<= 150".into(),
        met: Some(per_key <= 150.0),
    });
    eprintln!("recovery: leaving {} puts in the log tail ...", a.tail_puts);
    for i in 0..a.tail_puts {
        db.put(&key(i * 7, a.keys), &value).await?;
    }
    db.sync().await?;
    // A crash: no close, so no checkpoint covers the tail.
    db.abandon();
    drop(db);
    let t = Instant::now();
    let ro = Db::open_store(store.clone(), Options::read_only()).await?;
    let tail_secs = t.elapsed().as_secs_f64();
    let keys_after = ro.len();
    drop(ro);
    rows.push(Row {
        metric: "open_with_log_tail_s",
        backend: "s3",
        value: tail_secs,
        unit: "s",
        target: String::new(),
        met: None,
    });
    rows.push(Row {
        metric: "peak_rss_mib",
        backend: "s3",
        value: peak_rss_bytes() as f64 / (1 << 20) as f64,
        unit: "MiB",
        target: String::new(),
        met: None,
    });
    if keys_after as u64 != a.keys {
        return Err(format!("recovered {keys_after} keys, expected {}", a.keys).into());
    }

    let mut table = Table::new(
        &format!(
            "kvfs engine ({} puts, {} B values, {} keys, {} syncs)",
            a.puts, a.value_bytes, a.keys, a.syncs
        ),
        &["metric", "backend", "value", "unit", "target", "met"],
    );
    for r in rows {
        table.row(vec![
            r.metric.to_string(),
            r.backend.to_string(),
            if r.value.abs() >= 100.0 {
                format!("{:.0}", r.value)
            } else if r.value.abs() >= 1.0 {
                format!("{:.3}", r.value)
            } else {
                format!("{:.6}", r.value)
            },
            r.unit.to_string(),
            r.target,
            match r.met {
                Some(true) => "yes".into(),
                Some(false) => "NO".into(),
                None => String::new(),
            },
        ]);
    }
    print!("{}", table.render());
    if let Some(out) = &a.out {
        table.write_csv(out, "engine")?;
        eprintln!("wrote {}", out.join("engine.csv").display());
    }
    server.shutdown().await;
    if a.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(())
}

/// Live heap bytes once they stop changing by more than 1 MiB per 100 ms (at most 5 s).
pub(crate) async fn settled_heap() -> usize {
    let mut last = live_bytes();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = live_bytes();
        if now.abs_diff(last) < 1 << 20 {
            return now;
        }
        last = now;
    }
    last
}

struct Throughput {
    puts_per_s: f64,
    durable_puts_per_s: f64,
    puts_per_pair: f64,
    usd_per_million: f64,
}

/// Non-durable puts of every key from one task, then one sync.
async fn throughput(store: DynStore, keys: &[Vec<u8>], value: &[u8]) -> BenchResult<Throughput> {
    let db = Db::open_store(store, Options::default()).await?;
    let before = db.metrics();
    let t0 = Instant::now();
    for (i, k) in keys.iter().enumerate() {
        db.put(k, value).await?;
        if i > 0 && i % 500_000 == 0 {
            eprintln!("  {i} puts, {:.0}/s", i as f64 / t0.elapsed().as_secs_f64());
        }
    }
    let write_secs = t0.elapsed().as_secs_f64();
    db.sync().await?;
    let durable_secs = t0.elapsed().as_secs_f64();
    let m = db.metrics().since(&before);
    db.close().await?;
    let n = keys.len() as f64;
    Ok(Throughput {
        puts_per_s: n / write_secs,
        durable_puts_per_s: n / durable_secs,
        puts_per_pair: m.puts as f64 / n,
        usd_per_million: m.cost_usd() / n * 1e6,
    })
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let p = std::env::temp_dir().join(format!("kvfs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}
