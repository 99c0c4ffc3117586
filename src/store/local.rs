//! Local directory backend: the embedded default store.
//!
//! Each object is one file `ROOT/<key>`; key components become directories. A write
//! goes to a temporary file in `ROOT/.kvfs-tmp/`, is fsynced, then renamed into
//! place, and the destination directory is fsynced, so an object is either wholly
//! present or absent after a crash of the machine.
//!
//! Conditional writes (`CreateNew`, `IfMatch`) take an exclusive `flock` on
//! `ROOT/.kvfs-lock` around check-and-rename, so they are atomic across processes
//! that share the directory (several `kvfs` commands on one store).
//!
//! **Space.** A local disk fills up. Before it is full, the store says it is *short
//! of space* ([`ObjectStore::short_of_space`]) once the file system has less free
//! than its reserve (5 % of the file system, at least 1 MiB and at most 64 MiB):
//! the engine then refuses writes that add data, so the rest stays for deletes, the
//! log segments already queued, and the checkpoints and cleaning that give space
//! back. A write the disk refuses all the same (`ENOSPC`, `EDQUOT`) is
//! [`StoreError::NoSpace`].
//!
//! The etag of a file is derived from its inode number, size and CRC32C: every
//! replacement is a rename of a fresh file, so it gets a new inode while the old one is
//! still linked.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{check_key, GetResult, ObjectMeta, ObjectStore, PutMode, StoreError, StoreResult};
use crate::process::pid_alive;

const TMP_DIR: &str = ".kvfs-tmp";
const LOCK_FILE: &str = ".kvfs-lock";

/// A store kept in a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: Arc<PathBuf>,
    tmp_counter: Arc<AtomicU64>,
    prepared: Arc<std::sync::Once>,
    space: Arc<SpaceWatch>,
}

/// The least and the most free space a store keeps as its reserve.
const MIN_RESERVE: u64 = 1 << 20;
const MAX_RESERVE: u64 = 64 << 20;
/// How long a measurement of free space is trusted.
const SPACE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Free space of the store's file system against its reserve, measured (`statvfs`)
/// at most every [`SPACE_CHECK_EVERY`] and after every write and delete.
#[derive(Debug, Default)]
struct SpaceWatch {
    short: AtomicBool,
    checked_at: std::sync::Mutex<Option<std::time::Instant>>,
}

impl SpaceWatch {
    fn is_short(&self, root: &Path) -> bool {
        let mut at = self.checked_at.lock().unwrap_or_else(|e| e.into_inner());
        if at.is_some_and(|t| t.elapsed() < SPACE_CHECK_EVERY) {
            return self.short.load(Ordering::Relaxed);
        }
        *at = Some(std::time::Instant::now());
        let short = match free_space(root) {
            Some((free, total)) => free < reserve_for(total),
            None => false,
        };
        let was = self.short.swap(short, Ordering::Relaxed);
        if short != was {
            if short {
                log::warn!(
                    "the file system of {} is nearly full: writes that add data are \
                     refused (ENOSPC) until deletes and cleaning give space back",
                    root.display()
                );
            } else {
                log::info!("{} has free space again", root.display());
            }
        }
        short
    }

    /// Measure again at the next check (after a write or a delete).
    fn changed(&self) {
        *self.checked_at.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// The reserve of a file system of `total` bytes.
fn reserve_for(total: u64) -> u64 {
    (total / 20).clamp(MIN_RESERVE, MAX_RESERVE)
}

/// Bytes available to this process and the size of the file system holding `path`
/// (or, before the store's directory exists, its nearest existing ancestor).
fn free_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = path.ancestors().find(|p| p.exists())?;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory
    // of the right type; statvfs fills it on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialized `st`.
    let st = unsafe { st.assume_init() };
    let unit = st.f_frsize;
    Some((
        st.f_bavail.saturating_mul(unit),
        st.f_blocks.saturating_mul(unit),
    ))
}

fn io_err(path: &Path, e: std::io::Error) -> StoreError {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
            StoreError::NoSpace(format!("{}: {e}", path.display()))
        }
        _ => StoreError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        },
    }
}

impl LocalStore {
    /// A directory store rooted at `root`. Nothing is created until the first write,
    /// so reading a mistyped path creates no directory.
    pub fn open(root: impl AsRef<Path>) -> StoreResult<LocalStore> {
        let root = root.as_ref().to_path_buf();
        if root.exists() && !root.is_dir() {
            return Err(StoreError::Config(format!(
                "{} exists and is not a directory",
                root.display()
            )));
        }
        let root = match fs::canonicalize(&root) {
            Ok(r) => r,
            Err(_) => std::path::absolute(&root).map_err(|e| io_err(&root, e))?,
        };
        Ok(LocalStore {
            root: Arc::new(root),
            tmp_counter: Arc::new(AtomicU64::new(0)),
            prepared: Arc::new(std::sync::Once::new()),
            space: Arc::new(SpaceWatch::default()),
        })
    }

