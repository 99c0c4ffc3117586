//! The engine's mutable state, guarded by one mutex, and the log's bookkeeping.
//!
//! Vocabulary:
//! - **open segment**: the in-memory segment that receives new entries.
//! - **sealed**: closed for appends and waiting for an upload slot.
//! - **in flight**: being uploaded.
//! - **durable point**: the highest sequence number `d` of this writer's epoch such
//!   that segments `1..=d` have all been stored. Only the contiguous prefix counts:
//!   recovery never replays a segment after a gap.
//! - **poisoned**: a failed upload, a fence or a failed background task (see
//!   `tasks`) stops all later writes and syncs with that error; nothing after a hole
//!   in the log could ever become durable.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use tokio::time::Instant;

use bytes::Bytes;

use super::cache::ByteCache;
use super::error::Error;
use super::gc::objects::ObjectTable;
use super::gc::GcBook;
use super::index::Index;
use crate::format::manifest::Manifest;
use crate::format::names::ObjectId;
use crate::format::segment::{SegmentBuilder, FOOTER_LEN, HEADER_LEN};

/// Longest a sync-requested seal waits, after the previous sync segment landed, for
/// the syncs it released to come back (writers that sync in step, such as 16
/// threads that each write and fsync a file, return a few hundred microseconds to a
/// few milliseconds apart). A lone writer's group is 1, so it never waits.
pub const GROUP_COMMIT_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// A segment closed for appends.
#[derive(Clone, Debug)]
pub struct SealedSegment {
    pub id: ObjectId,
    pub data: Bytes,
}

#[derive(Debug)]
pub struct LogState {
    pub epoch: u64,
    pub open: SegmentBuilder,
    pub open_since: Option<Instant>,
    pub sealed: VecDeque<SealedSegment>,
    pub inflight: BTreeMap<u64, SealedSegment>,
    /// Uploaded segments above the durable point (completed out of order).
    pub done: BTreeSet<u64>,
    pub durable_seq: u64,
    pub last_sealed_seq: u64,
    /// Sync waiters need everything up to this sequence number sealed.
    pub sync_target: u64,
    /// The last segment sealed because a sync waited for it. The next one is sealed
    /// for syncs only once it is durable, so the syncs that arrive meanwhile share one
    /// PUT (group commit) instead of each starting its own.
    pub sync_sealed_seq: u64,
    /// Syncs waiting for the open segment, and when the first of them arrived.
    pub open_syncers: usize,
    pub open_first_sync: Option<Instant>,
    /// Syncs waiting for the segment sealed for syncs (`sync_sealed_seq`).
    pub sync_group: usize,
    /// The group the next sync-sealed segment waits for (at most
    /// [`GROUP_COMMIT_WAIT`] from the moment the previous one landed): the syncs that
    /// landing released plus those already waiting then.
    pub group_hint: usize,
    /// When the previous sync-sealed segment landed.
    pub group_landed: Option<Instant>,
    /// Entry bytes appended but not yet durable.
    pub unflushed_bytes: usize,
}

impl LogState {
    pub fn new(epoch: u64) -> Self {
        LogState {
            epoch,
            open: SegmentBuilder::new(ObjectId { epoch, seq: 1 }, 0),
            open_since: None,
            sealed: VecDeque::new(),
            inflight: BTreeMap::new(),
            done: BTreeSet::new(),
            durable_seq: 0,
            last_sealed_seq: 0,
            sync_target: 0,
            sync_sealed_seq: 0,
            open_syncers: 0,
            open_first_sync: None,
            sync_group: 0,
            group_hint: 1,
            group_landed: None,
            unflushed_bytes: 0,
        }
    }

    /// Close the open segment for appends (if it has entries) and start a new one.
    pub fn seal_open(&mut self) {
        if self.open.is_empty() {
            return;
        }
        let id = self.open.id();
        // Size the next buffer like this one (capped), so it rarely has to grow.
        let capacity = (self.open.len() + FOOTER_LEN).min(8 << 20);
        let next = SegmentBuilder::with_capacity(
            ObjectId {
                epoch: self.epoch,
                seq: id.seq + 1,
            },
            0,
            capacity,
        );
        let old = std::mem::replace(&mut self.open, next);
        self.open_syncers = 0;
        self.open_first_sync = None;
        self.open_since = None;
        self.last_sealed_seq = id.seq;
        self.sealed.push_back(SealedSegment {
            id,
            data: old.finish(),
        });
    }

    /// Bytes of `len` at `offset` of segment `id`, if that segment is still in memory.
    pub fn memory_slice(&self, id: ObjectId, offset: usize, len: usize) -> Option<Bytes> {
        if id.epoch != self.epoch {
            return None;
        }
        if id.seq == self.open.id().seq {
            return self.open.slice(offset, len).map(Bytes::copy_from_slice);
        }
        let seg = self
            .inflight
            .get(&id.seq)
            .or_else(|| self.sealed.iter().find(|s| s.id.seq == id.seq))?;
        let end = offset.checked_add(len)?;
        (end <= seg.data.len()).then(|| seg.data.slice(offset..end))
    }

    /// Record a completed upload; returns whether the durable point advanced.
    pub fn complete(&mut self, seq: u64) -> Option<SealedSegment> {
        let seg = self.inflight.remove(&seq)?;
        self.done.insert(seq);
        let was_waiting = self.sync_sealed_seq > self.durable_seq;
        while self.done.remove(&(self.durable_seq + 1)) {
            self.durable_seq += 1;
        }
        if was_waiting && self.sync_sealed_seq <= self.durable_seq {
            // The sync group landed: expect it back, with those waiting already.
            self.group_hint = (self.sync_group + self.open_syncers).max(1);
            self.group_landed = Some(Instant::now());
        }
        let entry_bytes = seg.data.len().saturating_sub(HEADER_LEN + FOOTER_LEN);
        self.unflushed_bytes = self.unflushed_bytes.saturating_sub(entry_bytes);
        Some(seg)
    }

    pub fn is_idle(&self) -> bool {
        self.open.is_empty() && self.sealed.is_empty() && self.inflight.is_empty()
    }
}

#[derive(Debug)]
pub struct State {
    pub index: Index,
    pub log: LogState,
    pub cache: ByteCache,
    /// The current manifest (the last one this process read or wrote).
    pub manifest: Manifest,
    /// Entry bytes logged since the last checkpoint.
    pub log_bytes_since_checkpoint: u64,
    pub checkpoint_running: bool,
    pub poisoned: Option<Error>,
    /// `close` has begun: new writes are refused, buffered ones are flushed.
    pub closing: bool,
    /// `close` has finished (or the handle was abandoned).
    pub closed: bool,
    /// Known data objects and their sizes (for GC, stats and readahead).
    pub objects: ObjectTable,
    pub gc: GcBook,
    /// How far a read-only handle has followed the store (see `follower`).
    pub position: super::recovery::Position,
    /// What rounds of following applied since `Db::catch_up` last reported it.
    pub followed: super::follower::CatchUp,
}
