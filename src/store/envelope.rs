//! Envelope layer: compresses and encrypts objects on their way to the store, and
//! opens them on their way back, so the engine above sees plain bytes only.
//!
//! Vocabulary (see `format::envelope` for the byte layout):
//! - **layout**: what the layer knows about one stored object: either *plain* (no
//!   envelope; its size) or an envelope's decoded header (its chunk table). Layouts
//!   are learnt when the layer writes an object, reads it whole, lists it, or probes
//!   it, and forgotten when it deletes it. They take about 20 bytes per 64 KiB
//!   stored; at most [`LAYOUT_CACHE_BYTES`] are kept (least recently used go first,
//!   and are probed again when needed), so a mount that runs for months while other
//!   processes write and delete stays bounded.
//! - **probe**: a ranged GET of the first [`PROBE_BYTES`] of an object whose layout
//!   is not known yet, before a ranged read or to list its plain size. A ranged read
//!   of an object this process neither wrote, listed nor read therefore costs one GET
//!   more the first time.
//! - **passed-through objects**: the lease and the encoding record are stored as
//!   they are (they hold nothing secret, and must be readable without a key).
//!
//! Every object the layer writes is an envelope when it encrypts or compresses. A
//! layer that only compresses reads plain objects and envelopes alike, so a store
//! can mix them (objects written before compression was chosen stay as they were
//! until GC rewrites them). A layer that encrypts reads **only sealed envelopes**
//! (`Layout::check_sealed`): a plain object, an unencrypted envelope, or an
//! envelope sealed with another key, for another store or under another name is an
//! error naming the object, whether it is read whole, in ranges or probed.
//! [`ObjectMeta::size`] is the plain size; [`ObjectMeta::stored_size`] is what the
//! store holds.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use lru::LruCache;

use super::{DynStore, GetResult, ObjectMeta, ObjectStore, PutMode, StoreError, StoreResult};
use crate::format::encoding::ENCODING;
use crate::format::envelope::{self, Cipher, Compression, Layout, MIN_LEN, NONCE_LEN};
use crate::format::names::LEASE;

/// Bytes read by a probe: the header of an envelope of up to about 32 MiB at once.
pub const PROBE_BYTES: u64 = 4096;
/// Memory kept for layouts (about 20 bytes per 64 KiB chunk: enough for about
/// 200 GiB of stored objects; layouts beyond it are probed again when needed).
pub const LAYOUT_CACHE_BYTES: usize = 64 << 20;
/// Probes run in parallel when listing.
const LIST_PROBES: usize = 16;
/// Objects at least this large are sealed and opened off the async threads.
const BLOCKING_BYTES: usize = 256 << 10;

/// Fills a buffer with random bytes (nonces). Injectable for tests.
pub type Random = Arc<dyn Fn(&mut [u8]) + Send + Sync>;

/// Random bytes from the operating system's generator (through `rand`'s thread-local
/// generator, which it seeds).
pub fn os_random() -> Random {
    Arc::new(|buf: &mut [u8]| rand::RngCore::fill_bytes(&mut rand::rng(), buf))
}

/// What the layer knows about one stored object.
#[derive(Clone, Debug)]
enum Known {
    /// Stored as its plain bytes (no envelope).
    Plain,
    Envelope(Arc<Layout>),
}

impl Known {
    fn memory_bytes(&self, key: &str) -> usize {
        let own = match self {
            Known::Plain => 0,
            Known::Envelope(l) => l.memory_bytes(),
        };
        own + key.len() + 64
    }
}

/// Wraps a store: seals what is written, opens what is read.
pub struct EnvelopeStore {
    inner: DynStore,
    cipher: Option<Cipher>,
    /// Whether envelopes of version 1 (not bound to a store) are read: only in
    /// encrypted stores created before envelopes were bound.
    legacy: bool,
    compression: Compression,
    random: Random,
    known: Mutex<Layouts>,
}

/// Known layouts, least recently used first out, within [`LAYOUT_CACHE_BYTES`].
struct Layouts {
    map: LruCache<String, Known>,
    bytes: usize,
    budget: usize,
}

