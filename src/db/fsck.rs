//! `kvfs fsck`: read every object of a store and verify it, reporting every problem.
//!
//! Checks: every segment, run, checkpoint and manifest decodes and its checksums match
//! (segments and runs: the whole-object checksum and every entry's own); the lease parses; no
//! foreign objects sit in the prefix; the current manifest's checkpoint and closed log
//! ranges exist; and every key of the recovered index points at an entry for that key.
//! A damaged current checkpoint is reported with how the state was recovered without
//! it (`recovery`), and checking goes on from that state.
//!
//! A data object whose whole-object checksum fails is still read value by value: each
//! live key whose value lies in it is checked against the value's own checksum, so
//! the report names exactly the keys whose values are lost (and the object's other
//! keys can be saved by `kvfs fsck --repair`).
//!
//! **Objects that vanish while fsck runs.** A running writer's GC may delete an object
//! between fsck's listing and its read, and fsck's state (loaded at open) may still
//! point into it. Such an object is a problem only if the store's state *now* still
//! needs it: fsck reloads the newest state and reports only what that state needs and
//! is missing.

use std::collections::{BTreeSet, HashMap, HashSet};

use bytes::Bytes;

use super::error::Result;
use super::index::Index;
use super::lease::LeaseInfo;
use super::recovery::{self, Fallback};
use super::Shared;
use crate::format::manifest::Manifest;
use crate::format::names::{
    checkpoint_name, manifest_name, object_name, parse_name, ObjectId, ObjectKind,
};
use crate::format::run::RunView;
use crate::format::segment::{decode_value, stored_value_len, EntryKind, SegmentView};
use crate::format::{checkpoint, manifest};
use crate::store::StoreError;

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsckIssue {
    pub object: String,
    pub problem: String,
}

/// A live key whose value cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LostKey {
    pub key: Vec<u8>,
    /// The data object its value lies in.
    pub object: String,
}

#[derive(Clone, Debug, Default)]
pub struct FsckReport {
    pub objects: u64,
    pub bytes: u64,
    pub segments: u64,
    pub runs: u64,
    pub checkpoints: u64,
    pub manifests: u64,
    pub entries: u64,
    pub keys_verified: u64,
    pub issues: Vec<FsckIssue>,
    /// Live keys whose values are unreadable (their object is corrupt there, or
    /// missing), in key order.
    pub lost_keys: Vec<LostKey>,
    /// Damaged data objects that still hold intact values of live keys.
    pub salvageable: Vec<ObjectId>,
    /// Objects that do not decode (or fail a checksum), by name.
    pub damaged: Vec<String>,
    /// Set when the current checkpoint was damaged (see `recovery`).
    pub fallback: Option<Fallback>,
    /// Objects deleted by a running writer between fsck's listing and its read,
    /// which the newest state does not need (no problem).
    pub vanished: u64,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.issues.is_empty()
    }

    fn issue(&mut self, object: impl Into<String>, problem: impl Into<String>) {
        self.issues.push(FsckIssue {
            object: object.into(),
            problem: problem.into(),
        });
    }
}

/// What a live key expects to find in a data object: (offset, key, value length).
type Expected = Vec<(u32, Vec<u8>, u32)>;

/// Live keys by the data object their value lies in.
fn expected_of(index: &Index) -> HashMap<ObjectId, Expected> {
    let mut by_seg: HashMap<ObjectId, Expected> = HashMap::new();
    for (k, e) in index.iter() {
        if let Some(id) = index.object(e.loc.slot) {
            by_seg
                .entry(id)
                .or_default()
                .push((e.loc.offset, k.to_vec(), e.loc.value_len));
        }
    }
    by_seg
}

