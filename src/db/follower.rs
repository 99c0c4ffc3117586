//! Following a writer from a read-only handle: applying what the writer stores after
//! the handle opened.
//!
//! Vocabulary:
//! - **position** ([`Position`]): the manifest this handle last read, the log range
//!   (epoch) it follows and the next segment it expects there.
//! - **round** ([`catch_up`]): fetch the expected segments by name, in order (a GET;
//!   "not found" means nothing new yet), and apply each to the index, noting the keys
//!   it changes; then look for the next manifest by name. A manifest whose log goes
//!   on from the position is adopted (moving into a new writer's range once the old
//!   one is read to its end).
//! - **reload**: when the position can no longer be reached by name (the next
//!   manifest's log starts after it because a checkpoint folded it in, or a segment
//!   of a closed range is gone), load the newest manifest as `open` does and replace
//!   the index. Every key then counts as changed.
//!
//! Requests of a round while nothing is new: one GET of the next segment, and every
//! [`MANIFEST_EVERY`] rounds one GET of the next manifest and one of the handle's
//! own (whose absence means GC collected the history between it and the newest
//! manifest: then reload). When the log being followed has ended (its writer closed
//! it), the next manifest is looked for every round instead of the segment. A LIST
//! only when reloading. So 1.5 GETs a round at most: 10,800 an hour at 500 ms.
//!
//! Rounds run one at a time, under an async lock held across their requests (the
//! state lock is taken only to apply a fetched segment or swap in a reloaded index,
//! never across a request). Rounds are numbered as they start: a caller that waited
//! for the lock while a round that started after its call ran does not run another
//! (that round saw everything the caller could need), so many readers that find
//! their objects gone at once cost one or two rounds, not one each.
//!
//! Whoever runs a round (the follow loop, or a read that found its object gone),
//! what it applied (changed keys, segments, manifests, a reload) is added to the
//! state's `followed`, which the next [`Db::catch_up`](super::Db::catch_up) takes
//! and reports, so a mount refreshes open files for those keys too.
//!
//! A segment whose entries move keys into a run the object table does not know (one
//! compaction wrote after this handle listed `run/`) makes the next read of a run
//! list `run/` again, so reads of the new run use readahead windows.

use std::sync::atomic::Ordering;

use super::error::{Error, Result};
use super::recovery::{self, Position};
use super::state::State;
use super::Shared;
use crate::format::manifest::Manifest;
use crate::format::names::{manifest_name, object_name, ObjectId};
use crate::store::StoreError;

/// A round looks for the next manifest every this many rounds while the followed
/// log is open (a new manifest then only matters for a new checkpoint).
pub const MANIFEST_EVERY: u64 = 4;

/// What one round applied.
#[derive(Debug, Default)]
pub struct CatchUp {
    /// Log segments applied.
    pub segments: u64,
    /// Manifests adopted.
    pub manifests: u64,
    /// Keys set or removed by the applied segments, in log order (repeats possible).
    pub changed: Vec<Vec<u8>>,
    /// The index was replaced by a reload: treat every key as changed.
    pub reloaded: bool,
}

impl CatchUp {
    /// Whether the round changed anything.
    pub fn is_empty(&self) -> bool {
        self.segments == 0 && !self.reloaded && self.changed.is_empty()
    }
}

/// The most keys kept for the next [`Db::catch_up`](super::Db::catch_up) to report
/// (rounds run by reads add theirs even when nobody drains them); past it the keys
/// are dropped and everything counts as changed, as after a reload.
pub const MAX_PENDING_KEYS: usize = 100_000;

/// The rounds that finished, by number (see [`catch_up`]). Kept inside the follow
/// lock, so only the round's runner writes it.
#[derive(Debug, Default)]
pub(crate) struct Finished {
    /// The last round that finished without an error.
    any: u64,
    /// The last one of those that looked for the next manifest.
    thorough: u64,
}

/// Add what a round applied to what the next [`Db::catch_up`](super::Db::catch_up)
/// reports.
fn note(pending: &mut CatchUp, segments: u64, manifests: u64, changed: Vec<Vec<u8>>) {
    pending.segments += segments;
    pending.manifests += manifests;
    if pending.reloaded {
        return;
    }
    pending.changed.extend(changed);
    if pending.changed.len() > MAX_PENDING_KEYS {
        pending.changed = Vec::new();
        pending.reloaded = true;
    }
}

