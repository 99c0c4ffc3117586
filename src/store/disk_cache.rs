//! The disk cache: bytes of immutable objects kept in a local directory, so that
//! reading again what this machine wrote or read costs no request, also after a
//! remount.
//!
//! Vocabulary:
//! - **cacheable object**: one that never changes once written: log segments, sorted
//!   runs and checkpoints (each name is used for one content only; see FORMAT.md).
//!   Manifests, the lease and the encoding record are never cached.
//! - **entry**: one cached byte range `start..end` of one object, in one file
//!   `<dir>/<object name>@<start>`. A range a read fetched becomes an entry; an
//!   object written whole (an upload) or read whole is one entry `0..len`, marked
//!   **whole**, which replaces that object's smaller entries.
//! - **store directory**: the cache of one store, `<base>/<store id>` (the store id
//!   is a random id the store keeps in its object `store-id`), so two names of one
//!   store share a cache and a store created anew where another was never meets the
//!   old one's bytes.
//!
//! The layer sits below the envelope layer (encryption, compression): it keeps the
//! bytes as the object store holds them, so an encrypted store's data is never
//! written to the local disk in plaintext. It sits above the retry and metering
//! layers: a hit is no request.
//!
//! An entry file holds a header with a CRC32C of every 64 KiB block of its data and
//! a CRC32C of the header itself (FORMAT.md, *Disk cache entries*). Files are written
//! under a temporary name and renamed into place; a torn or corrupt file (a crash,
//! a bad disk) fails its checks, is deleted and fetched again, never served. The
//! cache stays within its size: the least recently used entries go first (their
//! order survives a remount through the files' modification times). A directory
//! that cannot be written or a full disk turns the cache off with a warning; the
//! cache never fails a request that the object store can answer.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;

use super::{DynStore, GetResult, ObjectMeta, ObjectStore, PutMode, StoreResult};
use crate::format::names::{parse_name, ObjectKind};

/// First bytes of an entry file.
const MAGIC: &[u8; 8] = b"KVFSDC01";
/// Data bytes covered by one block checksum.
const BLOCK: u64 = 64 << 10;
/// Fixed part of the header: magic, start, len, whole, reserved, block, etag length.
const FIXED_HEADER: usize = 8 + 8 + 8 + 1 + 3 + 4 + 2;
/// Longest etag kept (longer ones are not cached).
const MAX_ETAG: usize = 1024;
/// Subdirectory of a store directory for files being written.
const TMP_DIR: &str = "tmp";

/// Default size of a store's disk cache.
pub const DEFAULT_CACHE_BYTES: u64 = 1 << 30;

/// What the cache did, for `kvfs stats` and `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskCacheFigures {
    /// The cache is attached and on.
    pub enabled: bool,
    /// Reads answered from the disk, and the bytes they returned.
    pub hits: u64,
    pub hit_bytes: u64,
    /// Reads of cacheable objects the disk did not hold.
    pub misses: u64,
    /// Entries written, and their data bytes.
    pub writes: u64,
    pub written_bytes: u64,
    /// Entries removed to stay within the size.
    pub evictions: u64,
    /// Entries found torn or corrupt (deleted, fetched again).
    pub corrupt: u64,
    /// Entries and bytes (files on disk, headers included) held now.
    pub entries: u64,
    pub bytes: u64,
    /// The size it stays within.
    pub capacity: u64,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    hit_bytes: AtomicU64,
    misses: AtomicU64,
    writes: AtomicU64,
    written_bytes: AtomicU64,
    evictions: AtomicU64,
    corrupt: AtomicU64,
}

/// One cached range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    end: u64,
    whole: bool,
    /// Size of the file (header and data).
    file_bytes: u64,
}

/// The entries of an attached cache, with their recency.
#[derive(Debug, Default)]
struct Entries {
    /// By object, by start.
    by_object: HashMap<String, BTreeMap<u64, Entry>>,
    /// Recency: a tick per entry, newest highest; and entries by tick.
    ticks: HashMap<(String, u64), u64>,
    by_tick: BTreeMap<u64, (String, u64)>,
    next_tick: u64,
    bytes: u64,
}

