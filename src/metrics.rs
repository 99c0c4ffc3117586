//! Prometheus metrics of a mount (`kvfs mount … --metrics-addr ADDR`), served as text
//! at `http://ADDR/metrics` by `metrics-exporter-prometheus`.
//!
//! Vocabulary:
//! - **event metrics** are recorded where they happen (the `sync` latency
//!   histogram, through the `metrics` facade; a no-op unless an exporter is
//!   installed);
//! - **sampled metrics** are copied from [`Db::figures`] every
//!   [`SAMPLE_INTERVAL`] by [`sample`]: counters as absolute values, gauges as
//!   they are.
//!
//! Every metric is listed, with its type and meaning, in [`METRICS`] (and in
//! docs/SEMANTICS.md, "Metrics").

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{counter, gauge, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::db::Db;

/// How often sampled metrics are refreshed.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// The kinds of metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Name, kind, unit and meaning of every metric.
pub const METRICS: &[(&str, Kind, &str)] = &[
    (
        "kvfs_s3_requests_total",
        Kind::Counter,
        "object-store requests sent, by `op` (put, get, list, delete); every retry counts",
    ),
    (
        "kvfs_s3_bytes_total",
        Kind::Counter,
        "bytes sent (`op` put) and received (`op` get)",
    ),
    (
        "kvfs_s3_errors_total",
        Kind::Counter,
        "object-store requests that failed (before any retry); the two expected answers below are not counted",
    ),
    (
        "kvfs_s3_not_found_total",
        Kind::Counter,
        "requests answered \"no such object\": kvfs looks for objects that may not exist (the next log segment or manifest, the lease of a new store); not an error",
    ),
    (
        "kvfs_s3_precondition_failed_total",
        Kind::Counter,
        "conditional writes answered \"precondition failed\" (the object exists or changed): how a writer learns it lost a race by design; not an error",
    ),
    (
        "kvfs_s3_retries_total",
        Kind::Counter,
        "requests retried after a retryable failure",
    ),
    (
        "kvfs_s3_estimated_cost_usd",
        Kind::Gauge,
        "request cost since the mount started at S3 Standard prices",
    ),
    (
        "kvfs_sync_seconds",
        Kind::Histogram,
        "time a sync (fsync, fdatasync, or a close of the store) waited until its data was durable",
    ),
    (
        "kvfs_uploads_in_flight",
        Kind::Gauge,
        "log segments being uploaded",
    ),
    (
        "kvfs_unflushed_bytes",
        Kind::Gauge,
        "bytes written but not yet durable (bounded by --max-unflushed-bytes)",
    ),
    (
        "kvfs_store_unanswered",
        Kind::Gauge,
        "1 while uploads fail and are being retried (an outage), else 0",
    ),
    (
        "kvfs_store_full",
        Kind::Gauge,
        "1 while the store is full or short of space (writes that add data get ENOSPC), else 0",
    ),
    (
        "kvfs_cache_hits_total",
        Kind::Counter,
        "read-cache lookups that found their bytes",
    ),
    (
        "kvfs_cache_misses_total",
        Kind::Counter,
        "read-cache lookups that did not",
    ),
    (
        "kvfs_cache_bytes",
        Kind::Gauge,
        "bytes held by the read cache",
    ),
    (
        "kvfs_disk_cache_hits_total",
        Kind::Counter,
        "reads of immutable objects answered by the disk cache",
    ),
    (
        "kvfs_disk_cache_hit_bytes_total",
        Kind::Counter,
        "bytes the disk cache answered",
    ),
    (
        "kvfs_disk_cache_misses_total",
        Kind::Counter,
        "reads of immutable objects the disk cache did not hold (fetched, then kept)",
    ),
    (
        "kvfs_disk_cache_written_bytes_total",
        Kind::Counter,
        "bytes written into the disk cache (uploads and fetched ranges)",
    ),
    (
        "kvfs_disk_cache_evictions_total",
        Kind::Counter,
        "disk cache entries removed to stay within --cache-size",
    ),
    (
        "kvfs_disk_cache_corrupt_total",
        Kind::Counter,
        "disk cache entries found torn or corrupt (deleted and fetched again)",
    ),
    (
        "kvfs_disk_cache_bytes",
        Kind::Gauge,
        "bytes the disk cache holds on disk (0 without one)",
    ),
    (
        "kvfs_index_keys",
        Kind::Gauge,
        "keys in the index (about two per file)",
    ),
    (
        "kvfs_index_estimated_bytes",
        Kind::Gauge,
        "estimated heap bytes of the index: key bytes plus 69 per key",
    ),
    (
        "kvfs_live_bytes",
        Kind::Gauge,
        "key and value bytes of the live keys",
    ),
    (
        "kvfs_data_object_bytes",
        Kind::Gauge,
        "bytes of the data objects (segments and runs) this mount knows of",
    ),
    (
        "kvfs_space_amplification",
        Kind::Gauge,
        "data object bytes per live byte",
    ),
    (
        "kvfs_gc_bytes_read_total",
        Kind::Counter,
        "bytes of objects read by garbage collection and compaction",
    ),
    (
        "kvfs_gc_bytes_written_total",
        Kind::Counter,
        "bytes of sorted runs written by garbage collection and compaction",
    ),
    (
        "kvfs_gc_objects_deleted_total",
        Kind::Counter,
        "data objects deleted",
    ),
    (
        "kvfs_gc_bytes_deleted_total",
        Kind::Counter,
        "bytes of data objects deleted",
    ),
    (
        "kvfs_lease_renewals_total",
        Kind::Counter,
        "writer lease renewals, by `result` (ok, failed)",
    ),
    (
        "kvfs_writer_poisoned",
        Kind::Gauge,
        "1 once the writer has stopped after a failure (a refused upload, a fence, a failed background task): every later write and fsync fails with EIO until a remount; else 0",
    ),
    (
        "kvfs_background_task_failures_total",
        Kind::Counter,
        "background tasks (the uploader, the lease renewer, the cleaner, an upload, a checkpoint) that panicked or ended unexpectedly; each poisons the writer",
    ),
];

/// Install the exporter, listening on `addr`. Call from within the async runtime,
/// once per process.
pub fn install(addr: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Full("kvfs_sync_seconds".to_string()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ],
        )
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    for (name, kind, help) in METRICS {
        let name = *name;
        let help = *help;
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, Unit::Seconds, help),
        }
    }
    Ok(())
}

