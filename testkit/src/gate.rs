//! [`GateStore`]: an object-store layer that holds requests for data objects
//! (segments and runs) until the test opens its gate, so a test can keep a GET or a
//! PUT "in flight" for as long as it likes and check what else still completes.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use kvfs::store::{DynStore, GetResult, ObjectMeta, ObjectStore, PutMode, StoreResult};
use tokio::sync::watch;

/// Holds requests while closed. Clones share one gate.
#[derive(Clone, Debug)]
pub struct Gate {
    open: Arc<watch::Sender<bool>>,
    waiting: Arc<AtomicUsize>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            open: Arc::new(watch::Sender::new(true)),
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Gate {
    pub fn close(&self) {
        self.open.send_replace(false);
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Requests held right now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Wait until at least `n` requests are held.
    pub async fn until_waiting(&self, n: usize) {
        while self.waiting() < n {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    async fn pass(&self) {
        let mut rx = self.open.subscribe();
        if *rx.borrow_and_update() {
            return;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _ = rx.wait_for(|open| *open).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Segment and run objects: the data that reads fetch and uploads write.
fn is_data(key: &str) -> bool {
    key.starts_with("seg/") || key.starts_with("run/")
}

/// See the module documentation: `gets` holds GETs of data objects, `puts` their
/// PUTs. Other objects (manifests, checkpoints, the lease) pass.
#[derive(Debug)]
pub struct GateStore {
    inner: DynStore,
    pub gets: Gate,
    pub puts: Gate,
}

impl GateStore {
    pub fn new(inner: DynStore) -> Arc<Self> {
        Arc::new(GateStore {
            inner,
            gets: Gate::default(),
            puts: Gate::default(),
        })
    }
}

#[async_trait]
impl ObjectStore for GateStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> StoreResult<String> {
        if is_data(key) {
            self.puts.pass().await;
        }
        self.inner.put(key, data, mode).await
    }

    async fn get(&self, key: &str) -> StoreResult<GetResult> {
        if is_data(key) {
            self.gets.pass().await;
        }
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        if is_data(key) {
            self.gets.pass().await;
        }
        self.inner.get_range(key, range).await
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.inner.delete(key).await
    }

    fn describe(&self) -> String {
        format!("gated {}", self.inner.describe())
    }
    fn short_of_space(&self) -> bool {
        self.inner.short_of_space()
    }
}
