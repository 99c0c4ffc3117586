//! An in-process S3 server for tests and benchmarks.
//!
//! Vocabulary:
//! - **root**: the local directory the server stores into; each **bucket** is a
//!   subdirectory of it (served by `s3s-fs`).
//! - **endpoint**: the `http://127.0.0.1:PORT` URL clients connect to, with path-style
//!   addressing and the fixed test credentials [`TEST_ACCESS_KEY`] /
//!   [`TEST_SECRET_KEY`] (region [`TEST_REGION`]).
//! - **fault config** ([`FaultConfig`], shared with the store layer in
//!   [`crate::faults`]): latency, jitter, error injection, stalls, lost answers and
//!   outages applied to requests; changeable while the server runs through the shared
//!   [`FaultControl`]. A stalled request is handled after its stall (a hung server,
//!   for exercising client timeouts); an ambiguous PUT is applied and then answered
//!   with `500 InternalError`.
//! - **request counts** ([`RequestCounts`]): how many requests of each kind reached
//!   the server (after authentication, including the ones that got an injected fault).
//!
//! `s3s-fs` is wrapped in [`TestBackend`], which fixes the differences from S3 that
//! matter to kvfs: conditional PUTs (`If-None-Match` / `If-Match`) are serialized so
//! that exactly one of several racing writers wins (s3s-fs checks, then writes), and a
//! PUT or GET on a missing bucket answers `NoSuchBucket` (s3s-fs would create the
//! bucket directory on PUT and answer `NoSuchKey` on GET). Accepted sockets get
//! `TCP_NODELAY`, without which every GET stalls about 40 ms (Nagle + delayed ACK).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::auth::SimpleAuth;
use s3s::dto::*;
use s3s::service::S3ServiceBuilder;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::faults::{Fault, OpClass};
/// The server's fault configuration and its control (see [`crate::faults`]).
pub use crate::faults::{FaultConfig, FaultControl};

/// Access key the test server accepts.
pub const TEST_ACCESS_KEY: &str = "kvfs-test-access-key";
/// Secret key the test server accepts.
pub const TEST_SECRET_KEY: &str = "kvfs-test-secret-key";
/// Region test clients sign for.
pub const TEST_REGION: &str = "us-east-1";

/// How long [`TestS3Server::shutdown`] waits for open connections to finish.
const GRACEFUL_TIMEOUT: Duration = Duration::from_secs(5);

/// Number of requests of each kind the server received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// PutObject.
    pub put: u64,
    /// GetObject (whole or ranged).
    pub get: u64,
    /// HeadObject.
    pub head: u64,
    /// ListObjectsV2.
    pub list: u64,
    /// DeleteObject and DeleteObjects (one per request).
    pub delete: u64,
    /// Bucket operations (CreateBucket, HeadBucket, ListBuckets).
    pub other: u64,
}

impl RequestCounts {
    /// Sum of all counts.
    pub fn total(&self) -> u64 {
        self.put + self.get + self.head + self.list + self.delete + self.other
    }

    /// Requests counted since `earlier`.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            put: self.put - earlier.put,
            get: self.get - earlier.get,
            head: self.head - earlier.head,
            list: self.list - earlier.list,
            delete: self.delete - earlier.delete,
            other: self.other - earlier.other,
        }
    }

    /// Estimated cost at S3 Standard request prices (PUT, LIST and bucket operations
    /// at the PUT price; GET and HEAD at the GET price; DELETE free).
    pub fn cost_usd(&self) -> f64 {
        use kvfs::store::metered::{USD_PER_GET, USD_PER_PUT};
        (self.put + self.list + self.other) as f64 * USD_PER_PUT
            + (self.get + self.head) as f64 * USD_PER_GET
    }
}

#[derive(Debug, Default)]
struct Counters {
    put: AtomicU64,
    get: AtomicU64,
    head: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
    other: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> RequestCounts {
        RequestCounts {
            put: self.put.load(Ordering::Relaxed),
            get: self.get.load(Ordering::Relaxed),
            head: self.head.load(Ordering::Relaxed),
            list: self.list.load(Ordering::Relaxed),
            delete: self.delete.load(Ordering::Relaxed),
            other: self.other.load(Ordering::Relaxed),
        }
    }

