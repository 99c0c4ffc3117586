//! Store URLs: `s3://bucket/prefix`, `file:///path`, a plain path, or `memory:`.

use std::path::PathBuf;
use std::sync::Arc;

use super::local::LocalStore;
use super::memory::MemoryStore;
use super::s3::S3Store;
use super::{DynStore, StoreError, StoreResult};

/// A parsed store location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    S3 {
        bucket: String,
        prefix: String,
    },
    Local(PathBuf),
    /// A fresh, empty in-memory store (tests only: it vanishes with the process).
    Memory,
}

impl StoreUrl {
    pub fn parse(s: &str) -> StoreResult<StoreUrl> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = match rest.split_once('/') {
                Some((b, p)) => (b, p.trim_matches('/')),
                None => (rest, ""),
            };
            if bucket.is_empty() {
                return Err(StoreError::Config(format!(
                    "{s}: missing bucket name (expected s3://bucket/prefix)"
                )));
            }
            if prefix.contains("//") {
                return Err(StoreError::Config(format!(
                    "{s}: the prefix must not contain empty components"
                )));
            }
            return Ok(StoreUrl::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        if let Some(path) = s.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(StoreError::Config(format!(
                    "{s}: file URLs need an absolute path (file:///path)"
                )));
            }
            return Ok(StoreUrl::Local(PathBuf::from(path)));
        }
        if s == "memory:" {
            return Ok(StoreUrl::Memory);
        }
        if s.contains("://") {
            return Err(StoreError::Config(format!(
                "{s}: unsupported store URL (use s3://bucket/prefix, file:///path or a path)"
            )));
        }
        if s.is_empty() {
            return Err(StoreError::Config("empty store location".to_string()));
        }
        Ok(StoreUrl::Local(PathBuf::from(s)))
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            StoreUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            StoreUrl::Local(p) => write!(f, "{}", p.display()),
            StoreUrl::Memory => write!(f, "memory:"),
        }
    }
}

/// Open the backend a URL names (without retry or metering layers).
pub async fn open_store(url: &StoreUrl) -> StoreResult<DynStore> {
    Ok(match url {
        StoreUrl::S3 { bucket, prefix } => Arc::new(S3Store::connect(bucket, prefix).await?),
        StoreUrl::Local(path) => Arc::new(LocalStore::open(path)?),
        StoreUrl::Memory => Arc::new(MemoryStore::new()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            StoreUrl::parse("s3://b/p/q/").unwrap(),
            StoreUrl::S3 {
                bucket: "b".into(),
                prefix: "p/q".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("s3://b").unwrap(),
            StoreUrl::S3 {
                bucket: "b".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("file:///tmp/x").unwrap(),
            StoreUrl::Local("/tmp/x".into())
        );
        assert_eq!(
            StoreUrl::parse("./data").unwrap(),
            StoreUrl::Local("./data".into())
        );
        assert!(StoreUrl::parse("s3:///p").is_err());
        assert!(StoreUrl::parse("http://x").is_err());
        assert!(StoreUrl::parse("file://rel").is_err());
    }
}
