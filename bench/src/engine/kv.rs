//! `kvfs-bench kv`: the pairs of `kvfs-bench s3-put` through the kvfs engine
//! (`Db::open_store` on an S3 store against the in-process S3 server, with the same
//! injected latency), compared with the one-object-per-pair baseline measured in the
//! same run.
//!
//! Modes:
//! - `nondurable`: one writer puts every pair, then syncs once. Swept over
//!   `--segment-bytes` and `--flush-interval-ms`. Acknowledgement latency is that of
//!   `put`; pairs/s counts the time until the final sync returns (everything durable).
//! - `durable`: `--concurrency` writers each do put + sync per pair (every pair is
//!   durable when acknowledged; concurrent syncs share segment PUTs). Default engine
//!   options (4 MiB segments, 1 s flush interval). Latency is that of put + sync.
//!
//! Requests per pair are the deltas of `db.metrics()` from after open until the last
//! pair is durable (segment PUTs, plus any checkpoint and lease-renewal requests in that
//! time), priced at S3 Standard request prices. `ratio_to_s3_put` is pairs/s over the
//! PUT pairs/s of the baseline cell (one object per pair, `s3put::measure`) at the same
//! size and concurrency (1 for `nondurable`), measured first in this run.
//!
//! Pairs per cell: `--pairs N` for every cell, or by default 50,000 (non-durable),
//! 150 per writer at most 4,000 (durable), and the `s3-put` default (baseline).
//! `--quick`: 5,000 / 10 per writer / the `s3-put` quick default, and sizes 32, 256,
//! 1024 unless given.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use kvfs::db::{Db, Options};

use crate::engine::s3put::{self, BenchResult, LocalEndpoint, Op};
use crate::support::plot;
use crate::support::report::{quantile, Table};
use crate::support::server::SimulatedLatency;

#[derive(Args, Debug)]
pub struct KvArgs {
    /// Value sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Segment sizes of the non-durable runs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "262144,1048576,4194304")]
    segment_bytes: Vec<usize>,
    /// Flush intervals of the non-durable runs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    flush_interval_ms: Vec<u64>,
    /// Concurrent writers of the durable runs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Pairs per cell (default: see the module documentation).
    #[arg(long)]
    pairs: Option<usize>,
    #[command(flatten)]
    latency: SimulatedLatency,
    /// A few seconds: fewer pairs and sizes 32, 256, 1024 (unless given).
    #[arg(long)]
    quick: bool,
    /// Write kv.csv here.
    #[arg(long)]
    out: Option<PathBuf>,
}

struct Row {
    mode: &'static str,
    size: usize,
    segment_bytes: usize,
    flush_interval_ms: u64,
    concurrency: usize,
    pairs: usize,
    seconds: f64,
    latencies_ms: Vec<f64>,
    puts: u64,
    requests: u64,
    usd: f64,
}

/// Where a measured cell stands in the sweep.
struct Cell {
    mode: &'static str,
    size: usize,
    segment_bytes: usize,
    flush_interval_ms: u64,
    concurrency: usize,
}

impl Row {
    fn measured(
        cell: Cell,
        pairs: usize,
        seconds: f64,
        latencies_ms: Vec<f64>,
        m: &kvfs::store::metered::Metrics,
    ) -> Row {
        Row {
            mode: cell.mode,
            size: cell.size,
            segment_bytes: cell.segment_bytes,
            flush_interval_ms: cell.flush_interval_ms,
            concurrency: cell.concurrency,
            pairs,
            seconds,
            latencies_ms,
            puts: m.puts,
            requests: m.requests(),
            usd: m.cost_usd(),
        }
    }
}

fn key(size: usize, i: usize) -> Vec<u8> {
    format!("pairs/{size}/{i:010}").into_bytes()
}

/// Which rows a bar of the ratio chart stands for.
type RowFilter = Box<dyn Fn(&Row) -> bool>;

