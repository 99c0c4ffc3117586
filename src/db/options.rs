//! Tuning knobs of the engine, with their defaults, and the one place that checks
//! them ([`Options::validate`], called by every open).

use std::time::Duration;

use super::error::{Error, Result};
use crate::store::encoding::EncodingOptions;
use crate::store::retry::RetryPolicy;

/// Smallest accepted `segment_bytes`.
pub const MIN_SEGMENT_BYTES: usize = 4096;
/// Largest accepted `segment_bytes` and `gc.run_bytes`: offsets within an object
/// are 32-bit.
pub const MAX_OBJECT_BYTES: usize = 1 << 30;
/// Smallest accepted `lease_ttl` (it is renewed every third of it).
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);

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
    /// Open snapshot `N` (manifest `N` as of when `N + 1` was written) instead of
    /// the newest state; read-only, and not followed.
    pub snapshot: Option<u64>,
    /// When the current checkpoint is damaged and no older checkpoint with the
    /// complete log since it remains, rebuild the state from what exists (the newest
    /// intact checkpoint and every readable log segment after it) instead of
    /// refusing to open. The result may be inexact; `kvfs fsck --repair` sets this
    /// and reports what may be wrong.
    pub rebuild_damaged: bool,
    /// What this writer is (such as `mount at /mnt/data`), recorded in its lease so
    /// that a writer refused meanwhile can say where the store is in use.
    pub writer_label: Option<String>,
    /// Garbage collection and compaction.
    pub gc: GcOptions,
    /// Encryption key and compression (see `store::encoding`).
    pub encoding: EncodingOptions,
    /// A local disk cache of immutable objects (see `store::disk_cache`); `None`
    /// (the default of the library) keeps none.
    pub disk_cache: Option<DiskCacheOptions>,
}

/// Where and how large the disk cache is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskCacheOptions {
    /// The base directory: each store's cache is the subdirectory named by its id.
    pub dir: std::path::PathBuf,
    /// Most bytes one store's cache holds.
    pub bytes: u64,
}

/// Settings of the cleaner and of compaction (see `db::gc`).
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Run the cleaner and compaction in the background of a writer.
    pub background: bool,
    /// How often the background worker considers doing something.
    pub interval: Duration,
    /// Keep every point in time (snapshot) that was current within this long
    /// readable: nothing it needs is deleted (see `gc::retention`). Zero keeps none.
    pub retain: Duration,
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
            retain: Duration::ZERO,
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
            writer_label: None,
            snapshot: None,
            rebuild_damaged: false,
            gc: GcOptions::default(),
            encoding: EncodingOptions::default(),
            disk_cache: None,
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

    /// Reject every value that cannot work, naming the option (the field name, as
    /// in `gc.run_bytes`).
    pub fn validate(&self) -> Result<()> {
        fn bad(option: &'static str, problem: String) -> Result<()> {
            Err(Error::InvalidOption { option, problem })
        }
        let at_least = |option: &'static str, got: u64, min: u64| {
            if got < min {
                bad(option, format!("must be at least {min} (got {got})"))
            } else {
                Ok(())
            }
        };
        let positive = |option: &'static str, got: Duration| {
            if got.is_zero() {
                bad(option, "must be longer than zero".to_string())
            } else {
                Ok(())
            }
        };
        at_least(
            "segment_bytes",
            self.segment_bytes as u64,
            MIN_SEGMENT_BYTES as u64,
        )?;
        if self.segment_bytes > MAX_OBJECT_BYTES {
            return bad(
                "segment_bytes",
                format!(
                    "must be at most {MAX_OBJECT_BYTES} (got {})",
                    self.segment_bytes
                ),
            );
        }
        positive("flush_interval", self.flush_interval)?;
        if self.max_unflushed_bytes < self.segment_bytes {
            return bad(
                "max_unflushed_bytes",
                format!(
                    "must be at least segment_bytes ({}), or a full segment could never be \
                     buffered (got {})",
                    self.segment_bytes, self.max_unflushed_bytes
                ),
            );
        }
        at_least("max_inflight_uploads", self.max_inflight_uploads as u64, 1)?;
        at_least("checkpoint_bytes", self.checkpoint_bytes, 1)?;
        at_least(
            "checkpoint_max_ranges",
            self.checkpoint_max_ranges as u64,
            1,
        )?;
        if self.lease_ttl < MIN_LEASE_TTL {
            return bad(
                "lease_ttl",
                format!(
                    "must be at least {MIN_LEASE_TTL:?} (got {:?})",
                    self.lease_ttl
                ),
            );
        }
        positive("retry.initial_backoff", self.retry.initial_backoff)?;
        if self.retry.max_backoff < self.retry.initial_backoff {
            return bad(
                "retry.max_backoff",
                format!(
                    "must be at least retry.initial_backoff ({:?}; got {:?})",
                    self.retry.initial_backoff, self.retry.max_backoff
                ),
            );
        }
        at_least("recovery_parallelism", self.recovery_parallelism as u64, 1)?;
        self.gc.validate()
    }
}

