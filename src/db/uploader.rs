//! Background tasks of a writer: the uploader (seals and uploads segments, advances
//! the durable point) and the lease renewer.
//!
//! **Group commit.** A sync does not upload by itself: it marks the open segment as
//! wanted and wakes the uploader. The uploader seals it when no segment sealed for an
//! earlier sync is still in flight; otherwise writes and syncs keep landing in the
//! open segment until the earlier one is durable. The landing releases a *group* of
//! syncs, which tend to come back together: the next sync segment waits until as many
//! syncs as that group plus those already waiting have arrived, or
//! [`GROUP_COMMIT_WAIT`] has passed since the landing. A lone writer's group is 1, so
//! its sync costs one round trip and never waits. Every sync that arrives during one
//! round trip so shares the next PUT. Full segments and the flush interval seal
//! independently of syncs, and up to `max_inflight_uploads` segments upload at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::cache::CacheKey;
use super::error::Error;
use super::state::{LogState, SealedSegment, GROUP_COMMIT_WAIT};
use super::tasks::Kind;
use super::{checkpointer, Shared, Stall};
use crate::format::names::object_name;
use crate::store::{PutMode, StoreError};

/// Seal and start uploads until the writer closes or is poisoned.
pub(crate) async fn run(sh: Arc<Shared>) {
    loop {
        let notified = sh.wake_uploader.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        #[cfg(feature = "test-hooks")]
        {
            use super::hooks::TaskFault;
            if sh.hooks.fire(TaskFault::UploaderPanics) {
                panic!("injected panic in the uploader loop");
            }
            if sh.hooks.fire(TaskFault::UploaderReturns) {
                return;
            }
        }
        let (starts, pause) = {
            let mut st = sh.lock();
            if st.poisoned.is_some() {
                return;
            }
            let closing = st.closing;
            let closed = st.closed;
            let log = &mut st.log;
            let mut starts = Vec::new();
            while log.inflight.len() < sh.opts.max_inflight_uploads {
                if let Some(seg) = log.sealed.pop_front() {
                    log.inflight.insert(seg.id.seq, seg.clone());
                    starts.push(seg);
                    continue;
                }
                let open_seq = log.open.id().seq;
                // Syncs wait for the open segment: seal it unless an earlier sync's
                // segment is still on its way (the syncs that keep arriving then
                // share the next PUT, started when that one lands), once as many
                // syncs as shared the last one have arrived or a short wait is over.
                let gathered = log.open_syncers >= log.group_hint
                    || gather_start(log).is_none_or(|t| t.elapsed() >= GROUP_COMMIT_WAIT);
                let for_sync = log.sync_target >= open_seq
                    && log.sync_sealed_seq <= log.durable_seq
                    && gathered;
                let due = !log.open.is_empty()
                    && (closing
                        || for_sync
                        || log
                            .open_since
                            .is_some_and(|t| t.elapsed() >= sh.opts.flush_interval));
                if !due {
                    break;
                }
                if log.sync_target >= open_seq {
                    log.sync_sealed_seq = open_seq;
                    log.sync_group = log.open_syncers;
                }
                log.seal_open();
            }
            if closed && log.is_idle() {
                return;
            }
            let mut pause = match log.open_since {
                Some(t) if !log.open.is_empty() => {
                    sh.opts.flush_interval.saturating_sub(t.elapsed())
                }
                _ => sh.opts.flush_interval,
            };
            // A sync group still gathering: look again when its wait is over.
            if let Some(t) = gather_start(log) {
                if log.sync_sealed_seq <= log.durable_seq {
                    pause = pause.min(GROUP_COMMIT_WAIT.saturating_sub(t.elapsed()));
                }
            }
            (starts, pause.max(Duration::from_millis(1)))
        };
        for seg in starts {
            let name = format!("the upload of {}", object_name(seg.id));
            sh.spawn(Kind::Work, name, upload(sh.clone(), seg));
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Since when the syncs waiting for the open segment have been gathering: the later
/// of the first one's arrival and the landing of the previous sync segment.
fn gather_start(log: &LogState) -> Option<Instant> {
    let first = log.open_first_sync?;
    Some(log.group_landed.map_or(first, |landed| landed.max(first)))
}

/// Pause between rounds of retrying a segment upload while the store does not answer
/// (each round retries with backoff for up to `Options::retry.max_elapsed` itself).
const STALL_PAUSE: Duration = Duration::from_secs(1);

/// Upload one sealed segment and account for the result. A store that does not
/// answer is waited out: the segment stays in flight and is tried again until it
/// lands (a [`Stall`]), so nothing acknowledged or queued is lost or reordered, and
/// the writer carries on once the store is back. A fence or a refusal (4xx) poisons.
async fn upload(sh: Arc<Shared>, seg: SealedSegment) {
    let name = object_name(seg.id);
    #[cfg(feature = "test-hooks")]
    if sh.hooks.fire(super::hooks::TaskFault::UploadPanics) {
        panic!("injected panic in the upload of {name}");
    }
    let mut again = false;
    loop {
        let result = put_segment(&sh, &name, &seg.data, again).await;
        match result {
            Ok(()) => {
                landed(&sh, sh.lock(), seg.id.seq);
                return;
            }
            Err(StoreError::PreconditionFailed(_)) => {
                let err = Error::Fenced(format!(
                    "segment {name} already exists: a newer writer closed this writer's log"
                ));
                sh.poison(&mut sh.lock(), err);
                return;
            }
            Err(e) if e.is_retryable() || matches!(e, StoreError::NoSpace(_)) => {
                let gone = {
                    let st = sh.lock();
                    st.poisoned.is_some() || st.closed
                };
                if gone {
                    return;
                }
                note_stall(&sh, &name, &e);
            }
            Err(e) => {
                let err = Error::Poisoned(format!("upload of {name} failed: {e}"));
                sh.poison(&mut sh.lock(), err);
                return;
            }
        }
        tokio::time::sleep(STALL_PAUSE).await;
        again = true;
    }
}

/// PUT a segment, create-if-absent. `again`: an earlier round may have stored it
/// (its answer lost in transit), so an existing object with exactly these bytes is
/// this upload, not another writer's.
async fn put_segment(
    sh: &Shared,
    name: &str,
    data: &bytes::Bytes,
    again: bool,
) -> Result<(), StoreError> {
    match sh.store.put(name, data.clone(), PutMode::CreateNew).await {
        Ok(_) => Ok(()),
        Err(StoreError::PreconditionFailed(k)) if again => match sh.store.get(name).await {
            Ok(found) if found.data == *data => Ok(()),
            Ok(_) => Err(StoreError::PreconditionFailed(k)),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// Record that uploads fail for now: say so once, and wake every waiter so it can
/// apply its own time limit.
fn note_stall(sh: &Shared, name: &str, e: &StoreError) {
    let no_space = matches!(e, StoreError::NoSpace(_));
    let mut first = false;
    let mut first_no_space = false;
    sh.durable.send_modify(|d| match &mut d.stall {
        Some(s) => {
            s.error = e.to_string();
            first_no_space = no_space && !s.no_space;
            s.no_space = no_space;
        }
        None => {
            first = true;
            first_no_space = no_space;
            // The upload has been failing for the whole retry timeout already
            // (a full store refuses at once, and retrying would not help).
            let now = Instant::now();
            let failing_for = if no_space {
                Duration::ZERO
            } else {
                sh.opts.retry.max_elapsed
            };
            d.stall = Some(Stall {
                since: now.checked_sub(failing_for).unwrap_or(now),
                error: e.to_string(),
                no_space,
            });
        }
    });
    if first_no_space {
        log::error!(
            "upload of {name} failed: {e}; written data stays queued and is uploaded in \
             order once space is freed; meanwhile syncs and writes that add data fail \
             with ENOSPC, deletes go through and cleaning gives space back"
        );
    } else if first {
        log::error!(
            "upload of {name} failed: {e}; written data stays queued and is uploaded in \
             order once the object store answers (syncs and writes beyond the memory \
             limit fail with EIO after the retry timeout meanwhile)"
        );
    }
    sh.space_freed.notify_waiters();
}

/// Account for a segment that is now stored.
fn landed(sh: &Arc<Shared>, mut st: std::sync::MutexGuard<'_, super::state::State>, seq: u64) {
    if let Some(done) = st.log.complete(seq) {
        st.objects.insert_new(done.id, done.data.len() as u64);
        st.cache.insert(CacheKey::Segment(done.id), done.data);
    }
    let durable = st.log.durable_seq;
    let mut recovered = None;
    sh.durable.send_modify(|d| {
        d.seq = durable;
        if st.log.inflight.is_empty() {
            recovered = d.stall.take();
        }
    });
    match recovered {
        Some(s) if s.no_space => log::warn!(
            "the object store has room again after {:.0} s; every queued segment is stored",
            s.since.elapsed().as_secs_f64()
        ),
        Some(s) => log::warn!(
            "the object store answers again after {:.0} s; every queued segment is stored",
            s.since.elapsed().as_secs_f64()
        ),
        None => {}
    }
    sh.space_freed.notify_waiters();
    sh.wake_uploader.notify_one();
    let want_checkpoint = !st.checkpoint_running
        && !st.closing
        && st.log_bytes_since_checkpoint >= sh.opts.checkpoint_bytes;
    if want_checkpoint {
        st.checkpoint_running = true;
        drop(st);
        sh.spawn(
            Kind::Work,
            "a background checkpoint",
            checkpointer::run_background(sh.clone()),
        );
    }
}

/// Renew the writer lease every third of its time-to-live.
pub(crate) async fn renew_lease(sh: Arc<Shared>) {
    let period = sh.opts.lease_ttl / 3;
    loop {
        tokio::time::sleep(period).await;
        let mut guard = sh.lease.lock().await;
        let Some(lease) = guard.as_mut() else { return };
        let renewed = lease.renew().await;
        let counter = match renewed {
            Ok(()) => &sh.lease_renewals,
            Err(_) => &sh.lease_renewal_failures,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match renewed {
            Ok(()) => {}
            Err(e @ Error::Fenced(_)) => {
                drop(guard);
                let mut st = sh.lock();
                sh.poison(&mut st, e);
                return;
            }
            Err(e) => log::warn!("could not renew the writer lease (will retry): {e}"),
        }
    }
}
