//! Carrying out GC and compaction: listing, rewriting into runs, retiring and
//! deleting. The decisions come from `policy`; the vocabulary is in `gc`'s module doc.
//!
//! Order of a rewrite (each step durable before the next):
//! 1. note the keys whose values lie in the source objects (in key order);
//! 2. read each source object whole and verify its checksum;
//! 3. PUT the new runs, create-if-absent;
//! 4. append link entries moving each key that still points at its old place, and
//!    sync them;
//! 5. later rounds find the sources unneeded, retire them, and delete them after the
//!    grace period.
//!
//! A crash after 3 leaves runs nothing refers to; after 4, sources nothing refers to.
//! Both are unneeded objects that a later round deletes. Nothing is deleted before the
//! state that stopped needing it is durable, and only while this writer still owns
//! the store.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;

use super::policy::{self, Choice, ObjectStat, PolicyConfig, Reason};
use super::retention;
use super::{in_log_window, GcCounters, EMPTY_SEGMENT_LEN};
use crate::db::error::{Error, Result};
use crate::db::index::ValueAt;
use crate::db::recovery::latest_manifest;
use crate::db::state::State;
use crate::db::{Op, Shared};
use crate::format::names::{
    checkpoint_name, manifest_name, object_name, parse_name, ObjectId, ObjectKind, CHECKPOINT_DIR,
    MANIFEST_DIR, RUN_DIR, SEGMENT_DIR,
};
use crate::format::run::{RunBuilder, RunView, DEFAULT_BLOCK_BYTES};
use crate::format::segment::{decode_value, link_len, put_len, SegmentView, MAX_META_LEN};
use crate::store::{PutMode, StoreError};

/// Progress messages of on-demand runs.
pub type Progress<'a> = &'a mut (dyn FnMut(&str) + Send);

/// List `seg/` and `run/` once, so the table knows every data object. Objects of
/// later writer epochs (a newer writer's) are never taken in.
pub(crate) async fn ensure_listed(sh: &Shared) -> Result<()> {
    if sh.lock().objects.listed {
        return Ok(());
    }
    let mut found = sh.store.list(SEGMENT_DIR).await?;
    found.extend(sh.store.list(RUN_DIR).await?);
    let mut st = sh.lock();
    for o in &found {
        if let ObjectKind::Segment(id) | ObjectKind::Run(id) = parse_name(&o.key) {
            if id.writer_epoch() <= sh.epoch {
                st.objects.insert_listed(id, o.size);
            }
        }
    }
    st.objects.listed = true;
    st.objects.runs_listed = true;
    Ok(())
}

/// List `run/` once (readers need run sizes for readahead).
pub(crate) async fn ensure_runs_listed(sh: &Shared) -> Result<()> {
    if sh.lock().objects.runs_listed {
        return Ok(());
    }
    let found = sh.store.list(RUN_DIR).await?;
    let mut st = sh.lock();
    for o in &found {
        if let ObjectKind::Run(id) = parse_name(&o.key) {
            st.objects.insert_listed(id, o.size);
        }
    }
    st.objects.runs_listed = true;
    Ok(())
}

/// The policy's view of every known data object (fences left out).
pub(crate) fn object_stats(st: &State, now: Instant) -> Vec<ObjectStat> {
    st.objects
        .iter()
        .filter(|(id, o)| id.is_run() || o.size != EMPTY_SEGMENT_LEN)
        .map(|(id, o)| {
            let live = st.index.object_live(*id);
            ObjectStat {
                id: *id,
                size: o.size,
                live: live.bytes,
                stored: live.stored,
                keys: live.keys,
                key_bytes: live.key_bytes,
                age: now.saturating_duration_since(o.born),
                in_log: in_log_window(&st.manifest.ranges, *id),
            }
        })
        .collect()
}

