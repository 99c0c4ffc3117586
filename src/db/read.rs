//! The read path of values: where a key's value lies now, then the in-memory
//! segment, the cache, a run's readahead window, or a ranged GET of exactly the
//! stored value.

use bytes::Bytes;

use super::cache::CacheKey;
use super::error::{Error, Result};
use super::index::ValueAt;
use super::{gc, Db};
use crate::format::names::object_name;
use crate::format::segment::{decode_value, stored_value_len};

/// Bytes a readahead window reaches past its aligned end (a file-system block or
/// inline file crossing the boundary is still read with one GET).
const WINDOW_OVERLAP: u64 = 68 << 10;

impl Db {
    /// Where the value of `key` lies now, if it exists.
    pub(super) fn value_at(&self, key: &[u8]) -> Result<Option<ValueAt>> {
        let st = self.handle.shared.lock();
        let Some(e) = st.index.get(key) else {
            return Ok(None);
        };
        st.index.locate(&e.loc).map(Some).ok_or_else(|| {
            Error::Inconsistent(format!("index names unknown segment slot {}", e.loc.slot))
        })
    }

    /// Fetch the value at `loc`: memory, cache, then a ranged GET of exactly the
    /// stored value (checksum and bytes), or of a whole readahead window of a run.
    pub(super) async fn read_value(&self, loc: ValueAt) -> Result<Bytes> {
        let sh = &self.handle.shared;
        let len = stored_value_len(loc.value_len) as usize;
        let off = loc.offset as usize;
        let window = sh.opts.gc.readahead_bytes as u64;
        let id = loc.object;
        {
            let mut st = sh.lock();
            if let Some(b) = st.log.memory_slice(id, off, len) {
                return Ok(b.slice(4..));
            }
            if let Some(b) = st.cache.get(&CacheKey::Entry(id, loc.offset)) {
                return Ok(b);
            }
            if let Some(seg) = st.cache.get(&CacheKey::Segment(id)) {
                if off + len <= seg.len() {
                    return decode_value(&seg.slice(off..off + len))
                        .map_err(|e| Error::corrupt(object_name(id), e));
                }
            }
            if window > len as u64 {
                let w = off as u64 / window;
                if let Some(b) = st.cache.get(&CacheKey::Window(id, w)) {
                    let at = off - (w * window) as usize;
                    if at + len <= b.len() {
                        return decode_value(&b.slice(at..at + len))
                            .map_err(|e| Error::corrupt(object_name(id), e));
                    }
                }
            }
        }
        if window > len as u64 {
            if let Some(v) = self.read_from_window(loc).await? {
                return Ok(v);
            }
        }
        let name = object_name(id);
        let raw = sh
            .store
            .get_range(&name, off as u64..(off + len) as u64)
            .await?;
        let value = decode_value(&raw).map_err(|e| Error::corrupt(name.clone(), e))?;
        sh.lock()
            .cache
            .insert(CacheKey::Entry(id, loc.offset), value.clone());
        Ok(value)
    }

    /// Read a value of a run through its readahead window: one ranged GET fetches the
    /// aligned window holding the value (and the rest of the value if it runs past
    /// the window), and the window stays in the cache for the neighbouring keys.
    /// `None` if the run's size is unknown (then only the value itself is fetched).
    pub(super) async fn read_from_window(&self, loc: ValueAt) -> Result<Option<Bytes>> {
        let sh = &self.handle.shared;
        let id = loc.object;
        let window = sh.opts.gc.readahead_bytes as u64;
        let len = stored_value_len(loc.value_len);
        let off = loc.offset as u64;
        let mut size = sh.lock().objects.size(id);
        if size.is_none() {
            if id.is_run() {
                gc::worker::ensure_runs_listed(sh).await?;
            } else {
                gc::worker::ensure_listed(sh).await?;
            }
            size = sh.lock().objects.size(id);
        }
        let Some(size) = size else { return Ok(None) };
        let w = off / window;
        let start = w * window;
        // Windows overlap a little, so a small value that crosses into the next
        // window is read from this one rather than fetching it again.
        let end = ((w + 1) * window + WINDOW_OVERLAP).max(off + len).min(size);
        if off + len > end {
            return Ok(None);
        }
        let cell = {
            let mut fetches = sh.windows.lock().unwrap_or_else(|e| e.into_inner());
            fetches.entry((id, w)).or_default().clone()
        };
        let name = object_name(id);
        let fetched = cell
            .get_or_try_init(|| async {
                // Another reader may have fetched it between our cache miss and now.
                if let Some(b) = sh.lock().cache.get(&CacheKey::Window(id, w)) {
                    if b.len() as u64 >= end - start {
                        return Ok(b);
                    }
                }
                let b = sh.store.get_range(&name, start..end).await?;
                sh.lock().cache.insert(CacheKey::Window(id, w), b.clone());
                Ok::<Bytes, Error>(b)
            })
            .await;
        sh.windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(id, w));
        let bytes = fetched?;
        // The window may have been fetched for another reader, who asked for a
        // shorter end: a value past it is fetched on its own.
        let at = (off - start) as usize;
        let Some(stored) = bytes.get(at..at + len as usize) else {
            return Ok(None);
        };
        let stored = bytes.slice_ref(stored);
        decode_value(&stored)
            .map(Some)
            .map_err(|e| Error::corrupt(name, e))
    }
}
