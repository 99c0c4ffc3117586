//! Errors of the engine.

use crate::format::FormatError;
use crate::store::encoding::EncodingError;
use crate::store::StoreError;

/// Every way a [`crate::db::Db`] operation can fail.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("no such key: {0}")]
    NotFound(String),
    #[error("invalid metadata: {0}")]
    InvalidMeta(String),
    #[error("cannot read the input: {0}")]
    Input(String),
    #[error("value too large: {size} bytes (the maximum is {max} bytes)")]
    ValueTooLarge { size: usize, max: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Encoding(#[from] EncodingError),
    #[error("corrupt object {object}: {source}")]
    Corrupt {
        object: String,
        #[source]
        source: FormatError,
    },
    #[error("no kvfs store at {0}: it has no manifest (nothing was ever written there, or the URL is wrong)")]
    NoStore(String),
    #[error("{store} is not empty and holds no kvfs store ({count} other object(s), such as {example:?}); use an empty directory or prefix for a new store")]
    NotAStore {
        store: String,
        count: usize,
        example: String,
    },
    #[error("no such snapshot: {0}")]
    NoSnapshot(String),
    #[error("store is damaged: {0}. Run `kvfs fsck --repair` on it to rebuild a consistent state (it names every key it loses)")]
    Damaged(String),
    #[error("store is inconsistent: {0}")]
    Inconsistent(String),
    #[error("store {store} is in use by another writer ({holder}); stop it first, or wait for its lease to expire")]
    Locked { store: String, holder: String },
    #[error("this writer was fenced: {0}. Another writer now owns the store; reopen to continue")]
    Fenced(String),
    #[error("the store was opened read-only")]
    ReadOnly,
    #[error("the store is closed")]
    Closed,
    #[error("{0}")]
    Unavailable(String),
    /// The store is full (or short of space): writes that add data are refused;
    /// deletes and other changes that add none go through.
    #[error("no space left in the store: {0}")]
    NoSpace(String),
    #[error("writes stopped after an earlier failure: {0}")]
    Poisoned(String),
    #[error("invalid option {option}: {problem}")]
    InvalidOption {
        option: &'static str,
        problem: String,
    },
}

impl Error {
    pub(crate) fn corrupt(object: impl Into<String>, source: FormatError) -> Error {
        Error::Corrupt {
            object: object.into(),
            source,
        }
    }

    /// The state a writer enters after this error: later writes fail with it.
    pub(crate) fn poisoned(&self) -> Error {
        match self {
            Error::Fenced(_) | Error::Poisoned(_) => self.clone(),
            other => Error::Poisoned(other.to_string()),
        }
    }

    /// The errno a file-system caller should see.
    pub fn errno(&self) -> i32 {
        match self {
            Error::InvalidKey(_) => libc::EINVAL,
            Error::NotFound(_) => libc::ENOENT,
            Error::InvalidMeta(_) | Error::InvalidOption { .. } => libc::EINVAL,
            Error::ValueTooLarge { .. } => libc::EFBIG,
            Error::ReadOnly => libc::EROFS,
            Error::NoSpace(_) | Error::Store(StoreError::NoSpace(_)) => libc::ENOSPC,
            Error::Store(StoreError::NotFound(_)) => libc::EIO,
            _ => libc::EIO,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