/// Copy `db`'s figures into the sampled metrics every [`SAMPLE_INTERVAL`], forever.
pub async fn sample(db: Db) {
    loop {
        record(&db);
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
}

/// Copy `db`'s figures into the sampled metrics once.
pub fn record(db: &Db) {
    let f = db.figures();
    let r = &f.requests;
    for (op, n) in [
        ("put", r.puts),
        ("get", r.gets),
        ("list", r.lists),
        ("delete", r.deletes),
    ] {
        counter!("kvfs_s3_requests_total", "op" => op).absolute(n);
    }
    counter!("kvfs_s3_bytes_total", "op" => "put").absolute(r.put_bytes);
    counter!("kvfs_s3_bytes_total", "op" => "get").absolute(r.get_bytes);
    counter!("kvfs_s3_errors_total").absolute(r.errors);
    counter!("kvfs_s3_not_found_total").absolute(r.not_found);
    counter!("kvfs_s3_precondition_failed_total").absolute(r.precondition_failed);
    counter!("kvfs_s3_retries_total").absolute(f.retries);
    gauge!("kvfs_s3_estimated_cost_usd").set(r.cost_usd());
    gauge!("kvfs_uploads_in_flight").set(f.uploads_in_flight as f64);
    gauge!("kvfs_unflushed_bytes").set(f.unflushed_bytes as f64);
    gauge!("kvfs_store_unanswered").set(if f.store_unanswered { 1.0 } else { 0.0 });
    gauge!("kvfs_store_full").set(if f.store_full { 1.0 } else { 0.0 });
    counter!("kvfs_cache_hits_total").absolute(f.cache_hits);
    counter!("kvfs_cache_misses_total").absolute(f.cache_misses);
    gauge!("kvfs_cache_bytes").set(f.cache_bytes as f64);
    let d = &f.disk_cache;
    counter!("kvfs_disk_cache_hits_total").absolute(d.hits);
    counter!("kvfs_disk_cache_hit_bytes_total").absolute(d.hit_bytes);
    counter!("kvfs_disk_cache_misses_total").absolute(d.misses);
    counter!("kvfs_disk_cache_written_bytes_total").absolute(d.written_bytes);
    counter!("kvfs_disk_cache_evictions_total").absolute(d.evictions);
    counter!("kvfs_disk_cache_corrupt_total").absolute(d.corrupt);
    gauge!("kvfs_disk_cache_bytes").set(d.bytes as f64);
    gauge!("kvfs_index_keys").set(f.keys as f64);
    gauge!("kvfs_index_estimated_bytes").set(f.index_estimated_bytes as f64);
    gauge!("kvfs_live_bytes").set(f.live_bytes as f64);
    gauge!("kvfs_data_object_bytes").set(f.data_object_bytes as f64);
    let amplification = if f.live_bytes == 0 {
        0.0
    } else {
        f.data_object_bytes as f64 / f.live_bytes as f64
    };
    gauge!("kvfs_space_amplification").set(amplification);
    counter!("kvfs_gc_bytes_read_total").absolute(f.gc.bytes_read);
    counter!("kvfs_gc_bytes_written_total").absolute(f.gc.run_bytes_written);
    counter!("kvfs_gc_objects_deleted_total").absolute(f.gc.objects_deleted);
    counter!("kvfs_gc_bytes_deleted_total").absolute(f.gc.bytes_deleted);
    counter!("kvfs_lease_renewals_total", "result" => "ok").absolute(f.lease_renewals);
    counter!("kvfs_lease_renewals_total", "result" => "failed").absolute(f.lease_renewal_failures);
    gauge!("kvfs_writer_poisoned").set(if f.poisoned { 1.0 } else { 0.0 });
    counter!("kvfs_background_task_failures_total").absolute(f.task_failures);
}
