//! The data objects a writer knows of, with their sizes, and the ones waiting to be
//! deleted.
//!
//! The table starts empty. The first GC round lists `seg/` and `run/` (objects found
//! that way count as born when this process opened the store); the uploader adds each
//! segment it stores and the worker each run it writes. Sizes of runs are also needed
//! by readers (readahead never asks for bytes past an object's end), so a reader
//! lists `run/` on its first read from a run it does not know, and a read-only
//! handle again after following met a run it does not know (`follower`).
//!
//! **Retired**: an object that has no live data and is out of the log window, noted
//! with the time it was first seen so and the log position whose durability makes
//! that final. It is deleted once both the grace period has passed and that position
//! is durable.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::format::names::ObjectId;

/// Why an unneeded object is not deleted yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retired {
    pub since: Instant,
    /// The log sequence number (this epoch) that must be durable first.
    pub after_seq: u64,
}

#[derive(Clone, Debug)]
pub struct DataObject {
    pub size: u64,
    pub born: Instant,
    pub retired: Option<Retired>,
}

#[derive(Debug)]
pub struct ObjectTable {
    objects: BTreeMap<ObjectId, DataObject>,
    /// Sum of the sizes of `objects`.
    bytes: u64,
    /// Birth time given to objects found by listing.
    opened: Instant,
    /// `seg/` and `run/` have been listed.
    pub listed: bool,
    /// `run/` has been listed (readers list only runs).
    pub runs_listed: bool,
    /// Number of the next run this epoch writes.
    next_run: u64,
}

impl ObjectTable {
    pub fn new(opened: Instant) -> Self {
        ObjectTable {
            objects: BTreeMap::new(),
            bytes: 0,
            opened,
            listed: false,
            runs_listed: false,
            next_run: 1,
        }
    }

    /// Record an object this process wrote.
    pub fn insert_new(&mut self, id: ObjectId, size: u64) {
        let old = self.objects.insert(
            id,
            DataObject {
                size,
                born: Instant::now(),
                retired: None,
            },
        );
        self.bytes = self.bytes + size - old.map_or(0, |o| o.size);
    }

    /// Record an object found by listing (kept as is when already known).
    pub fn insert_listed(&mut self, id: ObjectId, size: u64) {
        let opened = self.opened;
        if let std::collections::btree_map::Entry::Vacant(e) = self.objects.entry(id) {
            e.insert(DataObject {
                size,
                born: opened,
                retired: None,
            });
            self.bytes += size;
        }
    }

    /// Sum of the sizes of the known objects.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn size(&self, id: ObjectId) -> Option<u64> {
        self.objects.get(&id).map(|o| o.size)
    }

    pub fn remove(&mut self, id: ObjectId) {
        if let Some(o) = self.objects.remove(&id) {
            self.bytes -= o.size;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ObjectId, &DataObject)> {
        self.objects.iter()
    }

    /// Mark `id` retired (once; the first time counts).
    pub fn retire(&mut self, id: ObjectId, now: Instant, after_seq: u64) {
        if let Some(o) = self.objects.get_mut(&id) {
            o.retired.get_or_insert(Retired {
                since: now,
                after_seq,
            });
        }
    }

    /// Retired objects whose grace period has passed and whose retirement is durable.
    pub fn deletable(
        &self,
        now: Instant,
        grace: Duration,
        durable_seq: u64,
    ) -> Vec<(ObjectId, u64)> {
        self.objects
            .iter()
            .filter_map(|(id, o)| {
                let r = o.retired?;
                (now.saturating_duration_since(r.since) >= grace && durable_seq >= r.after_seq)
                    .then_some((*id, o.size))
            })
            .collect()
    }

    /// A fresh run id for writer epoch `epoch`.
    pub fn next_run_id(&mut self, epoch: u64) -> ObjectId {
        let id = ObjectId::run(epoch, self.next_run);
        self.next_run += 1;
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletable_only_after_grace_and_durability() {
        let t0 = Instant::now();
        let mut t = ObjectTable::new(t0);
        let a = ObjectId { epoch: 1, seq: 1 };
        let b = ObjectId { epoch: 1, seq: 2 };
        t.insert_listed(a, 100);
        t.insert_new(b, 200);
        t.retire(a, t0, 5);
        t.retire(a, t0 + Duration::from_secs(100), 9); // the first retirement counts
        let g = Duration::from_secs(10);
        assert!(t.deletable(t0 + Duration::from_secs(5), g, 10).is_empty());
        assert!(t.deletable(t0 + Duration::from_secs(20), g, 4).is_empty());
        assert_eq!(
            t.deletable(t0 + Duration::from_secs(20), g, 5),
            vec![(a, 100)]
        );
        assert_eq!(t.next_run_id(3), ObjectId::run(3, 1));
        assert_eq!(t.next_run_id(3), ObjectId::run(3, 2));
    }
}