/// Make sure a round runs that starts after this call, unless one did meanwhile (see
/// the module documentation). `thorough`: the round must also look for the next
/// manifest and check that this handle's own manifest still exists (a reader that
/// found an object gone asks for this). What rounds apply is added to the state's
/// `followed`, for the next [`Db::catch_up`](super::Db::catch_up) to report. A
/// writer's handle, or a snapshot's, has nothing to follow.
pub(crate) async fn catch_up(sh: &Shared, thorough: bool) -> Result<()> {
    if sh.writable || sh.opts.snapshot.is_some() {
        return Ok(());
    }
    // Rounds are numbered as they start, under the lock: every round numbered above
    // `asked` started after this call did.
    let asked = sh.follow_rounds.load(Ordering::Acquire);
    let mut finished = sh.follow_lock.lock().await;
    let last = if thorough {
        finished.thorough
    } else {
        finished.any
    };
    if last > asked {
        // A round that began after we were asked finished while we waited: its
        // result serves (the caller looks its key up again).
        return Ok(());
    }
    let round = sh.follow_rounds.fetch_add(1, Ordering::AcqRel) + 1;
    let look_for_manifest = thorough || round % MANIFEST_EVERY == 0;
    run_round(sh, look_for_manifest).await?;
    finished.any = round;
    if look_for_manifest {
        finished.thorough = round;
    }
    Ok(())
}

/// One round, under the follow lock: follow the log as far as it goes, then (when
/// asked, or when the log ended) adopt newer manifests one by one.
async fn run_round(sh: &Shared, mut look_for_manifest: bool) -> Result<()> {
    let check_own_manifest = look_for_manifest;
    loop {
        match follow_log(sh).await? {
            Step::Moved => continue,
            Step::Reload => return reload(sh).await,
            Step::Nothing => {}
        }
        if sh.lock().position.open && !look_for_manifest {
            return Ok(());
        }
        match adopt_next_manifest(sh, check_own_manifest).await? {
            // Look for a newer one still, and follow its log.
            Step::Moved => look_for_manifest = true,
            Step::Reload => return reload(sh).await,
            Step::Nothing => return Ok(()),
        }
    }
}

/// What one step of a round came to.
enum Step {
    /// The position moved (a segment applied, a fence met, the next log range or
    /// manifest taken): take the next step.
    Moved,
    /// The position can no longer be reached by name: reload.
    Reload,
    /// Nothing new here.
    Nothing,
}

/// Apply the next segment of the followed log, or move on to the next log range
/// once this one is read to its end.
async fn follow_log(sh: &Shared) -> Result<Step> {
    let mut pos = sh.lock().position;
    let ranges = sh.lock().manifest.ranges.clone();
    let range = ranges.iter().find(|r| r.epoch == pos.epoch).copied();
    let end = range.filter(|r| !r.is_open()).map(|r| r.last);
    if pos.open && end.is_none_or(|last| pos.next <= last) {
        let id = ObjectId {
            epoch: pos.epoch,
            seq: pos.next,
        };
        let got = match sh.store.get(&object_name(id)).await {
            Ok(got) => got,
            // Part of a closed range, and gone: collected after a checkpoint.
            Err(StoreError::NotFound(_)) if end.is_some() => return Ok(Step::Reload),
            Err(StoreError::NotFound(_)) => return Ok(Step::Nothing),
            Err(e) => return Err(e.into()),
        };
        let mut changed = Vec::new();
        let mut st = sh.lock();
        let mut replayed = 0;
        let applied = recovery::apply_segment_noting(
            &mut st.index,
            id,
            &got.data,
            &mut replayed,
            &mut |k| changed.push(k.to_vec()),
        )?;
        if applied {
            pos.next += 1;
            if meets_unknown_run(&st, &changed) {
                // Written by compaction after this handle listed `run/`: list again
                // on the next read of a run, so readahead knows its size.
                st.objects.runs_listed = false;
            }
            note(&mut st.followed, 1, 0, changed);
        } else {
            // A fence: this writer's log ended; a manifest says what follows.
            pos.open = false;
        }
        st.position = pos;
        return Ok(Step::Moved);
    }
    let Some(last) = end.filter(|last| pos.next > *last) else {
        return Ok(Step::Nothing);
    };
    // This range is read to its end: go on with the next one, if any.
    let step = match ranges.iter().find(|r| r.epoch > pos.epoch) {
        Some(r) => {
            pos = Position {
                manifest: pos.manifest,
                epoch: r.epoch,
                next: r.first,
                last: (!r.is_open()).then_some(r.last),
                open: true,
            };
            Step::Moved
        }
        None => {
            pos.open = false;
            pos.last = Some(last);
            Step::Nothing
        }
    };
    sh.lock().position = pos;
    Ok(step)
}

