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
mod read;
mod recovery;
mod repair;
mod shared;
mod snapshots;
mod state;
mod stats;
mod store_id;
mod tasks;
mod uploader;

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};
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

use crate::format::checkpoint::Location;
use crate::format::names::ObjectId;
use crate::format::segment::{delete_len, link_len, put_len, MAX_META_LEN};
use crate::store::disk_cache;
use crate::store::encoding::open_encoded;
use crate::store::metered::MeteredStore;
use crate::store::retry::RetryStore;
use crate::store::{open_store, DynStore, StoreError, StoreUrl};
use index::ValueAt;
pub(crate) use shared::{Durable, Shared, Stall};
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
    #[cfg(test)]
    pub(crate) fn for_test(n: u32) -> ValueId {
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