/// The objects the policy may choose from: all but those a round found not worth
/// rewriting, as long as their live data has not changed since.
fn choosable(st: &State, now: Instant) -> Vec<ObjectStat> {
    object_stats(st, now)
        .into_iter()
        .filter(|o| st.gc.not_worth.get(&o.id) != Some(&o.stored))
        .filter(|o| !st.gc.damaged.contains(&o.id))
        .collect()
}

fn check_writer(sh: &Shared) -> Result<()> {
    if !sh.writable {
        return Err(Error::ReadOnly);
    }
    let st = sh.lock();
    if let Some(e) = &st.poisoned {
        return Err(e.clone());
    }
    if st.closing || st.closed {
        return Err(Error::Closed);
    }
    Ok(())
}

/// A key to move: its entry and where its value lies now.
struct Moving {
    key: Box<[u8]>,
    meta: Option<Box<[u8]>>,
    at: ValueAt,
}

/// Keys in the index whose values lie in `sources`, in key order.
async fn keys_in(sh: &Shared, sources: &HashSet<ObjectId>) -> Vec<Moving> {
    let mut out = Vec::new();
    sh.for_each_key_chunked(|k, e, id| {
        if sources.contains(&id) {
            out.push(Moving {
                key: Box::from(k),
                meta: e.meta.clone(),
                at: ValueAt {
                    object: id,
                    offset: e.loc.offset,
                    value_len: e.loc.value_len,
                },
            });
        }
    })
    .await;
    out
}

/// Read a whole data object and verify its checksum.
async fn fetch_verified(sh: &Shared, id: ObjectId) -> Result<Bytes> {
    let name = object_name(id);
    let data = sh.store.get(&name).await?.data;
    if id.is_run() {
        RunView::decode(&data).map_err(|e| Error::corrupt(name.clone(), e))?;
    } else {
        SegmentView::decode(&data).map_err(|e| Error::corrupt(name.clone(), e))?;
    }
    Ok(data)
}

/// Rewrite the live values of `sources` into sorted runs and move their keys there.
/// With `must_shrink`, nothing is written unless the runs are smaller than the
/// sources (then the sources are noted as not worth rewriting until they change).
async fn rewrite(
    sh: &Arc<Shared>,
    sources: &[ObjectId],
    must_shrink: bool,
    progress: Progress<'_>,
) -> Result<()> {
    rewrite_sources(sh, sources, must_shrink, false, progress).await
}

/// `kvfs fsck --repair`: move the keys whose values are intact out of damaged data
/// objects `sources` (whose whole-object checksum fails) into new runs. Each value is
/// checked against its own checksum; a key whose value fails it is left where it is
/// (the repair deletes those keys first). Returns nothing; the keys moved are counted
/// in the GC counters.
pub(crate) async fn salvage(
    sh: &Arc<Shared>,
    sources: &[ObjectId],
    progress: Progress<'_>,
) -> Result<()> {
    let _one_at_a_time = sh.gc_lock.lock().await;
    rewrite_sources(sh, sources, false, true, progress).await
}

