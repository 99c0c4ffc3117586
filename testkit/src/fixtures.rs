//! Small helpers of the engine tests: an S3 server with one bucket, options that make
//! many small objects (and on-demand GC without waiting), a store's whole contents,
//! lease release, and a deterministic random generator.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kvfs::db::lease::LeaseInfo;
use kvfs::db::{Db, GcOptions, Options};
use kvfs::store::memory::MemoryStore;
use kvfs::store::retry::RetryPolicy;
use kvfs::store::s3::S3Store;
use kvfs::store::{DynStore, ObjectStore, PutMode};

use crate::server::{ServerOptions, TestS3Server};

/// Options that make many small segments, fast flushes and quick retries.
pub fn small_opts() -> Options {
    Options {
        segment_bytes: 4096,
        flush_interval: Duration::from_millis(20),
        checkpoint_bytes: 64 << 10,
        checkpoint_on_close_bytes: 1,
        lease_ttl: Duration::from_secs(3),
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(100),
            max_elapsed: Duration::from_secs(20),
        },
        ..Options::default()
    }
}

/// [`small_opts`] for on-demand GC with no waiting: no background cleaner, no grace
/// period.
pub fn gc_opts() -> Options {
    Options {
        gc: GcOptions {
            background: false,
            grace: Duration::ZERO,
            ..GcOptions::default()
        },
        ..small_opts()
    }
}

/// Every key and value of `db`, read through `scan` (panics on a read error).
pub async fn contents(db: &Db) -> BTreeMap<Vec<u8>, Vec<u8>> {
    db.scan(Bound::Unbounded, Bound::Unbounded, usize::MAX, false)
        .await
        .expect("scan")
        .into_iter()
        .map(|(k, v)| (k, v.expect("values requested").to_vec()))
        .collect()
}

/// Every key and value of `db`, each value read with `get` (so a read-only handle
/// catches up when an object it points to was collected; panics on a read error).
pub async fn contents_by_get(db: &Db) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let keys = db
        .scan(Bound::Unbounded, Bound::Unbounded, usize::MAX, true)
        .await
        .expect("scan");
    let mut out = BTreeMap::new();
    for (k, _) in keys {
        let v = db
            .get(&k)
            .await
            .expect("get")
            .expect("a listed key has a value");
        out.insert(k, v.to_vec());
    }
    out
}

/// A memory store, as itself and as a [`DynStore`].
pub fn memory() -> (Arc<MemoryStore>, DynStore) {
    let m = Arc::new(MemoryStore::new());
    let d: DynStore = m.clone();
    (m, d)
}

/// Mark the lease released, as if its holder had stopped cleanly. Used to take over
/// from a writer abandoned inside this same process (a real crash test kills a
/// separate process instead).
pub async fn release_lease(store: &dyn ObjectStore) {
    let g = store.get("lease").await.expect("lease exists");
    let mut info: LeaseInfo = serde_json::from_slice(&g.data).expect("lease parses");
    info.released = true;
    store
        .put(
            "lease",
            Bytes::from(serde_json::to_vec(&info).unwrap()),
            PutMode::IfMatch(g.etag),
        )
        .await
        .expect("lease replaced");
}

/// A deterministic pseudo-random generator for workloads (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `[0, n)` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The bucket of an [`S3Fixture`].
pub const BUCKET: &str = "kvfs-test";

/// An in-process S3 server (s3s-fs over HTTP on 127.0.0.1) with the bucket
/// [`BUCKET`], storing into a temporary directory.
pub struct S3Fixture {
    pub server: TestS3Server,
    pub dir: tempfile::TempDir,
}

impl S3Fixture {
    /// A server without faults.
    pub async fn start() -> S3Fixture {
        S3Fixture::with_options(ServerOptions::default()).await
    }

    /// A server without faults on a runtime of its own (two worker threads), for
    /// tests that are not async themselves (mounts driven with shell tools). Keep
    /// the runtime alive for as long as the server is used.
    pub fn start_with_runtime() -> (tokio::runtime::Runtime, S3Fixture) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let s3 = rt.block_on(S3Fixture::start());
        (rt, s3)
    }

    /// A server started with `opts`.
    pub async fn with_options(opts: ServerOptions) -> S3Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = TestS3Server::start(dir.path(), opts)
            .await
            .expect("S3 server starts");
        server.create_bucket(BUCKET).expect("bucket");
        S3Fixture { server, dir }
    }

    /// A store at `prefix` in the test bucket, talking HTTP to the server.
    pub fn s3_store(&self, prefix: &str) -> S3Store {
        S3Store::from_client(self.server.client(), BUCKET, prefix)
    }

    /// [`S3Fixture::s3_store`] as a [`DynStore`].
    pub fn store(&self, prefix: &str) -> DynStore {
        Arc::new(self.s3_store(prefix))
    }
}

/// Every file under `dir` (recursively) with its bytes: what a local-directory store
/// holds.
pub fn files_with_bytes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let data = std::fs::read(&p).expect("read");
                out.push((p, data));
            }
        }
    }
    out
}
