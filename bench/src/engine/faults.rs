//! `kvfs-bench faults`: a durable write workload through the engine against the
//! in-process S3 server, under injected faults.
//!
//! Workload: `--writers` tasks each put `--value-bytes` values under their own keys
//! and sync after every `--sync-every` puts, and one bulk writer puts 1 KiB values at
//! `--bulk-mib-per-s` and never syncs (like files closed without fsync). A put counts
//! as acknowledged once a sync that began after it returned. Scenarios (each on a fresh store prefix, `--seconds` long):
//!
//! - `none`: latency only (`--put-latency-ms` / `--get-latency-ms` at the server);
//! - `errors`: the server answers a fraction `--error-rate` of requests with 503
//!   SlowDown or 500 InternalError;
//! - `stalls`: a fraction `--stall-rate` of requests hangs for `--stall-ms`, then
//!   fails as a timeout (the fault layer `kvfs_testkit::faults::FaultyStore`, between
//!   the engine and the S3 client);
//! - `outage`: every request fails (503) for `--outage-secs` in the middle of the run,
//!   shorter than the retry timeout: writes wait, with unflushed data bounded by
//!   `--max-unflushed-bytes`, and carry on when it ends;
//! - `outage_beyond_retry`: the outage outlasts the retry timeout
//!   (`--short-retry-secs`): syncs must fail with an error after about that long;
//!   when it ends, the same writer must carry on (a new write made durable:
//!   `resumed_after_s`).
//!
//! After each scenario the faults are removed, the writer is closed, and a read-only
//! open checks that every acknowledged put is there with its value. Reported: puts/s
//! (acknowledged), sync latency, the longest a put waited, retries (the engine's retry
//! counter), requests, peak unflushed bytes against the bound, puts lost (must be 0,
//! else the command fails), and for a failed sync its error and how long it took.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;

use kvfs::db::{Db, Options};
use kvfs::store::retry::RetryPolicy;
use kvfs::store::s3::S3Store;
use kvfs::store::DynStore;
use kvfs_testkit::faults::{FaultConfig, FaultControl, FaultyStore};
use kvfs_testkit::server::{ServerOptions, TestS3Server};

use crate::support::mount::BenchResult;
use crate::support::plot;
use crate::support::report::{quantile, Table};
use crate::support::server::SimulatedLatency;

#[derive(Args, Debug)]
pub struct FaultsArgs {
    /// Length of each scenario.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Each writer syncs after this many puts.
    #[arg(long, default_value_t = 32)]
    sync_every: usize,
    #[command(flatten)]
    latency: SimulatedLatency,
    /// Fraction of requests answered with 503 or 500 in the `errors` scenario.
    #[arg(long, default_value_t = 0.1)]
    error_rate: f64,
    /// Fraction of requests that stall in the `stalls` scenario.
    #[arg(long, default_value_t = 0.02)]
    stall_rate: f64,
    /// How long a stalled request hangs before it fails.
    #[arg(long, default_value_t = 1000)]
    stall_ms: u64,
    /// Length of the temporary outage.
    #[arg(long, default_value_t = 3.0)]
    outage_secs: f64,
    /// Rate of the bulk writer, which puts 1 KiB values and never syncs (0: none).
    #[arg(long, default_value_t = 2.0)]
    bulk_mib_per_s: f64,
    /// Bound on unflushed data (writers wait beyond it).
    #[arg(long, default_value_t = 2 << 20)]
    max_unflushed_bytes: usize,
    /// Retry timeout of every scenario but the last.
    #[arg(long, default_value_t = 30)]
    retry_secs: u64,
    /// Retry timeout of `outage_beyond_retry`.
    #[arg(long, default_value_t = 3)]
    short_retry_secs: u64,
    /// About half a minute: 3 s scenarios, a 2 s outage, a 2 s retry timeout.
    #[arg(long)]
    quick: bool,
    /// Write faults.csv, faults.png and faults_outage.png here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    None,
    Errors,
    Stalls,
    Outage,
    OutageBeyondRetry,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::None,
        Scenario::Errors,
        Scenario::Stalls,
        Scenario::Outage,
        Scenario::OutageBeyondRetry,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::None => "none",
            Scenario::Errors => "errors",
            Scenario::Stalls => "stalls",
            Scenario::Outage => "outage",
            Scenario::OutageBeyondRetry => "outage_beyond_retry",
        }
    }

    fn injected(self, a: &FaultsArgs) -> String {
        match self {
            Scenario::None => "latency only".into(),
            Scenario::Errors => format!("{:.0}% of requests 500/503", a.error_rate * 100.0),
            Scenario::Stalls => format!(
                "{:.0}% of requests hang {} ms then time out",
                a.stall_rate * 100.0,
                a.stall_ms
            ),
            Scenario::Outage => format!("all requests 503 for {} s", a.outage_secs),
            Scenario::OutageBeyondRetry => format!(
                "all requests 503 from 1 s on; retry timeout {} s",
                a.short_retry_secs
            ),
        }
    }
}

