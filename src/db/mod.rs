//! The engine: a key-value store whose persistent state is a log of segment objects
//! in an object store, plus checkpoints of the index and numbered manifests.
//!
//! Vocabulary (see also `state`, `recovery` and docs/ARCHITECTURE.md):
//! - **entry**: one put or delete of one key, inside a segment.
//! - **segment**: an object of entries, written once by one PUT. Named by writer epoch
//!   and sequence number.
//! - **writer epoch**: a number that grows by one each time a writer opens the store;
//!   each epoch writes its own segment sequence 1, 2, 3, …
//! - **checkpoint**: a sorted snapshot of the index (key → location of its value).
//! - **manifest**: names the checkpoint and the log ranges to replay after it.
//! - **durable**: stored in the object store; `sync` returns once everything written
//!   before it is durable.
//!
//! Reads are served from the in-memory segments, then the cache, then a ranged GET of
//! exactly one entry. Writes append to the open segment and return; `sync` makes
//! them durable. Memory for data not yet durable is bounded: writers wait.

mod cache;
mod checkpointer;
pub mod error;
mod follower;
mod fsck;
pub mod gc;
#[cfg(feature = "test-hooks")]
mod hooks;
mod index;
pub mod lease;
mod options;
mod recovery;
mod repair;
mod snapshots;
mod state;
mod stats;
mod store_id;
mod tasks;
mod uploader;

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::time::Instant;

use bytes::Bytes;
use tokio::sync::{watch, Notify};

pub use error::{Error, Result};
pub use follower::{CatchUp, MANIFEST_EVERY as FOLLOW_MANIFEST_EVERY};
pub use fsck::{FsckIssue, FsckReport, LostKey};
pub use gc::plan::GcPlan;
pub use gc::GcCounters;
#[cfg(feature = "test-hooks")]
pub use hooks::TaskFault;
pub use options::{DiskCacheOptions, GcOptions, Options, MAX_KEY_LEN, MAX_VALUE_LEN};
pub use recovery::Fallback;
pub use repair::RepairReport;
pub use snapshots::Snapshot;
pub use stats::{FileCounts, Stats};

use crate::format::checkpoint::{IndexEntry, Location};
use crate::format::names::{object_name, ObjectId};
use crate::format::segment::{
    decode_value, delete_len, link_len, put_len, stored_value_len, MAX_META_LEN,
};
use crate::store::disk_cache;
use crate::store::encoding::open_encoded;
use crate::store::metered::{Meter, MeteredStore};
use crate::store::retry::RetryStore;
use crate::store::{open_store, DynStore, StoreError, StoreUrl};
use cache::CacheKey;
use index::ValueAt;
use lease::Lease;
use state::State;

/// One operation of a [`Db::write_batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    /// Store a value (without metadata).
    Put(Vec<u8>, Vec<u8>),
    /// Remove a key (no error if absent).
    Delete(Vec<u8>),
    /// Store a value with a metadata blob of at most [`MAX_META_LEN`] bytes.
    PutMeta {
        key: Vec<u8>,
        meta: Vec<u8>,
        value: Vec<u8>,
    },
    /// `key` takes the current value of `source` without copying it, and `meta` (or
    /// the source's metadata when `None`). Fails the whole batch if `source` does not
    /// exist at that point of the batch. `key == source` changes metadata only.
    Link {
        key: Vec<u8>,
        source: Vec<u8>,
        meta: Option<Vec<u8>>,
    },
}

impl BatchOp {
    /// Bytes this operation takes in a segment (for [`Db::wait_for_room`]).
    pub fn encoded_len(&self) -> usize {
        match self {
            BatchOp::Put(key, value) => put_len(key.len(), 0, value.len()),
            BatchOp::Delete(key) => delete_len(key.len()),
            BatchOp::PutMeta { key, meta, value } => put_len(key.len(), meta.len(), value.len()),
            BatchOp::Link { key, meta, .. } => {
                link_len(key.len(), meta.as_ref().map_or(MAX_META_LEN, Vec::len))
            }
        }
    }
}

fn batch_ops(ops: &[BatchOp]) -> Vec<Op<'_>> {
    ops.iter()
        .map(|op| match op {
            BatchOp::Put(key, value) => Op::Put {
                key,
                meta: &[],
                value,
            },
            BatchOp::Delete(key) => Op::Delete { key },
            BatchOp::PutMeta { key, meta, value } => Op::Put { key, meta, value },
            BatchOp::Link { key, source, meta } => Op::Link {
                key,
                source,
                meta: meta.as_deref(),
            },
        })
        .collect()
}

/// What the index holds for a key, readable without any request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub value_len: u32,
    pub meta: Option<Box<[u8]>>,
    /// Which stored value the key refers to (see [`ValueId`]).
    pub value_id: ValueId,
}

/// Which stored value a key refers to, as one call of [`Db::info`] or
/// [`Db::scan_info`] saw it: keys that share one value (by [`BatchOp::Link`]) have
/// equal ids. Comparable only between the results of one call: GC moves values,
/// and the slot of an object that is gone is used again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ValueId {
    slot: u32,
    offset: u32,
}

impl ValueId {
    fn of(loc: &Location) -> ValueId {
        ValueId {
            slot: loc.slot,
            offset: loc.offset,
        }
    }

    /// An id for tests of code that compares ids.
    #[doc(hidden)]
    pub fn for_test(n: u32) -> ValueId {
        ValueId { slot: n, offset: 0 }
    }
}

/// A borrowed operation, as the write path handles it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op<'a> {
    Put {
        key: &'a [u8],
        meta: &'a [u8],
        value: &'a [u8],
    },
    Delete {
        key: &'a [u8],
    },
    Link {
        key: &'a [u8],
        source: &'a [u8],
        meta: Option<&'a [u8]>,
    },
    /// GC: move `key` to the value at `offset` of data object `target`, keeping its
    /// metadata, if it still points at `expect` (otherwise nothing is written).
    Relocate {
        key: &'a [u8],
        expect: ValueAt,
        target: ObjectId,
        offset: u32,
    },
}

impl Op<'_> {
    fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. }
            | Op::Delete { key }
            | Op::Link { key, .. }
            | Op::Relocate { key, .. } => key,
        }
    }

    /// Bytes the entry takes in a segment (an upper bound for links, whose metadata
    /// may come from the source).
    fn encoded_len(&self) -> usize {
        match self {
            Op::Put { key, meta, value } => put_len(key.len(), meta.len(), value.len()),
            Op::Delete { key } => delete_len(key.len()),
            Op::Link { key, .. } | Op::Relocate { key, .. } => link_len(key.len(), MAX_META_LEN),
        }
    }
}

/// Bytes a readahead window reaches past its aligned end (a file-system block or
/// inline file crossing the boundary is still read with one GET).
const WINDOW_OVERLAP: u64 = 68 << 10;

/// A readahead window of a run: object and window number.
pub(crate) type WindowKey = (ObjectId, u64);

