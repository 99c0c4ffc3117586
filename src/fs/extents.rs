//! Extents: how a large file's content is kept, and the pure planning of what a
//! commit or a read does with them.
//!
//! Vocabulary:
//! - **extent**: file bytes `offset .. offset + len`, stored as bytes
//!   `skip .. skip + len` of one engine value (see `keys` for the key). A file's
//!   extents never overlap; a gap between them reads as zeros (a hole).
//! - **punch**: remove a byte range from the extent map before new data is written
//!   there. An extent partly inside the range is *trimmed* (its metadata shrinks) or
//!   *split* (a new key links to the same value with other bounds); no data is read
//!   or rewritten, so a 4 KiB overwrite in a big file writes 4 KiB plus a few
//!   records.
//! - New data is cut at multiples of [`MAX_EXTENT`] of the file offset, so a file
//!   written sequentially is stored as aligned extents of that size.
//!
//! Everything here is pure: the namespace turns [`ExtentOp`]s into engine operations.

use std::collections::BTreeMap;

use super::attr::ExtentMeta;
use crate::db::ValueId;

/// Largest extent written.
pub const MAX_EXTENT: u64 = 1 << 20;

/// One stored extent, as the planner sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    pub skip: u64,
}

impl Extent {
    pub fn meta(&self) -> ExtentMeta {
        ExtentMeta {
            skip: self.skip as u32,
            len: self.len as u32,
        }
    }
}

/// A change to the stored extents of one file. Offsets are file offsets, which name
/// the extent keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtentOp {
    /// The key at `at` takes the value of the key at `from` (as it is at this point
    /// of the batch) with new bounds; `at == from` only changes the bounds.
    Link {
        at: u64,
        from: u64,
        meta: ExtentMeta,
    },
    Delete {
        at: u64,
    },
    /// New data: file bytes `at .. at + len`.
    Put {
        at: u64,
        len: u64,
    },
}

/// The extents of one file, keyed by offset.
pub type ExtentMap = BTreeMap<u64, Extent>;

/// Remove `start .. end` (or everything from `start` when `end` is `None`) from
/// `map`, returning the operations that do the same to the store.
pub fn punch(map: &mut ExtentMap, start: u64, end: Option<u64>) -> Vec<ExtentOp> {
    let mut ops = Vec::new();
    let end_or_max = end.unwrap_or(u64::MAX);
    if start >= end_or_max {
        return ops;
    }
    // The extent that begins before `start` may reach into the range.
    let mut hit: Vec<(u64, Extent)> = Vec::new();
    if let Some((&o, &e)) = map.range(..start).next_back() {
        if o + e.len > start {
            hit.push((o, e));
        }
    }
    hit.extend(map.range(start..end_or_max).map(|(&o, &e)| (o, e)));
    for (o, e) in hit {
        let e_end = o + e.len;
        map.remove(&o);
        // The part after the range, if any, first: it links to the key at `o`
        // before that key is trimmed or deleted.
        if e_end > end_or_max {
            let cut = end_or_max - o;
            let right = Extent {
                len: e_end - end_or_max,
                skip: e.skip + cut,
            };
            ops.push(ExtentOp::Link {
                at: end_or_max,
                from: o,
                meta: right.meta(),
            });
            map.insert(end_or_max, right);
        }
        if o < start {
            let left = Extent {
                len: start - o,
                skip: e.skip,
            };
            ops.push(ExtentOp::Link {
                at: o,
                from: o,
                meta: left.meta(),
            });
            map.insert(o, left);
        } else {
            ops.push(ExtentOp::Delete { at: o });
        }
    }
    ops
}

/// Store new data for file bytes `start .. end`: punch the range, then put pieces cut
/// at multiples of [`MAX_EXTENT`].
pub fn write(map: &mut ExtentMap, start: u64, end: u64) -> Vec<ExtentOp> {
    let mut ops = punch(map, start, Some(end));
    let mut at = start;
    while at < end {
        let piece_end = ((at / MAX_EXTENT + 1) * MAX_EXTENT).min(end);
        ops.push(ExtentOp::Put {
            at,
            len: piece_end - at,
        });
        map.insert(
            at,
            Extent {
                len: piece_end - at,
                skip: 0,
            },
        );
        at = piece_end;
    }
    ops
}

/// One piece of a read: file bytes `at .. at + len` come from bytes
/// `skip .. skip + len` of the value of the extent keyed `key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub at: u64,
    pub len: u64,
    pub key: u64,
    pub skip: u64,
}

