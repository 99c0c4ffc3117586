//! The follow loop of a read-only mount: every interval one round of following
//! ([`Db::catch_up`](crate::db::Db::catch_up)); what it changed is refreshed in the
//! namespace ([`Namespace::apply_catch_up`]) and dropped from the kernel's caches
//! through FUSE notifications, so new writes show up without waiting for a cache
//! time-out.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

use fuser::{INodeNo, Notifier};
use tokio::sync::watch;

use crate::fs::{Invalidation, Namespace};

/// How often a read-only mount looks for the writer's changes, by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(1000);

/// Follow until `stop` changes or its sender is dropped.
pub async fn run(
    ns: Arc<Namespace>,
    notifier: Notifier,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut failing_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        match ns.db().catch_up().await {
            Ok(round) => {
                if let Some(since) = failing_since.take() {
                    log::warn!(
                        "following the writer again after {:.0} s of errors",
                        since.elapsed().as_secs_f64()
                    );
                }
                if round.is_empty() && round.manifests == 0 {
                    continue;
                }
                let invalid = ns.apply_catch_up(&round);
                log::debug!(
                    "followed {} segments, {} manifests{}: {} cache entries invalidated",
                    round.segments,
                    round.manifests,
                    if round.reloaded { ", reloaded" } else { "" },
                    invalid.len()
                );
                let n = notifier.clone();
                let sent = tokio::task::spawn_blocking(move || invalidate(&n, &invalid)).await;
                if let Err(e) = sent {
                    log::warn!("cache invalidation task failed: {e}");
                }
            }
            Err(e) => {
                if failing_since.is_none() {
                    log::warn!("cannot follow the writer (will keep trying): {e}");
                    failing_since = Some(tokio::time::Instant::now());
                }
            }
        }
    }
}

/// Tell the kernel to forget each entry (entries the kernel does not hold are
/// skipped silently by the kernel).
fn invalidate(notifier: &Notifier, invalid: &[Invalidation]) {
    for i in invalid {
        let r = match i {
            Invalidation::Entry { parent, name } => {
                notifier.inval_entry(INodeNo(*parent), OsStr::from_bytes(name))
            }
            Invalidation::Inode(ino) => notifier.inval_inode(INodeNo(*ino), 0, 0),
        };
        if let Err(e) = r {
            log::debug!("invalidating {i:?}: {e}");
        }
    }
}