/// [`rewrite`]; with `salvage`, sources are read without verifying their
/// whole-object checksum, and values failing their own checksum are skipped. The
/// steps: read the sources, build runs of their live values, (with `must_shrink`)
/// give up if that saves nothing, store the runs, move the keys, count.
async fn rewrite_sources(
    sh: &Arc<Shared>,
    sources: &[ObjectId],
    must_shrink: bool,
    salvage: bool,
    progress: Progress<'_>,
) -> Result<()> {
    check_writer(sh)?;
    let source_set: HashSet<ObjectId> = sources.iter().copied().collect();
    let mut moving = keys_in(sh, &source_set).await;
    let (data, bytes_read) = read_sources(sh, sources, salvage).await?;
    let sources: Vec<ObjectId> = sources
        .iter()
        .copied()
        .filter(|id| data.contains_key(id))
        .collect();
    if sources.is_empty() {
        return Ok(());
    }
    moving.retain(|m| data.contains_key(&m.at.object));
    progress(&format!(
        "read {} objects ({bytes_read} bytes) holding {} live keys",
        sources.len(),
        moving.len()
    ));
    let Built { runs, moves } = build_runs(sh, moving, &data, salvage)?;
    drop(data);
    let out_bytes: u64 = runs.iter().map(|(_, b)| b.len() as u64).sum();
    if must_shrink && out_bytes >= bytes_read {
        progress(&format!(
            "not rewritten: the runs ({out_bytes} bytes) would not be smaller than the \
             {} objects ({bytes_read} bytes)",
            sources.len()
        ));
        let mut st = sh.lock();
        for id in &sources {
            let stored = st.index.object_live(*id).stored;
            st.gc.not_worth.insert(*id, stored);
        }
        return Ok(());
    }
    let run_bytes_written = store_runs(sh, runs).await?;
    let moved = relocate(sh, &moves).await?;
    sh.sync().await?;
    let runs_written = moves.iter().map(|m| m.2).collect::<HashSet<_>>().len() as u64;
    progress(&format!(
        "wrote {runs_written} runs ({run_bytes_written} bytes); moved {moved} keys"
    ));
    let mut st = sh.lock();
    let c = &mut st.gc.counters;
    c.rewrites += 1;
    c.objects_rewritten += sources.len() as u64;
    c.bytes_read += bytes_read;
    c.runs_written += runs_written;
    c.run_bytes_written += run_bytes_written;
    c.keys_moved += moved;
    Ok(())
}

/// Read the sources whole (verified unless `salvage`); returns those read and the
/// bytes read. A source that cannot be read (corrupt or missing) is left as it is:
/// its keys keep pointing at it (reading them fails as before), so it is never found
/// unneeded and never deleted, and later rounds no longer choose it. `kvfs fsck`
/// reports it; `kvfs fsck --repair` removes the keys it lost.
async fn read_sources(
    sh: &Shared,
    sources: &[ObjectId],
    salvage: bool,
) -> Result<(HashMap<ObjectId, Bytes>, u64)> {
    let mut data = HashMap::new();
    let mut bytes_read = 0u64;
    for id in sources {
        let fetched = if salvage {
            sh.store
                .get(&object_name(*id))
                .await
                .map(|g| g.data)
                .map_err(Error::from)
        } else {
            fetch_verified(sh, *id).await
        };
        let d = match fetched {
            Ok(d) => d,
            Err(e @ (Error::Corrupt { .. } | Error::Store(StoreError::NotFound(_)))) => {
                log::warn!(
                    "gc: skipping {}, which cannot be read: {e} (run `kvfs fsck`)",
                    object_name(*id)
                );
                sh.lock().gc.damaged.insert(*id);
                continue;
            }
            Err(e) => return Err(e),
        };
        bytes_read += d.len() as u64;
        data.insert(*id, d);
    }
    Ok((data, bytes_read))
}

/// Runs built in memory, and the key moves that point into them: (key, where it
/// was, run, offset in the run).
struct Built {
    runs: Vec<(ObjectId, Bytes)>,
    moves: Vec<(Box<[u8]>, ValueAt, ObjectId, u32)>,
}

