//! The engine's shared core: the state every subsystem works on ([`Shared`]) and the
//! write path of the log (check a batch, wait for room, append it under the state
//! lock, wait until it is durable). [`super::Db`] is the public face over it; the
//! uploader, checkpointer, GC, follower and lease tasks hold the same `Shared`.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::error::{Error, Result};
#[cfg(feature = "test-hooks")]
use super::hooks;
use super::lease::Lease;
use super::options::{Options, MAX_VALUE_LEN};
use super::state::State;
use super::{follower, index, recovery, tasks, validate_key, Op, WindowKey};
use crate::format::checkpoint::{IndexEntry, Location};
use crate::format::names::ObjectId;
use crate::format::segment::MAX_META_LEN;
use crate::store::disk_cache;
use crate::store::metered::Meter;
use crate::store::retry::RetryStore;
use crate::store::DynStore;

/// When a waiter that started now gives up on a store that does not answer: after
/// `limit`, or (for a limit too large to add) in about a century.
pub(super) fn give_up_at(limit: std::time::Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(limit)
        .or_else(|| now.checked_add(std::time::Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
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
    pub(super) fn stop_tasks(&self) {
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
    pub(super) fn task_ended(&self, kind: tasks::Kind, name: &str, outcome: tasks::Outcome) {
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
    pub(super) async fn drain(&self, kind: tasks::Kind, abort: bool) {
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
    pub(super) fn open_state(&self) -> Result<MutexGuard<'_, State>> {
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
    pub(super) fn has_room(&self, st: &State, size: usize) -> bool {
        let log = &st.log;
        log.unflushed_bytes == 0 || log.unflushed_bytes + size <= self.opts.max_unflushed_bytes
    }

    /// Validate a batch; its encoded size.
    pub(super) fn check_batch(&self, ops: &[Op<'_>]) -> Result<usize> {
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
    pub(super) fn try_append(&self, ops: &[Op<'_>], size: usize) -> Result<Option<usize>> {
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

    pub(super) fn append_locked(&self, st: &mut State, ops: &[Op<'_>]) -> usize {
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
                    let meta = (!meta.is_empty()).then(|| Box::from(meta));
                    index.put_at(key, open_id, offset, value.len() as u32, meta);
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
pub(super) fn value_growth(index: &index::Index, ops: &[Op<'_>]) -> i64 {
    let old = |key: &[u8]| index.get(key).map_or(0, |e| i64::from(e.loc.value_len));
    ops.iter()
        .map(|op| match op {
            Op::Put { key, value, .. } => value.len() as i64 - old(key),
            Op::Delete { key } => -old(key),
            Op::Link { .. } | Op::Relocate { .. } => 0,
        })
        .sum()
}

pub(super) fn validate_meta(meta: &[u8]) -> Result<()> {
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
pub(super) fn check_link_sources(index: &index::Index, ops: &[Op<'_>]) -> Result<()> {
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

pub(super) fn validate_value(value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_LEN {
        return Err(Error::ValueTooLarge {
            size: value.len(),
            max: MAX_VALUE_LEN,
        });
    }
    Ok(())
}
