//! The in-memory state of one open (or being changed) file: its current attributes,
//! its unsaved content and its readahead.
//!
//! Vocabulary:
//! - **stored attributes**: the inode record as last written; **attributes**: as
//!   the file is now, including writes not committed yet. Changes of the name count
//!   (`link`, `unlink`) write the stored attributes, never uncommitted sizes, so a
//!   crash cannot leave a size that claims data that was never written.
//! - **dirty ranges**: bytes written to a file kept in extents and not committed yet,
//!   as non-overlapping ranges, merged when they touch.
//! - **cut**: the smallest size an extent file was truncated to since its last
//!   commit; stored extents from there on no longer count.
//! - **generation**: counts commits; a read that fetched extents while a commit
//!   happened starts again, unless the **changes** (the byte ranges each recent
//!   commit changed) show that no commit since it planned touched its range.
//! - **buffers**: the bytes a file's state holds in memory (dirty ranges, inline
//!   content, extents fetched ahead of a reader). Every state counts its own into one counter per namespace, updated
//!   each time the state's lock is released (`FileGuard`), so the namespace can keep
//!   all open files' buffers within one bound (`Namespace::make_room_for_buffers`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::attr::Attr;
use super::extents::MAX_EXTENT;

/// Bytes of dirty ranges of one file after which a write commits them.
pub const MAX_DIRTY_PER_FILE: usize = 8 << 20;

/// Unsaved writes of an extent file: start offset → bytes.
#[derive(Debug, Default)]
pub struct Dirty {
    ranges: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
}

impl Dirty {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn clear(&mut self) {
        self.ranges.clear();
        self.bytes = 0;
    }

    pub fn ranges(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.ranges.iter().map(|(o, d)| (*o, d.as_slice()))
    }

    /// Record `data` at `offset`, merging with ranges it overlaps or touches.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        // Appending right after the last range (a sequential writer): grow it in place.
        if let Some((&o, last)) = self.ranges.iter_mut().next_back() {
            let last_end = o + last.len() as u64;
            if last_end == offset {
                last.extend_from_slice(data);
                self.bytes += data.len();
                return;
            }
            if o <= offset && end <= last_end {
                let at = (offset - o) as usize;
                last[at..at + data.len()].copy_from_slice(data);
                return;
            }
        }
        let mut start = offset;
        let mut stop = end;
        let touching: Vec<u64> = {
            let mut v = Vec::new();
            if let Some((&o, d)) = self.ranges.range(..offset).next_back() {
                if o + d.len() as u64 >= offset {
                    v.push(o);
                }
            }
            v.extend(self.ranges.range(offset..=end).map(|(o, _)| *o));
            v
        };
        for o in &touching {
            let d = &self.ranges[o];
            start = start.min(*o);
            stop = stop.max(o + d.len() as u64);
        }
        let mut merged = vec![0u8; (stop - start) as usize];
        for o in touching {
            if let Some(d) = self.ranges.remove(&o) {
                self.bytes -= d.len();
                let at = (o - start) as usize;
                merged[at..at + d.len()].copy_from_slice(&d);
            }
        }
        let at = (offset - start) as usize;
        merged[at..at + data.len()].copy_from_slice(data);
        self.bytes += merged.len();
        self.ranges.insert(start, merged);
    }

    /// Forget everything at or past `size`.
    pub fn truncate(&mut self, size: u64) {
        let past: Vec<u64> = self.ranges.range(size..).map(|(o, _)| *o).collect();
        for o in past {
            if let Some(d) = self.ranges.remove(&o) {
                self.bytes -= d.len();
            }
        }
        if let Some((&o, d)) = self.ranges.range_mut(..size).next_back() {
            let keep = (size - o) as usize;
            if d.len() > keep {
                self.bytes -= d.len() - keep;
                d.truncate(keep);
            }
        }
    }

    /// The dirty bytes within `start .. end`: (file offset, bytes), in order.
    fn pieces(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, &[u8])> {
        let first = self
            .ranges
            .range(..=start)
            .next_back()
            .map(|(o, _)| *o)
            .unwrap_or(start);
        self.ranges
            .range(first..end.max(first))
            .filter_map(move |(&o, d)| {
                let s = o.max(start);
                let t = (o + d.len() as u64).min(end);
                (s < t).then(|| (s, &d[(s - o) as usize..(t - o) as usize]))
            })
    }

    /// Copy the dirty bytes of `start .. start + buf.len()` over `buf`.
    #[cfg(test)]
    pub fn overlay(&self, start: u64, buf: &mut [u8]) {
        for (s, d) in self.pieces(start, start + buf.len() as u64) {
            let at = (s - start) as usize;
            buf[at..at + d.len()].copy_from_slice(d);
        }
    }

    /// The dirty ranges within `start .. end`, copied.
    pub fn within(&self, start: u64, end: u64) -> Vec<(u64, Vec<u8>)> {
        self.pieces(start, end)
            .map(|(s, d)| (s, d.to_vec()))
            .collect()
    }
}

/// A value being fetched or fetched: shared by a read and the readahead.
pub type Fetch = Arc<tokio::sync::OnceCell<Bytes>>;

/// Sequential-read detection and the extents fetched ahead.
#[derive(Debug, Default)]
pub struct Readahead {
    /// Where the next sequential read would start.
    pub next: u64,
    /// Bytes to fetch ahead of a sequential reader (grows while reads stay
    /// sequential).
    pub window: u64,
    /// Extent values by extent offset, valid for the current generation.
    pub fetches: HashMap<u64, Fetch>,
}