/// Index heap bytes per key beyond the key itself, as measured (EXPERIMENTS.md,
/// "Engine"): the basis of [`Figures::index_estimated_bytes`].
pub const INDEX_BYTES_PER_KEY: u64 = 69;

/// A handle's current figures (see [`Db::figures`]); counters count since it opened.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub requests: crate::store::metered::Metrics,
    pub retries: u64,
    pub gc: GcCounters,
    pub unflushed_bytes: u64,
    pub uploads_in_flight: u64,
    /// Uploads are failing and being retried (an outage).
    pub store_unanswered: bool,
    /// The store is full or short of space: writes that add data are refused.
    pub store_full: bool,
    pub keys: u64,
    pub index_estimated_bytes: u64,
    pub live_bytes: u64,
    /// Bytes of the data objects (segments and runs) this handle knows of.
    pub data_object_bytes: u64,
    pub cache_bytes: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// The disk cache (all zero when none is kept).
    pub disk_cache: disk_cache::DiskCacheFigures,
    pub lease_renewals: u64,
    pub lease_renewal_failures: u64,
    /// The writer is poisoned: every later write and sync fails (a refused upload, a
    /// fence, a background task that failed).
    pub poisoned: bool,
    /// Background tasks that panicked or ended unexpectedly.
    pub task_failures: u64,
}

