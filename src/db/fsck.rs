//! `kvfs fsck`: read every object of a store and verify it.
//!
//! Checks: every segment, run, checkpoint and manifest decodes and its checksums match
//! (segments and runs: the whole-object checksum and every entry's own); the lease parses; no
//! foreign objects sit in the prefix; the current manifest's checkpoint and closed log
//! ranges exist; and every key of the recovered index points at an entry for that key.

use std::collections::{HashMap, HashSet};

use super::error::Result;
use super::lease::LeaseInfo;
use super::Shared;
use crate::format::names::{manifest_name, parse_name, segment_name, ObjectKind, SegmentId};
use crate::format::run::RunView;
use crate::format::segment::{EntryKind, SegmentView};
use crate::format::{checkpoint, manifest};

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsckIssue {
    pub object: String,
    pub problem: String,
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

pub(crate) async fn run(sh: &Shared, progress: &mut dyn FnMut(&str)) -> Result<FsckReport> {
    let mut report = FsckReport::default();
    // Which (offset, key) each live key expects, grouped by segment.
    let (mut expected, manifest) = {
        let st = sh.lock();
        let mut by_seg: HashMap<SegmentId, Vec<(u32, Vec<u8>, u32)>> = HashMap::new();
        for (k, e) in st.index.iter() {
            if let Some(id) = st.index.segment(e.loc.segment) {
                by_seg
                    .entry(id)
                    .or_default()
                    .push((e.loc.offset, k.to_vec(), e.loc.value_len));
            }
        }
        (by_seg, st.manifest.clone())
    };
    let listed = sh.store.list("").await?;
    let total = listed.len();
    let mut present: HashSet<String> = HashSet::new();
    for (i, obj) in listed.iter().enumerate() {
        if i % 100 == 0 || i + 1 == total {
            progress(&format!("checked {i} of {total} objects"));
        }
        present.insert(obj.key.clone());
        let kind = parse_name(&obj.key);
        if kind == ObjectKind::Unknown {
            report.issue(
                &obj.key,
                "not a kvfs object (a foreign object in the store prefix)",
            );
            continue;
        }
        let data = match sh.store.get(&obj.key).await {
            Ok(g) => g.data,
            Err(e) => {
                report.issue(&obj.key, format!("could not be read: {e}"));
                continue;
            }
        };
        report.objects += 1;
        report.bytes += data.len() as u64;
        match kind {
            ObjectKind::Segment(id) => {
                report.segments += 1;
                let values = segment_values(&mut report, id, &obj.key, &data);
                check_values(&mut report, &obj.key, values, expected.remove(&id));
            }
            ObjectKind::Run(id) => {
                report.runs += 1;
                let values = run_values(&mut report, id, &obj.key, &data);
                check_values(&mut report, &obj.key, values, expected.remove(&id));
            }
            ObjectKind::Checkpoint(_) => {
                report.checkpoints += 1;
                if let Err(e) = checkpoint::decode(&data) {
                    report.issue(&obj.key, e.to_string());
                }
            }
            ObjectKind::Manifest(n) => {
                report.manifests += 1;
                match manifest::decode(&data) {
                    Ok(m) if m.seq != n => {
                        report.issue(&obj.key, format!("says it is manifest {}", m.seq))
                    }
                    Ok(_) => {}
                    Err(e) => report.issue(&obj.key, e.to_string()),
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
            ObjectKind::Unknown => {}
        }
    }
    // References of the current manifest.
    let mname = manifest_name(manifest.seq);
    if let Some(c) = manifest.checkpoint {
        let cname = crate::format::names::checkpoint_name(c);
        if !present.contains(&cname) {
            report.issue(&mname, format!("names missing checkpoint {cname}"));
        }
    }
    for r in manifest.ranges.iter().filter(|r| !r.is_open()) {
        for seq in r.first..=r.last {
            let s = segment_name(SegmentId {
                epoch: r.epoch,
                seq,
            });
            if !present.contains(&s) {
                report.issue(&mname, format!("log range needs missing segment {s}"));
            }
        }
    }
    for (id, keys) in expected {
        report.issue(
            segment_name(id),
            format!("missing, but {} live keys point into it", keys.len()),
        );
    }
    Ok(report)
}

/// Offsets and lengths of the values stored in a segment, or `None` (with an issue
/// reported) if it does not decode. Entry and value checksums are verified.
fn segment_values(
    report: &mut FsckReport,
    id: SegmentId,
    name: &str,
    data: &[u8],
) -> Option<HashMap<u32, u32>> {
    let view = match SegmentView::decode(data) {
        Ok(v) => v,
        Err(e) => {
            report.issue(name, e.to_string());
            return None;
        }
    };
    if view.id != id {
        report.issue(name, format!("holds segment {} instead", view.id));
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
                report.issue(name, err.to_string());
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
    id: SegmentId,
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
            report.issue(name, e.to_string());
            None
        }
    }
}

/// Check that every live key pointing into an object finds a value of its length.
fn check_values(
    report: &mut FsckReport,
    name: &str,
    values: Option<HashMap<u32, u32>>,
    expected: Option<Vec<(u32, Vec<u8>, u32)>>,
) {
    let Some(values) = values else { return };
    for (off, key, vlen) in expected.unwrap_or_default() {
        match values.get(&off) {
            Some(l) if *l == vlen => report.keys_verified += 1,
            _ => report.issue(
                name,
                format!(
                    "live key {:?} points at offset {off}, which holds no value of {vlen} bytes",
                    String::from_utf8_lossy(&key)
                ),
            ),
        }
    }
}
