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
