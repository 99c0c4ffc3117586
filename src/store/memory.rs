//! In-memory backend for unit tests of pure logic.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::{check_key, GetResult, ObjectMeta, ObjectStore, PutMode, StoreError, StoreResult};

/// Objects kept in a `BTreeMap`; etags are a per-store counter.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    objects: BTreeMap<String, (Bytes, String)>,
    next_etag: u64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace an object's bytes without changing its etag (corruption tests).
    pub fn tamper(&self, key: &str, data: Bytes) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(obj) = inner.objects.get_mut(key) {
            obj.0 = data;
        }
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> StoreResult<String> {
        check_key(key)?;
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match (&mode, inner.objects.get(key)) {
            (PutMode::CreateNew, Some(_)) => {
                return Err(StoreError::PreconditionFailed(key.to_string()))
            }
            (PutMode::IfMatch(_), None) => {
                return Err(StoreError::PreconditionFailed(key.to_string()))
            }
            (PutMode::IfMatch(want), Some((_, have))) if want != have => {
                return Err(StoreError::PreconditionFailed(key.to_string()))
            }
            _ => {}
        }
        inner.next_etag += 1;
        let etag = format!("m{}", inner.next_etag);
        inner.objects.insert(key.to_string(), (data, etag.clone()));
        Ok(etag)
    }

    async fn get(&self, key: &str) -> StoreResult<GetResult> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.objects.get(key) {
            Some((data, etag)) => Ok(GetResult {
                data: data.clone(),
                etag: etag.clone(),
            }),
            None => Err(StoreError::NotFound(key.to_string())),
        }
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        let obj = self.get(key).await?;
        slice_range(key, &obj.data, range)
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Ok(inner
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (d, _))| ObjectMeta {
                key: k.clone(),
                size: d.len() as u64,
                stored_size: d.len() as u64,
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.objects.remove(key);
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".to_string()
    }
}

/// Cut `range` out of a whole object, as a ranged GET would.
pub(crate) fn slice_range(key: &str, data: &Bytes, range: Range<u64>) -> StoreResult<Bytes> {
    if range.start > range.end || range.end > data.len() as u64 {
        return Err(StoreError::InvalidRange {
            key: key.to_string(),
            range,
        });
    }
    Ok(data.slice(range.start as usize..range.end as usize))
}