/// Copy the live values of `moving` out of `data` into runs, in key order, each at
/// most `run_bytes`. Keys that share one value (written with `link`) keep sharing
/// it: the value is copied once, and the other keys point at the copy.
fn build_runs(
    sh: &Shared,
    moving: Vec<Moving>,
    data: &HashMap<ObjectId, Bytes>,
    salvage: bool,
) -> Result<Built> {
    let run_bytes = sh.opts.gc.run_bytes.max(64 << 10);
    let mut runs: Vec<(ObjectId, Bytes)> = Vec::new();
    let mut moves = Vec::with_capacity(moving.len());
    let mut builder: Option<RunBuilder> = None;
    let mut copied: HashMap<(ObjectId, u32), (ObjectId, u32)> = HashMap::new();
    for Moving { key, meta, at } in moving {
        if let Some((run, offset)) = copied.get(&(at.object, at.offset)) {
            moves.push((key, at, *run, *offset));
            continue;
        }
        let Some(obj) = data.get(&at.object) else {
            continue;
        };
        let Some(value) = value_in(obj, &key, at, salvage)? else {
            continue;
        };
        let meta = meta.as_deref().unwrap_or(&[]);
        let need = put_len(key.len(), meta.len(), value.len());
        if let Some(b) = builder.take_if(|b| !b.is_empty() && b.len() + need > run_bytes) {
            runs.push((b.id(), b.finish()));
        }
        let b = match &mut builder {
            Some(b) => b,
            None => {
                let id = sh.lock().objects.next_run_id(sh.epoch);
                builder.insert(RunBuilder::new(id, DEFAULT_BLOCK_BYTES))
            }
        };
        let offset = b.put(&key, meta, &value);
        copied.insert((at.object, at.offset), (b.id(), offset));
        moves.push((key, at, b.id(), offset));
    }
    if let Some(b) = builder.take() {
        runs.push((b.id(), b.finish()));
    }
    Ok(Built { runs, moves })
}

/// The value of `key` at `at` in the whole object `obj`, checked. With `salvage`, a
/// damaged value is `None` (and left where it is); otherwise an error.
fn value_in(obj: &Bytes, key: &[u8], at: ValueAt, salvage: bool) -> Result<Option<Bytes>> {
    let name = || object_name(at.object);
    let off = at.offset as usize;
    let end = off + 4 + at.value_len as usize;
    if end > obj.len() {
        if salvage {
            return Ok(None);
        }
        return Err(Error::Inconsistent(format!(
            "{}: key {:?} points past the end of the object",
            name(),
            String::from_utf8_lossy(key)
        )));
    }
    match decode_value(&obj.slice(off..end)) {
        Ok(v) => Ok(Some(v)),
        Err(err) if salvage => {
            log::warn!(
                "{}: the value of key {:?} is damaged ({err}); not moved",
                name(),
                String::from_utf8_lossy(key)
            );
            Ok(None)
        }
        Err(err) => Err(Error::corrupt(name(), err)),
    }
}

/// PUT the runs (create-if-absent) and add them to the object table; returns the
/// bytes written.
async fn store_runs(sh: &Shared, runs: Vec<(ObjectId, Bytes)>) -> Result<u64> {
    let mut written = 0u64;
    for (id, bytes) in runs {
        check_writer(sh)?;
        let size = bytes.len() as u64;
        sh.store
            .put(&object_name(id), bytes, PutMode::CreateNew)
            .await?;
        sh.lock().objects.insert_new(id, size);
        written += size;
    }
    Ok(written)
}

/// Move the keys into the runs with relocate entries, in batches of about half a
/// segment; a key changed meanwhile stays where its new value is. Returns the keys
/// moved.
async fn relocate(sh: &Shared, moves: &[(Box<[u8]>, ValueAt, ObjectId, u32)]) -> Result<u64> {
    let chunk_bytes = (sh.opts.segment_bytes / 2).max(64 << 10);
    let mut moved = 0u64;
    for batch in chunks_by_size(moves, chunk_bytes, |(key, ..)| {
        link_len(key.len(), MAX_META_LEN)
    }) {
        let ops: Vec<Op<'_>> = batch
            .iter()
            .map(|(key, expect, target, offset)| Op::Relocate {
                key,
                expect: *expect,
                target: *target,
                offset: *offset,
            })
            .collect();
        moved += sh.write(&ops).await? as u64;
    }
    Ok(moved)
}

/// `items` cut into consecutive chunks of at least one item and about `bytes` each.
fn chunks_by_size<T>(items: &[T], bytes: usize, size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < items.len() {
        let mut end = start;
        let mut total = 0;
        while end < items.len() && (end == start || total < bytes) {
            total += size(&items[end]);
            end += 1;
        }
        out.push(&items[start..end]);
        start = end;
    }
    out
}

