//! A least-recently-used cache of object bytes, bounded by total size.
//!
//! It holds whole segments (kept after their upload, so recently written data is
//! read from memory), single entries fetched by ranged GETs, and readahead windows of
//! sorted runs.

use bytes::Bytes;
use lru::LruCache;

use crate::format::names::ObjectId;

/// Cached bytes are named by object id, never by index slot (a slot is reused once
/// its object holds no live key, while the object's bytes may still be cached).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheKey {
    /// A whole segment object.
    Segment(ObjectId),
    /// One entry's bytes: object and offset.
    Entry(ObjectId, u32),
    /// A readahead window of a run: object and window number.
    Window(ObjectId, u64),
}

#[derive(Debug)]
pub struct ByteCache {
    lru: LruCache<CacheKey, Bytes>,
    bytes: usize,
    capacity: usize,
    /// Lookups that found their item, and those that did not.
    pub hits: u64,
    pub misses: u64,
}

impl ByteCache {
    pub fn new(capacity: usize) -> Self {
        ByteCache {
            lru: LruCache::unbounded(),
            bytes: 0,
            capacity,
            hits: 0,
            misses: 0,
        }
    }

    pub fn get(&mut self, key: &CacheKey) -> Option<Bytes> {
        let found = self.lru.get(key).cloned();
        match found {
            Some(_) => self.hits += 1,
            None => self.misses += 1,
        }
        found
    }

    /// Insert, evicting least recently used items to stay within capacity. Items larger
    /// than a quarter of the capacity are not cached.
    pub fn insert(&mut self, key: CacheKey, value: Bytes) {
        if value.len() > self.capacity / 4 {
            return;
        }
        self.bytes += value.len();
        if let Some(old) = self.lru.put(key, value) {
            self.bytes -= old.len();
        }
        while self.bytes > self.capacity {
            match self.lru.pop_lru() {
                Some((_, v)) => self.bytes -= v.len(),
                None => break,
            }
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_to_capacity() {
        let mut c = ByteCache::new(100);
        for i in 0..10 {
            c.insert(
                CacheKey::Entry(ObjectId::default(), i),
                Bytes::from(vec![0u8; 20]),
            );
        }
        assert!(c.bytes() <= 100);
        assert!(c.get(&CacheKey::Entry(ObjectId::default(), 9)).is_some());
        assert!(c.get(&CacheKey::Entry(ObjectId::default(), 0)).is_none());
        c.insert(
            CacheKey::Segment(ObjectId { epoch: 1, seq: 1 }),
            Bytes::from(vec![0u8; 60]),
        );
        assert!(c
            .get(&CacheKey::Segment(ObjectId { epoch: 1, seq: 1 }))
            .is_none());
    }
}
