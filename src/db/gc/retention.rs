//! Keeping recent points in time readable (`GcOptions::retain`, `--retain-secs`).
//!
//! Vocabulary:
//! - **snapshot `N`**: manifest `N` read as of the moment manifest `N + 1` was
//!   written (`recovery::snapshot_ranges`); the newest manifest is the live state,
//!   not a snapshot.
//! - **retained**: a snapshot whose successor was written less than `retain` ago: the
//!   state was current at some moment within the retention period.
//! - **pins** of a snapshot: every object reading it needs: manifests `N` and `N + 1`,
//!   `N`'s checkpoint, the data objects that checkpoint names, the log segments of
//!   its (cut) ranges and the objects their link entries name. GC deletes nothing
//!   pinned by a retained snapshot; it deletes it once the snapshot expires.
//!
//! Pins of a snapshot never change (its objects are immutable), so they are computed
//! once per snapshot and kept in the GC book; the successors' creation times too.

use std::collections::HashSet;
use std::sync::Arc;

use crate::db::error::{Error, Result};
use crate::db::lease::now_unix_ms;
use crate::db::recovery::{read_manifest, snapshot_ranges};
use crate::db::Shared;
use crate::format::checkpoint;
use crate::format::names::{
    checkpoint_name, manifest_name, object_name, parse_name, ObjectId, ObjectKind, MANIFEST_DIR,
};
use crate::format::segment::{EntryKind, SegmentView};
use crate::store::StoreError;

/// Object names that retained snapshots need (empty when nothing is retained).
pub(crate) async fn pinned(sh: &Shared) -> Result<HashSet<String>> {
    let mut out = HashSet::new();
    let retain_ms = u64::try_from(sh.opts.gc.retain.as_millis()).unwrap_or(u64::MAX);
    if retain_ms == 0 {
        return Ok(out);
    }
    let mut seqs: Vec<u64> = sh
        .store
        .list(MANIFEST_DIR)
        .await?
        .iter()
        .filter_map(|o| match parse_name(&o.key) {
            ObjectKind::Manifest(n) => Some(n),
            _ => None,
        })
        .collect();
    seqs.sort_unstable();
    let now = now_unix_ms();
    let mut retained = HashSet::new();
    for pair in seqs.windows(2) {
        let (n, succ) = (pair[0], pair[1]);
        if succ != n + 1 {
            continue;
        }
        let created = match successor_created(sh, succ).await {
            Ok(t) => t,
            // Deleted meanwhile: nothing to keep for it.
            Err(Error::Store(StoreError::NotFound(_))) => continue,
            Err(e) => return Err(e),
        };
        if now.saturating_sub(created) >= retain_ms {
            continue;
        }
        retained.insert(n);
        match pins_of(sh, n).await {
            Ok(p) => out.extend(p.iter().cloned()),
            Err(Error::Store(StoreError::NotFound(_))) => {
                log::debug!("snapshot {n} is already incomplete; not keeping it");
            }
            Err(e) => return Err(e),
        }
    }
    // Forget what expired snapshots and deleted manifests needed.
    let mut st = sh.lock();
    st.gc.snapshot_pins.retain(|n, _| retained.contains(n));
    st.gc
        .manifest_created
        .retain(|n, _| seqs.binary_search(n).is_ok());
    Ok(out)
}

/// When manifest `n` was written (cached).
async fn successor_created(sh: &Shared, n: u64) -> Result<u64> {
    if let Some(t) = sh.lock().gc.manifest_created.get(&n) {
        return Ok(*t);
    }
    let m = read_manifest(&sh.store, n).await?;
    sh.lock().gc.manifest_created.insert(n, m.created_unix_ms);
    Ok(m.created_unix_ms)
}

/// Everything snapshot `n` needs (cached).
async fn pins_of(sh: &Shared, n: u64) -> Result<Arc<HashSet<String>>> {
    if let Some(p) = sh.lock().gc.snapshot_pins.get(&n) {
        return Ok(p.clone());
    }
    let m = read_manifest(&sh.store, n).await?;
    let next = read_manifest(&sh.store, n + 1).await?;
    let mut pins = HashSet::new();
    pins.insert(manifest_name(n));
    pins.insert(manifest_name(n + 1));
    if let Some(c) = m.checkpoint {
        let name = checkpoint_name(c);
        let data = sh.store.get(&name).await?.data;
        let ckpt = checkpoint::decode(&data).map_err(|e| Error::corrupt(name.clone(), e))?;
        pins.insert(name);
        pins.extend(ckpt.segments.iter().map(|id| object_name(*id)));
    }
    for r in snapshot_ranges(&m, &next) {
        if r.is_open() {
            // Its writer stopped (see `snapshot_ranges`): keep what exists of it.
            let listed = sh
                .store
                .list(&crate::format::names::segment_epoch_prefix(r.epoch))
                .await?;
            for o in listed {
                if let ObjectKind::Segment(id) = parse_name(&o.key) {
                    if id.seq >= r.first {
                        pin_segment(sh, id, &mut pins).await?;
                    }
                }
            }
            continue;
        }
        for seq in r.first..=r.last {
            pin_segment(
                sh,
                ObjectId {
                    epoch: r.epoch,
                    seq,
                },
                &mut pins,
            )
            .await?;
        }
    }
    let pins = Arc::new(pins);
    sh.lock().gc.snapshot_pins.insert(n, pins.clone());
    Ok(pins)
}

/// A log segment and the objects its link entries name.
async fn pin_segment(sh: &Shared, id: ObjectId, pins: &mut HashSet<String>) -> Result<()> {
    let name = object_name(id);
    let data = sh.store.get(&name).await?.data;
    let view = SegmentView::decode(&data).map_err(|e| Error::corrupt(name.clone(), e))?;
    for e in view.entries() {
        let e = e.map_err(|e| Error::corrupt(name.clone(), e))?;
        if e.kind == EntryKind::Link {
            if let Some(t) = e.target {
                pins.insert(object_name(t));
            }
        }
    }
    pins.insert(name);
    Ok(())
}