/// Mark every unneeded object (and old manifest and checkpoint) retired. Returns how
/// many objects are retired in all.
fn retire_unneeded(sh: &Shared) -> usize {
    let now = Instant::now();
    let mut st = sh.lock();
    let stats = object_stats(&st, now);
    // Every change so far lies in segments up to this one.
    let after_seq = if st.log.open.is_empty() {
        st.log.last_sealed_seq
    } else {
        st.log.open.id().seq
    };
    for id in policy::unneeded(&stats) {
        st.objects.retire(id, now, after_seq);
    }
    st.objects
        .iter()
        .filter(|(_, o)| o.retired.is_some())
        .count()
}

/// Retire manifests and checkpoints older than the current ones.
async fn retire_old_metadata(sh: &Shared) -> Result<()> {
    let current = {
        let st = sh.lock();
        if st.gc.metadata_checked_at == Some(st.manifest.seq) {
            return Ok(());
        }
        st.manifest.clone()
    };
    let mut listed = sh.store.list(MANIFEST_DIR).await?;
    listed.extend(sh.store.list(CHECKPOINT_DIR).await?);
    let now = Instant::now();
    let mut st = sh.lock();
    for o in listed {
        let old = match parse_name(&o.key) {
            ObjectKind::Manifest(n) => n < current.seq,
            ObjectKind::Checkpoint(n) => n < current.seq && Some(n) != current.checkpoint,
            _ => false,
        };
        if old {
            st.gc.metadata_retired.entry(o.key).or_insert(now);
        }
    }
    st.gc.metadata_checked_at = Some(current.seq);
    Ok(())
}

/// How long until the last retired object or metadata may be deleted.
fn longest_wait(sh: &Shared) -> Duration {
    let grace = sh.opts.gc.grace;
    let now = Instant::now();
    let st = sh.lock();
    let objects = st
        .objects
        .iter()
        .filter_map(|(_, o)| o.retired.map(|r| r.since));
    let metadata = st.gc.metadata_retired.values().copied();
    objects
        .chain(metadata)
        .map(|since| grace.saturating_sub(now.saturating_duration_since(since)))
        .max()
        .unwrap_or_default()
}

/// Delete what is retired, past its grace period and durably unneeded, if this writer
/// still owns the store. Returns the number of objects deleted.
async fn delete_due(sh: &Shared) -> Result<u64> {
    check_writer(sh)?;
    let grace = sh.opts.gc.grace;
    let now = Instant::now();
    let (objects, metadata, seq, ckpt) = {
        let st = sh.lock();
        let objects = st.objects.deletable(now, grace, st.log.durable_seq);
        let metadata: Vec<String> = st
            .gc
            .metadata_retired
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= grace)
            .map(|(k, _)| k.clone())
            .collect();
        (objects, metadata, st.manifest.seq, st.manifest.checkpoint)
    };
    if objects.is_empty() && metadata.is_empty() {
        return Ok(0);
    }
    // A newer manifest means another writer (or our own checkpoint in progress):
    // delete nothing this time.
    if latest_manifest(&sh.store).await? != Some(seq) {
        log::info!("not deleting: the store's manifest moved on; will look again");
        return Ok(0);
    }
    // What retained snapshots need stays (retired) until they expire.
    let pinned = match retention::pinned(sh).await {
        Ok(p) => p,
        // What a retained snapshot needs cannot be known: delete nothing until it
        // expires (later rounds try again; `kvfs fsck` reports the damage).
        Err(e @ Error::Corrupt { .. }) => {
            log::warn!("gc: not deleting: a retained snapshot cannot be read: {e}");
            return Ok(0);
        }
        Err(e) => return Err(e),
    };
    let objects: Vec<(ObjectId, u64)> = objects
        .into_iter()
        .filter(|(id, _)| !pinned.contains(&object_name(*id)))
        .collect();
    let metadata: Vec<String> = metadata
        .into_iter()
        .filter(|k| !pinned.contains(k))
        .collect();
    let mut deleted = 0u64;
    for (id, size) in objects {
        check_writer(sh)?;
        sh.store.delete(&object_name(id)).await?;
        let mut st = sh.lock();
        st.objects.remove(id);
        st.gc.not_worth.remove(&id);
        st.gc.damaged.remove(&id);
        st.gc.counters.objects_deleted += 1;
        st.gc.counters.bytes_deleted += size;
        deleted += 1;
    }
    for key in metadata {
        // The current manifest and its checkpoint are never retired; checked again
        // here in case the manifest moved since.
        let keep = key == manifest_name(seq) || ckpt.is_some_and(|c| key == checkpoint_name(c));
        if keep {
            continue;
        }
        check_writer(sh)?;
        sh.store.delete(&key).await?;
        let mut st = sh.lock();
        st.gc.metadata_retired.remove(&key);
        st.gc.counters.metadata_deleted += 1;
        deleted += 1;
    }
    Ok(deleted)
}

