//! What an on-demand run (`kvfs gc`, `kvfs compact`) would do, worked out from a
//! read-only handle: listing and reading only, nothing written.
//!
//! A command that would change nothing then leaves the store as it is: no lease, no
//! manifest, no checkpoint. So a second `kvfs gc` right after a first is a true
//! no-op, and the plan is what the run's progress announces when there is work.
//!
//! Counted as work:
//! - a **checkpoint**: log bytes follow the current checkpoint (a run writes one
//!   first, so that the log window shrinks), or the manifest lists more than two log
//!   ranges;
//! - **rewrites**: for cleaning, the objects the policy would choose in its first
//!   round; for compaction, live data out of the log window that does not yet lie in
//!   sorted runs with their dead space cleaned: a segment, a run below the cleaning
//!   threshold, or (when all of it fits one round, `gc.max_round_bytes`) runs whose
//!   keys interleave. Larger stores are sorted one round at a time, so their runs
//!   interleave across rounds by design and that alone is not work;
//! - **unneeded data objects**: no live data and out of the log window;
//! - **old manifests and checkpoints** older than the last writer's session. The
//!   manifests a writer writes while it runs (at its start, its checkpoints and its
//!   close, all with its writer epoch) are not counted: every command that writes
//!   leaves some behind, so counting them would make every run the cause of the next.
//!   A run that has other work deletes them too.
//!
//! What retained snapshots need is never counted (it cannot be deleted yet).

use std::fmt;

use tokio::time::Instant;

use super::policy::{self, Choice, PolicyConfig};
use super::retention;
use super::worker::{ensure_listed, object_stats, Mode};
use crate::db::error::Result;
use crate::db::recovery::read_manifest;
use crate::db::Shared;
use crate::format::names::{object_name, parse_name, ObjectKind, CHECKPOINT_DIR, MANIFEST_DIR};

/// What an on-demand run would do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcPlan {
    /// A checkpoint would be written first.
    pub checkpoint: bool,
    /// Data objects that would be rewritten into runs (the first round, for cleaning).
    pub objects_to_rewrite: usize,
    /// Data objects nothing needs, to be deleted.
    pub unneeded_objects: usize,
    /// Manifests and checkpoints from before the last writer's session, to be deleted.
    pub old_metadata: usize,
}

impl GcPlan {
    /// Whether the run would change nothing.
    pub fn is_empty(&self) -> bool {
        *self == GcPlan::default()
    }
}

impl fmt::Display for GcPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(f, "nothing to do");
        }
        let mut parts = Vec::new();
        if self.checkpoint {
            parts.push("a checkpoint".to_string());
        }
        if self.objects_to_rewrite > 0 {
            parts.push(format!("{} objects to rewrite", self.objects_to_rewrite));
        }
        if self.unneeded_objects > 0 {
            parts.push(format!("{} unneeded objects", self.unneeded_objects));
        }
        if self.old_metadata > 0 {
            parts.push(format!("{} old manifests/checkpoints", self.old_metadata));
        }
        write!(f, "{}", parts.join(", "))
    }
}

/// Work out what a run in `mode` would do. Reads the store (lists, and a few
/// manifests); writes nothing.
pub(crate) async fn plan(sh: &Shared, mode: Mode) -> Result<GcPlan> {
    ensure_listed(sh).await?;
    let pinned = retention::pinned(sh).await?;
    let (checkpoint, objects_to_rewrite, unneeded, current) = {
        let st = sh.lock();
        let stats = object_stats(&st, Instant::now());
        let checkpoint = st.log_bytes_since_checkpoint > 0 || st.manifest.ranges.len() > 2;
        let rewrite = match mode {
            Mode::Clean => {
                let cfg = PolicyConfig {
                    min_age: std::time::Duration::ZERO,
                    compact_min_bytes: u64::MAX,
                    ..PolicyConfig::from(&sh.opts.gc)
                };
                match policy::choose(&stats, &cfg) {
                    Choice::Rewrite { sources, .. } => sources.len(),
                    _ => 0,
                }
            }
            Mode::Compact => {
                let rounds = policy::compact_all(&stats, sh.opts.gc.max_round_bytes);
                // Each round sorts its own objects only: runs of separate rounds
                // interleave by design when the data takes more than one round.
                let interleaved = if rounds.len() == 1 {
                    st.index.interleaved_objects()
                } else {
                    Default::default()
                };
                rounds
                    .iter()
                    .flatten()
                    .filter(|id| {
                        let Some(o) = stats.iter().find(|o| o.id == **id) else {
                            return true;
                        };
                        !id.is_run()
                            || interleaved.contains(id)
                            || o.fill(sh.opts.gc.run_bytes as u64) < sh.opts.gc.clean_below_fill
                    })
                    .count()
            }
        };
        let unneeded = policy::unneeded(&stats)
            .into_iter()
            .filter(|id| !pinned.contains(&object_name(*id)))
            .count();
        (checkpoint, rewrite, unneeded, st.manifest.clone())
    };
    // The last writer's session began at the oldest manifest with its epoch.
    let mut session_start = current.seq;
    while session_start > 1 {
        match read_manifest(&sh.store, session_start - 1).await {
            Ok(m) if m.writer_epoch == current.writer_epoch => session_start -= 1,
            _ => break,
        }
    }
    let mut listed = sh.store.list(MANIFEST_DIR).await?;
    listed.extend(sh.store.list(CHECKPOINT_DIR).await?);
    let old_metadata = listed
        .iter()
        .filter(|o| match parse_name(&o.key) {
            ObjectKind::Manifest(n) => n < session_start,
            ObjectKind::Checkpoint(n) => n < session_start && Some(n) != current.checkpoint,
            _ => false,
        })
        .filter(|o| !pinned.contains(&o.key))
        .count();
    Ok(GcPlan {
        checkpoint,
        objects_to_rewrite,
        unneeded_objects: unneeded,
        old_metadata,
    })
}
