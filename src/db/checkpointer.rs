//! Writing checkpoints and the manifests that publish them.
//!
//! Steps (docs/FORMAT.md, "Commit protocol"):
//! 1. Seal the open segment and note its sequence number `P`.
//! 2. Encode the index in chunks of keys, taking the state lock for each chunk only,
//!    so writes continue meanwhile. The result is *fuzzy*: every key's location as of
//!    `P` or later.
//! 3. Seal again and note `E`; wait until the durable point reaches `E`. Every change
//!    the chunks saw is now durable, so the checkpoint never shows a change that a
//!    crash could lose, nor refers to a segment that might not exist.
//! 4. PUT `ckpt/N` (create-if-absent), where `N` is the next manifest number.
//! 5. PUT `manifest/N` (create-if-absent) naming `ckpt/N` and the open log range of
//!    this epoch from `P + 1`. Replaying from `P + 1` over the fuzzy checkpoint gives
//!    the exact state: each log entry sets or removes one key, and the last one wins. If it already exists, another writer has taken over:
//!    this writer is fenced.

use std::collections::HashMap;
use std::sync::Arc;

use super::error::{Error, Result};
use super::lease::{now_unix_ms, this_host};
use super::Shared;
use crate::format::checkpoint;
use crate::format::manifest::{self, LogRange, Manifest, OPEN};
use crate::format::names::{checkpoint_name, manifest_name, ObjectId};
use crate::store::{PutMode, StoreError};

/// Run a checkpoint now, after any one already running.
pub(crate) async fn run_exclusive(sh: &Arc<Shared>) -> Result<()> {
    if !sh.writable {
        return Err(Error::ReadOnly);
    }
    loop {
        let notified = sh.checkpoint_done.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut st = sh.lock();
            if let Some(e) = &st.poisoned {
                return Err(e.clone());
            }
            if !st.checkpoint_running {
                st.checkpoint_running = true;
                break;
            }
        }
        notified.await;
    }
    let result = write(sh).await;
    finish(sh, &result);
    result
}

/// A checkpoint started by the uploader (which already set `checkpoint_running`).
pub(crate) async fn run_background(sh: Arc<Shared>) {
    let result = write(&sh).await;
    finish(&sh, &result);
    if let Err(e) = result {
        log::warn!("background checkpoint failed (will retry later): {e}");
    }
}

fn finish(sh: &Shared, result: &Result<()>) {
    let mut st = sh.lock();
    st.checkpoint_running = false;
    if let Err(e @ Error::Fenced(_)) = result {
        sh.poison(&mut st, e.clone());
    }
    drop(st);
    sh.checkpoint_done.notify_waiters();
}

/// The holder description written into manifests.
pub(crate) fn holder_description(epoch: u64) -> String {
    format!("{} pid {} epoch {}", this_host(), std::process::id(), epoch)
}

async fn write(sh: &Shared) -> Result<()> {
    // The log position the checkpoint starts from: everything up to `start_seq`.
    let (start_seq, accounted, n) = {
        let mut st = sh.lock();
        if let Some(e) = &st.poisoned {
            return Err(e.clone());
        }
        st.log.seal_open();
        (
            st.log.last_sealed_seq,
            st.log_bytes_since_checkpoint,
            st.manifest.seq + 1,
        )
    };
    // Encode the index in chunks, releasing the lock in between so writers go on.
    // The checkpoint's segment table holds only the objects its entries name, in
    // order of first use: its size follows the live data, not the store's history.
    let mut entries = Vec::new();
    let mut count = 0u64;
    let mut segments: Vec<ObjectId> = Vec::new();
    let mut dense: HashMap<ObjectId, u32> = HashMap::new();
    sh.for_each_key_chunked(|key, entry, id| {
        let slot = *dense.entry(id).or_insert_with(|| {
            segments.push(id);
            (segments.len() - 1) as u32
        });
        checkpoint::encode_entry_at(&mut entries, key, entry, slot);
        count += 1;
    })
    .await;
    // Every change the chunks may have seen lies in segments up to `end_seq`; they
    // must all be durable before the checkpoint is published (a change the checkpoint
    // shows, such as a delete, could otherwise outlive a crash that loses it).
    let end_seq = {
        let mut st = sh.lock();
        st.log.seal_open();
        st.log.last_sealed_seq
    };
    sh.wake_uploader.notify_one();
    sh.wait_durable(end_seq).await?;
    let covers_seq = start_seq;
    let data = checkpoint::assemble(
        sh.epoch,
        ObjectId {
            epoch: sh.epoch,
            seq: start_seq,
        },
        &segments,
        count,
        &entries,
    );
    drop(entries);

    let ckpt = checkpoint_name(n);
    let size = data.len();
    match sh.store.put(&ckpt, data.into(), PutMode::CreateNew).await {
        Ok(_) => {}
        Err(StoreError::PreconditionFailed(_)) => {
            return Err(Error::Fenced(format!(
                "{ckpt} already exists: another writer has published manifest {n}"
            )))
        }
        Err(e) => return Err(e.into()),
    }
    let m = Manifest {
        seq: n,
        writer_epoch: sh.epoch,
        created_unix_ms: now_unix_ms(),
        checkpoint: Some(n),
        ranges: vec![LogRange {
            epoch: sh.epoch,
            first: covers_seq + 1,
            last: OPEN,
        }],
        holder: holder_description(sh.epoch),
    };
    publish(sh, &m).await?;
    log::info!(
        "checkpoint {ckpt} written ({size} bytes), covering segment {covers_seq} of epoch {}",
        sh.epoch
    );
    let mut st = sh.lock();
    st.manifest = m;
    st.log_bytes_since_checkpoint = st.log_bytes_since_checkpoint.saturating_sub(accounted);
    Ok(())
}

/// On a clean close, after everything is durable and no checkpoint is running:
/// publish manifest `N + 1` with this writer's open log range closed at its last
/// segment (or dropped, if it wrote none). The next writer then finds no open tail
/// and needs no fence segment: nothing of this writer reaches the store after
/// `close` returns, so there is nothing to fence off. (After a crash the next writer
/// still fences, see `recovery`.)
pub(crate) async fn close_log_range(sh: &Shared) -> Result<()> {
    let m = {
        let st = sh.lock();
        let mut ranges = st.manifest.ranges.clone();
        let last = st.log.durable_seq;
        match ranges.last_mut() {
            Some(r) if r.epoch == sh.epoch && r.is_open() => {
                if last >= r.first {
                    r.last = last;
                } else {
                    ranges.pop();
                }
            }
            // Already closed (a second close), or not this writer's range.
            _ => return Ok(()),
        }
        Manifest {
            seq: st.manifest.seq + 1,
            writer_epoch: sh.epoch,
            created_unix_ms: now_unix_ms(),
            checkpoint: st.manifest.checkpoint,
            ranges,
            holder: holder_description(sh.epoch),
        }
    };
    publish(sh, &m).await?;
    log::info!("log of epoch {} closed in manifest {}", sh.epoch, m.seq);
    sh.lock().manifest = m;
    Ok(())
}

/// Create-if-absent manifest `m.seq`; if it exists, another writer has taken over.
async fn publish(sh: &Shared, m: &Manifest) -> Result<()> {
    let name = manifest_name(m.seq);
    match sh
        .store
        .put(&name, manifest::encode(m).into(), PutMode::CreateNew)
        .await
    {
        Ok(_) => Ok(()),
        Err(StoreError::PreconditionFailed(_)) => Err(Error::Fenced(format!(
            "{name} already exists: another writer has taken over"
        ))),
        Err(e) => Err(e.into()),
    }
}