impl Entries {
    fn touch(&mut self, object: &str, start: u64) {
        let key = (object.to_string(), start);
        if let Some(old) = self.ticks.remove(&key) {
            self.by_tick.remove(&old);
        }
        self.next_tick += 1;
        self.ticks.insert(key.clone(), self.next_tick);
        self.by_tick.insert(self.next_tick, key);
    }

    fn insert(&mut self, object: &str, start: u64, entry: Entry) {
        self.remove(object, start);
        self.by_object
            .entry(object.to_string())
            .or_default()
            .insert(start, entry);
        self.bytes += entry.file_bytes;
        self.touch(object, start);
    }

    fn remove(&mut self, object: &str, start: u64) -> Option<Entry> {
        let ranges = self.by_object.get_mut(object)?;
        let entry = ranges.remove(&start)?;
        if ranges.is_empty() {
            self.by_object.remove(object);
        }
        if let Some(t) = self.ticks.remove(&(object.to_string(), start)) {
            self.by_tick.remove(&t);
        }
        self.bytes -= entry.file_bytes;
        Some(entry)
    }

    /// The entry holding `range` of `object`, if any: its start and end.
    fn covering(&self, object: &str, range: &Range<u64>) -> Option<(u64, Entry)> {
        let ranges = self.by_object.get(object)?;
        ranges
            .range(..=range.start)
            .rev()
            .find(|(_, e)| e.end >= range.end)
            .map(|(s, e)| (*s, *e))
    }

    fn whole(&self, object: &str) -> Option<Entry> {
        self.by_object
            .get(object)?
            .get(&0)
            .copied()
            .filter(|e| e.whole)
    }

    fn least_recent(&self) -> Option<(String, u64)> {
        self.by_tick.values().next().cloned()
    }
}

/// A cache attached to its store directory.
#[derive(Debug)]
struct Attached {
    dir: PathBuf,
    entries: Mutex<Entries>,
    /// Set when writing failed (full disk, unwritable directory): nothing more is
    /// written; what is cached is still read.
    writes_off: AtomicBool,
}

/// The disk-cache layer (see the module documentation). Until [`DiskCacheStore::attach`]
/// gives it a directory, it passes every request through.
#[derive(Debug)]
pub struct DiskCacheStore {
    inner: DynStore,
    capacity: u64,
    attached: OnceLock<Arc<Attached>>,
    counters: Counters,
}

/// Whether objects under `key` never change.
fn cacheable(key: &str) -> bool {
    matches!(
        parse_name(key),
        ObjectKind::Segment(_) | ObjectKind::Run(_) | ObjectKind::Checkpoint(_)
    )
}