fn background_config(sh: &Shared) -> PolicyConfig {
    PolicyConfig::from(&sh.opts.gc)
}

/// One background round: the policy's choice, then retirement and deletion. Returns
/// the bytes read by a rewrite (for throttling).
async fn background_round(sh: &Arc<Shared>) -> Result<u64> {
    let _one_at_a_time = sh.gc_lock.lock().await;
    ensure_listed(sh).await?;
    // Short of space: let the log's dead segments go, and only rewrite what shrinks.
    let short = sh.space_problem().is_some();
    if short && checkpoint_frees_space(sh) {
        log::info!("gc: the store is short of space; a checkpoint lets the log's dead segments go");
        if let Err(e) = crate::db::checkpointer::run_exclusive(sh).await {
            log::warn!("gc: checkpoint to give space back failed (will try again): {e}");
        }
    }
    let choice = {
        let st = sh.lock();
        policy::choose(&choosable(&st, Instant::now()), &background_config(sh))
    };
    let mut read = 0;
    let choice = match choice {
        Choice::Rewrite {
            reason: Reason::CompactLog,
            ..
        } if short => Choice::Idle,
        other => other,
    };
    if let Choice::Rewrite { reason, sources } = choice {
        let before = sh.lock().gc.counters;
        log::info!("gc: {reason:?} of {} objects", sources.len());
        let must_shrink = reason != Reason::CompactLog;
        rewrite(sh, &sources, must_shrink, &mut |m| log::info!("gc: {m}")).await?;
        read = sh.lock().gc.counters.since(&before).bytes_read;
    }
    retire_unneeded(sh);
    retire_old_metadata(sh).await?;
    delete_due(sh).await?;
    Ok(read)
}

/// Whether a checkpoint now would let more dead bytes out of the log window (to be
/// deleted after the grace period) than it costs: at least 1 MiB, and twice the
/// checkpoint's estimated size. Only while uploads land (a checkpoint waits for the
/// log to be durable) and the log holds something since the last one; once written,
/// the dead segments are out of the window, so this does not repeat.
fn checkpoint_frees_space(sh: &Shared) -> bool {
    if sh.durable.borrow().stall.is_some() {
        return false;
    }
    let st = sh.lock();
    if st.log_bytes_since_checkpoint == 0 || st.checkpoint_running {
        return false;
    }
    let dead_in_log: u64 = object_stats(&st, Instant::now())
        .iter()
        .filter(|o| o.in_log)
        .map(|o| o.size.saturating_sub(o.stored))
        .sum();
    let checkpoint_estimate = st.index.key_bytes() + st.index.len() as u64 * 32;
    dead_in_log >= (1 << 20) && dead_in_log >= 2 * checkpoint_estimate
}