    fn reset(&self) {
        for c in [
            &self.put,
            &self.get,
            &self.head,
            &self.list,
            &self.delete,
            &self.other,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// Options of [`TestS3Server::start`].
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// Address to listen on; default `127.0.0.1:0` (any free port).
    pub addr: Option<SocketAddr>,
    /// Faults in force from the start.
    pub faults: FaultConfig,
    /// Seed of the fault injector's random source; default: from the OS.
    pub seed: Option<u64>,
}

/// Directory marker objects (keys ending in `/`, which s3fs and rclone write) are kept
/// as a file of this name inside that directory: s3s-fs would otherwise store them as
/// real directories, and a HEAD of the same name without `/` would then fail.
const DIR_OBJECT: &str = ".s3-directory-object";

fn to_disk_key(key: &str) -> String {
    if key.ends_with('/') {
        format!("{key}{DIR_OBJECT}")
    } else {
        key.to_string()
    }
}

/// The bytes of `range` (all of them without one) of the file at `path`.
fn read_range(path: &Path, range: Option<Range>) -> io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let r = match range {
        None => 0..len,
        Some(r) => r
            .check(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "range not satisfiable"))?,
    };
    f.seek(SeekFrom::Start(r.start))?;
    let mut out = vec![0u8; (r.end - r.start) as usize];
    f.read_exact(&mut out)?;
    Ok(out)
}

fn unmap_listing(contents: &mut Option<Vec<Object>>) {
    for o in contents.iter_mut().flatten() {
        if let Some(k) = o.key.as_mut() {
            if let Some(stripped) = k.strip_suffix(DIR_OBJECT) {
                if stripped.ends_with('/') {
                    *k = stripped.to_string();
                }
            }
        }
    }
}

fn no_such_key(key: &str) -> S3Error {
    S3Error::with_message(S3ErrorCode::NoSuchKey, format!("no object {key}"))
}

