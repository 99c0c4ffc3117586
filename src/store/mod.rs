//! The object store: the narrow interface kvfs needs from S3, and its backends.
//!
//! Vocabulary:
//! - **object**: an immutable (or conditionally replaced) blob under a key, relative to
//!   the store's prefix. Keys never end in `/`.
//! - **etag**: an opaque version token returned by `put` and `get`, used for `If-Match`.
//! - **backend**: a type that talks to real storage ([`s3::S3Store`],
//!   [`local::LocalStore`], [`memory::MemoryStore`]).
//! - **layer**: a type that wraps any [`ObjectStore`] and adds behaviour
//!   ([`envelope::EnvelopeStore`], [`retry::RetryStore`], [`metered::MeteredStore`]; the fault-injection layer of
//!   the tests and experiments, `FaultyStore`, lives in the `kvfs-testkit` crate).
//!
//! Every backend offers the same conditional-write semantics:
//! [`PutMode::CreateNew`] fails with [`StoreError::PreconditionFailed`] when the key
//! exists (S3 `If-None-Match: *`), and [`PutMode::IfMatch`] fails the same way when the
//! current etag differs (S3 `If-Match`). kvfs builds its single-writer guarantee on
//! these two operations.

pub mod disk_cache;
pub mod encoding;
pub mod envelope;
pub mod local;
pub mod memory;
pub mod metered;
pub mod retry;
pub mod s3;
pub mod url;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use url::{open_store, StoreUrl};

/// How a `put` treats an existing object under the same key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Replace unconditionally.
    Overwrite,
    /// Create only if no object exists under the key (`If-None-Match: *`).
    CreateNew,
    /// Replace only if the current object has this etag (`If-Match`).
    IfMatch(String),
}

/// Metadata of one listed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the store prefix.
    pub key: String,
    /// Size in bytes, as the layer above sees it (after the envelope layer: the
    /// object's plain size).
    pub size: u64,
    /// Bytes the object store holds for it.
    pub stored_size: u64,
}

/// An object's bytes with its etag.
#[derive(Clone, Debug)]
pub struct GetResult {
    pub data: Bytes,
    pub etag: String,
}

/// Errors of the object-store layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("object not found: {0}")]
    NotFound(String),
    #[error("precondition failed on {0} (object exists or changed)")]
    PreconditionFailed(String),
    /// The service asked us to slow down (HTTP 503 SlowDown, 429). Retryable.
    #[error("throttled by the object store: {0}")]
    Throttled(String),
    /// Server errors (5xx), timeouts, broken connections. Retryable.
    #[error("transient object store error: {0}")]
    Transient(String),
    /// Missing bucket, bad credentials, access denied: retrying will not help.
    #[error("object store refused the request: {0}")]
    Permanent(String),
    /// The requested byte range lies outside the object.
    #[error("invalid range {range:?} for object {key}")]
    InvalidRange { key: String, range: Range<u64> },
    /// An object that cannot be opened: it fails authentication (a wrong key, a
    /// changed byte, an object stored under another name) or is corrupt.
    #[error("cannot open object {key}: {problem}")]
    Undecodable { key: String, problem: String },
    /// Local I/O failure of the directory backend.
    #[error("local storage I/O error on {path}: {message}")]
    Io { path: String, message: String },
    /// A store URL or configuration that cannot be used.
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// The store has no room for the object: a full local disk (`ENOSPC`), a quota
    /// (`EDQUOT`), or an S3-compatible service out of storage or over a bucket quota.
    /// Not retried at once: space comes back only when something is deleted.
    #[error("the object store is full: {0}")]
    NoSpace(String),
}

impl StoreError {
    /// Whether retrying the same request may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Throttled(_) | StoreError::Transient(_))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The narrow interface kvfs needs from an object store.
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// Store `data` under `key` according to `mode`; returns the new etag.
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> StoreResult<String>;
    /// Read a whole object.
    async fn get(&self, key: &str) -> StoreResult<GetResult>;
    /// Read bytes `range` (end exclusive) of an object.
    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes>;
    /// List every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>>;
    /// Delete an object; deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> StoreResult<()>;
    /// A short human description (`s3://bucket/prefix`, a path, `memory`).
    fn describe(&self) -> String;
    /// Whether the store is running short of space: writes that add data should stop
    /// so that what is left keeps deletes (and the cleaning they allow) possible. A
    /// cheap check (no request); a backend with no notion of space says `false`.
    fn short_of_space(&self) -> bool {
        false
    }
}

/// A shared, dynamically typed object store.
pub type DynStore = Arc<dyn ObjectStore>;

/// Check that a key is acceptable to every backend.
pub(crate) fn check_key(key: &str) -> StoreResult<()> {
    if key.is_empty() || key.ends_with('/') || key.starts_with('/') || key.contains("//") {
        return Err(StoreError::Config(format!("invalid object key {key:?}")));
    }
    if key.split('/').any(|c| c == "." || c == "..") {
        return Err(StoreError::Config(format!("invalid object key {key:?}")));
    }
    Ok(())
}
