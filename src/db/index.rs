//! The index: an ordered map from key to the location of its latest value.
//!
//! Vocabulary:
//! - **slot**: a small integer naming a data object (segment or run) in the index's
//!   **slot table**; a [`Location`] stores a slot rather than a full [`ObjectId`] to
//!   keep entries small. A slot means one object only while the lock that read it is
//!   held: callers that keep a location across an `await` resolve its slot to the
//!   object id first ([`Index::locate`]).
//! - **live bytes**: the sum of key and value lengths of every live key. The index
//!   also keeps, per data object, the live bytes, the **stored bytes** (the encoded
//!   size of the put entries of its live keys: what rewriting them into a run copies)
//!   and the number of live keys. Those per-object counts are what the cleaner's
//!   policy reads; they are derived from the index alone, so they are exact after any
//!   recovery.
//! - **released** slot: the moment no key refers to an object any more, its slot is
//!   freed for reuse (lowest first, and the free end of the table is cut off), so the
//!   slot table is bounded by the objects that hold live data, not by every object
//!   the store ever wrote. Whoever writes entries looks the slot up per entry
//!   ([`Index::slot_for`]) rather than keeping it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::ops::Bound;

use crate::format::checkpoint::{Checkpoint, IndexEntry, Location};
use crate::format::names::ObjectId;
use crate::format::segment::put_len;

/// What the index counts for one data object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectLive {
    /// Key and value bytes of the live keys whose value lies in the object.
    pub bytes: u64,
    /// Encoded put-entry bytes of those keys (what a rewrite copies).
    pub stored: u64,
    /// Number of those keys, and the sum of their lengths.
    pub keys: u64,
    pub key_bytes: u64,
}

/// Where a value lies, with its object named in full (valid across `await`s).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ValueAt {
    pub object: ObjectId,
    pub offset: u32,
    pub value_len: u32,
}

/// A free slot's table entry (never a real object id: epoch 0 is never written).
const FREE: ObjectId = ObjectId { epoch: 0, seq: 0 };

#[derive(Debug, Default)]
pub struct Index {
    map: BTreeMap<Box<[u8]>, IndexEntry>,
    /// The slot table: the data object in each slot ([`FREE`] for a free slot).
    objects_by_slot: Vec<ObjectId>,
    /// Each data object's slot.
    slots: HashMap<ObjectId, u32>,
    /// Live counts per slot.
    slot_live: Vec<ObjectLive>,
    /// Released slots, lowest first.
    free: BinaryHeap<Reverse<u32>>,
    live_bytes: u64,
    /// Sum of the lengths of all keys (for the memory estimate).
    key_bytes: u64,
}

fn entry_bytes(key: &[u8], e: &IndexEntry) -> u64 {
    (key.len() + e.loc.value_len as usize) as u64
}

fn entry_stored(key: &[u8], e: &IndexEntry) -> u64 {
    let meta = e.meta.as_deref().map_or(0, <[u8]>::len);
    put_len(key.len(), meta, e.loc.value_len as usize) as u64
}

impl Index {
    pub fn from_checkpoint(c: Checkpoint) -> Index {
        let mut ix = Index {
            slot_live: vec![ObjectLive::default(); c.segments.len()],
            slots: c
                .segments
                .iter()
                .enumerate()
                .map(|(i, s)| (*s, i as u32))
                .collect(),
            objects_by_slot: c.segments,
            ..Index::default()
        };
        for (k, e) in c.entries {
            // The checkpoint decoder guarantees every slot is in the table.
            ix.add_live(&k, &e);
            ix.key_bytes += k.len() as u64;
            ix.map.insert(k, e);
        }
        // Checkpoints of earlier versions list every object ever written.
        for s in (0..ix.objects_by_slot.len()).rev() {
            if ix.slot_live[s].keys == 0 {
                ix.release(s as u32);
            }
        }
        ix
    }

    /// The slot of a data object, allocating one on first use.
    pub fn slot_for(&mut self, id: ObjectId) -> u32 {
        if let Some(s) = self.slots.get(&id) {
            return *s;
        }
        let s = loop {
            match self.free.pop() {
                // Entries past the end (cut off) or reused meanwhile are stale.
                Some(Reverse(s)) if self.objects_by_slot.get(s as usize) == Some(&FREE) => break s,
                Some(_) => continue,
                None => {
                    self.objects_by_slot.push(FREE);
                    self.slot_live.push(ObjectLive::default());
                    break (self.objects_by_slot.len() - 1) as u32;
                }
            }
        };
        self.objects_by_slot[s as usize] = id;
        self.slot_live[s as usize] = ObjectLive::default();
        self.slots.insert(id, s);
        s
    }

    /// The slot of a data object, if some key refers to it (or did since the last
    /// release).
    pub fn slot_of(&self, id: ObjectId) -> Option<u32> {
        self.slots.get(&id).copied()
    }

    /// Live counts of data object `id` (zero when no key refers to it).
    pub fn object_live(&self, id: ObjectId) -> ObjectLive {
        self.slot_of(id)
            .and_then(|s| self.slot_live.get(s as usize).copied())
            .unwrap_or_default()
    }

