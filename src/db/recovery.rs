//! Opening a store: recovery from manifest, checkpoint and log, and writer takeover.
//!
//! **Recovery** reads the highest-numbered manifest, loads the checkpoint it names,
//! then replays its log ranges in order: every segment of a closed range (all must
//! exist), then the open range's segments from its first sequence number up to the
//! first missing one or the first fence segment. A segment after a gap is never
//! applied: it can only hold writes that were never acknowledged.
//!
//! **Takeover** (a writer opening the store) then closes the previous epoch's log:
//! 1. PUT a fence segment, create-if-absent, at the first sequence number after the
//!    recovered tail. If the previous writer is still running, its upload of that
//!    sequence number now fails, so its durable point can never pass the tail we
//!    recovered: nothing it acknowledges afterwards can be lost. If the PUT finds a
//!    data segment there (the previous writer got it in first), apply it and fence the
//!    next number.
//! 2. PUT manifest `N + 1`, create-if-absent, with writer epoch `E + 1`, the previous
//!    open range closed at the tail, and a new open range for epoch `E + 1` from 1.
//!    If manifest `N + 1` appeared meanwhile, start over from the new manifest.

use std::collections::VecDeque;

use bytes::Bytes;

use super::checkpointer::holder_description;
use super::error::{Error, Result};
use super::index::Index;
use super::lease::{now_unix_ms, Lease};
use super::options::Options;
use crate::format::checkpoint::{self, IndexEntry, Location};
use crate::format::manifest::{self, LogRange, Manifest, OPEN};
use crate::format::names::{
    checkpoint_name, manifest_name, parse_name, segment_epoch_prefix, segment_name, ObjectKind,
    SegmentId, MANIFEST_DIR, SEGMENT_DIR,
};
use crate::format::segment::{
    delete_len, fence_segment, link_len, put_len, EntryKind, EntryRef, SegmentView, FLAG_FENCE,
};
use crate::store::{DynStore, PutMode, StoreError};

/// What `open` hands to the engine.
pub(crate) struct Opened {
    pub epoch: u64,
    pub index: Index,
    pub manifest: Manifest,
    pub lease: Option<Lease>,
    /// Entry bytes replayed from the log (log since the checkpoint).
    pub replayed_bytes: u64,
    /// Where a read-only handle goes on following the log (see `follower`).
    pub position: Position,
}

/// How far into the store's history a handle has applied: the manifest it last
/// read and the next log segment it expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    pub manifest: u64,
    /// The epoch of the log range being followed, and its next sequence number.
    pub epoch: u64,
    pub next: u64,
    /// The range's last sequence number when the manifest closed it.
    pub last: Option<u64>,
    /// More segments may appear in this range (it is open or not yet read to its end).
    pub open: bool,
}

impl Position {
    /// A writer's own log, which it does not follow.
    fn writer(m: &Manifest) -> Position {
        Position {
            manifest: m.seq,
            epoch: m.writer_epoch,
            next: 1,
            last: None,
            open: false,
        }
    }
}

impl Loaded {
    /// A read-only handle on what was loaded; `follow`: it may follow the writer.
    fn opened_read_only(self, follow: bool) -> Opened {
        let mut position = self.position();
        position.open &= follow;
        Opened {
            position,
            epoch: self.manifest.writer_epoch,
            index: self.index,
            manifest: self.manifest,
            lease: None,
            replayed_bytes: self.replayed_bytes,
        }
    }

    /// The position right after what was loaded.
    fn position(&self) -> Position {
        match &self.tail {
            Some(t) => Position {
                manifest: self.manifest.seq,
                epoch: t.epoch,
                next: t.last + 1,
                last: None,
                open: !t.fenced,
            },
            None => {
                let r = self.manifest.ranges.last();
                Position {
                    manifest: self.manifest.seq,
                    epoch: r.map_or(0, |r| r.epoch),
                    next: r.map_or(1, |r| r.last.saturating_add(1)),
                    last: r.map(|r| r.last),
                    open: false,
                }
            }
        }
    }
}

