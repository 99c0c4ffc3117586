//! Garbage collection (the cleaner) and compaction into sorted runs.
//!
//! Vocabulary:
//! - **data object**: a log segment or a sorted run (`format::run`); both hold values
//!   that index locations point at.
//! - **live bytes** of an object: key and value bytes of the live keys whose value
//!   lies in it (kept by the index, exact after recovery). **Fill** = live / size.
//! - **log window**: the segments the current manifest's log ranges name; recovery
//!   reads them in full, so they are never rewritten nor deleted.
//! - **rewrite**: copy the live values of some *source* objects, in key order, into
//!   new sorted runs, then append link entries that move each key to its new place,
//!   but only if the key still points where it did (a key written meanwhile keeps its
//!   new value). The links go through the log like any write and are made durable.
//!   *Cleaning* rewrites mostly dead objects; *compaction* rewrites log segments (and
//!   merges runs) so that neighbouring keys sit together.
//! - **unneeded**: no live data and out of the log window. An unneeded object is
//!   *retired*, then deleted after the **grace period**, once the log position that
//!   made it unneeded is durable. A crash loses the retirement notes, never safety: a
//!   later round finds the object again by listing and retires it anew.
//! - **policy** (`policy::choose`): a pure function from the objects' state to the next
//!   [`policy::Choice`]; the **worker** carries it out, in the background of a mounted
//!   writer (throttled, paused while writers have much unflushed data) or on demand
//!   (`kvfs gc`, `kvfs compact`).
//!
//! Old manifests and checkpoints (all but the current ones) are retired and deleted
//! the same way. Nothing a retained snapshot needs is deleted (`retention`).

pub mod objects;
pub mod plan;
pub mod policy;
pub(crate) mod retention;
pub(crate) mod worker;

use std::fmt;

use crate::format::manifest::LogRange;
use crate::format::names::ObjectId;
use crate::format::segment::{FOOTER_LEN, HEADER_LEN};

/// What garbage collection and compaction did (in this process, or in one call).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcCounters {
    /// Rounds that rewrote something.
    pub rewrites: u64,
    /// Source objects rewritten.
    pub objects_rewritten: u64,
    /// Bytes of source objects read.
    pub bytes_read: u64,
    /// Sorted runs written, and their bytes.
    pub runs_written: u64,
    pub run_bytes_written: u64,
    /// Keys moved into runs.
    pub keys_moved: u64,
    /// Data objects deleted, and their bytes.
    pub objects_deleted: u64,
    pub bytes_deleted: u64,
    /// Old manifests and checkpoints deleted.
    pub metadata_deleted: u64,
}

impl GcCounters {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &GcCounters) -> GcCounters {
        GcCounters {
            rewrites: self.rewrites - earlier.rewrites,
            objects_rewritten: self.objects_rewritten - earlier.objects_rewritten,
            bytes_read: self.bytes_read - earlier.bytes_read,
            runs_written: self.runs_written - earlier.runs_written,
            run_bytes_written: self.run_bytes_written - earlier.run_bytes_written,
            keys_moved: self.keys_moved - earlier.keys_moved,
            objects_deleted: self.objects_deleted - earlier.objects_deleted,
            bytes_deleted: self.bytes_deleted - earlier.bytes_deleted,
            metadata_deleted: self.metadata_deleted - earlier.metadata_deleted,
        }
    }
}

impl fmt::Display for GcCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} objects ({} bytes) rewritten into {} runs ({} bytes, {} keys moved); \
             {} objects ({} bytes) and {} old manifests/checkpoints deleted",
            self.objects_rewritten,
            self.bytes_read,
            self.runs_written,
            self.run_bytes_written,
            self.keys_moved,
            self.objects_deleted,
            self.bytes_deleted,
            self.metadata_deleted
        )
    }
}

/// Size of an empty segment: fences (never deleted, so a writer stopped long ago
/// can never append behind a newer one's back) and nothing else.
pub const EMPTY_SEGMENT_LEN: u64 = (HEADER_LEN + FOOTER_LEN) as u64;

/// Whether recovery from a manifest with log ranges `ranges` reads segment `id`.
pub fn in_log_window(ranges: &[LogRange], id: ObjectId) -> bool {
    !id.is_run()
        && ranges
            .iter()
            .any(|r| r.epoch == id.epoch && id.seq >= r.first && (r.is_open() || id.seq <= r.last))
}

/// What the engine's state keeps for GC between rounds.
#[derive(Debug, Default)]
pub struct GcBook {
    pub counters: GcCounters,
    /// Old manifests and checkpoints by object name, with when they were retired.
    pub metadata_retired: std::collections::HashMap<String, tokio::time::Instant>,
    /// Manifest number at the last listing of old manifests and checkpoints.
    pub metadata_checked_at: Option<u64>,
    /// Objects a round found not worth rewriting (the runs would not have been
    /// smaller), with their stored live bytes then: left alone until those change.
    pub not_worth: std::collections::HashMap<ObjectId, u64>,
    /// Objects a rewrite could not read (corrupt or missing): never chosen again by
    /// this process. Their keys still point at them, so they are never deleted
    /// while any key needs them.
    pub damaged: std::collections::HashSet<ObjectId>,
    /// Creation times of manifests (by number) and what each retained snapshot
    /// needs (see `retention`); both never change.
    pub manifest_created: std::collections::HashMap<u64, u64>,
    pub snapshot_pins:
        std::collections::HashMap<u64, std::sync::Arc<std::collections::HashSet<String>>>,
}