    /// Live bytes of every data object the index refers to (objects without live
    /// keys are left out).
    pub fn live_by_object(&self) -> HashMap<ObjectId, u64> {
        self.objects_by_slot
            .iter()
            .zip(&self.slot_live)
            .filter(|(_, l)| l.bytes > 0 || l.keys > 0)
            .map(|(id, l)| (*id, l.bytes))
            .collect()
    }

    fn add_live(&mut self, key: &[u8], e: &IndexEntry) {
        let n = entry_bytes(key, e);
        self.live_bytes += n;
        if let Some(l) = self.slot_live.get_mut(e.loc.slot as usize) {
            l.bytes += n;
            l.stored += entry_stored(key, e);
            l.keys += 1;
            l.key_bytes += key.len() as u64;
        }
    }

    fn sub_live(&mut self, key: &[u8], e: &IndexEntry) {
        let n = entry_bytes(key, e);
        self.live_bytes -= n;
        let slot = e.loc.slot;
        if let Some(l) = self.slot_live.get_mut(slot as usize) {
            l.bytes -= n;
            l.stored -= entry_stored(key, e);
            l.keys -= 1;
            l.key_bytes -= key.len() as u64;
            if l.keys == 0 {
                self.release(slot);
            }
        }
    }

    /// Free `slot` (no key refers to its object any more).
    fn release(&mut self, slot: u32) {
        let Some(id) = self.objects_by_slot.get(slot as usize).copied() else {
            return;
        };
        if id == FREE {
            return;
        }
        self.slots.remove(&id);
        self.objects_by_slot[slot as usize] = FREE;
        self.slot_live[slot as usize] = ObjectLive::default();
        self.free.push(Reverse(slot));
        // Give back the free end of the table (stale heap entries are skipped).
        while self.objects_by_slot.last() == Some(&FREE) {
            self.objects_by_slot.pop();
            self.slot_live.pop();
        }
        if self.free.len() > 2 * self.objects_by_slot.len() + 16 {
            let len = self.objects_by_slot.len();
            self.free.retain(|Reverse(s)| (*s as usize) < len);
        }
    }

    /// The object in `slot`.
    pub fn object(&self, slot: u32) -> Option<ObjectId> {
        self.objects_by_slot
            .get(slot as usize)
            .copied()
            .filter(|id| *id != FREE)
    }

    /// Where the value of an entry lies, with its object resolved.
    pub fn locate(&self, loc: &Location) -> Option<ValueAt> {
        Some(ValueAt {
            object: self.object(loc.slot)?,
            offset: loc.offset,
            value_len: loc.value_len,
        })
    }

    /// Number of slots in the table (in use or free).
    pub fn slot_table_len(&self) -> usize {
        self.objects_by_slot.len()
    }

    pub fn get(&self, key: &[u8]) -> Option<&IndexEntry> {
        self.map.get(key)
    }

    /// The entry of `key` with its object resolved.
    pub fn get_at(&self, key: &[u8]) -> Option<(&IndexEntry, ValueAt)> {
        let e = self.map.get(key)?;
        Some((e, self.locate(&e.loc)?))
    }

    /// Set `key` to the value at `offset` of data object `id` (taking a slot for
    /// it if it has none: looked up per entry, since a slot is released the moment
    /// no key refers to its object any more).
    pub fn put_at(
        &mut self,
        key: &[u8],
        id: ObjectId,
        offset: u32,
        value_len: u32,
        meta: Option<Box<[u8]>>,
    ) {
        let slot = self.slot_for(id);
        let loc = Location {
            slot,
            offset,
            value_len,
        };
        self.insert(key, IndexEntry { loc, meta });
    }

    pub fn insert(&mut self, key: &[u8], entry: IndexEntry) {
        self.add_live(key, &entry);
        // One traversal; the boxed key is dropped again when the key exists.
        match self.map.insert(key.into(), entry) {
            Some(old) => self.sub_live(key, &old),
            None => self.key_bytes += key.len() as u64,
        }
    }

    pub fn remove(&mut self, key: &[u8]) {
        if let Some(old) = self.map.remove(key) {
            self.sub_live(key, &old);
            self.key_bytes -= key.len() as u64;
        }
    }