fn lock(m: &Mutex<Entries>) -> std::sync::MutexGuard<'_, Entries> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DiskCacheStore {
    /// A cache of at most `capacity` bytes over `inner`, not attached yet.
    pub fn new(inner: DynStore, capacity: u64) -> Self {
        DiskCacheStore {
            inner,
            capacity,
            attached: OnceLock::new(),
            counters: Counters::default(),
        }
    }

    /// Use `dir` (created if missing) as this store's cache directory, taking in the
    /// entries it holds (checked, the oldest dropped beyond the size). A directory
    /// that cannot be used leaves the cache off, with a warning. Attaching twice
    /// keeps the first directory.
    pub async fn attach(&self, dir: PathBuf) {
        if self.attached.get().is_some() || self.capacity == 0 {
            return;
        }
        let capacity = self.capacity;
        let scanned = tokio::task::spawn_blocking(move || scan(&dir, capacity).map(|e| (dir, e)))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match scanned {
            Ok((dir, (entries, evicted))) => {
                log::info!(
                    "disk cache {}: {} entries, {} bytes (at most {capacity})",
                    dir.display(),
                    entries.ticks.len(),
                    entries.bytes
                );
                self.counters
                    .evictions
                    .fetch_add(evicted, Ordering::Relaxed);
                let _ = self.attached.set(Arc::new(Attached {
                    dir,
                    entries: Mutex::new(entries),
                    writes_off: AtomicBool::new(false),
                }));
            }
            Err(e) => log::warn!("the disk cache is off: {e}"),
        }
    }

    /// The directory in use, once attached.
    pub fn dir(&self) -> Option<&Path> {
        self.attached.get().map(|a| a.dir.as_path())
    }

    pub fn figures(&self) -> DiskCacheFigures {
        let c = &self.counters;
        let (enabled, entries, bytes) = match self.attached.get() {
            Some(a) => {
                let e = lock(&a.entries);
                (true, e.ticks.len() as u64, e.bytes)
            }
            None => (false, 0, 0),
        };
        DiskCacheFigures {
            enabled,
            hits: c.hits.load(Ordering::Relaxed),
            hit_bytes: c.hit_bytes.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            written_bytes: c.written_bytes.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            corrupt: c.corrupt.load(Ordering::Relaxed),
            entries,
            bytes,
            capacity: self.capacity,
        }
    }

    /// Read `range` of `key` from the disk, if an entry holds it and passes its
    /// checks. A failed check deletes the entry.
    async fn read_cached(
        &self,
        a: &Arc<Attached>,
        key: &str,
        range: Range<u64>,
    ) -> Option<(Bytes, String)> {
        let (start, entry) = lock(&a.entries).covering(key, &range)?;
        let path = entry_path(&a.dir, key, start);
        let (at, to) = (range.start - start, range.end - start);
        let read = tokio::task::spawn_blocking(move || read_entry(&path, start, entry.end, at..to))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match read {
            Ok((data, etag)) => {
                lock(&a.entries).touch(key, start);
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .hit_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                Some((data, etag))
            }
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!(
                        "disk cache: entry {key}@{start} is unusable ({e}); fetching it again"
                    );
                    self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
                }
                // Gone (another process evicted it) or bad: forget and delete it.
                lock(&a.entries).remove(key, start);
                let path = entry_path(&a.dir, key, start);
                let _ = tokio::task::spawn_blocking(move || fs::remove_file(path)).await;
                None
            }
        }
    }

    /// Keep `data`, bytes `start..` of `key`, as an entry (and make room for it).
    async fn store(
        &self,
        a: &Arc<Attached>,
        key: &str,
        start: u64,
        data: Bytes,
        whole: bool,
        etag: &str,
    ) {
        if a.writes_off.load(Ordering::Relaxed) || etag.len() > MAX_ETAG {
            return;
        }
        let end = start + data.len() as u64;
        let file_bytes = header_len(data.len() as u64, etag.len()) as u64 + data.len() as u64;
        if file_bytes > self.capacity {
            return;
        }
        // Already held (another read fetched it meanwhile)?
        if !whole && lock(&a.entries).covering(key, &(start..end)).is_some() {
            return;
        }
        let dir = a.dir.clone();
        let (k, e) = (key.to_string(), etag.to_string());
        let written =
            tokio::task::spawn_blocking(move || write_entry(&dir, &k, start, &data, whole, &e))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        if let Err(e) = written {
            if !a.writes_off.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "the disk cache {} stops taking new data: {e} (reads go to the object store)",
                    a.dir.display()
                );
            }
            return;
        }
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.counters
            .written_bytes
            .fetch_add(end - start, Ordering::Relaxed);
        let mut doomed = Vec::new();
        {
            let mut entries = lock(&a.entries);
            if whole {
                // The whole object replaces its smaller entries.
                let starts: Vec<u64> = entries
                    .by_object
                    .get(key)
                    .map(|r| r.keys().copied().filter(|s| *s != 0).collect())
                    .unwrap_or_default();
                for s in starts {
                    entries.remove(key, s);
                    doomed.push((key.to_string(), s));
                }
            }
            entries.insert(
                key,
                start,
                Entry {
                    end,
                    whole,
                    file_bytes,
                },
            );
            while entries.bytes > self.capacity {
                let Some((object, s)) = entries.least_recent() else {
                    break;
                };
                entries.remove(&object, s);
                doomed.push((object, s));
                self.counters.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !doomed.is_empty() {
            let dir = a.dir.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for (object, s) in doomed {
                    let _ = fs::remove_file(entry_path(&dir, &object, s));
                }
            })
            .await;
        }
    }

    /// Forget every entry of `key` (the object was deleted).
    async fn forget(&self, a: &Arc<Attached>, key: &str) {
        let starts: Vec<u64> = {
            let mut entries = lock(&a.entries);
            let starts: Vec<u64> = entries
                .by_object
                .get(key)
                .map(|r| r.keys().copied().collect())
                .unwrap_or_default();
            for s in &starts {
                entries.remove(key, *s);
            }
            starts
        };
        if starts.is_empty() {
            return;
        }
        let dir = a.dir.clone();
        let key = key.to_string();
        let _ = tokio::task::spawn_blocking(move || {
            for s in starts {
                let _ = fs::remove_file(entry_path(&dir, &key, s));
            }
        })
        .await;
    }

    fn attached_for(&self, key: &str) -> Option<&Arc<Attached>> {
        self.attached.get().filter(|_| cacheable(key))
    }
}

