//! Tuning knobs of the engine, with their defaults.

use std::time::Duration;

use crate::store::retry::RetryPolicy;

/// Largest accepted key, in bytes.
pub const MAX_KEY_LEN: usize = 4096;
/// Largest accepted value, in bytes.
pub const MAX_VALUE_LEN: usize = 64 << 20;

#[derive(Clone, Debug)]
pub struct Options {
    /// Seal the open segment once it holds this many bytes.
    pub segment_bytes: usize,
    /// Seal a non-empty open segment at the latest this long after its first write.
    pub flush_interval: Duration,
    /// Most bytes written but not yet durable; writers wait beyond it.
    pub max_unflushed_bytes: usize,
    /// Most segment uploads in flight at once.
    pub max_inflight_uploads: usize,
    /// Size of the read cache (recent segments and fetched entries).
    pub cache_bytes: usize,
    /// Write a checkpoint once this many bytes of log follow the last one.
    pub checkpoint_bytes: u64,
    /// On close, write a checkpoint if at least this many bytes of log follow the last
    /// one, or if the manifest lists more than `checkpoint_max_ranges` log ranges.
    pub checkpoint_on_close_bytes: u64,
    pub checkpoint_max_ranges: usize,
    /// Writer lease time-to-live; renewed every third of it.
    pub lease_ttl: Duration,
    /// Retries of object-store requests.
    pub retry: RetryPolicy,
    /// Segments fetched in parallel during recovery.
    pub recovery_parallelism: usize,
    /// Open without taking the writer lease; writes fail with `ReadOnly`.
    pub read_only: bool,
    /// Garbage collection and compaction.
    pub gc: GcOptions,
}

/// Settings of the cleaner and of compaction (see `db::gc`).
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Run the cleaner and compaction in the background of a writer.
    pub background: bool,
    /// How often the background worker considers doing something.
    pub interval: Duration,
    /// An object no longer needed is deleted only this long after it stopped being
    /// needed, so in-flight reads and recently opened readers can still fetch it.
    pub grace: Duration,
    /// Clean objects whose live bytes are below this fraction of their size. S3
    /// prices requests, not bytes copied within a region, and a rewrite moves whole
    /// objects, so cleaning eagerly (70 %) costs little and keeps stored bytes near
    /// the live bytes (`kvfs-bench gc` compares thresholds).
    pub clean_below_fill: f64,
    /// Objects younger than this are left alone (their data may still die young).
    pub min_age: Duration,
    /// Most bytes of objects read (and so rewritten at most) by one round.
    pub max_round_bytes: u64,
    /// Compact old log segments once their live data reaches this many bytes.
    pub compact_min_bytes: u64,
    /// Merge the smallest runs once there are more runs than this.
    pub max_runs: usize,
    /// Target size of a sorted run.
    pub run_bytes: usize,
    /// Bytes fetched by one ranged GET when reading from a run (readahead).
    pub readahead_bytes: usize,
    /// Background rewriting is throttled to about this many bytes per second.
    pub max_bytes_per_sec: u64,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            background: true,
            interval: Duration::from_secs(5),
            grace: Duration::from_secs(60),
            clean_below_fill: 0.7,
            min_age: Duration::from_secs(30),
            max_round_bytes: 64 << 20,
            compact_min_bytes: 16 << 20,
            max_runs: 16,
            run_bytes: 64 << 20,
            readahead_bytes: 1 << 20,
            max_bytes_per_sec: 32 << 20,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes: 4 << 20,
            flush_interval: Duration::from_millis(1000),
            max_unflushed_bytes: 256 << 20,
            max_inflight_uploads: 8,
            cache_bytes: 64 << 20,
            checkpoint_bytes: 64 << 20,
            checkpoint_on_close_bytes: 4 << 20,
            checkpoint_max_ranges: 16,
            lease_ttl: Duration::from_secs(20),
            retry: RetryPolicy::default(),
            recovery_parallelism: 8,
            read_only: false,
            gc: GcOptions::default(),
        }
    }
}

impl Options {
    pub fn read_only() -> Self {
        Options {
            read_only: true,
            ..Options::default()
        }
    }
}