/// The background worker of a writer. It waits `interval` between rounds while
/// there is nothing to rewrite; after a rewrite it goes on as soon as the throttle
/// allows (bytes read / `max_bytes_per_sec`), so cleaning keeps up with the writers.
pub(crate) async fn run_background(sh: Arc<Shared>) {
    let mut pause = sh.opts.gc.interval;
    loop {
        tokio::time::sleep(pause).await;
        pause = sh.opts.gc.interval;
        {
            let st = sh.lock();
            if st.poisoned.is_some() || st.closing || st.closed {
                return;
            }
            // Foreground writes come first, unless the store is short of space:
            // then what is queued may wait for what this round gives back.
            if st.log.unflushed_bytes > sh.opts.max_unflushed_bytes / 4 {
                drop(st);
                if sh.space_problem().is_none() {
                    continue;
                }
            }
        }
        match background_round(&sh).await {
            Ok(read) if read > 0 => {
                let rate = sh.opts.gc.max_bytes_per_sec.max(1);
                pause = Duration::from_secs_f64(read as f64 / rate as f64);
            }
            Ok(_) => {}
            Err(Error::Closed) => return,
            Err(e) => log::warn!("gc round failed (will try again): {e}"),
        }
    }
}

/// What an on-demand run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Clean mostly dead objects, then delete everything unneeded.
    Clean,
    /// Rewrite all live data into sorted runs, then delete everything unneeded.
    Compact,
}

/// `kvfs gc` / `kvfs compact`: run to completion, waiting out the grace period.
pub(crate) async fn run_on_demand(
    sh: &Arc<Shared>,
    mode: Mode,
    progress: Progress<'_>,
) -> Result<GcCounters> {
    check_writer(sh)?;
    let _one_at_a_time = sh.gc_lock.lock().await;
    let before = sh.lock().gc.counters;
    ensure_listed(sh).await?;
    // A checkpoint first, if the log holds anything since the last one: the log
    // window shrinks to what follows it.
    let log_since = {
        let st = sh.lock();
        st.log_bytes_since_checkpoint > 0 || st.manifest.ranges.len() > 2
    };
    if log_since {
        progress("writing a checkpoint");
        crate::db::checkpointer::run_exclusive(sh).await?;
    }
    match mode {
        Mode::Compact => {
            let rounds = {
                let st = sh.lock();
                policy::compact_all(
                    &object_stats(&st, Instant::now()),
                    sh.opts.gc.max_round_bytes,
                )
            };
            let n = rounds.len();
            for (i, sources) in rounds.iter().enumerate() {
                progress(&format!(
                    "compaction round {} of {n}: {} objects",
                    i + 1,
                    sources.len()
                ));
                rewrite(sh, sources, false, progress).await?;
            }
        }
        Mode::Clean => {
            // Cleaning and merging only: each round stores fewer bytes than the one
            // before, so the loop ends (see `policy`).
            let cfg = PolicyConfig {
                min_age: Duration::ZERO,
                compact_min_bytes: u64::MAX,
                ..background_config(sh)
            };
            for round in 1.. {
                let choice = {
                    let st = sh.lock();
                    policy::choose(&choosable(&st, Instant::now()), &cfg)
                };
                let Choice::Rewrite { sources, reason } = choice else {
                    break;
                };
                let what = match reason {
                    Reason::MergeRuns => "merging runs",
                    _ => "cleaning",
                };
                progress(&format!("{what}, round {round}: {} objects", sources.len()));
                rewrite(sh, &sources, true, progress).await?;
            }
        }
    }
    if sh.lock().gc.counters.since(&before).keys_moved > 0 {
        progress("writing a checkpoint");
        crate::db::checkpointer::run_exclusive(sh).await?;
    }
    let retired = retire_unneeded(sh);
    retire_old_metadata(sh).await?;
    let metadata = sh.lock().gc.metadata_retired.len();
    let wait = longest_wait(sh);
    if !wait.is_zero() {
        progress(&format!(
            "waiting {:.0} s (grace period) before deleting {retired} data objects and \
             {metadata} old manifests/checkpoints",
            wait.as_secs_f64()
        ));
        tokio::time::sleep(wait).await;
    }
    sh.sync().await?;
    let deleted = delete_due(sh).await?;
    progress(&format!("deleted {deleted} objects"));
    Ok(sh.lock().gc.counters.since(&before))
}
