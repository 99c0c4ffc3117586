//! The store id: a random name a store keeps for itself in the object `store-id`
//! (32 hex digits), written once, create-if-absent, by a writer. Local caches are
//! keyed by it: two URLs of one store share a cache, and a store created anew at a
//! location where another lived never meets the old one's cached bytes (object names
//! repeat from store to store; within one store each names one content for ever).
//! Stores written before it existed get one from their next writer that keeps a
//! disk cache.

use bytes::Bytes;

use super::error::Result;
use crate::format::names::STORE_ID;
use crate::store::{DynStore, PutMode, StoreError};

/// The id of the store behind `store`, if it has one. An object that is not an id
/// counts as none (logged).
pub(crate) async fn read(store: &DynStore) -> Result<Option<String>> {
    match store.get(STORE_ID).await {
        Ok(g) => {
            let id = String::from_utf8_lossy(&g.data).trim().to_string();
            if is_id(&id) {
                Ok(Some(id))
            } else {
                log::warn!(
                    "object {STORE_ID:?} of {} is not a store id; ignoring it",
                    store.describe()
                );
                Ok(None)
            }
        }
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The id of the store, written now if it has none (by a writer).
pub(crate) async fn ensure(store: &DynStore) -> Result<Option<String>> {
    if let Some(id) = read(store).await? {
        return Ok(Some(id));
    }
    let id = format!("{:032x}", rand::random::<u128>());
    match store
        .put(STORE_ID, Bytes::from(format!("{id}\n")), PutMode::CreateNew)
        .await
    {
        Ok(_) => Ok(Some(id)),
        Err(StoreError::PreconditionFailed(_)) => read(store).await,
        Err(e) => Err(e.into()),
    }
}

/// Whether `s` is a store id.
pub(crate) fn is_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}
