//! `kvfs fsck --repair`: bring a damaged store back to a consistent state that
//! `kvfs fsck` finds clean, saying exactly which keys were lost.
//!
//! The store is opened as a writer with `Options::rebuild_damaged` (recovery falls
//! back exactly when it can, or rebuilds from what exists). Then:
//! 1. `fsck` finds every problem, and the live keys whose values are lost (their data
//!    object is missing, or their value fails its own checksum);
//! 2. those keys are deleted through the normal write path, and the deletes synced;
//! 3. the keys whose values are intact but lie in a damaged data object are moved to
//!    new runs (`gc::worker::salvage`), so nothing live is left in a damaged object;
//! 4. a checkpoint of the repaired state is written (it replaces a damaged
//!    checkpoint and ends the log window before any damaged log segment);
//! 5. the damaged objects nothing needs any more (old checkpoints, manifests, data
//!    objects with no live key out of the log window) are deleted after the grace
//!    period, as GC deletes anything;
//! 6. `fsck` runs again and what is left is reported (objects kvfs did not write are
//!    never deleted).
//!
//! A repair of a clean store changes nothing.

use std::sync::Arc;

use super::error::Result;
use super::fsck::{self, FsckIssue, LostKey};
use super::gc::in_log_window;
use super::recovery::{latest_manifest, Fallback};
use super::{checkpointer, Op, Shared};
use crate::format::names::{checkpoint_name, manifest_name, parse_name, ObjectKind};
use crate::format::segment::delete_len;

/// What a repair did.
#[derive(Clone, Debug, Default)]
pub struct RepairReport {
    /// Problems found before repairing.
    pub found: Vec<FsckIssue>,
    /// How the state was recovered at open, if the current checkpoint (or the log)
    /// was damaged.
    pub fallback: Option<Fallback>,
    /// Keys deleted because their values were lost, in key order.
    pub lost_keys: Vec<LostKey>,
    /// Keys with intact values moved out of damaged data objects.
    pub keys_salvaged: u64,
    /// Whether a fresh checkpoint was written.
    pub checkpoint_written: bool,
    /// Damaged objects deleted.
    pub deleted: Vec<String>,
    /// Problems that remain (such as foreign objects, which are never deleted).
    pub remaining: Vec<FsckIssue>,
}

impl RepairReport {
    /// Whether the store needed no repair.
    pub fn was_clean(&self) -> bool {
        self.found.is_empty() && self.fallback.is_none()
    }
}

pub(crate) async fn run(
    sh: &Arc<Shared>,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<RepairReport> {
    if !sh.writable {
        return Err(super::Error::ReadOnly);
    }
    let mut out = RepairReport {
        fallback: sh.fallback.clone(),
        ..RepairReport::default()
    };
    progress("checking every object");
    let before = fsck::run(sh, progress).await?;
    out.found = before.issues.clone();
    if out.was_clean() {
        out.remaining = before.issues;
        return Ok(out);
    }
    // 2. Delete the keys whose values are lost.
    if !before.lost_keys.is_empty() {
        progress(&format!(
            "deleting {} keys whose values are lost",
            before.lost_keys.len()
        ));
        let chunk_bytes = (sh.opts.segment_bytes / 2).max(64 << 10);
        let mut i = 0;
        while i < before.lost_keys.len() {
            let mut ops = Vec::new();
            let mut size = 0;
            while i < before.lost_keys.len() && (ops.is_empty() || size < chunk_bytes) {
                let key = &before.lost_keys[i].key;
                size += delete_len(key.len());
                ops.push(Op::Delete {
                    key: key.as_slice(),
                });
                i += 1;
            }
            sh.write(&ops).await?;
        }
        sh.sync().await?;
        out.lost_keys = before.lost_keys.clone();
    }
    // 3. Move intact values out of damaged data objects.
    if !before.salvageable.is_empty() {
        progress(&format!(
            "moving the intact values out of {} damaged data objects",
            before.salvageable.len()
        ));
        let moved_before = sh.lock().gc.counters.keys_moved;
        super::gc::worker::salvage(sh, &before.salvageable, progress).await?;
        out.keys_salvaged = sh.lock().gc.counters.keys_moved - moved_before;
    }
    // 4. A checkpoint of the repaired state.
    progress("writing a checkpoint of the repaired state");
    checkpointer::run_exclusive(sh).await?;
    out.checkpoint_written = true;
    // 5. Delete the damaged objects nothing needs any more.
    let (manifest, unneeded) = {
        let st = sh.lock();
        let m = st.manifest.clone();
        let unneeded: Vec<String> = before
            .damaged
            .iter()
            .filter(|name| match parse_name(name) {
                ObjectKind::Segment(id) | ObjectKind::Run(id) => {
                    st.index.object_live(id).keys == 0 && !in_log_window(&m.ranges, id)
                }
                ObjectKind::Checkpoint(c) => m.checkpoint != Some(c),
                ObjectKind::Manifest(n) => n < m.seq,
                _ => false,
            })
            .cloned()
            .collect();
        (m, unneeded)
    };
    if !unneeded.is_empty() {
        let grace = sh.opts.gc.grace;
        if !grace.is_zero() {
            progress(&format!(
                "waiting {:.0} s (grace period) before deleting {} damaged objects",
                grace.as_secs_f64(),
                unneeded.len()
            ));
            tokio::time::sleep(grace).await;
        }
        if latest_manifest(&sh.store).await? == Some(manifest.seq) {
            for name in unneeded {
                // Never the current manifest or its checkpoint (checked by name once
                // more, as GC does).
                if name == manifest_name(manifest.seq)
                    || manifest
                        .checkpoint
                        .is_some_and(|c| name == checkpoint_name(c))
                {
                    continue;
                }
                sh.store.delete(&name).await?;
                if let ObjectKind::Segment(id) | ObjectKind::Run(id) = parse_name(&name) {
                    sh.lock().objects.remove(id);
                }
                progress(&format!("deleted damaged object {name}"));
                out.deleted.push(name);
            }
        } else {
            log::warn!("not deleting damaged objects: the store's manifest moved on");
        }
    }
    // 6. What is left.
    progress("checking again");
    out.remaining = fsck::run(sh, progress).await?.issues;
    Ok(out)
}