/// Read the manifest after this handle's and adopt it if its log goes on from the
/// position. With `check_own_manifest`, a missing next manifest leads to checking
/// that this handle's own still exists: GC deletes superseded manifests, so if it
/// is gone too, the handle fell behind what the store keeps (reload).
async fn adopt_next_manifest(sh: &Shared, check_own_manifest: bool) -> Result<Step> {
    let mut pos = sh.lock().position;
    let next = match recovery::read_manifest(&sh.store, pos.manifest + 1).await {
        Ok(m) => m,
        Err(Error::Store(StoreError::NotFound(_))) if !check_own_manifest => {
            return Ok(Step::Nothing)
        }
        Err(Error::Store(StoreError::NotFound(_))) => {
            return match sh.store.get(&manifest_name(pos.manifest)).await {
                Err(StoreError::NotFound(_)) => Ok(Step::Reload),
                Err(e) => Err(e.into()),
                Ok(_) => Ok(Step::Nothing),
            };
        }
        Err(e) => return Err(e),
    };
    if !continues(&next, &pos) {
        return Ok(Step::Reload);
    }
    pos.manifest = next.seq;
    let mut st = sh.lock();
    st.manifest = next;
    st.position = pos;
    note(&mut st.followed, 0, 1, Vec::new());
    Ok(Step::Moved)
}

/// Whether one of `keys` (just applied) now lies in a run missing from the object
/// table.
fn meets_unknown_run(st: &State, keys: &[Vec<u8>]) -> bool {
    keys.iter().any(|k| {
        st.index
            .get(k)
            .and_then(|e| st.index.object(e.loc.slot))
            .is_some_and(|id| id.is_run() && st.objects.size(id).is_none())
    })
}

/// Whether the log of manifest `m` goes on from `pos` without a gap: its range of
/// the followed epoch starts at or before the next expected segment.
fn continues(m: &Manifest, pos: &Position) -> bool {
    m.ranges.iter().any(|r| {
        r.epoch == pos.epoch
            && r.first <= pos.next
            && (r.is_open() || pos.next <= r.last.saturating_add(1))
    })
}

/// Replace the index with the newest state of the store.
async fn reload(sh: &Shared) -> Result<()> {
    let (manifest, index, position) = recovery::load_latest(&sh.store, &sh.opts)
        .await?
        .ok_or_else(|| Error::NoStore(sh.store.describe()))?;
    log::info!(
        "follower reloaded the store at manifest {} (it had fallen behind what the store keeps)",
        manifest.seq
    );
    let mut st = sh.lock();
    st.index = index;
    st.manifest = manifest;
    st.position = position;
    // The new index may name runs this handle never listed.
    st.objects.runs_listed = false;
    st.followed.reloaded = true;
    st.followed.changed = Vec::new();
    note(&mut st.followed, 0, 1, Vec::new());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::manifest::{LogRange, OPEN};

    fn manifest(ranges: Vec<LogRange>) -> Manifest {
        Manifest {
            seq: 9,
            writer_epoch: ranges.last().map_or(1, |r| r.epoch),
            created_unix_ms: 0,
            checkpoint: None,
            ranges,
            holder: String::new(),
        }
    }

    fn at(epoch: u64, next: u64) -> Position {
        Position {
            manifest: 8,
            epoch,
            next,
            last: None,
            open: true,
        }
    }

    #[test]
    fn a_manifest_continues_a_position_only_without_a_gap() {
        let open = |epoch, first| LogRange {
            epoch,
            first,
            last: OPEN,
        };
        let closed = |epoch, first, last| LogRange { epoch, first, last };
        // The same open range, or one starting before the position.
        assert!(continues(&manifest(vec![open(3, 1)]), &at(3, 7)));
        assert!(continues(&manifest(vec![open(3, 7)]), &at(3, 7)));
        // A checkpoint folded segments the follower has not read: reload.
        assert!(!continues(&manifest(vec![open(3, 9)]), &at(3, 7)));
        // The range was closed at or after what was read; a new writer follows.
        assert!(continues(
            &manifest(vec![closed(3, 1, 6), open(4, 1)]),
            &at(3, 7)
        ));
        assert!(continues(
            &manifest(vec![closed(3, 1, 9), open(4, 1)]),
            &at(3, 7)
        ));
        // Only a later writer's log: the followed one was folded in.
        assert!(!continues(&manifest(vec![open(4, 1)]), &at(3, 7)));
    }
}