/// The pieces of `start .. end` that extents cover, in order (the rest are holes).
pub fn pieces(map: &ExtentMap, start: u64, end: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    let first = map
        .range(..=start)
        .next_back()
        .map(|(&o, _)| o)
        .unwrap_or(start);
    for (&o, e) in map.range(first..end) {
        let s = o.max(start);
        let t = (o + e.len).min(end);
        if s < t {
            out.push(Piece {
                at: s,
                len: t - s,
                key: o,
                skip: e.skip + (s - o),
            });
        }
    }
    out
}

/// Adjacent extents at least this many in one window are merged: at most this many
/// index entries per MiB of a file however it was overwritten.
pub const MERGE_PIECES: usize = 64;

/// A stored extent as the merge policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    pub at: u64,
    pub extent: Extent,
    /// Length of the value the extent is part of.
    pub value_len: u64,
    /// Equal for extents that are parts of one value.
    pub value_id: ValueId,
}

/// Runs of extents worth rewriting as one, within one [`MAX_EXTENT`]-aligned window
/// (no extent crosses one). A run is a maximal group of extents with no hole between
/// them. In a window whose values are mostly dead (more stored bytes than the
/// extents use, the rest kept only because a part of the value is still
/// referenced), every run is rewritten, so the old values can go; otherwise a run
/// is rewritten once it has [`MERGE_PIECES`] extents. Input in offset order; output
/// `start .. end` of each run, in order.
pub fn merge_candidates(extents: &[Stored]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < extents.len() {
        let window = extents[i].at / MAX_EXTENT;
        let mut w_end = i;
        while w_end < extents.len() && extents[w_end].at / MAX_EXTENT == window {
            w_end += 1;
        }
        let in_window = &extents[i..w_end];
        let live: u64 = in_window.iter().map(|s| s.extent.len).sum();
        let mut values: Vec<(ValueId, u64)> = in_window
            .iter()
            .map(|s| (s.value_id, s.value_len))
            .collect();
        values.sort_unstable();
        values.dedup();
        let stored: u64 = values.iter().map(|(_, len)| len).sum();
        let mostly_dead = stored > 2 * live;
        let mut r = 0;
        while r < in_window.len() {
            let mut q = r + 1;
            while q < in_window.len()
                && in_window[q].at == in_window[q - 1].at + in_window[q - 1].extent.len
            {
                q += 1;
            }
            if q - r >= MERGE_PIECES || mostly_dead {
                let last = in_window[q - 1];
                out.push((in_window[r].at, last.at + last.extent.len));
            }
            r = q;
        }
        i = w_end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// A store of extent values, applying ops as the engine would.
    #[derive(Default)]
    struct Model {
        keys: BTreeMap<u64, (usize, ExtentMeta)>,
        values: Vec<Vec<u8>>,
    }

    impl Model {
        fn apply(&mut self, ops: &[ExtentOp], data: &HashMap<u64, Vec<u8>>) {
            for op in ops {
                match op {
                    ExtentOp::Link { at, from, meta } => {
                        let (v, _) = self.keys[from];
                        assert!(meta.skip as usize + meta.len as usize <= self.values[v].len());
                        self.keys.insert(*at, (v, *meta));
                    }
                    ExtentOp::Delete { at } => {
                        assert!(self.keys.remove(at).is_some());
                    }
                    ExtentOp::Put { at, len } => {
                        self.values.push(data[at][..*len as usize].to_vec());
                        self.keys.insert(
                            *at,
                            (
                                self.values.len() - 1,
                                ExtentMeta {
                                    skip: 0,
                                    len: *len as u32,
                                },
                            ),
                        );
                    }
                }
            }
        }

        fn read(&self, size: u64) -> Vec<u8> {
            let mut out = vec![0u8; size as usize];
            let mut last_end = 0;
            for (&o, (v, m)) in &self.keys {
                assert!(o >= last_end, "extents overlap");
                last_end = o + m.len as u64;
                let src = &self.values[*v][m.skip as usize..(m.skip + m.len) as usize];
                let e = (o as usize + src.len()).min(out.len());
                if (o as usize) < e {
                    out[o as usize..e].copy_from_slice(&src[..e - o as usize]);
                }
            }
            out
        }
    }

    #[derive(Clone, Debug)]
    enum Step {
        Write(u64, u64, u8),
        Truncate(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u64..3 * MAX_EXTENT, 1u64..MAX_EXTENT + 7, any::<u8>())
                .prop_map(|(o, l, b)| Step::Write(o, l, b)),
            1 => (0u64..3 * MAX_EXTENT).prop_map(Step::Truncate),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn extent_ops_match_a_flat_file(steps in proptest::collection::vec(step(), 1..24)) {
            let mut map = ExtentMap::new();
            let mut store = Model::default();
            let mut flat: Vec<u8> = Vec::new();
            for s in steps {
                match s {
                    Step::Write(o, l, b) => {
                        let ops = write(&mut map, o, o + l);
                        let mut data = HashMap::new();
                        for op in &ops {
                            if let ExtentOp::Put { at, len } = op {
                                let fill: Vec<u8> = (0..*len).map(|i| b.wrapping_add((at + i) as u8)).collect();
                                data.insert(*at, fill);
                            }
                        }
                        store.apply(&ops, &data);
                        if flat.len() < (o + l) as usize {
                            flat.resize((o + l) as usize, 0);
                        }
                        for i in o..o + l {
                            flat[i as usize] = b.wrapping_add(i as u8);
                        }
                    }
                    Step::Truncate(n) => {
                        let ops = punch(&mut map, n, None);
                        store.apply(&ops, &HashMap::new());
                        flat.resize(n as usize, 0);
                    }
                }
                prop_assert_eq!(store.read(flat.len() as u64), flat.clone());
                // The planner's map is the store's map.
                let view: Vec<(u64, u64, u64)> = map.iter().map(|(o, e)| (*o, e.len, e.skip)).collect();
                let stored: Vec<(u64, u64, u64)> = store.keys.iter().map(|(o, (_, m))| (*o, m.len as u64, m.skip as u64)).collect();
                prop_assert_eq!(view, stored);
                for e in map.values() {
                    prop_assert!(e.len <= MAX_EXTENT && e.len > 0);
                }
            }
        }
    }

    #[test]
    fn fragmented_and_mostly_dead_windows_are_merge_candidates() {
        let piece = |at: u64, len: u64, value_len: u64, id: u32| Stored {
            at,
            extent: Extent { len, skip: 0 },
            value_len,
            value_id: ValueId::for_test(id),
        };
        let n = MERGE_PIECES as u64;
        // n adjacent 4 KiB extents, then a hole, then a whole extent.
        let mut v: Vec<Stored> = (0..n)
            .map(|i| piece(i * 4096, 4096, 4096, i as u32))
            .collect();
        v.push(piece(MAX_EXTENT, MAX_EXTENT, MAX_EXTENT, 999));
        assert_eq!(merge_candidates(&v), vec![(0, n * 4096)]);
        // One fewer is not enough; a hole splits runs; so does a window boundary.
        assert!(merge_candidates(&v[1..n as usize]).is_empty());
        let gap: Vec<_> = (0..n)
            .map(|i| piece(i * 8192, 4096, 4096, i as u32))
            .collect();
        assert!(merge_candidates(&gap).is_empty());
        // One 4 KiB overwrite inside a 1 MiB extent: three pieces, two values, nearly
        // all live: left alone.
        let split = vec![
            piece(0, 8192, MAX_EXTENT, 1),
            piece(8192, 4096, 4096, 2),
            piece(12288, MAX_EXTENT - 12288, MAX_EXTENT, 1),
        ];
        assert!(merge_candidates(&split).is_empty());
        // A 1 MiB extent truncated to 4 KiB: mostly dead, rewritten.
        let trimmed = vec![piece(0, 4096, MAX_EXTENT, 1)];
        assert_eq!(merge_candidates(&trimmed), vec![(0, 4096)]);
    }

    #[test]
    fn small_overwrite_in_a_big_extent_writes_only_its_bytes() {
        let mut map = ExtentMap::new();
        write(&mut map, 0, MAX_EXTENT);
        let ops = write(&mut map, 8192, 8192 + 4096);
        let put: u64 = ops
            .iter()
            .map(|op| match op {
                ExtentOp::Put { len, .. } => *len,
                _ => 0,
            })
            .sum();
        assert_eq!(put, 4096);
        assert_eq!(ops.len(), 3, "{ops:?}");
        let p = pieces(&map, 0, MAX_EXTENT);
        assert_eq!(p.len(), 3);
        assert_eq!(p[2].skip, 8192 + 4096);
    }
}
