//! The index: an ordered map from key to the location of its latest value.
//!
//! Vocabulary:
//! - **slot**: a small integer naming a segment in the index's segment table; a
//!   [`crate::format::checkpoint::Location`] stores a slot rather than a full [`SegmentId`] to keep entries small.
//! - **live bytes**: the sum of key and value lengths of every live key.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use crate::format::checkpoint::{Checkpoint, IndexEntry};
use crate::format::names::SegmentId;

#[derive(Debug, Default)]
pub struct Index {
    map: BTreeMap<Box<[u8]>, IndexEntry>,
    segments: Vec<SegmentId>,
    slots: HashMap<SegmentId, u32>,
    live_bytes: u64,
}

impl Index {
    pub fn from_checkpoint(c: Checkpoint) -> Index {
        let live_bytes = c
            .entries
            .iter()
            .map(|(k, e)| (k.len() + e.loc.value_len as usize) as u64)
            .sum();
        let slots = c
            .segments
            .iter()
            .enumerate()
            .map(|(i, s)| (*s, i as u32))
            .collect();
        Index {
            map: c.entries.into_iter().collect(),
            segments: c.segments,
            slots,
            live_bytes,
        }
    }

    /// The slot of a segment, allocating one on first use.
    pub fn slot_for(&mut self, id: SegmentId) -> u32 {
        if let Some(s) = self.slots.get(&id) {
            return *s;
        }
        let s = self.segments.len() as u32;
        self.segments.push(id);
        self.slots.insert(id, s);
        s
    }

    pub fn segment(&self, slot: u32) -> Option<SegmentId> {
        self.segments.get(slot as usize).copied()
    }

    pub fn segments(&self) -> &[SegmentId] {
        &self.segments
    }

    pub fn get(&self, key: &[u8]) -> Option<&IndexEntry> {
        self.map.get(key)
    }

    pub fn insert(&mut self, key: &[u8], entry: IndexEntry) {
        let add = (key.len() + entry.loc.value_len as usize) as u64;
        // One traversal; the boxed key is dropped again when the key exists.
        if let Some(old) = self.map.insert(key.into(), entry) {
            self.live_bytes -= (key.len() + old.loc.value_len as usize) as u64;
        }
        self.live_bytes += add;
    }

    pub fn remove(&mut self, key: &[u8]) {
        if let Some(old) = self.map.remove(key) {
            self.live_bytes -= (key.len() + old.loc.value_len as usize) as u64;
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &IndexEntry)> {
        self.map.iter().map(|(k, e)| (&**k, e))
    }

    pub fn range<'a>(
        &'a self,
        start: Bound<&'a [u8]>,
        end: Bound<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a [u8], &'a IndexEntry)> + 'a {
        self.map
            .range::<[u8], _>((start, end))
            .map(|(k, e)| (&**k, e))
    }
}
