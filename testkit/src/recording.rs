//! An object-store layer that records every request (kind and key), for tests that
//! assert which requests an engine makes: an idle writer renews its lease and nothing
//! else; nothing reaches the store after `close` returns.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use kvfs::store::{DynStore, GetResult, ObjectMeta, ObjectStore, PutMode, StoreResult};

/// The kind of a recorded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Request {
    Put,
    Get,
    GetRange,
    List,
    Delete,
}

/// One recorded request: its kind and key (or listed prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub request: Request,
    pub key: String,
}

/// Records every request, then passes it to the inner store.
#[derive(Debug)]
pub struct RecordingStore {
    inner: DynStore,
    log: Mutex<Vec<Recorded>>,
}

impl RecordingStore {
    pub fn new(inner: DynStore) -> Arc<RecordingStore> {
        Arc::new(RecordingStore {
            inner,
            log: Mutex::new(Vec::new()),
        })
    }

    fn record(&self, request: Request, key: &str) {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Recorded {
                request,
                key: key.to_string(),
            });
    }

    /// Number of requests so far.
    pub fn len(&self) -> usize {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The requests from number `from` on.
    pub fn since(&self, from: usize) -> Vec<Recorded> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.get(from..)
            .map(<[Recorded]>::to_vec)
            .unwrap_or_default()
    }
}

#[async_trait]
impl ObjectStore for RecordingStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> StoreResult<String> {
        self.record(Request::Put, key);
        self.inner.put(key, data, mode).await
    }

    async fn get(&self, key: &str) -> StoreResult<GetResult> {
        self.record(Request::Get, key);
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        self.record(Request::GetRange, key);
        self.inner.get_range(key, range).await
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        self.record(Request::List, prefix);
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.record(Request::Delete, key);
        self.inner.delete(key).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn short_of_space(&self) -> bool {
        self.inner.short_of_space()
    }
}