    /// Before the first write of this handle: create the store and temporary
    /// directories, and delete temporary files of writers that no longer run (a
    /// writer killed in the middle of a PUT leaves one behind).
    fn prepare_for_writes(&self) -> StoreResult<()> {
        let tmp = self.root.join(TMP_DIR);
        self.create_dirs(&tmp)?;
        self.prepared.call_once(|| {
            let Ok(entries) = fs::read_dir(&tmp) else {
                return;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                let pid = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
                if pid.is_some_and(|p| !pid_alive(p)) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        });
        Ok(())
    }

    /// The directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> StoreResult<PathBuf> {
        check_key(key)?;
        if key.starts_with(TMP_DIR) || key == LOCK_FILE {
            return Err(StoreError::Config(format!("reserved object key {key:?}")));
        }
        Ok(self.root.join(key))
    }

    async fn blocking<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&LocalStore) -> StoreResult<T> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| StoreError::Transient(format!("local store task failed: {e}")))?
    }

    fn put_sync(&self, key: &str, data: &[u8], mode: &PutMode) -> StoreResult<String> {
        let dest = self.path_of(key)?;
        let parent = dest
            .parent()
            .ok_or_else(|| StoreError::Config(format!("invalid object key {key:?}")))?
            .to_path_buf();
        self.prepare_for_writes()?;
        self.create_dirs(&parent)?;
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join(TMP_DIR).join(format!(
            "{}-{}-{}",
            std::process::id(),
            n,
            rand::random::<u32>()
        ));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| io_err(&tmp, e))?;
            f.write_all(data).map_err(|e| io_err(&tmp, e))?;
            f.sync_all().map_err(|e| io_err(&tmp, e))?;
            let ino = f.metadata().map_err(|e| io_err(&tmp, e))?.ino();
            let etag = etag_of(ino, data);
            match mode {
                PutMode::Overwrite => {
                    fs::rename(&tmp, &dest).map_err(|e| io_err(&dest, e))?;
                }
                PutMode::CreateNew | PutMode::IfMatch(_) => {
                    let _lock = self.lock()?;
                    let current = match File::open(&dest) {
                        Ok(mut f) => Some(read_etag(&mut f, &dest)?),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                        Err(e) => return Err(io_err(&dest, e)),
                    };
                    let ok = match (mode, &current) {
                        (PutMode::CreateNew, None) => true,
                        (PutMode::IfMatch(want), Some(have)) => want == have,
                        _ => false,
                    };
                    if !ok {
                        return Err(StoreError::PreconditionFailed(key.to_string()));
                    }
                    fs::rename(&tmp, &dest).map_err(|e| io_err(&dest, e))?;
                }
            }
            sync_dir(&parent)?;
            Ok(etag)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Create `dir` and its missing ancestors, fsyncing each new entry's parent.
    fn create_dirs(&self, dir: &Path) -> StoreResult<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if dir == &**self.root {
            fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            if parent.starts_with(&*self.root) && parent != dir {
                self.create_dirs(parent)?;
            }
        }
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(io_err(dir, e)),
        }
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }

    fn lock(&self) -> StoreResult<FileLock> {
        let path = self.root.join(LOCK_FILE);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        // SAFETY: flock on a valid open descriptor; the lock is released when `f` closes.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(io_err(&path, std::io::Error::last_os_error()));
        }
        Ok(FileLock { _file: f })
    }

    fn list_sync(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        // Start the walk at the deepest directory the prefix names.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if dir_part.is_empty() {
            self.root.to_path_buf()
        } else {
            self.root.join(dir_part)
        };
        let mut out = Vec::new();
        if start.is_dir() {
            self.walk(&start, prefix, &mut out)?;
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn walk(&self, dir: &Path, prefix: &str, out: &mut Vec<ObjectMeta>) -> StoreResult<()> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_err(dir, e))?;
            let path = entry.path();
            let rel = match path.strip_prefix(&*self.root) {
                Ok(r) => r.to_string_lossy().to_string(),
                Err(_) => continue,
            };
            if rel == TMP_DIR || rel == LOCK_FILE {
                continue;
            }
            let ft = entry.file_type().map_err(|e| io_err(&path, e))?;
            if ft.is_dir() {
                let as_dir = format!("{rel}/");
                if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                    self.walk(&path, prefix, out)?;
                }
            } else if ft.is_file() && rel.starts_with(prefix) {
                let size = entry.metadata().map_err(|e| io_err(&path, e))?.len();
                out.push(ObjectMeta {
                    key: rel,
                    size,
                    stored_size: size,
                });
            }
        }
        Ok(())
    }
}