    /// Sum of the lengths of all keys.
    pub fn key_bytes(&self) -> u64 {
        self.key_bytes
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Objects whose live keys are not one contiguous stretch of the key order:
    /// another object's keys lie between two of theirs. (Runs written by one
    /// compaction hold disjoint key ranges; runs of separate rewrites may interleave.)
    pub fn interleaved_objects(&self) -> std::collections::HashSet<ObjectId> {
        let mut seen = std::collections::HashSet::new();
        let mut interleaved = std::collections::HashSet::new();
        let mut current: Option<u32> = None;
        for e in self.map.values() {
            let slot = e.loc.slot;
            if current == Some(slot) {
                continue;
            }
            current = Some(slot);
            if !seen.insert(slot) {
                interleaved.extend(self.object(slot));
            }
        }
        interleaved
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &IndexEntry)> {
        self.map.iter().map(|(k, e)| (&**k, e))
    }

    pub fn range<'a>(
        &'a self,
        start: Bound<&'a [u8]>,
        end: Bound<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a [u8], &'a IndexEntry)> + 'a {
        // An empty or inverted range holds nothing (BTreeMap would panic on it).
        let empty = match (start, end) {
            (Bound::Included(s), Bound::Included(e)) => s > e,
            (Bound::Included(s), Bound::Excluded(e))
            | (Bound::Excluded(s), Bound::Included(e))
            | (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
            _ => false,
        };
        let (start, end) = if empty {
            // Every key sorts at or after the empty key: nothing lies before it.
            (Bound::Unbounded, Bound::Excluded(&[][..]))
        } else {
            (start, end)
        };
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
                slot,
                offset: 32,
                value_len: len,
            },
            meta: None,
        }
    }

    #[test]
    fn inverted_and_empty_ranges_hold_nothing() {
        let mut idx = Index::default();
        idx.insert(
            b"k",
            IndexEntry {
                loc: Location {
                    slot: 0,
                    offset: 0,
                    value_len: 0,
                },
                meta: None,
            },
        );
        let n = |s, e| idx.range(s, e).count();
        assert_eq!(n(Bound::Included(&b"z"[..]), Bound::Excluded(&b"a"[..])), 0);
        assert_eq!(n(Bound::Excluded(&b"k"[..]), Bound::Excluded(&b"k"[..])), 0);
        assert_eq!(n(Bound::Included(&b"k"[..]), Bound::Included(&b"k"[..])), 1);
        assert_eq!(n(Bound::Included(&b"k"[..]), Bound::Excluded(&b"k"[..])), 0);
        assert_eq!(n(Bound::Unbounded, Bound::Unbounded), 1);
    }

    #[test]
    fn live_counts_per_object_follow_inserts_and_removes() {
        let mut ix = Index::default();
        let a = ix.slot_for(ObjectId { epoch: 1, seq: 1 });
        let b = ix.slot_for(ObjectId::run(1, 1));
        ix.insert(b"k1", entry(a, 10));
        ix.insert(b"k2", entry(a, 20));
        let la = ix.object_live(ObjectId { epoch: 1, seq: 1 });
        assert_eq!(la.bytes, 2 + 10 + 2 + 20);
        assert_eq!(la.keys, 2);
        assert_eq!(la.stored, (put_len(2, 0, 10) + put_len(2, 0, 20)) as u64);
        // Overwrite moves the key's bytes to the other object.
        ix.insert(b"k1", entry(b, 5));
        assert_eq!(ix.object_live(ObjectId { epoch: 1, seq: 1 }).bytes, 22);
        assert_eq!(ix.object_live(ObjectId::run(1, 1)).bytes, 7);
        ix.remove(b"k2");
        assert_eq!(
            ix.object_live(ObjectId { epoch: 1, seq: 1 }),
            ObjectLive::default()
        );
        assert_eq!(ix.live_bytes(), 7);
        let by = ix.live_by_object();
        assert_eq!(by.len(), 1);
        assert_eq!(by[&ObjectId::run(1, 1)], 7);
    }

    #[test]
    fn slots_are_released_when_no_key_refers_to_them_and_reused() {
        let mut ix = Index::default();
        let ids: Vec<ObjectId> = (1..=4).map(|seq| ObjectId { epoch: 1, seq }).collect();
        for (i, id) in ids.iter().enumerate() {
            let s = ix.slot_for(*id);
            ix.insert(format!("k{i}").as_bytes(), entry(s, 1));
        }
        assert_eq!(ix.slot_table_len(), 4);
        // The object's last key goes: its slot is free at once.
        ix.remove(b"k1");
        assert_eq!(ix.slot_of(ids[1]), None);
        assert_eq!(ix.object(1), None);
        assert_eq!(ix.slot_table_len(), 4);
        // Reused, lowest first; a resolved location never names the old object.
        let new = ObjectId { epoch: 2, seq: 1 };
        assert_eq!(ix.slot_for(new), 1);
        assert_eq!(ix.locate(&entry(1, 1).loc).unwrap().object, new);
        // An overwrite within the same object keeps the slot.
        ix.insert(b"k9", entry(1, 3));
        ix.insert(b"k9", entry(1, 4));
        assert_eq!(ix.slot_of(new), Some(1));
        // The free end of the table is cut off.
        ix.remove(b"k3");
        ix.remove(b"k2");
        assert_eq!(ix.slot_table_len(), 2);
        ix.remove(b"k0");
        ix.remove(b"k9");
        assert_eq!(ix.slot_table_len(), 0);
        assert_eq!(ix.slot_for(ids[2]), 0);
        assert_eq!(ix.slot_for(ids[3]), 1);
        assert_eq!(ix.slot_table_len(), 2);
    }
}