/// The recovered open log range of the previous writer.
struct OpenTail {
    epoch: u64,
    first: u64,
    /// Last sequence number applied (`first - 1` when none).
    last: u64,
    /// Whether a fence segment already ends the range.
    fenced: bool,
}

pub(crate) struct Loaded {
    manifest: Manifest,
    index: Index,
    tail: Option<OpenTail>,
    replayed_bytes: u64,
}

pub(crate) async fn open(store: DynStore, opts: &Options) -> Result<Opened> {
    if let Some(n) = opts.snapshot {
        if !opts.read_only {
            return Err(Error::InvalidOption {
                option: "snapshot",
                problem: "a snapshot opens read-only".to_string(),
            });
        }
        if latest_manifest(&store).await?.is_none() {
            return Err(Error::NoStore(store.describe()));
        }
        return Ok(load_snapshot(&store, opts, n)
            .await?
            .opened_read_only(false));
    }
    if opts.read_only {
        let loaded = load(&store, opts)
            .await?
            .ok_or_else(|| Error::NoStore(store.describe()))?;
        return Ok(loaded.opened_read_only(true));
    }
    refuse_foreign_location(&store).await?;
    let mut lease =
        Lease::acquire(store.clone(), opts.lease_ttl, opts.writer_label.clone()).await?;
    match take_over(&store, opts).await {
        Ok(mut opened) => {
            opened.lease = Some(lease);
            Ok(opened)
        }
        Err(e) => {
            if let Err(release_err) = lease.release().await {
                log::warn!("could not release the writer lease: {release_err}");
            }
            Err(e)
        }
    }
}

/// A writer creates a store only where nothing else lives: a prefix (or directory)
/// without a manifest but with objects kvfs did not write is refused, so a typo in
/// the store URL never turns someone's directory into a store.
async fn refuse_foreign_location(store: &DynStore) -> Result<()> {
    if !store.list(MANIFEST_DIR).await?.is_empty() {
        return Ok(());
    }
    let foreign: Vec<String> = store
        .list("")
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| matches!(parse_name(k), ObjectKind::Unknown))
        .collect();
    match foreign.first() {
        None => Ok(()),
        Some(example) => Err(Error::NotAStore {
            store: store.describe(),
            count: foreign.len(),
            example: example.clone(),
        }),
    }
}

async fn take_over(store: &DynStore, opts: &Options) -> Result<Opened> {
    for _ in 0..8 {
        let Some(mut loaded) = load(store, opts).await? else {
            let m = Manifest {
                seq: 1,
                writer_epoch: 1,
                created_unix_ms: now_unix_ms(),
                checkpoint: None,
                ranges: vec![LogRange {
                    epoch: 1,
                    first: 1,
                    last: OPEN,
                }],
                holder: holder_description(1),
            };
            if publish(store, &m).await? {
                log::info!("created a new store at {}", store.describe());
                return Ok(Opened {
                    epoch: 1,
                    index: Index::default(),
                    position: Position::writer(&m),
                    manifest: m,
                    lease: None,
                    replayed_bytes: 0,
                });
            }
            continue;
        };
        let new_epoch = loaded.manifest.writer_epoch + 1;
        let mut ranges = loaded.manifest.ranges.clone();
        if let Some(tail) = loaded.tail.take() {
            let last = close_tail(store, &tail, &mut loaded).await?;
            ranges.pop();
            if last >= tail.first {
                ranges.push(LogRange {
                    epoch: tail.epoch,
                    first: tail.first,
                    last,
                });
            }
        }
        ranges.push(LogRange {
            epoch: new_epoch,
            first: 1,
            last: OPEN,
        });
        let m = Manifest {
            seq: loaded.manifest.seq + 1,
            writer_epoch: new_epoch,
            created_unix_ms: now_unix_ms(),
            checkpoint: loaded.manifest.checkpoint,
            ranges,
            holder: holder_description(new_epoch),
        };
        if publish(store, &m).await? {
            return Ok(Opened {
                epoch: new_epoch,
                index: loaded.index,
                position: Position::writer(&m),
                manifest: m,
                lease: None,
                replayed_bytes: loaded.replayed_bytes,
            });
        }
        log::info!("manifest {} appeared while taking over; retrying", m.seq);
    }
    Err(Error::Inconsistent(
        "could not take over the store: its manifest kept changing (is another writer running?)"
            .to_string(),
    ))
}

