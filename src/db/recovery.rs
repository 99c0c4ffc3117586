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
use crate::format::checkpoint::{self, Checkpoint};
use crate::format::manifest::{self, LogRange, Manifest, OPEN};
use crate::format::names::{
    checkpoint_name, manifest_name, object_name, parse_name, segment_epoch_prefix, ObjectId,
    ObjectKind, MANIFEST_DIR, RUN_DIR, SEGMENT_DIR,
};
use crate::format::segment::{
    delete_len, fence_segment, link_len, put_len, EntryKind, EntryRef, SegmentView, FLAG_FENCE,
};
use crate::format::FormatError;
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
    /// Set when the current checkpoint was damaged and the state was recovered
    /// without it.
    pub fallback: Option<Fallback>,
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
            fallback: self.fallback,
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
    fallback: Option<Fallback>,
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
        let Some(loaded) = load(&store, opts).await? else {
            // Name what lives there instead, if anything does.
            refuse_foreign_location(&store).await?;
            return Err(Error::NoStore(store.describe()));
        };
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
                    fallback: None,
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
                fallback: loaded.fallback,
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
        let id = ObjectId {
            epoch: tail.epoch,
            seq: last + 1,
        };
        let name = object_name(id);
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
        Error::Inconsistent(why) | Error::Damaged(why) => Error::NoSnapshot(format!(
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

/// How a state was loaded when the checkpoint its manifest names could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fallback {
    /// The damaged (corrupt or missing) checkpoint object.
    pub damaged: String,
    /// What was wrong with it.
    pub problem: String,
    /// Whether the state is exact: an older intact checkpoint and the complete log
    /// since it. Otherwise (only with `Options::rebuild_damaged`) it was rebuilt from
    /// what exists, and `suspect` says what may be wrong with it.
    pub exact: bool,
    /// How the state was recovered, for operators.
    pub how: String,
    /// Inexact rebuilds: log segments that were missing or unreadable (keys written
    /// or deleted in them may be stale, resurrected or lost).
    pub suspect: Vec<String>,
    /// The checkpoint the manifest named: once a newer one is published the damage
    /// is healed.
    pub checkpoint: Option<u64>,
}

/// Load the state manifest `manifest` describes: its checkpoint, then its log. If
/// the checkpoint is damaged, fall back to an older one (see [`exact_fallback`]).
async fn load_from(store: &DynStore, opts: &Options, manifest: Manifest) -> Result<Loaded> {
    let checkpoint = manifest.checkpoint;
    let mut index = match manifest.checkpoint {
        Some(c) => match read_checkpoint(store, c).await {
            Ok(ckpt) => Index::from_checkpoint(ckpt),
            Err(Damage::Other(e)) => return Err(e),
            Err(Damage::Damaged(problem)) => {
                return load_around_damage(store, opts, manifest, checkpoint_name(c), problem).await
            }
        },
        None => Index::default(),
    };
    let (replayed_bytes, tail) = match replay(store, opts, &mut index, &manifest.ranges).await {
        Ok(r) => r,
        // A log segment is damaged (corrupt, or missing from a closed range): what
        // it changed is unknown, so only a rebuild (`fsck --repair`) gets past it.
        Err(e @ (Error::Corrupt { .. } | Error::Inconsistent(_))) => {
            let n = manifest.seq;
            if !opts.rebuild_damaged {
                return Err(Error::Damaged(format!(
                    "the log of manifest {n} cannot be replayed: {e}"
                )));
            }
            let damaged = match &e {
                Error::Corrupt { object, .. } => object.clone(),
                _ => manifest_name(n),
            };
            let (index, replayed_bytes, tail, how, suspect) = rebuild(store, &manifest).await?;
            log::warn!("the log of manifest {n} cannot be replayed ({e}); {how}");
            return Ok(Loaded {
                manifest,
                index,
                tail,
                replayed_bytes,
                fallback: Some(Fallback {
                    damaged,
                    problem: e.to_string(),
                    exact: false,
                    how,
                    suspect,
                    checkpoint,
                }),
            });
        }
        Err(e) => return Err(e),
    };
    Ok(Loaded {
        manifest,
        index,
        tail,
        replayed_bytes,
        fallback: None,
    })
}

/// Why a checkpoint could not be loaded.
enum Damage {
    /// It is corrupt or missing: a fallback may help.
    Damaged(String),
    /// Anything else (the store did not answer, ...): no fallback is tried.
    Other(Error),
}

async fn read_checkpoint(store: &DynStore, c: u64) -> std::result::Result<Checkpoint, Damage> {
    let name = checkpoint_name(c);
    let data = match store.get(&name).await {
        Ok(g) => g.data,
        Err(StoreError::NotFound(_)) => return Err(Damage::Damaged("it does not exist".into())),
        Err(e) => return Err(Damage::Other(e.into())),
    };
    checkpoint::decode(&data).map_err(|e| Damage::Damaged(e.to_string()))
}

/// The checkpoint `damaged` of `manifest` cannot be read: load the state exactly
/// from an older checkpoint and the log since it, or (only with
/// `Options::rebuild_damaged`) rebuild it from what exists; otherwise refuse.
async fn load_around_damage(
    store: &DynStore,
    opts: &Options,
    manifest: Manifest,
    damaged: String,
    problem: String,
) -> Result<Loaded> {
    let n = manifest.seq;
    let checkpoint = manifest.checkpoint;
    log::warn!("{damaged}, the checkpoint of manifest {n}, is damaged: {problem}");
    let why_not = match exact_fallback(store, opts, &manifest).await? {
        Ok((k, index, replayed_bytes, tail)) => {
            let how = format!(
                "recovered the state exactly from manifest {k}'s checkpoint and the log since it"
            );
            log::warn!("{damaged} is damaged; {how}");
            return Ok(Loaded {
                manifest,
                index,
                tail,
                replayed_bytes,
                fallback: Some(Fallback {
                    damaged,
                    problem,
                    exact: true,
                    how,
                    suspect: Vec::new(),
                    checkpoint,
                }),
            });
        }
        Err(why_not) => why_not,
    };
    if !opts.rebuild_damaged {
        return Err(Error::Damaged(format!(
            "checkpoint {damaged} of manifest {n} is damaged ({problem}) and the state \
             cannot be recovered exactly without it ({why_not})"
        )));
    }
    let (index, replayed_bytes, tail, how, suspect) = rebuild(store, &manifest).await?;
    log::warn!("{damaged} is damaged and {why_not}; {how}");
    Ok(Loaded {
        manifest,
        index,
        tail,
        replayed_bytes,
        fallback: Some(Fallback {
            damaged,
            problem,
            exact: false,
            how: format!("{why_not}; {how}"),
            suspect,
            checkpoint,
        }),
    })
}

type Replayed = (u64, Index, u64, Option<OpenTail>);

/// Find an older manifest `k` whose checkpoint is intact, such that every manifest
/// from `k` to `manifest` still exists and every log segment written since that
/// checkpoint does too; load its checkpoint and replay that whole log. The result is
/// the exact state of `manifest`: the log is one history (each writer epoch's
/// segments in order, epochs in order), a checkpoint holds a prefix of it, and the
/// manifests in between say where each epoch's part of it ends. `Err` says why no
/// exact fallback exists.
async fn exact_fallback(
    store: &DynStore,
    opts: &Options,
    manifest: &Manifest,
) -> Result<std::result::Result<Replayed, String>> {
    let mut between: Vec<Manifest> = Vec::new();
    let mut k = manifest.seq;
    let (base, ckpt) = loop {
        if k <= 1 {
            return Ok(Err("no older manifest exists".to_string()));
        }
        k -= 1;
        let m = match read_manifest(store, k).await {
            Ok(m) => m,
            Err(Error::Store(StoreError::NotFound(_))) => {
                return Ok(Err(format!(
                    "manifest {k} and the checkpoints before it were deleted by garbage collection"
                )))
            }
            Err(e @ (Error::Corrupt { .. } | Error::Inconsistent(_))) => {
                return Ok(Err(format!("manifest {k} is damaged too: {e}")))
            }
            Err(e) => return Err(e),
        };
        match m.checkpoint {
            Some(c) if Some(c) == manifest.checkpoint => between.push(m),
            Some(c) => match read_checkpoint(store, c).await {
                Ok(ckpt) => break (m, Some(ckpt)),
                Err(Damage::Other(e)) => return Err(e),
                Err(Damage::Damaged(why)) => {
                    log::warn!(
                        "older checkpoint {} is not usable either: {why}",
                        checkpoint_name(c)
                    );
                    between.push(m);
                }
            },
            None => break (m, None),
        }
    };
    // Each epoch's part of the log after `base`'s checkpoint, as far as it runs
    // before `manifest`'s own ranges start.
    let mut spans: std::collections::BTreeMap<u64, (u64, u64)> = Default::default();
    for m in std::iter::once(&base).chain(between.iter()) {
        for r in &m.ranges {
            let end = if r.is_open() { r.first - 1 } else { r.last };
            let s = spans.entry(r.epoch).or_insert((r.first, end));
            s.0 = s.0.min(r.first);
            s.1 = s.1.max(end);
        }
    }
    let mut ranges: Vec<LogRange> = Vec::new();
    for (epoch, (first, end)) in spans {
        let end = match manifest.ranges.iter().find(|r| r.epoch == epoch) {
            Some(r) => r.first - 1,
            None => end,
        };
        if end >= first {
            ranges.push(LogRange {
                epoch,
                first,
                last: end,
            });
        }
    }
    // Everything `manifest`'s own ranges replay, after that.
    ranges.extend(manifest.ranges.iter().copied());
    ranges.sort_by_key(|r| (r.epoch, r.first));
    // Every segment of the closed ranges must exist (garbage collection deletes the
    // old log once a newer checkpoint no longer needs it).
    let mut listed_epoch: Option<(u64, std::collections::HashSet<u64>)> = None;
    for r in ranges.iter().filter(|r| !r.is_open()) {
        if listed_epoch.as_ref().map(|(e, _)| *e) != Some(r.epoch) {
            let seqs = store
                .list(&segment_epoch_prefix(r.epoch))
                .await?
                .iter()
                .filter_map(|o| match parse_name(&o.key) {
                    ObjectKind::Segment(id) if id.epoch == r.epoch => Some(id.seq),
                    _ => None,
                })
                .collect();
            listed_epoch = Some((r.epoch, seqs));
        }
        let Some((_, present)) = &listed_epoch else {
            continue;
        };
        if let Some(seq) = (r.first..=r.last).find(|s| !present.contains(s)) {
            return Ok(Err(format!(
                "log segment {}, written after manifest {}'s checkpoint, was deleted",
                object_name(ObjectId {
                    epoch: r.epoch,
                    seq
                }),
                base.seq
            )));
        }
    }
    let mut index = ckpt.map_or_else(Index::default, Index::from_checkpoint);
    match replay(store, opts, &mut index, &ranges).await {
        Ok((replayed, tail)) => Ok(Ok((base.seq, index, replayed, tail))),
        Err(e @ (Error::Corrupt { .. } | Error::Inconsistent(_))) => Ok(Err(format!(
            "the log since manifest {}'s checkpoint cannot be replayed: {e}",
            base.seq
        ))),
        Err(e) => Err(e),
    }
}

/// Rebuild a state without an exact fallback (`kvfs fsck --repair`): the newest
/// intact checkpoint in the store (or none), then every log segment after it that
/// exists and can be read, in log order, each epoch up to its fence. Returns the
/// index, replayed bytes, the open tail of `manifest`, a description, and the log
/// segments found missing or unreadable on the way.
async fn rebuild(
    store: &DynStore,
    manifest: &Manifest,
) -> Result<(Index, u64, Option<OpenTail>, String, Vec<String>)> {
    let mut ckpts: Vec<u64> = store
        .list(crate::format::names::CHECKPOINT_DIR)
        .await?
        .iter()
        .filter_map(|o| match parse_name(&o.key) {
            ObjectKind::Checkpoint(n) => Some(n),
            _ => None,
        })
        .collect();
    ckpts.sort_unstable();
    let mut base = None;
    for c in ckpts.into_iter().rev() {
        match read_checkpoint(store, c).await {
            Ok(ckpt) => {
                base = Some((c, ckpt));
                break;
            }
            Err(Damage::Other(e)) => return Err(e),
            Err(Damage::Damaged(_)) => {}
        }
    }
    let covers = base.as_ref().map_or(ObjectId::default(), |(_, c)| c.covers);
    let (base, mut index) = match base {
        Some((c, ckpt)) => (Some(c), Index::from_checkpoint(ckpt)),
        None => (None, Index::default()),
    };
    // Log segments after the checkpoint, and sorted runs (copies GC made of values
    // then live): the runs of a writer epoch before its segments, as a segment's
    // value of the same epoch may be newer than a run's copy (the link entries that
    // ordered them may be gone). With a checkpoint, only runs of later epochs (it
    // knows the earlier ones).
    let mut listed: Vec<ObjectId> = store
        .list(SEGMENT_DIR)
        .await?
        .iter()
        .filter_map(|o| match parse_name(&o.key) {
            ObjectKind::Segment(id) if id > covers => Some(id),
            _ => None,
        })
        .collect();
    listed.extend(
        store
            .list(RUN_DIR)
            .await?
            .iter()
            .filter_map(|o| match parse_name(&o.key) {
                ObjectKind::Run(id) if base.is_none() || id.writer_epoch() > covers.epoch => {
                    Some(id)
                }
                _ => None,
            }),
    );
    listed.sort_unstable_by_key(|id| (id.writer_epoch(), !id.is_run(), id.seq));
    let mut suspect = Vec::new();
    let mut replayed = 0u64;
    let mut applied = 0u64;
    // Next expected sequence number of each epoch; epochs ended by a fence.
    let mut expect: std::collections::HashMap<u64, u64> = Default::default();
    let mut fenced: std::collections::HashSet<u64> = Default::default();
    for id in listed {
        let name = object_name(id);
        if id.is_run() {
            let data = match store.get(&name).await {
                Ok(g) => g.data,
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            match apply_run(&mut index, id, &data) {
                Ok(()) => applied += 1,
                Err(e) => suspect.push(format!("{name} (unreadable: {e})")),
            }
            continue;
        }
        if fenced.contains(&id.epoch) {
            continue;
        }
        let next = expect
            .entry(id.epoch)
            .or_insert(if id.epoch == covers.epoch {
                covers.seq + 1
            } else {
                1
            });
        if *next < id.seq {
            suspect.push(if *next + 1 == id.seq {
                format!(
                    "{} (missing)",
                    object_name(ObjectId {
                        epoch: id.epoch,
                        seq: *next
                    })
                )
            } else {
                format!(
                    "{} to {} (missing)",
                    object_name(ObjectId {
                        epoch: id.epoch,
                        seq: *next
                    }),
                    object_name(ObjectId {
                        epoch: id.epoch,
                        seq: id.seq - 1
                    })
                )
            });
        }
        *next = id.seq + 1;
        let data = match store.get(&name).await {
            Ok(g) => g.data,
            Err(StoreError::NotFound(_)) => {
                suspect.push(format!("{name} (missing)"));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match apply_segment(&mut index, id, &data, &mut replayed) {
            Ok(true) => applied += 1,
            Ok(false) => {
                fenced.insert(id.epoch);
            }
            Err(e) => suspect.push(format!("{name} (unreadable: {e})")),
        }
    }
    // The open tail of `manifest`, as a writer's takeover needs it.
    let tail = manifest.ranges.last().filter(|r| r.is_open()).map(|r| {
        let next = expect.get(&r.epoch).copied().unwrap_or(r.first);
        OpenTail {
            epoch: r.epoch,
            first: r.first,
            last: next.max(r.first) - 1,
            fenced: fenced.contains(&r.epoch),
        }
    });
    let from = match base {
        Some(c) => format!("checkpoint {}", checkpoint_name(c)),
        None => "no checkpoint (none is intact)".to_string(),
    };
    let how = format!(
        "rebuilt the state from {from} and the {applied} log segments and runs after it that could be read"
    );
    Ok((index, replayed, tail, how, suspect))
}

/// Replay log ranges onto `index`, in order: every segment of a closed range (all
/// must exist), and an open range's segments up to the first missing one or the
/// first fence. Returns the bytes replayed and the open range's tail.
async fn replay(
    store: &DynStore,
    opts: &Options,
    index: &mut Index,
    ranges: &[LogRange],
) -> Result<(u64, Option<OpenTail>)> {
    let mut replayed_bytes = 0u64;
    let mut tail = None;
    for range in ranges {
        let ids: Vec<ObjectId> = if range.is_open() {
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
                        object_name(ObjectId {
                            epoch: range.epoch,
                            seq: s
                        })
                    );
                    break;
                }
            }
            contiguous
                .into_iter()
                .map(|seq| ObjectId {
                    epoch: range.epoch,
                    seq,
                })
                .collect()
        } else {
            (range.first..=range.last)
                .map(|seq| ObjectId {
                    epoch: range.epoch,
                    seq,
                })
                .collect()
        };
        let mut last = range.first - 1;
        let mut fenced = false;
        let mut pending: VecDeque<(ObjectId, tokio::task::JoinHandle<Result<Bytes>>)> =
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
            if !apply_segment(index, id, &data, &mut replayed_bytes)? {
                if !range.is_open() {
                    return Err(Error::Inconsistent(format!(
                        "{} is a fence segment inside a closed log range",
                        object_name(id)
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
    Ok((replayed_bytes, tail))
}

async fn fetch_segment(store: &DynStore, id: ObjectId) -> Result<Bytes> {
    let name = object_name(id);
    match store.get(&name).await {
        Ok(g) => Ok(g.data),
        Err(StoreError::NotFound(_)) => Err(Error::Inconsistent(format!(
            "segment {name} is referenced by the manifest but missing"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Put every entry of a sorted run into the index (an inexact rebuild only).
fn apply_run(index: &mut Index, id: ObjectId, data: &[u8]) -> Result<()> {
    let name = object_name(id);
    let view =
        crate::format::run::RunView::decode(data).map_err(|e| Error::corrupt(name.clone(), e))?;
    let entries = view.entries().map_err(|e| Error::corrupt(name, e))?;
    for e in entries {
        index.put_at(
            e.key,
            id,
            e.value_offset,
            e.value_len,
            (!e.meta.is_empty()).then(|| Box::from(e.meta)),
        );
    }
    Ok(())
}

/// Apply one segment's entries to the index. Returns false (and applies nothing) for
/// a fence segment.
fn apply_segment(index: &mut Index, id: ObjectId, data: &[u8], replayed: &mut u64) -> Result<bool> {
    apply_segment_noting(index, id, data, replayed, &mut |_| {})
}

/// [`apply_segment`], telling `changed` every key it sets or removes.
pub(crate) fn apply_segment_noting(
    index: &mut Index,
    id: ObjectId,
    data: &[u8],
    replayed: &mut u64,
    changed: &mut dyn FnMut(&[u8]),
) -> Result<bool> {
    let name = object_name(id);
    let view = match SegmentView::decode(data) {
        Ok(v) => v,
        // Damage only in values leaves every entry intact: the replay stays exact,
        // and only the damaged values are lost (found by their own checksums).
        Err(e @ FormatError::Checksum { .. }) => match SegmentView::decode_salvaging(data) {
            // A data segment only (a flipped flag could otherwise fake a fence).
            Ok(v) if v.flags == 0 && v.entries().all(|e| e.is_ok()) => {
                log::warn!("{name} is damaged ({e}), but every entry is intact: replaying it");
                v
            }
            _ => return Err(Error::corrupt(name, e)),
        },
        Err(e) => return Err(Error::corrupt(name, e)),
    };
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
                index.put_at(e.key, id, e.value_offset, e.value_len, meta)
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
                index.put_at(e.key, target, e.value_offset, e.value_len, meta);
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
