//! Metering layer: counts requests and bytes per operation and estimates their cost.
//!
//! Prices are S3 Standard request prices: $0.005 per 1,000 PUT/COPY/POST/LIST
//! requests and $0.0004 per 1,000 GET (and other) requests; DELETE is free. Storage
//! and transfer are not included.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{DynStore, GetResult, ObjectMeta, ObjectStore, PutMode, StoreResult};

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
    pub errors: u64,
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
        if r.is_err() {
            self.meter.errors.fetch_add(1, Ordering::Relaxed);
        }
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