/// What one scenario measured.
struct Outcome {
    scenario: Scenario,
    seconds: f64,
    /// Acknowledged puts of the syncing writers.
    acked: u64,
    /// Acknowledged puts of the bulk writer.
    bulk_acked: u64,
    sync_ms: Vec<f64>,
    max_put_wait_ms: f64,
    retries: u64,
    requests: u64,
    peak_unflushed: usize,
    lost: u64,
    /// The first error a writer saw: seconds since the outage began, and the message.
    error: Option<(f64, String)>,
    /// How long the first sync that failed had been waiting.
    failed_sync_s: Option<f64>,
    /// After a long outage: from the store answering again until a new write was
    /// durable through the same writer.
    resumed_s: Option<f64>,
    /// When the outage began and ended (seconds into the run).
    outage: Option<(f64, f64)>,
    /// (seconds, unflushed bytes, acknowledged puts) every few milliseconds.
    timeline: Vec<(f64, usize, u64)>,
}

fn key(w: usize, i: u64) -> Vec<u8> {
    format!("w{w:02}/{i:09}").into_bytes()
}

fn value(w: usize, i: u64, len: usize) -> Vec<u8> {
    let mut v = format!("{w}:{i}:").into_bytes();
    v.resize(len.max(v.len()), b'x');
    v
}

/// Shared between the writers and the sampler.
#[derive(Default)]
struct Progress {
    acked: Vec<AtomicU64>,
    sync_ms: Mutex<Vec<f64>>,
    max_put_wait_us: AtomicU64,
    error: Mutex<Option<(Instant, String)>>,
    failed_sync_s: Mutex<Option<f64>>,
    running: AtomicUsize,
    /// Puts the bulk writer has made (it is the last entry of `acked`).
    bulk_written: AtomicU64,
}

const BULK_VALUE: usize = 1024;

async fn writer(db: Db, w: usize, a: Arc<WorkloadArgs>, p: Arc<Progress>, until: Instant) {
    let mut i = 0u64;
    while Instant::now() < until {
        for _ in 0..a.sync_every {
            let t = Instant::now();
            if let Err(e) = db.put(&key(w, i), &value(w, i, a.value_bytes)).await {
                fail(&p, format!("put: {e}"));
                return;
            }
            let us = t.elapsed().as_micros() as u64;
            p.max_put_wait_us.fetch_max(us, Ordering::Relaxed);
            i += 1;
        }
        let t = Instant::now();
        let bulk = p.bulk_written.load(Ordering::SeqCst);
        match db.sync().await {
            Ok(()) => {
                p.acked[w].store(i, Ordering::SeqCst);
                // The sync covered every bulk put made before it began.
                if let Some(b) = p.acked.last() {
                    b.fetch_max(bulk, Ordering::SeqCst);
                }
                lock(&p.sync_ms).push(t.elapsed().as_secs_f64() * 1e3);
            }
            Err(e) => {
                lock(&p.failed_sync_s).get_or_insert(t.elapsed().as_secs_f64());
                fail(&p, format!("sync: {e}"));
                return;
            }
        }
    }
}