impl Readahead {
    /// Bytes of the values fetched, counting each one still on its way as a whole
    /// extent (what it can be at most), so readers that start at the same time see
    /// each other's fetches at once.
    pub fn held(&self) -> usize {
        self.fetches
            .values()
            .map(|f| f.get().map_or(MAX_EXTENT as usize, Bytes::len))
            .sum()
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct FileState {
    pub attr: Attr,
    pub stored: Attr,
    /// Inline content, when loaded (inline files only).
    pub content: Option<Vec<u8>>,
    /// The inline content differs from the stored value: the next commit writes it.
    /// Otherwise a commit changes the attributes only (a link of the inode key to
    /// itself), so `chmod`, `chown` and `utimens` of a small file write ~100 bytes,
    /// not its content again.
    pub content_changed: bool,
    pub dirty: Dirty,
    pub cut: Option<u64>,
    /// Something changed since the last commit.
    pub changed: bool,
    pub opens: u32,
    pub generation: u64,
    pub readahead: Readahead,
    /// Extent windows (offset / `MAX_EXTENT`) that commits changed since the file
    /// was last checked for extents worth merging.
    pub touched: BTreeSet<u64>,
    /// Byte ranges changed by recent commits: (generation the commit made, range),
    /// oldest first, at most [`MAX_CHANGES`].
    changes: VecDeque<(u64, Range<u64>)>,
    /// Every change after this generation is in `changes`.
    changes_from: u64,
    /// The namespace's count of buffered bytes, and what this state added to it.
    buffers: Arc<AtomicUsize>,
    accounted: usize,
}

/// Changed ranges remembered per file (for reads that overlapped commits).
pub const MAX_CHANGES: usize = 64;

/// Windows remembered per file for merging; past this, the rest are not checked.
pub const MAX_TOUCHED: usize = 4096;

impl FileState {
    /// The state of a file with attributes `attr`, counting its buffers in
    /// `buffers`.
    pub fn new(attr: Attr, buffers: Arc<AtomicUsize>) -> FileState {
        FileState {
            attr,
            stored: attr,
            content: None,
            content_changed: false,
            dirty: Dirty::default(),
            cut: None,
            changed: false,
            opens: 0,
            generation: 0,
            readahead: Readahead::default(),
            touched: BTreeSet::new(),
            changes: VecDeque::new(),
            changes_from: 0,
            buffers,
            accounted: 0,
        }
    }

    /// A commit changed `ranges` of the file (all of it when `ranges` is `None`):
    /// a new generation.
    pub fn changed_ranges(&mut self, ranges: Option<Vec<Range<u64>>>) {
        self.generation += 1;
        match ranges {
            Some(ranges) => {
                for r in ranges {
                    self.changes.push_back((self.generation, r));
                }
            }
            None => {
                self.changes.clear();
                self.changes_from = self.generation;
            }
        }
        while self.changes.len() > MAX_CHANGES {
            if let Some((g, _)) = self.changes.pop_front() {
                self.changes_from = self.changes_from.max(g);
            }
        }
    }

    /// Whether no commit after `generation` changed a byte of `range`.
    pub fn unchanged_since(&self, generation: u64, range: &Range<u64>) -> bool {
        generation == self.generation
            || (generation >= self.changes_from
                && self
                    .changes
                    .iter()
                    .filter(|(g, _)| *g > generation)
                    .all(|(_, r)| r.end <= range.start || range.end <= r.start))
    }

    /// Content written (or truncated) and not committed yet.
    pub fn unsaved_writes(&self) -> bool {
        self.content_changed || self.dirty.bytes() > 0 || self.cut.is_some()
    }

    /// Bytes of memory this state holds for content: dirty ranges, inline content
    /// and extents fetched for its readers (those on their way at most).
    pub fn buffered(&self) -> usize {
        self.dirty.bytes() + self.content.as_ref().map_or(0, Vec::capacity) + self.readahead.held()
    }

    /// Bring the namespace's count up to date with this state's buffers.
    pub fn account(&mut self) {
        let now = self.buffered();
        if now > self.accounted {
            self.buffers
                .fetch_add(now - self.accounted, Ordering::Relaxed);
        } else if now < self.accounted {
            self.buffers
                .fetch_sub(self.accounted - now, Ordering::Relaxed);
        }
        self.accounted = now;
    }
}

impl Drop for FileState {
    fn drop(&mut self) {
        self.buffers.fetch_sub(self.accounted, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn dirty_ranges_match_a_flat_buffer(
            steps in proptest::collection::vec((0u64..4096, 0usize..700, any::<u8>(), any::<bool>()), 1..40)
        ) {
            let mut dirty = Dirty::default();
            let mut flat = vec![None::<u8>; 5000];
            for (off, len, b, truncate) in steps {
                if truncate {
                    dirty.truncate(off);
                    for x in flat.iter_mut().skip(off as usize) {
                        *x = None;
                    }
                } else {
                    dirty.write(off, &vec![b; len]);
                    for x in flat.iter_mut().skip(off as usize).take(len) {
                        *x = Some(b);
                    }
                }
                let mut buf = vec![0u8; 5000];
                dirty.overlay(0, &mut buf);
                let want: Vec<u8> = flat.iter().map(|x| x.unwrap_or(0)).collect();
                prop_assert_eq!(&buf, &want);
                prop_assert_eq!(dirty.bytes(), dirty.ranges().map(|(_, d)| d.len()).sum::<usize>());
                let mut last_end = None;
                for (o, d) in dirty.ranges() {
                    prop_assert!(!d.is_empty());
                    if let Some(e) = last_end { prop_assert!(o > e); }
                    last_end = Some(o + d.len() as u64);
                }
                let mut part = vec![0u8; 100];
                dirty.overlay(1000, &mut part);
                prop_assert_eq!(&part[..], &buf[1000..1100]);
            }
        }
    }
}