pub(crate) async fn run(sh: &Shared, progress: &mut dyn FnMut(&str)) -> Result<FsckReport> {
    let mut report = FsckReport::default();
    let (mut expected, manifest) = {
        let st = sh.lock();
        (expected_of(&st.index), st.manifest.clone())
    };
    // Reported while the state still rests on the damaged checkpoint (a writer
    // heals it with a fresh one).
    if let Some(f) = sh
        .fallback
        .as_ref()
        .filter(|f| f.checkpoint == manifest.checkpoint)
    {
        let how = if f.exact {
            format!("{}; a writer's next open replaces it", f.how)
        } else {
            format!("{} (the state may be inexact)", f.how)
        };
        report.issue(
            &f.damaged,
            format!(
                "damaged ({}); manifest {}'s state was recovered without it: {how}",
                f.problem, manifest.seq
            ),
        );
        for s in &f.suspect {
            report.issue(
                &f.damaged,
                format!("log segment {s}: keys written or deleted in it may be stale, resurrected or lost"),
            );
        }
        report.fallback = Some(f.clone());
    }
    let listed = sh.store.list("").await?;
    let total = listed.len();
    let mut present: HashSet<String> = HashSet::new();
    // Objects listed that were gone when read, and data objects live keys point
    // into that are not (or no longer) there: checked against the newest state.
    let mut gone: BTreeSet<String> = BTreeSet::new();
    for (i, obj) in listed.iter().enumerate() {
        if i % 100 == 0 || i + 1 == total {
            progress(&format!("checked {i} of {total} objects"));
        }
        let kind = parse_name(&obj.key);
        if kind == ObjectKind::Unknown {
            present.insert(obj.key.clone());
            report.issue(
                &obj.key,
                "not a kvfs object (a foreign object in the store prefix; remove it yourself)",
            );
            continue;
        }
        let data = match sh.store.get(&obj.key).await {
            Ok(g) => g.data,
            Err(StoreError::NotFound(_)) => {
                gone.insert(obj.key.clone());
                continue;
            }
            Err(e) => {
                present.insert(obj.key.clone());
                report.issue(&obj.key, format!("could not be read: {e}"));
                continue;
            }
        };
        present.insert(obj.key.clone());
        report.objects += 1;
        report.bytes += data.len() as u64;
        match kind {
            ObjectKind::Segment(id) | ObjectKind::Run(id) => {
                let values = if id.is_run() {
                    report.runs += 1;
                    run_values(&mut report, id, &obj.key, &data)
                } else {
                    report.segments += 1;
                    segment_values(&mut report, id, &obj.key, &data)
                };
                check_values(
                    &mut report,
                    id,
                    &obj.key,
                    &data,
                    values,
                    expected.remove(&id),
                );
            }
            ObjectKind::Checkpoint(_) => {
                report.checkpoints += 1;
                if let Err(e) = checkpoint::decode(&data) {
                    damaged(&mut report, &obj.key, e.to_string());
                }
            }
            ObjectKind::Manifest(n) => {
                report.manifests += 1;
                match manifest::decode(&data) {
                    Ok(m) if m.seq != n => damaged(
                        &mut report,
                        &obj.key,
                        format!("says it is manifest {}", m.seq),
                    ),
                    Ok(_) => {}
                    Err(e) => damaged(&mut report, &obj.key, e.to_string()),
                }
            }
            ObjectKind::Lease => {
                if let Err(e) = LeaseInfo::decode(&data) {
                    report.issue(&obj.key, e.to_string());
                }
            }
            ObjectKind::Encoding => {
                if let Err(e) = crate::format::encoding::EncodingRecord::decode(&data) {
                    report.issue(&obj.key, e.to_string());
                }
            }
            ObjectKind::StoreId => {
                if !crate::db::store_id::is_id(String::from_utf8_lossy(&data).trim()) {
                    report.issue(&obj.key, "not a store id (32 hex digits)".to_string());
                }
            }
            ObjectKind::Unknown => {}
        }
    }
    // Data objects live keys point into that were not there to read.
    let mut missing_keys: HashMap<ObjectId, Expected> = HashMap::new();
    for (id, keys) in expected {
        gone.insert(object_name(id));
        missing_keys.insert(id, keys);
    }
    // Objects the current manifest needs.
    for name in manifest_needs(&manifest) {
        if !present.contains(&name) {
            gone.insert(name);
        }
    }
    if gone.is_empty() {
        return Ok(report);
    }
    // Something is missing: a problem only if the newest state still needs it (a
    // running writer's GC may have deleted it since this handle loaded its state).
    let newest = match recovery::load_latest(&sh.store, &sh.opts).await {
        Ok(Some((m, index, _))) => Some((m, expected_of(&index))),
        Ok(None) => None,
        Err(e) => {
            report.issue(
                "manifest/",
                format!("the newest state cannot be loaded to check missing objects: {e}"),
            );
            None
        }
    };
    let (now_manifest, now_expected) = match newest {
        Some((m, e)) => (m, Some(e)),
        None => (manifest.clone(), None),
    };
    let needed: HashSet<String> = manifest_needs(&now_manifest).into_iter().collect();
    // What the newest state needs that was not there at the first listing either.
    for name in needed.iter().cloned().chain(
        now_expected
            .iter()
            .flat_map(|e| e.keys().map(|id| object_name(*id))),
    ) {
        if !present.contains(&name) {
            gone.insert(name);
        }
    }
    // Listed again: what is missing now.
    let again: HashSet<String> = sh
        .store
        .list("")
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect();
    let now_missing: HashSet<String> = gone
        .iter()
        .filter(|g| !again.contains(*g))
        .cloned()
        .collect();
    let mname = manifest_name(now_manifest.seq);
    for name in &gone {
        let keys: Option<Expected> = match parse_name(name) {
            ObjectKind::Segment(id) | ObjectKind::Run(id) => match &now_expected {
                Some(e) => e.get(&id).cloned(),
                None => missing_keys.get(&id).cloned(),
            },
            _ => None,
        };
        let needed_by_manifest = needed.contains(name);
        if !now_missing.contains(name) || (keys.is_none() && !needed_by_manifest) {
            if !present.contains(name) {
                report.vanished += 1;
            }
            continue;
        }
        if needed_by_manifest {
            let what = match parse_name(name) {
                ObjectKind::Checkpoint(_) => "names missing checkpoint",
                _ => "log range needs missing segment",
            };
            report.issue(&mname, format!("{what} {name}"));
        }
        if let Some(keys) = keys {
            report.issue(
                name,
                format!("missing, but {} live keys point into it", keys.len()),
            );
            for (_, key, _) in keys {
                lose(&mut report, name, key, "its object is missing");
            }
        }
    }
    if report.vanished > 0 {
        progress(&format!(
            "{} objects were deleted meanwhile by the writer's garbage collection (not needed)",
            report.vanished
        ));
    }
    report.lost_keys.sort();
    Ok(report)
}