impl Layouts {
    fn insert(&mut self, key: &str, known: Known) {
        self.bytes += known.memory_bytes(key);
        if let Some(old) = self.map.put(key.to_string(), known) {
            self.bytes -= old.memory_bytes(key);
        }
        while self.bytes > self.budget {
            let Some((k, old)) = self.map.pop_lru() else {
                break;
            };
            self.bytes -= old.memory_bytes(&k);
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(old) = self.map.pop(key) {
            self.bytes -= old.memory_bytes(key);
        }
    }
}

impl fmt::Debug for EnvelopeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvelopeStore")
            .field("inner", &self.inner)
            .field("encrypted", &self.cipher.is_some())
            .field("compression", &self.compression)
            .finish()
    }
}

fn passed_through(key: &str) -> bool {
    key == LEASE || key == ENCODING
}

fn undecodable(key: &str, e: impl fmt::Display) -> StoreError {
    StoreError::Undecodable {
        key: key.to_string(),
        problem: e.to_string(),
    }
}

impl EnvelopeStore {
    pub fn new(
        inner: DynStore,
        cipher: Option<Cipher>,
        compression: Compression,
        random: Random,
    ) -> EnvelopeStore {
        EnvelopeStore {
            inner,
            cipher,
            legacy: false,
            compression,
            random,
            known: Mutex::new(Layouts {
                map: LruCache::unbounded(),
                bytes: 0,
                budget: LAYOUT_CACHE_BYTES,
            }),
        }
    }

    /// Also read encrypted envelopes of version 1 (a store created before envelopes
    /// were bound to their store).
    pub fn with_legacy_envelopes(mut self, legacy: bool) -> EnvelopeStore {
        self.legacy = legacy;
        self
    }

    /// Keep at most `bytes` of layouts (instead of [`LAYOUT_CACHE_BYTES`]).
    pub fn with_layout_budget(self, bytes: usize) -> EnvelopeStore {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).budget = bytes;
        self
    }

    /// Bytes of memory the known layouts take now.
    pub fn layout_bytes(&self) -> usize {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }

    /// Whether new objects are stored as plain bytes.
    fn writes_plain(&self) -> bool {
        self.cipher.is_none() && self.compression == Compression::None
    }

    fn remember(&self, key: &str, known: Known) {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, known);
    }

    fn forget(&self, key: &str) {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    fn recall(&self, key: &str) -> Option<Known> {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .get(key)
            .cloned()
    }

    /// What an object read as `known` may be: in an encrypted store, only an
    /// envelope sealed for this store under this name.
    fn check(&self, key: &str, known: &Known) -> StoreResult<()> {
        let Some(cipher) = &self.cipher else {
            return Ok(());
        };
        match known {
            Known::Plain => Err(StoreError::Undecodable {
                key: key.to_string(),
                problem: "not sealed with this store's key: a plain object in an encrypted store"
                    .to_string(),
            }),
            Known::Envelope(layout) => layout
                .check_sealed(key, cipher, self.legacy)
                .map_err(|e| undecodable(key, e)),
        }
    }

    /// Learn the layout of `key` from its first bytes (one ranged GET; two for an
    /// envelope whose header is longer than a probe). `stored_size`, when known (from
    /// a listing), saves reading past the end of small objects.
    async fn probe(&self, key: &str, stored_size: Option<u64>) -> StoreResult<Known> {
        let prefix = match stored_size {
            Some(size) if size < MIN_LEN as u64 => {
                self.check(key, &Known::Plain)?;
                self.remember(key, Known::Plain);
                return Ok(Known::Plain);
            }
            Some(size) => self.inner.get_range(key, 0..size.min(PROBE_BYTES)).await?,
            None => match self.inner.get_range(key, 0..PROBE_BYTES).await {
                Ok(b) => b,
                // Smaller than a probe: read it whole (and learn it from that).
                Err(StoreError::InvalidRange { .. }) => {
                    let got = self.inner.get(key).await?;
                    return Ok(self.open_whole(key, got.data).await?.1);
                }
                Err(e) => return Err(e),
            },
        };
        let known = if envelope::is_envelope(&prefix) {
            let need = envelope::header_len(&prefix).map_err(|e| undecodable(key, e))?;
            let header = if need > prefix.len() {
                self.inner.get_range(key, 0..need as u64).await?
            } else {
                prefix
            };
            let layout = Layout::decode(&header, stored_size).map_err(|e| undecodable(key, e))?;
            Known::Envelope(Arc::new(layout))
        } else {
            Known::Plain
        };
        self.check(key, &known)?;
        self.remember(key, known.clone());
        Ok(known)
    }

    /// Plain bytes of a whole stored object, learning (and returning) its layout.
    async fn open_whole(&self, key: &str, stored: Bytes) -> StoreResult<(Bytes, Known)> {
        if !envelope::is_envelope(&stored) {
            self.check(key, &Known::Plain)?;
            self.remember(key, Known::Plain);
            return Ok((stored, Known::Plain));
        }
        let cipher = self.cipher.clone();
        let legacy = self.legacy;
        let name = key.to_string();
        let heavy = stored.len() >= BLOCKING_BYTES;
        let (layout, plain) = off_thread(key, heavy, move || {
            envelope::open(&name, &stored, cipher.as_ref(), legacy)
        })
        .await?
        .map_err(|e| undecodable(key, e))?;
        let known = Known::Envelope(Arc::new(layout));
        self.remember(key, known.clone());
        Ok((Bytes::from(plain), known))
    }

    async fn read_range(&self, key: &str, range: Range<u64>, known: Known) -> StoreResult<Bytes> {
        match known {
            Known::Plain => self.inner.get_range(key, range).await,
            Known::Envelope(layout) => {
                if range.end > layout.plain_len() {
                    return Err(StoreError::InvalidRange {
                        key: key.to_string(),
                        range,
                    });
                }
                let stored = self
                    .inner
                    .get_range(key, layout.stored_range(&layout.chunks_for(&range)))
                    .await?;
                layout
                    .open_range(key, self.cipher.as_ref(), &range, &stored)
                    .map_err(|e| undecodable(key, e))
            }
        }
    }
}