struct FileLock {
    _file: File,
}

fn etag_of(ino: u64, data: &[u8]) -> String {
    format!("{ino:x}-{:x}-{:08x}", data.len(), crc32c::crc32c(data))
}

fn read_etag(f: &mut File, path: &Path) -> StoreResult<String> {
    let ino = f.metadata().map_err(|e| io_err(path, e))?.ino();
    let mut data = Vec::new();
    f.read_to_end(&mut data).map_err(|e| io_err(path, e))?;
    Ok(etag_of(ino, &data))
}

fn sync_dir(dir: &Path) -> StoreResult<()> {
    let f = File::open(dir).map_err(|e| io_err(dir, e))?;
    f.sync_all().map_err(|e| io_err(dir, e))
}

fn not_found_or(path: &Path, key: &str, e: std::io::Error) -> StoreError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StoreError::NotFound(key.to_string())
    } else {
        io_err(path, e)
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> StoreResult<String> {
        let key = key.to_string();
        let r = self.blocking(move |s| s.put_sync(&key, &data, &mode)).await;
        self.space.changed();
        r
    }

    async fn get(&self, key: &str) -> StoreResult<GetResult> {
        let key = key.to_string();
        self.blocking(move |s| {
            let path = s.path_of(&key)?;
            let mut f = File::open(&path).map_err(|e| not_found_or(&path, &key, e))?;
            let ino = f.metadata().map_err(|e| io_err(&path, e))?.ino();
            let mut data = Vec::new();
            f.read_to_end(&mut data).map_err(|e| io_err(&path, e))?;
            let etag = etag_of(ino, &data);
            Ok(GetResult {
                data: Bytes::from(data),
                etag,
            })
        })
        .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        let key = key.to_string();
        self.blocking(move |s| {
            let path = s.path_of(&key)?;
            let mut f = File::open(&path).map_err(|e| not_found_or(&path, &key, e))?;
            let len = f.metadata().map_err(|e| io_err(&path, e))?.len();
            if range.start > range.end || range.end > len {
                return Err(StoreError::InvalidRange { key, range });
            }
            f.seek(SeekFrom::Start(range.start))
                .map_err(|e| io_err(&path, e))?;
            let mut buf = vec![0u8; (range.end - range.start) as usize];
            f.read_exact(&mut buf).map_err(|e| io_err(&path, e))?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        let prefix = prefix.to_string();
        self.blocking(move |s| s.list_sync(&prefix)).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let key = key.to_string();
        self.blocking(move |s| {
            let path = s.path_of(&key)?;
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_err(&path, e)),
            }
            if let Some(parent) = path.parent() {
                sync_dir(parent)?;
            }
            Ok(())
        })
        .await?;
        self.space.changed();
        Ok(())
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn short_of_space(&self) -> bool {
        self.space.is_short(&self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_or_quota_is_no_space() {
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let e = io_err(Path::new("/x"), std::io::Error::from_raw_os_error(errno));
            assert!(matches!(e, StoreError::NoSpace(_)), "{e:?}");
        }
        let e = io_err(
            Path::new("/x"),
            std::io::Error::from_raw_os_error(libc::EIO),
        );
        assert!(matches!(e, StoreError::Io { .. }), "{e:?}");
    }

    #[test]
    fn the_reserve_is_a_twentieth_within_bounds() {
        assert_eq!(reserve_for(10 << 20), MIN_RESERVE);
        assert_eq!(reserve_for(40 << 20), 2 << 20);
        assert_eq!(reserve_for(1 << 40), MAX_RESERVE);
    }

    #[tokio::test]
    async fn reading_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("typo");
        let s = LocalStore::open(&root).unwrap();
        assert!(matches!(s.get("a").await, Err(StoreError::NotFound(_))));
        assert!(s.list("").await.unwrap().is_empty());
        assert!(!root.exists());
        s.put("a/b", Bytes::from_static(b"x"), PutMode::CreateNew)
            .await
            .unwrap();
        assert_eq!(s.list("").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn temporary_files_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join(TMP_DIR);
        fs::create_dir_all(&tmp).unwrap();
        // pid 0 never names a running process; our own pid does.
        fs::write(tmp.join("0-1-2"), b"left by a killed writer").unwrap();
        let mine = format!("{}-99-1", std::process::id());
        fs::write(tmp.join(&mine), b"in progress").unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        s.put("k", Bytes::from_static(b"v"), PutMode::Overwrite)
            .await
            .unwrap();
        assert!(!tmp.join("0-1-2").exists());
        assert!(tmp.join(&mine).exists());
    }
}