/// Bytes of the files under `dir` (a bucket's objects), for the quota.
fn bytes_under(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// The `s3s::S3` implementation the server runs: `s3s-fs` plus serialization of
/// conditional PUTs, bucket checks, fault injection and request counting.
pub struct TestBackend {
    fs: s3s_fs::FileSystem,
    root: PathBuf,
    conditional: tokio::sync::Mutex<()>,
    faults: FaultControl,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for TestBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBackend")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl TestBackend {
    /// Count the request, then apply the decided delay, stall and fault. `Ok(true)`:
    /// handle the request, then lose its answer.
    async fn enter(&self, counter: &AtomicU64, class: OpClass) -> S3Result<bool> {
        counter.fetch_add(1, Ordering::Relaxed);
        let d = self.faults.decide(class);
        let delay = d.delay + d.stall.unwrap_or_default();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match d.fault {
            Some(Fault::Outage) => Err(S3Error::with_message(
                S3ErrorCode::ServiceUnavailable,
                "injected outage",
            )),
            Some(Fault::Throttled) => Err(S3Error::with_message(
                S3ErrorCode::SlowDown,
                "injected throttling",
            )),
            Some(Fault::ServerError) => Err(S3Error::with_message(
                S3ErrorCode::InternalError,
                "injected server error",
            )),
            None => Ok(d.ambiguous),
        }
    }

    /// Whether `key` names a directory on disk (a prefix, not an object).
    fn is_disk_dir(&self, bucket: &str, key: &str) -> bool {
        !key.ends_with('/') && self.root.join(bucket).join(key).is_dir()
    }

    fn require_bucket(&self, bucket: &str) -> S3Result<()> {
        // s3s validates bucket names (no `/`, no `..`) before calling us.
        if self.root.join(bucket).is_dir() {
            Ok(())
        } else {
            Err(S3Error::with_message(
                S3ErrorCode::NoSuchBucket,
                format!("bucket {bucket} does not exist"),
            ))
        }
    }
}

#[async_trait::async_trait]
impl S3 for TestBackend {
    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let ambiguous = self.enter(&self.counters.put, OpClass::Write).await?;
        self.require_bucket(&req.input.bucket)?;
        if let Some(quota) = self.faults.get().quota_bytes {
            let adding = req.input.content_length.unwrap_or(0).max(0) as u64;
            let bucket = self.root.join(&req.input.bucket);
            let used = tokio::task::spawn_blocking(move || bytes_under(&bucket))
                .await
                .map_err(|e| S3Error::with_message(S3ErrorCode::InternalError, e.to_string()))?;
            if used + adding > quota {
                let mut err = S3Error::with_message(
                    S3ErrorCode::Custom("QuotaExceeded".into()),
                    format!("bucket quota of {quota} bytes exceeded ({used} used, {adding} more)"),
                );
                err.set_status_code(http::StatusCode::FORBIDDEN);
                return Err(err);
            }
        }
        let mut req = req;
        req.input.key = to_disk_key(&req.input.key);
        let key = req.input.key.clone();
        let resp = if req.input.if_none_match.is_some() || req.input.if_match.is_some() {
            // s3s-fs checks the condition and then writes; hold one lock across both so
            // that racing conditional writers see each other (exactly one wins).
            let _guard = self.conditional.lock().await;
            self.fs.put_object(req).await
        } else {
            self.fs.put_object(req).await
        };
        if ambiguous && resp.is_ok() {
            return Err(S3Error::with_message(
                S3ErrorCode::InternalError,
                format!("PUT {key} applied, answer lost (injected)"),
            ));
        }
        resp
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.enter(&self.counters.get, OpClass::Read).await?;
        self.require_bucket(&req.input.bucket)?;
        if self.is_disk_dir(&req.input.bucket, &req.input.key) {
            return Err(no_such_key(&req.input.key));
        }
        let mut req = req;
        req.input.key = to_disk_key(&req.input.key);
        let path = self.root.join(&req.input.bucket).join(&req.input.key);
        let range = req.input.range;
        let mut resp = self.fs.get_object(req).await?;
        // s3s-fs streams the body in 4 KiB reads, each a blocking task; read the
        // range in one go instead, so the server is not what limits a fast reader.
        let data = tokio::task::spawn_blocking(move || read_range(&path, range))
            .await
            .map_err(|e| S3Error::with_message(S3ErrorCode::InternalError, e.to_string()))?
            .map_err(|e| S3Error::with_message(S3ErrorCode::InternalError, e.to_string()))?;
        resp.output.body = Some(StreamingBlob::from(s3s::Body::from(data)));
        Ok(resp)
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.enter(&self.counters.head, OpClass::Read).await?;
        if self.is_disk_dir(&req.input.bucket, &req.input.key) {
            return Err(no_such_key(&req.input.key));
        }
        let mut req = req;
        req.input.key = to_disk_key(&req.input.key);
        self.fs.head_object(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.enter(&self.counters.list, OpClass::Read).await?;
        let mut resp = self.fs.list_objects_v2(req).await?;
        unmap_listing(&mut resp.output.contents);
        Ok(resp)
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.enter(&self.counters.delete, OpClass::Write).await?;
        let mut req = req;
        req.input.key = to_disk_key(&req.input.key);
        self.fs.delete_object(req).await
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.enter(&self.counters.delete, OpClass::Write).await?;
        self.require_bucket(&req.input.bucket)?;
        self.fs.delete_objects(req).await
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.enter(&self.counters.other, OpClass::Other).await?;
        self.fs.create_bucket(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.enter(&self.counters.other, OpClass::Other).await?;
        self.fs.head_bucket(req).await
    }

    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        self.enter(&self.counters.other, OpClass::Other).await?;
        self.fs.list_buckets(req).await
    }

    // The remaining operations s3s-fs offers, for other S3 clients (s3fs, rclone).

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.enter(&self.counters.list, OpClass::Read).await?;
        let mut resp = self.fs.list_objects(req).await?;
        unmap_listing(&mut resp.output.contents);
        Ok(resp)
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        self.enter(&self.counters.put, OpClass::Write).await?;
        let mut req = req;
        req.input.key = to_disk_key(&req.input.key);
        if let CopySource::Bucket { key, .. } = &mut req.input.copy_source {
            *key = to_disk_key(key).into();
        }
        self.fs.copy_object(req).await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.enter(&self.counters.other, OpClass::Other).await?;
        self.fs.get_bucket_location(req).await
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.enter(&self.counters.other, OpClass::Other).await?;
        self.fs.delete_bucket(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.enter(&self.counters.put, OpClass::Write).await?;
        self.fs.create_multipart_upload(req).await
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.enter(&self.counters.put, OpClass::Write).await?;
        self.fs.upload_part(req).await
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        self.enter(&self.counters.put, OpClass::Write).await?;
        self.fs.upload_part_copy(req).await
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        self.enter(&self.counters.list, OpClass::Read).await?;
        self.fs.list_parts(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.enter(&self.counters.put, OpClass::Write).await?;
        self.fs.complete_multipart_upload(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.enter(&self.counters.delete, OpClass::Write).await?;
        self.fs.abort_multipart_upload(req).await
    }
}

/// A running in-process S3 server. Dropping it stops accepting connections.
#[derive(Debug)]
pub struct TestS3Server {
    addr: SocketAddr,
    root: PathBuf,
    faults: FaultControl,
    counters: Arc<Counters>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// The disk-cache base directory of `kvfs` commands run with [`Self::client_env`]
    /// (removed with the server, so tests leave nothing in the user's cache).
    disk_cache: tempfile::TempDir,
}

impl TestS3Server {
    /// Serve the directory `root` (which must exist) on `opts.addr` or a free port of
    /// 127.0.0.1. Must be called inside a Tokio runtime; the server runs on a spawned
    /// task of that runtime.
    pub async fn start(root: &Path, opts: ServerOptions) -> io::Result<TestS3Server> {
        let root = root.canonicalize()?;
        let fs = s3s_fs::FileSystem::new(&root)
            .map_err(|e| io::Error::other(format!("s3s-fs on {}: {e:?}", root.display())))?;
        let faults = FaultControl::new(opts.faults, opts.seed);
        let counters = Arc::new(Counters::default());
        let backend = TestBackend {
            fs,
            root: root.clone(),
            conditional: tokio::sync::Mutex::new(()),
            faults: faults.clone(),
            counters: counters.clone(),
        };
        let mut builder = S3ServiceBuilder::new(backend);
        builder.set_auth(SimpleAuth::from_single(TEST_ACCESS_KEY, TEST_SECRET_KEY));
        let service = builder.build();

        let bind = opts
            .addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(serve(listener, service, stop_rx));
        log::debug!("test S3 server on http://{addr} serving {}", root.display());
        Ok(TestS3Server {
            addr,
            root,
            faults,
            counters,
            stop: Some(stop_tx),
            task: Some(task),
            disk_cache: tempfile::tempdir()?,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The (canonical) directory the server stores into.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Create a bucket (a directory under the root). Creating an existing bucket is
    /// not an error.
    pub fn create_bucket(&self, name: &str) -> io::Result<()> {
        if name.is_empty() || name.contains('/') || name.contains('\\') || name.starts_with('.') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid bucket name {name:?}"),
            ));
        }
        std::fs::create_dir_all(self.root.join(name))
    }

    /// The shared fault configuration; changes apply to later requests.
    pub fn faults(&self) -> FaultControl {
        self.faults.clone()
    }

    /// Requests received so far.
    pub fn request_counts(&self) -> RequestCounts {
        self.counters.snapshot()
    }

    /// Reset all request counts to zero.
    pub fn reset_request_counts(&self) {
        self.counters.reset();
    }

    /// A client configuration for this server with the given keys: region
    /// [`TEST_REGION`], path-style addressing, SDK retries disabled, kvfs's default
    /// timeouts. Adjust it and build a client with `aws_sdk_s3::Client::from_conf`.
    pub fn client_config(&self, access_key: &str, secret_key: &str) -> aws_sdk_s3::config::Builder {
        let credentials = Credentials::new(access_key, secret_key, None, None, "kvfs-test-server");
        aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(TEST_REGION))
            .endpoint_url(self.endpoint())
            .credentials_provider(credentials)
            .force_path_style(true)
            .retry_config(RetryConfig::disabled())
            .timeout_config(kvfs::store::s3::default_timeouts())
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
    }

    /// The environment a child process (the `kvfs` command, a crash-test writer) needs
    /// to reach this server through the standard AWS configuration: endpoint, test
    /// credentials and region, with the real AWS configuration files and the instance
    /// metadata service out of reach.
    pub fn client_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY.to_string()),
            ("AWS_REGION", TEST_REGION.to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
            (
                "AWS_CONFIG_FILE",
                "/nonexistent/kvfs-test-config".to_string(),
            ),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/kvfs-test-credentials".to_string(),
            ),
            (
                "KVFS_CACHE_DIR",
                self.disk_cache.path().to_string_lossy().into_owned(),
            ),
        ]
    }

    /// The disk-cache base directory `kvfs` commands run with [`Self::client_env`] use.
    pub fn disk_cache_dir(&self) -> &Path {
        self.disk_cache.path()
    }

    /// A client for this server with the test credentials.
    pub fn client(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(self.client_config(TEST_ACCESS_KEY, TEST_SECRET_KEY).build())
    }

    /// Stop accepting connections and wait (at most a few seconds) for open ones to
    /// finish their requests.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestS3Server {
    fn drop(&mut self) {
        // Best effort: the serving task stops accepting and drains in the background
        // (or is cancelled with its runtime).
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Accept connections until `stop` fires (or its sender is dropped), then drain.
async fn serve(
    listener: TcpListener,
    service: s3s::service::S3Service,
    stop: oneshot::Receiver<()>,
) {
    let http = ConnBuilder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut stop = pin!(stop);
    loop {
        let socket = tokio::select! {
            res = listener.accept() => match res {
                Ok((socket, _)) => socket,
                Err(err) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    log::warn!("test S3 server: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.as_mut() => break,
        };
        if let Err(err) = socket.set_nodelay(true) {
            log::warn!("test S3 server: cannot set TCP_NODELAY: {err}");
        }
        let conn = http.serve_connection(TokioIo::new(socket), service.clone());
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    with_timeout(GRACEFUL_TIMEOUT, graceful.shutdown()).await;
}

async fn with_timeout(limit: Duration, fut: impl Future<Output = ()>) {
    if tokio::time::timeout(limit, fut).await.is_err() {
        log::debug!("test S3 server: connections still open after {limit:?}, abandoning them");
    }
}
