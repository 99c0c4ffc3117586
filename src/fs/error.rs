//! Errors of the namespace, each mapped once to an errno.

use crate::db;
use crate::format::FormatError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("file name too long")]
    NameTooLong,
    #[error("operation not supported: {0}")]
    NotSupported(&'static str),
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    #[error("file too large")]
    TooLarge,
    #[error("read-only file system")]
    ReadOnly,
    #[error("corrupt {what}: {source}")]
    Corrupt { what: String, source: FormatError },
    #[error("{0}")]
    Layout(String),
    #[error("writing output: {0}")]
    Output(String),
    #[error("offset past the end of the file")]
    NoSuchOffset,
    #[error("no such attribute")]
    NoData,
    #[error("attribute value too large")]
    TooBig,
    #[error("result out of range")]
    Range,
    #[error("too many links")]
    TooManyLinks,
    #[error(transparent)]
    Db(#[from] db::Error),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::NotSupported(_) => libc::EOPNOTSUPP,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::TooLarge => libc::EFBIG,
            FsError::ReadOnly => libc::EROFS,
            FsError::Corrupt { .. } | FsError::Layout(_) => libc::EIO,
            FsError::TooManyLinks => libc::EMLINK,
            FsError::NoData => libc::ENODATA,
            FsError::NoSuchOffset => libc::ENXIO,
            FsError::TooBig => libc::E2BIG,
            FsError::Range => libc::ERANGE,
            FsError::Output(_) => libc::EIO,
            FsError::Db(e) => e.errno(),
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;