/// `kv.png` (S3 PUTs per pair against segment size, non-durable, at the smallest and
/// largest value size and every flush interval) and `kv_ratio.png` (pairs/s over the
/// one-object-per-pair baseline, per value size and mode).
fn plot_rows(out: &std::path::Path, rows: &[Row], base_rate: &dyn Fn(usize, usize) -> f64) {
    let mut sizes: Vec<usize> = rows.iter().map(|r| r.size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut flushes: Vec<u64> = rows
        .iter()
        .filter(|r| r.mode == "nondurable")
        .map(|r| r.flush_interval_ms)
        .collect();
    flushes.sort_unstable();
    flushes.dedup();
    let ends: Vec<usize> = match (sizes.first(), sizes.last()) {
        (Some(&a), Some(&b)) if a != b => vec![a, b],
        (Some(&a), _) => vec![a],
        _ => Vec::new(),
    };
    let mut series = Vec::new();
    for &size in &ends {
        for &flush in &flushes {
            series.push(plot::Series {
                name: format!("{size} B values, flush every {flush} ms"),
                points: rows
                    .iter()
                    .filter(|r| r.mode == "nondurable" && r.size == size)
                    .filter(|r| r.flush_interval_ms == flush)
                    .map(|r| {
                        (
                            r.segment_bytes as f64 / 1024.0,
                            r.puts as f64 / r.pairs as f64,
                        )
                    })
                    .collect(),
            });
        }
    }
    plot::lines(
        &out.join("kv.png"),
        &plot::Chart {
            title: "S3 PUTs per pair, writes without sync (one object per pair: 1)",
            x_label: "segment size (KiB)",
            y_label: "PUTs per pair",
            log_x: true,
            log_y: true,
        },
        &series,
    );
    // One bar per mode: the best non-durable configuration, then durable per writer count.
    let mut modes: Vec<(String, RowFilter)> = vec![(
        "writes without sync (best segment size / flush interval)".into(),
        Box::new(|r: &Row| r.mode == "nondurable"),
    )];
    let mut concs: Vec<usize> = rows
        .iter()
        .filter(|r| r.mode == "durable")
        .map(|r| r.concurrency)
        .collect();
    concs.sort_unstable();
    concs.dedup();
    for c in concs {
        modes.push((
            format!("put + sync, {c} writer{}", if c == 1 { "" } else { "s" }),
            Box::new(move |r: &Row| r.mode == "durable" && r.concurrency == c),
        ));
    }
    let bars: Vec<plot::Bars> = modes
        .iter()
        .map(|(name, pick)| plot::Bars {
            name: name.clone(),
            values: sizes
                .iter()
                .map(|&size| {
                    rows.iter()
                        .filter(|r| r.size == size && pick(r))
                        .map(|r| r.pairs as f64 / r.seconds / base_rate(r.size, r.concurrency))
                        .fold(f64::NAN, f64::max)
                })
                .collect(),
        })
        .collect();
    let groups: Vec<String> = sizes.iter().map(|s| format!("{s} B")).collect();
    plot::bars(
        &out.join("kv_ratio.png"),
        &plot::Chart {
            title: "kvfs engine pairs/s over one S3 object per pair (same run)",
            x_label: "value size",
            y_label: "x baseline (log scale)",
            log_x: false,
            log_y: true,
        },
        &groups,
        &bars,
    );
}

pub async fn run(a: KvArgs) -> BenchResult<()> {
    let sizes: Vec<usize> = match &a.sizes {
        Some(s) => s.clone(),
        None if a.quick => s3put::QUICK_SIZES.to_vec(),
        None => s3put::SIZES.to_vec(),
    };
    if sizes.is_empty()
        || a.concurrency.is_empty()
        || a.concurrency.contains(&0)
        || a.segment_bytes.is_empty()
        || a.flush_interval_ms.is_empty()
    {
        return Err("every list option needs at least one value, concurrency > 0".into());
    }
    let nondurable_pairs = a.pairs.unwrap_or(if a.quick { 5_000 } else { 50_000 });
    let durable_pairs = |c: usize| {
        a.pairs.unwrap_or(if a.quick {
            (10 * c).min(400)
        } else {
            (150 * c).min(4000)
        })
    };
    let local = LocalEndpoint::start(a.latency.put_latency_ms, a.latency.get_latency_ms).await?;
    let bucket_dir = local.root.join(s3put::LOCAL_BUCKET);

    // The baseline, in this run: one PUT per pair at every size and concurrency we
    // report (1 for the non-durable runs).
    let mut base_conc = a.concurrency.clone();
    base_conc.push(1);
    base_conc.sort_unstable();
    base_conc.dedup();
    let mut baseline = Vec::new();
    for &c in &base_conc {
        for &size in &sizes {
            let pairs = a.pairs.unwrap_or_else(|| s3put::default_pairs(c, a.quick));
            eprintln!("kv baseline: {pairs} one-object PUTs of {size} B, concurrency {c} ...");
            let prefix = format!("baseline-v{size}-c{c}");
            let store = local.store(&prefix);
            let cell = s3put::measure(&store, "o", Op::Put, size, c, pairs).await?;
            eprintln!("  {:.0} pairs/s", cell.pairs_per_s());
            let _ = std::fs::remove_dir_all(bucket_dir.join(&prefix));
            baseline.push(cell);
        }
    }
    let base_rate = |size: usize, c: usize| {
        baseline
            .iter()
            .find(|b| b.size == size && b.concurrency == c)
            .map(|b| b.pairs_per_s())
            .unwrap_or(f64::NAN)
    };

    let mut rows = Vec::new();
    for &size in &sizes {
        let value = vec![b'v'; size];
        for &seg in &a.segment_bytes {
            for &flush in &a.flush_interval_ms {
                eprintln!(
                    "kv nondurable: {nondurable_pairs} puts of {size} B, {seg} B segments, {flush} ms flush interval ..."
                );
                let prefix = format!("kv-nondurable-v{size}-s{seg}-f{flush}");
                let opts = Options {
                    segment_bytes: seg,
                    flush_interval: Duration::from_millis(flush),
                    ..Options::default()
                };
                let db = Db::open_store(local.store(&prefix), opts).await?;
                let before = db.metrics();
                let mut lat = Vec::with_capacity(nondurable_pairs);
                let t0 = Instant::now();
                for i in 0..nondurable_pairs {
                    let t = Instant::now();
                    db.put(&key(size, i), &value).await?;
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
                db.sync().await?;
                let seconds = t0.elapsed().as_secs_f64();
                let m = db.metrics().since(&before);
                db.close().await?;
                drop(db);
                let _ = std::fs::remove_dir_all(bucket_dir.join(&prefix));
                let cell = Cell {
                    mode: "nondurable",
                    size,
                    segment_bytes: seg,
                    flush_interval_ms: flush,
                    concurrency: 1,
                };
                let row = Row::measured(cell, nondurable_pairs, seconds, lat, &m);
                eprintln!(
                    "  {:.0} pairs/s, {:.5} PUTs/pair",
                    row.pairs as f64 / row.seconds,
                    row.puts as f64 / row.pairs as f64
                );
                rows.push(row);
            }
        }
        for &c in &a.concurrency {
            let pairs = durable_pairs(c);
            eprintln!("kv durable: {pairs} put+sync of {size} B by {c} writers ...");
            let prefix = format!("kv-durable-v{size}-c{c}");
            let opts = Options::default();
            let (seg, flush) = (opts.segment_bytes, opts.flush_interval.as_millis() as u64);
            let db = Db::open_store(local.store(&prefix), opts).await?;
            let before = db.metrics();
            let value = Arc::new(value.clone());
            let writer = db.clone();
            let (lat, seconds) = s3put::pool(c, pairs, move |i| {
                let db = writer.clone();
                let value = value.clone();
                async move {
                    db.put(&key(size, i), &value)
                        .await
                        .map_err(|e| e.to_string())?;
                    db.sync().await.map_err(|e| e.to_string())
                }
            })
            .await?;
            let m = db.metrics().since(&before);
            db.close().await?;
            drop(db);
            let _ = std::fs::remove_dir_all(bucket_dir.join(&prefix));
            let cell = Cell {
                mode: "durable",
                size,
                segment_bytes: seg,
                flush_interval_ms: flush,
                concurrency: c,
            };
            let row = Row::measured(cell, pairs, seconds, lat, &m);
            eprintln!(
                "  {:.0} pairs/s, {:.3} PUTs/pair",
                row.pairs as f64 / row.seconds,
                row.puts as f64 / row.pairs as f64
            );
            rows.push(row);
        }
    }

    let mut table = Table::new(
        &format!(
            "kvfs engine vs one object per pair (in-process server, {} ms per PUT, {} ms per GET)",
            a.latency.put_latency_ms, a.latency.get_latency_ms
        ),
        &[
            "mode",
            "size_bytes",
            "segment_bytes",
            "flush_interval_ms",
            "concurrency",
            "pairs",
            "seconds",
            "pairs_per_s",
            "p50_ms",
            "p99_ms",
            "puts_per_pair",
            "requests_per_pair",
            "usd_per_million",
            "s3_put_pairs_per_s",
            "ratio_to_s3_put",
        ],
    );
    for r in &rows {
        let rate = r.pairs as f64 / r.seconds;
        let base = base_rate(r.size, r.concurrency);
        table.row(vec![
            r.mode.to_string(),
            r.size.to_string(),
            r.segment_bytes.to_string(),
            r.flush_interval_ms.to_string(),
            r.concurrency.to_string(),
            r.pairs.to_string(),
            format!("{:.3}", r.seconds),
            format!("{rate:.1}"),
            format!("{:.4}", quantile(&r.latencies_ms, 0.5)),
            format!("{:.4}", quantile(&r.latencies_ms, 0.99)),
            format!("{:.6}", r.puts as f64 / r.pairs as f64),
            format!("{:.6}", r.requests as f64 / r.pairs as f64),
            format!("{:.4}", r.usd / r.pairs as f64 * 1e6),
            format!("{base:.1}"),
            format!("{:.1}", rate / base),
        ]);
    }
    print!("{}", table.render());
    if let Some(out) = &a.out {
        table.write_csv(out, "kv")?;
        eprintln!("wrote {}", out.join("kv.csv").display());
        plot_rows(out, &rows, &base_rate);
    }
    local.shutdown().await;
    Ok(())
}
