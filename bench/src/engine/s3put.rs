//! `kvfs-bench s3-put`: the baseline kvfs answers to. Every key-value pair is stored
//! as one S3 object (one PUT per pair), then read back (one GET per pair), at several
//! value sizes and client concurrencies.
//!
//! Endpoint: by default an in-process S3 server (s3s-fs over HTTP on 127.0.0.1) with
//! `--put-latency-ms` / `--get-latency-ms` injected at the server, as in
//! `kvfs-bench fs`; with `--endpoint-from-env`, the bucket named by `--bucket` through
//! the standard AWS configuration (`AWS_ENDPOINT_URL`, credentials, `AWS_REGION`).
//! Both go through the same [`ObjectStore`] code path (`PutMode::Overwrite`, `get`).
//!
//! Pairs per cell: `--pairs N` for every cell, or by default 120 per concurrent
//! writer, at most 4,000 (so every cell takes about 120 round trips: a full run of
//! 6 sizes x 4 concurrencies takes about two minutes with 25 ms / 15 ms latency).
//! `--quick`: 10 per writer (at most 400) and sizes 32, 256, 1024 unless given.
//!
//! Requests per pair are counted by a [`MeteredStore`] around the store (client side;
//! the SDK's own retries are disabled), and priced at S3 Standard request prices.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;

use kvfs::store::metered::MeteredStore;
use kvfs::store::s3::S3Store;
use kvfs::store::{DynStore, ObjectStore, PutMode};
use kvfs_testkit::server::{FaultConfig, ServerOptions, TestS3Server};

use crate::support::plot;
use crate::support::report::{quantile, Table};
use crate::support::server::SimulatedLatency;

pub type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Args, Debug)]
pub struct S3PutArgs {
    /// Value sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Concurrent clients, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    concurrency: Vec<usize>,
    /// Pairs per (size, concurrency) cell (default: 120 per writer, at most 4000).
    #[arg(long)]
    pairs: Option<usize>,
    #[command(flatten)]
    latency: SimulatedLatency,
    /// Use the S3 endpoint of the standard AWS configuration (AWS_ENDPOINT_URL or
    /// AWS itself) instead of the in-process server; no latency is injected.
    #[arg(long)]
    endpoint_from_env: bool,
    /// Bucket (with --endpoint-from-env; it must exist).
    #[arg(long, default_value = "kvfs-bench")]
    bucket: String,
    /// Key prefix (with --endpoint-from-env); the objects are deleted afterwards.
    #[arg(long, default_value = "kvfs-bench/s3-put")]
    prefix: String,
    /// A few seconds: 10 pairs per writer and sizes 32, 256, 1024 (unless given).
    #[arg(long)]
    quick: bool,
    /// Write s3_put.csv here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Default value sizes of both `s3-put` and `kv`.
pub const SIZES: [usize; 6] = [32, 64, 128, 256, 512, 1024];
/// Value sizes in quick mode.
pub const QUICK_SIZES: [usize; 3] = [32, 256, 1024];

/// Pairs in a baseline cell at `concurrency` unless `--pairs` says otherwise.
pub fn default_pairs(concurrency: usize, quick: bool) -> usize {
    if quick {
        (10 * concurrency).min(400)
    } else {
        (120 * concurrency).min(4000)
    }
}

/// The operation a baseline cell measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
        }
    }
}

/// Result of one (op, size, concurrency) cell.
#[derive(Clone, Debug)]
pub struct Cell {
    pub op: Op,
    pub size: usize,
    pub concurrency: usize,
    pub pairs: usize,
    pub seconds: f64,
    pub latencies_ms: Vec<f64>,
    /// Requests counted during the cell (PUT, GET, LIST, DELETE).
    pub requests: u64,
    pub usd: f64,
}

impl Cell {
    pub fn pairs_per_s(&self) -> f64 {
        self.pairs as f64 / self.seconds
    }
    pub fn requests_per_pair(&self) -> f64 {
        self.requests as f64 / self.pairs as f64
    }
    pub fn usd_per_million(&self) -> f64 {
        self.usd / self.pairs as f64 * 1e6
    }
}

/// Run `n` jobs `f(0..n)` on `concurrency` tasks, each taking the next index when it
/// finishes one; returns the latency of every job in ms and the wall time in s.
pub async fn pool<F, Fut>(concurrency: usize, n: usize, f: F) -> BenchResult<(Vec<f64>, f64)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let f = Arc::new(f);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let next = next.clone();
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, String>(lat);
                }
                let t = Instant::now();
                f(i).await?;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(lat)) => all.extend(lat),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(format!("worker task failed: {e}"));
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    match first_err {
        Some(e) => Err(e.into()),
        None => Ok((all, secs)),
    }
}