/// Put 1 KiB values at `mib_per_s` under key space `w` without ever syncing.
async fn bulk_writer(db: Db, w: usize, mib_per_s: f64, p: Arc<Progress>, until: Instant) {
    let start = Instant::now();
    let per_s = mib_per_s * (1 << 20) as f64 / BULK_VALUE as f64;
    let mut i = 0u64;
    while Instant::now() < until {
        if (i as f64) >= start.elapsed().as_secs_f64() * per_s {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let t = Instant::now();
        if let Err(e) = db.put(&key(w, i), &value(w, i, BULK_VALUE)).await {
            fail(&p, format!("put: {e}"));
            return;
        }
        let us = t.elapsed().as_micros() as u64;
        p.max_put_wait_us.fetch_max(us, Ordering::Relaxed);
        i += 1;
        p.bulk_written.store(i, Ordering::SeqCst);
    }
}

/// The key space of the bulk writer: the last one.
fn a_writers(p: &Progress) -> usize {
    p.acked.len() - 1
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn fail(p: &Progress, msg: String) {
    let mut e = lock(&p.error);
    if e.is_none() {
        *e = Some((Instant::now(), msg));
    }
}

/// The workload's parameters, shared by the writer tasks.
struct WorkloadArgs {
    value_bytes: usize,
    sync_every: usize,
}

async fn scenario(server: &TestS3Server, s: Scenario, a: &FaultsArgs) -> BenchResult<Outcome> {
    let latency = FaultConfig {
        put_latency: Duration::from_millis(a.latency.put_latency_ms),
        get_latency: Duration::from_millis(a.latency.get_latency_ms),
        ..FaultConfig::default()
    };
    server.faults().set(latency.clone());
    let prefix = format!("faults/{}", s.name());
    let plain: DynStore = Arc::new(S3Store::from_client(server.client(), "bench", &prefix));
    let handle = FaultControl::seeded(FaultConfig::default(), 7);
    let store: DynStore = Arc::new(FaultyStore::new(plain.clone(), handle.clone()));
    let retry_secs = if s == Scenario::OutageBeyondRetry {
        a.short_retry_secs
    } else {
        a.retry_secs
    };
    let opts = Options {
        segment_bytes: 256 << 10,
        flush_interval: Duration::from_millis(100),
        max_unflushed_bytes: a.max_unflushed_bytes,
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
            max_elapsed: Duration::from_secs(retry_secs),
        },
        ..Options::default()
    };
    let db = Db::open_store(store, opts).await?;
    let retries0 = db.retries();
    let metrics0 = db.metrics();
    match s {
        Scenario::Errors => server.faults().update(|c| c.error_rate = a.error_rate),
        Scenario::Stalls => handle.set(FaultConfig {
            stall_rate: a.stall_rate,
            stall: Duration::from_millis(a.stall_ms),
            ..FaultConfig::default()
        }),
        _ => {}
    }
    let bulk = a.bulk_mib_per_s > 0.0;
    let progress = Arc::new(Progress {
        acked: (0..a.writers + usize::from(bulk))
            .map(|_| AtomicU64::new(0))
            .collect(),
        running: AtomicUsize::new(a.writers + usize::from(bulk)),
        ..Progress::default()
    });
    let work = Arc::new(WorkloadArgs {
        value_bytes: a.value_bytes,
        sync_every: a.sync_every,
    });
    let start = Instant::now();
    let seconds = if s == Scenario::OutageBeyondRetry {
        // Long enough for every writer to hit the retry timeout.
        1.0 + a.short_retry_secs as f64 + 10.0
    } else {
        a.seconds
    };
    let until = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for w in 0..a.writers {
        let (db, work, p) = (db.clone(), work.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            writer(db, w, work, p.clone(), until).await;
            p.running.fetch_sub(1, Ordering::SeqCst);
        }));
    }
    if bulk {
        let (db, p, rate) = (db.clone(), progress.clone(), a.bulk_mib_per_s);
        tasks.push(tokio::spawn(async move {
            bulk_writer(db, a_writers(&p), rate, p.clone(), until).await;
            p.running.fetch_sub(1, Ordering::SeqCst);
        }));
    }
    let (outage_from, outage_to) = match s {
        Scenario::Outage => {
            let from = ((a.seconds - a.outage_secs) / 2.0).max(0.5);
            (Some(from), Some(from + a.outage_secs))
        }
        Scenario::OutageBeyondRetry => (Some(1.0), None),
        _ => (None, None),
    };
    let mut timeline = Vec::new();
    let mut peak = 0;
    let mut outage_started = None;
    let mut outage_window = None;
    while progress.running.load(Ordering::SeqCst) > 0 {
        let t = start.elapsed().as_secs_f64();
        if outage_from.is_some_and(|f| t >= f) && outage_started.is_none() {
            server.faults().update(|c| c.outage = true);
            outage_started = Some(Instant::now());
        }
        if let (Some(from), Some(to)) = (outage_from, outage_to) {
            if t >= to && outage_window.is_none() {
                server.faults().update(|c| c.outage = false);
                outage_window = Some((from, t));
            }
        }
        let unflushed = db.unflushed_bytes();
        peak = peak.max(unflushed);
        let acked = progress
            .acked
            .iter()
            .map(|x| x.load(Ordering::SeqCst))
            .sum();
        timeline.push((t, unflushed, acked));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = start.elapsed().as_secs_f64().min(seconds);
    handle.set(FaultConfig::default());
    server.faults().set(FaultConfig::default());
    // The same writer carries on once the store answers: the queued data lands, in
    // order, and a new write is durable after one sync.
    let resumed_s = if s == Scenario::OutageBeyondRetry {
        let back = Instant::now();
        db.put(b"after-the-outage", b"1").await?;
        db.sync()
            .await
            .map_err(|e| format!("{}: sync after the outage: {e}", s.name()))?;
        Some(back.elapsed().as_secs_f64())
    } else {
        None
    };
    let retries = db.retries() - retries0;
    let requests = db.metrics().since(&metrics0).requests();
    db.close()
        .await
        .map_err(|e| format!("{}: close: {e}", s.name()))?;
    // A clean close made every bulk put durable too.
    if let Some(b) = progress.acked.last().filter(|_| bulk) {
        b.fetch_max(
            progress.bulk_written.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
    }
    drop(db);
    let acked: Vec<u64> = progress
        .acked
        .iter()
        .map(|x| x.load(Ordering::SeqCst))
        .collect();
    let lost = check(plain, &acked, a.value_bytes, bulk).await?;
    let error = lock(&progress.error).clone().map(|(at, msg)| {
        let since = outage_started.map_or(0.0, |o| at.saturating_duration_since(o).as_secs_f64());
        (since, msg)
    });
    if s != Scenario::OutageBeyondRetry {
        if let Some((_, msg)) = &error {
            return Err(format!("{}: a writer failed: {msg}", s.name()).into());
        }
    }
    let sync_ms = lock(&progress.sync_ms).clone();
    let failed_sync_s = *lock(&progress.failed_sync_s);
    Ok(Outcome {
        scenario: s,
        seconds: elapsed,
        acked: acked[..a.writers].iter().sum(),
        bulk_acked: acked[a.writers..].iter().sum(),
        sync_ms,
        max_put_wait_ms: progress.max_put_wait_us.load(Ordering::Relaxed) as f64 / 1e3,
        retries,
        requests,
        peak_unflushed: peak,
        lost,
        error,
        failed_sync_s,
        resumed_s,
        outage: outage_window,
        timeline,
    })
}

/// Open the store read-only (no faults) and count acknowledged puts that are missing
/// or have the wrong value.
async fn check(store: DynStore, acked: &[u64], value_bytes: usize, bulk: bool) -> BenchResult<u64> {
    let db = Db::open_store(store, Options::read_only()).await?;
    let rows = db
        .scan(Bound::Unbounded, Bound::Unbounded, usize::MAX, false)
        .await?;
    let got: HashMap<Vec<u8>, bytes::Bytes> = rows
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect();
    let mut lost = 0;
    for (w, &n) in acked.iter().enumerate() {
        let len = if bulk && w + 1 == acked.len() {
            BULK_VALUE
        } else {
            value_bytes
        };
        for i in 0..n {
            if got.get(&key(w, i)).map(|v| v.as_ref()) != Some(value(w, i, len).as_slice()) {
                lost += 1;
            }
        }
    }
    db.close().await?;
    Ok(lost)
}

pub async fn run(mut a: FaultsArgs) -> BenchResult<()> {
    if a.quick {
        a.seconds = a.seconds.min(3.0);
        a.outage_secs = a.outage_secs.min(2.0);
        a.short_retry_secs = a.short_retry_secs.min(2);
    }
    if a.writers == 0 || a.sync_every == 0 || a.outage_secs >= a.retry_secs as f64 {
        return Err(
            "need writers > 0, sync-every > 0, outage shorter than the retry timeout".into(),
        );
    }
    let root = std::env::temp_dir().join(format!("kvfs-bench-faults-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let server = TestS3Server::start(&root, ServerOptions::default()).await?;
    server.create_bucket("bench")?;
    let mut outcomes = Vec::new();
    let mut failure = None;
    for s in Scenario::ALL {
        eprintln!("faults: {} ({}) ...", s.name(), s.injected(&a));
        match scenario(&server, s, &a).await {
            Ok(o) => {
                eprintln!(
                    "  {:.0} acknowledged puts/s, {} retries, peak unflushed {} KiB, {} lost{}",
                    o.acked as f64 / o.seconds,
                    o.retries,
                    o.peak_unflushed >> 10,
                    o.lost,
                    o.error
                        .as_ref()
                        .map(|(t, e)| format!(", error after {t:.2} s: {e}"))
                        .unwrap_or_default()
                );
                outcomes.push(o);
            }
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&root);
    report(&a, &outcomes)?;
    if let Some(f) = failure {
        return Err(f.into());
    }
    let lost: u64 = outcomes.iter().map(|o| o.lost).sum();
    if lost > 0 {
        return Err(format!("{lost} acknowledged puts lost").into());
    }
    if let Some(o) = outcomes
        .iter()
        .find(|o| o.scenario == Scenario::OutageBeyondRetry && o.error.is_none())
    {
        return Err(format!(
            "{}: no write failed during an outage longer than the retry timeout",
            o.scenario.name()
        )
        .into());
    }
    Ok(())
}

/// A long error message cut to its beginning and end, for the printed table.
fn brief(msg: &str) -> String {
    let chars: Vec<char> = msg.chars().collect();
    if chars.len() <= 110 {
        return msg.to_string();
    }
    let head: String = chars[..50].iter().collect();
    let tail: String = chars[chars.len() - 55..].iter().collect();
    format!("{head} ... {tail}")
}

fn report(a: &FaultsArgs, outcomes: &[Outcome]) -> BenchResult<()> {
    let title = format!(
        "durable writes under injected faults ({} writers, {} B values, sync every {} puts, bulk writer {} MiB/s; {} ms PUT / {} ms GET)",
        a.writers, a.value_bytes, a.sync_every, a.bulk_mib_per_s, a.latency.put_latency_ms, a.latency.get_latency_ms
    );
    let columns = [
        "scenario",
        "injected",
        "seconds",
        "acked_puts",
        "puts_per_s",
        "bulk_acked_puts",
        "sync_p50_ms",
        "sync_max_ms",
        "max_put_wait_ms",
        "retries",
        "requests",
        "peak_unflushed_bytes",
        "unflushed_bound_bytes",
        "lost_after_reopen",
        "error_after_outage_s",
        "failed_sync_waited_s",
        "resumed_after_s",
        "error",
    ];
    let mut table = Table::new(&title, &columns);
    let mut printed = Table::new(&title, &columns);
    for o in outcomes {
        let (after, msg) = match &o.error {
            Some((t, m)) => (format!("{t:.2}"), m.clone()),
            None => ("-".to_string(), "-".to_string()),
        };
        let row = vec![
            o.scenario.name().into(),
            o.scenario.injected(a),
            format!("{:.2}", o.seconds),
            o.acked.to_string(),
            format!("{:.0}", o.acked as f64 / o.seconds),
            o.bulk_acked.to_string(),
            format!("{:.1}", quantile(&o.sync_ms, 0.5)),
            format!("{:.1}", quantile(&o.sync_ms, 1.0)),
            format!("{:.1}", o.max_put_wait_ms),
            o.retries.to_string(),
            o.requests.to_string(),
            o.peak_unflushed.to_string(),
            a.max_unflushed_bytes.to_string(),
            o.lost.to_string(),
            after,
            o.failed_sync_s.map_or("-".into(), |t| format!("{t:.2}")),
            o.resumed_s.map_or("-".into(), |t| format!("{t:.2}")),
            msg.clone(),
        ];
        let mut short = row.clone();
        if let Some(last) = short.last_mut() {
            *last = brief(&msg);
        }
        table.row(row);
        printed.row(short);
    }
    print!("{}", printed.render());
    let Some(out) = &a.out else {
        return Ok(());
    };
    table.write_csv(out, "faults")?;
    eprintln!("wrote {}", out.join("faults.csv").display());
    let names: Vec<String> = outcomes.iter().map(|o| o.scenario.name().into()).collect();
    plot::bars(
        &out.join("faults.png"),
        &plot::Chart {
            title: "Acknowledged (synced) puts/s of the syncing writers under S3 faults",
            x_label: "scenario",
            y_label: "puts/s",
            log_x: false,
            log_y: false,
        },
        &names,
        &[plot::Bars {
            name: format!("{} writers, sync every {} puts", a.writers, a.sync_every),
            values: outcomes
                .iter()
                .map(|o| o.acked as f64 / o.seconds)
                .collect(),
        }],
    );
    if let Some(o) = outcomes.iter().find(|o| o.scenario == Scenario::Outage) {
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        let end = o.timeline.last().map_or(0.0, |p| p.0);
        plot::lines(
            &out.join("faults_outage.png"),
            &plot::Chart {
                title: &format!(
                    "A {} s outage: unflushed data stays under its bound",
                    a.outage_secs
                ),
                x_label: "seconds",
                y_label: "MiB; acknowledged puts x 10,000",
                log_x: false,
                log_y: false,
            },
            &[
                plot::Series {
                    name: "unflushed data (MiB)".into(),
                    points: o.timeline.iter().map(|p| (p.0, mib(p.1))).collect(),
                },
                plot::Series {
                    name: "bound (--max-unflushed-bytes)".into(),
                    points: vec![
                        (0.0, mib(a.max_unflushed_bytes)),
                        (end, mib(a.max_unflushed_bytes)),
                    ],
                },
                plot::Series {
                    name: "acknowledged puts (x 10,000)".into(),
                    points: o.timeline.iter().map(|p| (p.0, p.2 as f64 / 1e4)).collect(),
                },
                plot::Series {
                    name: "outage (every request fails)".into(),
                    points: o.outage.map_or(Vec::new(), |(from, to)| {
                        let top = mib(a.max_unflushed_bytes) * 1.05;
                        vec![(from, 0.0), (from, top), (to, top), (to, 0.0)]
                    }),
                },
            ],
        );
    }
    Ok(())
}
