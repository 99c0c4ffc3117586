//! Metering layer: counts requests and bytes per operation and estimates their cost.
//!
//! A request fails with an **error** when the store could not do what was asked (a
//! 5xx, a timeout, access denied, …). Two answers are not errors but expected: **not
//! found**, when kvfs looks for an object that may not exist (the next log segment or
//! manifest, the lease of a new store), and **precondition failed**, when a
//! conditional write finds that the object exists or changed (how a writer learns it
//! lost a race by design). They are counted apart; a read that needs an object that
//! is missing reports it as damage where it happens.
//!
//! Prices are S3 Standard request prices: $0.005 per 1,000 PUT/COPY/POST/LIST
//! requests and $0.0004 per 1,000 GET (and other) requests; DELETE is free. Storage
//! and transfer are not included.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{DynStore, GetResult, ObjectMeta, ObjectStore, PutMode, StoreError, StoreResult};

/// USD per PUT/LIST request (S3 Standard).
pub const USD_PER_PUT: f64 = 0.005 / 1000.0;
/// USD per GET request (S3 Standard).
pub const USD_PER_GET: f64 = 0.0004 / 1000.0;

/// Live counters, shared by every clone of the meter.
#[derive(Debug, Default)]
pub struct Meter {
    puts: AtomicU64,
    put_bytes: AtomicU64,
    gets: AtomicU64,
    get_bytes: AtomicU64,
    lists: AtomicU64,
    deletes: AtomicU64,
    errors: AtomicU64,
    not_found: AtomicU64,
    precondition_failed: AtomicU64,
}

/// A point-in-time copy of a [`Meter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    pub puts: u64,
    pub put_bytes: u64,
    pub gets: u64,
    pub get_bytes: u64,
    pub lists: u64,
    pub deletes: u64,
    /// Requests that failed (not counting the two expected answers below).
    pub errors: u64,
    /// Requests answered "no such object".
    pub not_found: u64,
    /// Conditional writes answered "precondition failed".
    pub precondition_failed: u64,
}

impl Metrics {
    /// Estimated request cost in USD.
    pub fn cost_usd(&self) -> f64 {
        (self.puts + self.lists) as f64 * USD_PER_PUT + self.gets as f64 * USD_PER_GET
    }

    /// Number of requests of every kind.
    pub fn requests(&self) -> u64 {
        self.puts + self.gets + self.lists + self.deletes
    }

    /// Counters accumulated since `earlier`.
    pub fn since(&self, earlier: &Metrics) -> Metrics {
        Metrics {
            puts: self.puts - earlier.puts,
            put_bytes: self.put_bytes - earlier.put_bytes,
            gets: self.gets - earlier.gets,
            get_bytes: self.get_bytes - earlier.get_bytes,
            lists: self.lists - earlier.lists,
            deletes: self.deletes - earlier.deletes,
            errors: self.errors - earlier.errors,
            not_found: self.not_found - earlier.not_found,
            precondition_failed: self.precondition_failed - earlier.precondition_failed,
        }
    }
}

impl Meter {
    pub fn snapshot(&self) -> Metrics {
        Metrics {
            puts: self.puts.load(Ordering::Relaxed),
            put_bytes: self.put_bytes.load(Ordering::Relaxed),
            gets: self.gets.load(Ordering::Relaxed),
            get_bytes: self.get_bytes.load(Ordering::Relaxed),
            lists: self.lists.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            not_found: self.not_found.load(Ordering::Relaxed),
            precondition_failed: self.precondition_failed.load(Ordering::Relaxed),
        }
    }
}

/// Wraps a store and counts what passes through it.
#[derive(Debug)]
pub struct MeteredStore {
    inner: DynStore,
    meter: Arc<Meter>,
}

impl MeteredStore {
    pub fn new(inner: DynStore) -> Self {
        MeteredStore {
            inner,
            meter: Arc::new(Meter::default()),
        }
    }

    /// A handle on the counters that stays valid after the store is moved.
    pub fn meter(&self) -> Arc<Meter> {
        self.meter.clone()
    }

    fn count<T>(&self, r: &StoreResult<T>) {
        let counter = match r {
            Ok(_) => return,
            Err(StoreError::NotFound(_)) => &self.meter.not_found,
            Err(StoreError::PreconditionFailed(_)) => &self.meter.precondition_failed,
            Err(_) => &self.meter.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl ObjectStore for MeteredStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> StoreResult<String> {
        self.meter.puts.fetch_add(1, Ordering::Relaxed);
        self.meter
            .put_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let r = self.inner.put(key, data, mode).await;
        self.count(&r);
        r
    }

    async fn get(&self, key: &str) -> StoreResult<GetResult> {
        self.meter.gets.fetch_add(1, Ordering::Relaxed);
        let r = self.inner.get(key).await;
        if let Ok(g) = &r {
            self.meter
                .get_bytes
                .fetch_add(g.data.len() as u64, Ordering::Relaxed);
        }
        self.count(&r);
        r
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        self.meter.gets.fetch_add(1, Ordering::Relaxed);
        let r = self.inner.get_range(key, range).await;
        if let Ok(b) = &r {
            self.meter
                .get_bytes
                .fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        self.count(&r);
        r
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        self.meter.lists.fetch_add(1, Ordering::Relaxed);
        let r = self.inner.list(prefix).await;
        self.count(&r);
        r
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.meter.deletes.fetch_add(1, Ordering::Relaxed);
        let r = self.inner.delete(key).await;
        self.count(&r);
        r
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn short_of_space(&self) -> bool {
        self.inner.short_of_space()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn expected_answers_are_not_errors() {
        let store = MeteredStore::new(Arc::new(MemoryStore::new()));
        assert!(store.get("absent").await.is_err());
        store
            .put("k", Bytes::from_static(b"v"), PutMode::CreateNew)
            .await
            .unwrap();
        assert!(store
            .put("k", Bytes::from_static(b"w"), PutMode::CreateNew)
            .await
            .is_err());
        assert!(store.get_range("k", 5..9).await.is_err());
        let m = store.meter().snapshot();
        assert_eq!((m.not_found, m.precondition_failed), (1, 1));
        assert_eq!(m.errors, 1, "an invalid range is an error");
        assert_eq!((m.puts, m.gets), (2, 2));
    }
}