/// Put a fence after the recovered tail; returns the last sequence number of the
/// closed range.
async fn close_tail(store: &DynStore, tail: &OpenTail, loaded: &mut Loaded) -> Result<u64> {
    let mut last = tail.last;
    if tail.fenced {
        return Ok(last);
    }
    loop {
        let id = SegmentId {
            epoch: tail.epoch,
            seq: last + 1,
        };
        let name = segment_name(id);
        match store
            .put(&name, fence_segment(id), PutMode::CreateNew)
            .await
        {
            Ok(_) => return Ok(last),
            Err(StoreError::PreconditionFailed(_)) => {
                let data = store.get(&name).await?.data;
                if !apply_segment(&mut loaded.index, id, &data, &mut loaded.replayed_bytes)? {
                    // Someone else fenced this epoch; the manifest decides who wins.
                    return Ok(last);
                }
                log::info!("previous writer stored {name} while being fenced; applied it");
                last += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Create-if-absent a manifest; false if that number is already taken.
async fn publish(store: &DynStore, m: &Manifest) -> Result<bool> {
    match store
        .put(
            &manifest_name(m.seq),
            manifest::encode(m).into(),
            PutMode::CreateNew,
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(StoreError::PreconditionFailed(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The number of the newest manifest, if any.
pub(crate) async fn latest_manifest(store: &DynStore) -> Result<Option<u64>> {
    let listed = store.list(MANIFEST_DIR).await?;
    Ok(listed
        .iter()
        .filter_map(|o| match parse_name(&o.key) {
            ObjectKind::Manifest(n) => Some(n),
            _ => None,
        })
        .max())
}

/// Read and decode manifest `n`.
pub(crate) async fn read_manifest(store: &DynStore, n: u64) -> Result<Manifest> {
    let name = manifest_name(n);
    let data = store.get(&name).await?.data;
    let m = manifest::decode(&data).map_err(|e| Error::corrupt(name.clone(), e))?;
    if m.seq != n {
        return Err(Error::Inconsistent(format!(
            "{name} says it is manifest {}",
            m.seq
        )));
    }
    Ok(m)
}

/// Load the newest state: the latest manifest, its checkpoint and log; with the
/// position right after it.
pub(crate) async fn load_latest(
    store: &DynStore,
    opts: &Options,
) -> Result<Option<(Manifest, Index, Position)>> {
    Ok(load(store, opts).await?.map(|l| {
        let p = l.position();
        (l.manifest, l.index, p)
    }))
}

async fn load(store: &DynStore, opts: &Options) -> Result<Option<Loaded>> {
    let Some(n) = latest_manifest(store).await? else {
        let segments = store.list(SEGMENT_DIR).await?;
        if !segments.is_empty() {
            return Err(Error::Inconsistent(format!(
                "{} has {} segment objects but no manifest",
                store.describe(),
                segments.len()
            )));
        }
        return Ok(None);
    };
    let manifest = read_manifest(store, n).await?;
    load_from(store, opts, manifest).await.map(Some)
}

/// The state of snapshot `n`: manifest `n` read as of the moment manifest `n + 1`
/// was written (see [`snapshot_ranges`]). The newest manifest is no snapshot: it
/// is the live state.
pub(crate) async fn load_snapshot(store: &DynStore, opts: &Options, n: u64) -> Result<Loaded> {
    let manifest = match read_manifest(store, n).await {
        Ok(m) => m,
        Err(Error::Store(StoreError::NotFound(_))) => {
            return Err(Error::NoSnapshot(format!(
                "manifest {n} does not exist (any more); `kvfs snapshots` lists what can be mounted"
            )))
        }
        Err(e) => return Err(e),
    };
    let next = match read_manifest(store, n + 1).await {
        Ok(m) => m,
        Err(Error::Store(StoreError::NotFound(_))) => {
            return Err(Error::NoSnapshot(format!(
                "manifest {n} is the newest: it is the live state, not a snapshot (mount without --snapshot)"
            )))
        }
        Err(e) => return Err(e),
    };
    let mut m = manifest;
    m.ranges = snapshot_ranges(&m, &next);
    load_from(store, opts, m).await.map_err(|e| match e {
        Error::Inconsistent(why) => Error::NoSnapshot(format!(
            "snapshot {n} is no longer complete ({why}); keep snapshots with --retain-secs"
        )),
        e => e,
    })
}

/// The log ranges of manifest `m` as of the moment its successor `next` was
/// written: an open range ends where `next`'s range of the same writer starts
/// (that writer's checkpoint began there, after everything `m`'s checkpoint saw was
/// durable, so the state is exact), or where `next` closed it. If `next` has no range
/// of that writer (a checkpoint folded all of it in), the range stays open: its
/// writer has stopped, so it is read to its end.
pub(crate) fn snapshot_ranges(m: &Manifest, next: &Manifest) -> Vec<LogRange> {
    m.ranges
        .iter()
        .map(|r| {
            if !r.is_open() {
                return *r;
            }
            match next.ranges.iter().find(|x| x.epoch == r.epoch) {
                Some(x) if x.is_open() => LogRange {
                    last: x.first.saturating_sub(1),
                    ..*r
                },
                Some(x) => LogRange { last: x.last, ..*r },
                None => *r,
            }
        })
        .collect()
}

/// Load the state manifest `manifest` describes: its checkpoint, then its log.
async fn load_from(store: &DynStore, opts: &Options, manifest: Manifest) -> Result<Loaded> {
    let n = manifest.seq;
    let mut index = match manifest.checkpoint {
        Some(c) => {
            let name = checkpoint_name(c);
            let data = store.get(&name).await.map_err(|e| match e {
                StoreError::NotFound(_) => {
                    Error::Inconsistent(format!("manifest {n} names {name}, which does not exist"))
                }
                e => e.into(),
            })?;
            let ckpt = checkpoint::decode(&data.data).map_err(|e| Error::corrupt(name, e))?;
            Index::from_checkpoint(ckpt)
        }
        None => Index::default(),
    };
    let mut replayed_bytes = 0u64;
    let mut tail = None;
    for range in &manifest.ranges {
        let ids: Vec<SegmentId> = if range.is_open() {
            let listed = store.list(&segment_epoch_prefix(range.epoch)).await?;
            let mut seqs: Vec<u64> = listed
                .iter()
                .filter_map(|o| match parse_name(&o.key) {
                    ObjectKind::Segment(id) if id.epoch == range.epoch => Some(id.seq),
                    _ => None,
                })
                .filter(|s| *s >= range.first)
                .collect();
            seqs.sort_unstable();
            let mut contiguous = Vec::new();
            for s in seqs {
                if s == range.first + contiguous.len() as u64 {
                    contiguous.push(s);
                } else {
                    log::warn!(
                        "ignoring segment {} after a gap in the log (never acknowledged)",
                        segment_name(SegmentId {
                            epoch: range.epoch,
                            seq: s
                        })
                    );
                    break;
                }
            }
            contiguous
                .into_iter()
                .map(|seq| SegmentId {
                    epoch: range.epoch,
                    seq,
                })
                .collect()
        } else {
            (range.first..=range.last)
                .map(|seq| SegmentId {
                    epoch: range.epoch,
                    seq,
                })
                .collect()
        };
        let mut last = range.first - 1;
        let mut fenced = false;
        let mut pending: VecDeque<(SegmentId, tokio::task::JoinHandle<Result<Bytes>>)> =
            VecDeque::new();
        let mut next = ids.into_iter();
        loop {
            while pending.len() < opts.recovery_parallelism.max(1) {
                let Some(id) = next.next() else { break };
                let store = store.clone();
                pending.push_back((
                    id,
                    tokio::spawn(async move { fetch_segment(&store, id).await }),
                ));
            }
            let Some((id, handle)) = pending.pop_front() else {
                break;
            };
            let data = handle
                .await
                .map_err(|e| Error::Inconsistent(format!("segment fetch task failed: {e}")))??;
            if !apply_segment(&mut index, id, &data, &mut replayed_bytes)? {
                if !range.is_open() {
                    return Err(Error::Inconsistent(format!(
                        "{} is a fence segment inside a closed log range",
                        segment_name(id)
                    )));
                }
                fenced = true;
                break;
            }
            last = id.seq;
        }
        for (_, h) in pending {
            h.abort();
        }
        if range.is_open() {
            tail = Some(OpenTail {
                epoch: range.epoch,
                first: range.first,
                last,
                fenced,
            });
        }
    }
    Ok(Loaded {
        manifest,
        index,
        tail,
        replayed_bytes,
    })
}

async fn fetch_segment(store: &DynStore, id: SegmentId) -> Result<Bytes> {
    let name = segment_name(id);
    match store.get(&name).await {
        Ok(g) => Ok(g.data),
        Err(StoreError::NotFound(_)) => Err(Error::Inconsistent(format!(
            "segment {name} is referenced by the manifest but missing"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Apply one segment's entries to the index. Returns false (and applies nothing) for
/// a fence segment.
fn apply_segment(
    index: &mut Index,
    id: SegmentId,
    data: &[u8],
    replayed: &mut u64,
) -> Result<bool> {
    apply_segment_noting(index, id, data, replayed, &mut |_| {})
}

/// [`apply_segment`], telling `changed` every key it sets or removes.
pub(crate) fn apply_segment_noting(
    index: &mut Index,
    id: SegmentId,
    data: &[u8],
    replayed: &mut u64,
    changed: &mut dyn FnMut(&[u8]),
) -> Result<bool> {
    let name = segment_name(id);
    let view = SegmentView::decode(data).map_err(|e| Error::corrupt(name.clone(), e))?;
    if view.id != id {
        return Err(Error::Inconsistent(format!(
            "object {name} holds segment {} instead",
            view.id
        )));
    }
    if view.flags & FLAG_FENCE != 0 {
        return Ok(false);
    }
    // Decode fully before applying, so a corrupt segment changes nothing.
    let entries: Vec<_> = view
        .entries()
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::corrupt(name.clone(), e))?;
    for e in entries {
        *replayed += encoded_len(&e) as u64;
        changed(e.key);
        let meta = (!e.meta.is_empty()).then(|| Box::from(e.meta));
        match e.kind {
            EntryKind::Put => {
                // Per entry: a delete may have released the slot meanwhile.
                let slot = index.slot_for(id);
                index.insert(
                    e.key,
                    IndexEntry {
                        loc: Location {
                            segment: slot,
                            offset: e.value_offset,
                            value_len: e.value_len,
                        },
                        meta,
                    },
                )
            }
            EntryKind::Delete => index.remove(e.key),
            EntryKind::Link => {
                let target = e.target.unwrap_or(id);
                // A link can only refer to a value written before it: an earlier
                // segment, or a run (written before the links that move keys to it).
                if !target.is_run() && target > id {
                    return Err(Error::Inconsistent(format!(
                        "{name}: entry at offset {} links to later segment {target}",
                        e.offset
                    )));
                }
                let target_slot = index.slot_for(target);
                index.insert(
                    e.key,
                    IndexEntry {
                        loc: Location {
                            segment: target_slot,
                            offset: e.value_offset,
                            value_len: e.value_len,
                        },
                        meta,
                    },
                );
            }
        }
    }
    Ok(true)
}

/// Bytes an entry takes in its segment.
pub(crate) fn encoded_len(e: &EntryRef<'_>) -> usize {
    match e.kind {
        EntryKind::Put => put_len(e.key.len(), e.meta.len(), e.value_len as usize),
        EntryKind::Delete => delete_len(e.key.len()),
        EntryKind::Link => link_len(e.key.len(), e.meta.len()),
    }
}