/// What recovering manifest `m` reads: its checkpoint and the segments of its closed
/// log ranges.
fn manifest_needs(m: &Manifest) -> Vec<String> {
    let mut out: Vec<String> = m.checkpoint.map(checkpoint_name).into_iter().collect();
    for r in m.ranges.iter().filter(|r| !r.is_open()) {
        for seq in r.first..=r.last {
            out.push(object_name(ObjectId {
                epoch: r.epoch,
                seq,
            }));
        }
    }
    out
}

fn damaged(report: &mut FsckReport, name: &str, problem: String) {
    report.damaged.push(name.to_string());
    report.issue(name, problem);
}

fn lose(report: &mut FsckReport, object: &str, key: Vec<u8>, why: &str) {
    report.issue(
        object,
        format!("live key \"{}\": value lost ({why})", key.escape_ascii()),
    );
    report.lost_keys.push(LostKey {
        key,
        object: object.to_string(),
    });
}

/// Offsets and lengths of the values stored in a segment, or `None` (with an issue
/// reported) if it does not decode. Entry and value checksums are verified.
fn segment_values(
    report: &mut FsckReport,
    id: ObjectId,
    name: &str,
    data: &[u8],
) -> Option<HashMap<u32, u32>> {
    let view = match SegmentView::decode(data) {
        Ok(v) => v,
        Err(e) => {
            damaged(report, name, e.to_string());
            return None;
        }
    };
    if view.id != id {
        damaged(report, name, format!("holds segment {} instead", view.id));
        return None;
    }
    let mut values = HashMap::new();
    for e in view.entries() {
        match e {
            Ok(e) => {
                report.entries += 1;
                if e.kind == EntryKind::Put {
                    values.insert(e.value_offset, e.value_len);
                }
            }
            Err(err) => {
                damaged(report, name, err.to_string());
                return None;
            }
        }
    }
    Some(values)
}

/// Like [`segment_values`], for a sorted run (which also checks key order and the
/// block index).
fn run_values(
    report: &mut FsckReport,
    id: ObjectId,
    name: &str,
    data: &[u8],
) -> Option<HashMap<u32, u32>> {
    let entries = RunView::decode(data).and_then(|v| {
        if v.id != id {
            return Err(crate::format::FormatError::Invalid {
                what: "run",
                reason: format!("holds {} instead", v.id),
            });
        }
        v.entries()
    });
    match entries {
        Ok(es) => {
            report.entries += es.len() as u64;
            Some(es.iter().map(|e| (e.value_offset, e.value_len)).collect())
        }
        Err(e) => {
            damaged(report, name, e.to_string());
            None
        }
    }
}

/// Check that every live key pointing into an object finds a value of its length.
/// In a damaged object (`values` is `None`) each key's value is checked against its
/// own checksum instead.
fn check_values(
    report: &mut FsckReport,
    id: ObjectId,
    name: &str,
    data: &Bytes,
    values: Option<HashMap<u32, u32>>,
    expected: Option<Expected>,
) {
    let expected = expected.unwrap_or_default();
    let Some(values) = values else {
        let mut intact = 0usize;
        for (off, key, vlen) in expected {
            let start = off as usize;
            let end = start.saturating_add(stored_value_len(vlen) as usize);
            let ok = end <= data.len() && decode_value(&data.slice(start..end)).is_ok();
            if ok {
                intact += 1;
            } else {
                lose(report, name, key, "its stored checksum does not match");
            }
        }
        if intact > 0 {
            report.salvageable.push(id);
        }
        return;
    };
    for (off, key, vlen) in expected {
        match values.get(&off) {
            Some(l) if *l == vlen => report.keys_verified += 1,
            _ => lose(
                report,
                name,
                key,
                &format!("offset {off} holds no value of {vlen} bytes"),
            ),
        }
    }
}