fn object_key(dir: &str, i: usize) -> String {
    format!("{dir}/{i:08}")
}

/// One baseline cell: `pairs` objects of `size` bytes under `dir/` in `store`, written
/// (`Op::Put`, overwriting) or read back and checked (`Op::Get`, after a `Put` cell
/// of the same `dir`, size and pairs) by `concurrency` clients.
pub async fn measure(
    store: &DynStore,
    dir: &str,
    op: Op,
    size: usize,
    concurrency: usize,
    pairs: usize,
) -> BenchResult<Cell> {
    let metered = Arc::new(MeteredStore::new(store.clone()));
    let meter = metered.meter();
    let before = meter.snapshot();
    let value = Bytes::from(vec![b'v'; size]);
    let dir = Arc::new(dir.to_string());
    let (latencies_ms, seconds) = pool(concurrency, pairs, move |i| {
        let store = metered.clone();
        let value = value.clone();
        let key = object_key(&dir, i);
        async move {
            match op {
                Op::Put => {
                    store
                        .put(&key, value, PutMode::Overwrite)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Op::Get => {
                    let got = store.get(&key).await.map_err(|e| e.to_string())?;
                    if got.data.len() != value.len() {
                        return Err(format!(
                            "GET {key}: {} bytes, expected {}",
                            got.data.len(),
                            value.len()
                        ));
                    }
                }
            }
            Ok(())
        }
    })
    .await?;
    let m = meter.snapshot().since(&before);
    Ok(Cell {
        op,
        size,
        concurrency,
        pairs,
        seconds,
        latencies_ms,
        requests: m.puts + m.gets + m.lists + m.deletes,
        usd: m.cost_usd(),
    })
}

/// Delete the `pairs` objects of a cell (not measured).
pub async fn cleanup(store: &DynStore, dir: &str, pairs: usize) -> BenchResult<()> {
    let store = store.clone();
    let dir = Arc::new(dir.to_string());
    pool(32, pairs, move |i| {
        let store = store.clone();
        let key = object_key(&dir, i);
        async move { store.delete(&key).await.map_err(|e| e.to_string()) }
    })
    .await?;
    Ok(())
}

/// The in-process S3 server with S3-like latency, its data directory and bucket.
pub struct LocalEndpoint {
    pub server: TestS3Server,
    pub root: PathBuf,
}

pub const LOCAL_BUCKET: &str = "bench";

impl LocalEndpoint {
    pub async fn start(put_latency_ms: u64, get_latency_ms: u64) -> BenchResult<LocalEndpoint> {
        let root = std::env::temp_dir().join(format!(
            "kvfs-bench-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&root)?;
        let server = TestS3Server::start(
            &root,
            ServerOptions {
                faults: FaultConfig {
                    put_latency: Duration::from_millis(put_latency_ms),
                    get_latency: Duration::from_millis(get_latency_ms),
                    ..FaultConfig::default()
                },
                ..ServerOptions::default()
            },
        )
        .await?;
        server.create_bucket(LOCAL_BUCKET)?;
        eprintln!(
            "S3 server at {} ({put_latency_ms} ms per PUT, {get_latency_ms} ms per GET; data in {})",
            server.endpoint(),
            root.display()
        );
        Ok(LocalEndpoint { server, root })
    }

    pub fn store(&self, prefix: &str) -> DynStore {
        Arc::new(S3Store::from_client(
            self.server.client(),
            LOCAL_BUCKET,
            prefix,
        ))
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// `s3_put.png` (pairs/s against concurrency, at the smallest and largest size) and
/// `s3_put_latency.png` (p50 latency against size, at the lowest and highest
/// concurrency).
fn plot_cells(out: &std::path::Path, cells: &[Cell], endpoint: &str) {
    let extremes = |mut v: Vec<usize>| {
        v.sort_unstable();
        v.dedup();
        match (v.first(), v.last()) {
            (Some(&a), Some(&b)) if a != b => vec![a, b],
            (Some(&a), _) => vec![a],
            _ => Vec::new(),
        }
    };
    let sizes = extremes(cells.iter().map(|c| c.size).collect());
    let concs = extremes(cells.iter().map(|c| c.concurrency).collect());
    let mut rate = Vec::new();
    let mut latency = Vec::new();
    for op in [Op::Put, Op::Get] {
        let of = |c: &&Cell| c.op == op;
        for &size in &sizes {
            rate.push(plot::Series {
                name: format!("{} of {size} B", op.name().to_uppercase()),
                points: cells
                    .iter()
                    .filter(of)
                    .filter(|c| c.size == size)
                    .map(|c| (c.concurrency as f64, c.pairs_per_s()))
                    .collect(),
            });
        }
        for &conc in &concs {
            latency.push(plot::Series {
                name: format!("{}, concurrency {conc}", op.name().to_uppercase()),
                points: cells
                    .iter()
                    .filter(of)
                    .filter(|c| c.concurrency == conc)
                    .map(|c| (c.size as f64, quantile(&c.latencies_ms, 0.5)))
                    .collect(),
            });
        }
    }
    plot::lines(
        &out.join("s3_put.png"),
        &plot::Chart {
            title: &format!("One object per pair: pairs/s ({endpoint})"),
            x_label: "concurrent clients",
            y_label: "pairs/s",
            log_x: true,
            log_y: true,
        },
        &rate,
    );
    plot::lines(
        &out.join("s3_put_latency.png"),
        &plot::Chart {
            title: "One object per pair: median latency against value size",
            x_label: "value size (bytes)",
            y_label: "p50 latency (ms)",
            log_x: true,
            log_y: false,
        },
        &latency,
    );
}

pub async fn run(a: S3PutArgs) -> BenchResult<()> {
    let sizes: Vec<usize> = match &a.sizes {
        Some(s) => s.clone(),
        None if a.quick => QUICK_SIZES.to_vec(),
        None => SIZES.to_vec(),
    };
    if sizes.is_empty() || a.concurrency.is_empty() || a.concurrency.contains(&0) {
        return Err("--sizes and --concurrency need at least one value, concurrency > 0".into());
    }
    let (local, store, env) = if a.endpoint_from_env {
        let store: DynStore = Arc::new(S3Store::connect(&a.bucket, &a.prefix).await?);
        eprintln!("S3 endpoint from the environment: {}", store.describe());
        (None, store, true)
    } else {
        let local =
            LocalEndpoint::start(a.latency.put_latency_ms, a.latency.get_latency_ms).await?;
        let store = local.store(&format!("s3-put-{}", std::process::id()));
        (Some(local), store, false)
    };

    let mut cells = Vec::new();
    let total = sizes.len() * a.concurrency.len();
    let mut done = 0;
    for &c in &a.concurrency {
        for &size in &sizes {
            let pairs = a.pairs.unwrap_or_else(|| default_pairs(c, a.quick));
            done += 1;
            eprintln!("s3-put [{done}/{total}]: {pairs} pairs of {size} B, concurrency {c} ...");
            let dir = format!("v{size}-c{c}");
            let put = measure(&store, &dir, Op::Put, size, c, pairs).await?;
            let get = measure(&store, &dir, Op::Get, size, c, pairs).await?;
            eprintln!(
                "  put {:.0} pairs/s (p50 {:.1} ms), get {:.0} pairs/s (p50 {:.1} ms)",
                put.pairs_per_s(),
                quantile(&put.latencies_ms, 0.5),
                get.pairs_per_s(),
                quantile(&get.latencies_ms, 0.5)
            );
            if env {
                cleanup(&store, &dir, pairs).await?;
            }
            cells.push(put);
            cells.push(get);
        }
    }
    // Group by operation: all PUT cells, then all GET cells.
    cells.sort_by_key(|c| (c.op == Op::Get, c.size, c.concurrency));

    let endpoint = if env {
        store.describe()
    } else {
        format!(
            "in-process server, {} ms per PUT, {} ms per GET",
            a.latency.put_latency_ms, a.latency.get_latency_ms
        )
    };
    let mut table = Table::new(
        &format!("S3 baseline: one object per pair ({endpoint})"),
        &[
            "op",
            "size_bytes",
            "concurrency",
            "pairs",
            "seconds",
            "pairs_per_s",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "requests_per_pair",
            "usd_per_million",
        ],
    );
    for c in &cells {
        table.row(vec![
            c.op.name().to_string(),
            c.size.to_string(),
            c.concurrency.to_string(),
            c.pairs.to_string(),
            format!("{:.3}", c.seconds),
            format!("{:.1}", c.pairs_per_s()),
            format!("{:.2}", quantile(&c.latencies_ms, 0.5)),
            format!("{:.2}", quantile(&c.latencies_ms, 0.9)),
            format!("{:.2}", quantile(&c.latencies_ms, 0.99)),
            format!("{:.3}", c.requests_per_pair()),
            format!("{:.3}", c.usd_per_million()),
        ]);
    }
    print!("{}", table.render());
    if let Some(out) = &a.out {
        table.write_csv(out, "s3_put")?;
        eprintln!("wrote {}", out.join("s3_put.csv").display());
        plot_cells(out, &cells, &endpoint);
    }
    if let Some(local) = local {
        local.shutdown().await;
    }
    Ok(())
}