#[async_trait]
impl ObjectStore for EnvelopeStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> StoreResult<String> {
        if passed_through(key) || self.writes_plain() {
            let etag = self.inner.put(key, data, mode).await?;
            if !passed_through(key) {
                self.remember(key, Known::Plain);
            }
            return Ok(etag);
        }
        let mut nonce = [0u8; NONCE_LEN];
        (self.random)(&mut nonce);
        let cipher = self.cipher.clone();
        let compression = self.compression;
        let name = key.to_string();
        let heavy = data.len() >= BLOCKING_BYTES;
        let (sealed, layout) = off_thread(key, heavy, move || {
            envelope::seal(&name, &data, compression, cipher.as_ref(), nonce)
        })
        .await?;
        let etag = self.inner.put(key, Bytes::from(sealed), mode).await?;
        self.remember(key, Known::Envelope(Arc::new(layout)));
        Ok(etag)
    }

    async fn get(&self, key: &str) -> StoreResult<GetResult> {
        let got = self.inner.get(key).await?;
        if passed_through(key) {
            return Ok(got);
        }
        let (data, _) = self.open_whole(key, got.data).await?;
        Ok(GetResult {
            data,
            etag: got.etag,
        })
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        if passed_through(key) {
            return self.inner.get_range(key, range).await;
        }
        if range.start >= range.end {
            if range.start > range.end {
                return Err(StoreError::InvalidRange {
                    key: key.to_string(),
                    range,
                });
            }
            return Ok(Bytes::new());
        }
        let Some(known) = self.recall(key) else {
            let known = self.probe(key, None).await?;
            return self.read_range(key, range, known).await;
        };
        match self.read_range(key, range.clone(), known).await {
            // An object deleted and written again under its name since its layout was
            // learnt: learn it again, once.
            Err(StoreError::Undecodable { .. } | StoreError::InvalidRange { .. }) => {
                self.forget(key);
                let known = self.probe(key, None).await?;
                self.read_range(key, range, known).await
            }
            other => other,
        }
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        let listed = self.inner.list(prefix).await?;
        stream::iter(listed)
            .map(|meta| async move {
                if passed_through(&meta.key) {
                    return Ok(meta);
                }
                let known = match self.recall(&meta.key) {
                    Some(k) => Ok(k),
                    None => self.probe(&meta.key, Some(meta.stored_size)).await,
                };
                let size = match known {
                    Ok(Known::Envelope(layout)) => layout.plain_len(),
                    // Deleted since it was listed: report it as listed.
                    // Deleted since it was listed, or not an object of this store
                    // (reading it fails, naming it): report it as listed.
                    Ok(Known::Plain)
                    | Err(
                        StoreError::NotFound(_)
                        | StoreError::InvalidRange { .. }
                        | StoreError::Undecodable { .. },
                    ) => meta.stored_size,
                    Err(e) => return Err(e),
                };
                Ok(ObjectMeta { size, ..meta })
            })
            .buffered(LIST_PROBES)
            .try_collect()
            .await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.inner.delete(key).await?;
        self.forget(key);
        Ok(())
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn short_of_space(&self) -> bool {
        self.inner.short_of_space()
    }
}