#[async_trait]
impl ObjectStore for DiskCacheStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> StoreResult<String> {
        let etag = self.inner.put(key, data.clone(), mode).await?;
        if let Some(a) = self.attached_for(key) {
            self.store(a, key, 0, data, true, &etag).await;
        }
        Ok(etag)
    }

    async fn get(&self, key: &str) -> StoreResult<GetResult> {
        let Some(a) = self.attached_for(key) else {
            return self.inner.get(key).await;
        };
        let whole = lock(&a.entries).whole(key);
        if let Some(e) = whole {
            if let Some((data, etag)) = self.read_cached(a, key, 0..e.end).await {
                return Ok(GetResult { data, etag });
            }
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let got = self.inner.get(key).await?;
        self.store(a, key, 0, got.data.clone(), true, &got.etag)
            .await;
        Ok(got)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        let Some(a) = self.attached_for(key) else {
            return self.inner.get_range(key, range).await;
        };
        if range.start >= range.end {
            return self.inner.get_range(key, range).await;
        }
        if let Some((data, _)) = self.read_cached(a, key, range.clone()).await {
            return Ok(data);
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let data = self.inner.get_range(key, range.clone()).await?;
        // The etag of a range is not known; entries keep an empty one (a whole get
        // of the object asks the store).
        self.store(a, key, range.start, data.clone(), false, "")
            .await;
        Ok(data)
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.inner.delete(key).await?;
        if let Some(a) = self.attached_for(key) {
            self.forget(a, key).await;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn short_of_space(&self) -> bool {
        self.inner.short_of_space()
    }
}

/// Where the entry `start..` of `object` lives.
fn entry_path(dir: &Path, object: &str, start: u64) -> PathBuf {
    dir.join(format!("{object}@{start}"))
}

/// Header bytes of an entry of `len` data bytes with an etag of `etag_len` bytes.
fn header_len(len: u64, etag_len: usize) -> usize {
    FIXED_HEADER + etag_len + 4 * len.div_ceil(BLOCK) as usize + 4
}

fn corrupt(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

/// Write an entry under a temporary name, then rename it into place.
fn write_entry(
    dir: &Path,
    object: &str,
    start: u64,
    data: &[u8],
    whole: bool,
    etag: &str,
) -> std::io::Result<()> {
    let len = data.len() as u64;
    let mut out = Vec::with_capacity(header_len(len, etag.len()) + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&start.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.push(u8::from(whole));
    out.extend_from_slice(&[0u8; 3]);
    out.extend_from_slice(&(BLOCK as u32).to_le_bytes());
    out.extend_from_slice(&(etag.len() as u16).to_le_bytes());
    out.extend_from_slice(etag.as_bytes());
    for block in data.chunks(BLOCK as usize) {
        out.extend_from_slice(&crc32c::crc32c(block).to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(data);
    let dest = entry_path(dir, object, start);
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    let tmp = dir.join(TMP_DIR).join(format!(
        "{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&out)?;
        drop(f);
        fs::rename(&tmp, &dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A checked entry header: start, data length, whole, etag, block checksums.
struct Header {
    start: u64,
    len: u64,
    whole: bool,
    etag: String,
    crcs: Vec<u32>,
    data_at: u64,
}

fn read_header(f: &File, file_len: u64) -> std::io::Result<Header> {
    let mut fixed = [0u8; FIXED_HEADER];
    f.read_exact_at(&mut fixed, 0)
        .map_err(|_| corrupt("shorter than its header"))?;
    if &fixed[..8] != MAGIC {
        return Err(corrupt("not a cache entry"));
    }
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&fixed[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let start = u64_at(8);
    let len = u64_at(16);
    let whole = fixed[24] == 1;
    let block = u32::from_le_bytes([fixed[28], fixed[29], fixed[30], fixed[31]]) as u64;
    let etag_len = u16::from_le_bytes([fixed[32], fixed[33]]) as usize;
    if block != BLOCK || etag_len > MAX_ETAG {
        return Err(corrupt("header fields out of range"));
    }
    let head = header_len(len, etag_len) as u64;
    if head.checked_add(len) != Some(file_len) {
        return Err(corrupt(format!(
            "{file_len} bytes, but its header says {}",
            head.saturating_add(len)
        )));
    }
    let mut rest = vec![0u8; head as usize - FIXED_HEADER];
    f.read_exact_at(&mut rest, FIXED_HEADER as u64)?;
    let (body, crc) = rest.split_at(rest.len() - 4);
    let mut hasher_input = Vec::with_capacity(FIXED_HEADER + body.len());
    hasher_input.extend_from_slice(&fixed);
    hasher_input.extend_from_slice(body);
    if crc32c::crc32c(&hasher_input).to_le_bytes() != crc {
        return Err(corrupt("header checksum mismatch"));
    }
    let etag =
        String::from_utf8(body[..etag_len].to_vec()).map_err(|_| corrupt("etag is not UTF-8"))?;
    let crcs = body[etag_len..]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Header {
        start,
        len,
        whole,
        etag,
        crcs,
        data_at: head,
    })
}

/// Bytes `want` (relative to the entry's start) of the entry at `path`, which the
/// index says holds `start..end`; every block read is checked.
fn read_entry(
    path: &Path,
    start: u64,
    end: u64,
    want: Range<u64>,
) -> std::io::Result<(Bytes, String)> {
    let f = File::open(path)?;
    let file_len = f.metadata()?.len();
    let h = read_header(&f, file_len)?;
    if h.start != start || h.len != end - start || want.end > h.len {
        return Err(corrupt("holds another range than its name says"));
    }
    let first = want.start / BLOCK;
    let last = want.end.div_ceil(BLOCK);
    let from = first * BLOCK;
    let to = (last * BLOCK).min(h.len);
    let mut buf = vec![0u8; (to - from) as usize];
    f.read_exact_at(&mut buf, h.data_at + from)?;
    for (i, block) in buf.chunks(BLOCK as usize).enumerate() {
        let n = first as usize + i;
        if h.crcs.get(n).copied() != Some(crc32c::crc32c(block)) {
            return Err(corrupt(format!("block {n} checksum mismatch")));
        }
    }
    let at = (want.start - from) as usize;
    let data = Bytes::from(buf).slice(at..at + (want.end - want.start) as usize);
    Ok((data, h.etag))
}

/// Take in the entries of `dir` (created if missing): checked headers only, torn or
/// foreign files deleted, recency from modification times, the oldest dropped
/// beyond `capacity`. Returns the entries and how many were dropped for room.
fn scan(dir: &Path, capacity: u64) -> std::io::Result<(Entries, u64)> {
    fs::create_dir_all(dir.join(TMP_DIR))?;
    // Files of writes a crash interrupted.
    for e in fs::read_dir(dir.join(TMP_DIR))?.flatten() {
        let _ = fs::remove_file(e.path());
    }
    // The directory must take writes.
    let probe = dir
        .join(TMP_DIR)
        .join(format!("probe-{}", std::process::id()));
    File::create(&probe)?.write_all(b"kvfs")?;
    fs::remove_file(&probe)?;
    let mut found: Vec<(std::time::SystemTime, String, u64, Entry)> = Vec::new();
    for sub in fs::read_dir(dir)?.flatten() {
        let name = sub.file_name().to_string_lossy().into_owned();
        if name == TMP_DIR || !sub.path().is_dir() {
            continue;
        }
        for e in fs::read_dir(sub.path())?.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            let object = format!("{name}/{}", file.rsplit_once('@').map_or("", |(o, _)| o));
            let start = file
                .rsplit_once('@')
                .and_then(|(_, s)| s.parse::<u64>().ok());
            let checked = (|| {
                let start = start
                    .filter(|_| cacheable(&object))
                    .ok_or_else(|| corrupt("not an entry name"))?;
                let f = File::open(e.path())?;
                let meta = f.metadata()?;
                // The header only: blocks are checked when they are read.
                let h = read_header(&f, meta.len())?;
                if h.start != start {
                    return Err(corrupt("holds another range than its name says"));
                }
                let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                Ok::<_, std::io::Error>((modified, start, h.len, h.whole, meta.len()))
            })();
            match checked {
                Ok((modified, start, len, whole, file_bytes)) => found.push((
                    modified,
                    object,
                    start,
                    Entry {
                        end: start + len,
                        whole,
                        file_bytes,
                    },
                )),
                Err(err) => {
                    log::debug!("disk cache: removing {}: {err}", e.path().display());
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
    found.sort_by_key(|(m, ..)| *m);
    let mut entries = Entries::default();
    for (_, object, start, entry) in found {
        entries.insert(&object, start, entry);
    }
    let mut evicted = 0;
    while entries.bytes > capacity {
        let Some((object, start)) = entries.least_recent() else {
            break;
        };
        entries.remove(&object, start);
        let _ = fs::remove_file(entry_path(dir, &object, start));
        evicted += 1;
    }
    Ok((entries, evicted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::metered::MeteredStore;

    const SEG: &str = "seg/00000000000000000001-00000000000000000001";
    const SEG2: &str = "seg/00000000000000000001-00000000000000000002";

    async fn cache_over(
        dir: &Path,
        capacity: u64,
    ) -> (Arc<DiskCacheStore>, Arc<crate::store::metered::Meter>) {
        let metered = MeteredStore::new(Arc::new(MemoryStore::new()));
        let meter = metered.meter();
        let c = Arc::new(DiskCacheStore::new(Arc::new(metered), capacity));
        c.attach(dir.to_path_buf()).await;
        (c, meter)
    }

    fn data(n: usize, seed: u8) -> Bytes {
        Bytes::from(
            (0..n)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect::<Vec<u8>>(),
        )
    }

    #[tokio::test]
    async fn what_was_written_is_read_back_without_a_request_also_after_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, meter) = cache_over(tmp.path(), 1 << 20).await;
        let d = data(200_000, 1);
        c.put(SEG, d.clone(), PutMode::CreateNew).await.unwrap();
        let gets = meter.snapshot().gets;
        assert_eq!(
            c.get_range(SEG, 70_000..140_001).await.unwrap(),
            d.slice(70_000..140_001)
        );
        assert_eq!(c.get(SEG).await.unwrap().data, d);
        assert_eq!(meter.snapshot().gets, gets);
        // A new process over the same directory (the object store keeps the object).
        let inner = c.inner.clone();
        let again = DiskCacheStore::new(inner, 1 << 20);
        again.attach(tmp.path().to_path_buf()).await;
        assert_eq!(again.get_range(SEG, 5..6).await.unwrap(), d.slice(5..6));
        assert_eq!(meter.snapshot().gets, gets);
        assert_eq!(again.figures().hits, 1);
    }

    #[tokio::test]
    async fn a_read_range_is_kept_and_a_corrupt_entry_is_fetched_again() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, meter) = cache_over(tmp.path(), 1 << 20).await;
        let d = data(300_000, 2);
        c.inner
            .put(SEG, d.clone(), PutMode::CreateNew)
            .await
            .unwrap();
        assert_eq!(
            c.get_range(SEG, 1000..90_000).await.unwrap(),
            d.slice(1000..90_000)
        );
        let gets = meter.snapshot().gets;
        assert_eq!(
            c.get_range(SEG, 2000..3000).await.unwrap(),
            d.slice(2000..3000)
        );
        assert_eq!(
            meter.snapshot().gets,
            gets,
            "a range inside a cached one is a hit"
        );
        // Flip a data byte of the entry: detected, fetched again, never served.
        let path = entry_path(tmp.path(), SEG, 1000);
        let mut raw = fs::read(&path).unwrap();
        let at = raw.len() - 10;
        raw[at] ^= 0xff;
        fs::write(&path, raw).unwrap();
        assert_eq!(
            c.get_range(SEG, 89_000..90_000).await.unwrap(),
            d.slice(89_000..90_000)
        );
        assert_eq!(meter.snapshot().gets, gets + 1);
        assert_eq!(c.figures().corrupt, 1);
        // A torn file (cut short) is dropped when the cache is attached again.
        let path = entry_path(tmp.path(), SEG, 89_000);
        let raw = fs::read(&path).unwrap();
        fs::write(&path, &raw[..raw.len() / 2]).unwrap();
        let again = DiskCacheStore::new(c.inner.clone(), 1 << 20);
        again.attach(tmp.path().to_path_buf()).await;
        assert_eq!(again.figures().entries, 0);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn it_stays_within_its_size_least_recently_used_out() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, meter) = cache_over(tmp.path(), 250_000).await;
        let (a, b) = (data(100_000, 3), data(100_000, 4));
        c.put(SEG, a.clone(), PutMode::CreateNew).await.unwrap();
        c.put(SEG2, b.clone(), PutMode::CreateNew).await.unwrap();
        // Use the first, then add a third object: the second goes.
        c.get_range(SEG, 0..10).await.unwrap();
        let third = "run/00000000000000000001-00000000000000000001";
        c.put(third, data(100_000, 5), PutMode::CreateNew)
            .await
            .unwrap();
        let f = c.figures();
        assert!(f.bytes <= 250_000, "{f:?}");
        assert_eq!(f.evictions, 1);
        let gets = meter.snapshot().gets;
        c.get_range(SEG, 0..10).await.unwrap();
        assert_eq!(meter.snapshot().gets, gets);
        assert_eq!(c.get_range(SEG2, 0..10).await.unwrap(), b.slice(0..10));
        assert_eq!(meter.snapshot().gets, gets + 1);
        // A deleted object leaves the cache.
        c.delete(SEG).await.unwrap();
        assert!(c.get_range(SEG, 0..10).await.is_err());
    }

    #[tokio::test]
    async fn manifests_and_the_lease_are_never_cached() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, meter) = cache_over(tmp.path(), 1 << 20).await;
        for key in ["manifest/00000000000000000001", "lease", "store-id"] {
            c.put(key, data(100, 6), PutMode::Overwrite).await.unwrap();
            let gets = meter.snapshot().gets;
            c.get(key).await.unwrap();
            assert_eq!(meter.snapshot().gets, gets + 1, "{key}");
        }
        assert_eq!(c.figures().entries, 0);
    }

    #[tokio::test]
    async fn an_unwritable_directory_leaves_the_cache_off_and_reads_work() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let (c, _) = cache_over(&file.join("cache"), 1 << 20).await;
        assert!(!c.figures().enabled);
        c.put(SEG, data(10, 7), PutMode::CreateNew).await.unwrap();
        assert_eq!(c.get(SEG).await.unwrap().data, data(10, 7));
    }

    proptest::proptest! {
        /// Any bytes in an entry file: an error or the bytes written, never a panic.
        #[test]
        fn a_damaged_entry_file_is_an_error_never_a_panic(
            flips in proptest::collection::vec((0usize..2000, 1u8..=255), 0..4),
            cut in proptest::option::of(0usize..2000),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let d = data(1500, 8);
            fs::create_dir_all(tmp.path().join(TMP_DIR)).unwrap();
            write_entry(tmp.path(), SEG, 0, &d, true, "etag").unwrap();
            let path = entry_path(tmp.path(), SEG, 0);
            let mut raw = fs::read(&path).unwrap();
            for (at, x) in &flips {
                let n = raw.len();
                raw[at % n] ^= x;
            }
            if let Some(c) = cut {
                raw.truncate(c.min(raw.len()));
            }
            let changed = raw != fs::read(&path).unwrap();
            fs::write(&path, &raw).unwrap();
            match read_entry(&path, 0, d.len() as u64, 0..d.len() as u64) {
                Ok((got, _)) => proptest::prop_assert!(!changed && got == d),
                Err(_) => proptest::prop_assert!(changed),
            }
        }
    }
}