/// When a waiter that started now gives up on a store that does not answer: after
/// `limit`, or (for a limit too large to add) in about a century.
fn give_up_at(limit: std::time::Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(limit)
        .or_else(|| now.checked_add(std::time::Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// Longest an interrupted command tries to give its lease back.
pub const RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn within_release_timeout(
    release: impl std::future::Future<Output = Result<bool>>,
) -> Result<bool> {
    match tokio::time::timeout(RELEASE_TIMEOUT, release).await {
        Ok(r) => r,
        Err(_) => Err(Error::Unavailable(format!(
            "the object store did not answer within {} s; the lease expires by itself",
            RELEASE_TIMEOUT.as_secs()
        ))),
    }
}

/// What the durable-point channel carries.
#[derive(Clone, Debug, Default)]
pub(crate) struct Durable {
    pub seq: u64,
    pub error: Option<Error>,
    /// Uploads are failing and being retried (see [`Stall`]).
    pub stall: Option<Stall>,
}

/// The object store stopped answering: an upload exhausted its retries and is being
/// tried again, in order, until it lands. Nothing is dropped meanwhile; waiters for
/// durability or memory give up after `Options::retry.max_elapsed` each.
#[derive(Clone, Debug)]
pub(crate) struct Stall {
    pub since: Instant,
    pub error: String,
    /// The store refused the upload for lack of space: waiters give up at once
    /// (space comes back only when something is deleted, not by waiting).
    pub no_space: bool,
}

impl Stall {
    /// The error a waiter that gave up returns.
    pub fn error(&self) -> Error {
        if self.no_space {
            return Error::NoSpace(format!(
                "{}; what was written stays queued and is uploaded, in order, once \
                 deletes and cleaning give space back",
                self.error
            ));
        }
        Error::Unavailable(format!(
            "the object store has not answered for {:.0} s (last error: {}); what was \
             written stays queued and is uploaded, in order, once it answers",
            self.since.elapsed().as_secs_f64(),
            self.error
        ))
    }
}

pub(crate) struct Shared {
    pub store: DynStore,
    pub meter: Arc<Meter>,
    pub retry: Arc<RetryStore>,
    /// Whether the store is encrypted, and how new objects are compressed.
    pub encoding: crate::store::encoding::Encoding,
    pub opts: Options,
    pub epoch: u64,
    pub writable: bool,
    pub state: Mutex<State>,
    pub durable: watch::Sender<Durable>,
    pub wake_uploader: Notify,
    pub space_freed: Notify,
    pub checkpoint_done: Notify,
    pub lease: tokio::sync::Mutex<Option<Lease>>,
    /// The disk cache layer, when the options keep one.
    pub disk_cache: Option<Arc<disk_cache::DiskCacheStore>>,
    pub tasks: Mutex<tasks::TaskSet>,
    pub opened_in: std::time::Duration,
    /// How the state was recovered at open if the current checkpoint was damaged.
    pub fallback: Option<recovery::Fallback>,
    /// Held by whoever runs GC or compaction, so only one runs at a time.
    pub gc_lock: tokio::sync::Mutex<()>,
    /// Readahead windows being fetched from runs, so concurrent readers of one
    /// window share one GET.
    pub windows: Mutex<HashMap<WindowKey, Arc<tokio::sync::OnceCell<Bytes>>>>,
    /// Follower rounds started (numbered under `follow_lock`), and the lock that
    /// runs them one at a time, holding which of them finished.
    pub follow_rounds: std::sync::atomic::AtomicU64,
    pub follow_lock: tokio::sync::Mutex<follower::Finished>,
    /// Lease renewals that worked, and those that failed.
    pub lease_renewals: std::sync::atomic::AtomicU64,
    pub lease_renewal_failures: std::sync::atomic::AtomicU64,
    /// Background tasks that panicked or ended unexpectedly (see `task_ended`).
    pub task_failures: std::sync::atomic::AtomicU64,
    #[cfg(feature = "test-hooks")]
    pub hooks: hooks::Hooks,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stop all later writes with `err` and wake everyone who waits.
    pub fn poison(&self, st: &mut State, err: Error) {
        if st.poisoned.is_none() {
            log::error!("writes stopped: {err}");
            let p = err.poisoned();
            st.poisoned = Some(p.clone());
            self.durable.send_modify(|d| d.error = Some(p));
        }
        self.space_freed.notify_waiters();
        self.wake_uploader.notify_one();
        self.checkpoint_done.notify_waiters();
    }

    /// Cancel every background task (a simulated crash, or the last handle gone).
    fn stop_tasks(&self) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .abort_all();
    }

    /// Start a background task of `kind` (see `tasks`), called `name` in errors (such
    /// as "the uploader"). How it ends is reported to [`Shared::task_ended`].
    pub(crate) fn spawn(
        self: &Arc<Self>,
        kind: tasks::Kind,
        name: impl Into<String>,
        fut: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let name = name.into();
        // Weak: the task set lives in `Shared`, and must not keep it alive.
        let sh = Arc::downgrade(self);
        let report = move |outcome| {
            if let Some(sh) = sh.upgrade() {
                sh.task_ended(kind, &name, outcome);
            }
        };
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .spawn(kind, fut, report);
    }

    /// A background task ended by itself. A panic, or a loop (or the cleaner) that
    /// returns while the writer is open, poisons the writer with an error naming the
    /// task and the cause, and wakes every waiter: nothing that depends on the task
    /// waits for it in vain.
    fn task_ended(&self, kind: tasks::Kind, name: &str, outcome: tasks::Outcome) {
        let failure = match outcome {
            tasks::Outcome::Panicked(message) => format!("{name} panicked: {message}"),
            tasks::Outcome::Returned if kind == tasks::Kind::Work => return,
            tasks::Outcome::Returned => {
                let st = self.lock();
                // Loops end by themselves once the writer is poisoned or closed, and
                // the cleaner once it closes.
                if st.poisoned.is_some() || st.closing || st.closed {
                    return;
                }
                format!("{name} ended unexpectedly")
            }
        };
        self.task_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let err = Error::Poisoned(format!("background task failed: {failure}"));
        let mut st = self.lock();
        self.poison(&mut st, err);
    }

    /// Wait for the tasks of `kind` to end, cancelling them first with `abort`.
    /// Tasks of that kind started meanwhile are waited for too.
    async fn drain(&self, kind: tasks::Kind, abort: bool) {
        loop {
            let set = self
                .tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(kind);
            if set.is_empty() {
                return;
            }
            tasks::drain(set, abort).await;
        }
    }

    /// Append `ops` as one batch (waiting for memory if needed). Returns how many
    /// relocations took effect.
    pub(crate) async fn write(&self, ops: &[Op<'_>]) -> Result<usize> {
        let size = self.check_batch(ops)?;
        if ops.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(n) = self.try_append(ops, size)? {
                return Ok(n);
            }
            log::debug!("write waits: unflushed data is at its memory limit");
            self.wait_for_room(size).await?;
        }
    }

    /// Wait until a batch of `size` encoded bytes would fit in unflushed memory.
    /// While the store does not answer, gives up after the retry timeout.
    pub(crate) async fn wait_for_room(&self, size: usize) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        let deadline = give_up_at(self.opts.retry.max_elapsed);
        loop {
            // Register for a wake-up before checking, so none is missed.
            let notified = self.space_freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.has_room(&*self.open_state()?, size) {
                return Ok(());
            }
            self.wake_uploader.notify_one();
            let stall = self.durable.borrow().stall.clone();
            match stall {
                Some(s) if s.no_space || Instant::now() >= deadline => return Err(s.error()),
                Some(_) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(deadline) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// The state, locked, unless the engine is poisoned or closing.
    fn open_state(&self) -> Result<MutexGuard<'_, State>> {
        let st = self.lock();
        if let Some(e) = &st.poisoned {
            return Err(e.clone());
        }
        if st.closing || st.closed {
            return Err(Error::Closed);
        }
        Ok(st)
    }

    /// Whether unflushed memory has room for `size` more bytes (a batch always fits
    /// when nothing is unflushed, however large it is).
    fn has_room(&self, st: &State, size: usize) -> bool {
        let log = &st.log;
        log.unflushed_bytes == 0 || log.unflushed_bytes + size <= self.opts.max_unflushed_bytes
    }

    /// Validate a batch; its encoded size.
    fn check_batch(&self, ops: &[Op<'_>]) -> Result<usize> {
        let mut size = 0usize;
        for op in ops {
            validate_key(op.key())?;
            match op {
                Op::Put { meta, value, .. } => {
                    validate_meta(meta)?;
                    validate_value(value)?;
                }
                Op::Link {
                    source, meta: m, ..
                } => {
                    validate_key(source)?;
                    if let Some(m) = m {
                        validate_meta(m)?;
                    }
                }
                Op::Delete { .. } | Op::Relocate { .. } => {}
            }
            size += op.encoded_len();
        }
        if !ops.is_empty() && !self.writable {
            return Err(Error::ReadOnly);
        }
        Ok(size)
    }

    /// Why writes that add data are refused now, if they are: the store is short of
    /// space, or refused an upload for lack of it.
    pub(crate) fn space_problem(&self) -> Option<String> {
        if let Some(s) = self.durable.borrow().stall.as_ref().filter(|s| s.no_space) {
            return Some(s.error.clone());
        }
        self.store.short_of_space().then(|| {
            format!(
                "{} is nearly full; deletes go through and cleaning gives space back",
                self.store.describe()
            )
        })
    }

    /// Append if the unflushed-memory bound allows (returning the relocations that
    /// took effect); `None` if the writer must wait. While the store is short of
    /// space, a batch whose values add up to more than those it replaces or deletes
    /// is refused with `NoSpace`; deletes, links, relocations and changes that store
    /// no more than they drop (a record written again with the same value) go
    /// through.
    fn try_append(&self, ops: &[Op<'_>], size: usize) -> Result<Option<usize>> {
        let adds_values = ops
            .iter()
            .any(|op| matches!(op, Op::Put { value, .. } if !value.is_empty()));
        let space_problem = if adds_values {
            self.space_problem()
        } else {
            None
        };
        let mut st = self.open_state()?;
        if let Some(problem) = space_problem {
            if value_growth(&st.index, ops) > 0 {
                return Err(Error::NoSpace(problem));
            }
        }
        if !self.has_room(&st, size) {
            return Ok(None);
        }
        check_link_sources(&st.index, ops)?;
        Ok(Some(self.append_locked(&mut st, ops)))
    }

    fn append_locked(&self, st: &mut State, ops: &[Op<'_>]) -> usize {
        let sh = self;
        let State { index, log, .. } = st;
        let size: usize = ops.iter().map(Op::encoded_len).sum();
        // A batch never straddles two segments.
        if !log.open.is_empty() && log.open.len() + size > sh.opts.segment_bytes {
            log.seal_open();
            sh.wake_uploader.notify_one();
        }
        let open_id = log.open.id();
        let before = log.open.len();
        let mut relocated = 0;
        for op in ops {
            match *op {
                Op::Put { key, meta, value } => {
                    let offset = log.open.put(key, meta, value);
                    // Looked up per entry: a slot is released the moment no key
                    // refers to its object any more.
                    let slot = index.slot_for(open_id);
                    index.insert(
                        key,
                        IndexEntry {
                            loc: Location {
                                slot,
                                offset,
                                value_len: value.len() as u32,
                            },
                            meta: (!meta.is_empty()).then(|| Box::from(meta)),
                        },
                    );
                }
                Op::Delete { key } => {
                    log.open.delete(key);
                    index.remove(key);
                }
                Op::Link { key, source, meta } => {
                    // Checked by `check_link_sources` under this same lock.
                    let Some(src) = index.get(source).cloned() else {
                        continue;
                    };
                    let Some(target) = index.object(src.loc.slot) else {
                        continue;
                    };
                    let meta: Option<Box<[u8]>> = match meta {
                        Some(m) => (!m.is_empty()).then(|| Box::from(m)),
                        None => src.meta.clone(),
                    };
                    log.open.link(
                        key,
                        meta.as_deref().unwrap_or(&[]),
                        src.loc.value_len,
                        target,
                        src.loc.offset,
                    );
                    index.insert(key, IndexEntry { loc: src.loc, meta });
                }
                Op::Relocate {
                    key,
                    expect,
                    target,
                    offset,
                } => {
                    let Some((cur, at)) = index.get_at(key) else {
                        continue;
                    };
                    if at != expect {
                        continue;
                    }
                    let meta = cur.meta.clone();
                    let loc = Location {
                        slot: index.slot_for(target),
                        offset,
                        value_len: expect.value_len,
                    };
                    log.open.link(
                        key,
                        meta.as_deref().unwrap_or(&[]),
                        loc.value_len,
                        target,
                        offset,
                    );
                    index.insert(key, IndexEntry { loc, meta });
                    relocated += 1;
                }
            }
        }
        let appended = log.open.len() - before;
        log.unflushed_bytes += appended;
        if log.open_since.is_none() {
            log.open_since = Some(Instant::now());
            sh.wake_uploader.notify_one();
        }
        if log.open.len() >= sh.opts.segment_bytes {
            log.seal_open();
            sh.wake_uploader.notify_one();
        }
        st.log_bytes_since_checkpoint += appended as u64;
        relocated
    }

    /// Wait until every write that returned before this call is durable.
    pub(crate) async fn sync(&self) -> Result<()> {
        let sh = self;
        if !sh.writable {
            return Ok(());
        }
        let target = {
            let mut st = sh.lock();
            if let Some(e) = &st.poisoned {
                return Err(e.clone());
            }
            let log = &mut st.log;
            if log.open.is_empty() {
                log.last_sealed_seq
            } else {
                let seq = log.open.id().seq;
                log.sync_target = log.sync_target.max(seq);
                log.open_syncers += 1;
                log.open_first_sync.get_or_insert_with(Instant::now);
                seq
            }
        };
        sh.wake_uploader.notify_one();
        sh.wait_durable(target).await
    }

    /// Visit every key of the index in order, holding the state lock for 8,192 keys
    /// at a time only, so writers go on meanwhile. Keys changed during the walk are
    /// seen as of some moment during it (a *fuzzy* walk).
    pub(crate) async fn for_each_key_chunked(
        &self,
        mut f: impl FnMut(&[u8], &IndexEntry, ObjectId),
    ) {
        const CHUNK: usize = 8192;
        let mut cursor: Option<Box<[u8]>> = None;
        loop {
            let done = {
                let st = self.lock();
                let start = match &cursor {
                    Some(c) => Bound::Excluded(&**c),
                    None => Bound::Unbounded,
                };
                let mut n = 0;
                let mut last = None;
                for (k, e) in st.index.range(start, Bound::Unbounded).take(CHUNK) {
                    // Resolved under the same lock: a slot may name another object
                    // once released.
                    if let Some(id) = st.index.object(e.loc.slot) {
                        f(k, e, id);
                    }
                    last = Some(k);
                    n += 1;
                }
                cursor = last.map(Box::from);
                n < CHUNK
            };
            if done {
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    /// Wait until the durable point reaches `seq` of this writer's epoch. While the
    /// store does not answer (a [`Stall`]), gives up after the retry timeout; the
    /// data stays queued.
    pub async fn wait_durable(&self, seq: u64) -> Result<()> {
        let deadline = give_up_at(self.opts.retry.max_elapsed);
        let mut rx = self.durable.subscribe();
        loop {
            let stalled = {
                let d = rx.borrow_and_update();
                if d.seq >= seq {
                    return Ok(());
                }
                if let Some(e) = &d.error {
                    return Err(e.clone());
                }
                match &d.stall {
                    Some(s) if s.no_space || Instant::now() >= deadline => return Err(s.error()),
                    other => other.is_some(),
                }
            };
            if stalled {
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return Err(Error::Closed) },
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            } else if rx.changed().await.is_err() {
                return Err(Error::Closed);
            }
        }
    }
}

/// Bytes of values a batch adds to the index minus those it replaces or deletes.
fn value_growth(index: &index::Index, ops: &[Op<'_>]) -> i64 {
    let old = |key: &[u8]| index.get(key).map_or(0, |e| i64::from(e.loc.value_len));
    ops.iter()
        .map(|op| match op {
            Op::Put { key, value, .. } => value.len() as i64 - old(key),
            Op::Delete { key } => -old(key),
            Op::Link { .. } | Op::Relocate { .. } => 0,
        })
        .sum()
}

/// The life of a handle: `Open` → `Closing` (close has begun: writes are refused,
/// everything written is being flushed) → `Closed`. `Poisoned`: a write failed for
/// good, the writer was fenced, or a background task panicked or ended unexpectedly;
/// every later write and sync fails with that error, and `close` returns it after
/// stopping the tasks and releasing the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Open,
    Closing,
    Closed,
    Poisoned,
}

/// A handle on an open store. Cheap to clone; all clones share one engine. Dropping
/// the last clone without [`Db::close`] stops background work at once, like a crash:
/// writes that were not synced may be lost.
#[derive(Clone)]
pub struct Db {
    handle: Arc<Handle>,
}

/// Owns the background tasks; they stop when the last [`Db`] clone goes away.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.stop_tasks();
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("store", &self.handle.shared.store.describe())
            .field("epoch", &self.handle.shared.epoch)
            .field("writable", &self.handle.shared.writable)
            .finish()
    }
}

/// Check a key against the engine's limits.
pub fn validate_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidKey("keys must not be empty".to_string()));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidKey(format!(
            "key is {} bytes; the maximum is {MAX_KEY_LEN}",
            key.len()
        )));
    }
    Ok(())
}

fn validate_meta(meta: &[u8]) -> Result<()> {
    if meta.len() > MAX_META_LEN {
        return Err(Error::InvalidMeta(format!(
            "metadata is {} bytes; the maximum is {MAX_META_LEN}",
            meta.len()
        )));
    }
    Ok(())
}

/// Check, before anything is appended, that every link's source exists at its point
/// of the batch (so a batch is applied whole or not at all).
fn check_link_sources(index: &index::Index, ops: &[Op<'_>]) -> Result<()> {
    if !ops.iter().any(|op| matches!(op, Op::Link { .. })) {
        return Ok(());
    }
    let mut overlay: std::collections::HashMap<&[u8], bool> = std::collections::HashMap::new();
    for op in ops {
        match op {
            Op::Put { key, .. } => {
                overlay.insert(key, true);
            }
            Op::Delete { key } => {
                overlay.insert(key, false);
            }
            Op::Relocate { .. } => {}
            Op::Link { key, source, .. } => {
                let exists = overlay
                    .get(source)
                    .copied()
                    .unwrap_or_else(|| index.get(source).is_some());
                if !exists {
                    return Err(Error::NotFound(String::from_utf8_lossy(source).to_string()));
                }
                overlay.insert(key, true);
            }
        }
    }
    Ok(())
}

fn validate_value(value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_LEN {
        return Err(Error::ValueTooLarge {
            size: value.len(),
            max: MAX_VALUE_LEN,
        });
    }
    Ok(())
}

impl Db {
    /// Open the store a URL names (`s3://bucket/prefix`, a path, `file:///path`).
    pub async fn open(url: &str, mut opts: Options) -> Result<Db> {
        let url = StoreUrl::parse(url)?;
        if !matches!(url, StoreUrl::S3 { .. }) {
            // The objects of a local store are local files already.
            opts.disk_cache = None;
        }
        let backend = open_store(&url).await?;
        Db::open_store(backend, opts).await
    }

    /// Give back the writer lease of the store at `url` if this process holds it:
    /// for a command interrupted while [`Db::open`] was under way (the lease may be
    /// taken before the open returns a handle). Returns whether a lease was released.
    /// Tries for at most [`RELEASE_TIMEOUT`]: an interrupted command should not wait
    /// long for a store that does not answer (the lease then expires by itself).
    pub async fn release_lease_of_this_process(url: &str, opts: &Options) -> Result<bool> {
        let url = StoreUrl::parse(url)?;
        let backend = open_store(&url).await?;
        let mut policy = opts.retry.clone();
        policy.max_elapsed = policy.max_elapsed.min(RELEASE_TIMEOUT);
        let store: DynStore = Arc::new(RetryStore::new(backend, policy));
        within_release_timeout(lease::release_if_held_by_this_process(store)).await
    }

    /// Open a store on an already constructed backend. The engine adds its own retry
    /// and metering layers around it.
    pub async fn open_store(backend: DynStore, opts: Options) -> Result<Db> {
        opts.validate()?;
        let started = Instant::now();
        let metered = MeteredStore::new(backend);
        let meter = metered.meter();
        let retry = Arc::new(RetryStore::new(Arc::new(metered), opts.retry.clone()));
        let writer = !opts.read_only && opts.snapshot.is_none();
        // The disk cache keeps objects as stored (below the envelope layer) and
        // answers without a request (above retries and metering). It is attached
        // before recovery when the store has an id, so a warm open reads nothing.
        let disk_cache = opts.disk_cache.as_ref().map(|c| {
            Arc::new(disk_cache::DiskCacheStore::new(
                retry.clone() as DynStore,
                c.bytes,
            ))
        });
        let below_envelope: DynStore = match &disk_cache {
            Some(c) => c.clone(),
            None => retry.clone(),
        };
        if let (Some(cache), Some(o)) = (&disk_cache, &opts.disk_cache) {
            if let Some(id) = store_id::read(&below_envelope).await? {
                cache.attach(o.dir.join(id)).await;
            }
        }
        let (store, encoding) =
            open_encoded(below_envelope.clone(), &opts.encoding, writer).await?;
        let opened = recovery::open(store.clone(), &opts).await?;
        if let (Some(cache), Some(o)) = (&disk_cache, &opts.disk_cache) {
            if opened.lease.is_some() && cache.dir().is_none() {
                match store_id::ensure(&below_envelope).await {
                    Ok(Some(id)) => cache.attach(o.dir.join(id)).await,
                    Ok(None) => {}
                    Err(e) => log::warn!("the disk cache is off: no store id: {e}"),
                }
            }
        }
        let epoch = opened.epoch;
        let writable = opened.lease.is_some();
        let (durable, _) = watch::channel(Durable::default());
        let shared = Arc::new(Shared {
            store,
            disk_cache,
            meter,
            retry,
            encoding,
            epoch,
            writable,
            state: Mutex::new(State {
                index: opened.index,
                log: state::LogState::new(epoch),
                cache: cache::ByteCache::new(opts.cache_bytes),
                manifest: opened.manifest,
                log_bytes_since_checkpoint: opened.replayed_bytes,
                checkpoint_running: false,
                poisoned: None,
                closing: false,
                closed: false,
                objects: gc::objects::ObjectTable::new(started),
                gc: gc::GcBook::default(),
                position: opened.position,
                followed: CatchUp::default(),
            }),
            opts,
            durable,
            wake_uploader: Notify::new(),
            space_freed: Notify::new(),
            checkpoint_done: Notify::new(),
            lease: tokio::sync::Mutex::new(opened.lease),
            tasks: Mutex::new(tasks::TaskSet::default()),
            opened_in: started.elapsed(),
            fallback: opened.fallback,
            gc_lock: tokio::sync::Mutex::new(()),
            windows: Mutex::new(HashMap::new()),
            follow_rounds: Default::default(),
            follow_lock: tokio::sync::Mutex::new(follower::Finished::default()),
            lease_renewals: Default::default(),
            lease_renewal_failures: Default::default(),
            task_failures: Default::default(),
            #[cfg(feature = "test-hooks")]
            hooks: Default::default(),
        });
        {
            let st = shared.lock();
            log::info!(
                "opened {} {} in {} ms: manifest {}, checkpoint {}, {} keys, {} bytes of log replayed, {} requests",
                shared.store.describe(),
                if writable {
                    format!("as writer (epoch {epoch})")
                } else {
                    "read-only".to_string()
                },
                shared.opened_in.as_millis(),
                st.manifest.seq,
                st.manifest
                    .checkpoint
                    .as_ref()
                    .map_or("none".to_string(), |c| c.to_string()),
                st.index.len(),
                opened.replayed_bytes,
                shared.meter.snapshot().requests()
            );
        }
        if writable {
            shared.spawn(
                tasks::Kind::Loop,
                "the uploader",
                uploader::run(shared.clone()),
            );
            shared.spawn(
                tasks::Kind::Loop,
                "the lease renewer",
                uploader::renew_lease(shared.clone()),
            );
            if shared.opts.gc.background {
                shared.spawn(
                    tasks::Kind::Gc,
                    "the background cleaner",
                    gc::worker::run_background(shared.clone()),
                );
            }
            // A state recovered exactly around a damaged checkpoint is published in a
            // fresh checkpoint at once: the damage is healed, and the older checkpoint
            // and log it needed may go. An inexact rebuild is left to `fsck --repair`,
            // which first removes what it lost.
            if shared.fallback.as_ref().is_some_and(|f| f.exact) {
                if let Err(e) = checkpointer::run_exclusive(&shared).await {
                    log::warn!("could not write a checkpoint to replace the damaged one: {e}");
                } else {
                    log::info!("wrote a fresh checkpoint replacing the damaged one");
                }
            }
        }
        Ok(Db {
            handle: Arc::new(Handle { shared }),
        })
    }

    /// The writer epoch this handle writes (or, read-only, the store's current one).
    pub fn epoch(&self) -> u64 {
        self.handle.shared.epoch
    }

    pub fn is_read_only(&self) -> bool {
        !self.handle.shared.writable
    }

    /// The object store as the engine sees it (with retry and metering layers).
    pub fn store(&self) -> &DynStore {
        &self.handle.shared.store
    }

    /// Request counters of this handle's object store.
    pub fn metrics(&self) -> crate::store::metered::Metrics {
        self.handle.shared.meter.snapshot()
    }

    /// Number of retried object-store requests.
    pub fn retries(&self) -> u64 {
        self.handle.shared.retry.retries()
    }

    /// Store `value` under `key`. Not durable until [`Db::sync`] returns.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.write(&[Op::Put {
            key,
            meta: &[],
            value,
        }])
        .await
    }

    /// Store `value` under `key` with a metadata blob (at most [`MAX_META_LEN`]
    /// bytes), which the index keeps in memory.
    pub async fn put_with_meta(&self, key: &[u8], meta: &[u8], value: &[u8]) -> Result<()> {
        self.write(&[Op::Put { key, meta, value }]).await
    }

    /// Remove `key` (no error if it is absent). Not durable until [`Db::sync`].
    pub async fn delete(&self, key: &[u8]) -> Result<()> {
        self.write(&[Op::Delete { key }]).await
    }

    /// Apply all operations atomically: after a crash either all or none are present.
    pub async fn write_batch(&self, ops: &[BatchOp]) -> Result<()> {
        self.write(&batch_ops(ops)).await
    }

    async fn write(&self, ops: &[Op<'_>]) -> Result<()> {
        self.handle.shared.write(ops).await.map(|_| ())
    }

    /// Why writes that add data are refused now (`Error::NoSpace`, `ENOSPC`), if
    /// they are: the store is short of space or refused an upload for lack of it.
    /// Deletes and changes that store no more than they drop still go through.
    pub fn space_problem(&self) -> Option<String> {
        self.handle.shared.space_problem()
    }

    /// Wait until unflushed memory has room for a batch of about `bytes` encoded
    /// bytes (see [`BatchOp::encoded_len`]). Callers that must check and write under
    /// their own lock wait here first, holding nothing, then call
    /// [`Db::try_write_batch`] under the lock; it may still say "no room" when other
    /// writers got there first, and the caller waits again.
    pub async fn wait_for_room(&self, bytes: usize) -> Result<()> {
        self.handle.shared.wait_for_room(bytes).await
    }

    /// [`Db::write_batch`] without waiting: `Ok(false)` (nothing written) when
    /// unflushed memory has no room for the batch now.
    pub fn try_write_batch(&self, ops: &[BatchOp]) -> Result<bool> {
        let ops = batch_ops(ops);
        let size = self.handle.shared.check_batch(&ops)?;
        if ops.is_empty() {
            return Ok(true);
        }
        Ok(self.handle.shared.try_append(&ops, size)?.is_some())
    }

    /// Wait until every write that returned before this call is durable.
    pub async fn sync(&self) -> Result<()> {
        let started = Instant::now();
        let r = self.handle.shared.sync().await;
        metrics::histogram!("kvfs_sync_seconds").record(started.elapsed().as_secs_f64());
        r
    }

    /// The value of `key`, or `None`.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        validate_key(key)?;
        let Some(mut at) = self.value_at(key)? else {
            return Ok(None);
        };
        let mut caught_up = false;
        loop {
            match self.read_value(at).await {
                // The object was deleted by GC after the key moved: read it again
                // from its new place. A follower may not know the new place yet:
                // it catches up with the writer (once) first.
                Err(Error::Store(StoreError::NotFound(n))) => {
                    if self.is_read_only() && !caught_up {
                        caught_up = true;
                        follower::catch_up(&self.handle.shared, true).await?;
                    }
                    match self.value_at(key)? {
                        Some(now) if now != at => at = now,
                        Some(_) => return Err(Error::Store(StoreError::NotFound(n))),
                        None => return Ok(None),
                    }
                }
                r => return r.map(Some),
            }
        }
    }

    /// Read-only handles: apply what the writer stored since this handle last looked
    /// (one round of following, see `follower`), and report what every round since
    /// the last call applied, including rounds that reads ran after finding an
    /// object gone. Cheap when nothing is new: one GET of the next expected segment,
    /// and now and then one of the next manifest. A writer's handle has nothing to
    /// follow.
    pub async fn catch_up(&self) -> Result<CatchUp> {
        let sh = &self.handle.shared;
        follower::catch_up(sh, false).await?;
        Ok(std::mem::take(&mut sh.lock().followed))
    }

    /// Rounds of following this handle has run (see [`Db::catch_up`]).
    pub fn follow_rounds(&self) -> u64 {
        self.handle
            .shared
            .follow_rounds
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where the value of `key` lies now, if it exists.
    fn value_at(&self, key: &[u8]) -> Result<Option<ValueAt>> {
        let st = self.handle.shared.lock();
        let Some(e) = st.index.get(key) else {
            return Ok(None);
        };
        st.index.locate(&e.loc).map(Some).ok_or_else(|| {
            Error::Inconsistent(format!("index names unknown segment slot {}", e.loc.slot))
        })
    }

    /// Value length and metadata of `key`, from memory (no request).
    pub fn info(&self, key: &[u8]) -> Option<KeyInfo> {
        self.handle.shared.lock().index.get(key).map(|e| KeyInfo {
            value_len: e.loc.value_len,
            meta: e.meta.clone(),
            value_id: ValueId::of(&e.loc),
        })
    }

    /// Keys in `[start, end)` order with their value lengths and metadata, at most
    /// `limit`, from memory (no request).
    pub fn scan_info(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Vec<(Vec<u8>, KeyInfo)> {
        let st = self.handle.shared.lock();
        st.index
            .range(start, end)
            .take(limit)
            .map(|(k, e)| {
                (
                    k.to_vec(),
                    KeyInfo {
                        value_len: e.loc.value_len,
                        meta: e.meta.clone(),
                        value_id: ValueId::of(&e.loc),
                    },
                )
            })
            .collect()
    }

    /// [`Db::scan_info`] of the keys that start with `prefix`, after the key `after`
    /// when given (the last key of the previous page).
    pub fn scan_info_prefix(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Vec<(Vec<u8>, KeyInfo)> {
        let end = prefix_successor(prefix);
        let start = after.map_or(Bound::Included(prefix), Bound::Excluded);
        self.scan_info(start, prefix_end(&end), limit)
    }

    /// Fetch the value at `loc`: memory, cache, then a ranged GET of exactly the
    /// stored value (checksum and bytes), or of a whole readahead window of a run.
    async fn read_value(&self, loc: ValueAt) -> Result<Bytes> {
        let sh = &self.handle.shared;
        let len = stored_value_len(loc.value_len) as usize;
        let off = loc.offset as usize;
        let window = sh.opts.gc.readahead_bytes as u64;
        let id = loc.object;
        {
            let mut st = sh.lock();
            if let Some(b) = st.log.memory_slice(id, off, len) {
                return Ok(b.slice(4..));
            }
            if let Some(b) = st.cache.get(&CacheKey::Entry(id, loc.offset)) {
                return Ok(b);
            }
            if let Some(seg) = st.cache.get(&CacheKey::Segment(id)) {
                if off + len <= seg.len() {
                    return decode_value(&seg.slice(off..off + len))
                        .map_err(|e| Error::corrupt(object_name(id), e));
                }
            }
            if window > len as u64 {
                let w = off as u64 / window;
                if let Some(b) = st.cache.get(&CacheKey::Window(id, w)) {
                    let at = off - (w * window) as usize;
                    if at + len <= b.len() {
                        return decode_value(&b.slice(at..at + len))
                            .map_err(|e| Error::corrupt(object_name(id), e));
                    }
                }
            }
        }
        if window > len as u64 {
            if let Some(v) = self.read_from_window(loc).await? {
                return Ok(v);
            }
        }
        let name = object_name(id);
        let raw = sh
            .store
            .get_range(&name, off as u64..(off + len) as u64)
            .await?;
        let value = decode_value(&raw).map_err(|e| Error::corrupt(name.clone(), e))?;
        sh.lock()
            .cache
            .insert(CacheKey::Entry(id, loc.offset), value.clone());
        Ok(value)
    }

    /// Read a value of a run through its readahead window: one ranged GET fetches the
    /// aligned window holding the value (and the rest of the value if it runs past
    /// the window), and the window stays in the cache for the neighbouring keys.
    /// `None` if the run's size is unknown (then only the value itself is fetched).
    async fn read_from_window(&self, loc: ValueAt) -> Result<Option<Bytes>> {
        let sh = &self.handle.shared;
        let id = loc.object;
        let window = sh.opts.gc.readahead_bytes as u64;
        let len = stored_value_len(loc.value_len);
        let off = loc.offset as u64;
        let mut size = sh.lock().objects.size(id);
        if size.is_none() {
            if id.is_run() {
                gc::worker::ensure_runs_listed(sh).await?;
            } else {
                gc::worker::ensure_listed(sh).await?;
            }
            size = sh.lock().objects.size(id);
        }
        let Some(size) = size else { return Ok(None) };
        let w = off / window;
        let start = w * window;
        // Windows overlap a little, so a small value that crosses into the next
        // window is read from this one rather than fetching it again.
        let end = ((w + 1) * window + WINDOW_OVERLAP).max(off + len).min(size);
        if off + len > end {
            return Ok(None);
        }
        let cell = {
            let mut fetches = sh.windows.lock().unwrap_or_else(|e| e.into_inner());
            fetches.entry((id, w)).or_default().clone()
        };
        let name = object_name(id);
        let fetched = cell
            .get_or_try_init(|| async {
                // Another reader may have fetched it between our cache miss and now.
                if let Some(b) = sh.lock().cache.get(&CacheKey::Window(id, w)) {
                    if b.len() as u64 >= end - start {
                        return Ok(b);
                    }
                }
                let b = sh.store.get_range(&name, start..end).await?;
                sh.lock().cache.insert(CacheKey::Window(id, w), b.clone());
                Ok::<Bytes, Error>(b)
            })
            .await;
        sh.windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(id, w));
        let bytes = fetched?;
        // The window may have been fetched for another reader, who asked for a
        // shorter end: a value past it is fetched on its own.
        let at = (off - start) as usize;
        let Some(stored) = bytes.get(at..at + len as usize) else {
            return Ok(None);
        };
        let stored = bytes.slice_ref(stored);
        decode_value(&stored)
            .map(Some)
            .map_err(|e| Error::corrupt(name, e))
    }

    /// Keys (with values unless `keys_only`) in `[start, end)` order, at most `limit`.
    pub async fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        keys_only: bool,
    ) -> Result<Vec<(Vec<u8>, Option<Bytes>)>> {
        let found: Vec<(Vec<u8>, Option<ValueAt>)> = {
            let st = self.handle.shared.lock();
            st.index
                .range(start, end)
                .take(limit)
                .map(|(k, e)| (k.to_vec(), st.index.locate(&e.loc)))
                .collect()
        };
        if keys_only {
            return Ok(found.into_iter().map(|(k, _)| (k, None)).collect());
        }
        // Fetch values with bounded concurrency, keeping key order.
        let mut out = Vec::with_capacity(found.len());
        let mut pending = std::collections::VecDeque::new();
        let mut iter = found.into_iter();
        loop {
            while pending.len() < 16 {
                let Some((k, loc)) = iter.next() else { break };
                let db = self.clone();
                pending.push_back(tokio::spawn(async move {
                    let v = match loc {
                        Some(at) => db.read_value(at).await,
                        None => Err(Error::Inconsistent(format!(
                            "index of {:?} names an unknown segment slot",
                            String::from_utf8_lossy(&k)
                        ))),
                    };
                    (k, v)
                }));
            }
            let Some(h) = pending.pop_front() else { break };
            let (k, v) = h
                .await
                .map_err(|e| Error::Inconsistent(format!("read task failed: {e}")))?;
            out.push((k, Some(v?)));
        }
        Ok(out)
    }

    /// Keys and values under `prefix`, in key order, at most `limit`.
    pub async fn scan_prefix(
        &self,
        prefix: &[u8],
        limit: usize,
        keys_only: bool,
    ) -> Result<Vec<(Vec<u8>, Option<Bytes>)>> {
        let end = prefix_successor(prefix);
        self.scan(Bound::Included(prefix), prefix_end(&end), limit, keys_only)
            .await
    }

    /// Bytes written but not yet durable (bounded by `Options::max_unflushed_bytes`).
    pub fn unflushed_bytes(&self) -> usize {
        self.handle.shared.lock().log.unflushed_bytes
    }

    /// Sum of key and value lengths of all live keys.
    pub fn live_bytes(&self) -> u64 {
        self.handle.shared.lock().index.live_bytes()
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.handle.shared.lock().index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Write a checkpoint now (normally done in the background).
    pub async fn checkpoint(&self) -> Result<()> {
        checkpointer::run_exclusive(&self.handle.shared).await
    }

    /// Flush everything, checkpoint if worthwhile, release the writer lease.
    ///
    /// Returns once every background task has ended: the cleaner is stopped first
    /// (it appends nothing after the final flush), then every upload and checkpoint
    /// has finished, the log range is closed in a manifest, the loops are stopped
    /// and the lease released. Nothing reaches the store after `close` returns.
    pub async fn close(&self) -> Result<()> {
        let sh = &self.handle.shared;
        if sh.writable {
            sh.lock().closing = true;
            sh.drain(tasks::Kind::Gc, true).await;
            let result = self.close_writer().await;
            {
                let mut st = sh.lock();
                st.closing = true;
                st.closed = true;
            }
            sh.wake_uploader.notify_one();
            // After a failure, uploads may still be retrying: cancel them.
            sh.drain(tasks::Kind::Work, result.is_err()).await;
            // Everything is durable and no checkpoint runs: close the log range, so
            // the next writer needs no fence.
            let result = match result {
                Ok(()) => checkpointer::close_log_range(sh).await,
                Err(e) => Err(e),
            };
            sh.drain(tasks::Kind::Loop, true).await;
            sh.drain(tasks::Kind::Work, true).await;
            let released = self.release_lease(result.is_err()).await;
            return result.and(released);
        }
        sh.lock().closed = true;
        Ok(())
    }

    /// Where this handle is in its life.
    pub fn lifecycle(&self) -> Lifecycle {
        let st = self.handle.shared.lock();
        if st.poisoned.is_some() && !st.closed {
            Lifecycle::Poisoned
        } else if st.closed {
            Lifecycle::Closed
        } else if st.closing {
            Lifecycle::Closing
        } else {
            Lifecycle::Open
        }
    }

    async fn close_writer(&self) -> Result<()> {
        let sh = &self.handle.shared;
        {
            let mut st = sh.lock();
            if st.closed {
                return Ok(());
            }
            // From here on new writes are refused; everything already written is
            // flushed by the sync below.
            st.closing = true;
        }
        self.sync().await?;
        let need_checkpoint = {
            let st = sh.lock();
            st.log_bytes_since_checkpoint >= sh.opts.checkpoint_on_close_bytes
                || st.manifest.ranges.len() > sh.opts.checkpoint_max_ranges
        };
        if need_checkpoint {
            checkpointer::run_exclusive(sh).await?;
        }
        sh.lock().closed = true;
        sh.wake_uploader.notify_one();
        Ok(())
    }

    /// Give the lease back so the next writer starts at once. After a failure the
    /// writer may have been fenced, in which case the lease is no longer ours.
    async fn release_lease(&self, after_failure: bool) -> Result<()> {
        let Some(mut lease) = self.handle.shared.lease.lock().await.take() else {
            return Ok(());
        };
        match lease.release().await {
            Ok(()) => Ok(()),
            Err(e) if after_failure => {
                log::warn!("could not release the writer lease: {e}");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Stop at once, as a crash would (nothing more is uploaded, writes not yet
    /// durable are lost), but give the writer lease back so the next writer starts
    /// without waiting. For an interrupted command.
    /// Tries to release for at most [`RELEASE_TIMEOUT`].
    pub async fn abort(&self) -> Result<()> {
        self.stop_like_a_crash();
        if !self.handle.shared.writable {
            return Ok(());
        }
        let Some(mut lease) = self.handle.shared.lease.lock().await.take() else {
            return Ok(());
        };
        within_release_timeout(async move { lease.release().await.map(|()| true) })
            .await
            .map(|_| ())
    }

    /// Simulate a crash in tests: stop background work without flushing or releasing.
    /// Only with the `test-hooks` feature; not part of the stable API.
    #[cfg(feature = "test-hooks")]
    pub fn abandon(&self) {
        self.stop_like_a_crash();
    }

    /// Make a background task fail (see [`TaskFault`]), to test what depends on it.
    /// Only with the `test-hooks` feature; not part of the stable API.
    #[cfg(feature = "test-hooks")]
    pub fn inject(&self, fault: TaskFault) {
        let sh = &self.handle.shared;
        sh.hooks.arm(fault);
        sh.wake_uploader.notify_one();
    }

    fn stop_like_a_crash(&self) {
        {
            let sh = &self.handle.shared;
            let mut st = sh.lock();
            st.closing = true;
            st.closed = true;
            st.poisoned = Some(Error::Closed);
            sh.durable.send_modify(|d| d.error = Some(Error::Closed));
            sh.space_freed.notify_waiters();
            sh.checkpoint_done.notify_waiters();
        }
        self.handle.shared.stop_tasks();
    }

    /// The points in time this store can show (`Options::snapshot`), oldest first.
    pub async fn snapshots(&self) -> Result<Vec<Snapshot>> {
        snapshots::list(&self.handle.shared).await
    }

    /// Counters and positions for `kvfs stats`.
    pub async fn stats(&self) -> Result<Stats> {
        stats::collect(&self.handle.shared).await
    }

    /// What [`Db::gc`] (or, with `compact`, [`Db::compact`]) would do, worked out
    /// without writing anything; works on a read-only handle (see `gc::plan`).
    pub async fn gc_plan(&self, compact: bool) -> Result<GcPlan> {
        let mode = if compact {
            gc::worker::Mode::Compact
        } else {
            gc::worker::Mode::Clean
        };
        gc::plan::plan(&self.handle.shared, mode).await
    }

    /// Clean now: rewrite mostly dead objects, then delete every object (and old
    /// manifest and checkpoint) nothing needs, waiting out the grace period
    /// ([`GcOptions::grace`]). Returns what was done.
    pub async fn gc(&self, progress: &mut (dyn FnMut(&str) + Send)) -> Result<GcCounters> {
        gc::worker::run_on_demand(&self.handle.shared, gc::worker::Mode::Clean, progress).await
    }

    /// Compact now: rewrite all live data in key order into sorted runs, then delete
    /// what nothing needs, as [`Db::gc`] does.
    pub async fn compact(&self, progress: &mut (dyn FnMut(&str) + Send)) -> Result<GcCounters> {
        gc::worker::run_on_demand(&self.handle.shared, gc::worker::Mode::Compact, progress).await
    }

    /// What GC and compaction did through this handle so far.
    pub fn gc_counters(&self) -> GcCounters {
        self.handle.shared.lock().gc.counters
    }

    /// What this handle is doing now, from memory (no request): for metrics.
    pub fn figures(&self) -> Figures {
        let sh = &self.handle.shared;
        let stall = sh.durable.borrow().stall.clone();
        let store_full = sh.space_problem().is_some();
        let st = sh.lock();
        Figures {
            requests: sh.meter.snapshot(),
            retries: sh.retry.retries(),
            gc: st.gc.counters,
            unflushed_bytes: st.log.unflushed_bytes as u64,
            uploads_in_flight: st.log.inflight.len() as u64,
            store_unanswered: stall.is_some_and(|s| !s.no_space),
            store_full,
            keys: st.index.len() as u64,
            index_estimated_bytes: st.index.key_bytes()
                + st.index.len() as u64 * INDEX_BYTES_PER_KEY,
            live_bytes: st.index.live_bytes(),
            data_object_bytes: st.objects.bytes(),
            cache_bytes: st.cache.bytes() as u64,
            cache_hits: st.cache.hits,
            cache_misses: st.cache.misses,
            disk_cache: sh
                .disk_cache
                .as_ref()
                .map(|c| c.figures())
                .unwrap_or_default(),
            lease_renewals: sh.lease_renewals.load(std::sync::atomic::Ordering::Relaxed),
            lease_renewal_failures: sh
                .lease_renewal_failures
                .load(std::sync::atomic::Ordering::Relaxed),
            // A handle stopped like a crash is marked with `Closed`, not a failure.
            poisoned: st
                .poisoned
                .as_ref()
                .is_some_and(|e| !matches!(e, Error::Closed)),
            task_failures: sh.task_failures.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Read and verify every object of the store.
    /// How the state was recovered at open if the current checkpoint was damaged
    /// (`None` when it was read as usual).
    pub fn recovery_fallback(&self) -> Option<Fallback> {
        self.handle.shared.fallback.clone()
    }

    /// `kvfs fsck --repair` (see `repair`): needs a writer handle, best opened with
    /// [`Options::rebuild_damaged`] so that a store without an exact fallback for a
    /// damaged checkpoint opens at all.
    pub async fn repair(&self, progress: &mut (dyn FnMut(&str) + Send)) -> Result<RepairReport> {
        repair::run(&self.handle.shared, progress).await
    }

    pub async fn fsck(&self, progress: &mut dyn FnMut(&str)) -> Result<FsckReport> {
        fsck::run(&self.handle.shared, progress).await
    }
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The end bound of the keys under a prefix, from its [`prefix_successor`].
fn prefix_end(successor: &Option<Vec<u8>>) -> Bound<&[u8]> {
    successor
        .as_deref()
        .map_or(Bound::Unbounded, Bound::Excluded)
}