/// Run `work` on the blocking thread pool when it is `heavy` (sealing or opening a
/// large object), else here.
async fn off_thread<T: Send + 'static>(
    key: &str,
    heavy: bool,
    work: impl FnOnce() -> T + Send + 'static,
) -> StoreResult<T> {
    if heavy {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| undecodable(key, e))
    } else {
        Ok(work())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::envelope::KEY_LEN;
    use crate::store::memory::MemoryStore;

    fn layer(inner: DynStore, encrypt: bool, compression: Compression) -> EnvelopeStore {
        let cipher = encrypt.then(|| Cipher::new(&[3; KEY_LEN]));
        EnvelopeStore::new(inner, cipher, compression, os_random())
    }

    #[tokio::test]
    async fn roundtrips_whole_ranged_and_listed() {
        for (encrypt, compression) in [
            (false, Compression::Zstd),
            (true, Compression::None),
            (true, Compression::Zstd),
        ] {
            let inner: DynStore = Arc::new(MemoryStore::new());
            let plain: Vec<u8> = (0..200_000u32).map(|i| (i / 7 % 256) as u8).collect();
            let writer = layer(inner.clone(), encrypt, compression);
            writer
                .put("run/a", Bytes::from(plain.clone()), PutMode::CreateNew)
                .await
                .unwrap();
            writer
                .put("lease", Bytes::from_static(b"{}"), PutMode::Overwrite)
                .await
                .unwrap();
            assert_eq!(inner.get("lease").await.unwrap().data, &b"{}"[..]);
            // A second layer knows nothing: it probes.
            let reader = layer(inner.clone(), encrypt, compression);
            let got = reader.get_range("run/a", 70_000..140_001).await.unwrap();
            assert_eq!(&got[..], &plain[70_000..140_001]);
            assert!(matches!(
                reader.get_range("run/a", 0..200_001).await,
                Err(StoreError::InvalidRange { .. })
            ));
            let listed = layer(inner.clone(), encrypt, compression)
                .list("run/")
                .await
                .unwrap();
            assert_eq!(listed[0].size, 200_000);
            assert_eq!(
                listed[0].stored_size,
                inner.list("run/").await.unwrap()[0].stored_size
            );
            assert_eq!(&reader.get("run/a").await.unwrap().data[..], &plain[..]);
            // Small objects, smaller than a probe, read in ranges.
            writer
                .put(
                    "manifest/1",
                    Bytes::from_static(b"hello"),
                    PutMode::CreateNew,
                )
                .await
                .unwrap();
            let fresh = layer(inner.clone(), encrypt, compression);
            assert_eq!(
                &fresh.get_range("manifest/1", 1..3).await.unwrap()[..],
                b"el"
            );
        }
    }

    #[tokio::test]
    async fn reads_plain_objects_among_envelopes() {
        let inner: DynStore = Arc::new(MemoryStore::new());
        inner
            .put(
                "seg/p",
                Bytes::from_static(b"KVFSSEG1 plain object"),
                PutMode::CreateNew,
            )
            .await
            .unwrap();
        let l = layer(inner.clone(), false, Compression::Zstd);
        l.put(
            "seg/z",
            Bytes::from(vec![b'a'; 100_000]),
            PutMode::CreateNew,
        )
        .await
        .unwrap();
        assert!(inner.get("seg/z").await.unwrap().data.len() < 1000);
        let fresh = layer(inner.clone(), false, Compression::None);
        assert_eq!(
            &fresh.get_range("seg/p", 0..8).await.unwrap()[..],
            b"KVFSSEG1"
        );
        assert_eq!(fresh.get("seg/z").await.unwrap().data.len(), 100_000);
        let sizes: Vec<u64> = fresh
            .list("seg/")
            .await
            .unwrap()
            .iter()
            .map(|m| m.size)
            .collect();
        assert_eq!(sizes, vec![21, 100_000]);
    }

    #[tokio::test]
    async fn an_encrypting_layer_reads_only_objects_sealed_for_its_store() {
        let inner: DynStore = Arc::new(MemoryStore::new());
        let key = Cipher::new(&[3; KEY_LEN]);
        let ours = EnvelopeStore::new(
            inner.clone(),
            Some(key.for_store(b"ours")),
            Compression::None,
            os_random(),
        );
        let theirs = EnvelopeStore::new(
            inner.clone(),
            Some(key.for_store(b"theirs")),
            Compression::None,
            os_random(),
        );
        let compressing = layer(inner.clone(), false, Compression::Zstd);
        let big = Bytes::from(vec![7u8; 100_000]);
        inner
            .put(
                "seg/plain",
                Bytes::from_static(b"KVFSSEG1 plain"),
                PutMode::CreateNew,
            )
            .await
            .unwrap();
        theirs
            .put("seg/theirs", big.clone(), PutMode::CreateNew)
            .await
            .unwrap();
        compressing
            .put("seg/zstd", big.clone(), PutMode::CreateNew)
            .await
            .unwrap();
        ours.put("seg/ours", big.clone(), PutMode::CreateNew)
            .await
            .unwrap();
        for name in ["seg/plain", "seg/theirs", "seg/zstd"] {
            let fresh = EnvelopeStore::new(
                inner.clone(),
                Some(key.for_store(b"ours")),
                Compression::None,
                os_random(),
            );
            for err in [
                fresh.get(name).await.map(|_| ()).unwrap_err(),
                fresh.get_range(name, 1..5).await.map(|_| ()).unwrap_err(),
            ] {
                assert!(
                    matches!(&err, StoreError::Undecodable { key, .. } if key == name),
                    "{name}: {err}"
                );
            }
            // Listing does not fail on them; reading them does.
            assert_eq!(fresh.list("seg/").await.unwrap().len(), 4);
        }
        assert_eq!(ours.get("seg/ours").await.unwrap().data, big);
    }

    #[tokio::test]
    async fn layouts_stay_within_their_budget() {
        let inner: DynStore = Arc::new(MemoryStore::new());
        let l = layer(inner.clone(), true, Compression::Zstd).with_layout_budget(20_000);
        for i in 0..300u32 {
            let data = Bytes::from(vec![i as u8; 70_000 + i as usize]);
            l.put(&format!("seg/{i:04}"), data, PutMode::CreateNew)
                .await
                .unwrap();
            assert!(l.layout_bytes() <= 20_000, "{}", l.layout_bytes());
        }
        // Forgotten layouts are probed again.
        for i in [0u32, 150, 299] {
            let got = l
                .get_range(&format!("seg/{i:04}"), 69_000..70_000)
                .await
                .unwrap();
            assert!(got.iter().all(|b| *b == i as u8));
        }
        let listed = l.list("seg/").await.unwrap();
        assert_eq!(listed.len(), 300);
        assert!(listed
            .iter()
            .enumerate()
            .all(|(i, m)| m.size == 70_000 + i as u64));
        assert!(l.layout_bytes() <= 20_000);
        for i in 0..300u32 {
            l.delete(&format!("seg/{i:04}")).await.unwrap();
        }
        assert_eq!(l.layout_bytes(), 0);
    }

    #[tokio::test]
    async fn an_object_written_again_is_learnt_again() {
        let inner: DynStore = Arc::new(MemoryStore::new());
        let l = layer(inner.clone(), true, Compression::Zstd);
        let other = layer(inner.clone(), true, Compression::Zstd);
        l.put(
            "ckpt/1",
            Bytes::from(vec![1u8; 300_000]),
            PutMode::CreateNew,
        )
        .await
        .unwrap();
        assert_eq!(other.get_range("ckpt/1", 5..6).await.unwrap()[0], 1);
        l.delete("ckpt/1").await.unwrap();
        l.put(
            "ckpt/1",
            Bytes::from(vec![2u8; 300_000]),
            PutMode::CreateNew,
        )
        .await
        .unwrap();
        assert_eq!(other.get_range("ckpt/1", 5..6).await.unwrap()[0], 2);
    }
}
