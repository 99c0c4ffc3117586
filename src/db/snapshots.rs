//! Listing the points in time a store can show (`kvfs snapshots`): see
//! `gc::retention` for what a snapshot is and how long one is kept.

use std::collections::{BTreeMap, HashSet};

use super::error::Result;
use super::recovery::{read_manifest, snapshot_ranges};
use super::Shared;
use crate::format::names::{checkpoint_name, object_name, parse_name, ObjectId, ObjectKind};

/// One snapshot: manifest `seq` as of when manifest `seq + 1` was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub seq: u64,
    /// When manifest `seq` was written, and its successor (the snapshot shows the
    /// state at the latter moment).
    pub created_unix_ms: u64,
    pub until_unix_ms: u64,
    /// Whether its checkpoint and log segments all still exist (the objects they
    /// point to are not checked; mounting it does).
    pub complete: bool,
}

pub(crate) async fn list(sh: &Shared) -> Result<Vec<Snapshot>> {
    let listed = sh.store.list("").await?;
    let names: HashSet<&str> = listed.iter().map(|o| o.key.as_str()).collect();
    let seqs: Vec<u64> = listed
        .iter()
        .filter_map(|o| match parse_name(&o.key) {
            ObjectKind::Manifest(n) => Some(n),
            _ => None,
        })
        .collect();
    let mut manifests = BTreeMap::new();
    for n in seqs {
        manifests.insert(n, read_manifest(&sh.store, n).await?);
    }
    let mut out = Vec::new();
    for (n, m) in &manifests {
        let Some(next) = manifests.get(&(n + 1)) else {
            continue;
        };
        let mut complete = m
            .checkpoint
            .is_none_or(|c| names.contains(checkpoint_name(c).as_str()));
        for r in snapshot_ranges(m, next) {
            if r.is_open() {
                continue;
            }
            complete &= (r.first..=r.last).all(|seq| {
                names.contains(
                    object_name(ObjectId {
                        epoch: r.epoch,
                        seq,
                    })
                    .as_str(),
                )
            });
        }
        out.push(Snapshot {
            seq: *n,
            created_unix_ms: m.created_unix_ms,
            until_unix_ms: next.created_unix_ms,
            complete,
        });
    }
    Ok(out)
}