impl GcOptions {
    fn validate(&self) -> Result<()> {
        fn bad(option: &'static str, problem: String) -> Result<()> {
            Err(Error::InvalidOption { option, problem })
        }
        if self.interval.is_zero() {
            return bad("gc.interval", "must be longer than zero".to_string());
        }
        if !(0.0..=1.0).contains(&self.clean_below_fill) {
            return bad(
                "gc.clean_below_fill",
                format!(
                    "must be a fraction from 0 to 1 (got {})",
                    self.clean_below_fill
                ),
            );
        }
        for (option, got, min) in [
            ("gc.max_round_bytes", self.max_round_bytes, 1),
            ("gc.compact_min_bytes", self.compact_min_bytes, 1),
            ("gc.max_runs", self.max_runs as u64, 1),
            ("gc.run_bytes", self.run_bytes as u64, 64 << 10),
            ("gc.readahead_bytes", self.readahead_bytes as u64, 4096),
            ("gc.max_bytes_per_sec", self.max_bytes_per_sec, 1),
        ] {
            if got < min {
                return bad(option, format!("must be at least {min} (got {got})"));
            }
        }
        if self.run_bytes > MAX_OBJECT_BYTES {
            return bad(
                "gc.run_bytes",
                format!(
                    "must be at most {MAX_OBJECT_BYTES} (got {})",
                    self.run_bytes
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option_of(o: &Options) -> &'static str {
        match o.validate() {
            Err(Error::InvalidOption { option, .. }) => option,
            other => panic!("expected an invalid option, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        Options::default().validate().unwrap();
        Options::read_only().validate().unwrap();
    }

    #[test]
    fn values_that_cannot_work_are_rejected_by_name() {
        let d = Options::default;
        let cases: Vec<(Options, &str)> = vec![
            (
                Options {
                    segment_bytes: 0,
                    ..d()
                },
                "segment_bytes",
            ),
            (
                Options {
                    segment_bytes: 2 << 30,
                    max_unflushed_bytes: 4 << 30,
                    ..d()
                },
                "segment_bytes",
            ),
            (
                Options {
                    flush_interval: Duration::ZERO,
                    ..d()
                },
                "flush_interval",
            ),
            (
                Options {
                    max_unflushed_bytes: 1024,
                    ..d()
                },
                "max_unflushed_bytes",
            ),
            (
                Options {
                    max_inflight_uploads: 0,
                    ..d()
                },
                "max_inflight_uploads",
            ),
            (
                Options {
                    checkpoint_bytes: 0,
                    ..d()
                },
                "checkpoint_bytes",
            ),
            (
                Options {
                    checkpoint_max_ranges: 0,
                    ..d()
                },
                "checkpoint_max_ranges",
            ),
            (
                Options {
                    lease_ttl: Duration::ZERO,
                    ..d()
                },
                "lease_ttl",
            ),
            (
                Options {
                    recovery_parallelism: 0,
                    ..d()
                },
                "recovery_parallelism",
            ),
            (
                Options {
                    retry: RetryPolicy {
                        initial_backoff: Duration::ZERO,
                        ..RetryPolicy::default()
                    },
                    ..d()
                },
                "retry.initial_backoff",
            ),
            (
                Options {
                    retry: RetryPolicy {
                        max_backoff: Duration::from_millis(1),
                        ..RetryPolicy::default()
                    },
                    ..d()
                },
                "retry.max_backoff",
            ),
        ];
        for (o, want) in &cases {
            assert_eq!(option_of(o), *want);
        }
        let gc = |g: GcOptions| Options { gc: g, ..d() };
        let g = GcOptions::default;
        let gc_cases: Vec<(Options, &str)> = vec![
            (
                gc(GcOptions {
                    interval: Duration::ZERO,
                    ..g()
                }),
                "gc.interval",
            ),
            (
                gc(GcOptions {
                    clean_below_fill: 1.5,
                    ..g()
                }),
                "gc.clean_below_fill",
            ),
            (
                gc(GcOptions {
                    clean_below_fill: f64::NAN,
                    ..g()
                }),
                "gc.clean_below_fill",
            ),
            (
                gc(GcOptions {
                    max_round_bytes: 0,
                    ..g()
                }),
                "gc.max_round_bytes",
            ),
            (gc(GcOptions { max_runs: 0, ..g() }), "gc.max_runs"),
            (
                gc(GcOptions {
                    run_bytes: 10,
                    ..g()
                }),
                "gc.run_bytes",
            ),
            (
                gc(GcOptions {
                    readahead_bytes: 0,
                    ..g()
                }),
                "gc.readahead_bytes",
            ),
            (
                gc(GcOptions {
                    max_bytes_per_sec: 0,
                    ..g()
                }),
                "gc.max_bytes_per_sec",
            ),
        ];
        for (o, want) in &gc_cases {
            assert_eq!(option_of(o), *want);
        }
        let msg = Options {
            max_inflight_uploads: 0,
            ..d()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert_eq!(
            msg,
            "invalid option max_inflight_uploads: must be at least 1 (got 0)"
        );
    }
}
