//! The index: an ordered map from key to the location of its latest value.
//!
//! Vocabulary:
//! - **slot**: a small integer naming a segment in the index's segment table; a
//!   [`crate::format::checkpoint::Location`] stores a slot rather than a full [`SegmentId`] to keep entries small.
//! - **live bytes**: the sum of key and value lengths of every live key. The index
//!   also keeps the live bytes of each data object (segment or run): the key and value
//!   lengths of every key whose value lies in it. That per-object count is what the
//!   cleaner's policy reads; it is derived from the index alone, so it is exact after
//!   any recovery.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use crate::format::checkpoint::{Checkpoint, IndexEntry};
use crate::format::names::SegmentId;

#[derive(Debug, Default)]
pub struct Index {
    map: BTreeMap<Box<[u8]>, IndexEntry>,
    segments: Vec<SegmentId>,
    slots: HashMap<SegmentId, u32>,
    /// Live bytes per slot.
    slot_live: Vec<u64>,
    live_bytes: u64,
}

fn entry_bytes(key: &[u8], e: &IndexEntry) -> u64 {
    (key.len() + e.loc.value_len as usize) as u64
}

impl Index {
    pub fn from_checkpoint(c: Checkpoint) -> Index {
        let mut slot_live = vec![0u64; c.segments.len()];
        let mut live_bytes = 0;
        for (k, e) in &c.entries {
            let n = entry_bytes(k, e);
            live_bytes += n;
            // The checkpoint decoder guarantees every slot is in the table.
            if let Some(l) = slot_live.get_mut(e.loc.segment as usize) {
                *l += n;
            }
        }
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
            slot_live,
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
        self.slot_live.push(0);
        self.slots.insert(id, s);
        s
    }

    /// The slot of a data object, if the index has ever seen it.
    pub fn slot_of(&self, id: SegmentId) -> Option<u32> {
        self.slots.get(&id).copied()
    }

    /// Live bytes of the data object in `slot`.
    pub fn slot_live(&self, slot: u32) -> u64 {
        self.slot_live.get(slot as usize).copied().unwrap_or(0)
    }

    /// Live bytes of every data object the index refers to (objects without live
    /// keys are left out).
    pub fn live_by_object(&self) -> HashMap<SegmentId, u64> {
        self.segments
            .iter()
            .zip(&self.slot_live)
            .filter(|(_, l)| **l > 0)
            .map(|(id, l)| (*id, *l))
            .collect()
    }

    fn add_live(&mut self, key: &[u8], e: &IndexEntry) {
        let n = entry_bytes(key, e);
        self.live_bytes += n;
        if let Some(l) = self.slot_live.get_mut(e.loc.segment as usize) {
            *l += n;
        }
    }

    fn sub_live(&mut self, key: &[u8], e: &IndexEntry) {
        let n = entry_bytes(key, e);
        self.live_bytes -= n;
        if let Some(l) = self.slot_live.get_mut(e.loc.segment as usize) {
            *l -= n;
        }
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
        self.add_live(key, &entry);
        // One traversal; the boxed key is dropped again when the key exists.
        if let Some(old) = self.map.insert(key.into(), entry) {
            self.sub_live(key, &old);
        }
    }

    pub fn remove(&mut self, key: &[u8]) {
        if let Some(old) = self.map.remove(key) {
            self.sub_live(key, &old);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::checkpoint::Location;

    fn entry(slot: u32, len: u32) -> IndexEntry {
        IndexEntry {
            loc: Location {
                segment: slot,
                offset: 32,
                value_len: len,
            },
            meta: None,
        }
    }

    #[test]
    fn live_bytes_per_object_follow_inserts_and_removes() {
        let mut ix = Index::default();
        let a = ix.slot_for(SegmentId { epoch: 1, seq: 1 });
        let b = ix.slot_for(SegmentId::run(1, 1));
        ix.insert(b"k1", entry(a, 10));
        ix.insert(b"k2", entry(a, 20));
        assert_eq!(ix.slot_live(a), 2 + 10 + 2 + 20);
        // Overwrite moves the key's bytes to the other object.
        ix.insert(b"k1", entry(b, 5));
        assert_eq!(ix.slot_live(a), 22);
        assert_eq!(ix.slot_live(b), 7);
        ix.remove(b"k2");
        assert_eq!(ix.slot_live(a), 0);
        assert_eq!(ix.live_bytes(), 7);
        let by = ix.live_by_object();
        assert_eq!(by.len(), 1);
        assert_eq!(by[&SegmentId::run(1, 1)], 7);
    }
}
