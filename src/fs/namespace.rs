//! The namespace: files, directories, symlinks and special files on top of the
//! engine, addressed by inode number as a file-system adapter needs, with no FUSE
//! types. The records are laid out as `keys` describes; the locks are in `locks`,
//! the state of open files in `file`, reading and writing content in `data`.
//!
//! Every change is one atomic engine batch, built and appended while the change holds
//! its inode locks, through [`Namespace::change`] (module `change`): waiting for
//! unflushed memory happens between attempts, with no lock held, and an attempt
//! cannot await. So no namespace lock is ever held across an object-store request or
//! backpressure, and renaming a directory writes one entry whatever lies below it.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use super::attr::{Attr, Dirent, Kind, Super, SYMLINK_MAX};
use super::change::Step;
use super::error::{FsError, FsResult};
use super::file::FileState;
use super::keys::{
    all_dirents_prefix, check_name, dirent_key, dirent_name, dirent_prefix, inode_key, orphan_key,
    NameError, FIRST_INO, LAYOUT1_SUPER_KEY, ROOT_INO, SUPER_KEY,
};
use super::locks::Locks;
use crate::db::{BatchOp, Db, KeyInfo};

/// Inode numbers reserved by one superblock write.
const INO_CHUNK: u64 = 1024;
/// Largest link count of a file.
const LINK_MAX: u32 = 65_000;

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub attr: Attr,
}

/// Attribute changes of a `setattr`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub perm: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}

/// How `rename` treats an existing destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    /// Fail with `Exists` if the destination exists.
    pub noreplace: bool,
    /// Swap source and destination atomically; both must exist.
    pub exchange: bool,
}

/// When reading a file updates its access time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AtimeMode {
    /// The first read after the file changed, or a day after the last update (as
    /// Linux's default `relatime`): at most one small record per file and day.
    #[default]
    Relatime,
    /// Never.
    Noatime,
    /// Every read (a record at each close of a read file).
    Strictatime,
}

/// File-system totals for `statfs`.
#[derive(Clone, Copy, Debug)]
pub struct FsStats {
    pub files: u64,
    pub live_bytes: u64,
}

pub(super) type SharedFile = Arc<Mutex<FileState>>;

struct InoRange {
    next: u64,
    /// Numbers below this are reserved by the stored superblock.
    until: u64,
}

/// The file system's core: see the module documentation.
pub struct Namespace {
    pub(super) db: Db,
    pub(super) owner: (u32, u32),
    pub(super) mounted_at: SystemTime,
    pub(super) locks: Locks,
    pub(super) files: Mutex<HashMap<u64, SharedFile>>,
    inos: Mutex<InoRange>,
    pub(super) atime: AtimeMode,
    /// Bytes all open files' states buffer (dirty ranges, inline content).
    pub(super) buffers: Arc<AtomicUsize>,
    /// The bound on `buffers` that writes keep to (see `make_room_for_buffers`).
    pub(super) buffer_limit: usize,
    /// Reloads a following namespace has applied (the writer's changes were not
    /// told key by key: anything may have changed), and the count each recently
    /// opened inode was opened at (see `keep_page_cache`).
    pub(super) reloads: AtomicU64,
    pub(super) opened_at: Mutex<lru::LruCache<u64, u64>>,
    /// Inodes a write covered a page of only in part since their last open for
    /// reading: the kernel holds such pages without their other bytes, and reads
    /// them back a page at a time unless they are dropped (see `keep_page_cache`).
    pub(super) partly_written: Mutex<lru::LruCache<u64, ()>>,
    /// A pause a test arms in the next read of inline content (`test-hooks`).
    #[cfg(feature = "test-hooks")]
    pub(super) inline_read_pause: Mutex<Option<Arc<ReadPause>>>,
}

/// A read of inline content stopped between planning and fetching, for a test to
/// change the file meanwhile (`test-hooks` only; see
/// [`Namespace::pause_next_inline_read`]).
#[cfg(feature = "test-hooks")]
#[derive(Debug, Default)]
pub struct ReadPause {
    /// Notified when the read reached the pause.
    pub reached: tokio::sync::Notify,
    /// The read waits for this.
    pub resume: tokio::sync::Notify,
}

/// Inodes a following namespace remembers the last open of, and a writer the
/// partly written pages of (see `Namespace::keep_page_cache`); one forgotten only
/// costs its page cache once, or a few more reads.
const OPENS_REMEMBERED: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(1 << 16) {
    Some(n) => n,
    None => panic!("OPENS_REMEMBERED is not zero"),
};

/// Default bound on the bytes open files buffer before they are committed.
pub const DEFAULT_FILE_BUFFER_BYTES: usize = 128 << 20;

pub(super) fn name_err(e: NameError) -> FsError {
    match e {
        NameError::Invalid => FsError::Invalid("invalid file name"),
        NameError::TooLong => FsError::NameTooLong,
    }
}

pub(super) fn now() -> SystemTime {
    SystemTime::now()
}

/// A locked open-file state; releasing it counts the state's buffers.
pub(super) struct FileGuard<'a>(MutexGuard<'a, FileState>);

impl std::ops::Deref for FileGuard<'_> {
    type Target = FileState;
    fn deref(&self) -> &FileState {
        &self.0
    }
}

impl std::ops::DerefMut for FileGuard<'_> {
    fn deref_mut(&mut self) -> &mut FileState {
        &mut self.0
    }
}

impl Drop for FileGuard<'_> {
    fn drop(&mut self) {
        self.0.account();
    }
}

pub(super) fn lock_file(s: &SharedFile) -> FileGuard<'_> {
    FileGuard(s.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The operation that stores `attr` as the inode's record, keeping its value.
pub(super) fn attr_op(attr: &Attr) -> BatchOp {
    let key = inode_key(attr.ino);
    match attr.kind {
        // These may have a value (content or target) to keep.
        Kind::File | Kind::Symlink => BatchOp::Link {
            source: key.clone(),
            key,
            meta: Some(attr.encode()),
        },
        _ => BatchOp::PutMeta {
            key,
            meta: attr.encode(),
            value: Vec::new(),
        },
    }
}

pub(super) fn ops_len(ops: &[BatchOp]) -> usize {
    ops.iter().map(BatchOp::encoded_len).sum()
}

/// An inode a change rewrites: its stored attributes, edited by the change, and the
/// lock of its open-file state if it has one (so a commit cannot interleave).
pub(super) struct Touched<'a> {
    pub attr: Attr,
    state: Option<FileGuard<'a>>,
    /// The change sets the mode ([`Touched::set_perm`]).
    perm_set: bool,
}

impl Touched<'_> {
    pub fn op(&self) -> BatchOp {
        attr_op(&self.attr)
    }

    pub fn opens(&self) -> u32 {
        self.state.as_ref().map_or(0, |s| s.opens)
    }

    /// The mode as it is now (with a `chmod` not saved yet).
    pub fn current_perm(&self) -> u16 {
        self.state
            .as_ref()
            .map_or(self.attr.perm, |st| st.attr.perm)
    }

    /// The change sets the mode to `perm`.
    pub fn set_perm(&mut self, perm: u16) {
        self.attr.perm = perm;
        self.perm_set = true;
    }

    /// The change was written: the open state takes the new stored attributes. A
    /// mode the change did not set stays as the state has it (a `chmod` waiting to
    /// be saved with unsaved writes).
    pub fn written(&mut self) {
        if let Some(st) = self.state.as_mut() {
            if self.perm_set {
                st.attr.perm = self.attr.perm;
            }
            st.stored = self.attr;
            st.attr.nlink = self.attr.nlink;
            st.attr.ctime = self.attr.ctime;
            st.attr.parent = self.attr.parent;
        }
    }
}

/// One attempt of a rename, as its steps build it.
struct Rename<'a> {
    /// The entry that moves.
    s: Dirent,
    /// Source and destination are different directories.
    across: bool,
    at: SystemTime,
    /// The source's and target's inodes, in inode order, with their states locked.
    touched: Vec<(u64, Touched<'a>)>,
    ops: Vec<BatchOp>,
    /// Change of the subdirectory counts of the source and destination parents.
    src_links: i64,
    dst_links: i64,
    /// An inode that lost its last name and is purged once the batch is written.
    purge: Option<u64>,
    /// The inode a plain rename replaced: its record is written (or deleted) already.
    replaced: Option<u64>,
}

/// The touched inode `ino` of a rename (borrowing only that field of [`Rename`], so
/// its other fields stay usable alongside).
fn touched_of<'x, 'a>(touched: &'x mut [(u64, Touched<'a>)], ino: u64) -> &'x mut Touched<'a> {
    let i = touched.iter().position(|(i, _)| *i == ino).unwrap_or(0);
    &mut touched[i].1
}

impl Namespace {
    /// The namespace of an open engine. Files are created by default for `owner`
    /// (uid, gid). A writable namespace first deletes what orphans (files unlinked
    /// while open) a previous run left behind.
    pub async fn new(db: Db, owner: (u32, u32)) -> FsResult<Namespace> {
        let next = match db.info(SUPER_KEY).and_then(|i| i.meta) {
            Some(m) => {
                Super::decode(&m)
                    .map_err(|source| FsError::Corrupt {
                        what: "superblock".into(),
                        source,
                    })?
                    .next_ino
            }
            None => {
                check_layout(&db)?;
                FIRST_INO
            }
        };
        let ns = Namespace {
            db,
            owner,
            mounted_at: now(),
            locks: Locks::default(),
            files: Mutex::new(HashMap::new()),
            inos: Mutex::new(InoRange {
                next: next.max(FIRST_INO),
                until: next.max(FIRST_INO),
            }),
            atime: AtimeMode::default(),
            buffers: Arc::new(AtomicUsize::new(0)),
            buffer_limit: DEFAULT_FILE_BUFFER_BYTES,
            reloads: AtomicU64::new(0),
            opened_at: Mutex::new(lru::LruCache::new(OPENS_REMEMBERED)),
            partly_written: Mutex::new(lru::LruCache::new(OPENS_REMEMBERED)),
            #[cfg(feature = "test-hooks")]
            inline_read_pause: Mutex::new(None),
        };
        if !ns.db.is_read_only() {
            ns.purge_orphans().await?;
        }
        Ok(ns)
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Choose when reads update access times (before the namespace is shared).
    pub fn set_atime_mode(&mut self, mode: AtimeMode) {
        self.atime = mode;
    }

    /// Bound the bytes that open files buffer in memory, all together (before the
    /// namespace is shared; [`DEFAULT_FILE_BUFFER_BYTES`] otherwise).
    pub fn set_file_buffer_limit(&mut self, bytes: usize) {
        self.buffer_limit = bytes;
    }

    /// Stop the next read of inline content that is not in memory after it planned
    /// and before it fetches, until the returned pause's `resume` is notified
    /// (`test-hooks` only).
    #[cfg(feature = "test-hooks")]
    pub fn pause_next_inline_read(&self) -> Arc<ReadPause> {
        let pause = Arc::new(ReadPause::default());
        *self
            .inline_read_pause
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(pause.clone());
        pause
    }

    /// Bytes that open files buffer in memory now (dirty ranges, inline content).
    pub fn file_buffer_bytes(&self) -> usize {
        self.buffers.load(Ordering::Relaxed)
    }

    pub(super) fn writable(&self) -> FsResult<()> {
        if self.db.is_read_only() {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    pub(super) fn files(&self) -> MutexGuard<'_, HashMap<u64, SharedFile>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn state_of(&self, ino: u64) -> Option<SharedFile> {
        self.files().get(&ino).cloned()
    }

    /// The inode's record as stored (the root has one before anything is written).
    pub(super) fn stored_attr(&self, ino: u64) -> FsResult<Option<Attr>> {
        match self.db.info(&inode_key(ino)) {
            Some(info) => decode_attr(ino, &info).map(Some),
            None if ino == ROOT_INO => Ok(Some(Attr::new(
                ROOT_INO,
                Kind::Dir,
                0o755,
                self.owner,
                self.mounted_at,
            ))),
            None => Ok(None),
        }
    }

    /// The inode's attributes now: an open file's state wins over its record.
    pub(super) fn attr_now(&self, ino: u64) -> FsResult<Option<Attr>> {
        if let Some(state) = self.state_of(ino) {
            return Ok(Some(lock_file(&state).attr));
        }
        self.stored_attr(ino)
    }

    fn dir_attr(&self, ino: u64) -> FsResult<Attr> {
        let attr = self.stored_attr(ino)?.ok_or(FsError::NotFound)?;
        if attr.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(attr)
    }

    /// The entry `name` of directory `parent`.
    pub(super) fn entry(&self, parent: u64, name: &[u8]) -> FsResult<Option<Dirent>> {
        match self.db.info(&dirent_key(parent, name)).and_then(|i| i.meta) {
            Some(m) => Dirent::decode(&m)
                .map(Some)
                .map_err(|source| FsError::Corrupt {
                    what: format!("entry {:?}", String::from_utf8_lossy(name)),
                    source,
                }),
            None => Ok(None),
        }
    }

    fn has_entries(&self, dir: u64) -> bool {
        !self
            .db
            .scan_info_prefix(&dirent_prefix(dir), None, 1)
            .is_empty()
    }

    /// Lock `ino`'s open state (if any) and read its stored attributes. The caller
    /// holds the inode lock of `ino`.
    pub(super) fn touch<'a>(
        &self,
        ino: u64,
        state: Option<&'a SharedFile>,
    ) -> FsResult<Touched<'a>> {
        match state {
            Some(s) => {
                let st = lock_file(s);
                Ok(Touched {
                    attr: st.stored,
                    state: Some(st),
                    perm_set: false,
                })
            }
            None => Ok(Touched {
                attr: self.stored_attr(ino)?.ok_or(FsError::NotFound)?,
                state: None,
                perm_set: false,
            }),
        }
    }

    /// A fresh inode number (writing a superblock that reserves more when needed).
    async fn alloc_ino(&self) -> FsResult<u64> {
        self.change(|batch| {
            let mut r = self.inos.lock().unwrap_or_else(|e| e.into_inner());
            if r.next >= r.until {
                let until = r.next + INO_CHUNK;
                let op = BatchOp::PutMeta {
                    key: SUPER_KEY.to_vec(),
                    meta: Super { next_ino: until }.encode(),
                    value: Vec::new(),
                };
                if !batch.append(std::slice::from_ref(&op))? {
                    return Ok(Step::Retry);
                }
                r.until = until;
            }
            r.next += 1;
            Ok(Step::Done(r.next - 1))
        })
        .await
    }

    /// Look up `name` in directory `parent`.
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        check_name(name).map_err(name_err)?;
        self.dir_attr(parent)?;
        let d = self.entry(parent, name)?.ok_or(FsError::NotFound)?;
        self.attr_now(d.ino)?.ok_or(FsError::NotFound)
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        self.attr_now(ino)?.ok_or(FsError::NotFound)
    }

    /// The kernel dropped references to `ino` (inode numbers are stored, so nothing
    /// is kept per reference).
    pub fn forget(&self, _ino: u64, _n: u64) {}

    /// Every entry of directory `ino` (without `.` and `..`), in name order.
    pub async fn readdir(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
        Ok(self.readdir_page(ino, None, usize::MAX)?.0)
    }

    /// At most `limit` entries of directory `ino` after the name `after`, in name
    /// order (a page of a listing), and the last name looked at: `None` once the
    /// listing reached its end. Entries whose inode is gone meanwhile are left out,
    /// so a page may hold fewer than `limit` before the end.
    pub fn readdir_page(
        &self,
        ino: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> FsResult<(Vec<DirEntry>, Option<Vec<u8>>)> {
        self.dir_attr(ino)?;
        let rows = self.entries(ino, after, limit)?;
        let last = (rows.len() >= limit)
            .then(|| rows.last().map(|(name, _)| name.clone()))
            .flatten();
        let mut out = Vec::with_capacity(rows.len());
        for (name, d) in rows {
            if let Some(attr) = self.attr_now(d.ino)? {
                out.push(DirEntry { name, attr });
            }
        }
        Ok((out, last))
    }

    /// Entries of directory `dir` after `after`, in name order, at most `limit`.
    pub(super) fn entries(
        &self,
        dir: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> FsResult<Vec<(Vec<u8>, Dirent)>> {
        let after_key = after.map(|a| dirent_key(dir, a));
        let rows = self
            .db
            .scan_info_prefix(&dirent_prefix(dir), after_key.as_deref(), limit);
        let mut out = Vec::with_capacity(rows.len());
        for (key, info) in rows {
            let Some(name) = dirent_name(dir, &key) else {
                continue;
            };
            let d = info
                .meta
                .as_deref()
                .ok_or(FsError::Invalid("directory entry without record"))
                .and_then(|m| {
                    Dirent::decode(m).map_err(|source| FsError::Corrupt {
                        what: format!("entry {:?}", String::from_utf8_lossy(name)),
                        source,
                    })
                })?;
            out.push((name.to_vec(), d));
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    async fn make(
        &self,
        parent: u64,
        name: &[u8],
        kind: Kind,
        perm: u16,
        owner: (u32, u32),
        rdev: u64,
        value: Vec<u8>,
    ) -> FsResult<Attr> {
        self.writable()?;
        check_name(name).map_err(name_err)?;
        self.dir_attr(parent)?;
        if self.entry(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        let ino = self.alloc_ino().await?;
        self.change(|batch| {
            let _held = self.locks.take(false, &[parent]);
            let mut dir = self.dir_attr(parent)?;
            if self.entry(parent, name)?.is_some() {
                return Err(FsError::Exists);
            }
            let t = now();
            let mut attr = Attr::new(ino, kind, perm, owner, t);
            attr.rdev = rdev;
            // A set-group-ID directory gives its group to what is created in it,
            // and its set-group-ID bit to subdirectories.
            if dir.perm & 0o2000 != 0 {
                attr.gid = dir.gid;
                if kind == Kind::Dir {
                    attr.perm |= 0o2000;
                }
            }
            attr.size = value.len() as u64;
            if kind == Kind::Dir {
                attr.parent = parent;
                dir.nlink += 1;
            }
            dir.mtime = t;
            dir.ctime = t;
            let ops = vec![
                BatchOp::PutMeta {
                    key: inode_key(ino),
                    meta: attr.encode(),
                    value: value.clone(),
                },
                BatchOp::PutMeta {
                    key: dirent_key(parent, name),
                    meta: Dirent { ino, kind }.encode(),
                    value: Vec::new(),
                },
                attr_op(&dir),
            ];
            if !batch.append(&ops)? {
                return Ok(Step::Retry);
            }
            Ok(Step::Done(attr))
        })
        .await
    }

    pub async fn mkdir(
        &self,
        parent: u64,
        name: &[u8],
        perm: u16,
        owner: (u32, u32),
    ) -> FsResult<Attr> {
        self.make(parent, name, Kind::Dir, perm, owner, 0, Vec::new())
            .await
    }

    /// Create an empty regular file (fails if the name exists).
    pub async fn create(
        &self,
        parent: u64,
        name: &[u8],
        perm: u16,
        owner: (u32, u32),
    ) -> FsResult<Attr> {
        self.make(parent, name, Kind::File, perm, owner, 0, Vec::new())
            .await
    }

    /// Create a FIFO, socket or device node.
    pub async fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        kind: Kind,
        perm: u16,
        rdev: u64,
        owner: (u32, u32),
    ) -> FsResult<Attr> {
        match kind {
            Kind::File => self.create(parent, name, perm, owner).await,
            Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev => {
                self.make(parent, name, kind, perm, owner, rdev, Vec::new())
                    .await
            }
            Kind::Dir | Kind::Symlink => Err(FsError::Invalid("mknod of this kind")),
        }
    }

    pub async fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        owner: (u32, u32),
    ) -> FsResult<Attr> {
        if target.is_empty() || target.len() as u64 > SYMLINK_MAX {
            return Err(FsError::Invalid("symlink target length"));
        }
        self.make(
            parent,
            name,
            Kind::Symlink,
            0o777,
            owner,
            0,
            target.to_vec(),
        )
        .await
    }

    pub async fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let attr = self.attr_now(ino)?.ok_or(FsError::NotFound)?;
        if attr.kind != Kind::Symlink {
            return Err(FsError::Invalid("not a symlink"));
        }
        Ok(self
            .db
            .get(&inode_key(ino))
            .await?
            .ok_or(FsError::NotFound)?
            .to_vec())
    }

    /// One name of `t` goes away: the operations that record it, and whether its
    /// content must be purged once the batch is written.
    fn drop_name(&self, t: &mut Touched<'_>, at: SystemTime, ops: &mut Vec<BatchOp>) -> bool {
        t.attr.nlink = t.attr.nlink.saturating_sub(1);
        t.attr.ctime = at;
        let ino = t.attr.ino;
        if t.attr.nlink > 0 {
            ops.push(t.op());
            return false;
        }
        if t.opens() > 0 || t.attr.extents {
            // Kept until last close (or purged right after this batch): an orphan
            // record makes sure a crash before then leaks nothing.
            ops.push(t.op());
            ops.push(BatchOp::Put(orphan_key(ino), Vec::new()));
            return t.opens() == 0;
        }
        ops.push(BatchOp::Delete(inode_key(ino)));
        self.xattr_deletes(ino, ops);
        false
    }

    /// `kvfs fsck --repair`: remove every directory entry whose inode record is
    /// gone (the repair deleted it, its value being lost). Such a name neither lists
    /// nor opens, but would keep its name from being used again. Returns the names
    /// removed, as (directory inode, name, inode).
    pub async fn remove_dangling_entries(&self) -> FsResult<Vec<(u64, Vec<u8>, u64)>> {
        self.writable()?;
        let mut found = Vec::new();
        for (k, info) in self
            .db
            .scan_info_prefix(&all_dirents_prefix(), None, usize::MAX)
        {
            let super::keys::KeyOf::Dirent { parent, name } = super::keys::key_of(&k) else {
                continue;
            };
            let Some(d) = info.meta.as_deref().and_then(|m| Dirent::decode(m).ok()) else {
                continue;
            };
            if self.state_of(d.ino).is_none() && self.stored_attr(d.ino)?.is_none() {
                found.push((parent, name.to_vec(), d));
            }
        }
        let mut removed = Vec::new();
        for (parent, name, d) in found {
            let gone = self.change(|batch| {
                let _held = self.locks.take(false, &[parent, d.ino]);
                if self.entry(parent, &name)? != Some(d) {
                    return Ok(Step::Done(false));
                }
                let mut ops = vec![BatchOp::Delete(dirent_key(parent, &name))];
                if let Some(mut dir) = self.stored_attr(parent)? {
                    let at = now();
                    dir.mtime = at;
                    dir.ctime = at;
                    if d.kind == Kind::Dir {
                        dir.nlink = dir.nlink.saturating_sub(1);
                    }
                    ops.push(attr_op(&dir));
                }
                if !batch.append(&ops)? {
                    return Ok(Step::Retry);
                }
                Ok(Step::Done(true))
            });
            if gone.await? {
                removed.push((parent, name, d.ino));
            }
        }
        Ok(removed)
    }

    pub async fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.writable()?;
        check_name(name).map_err(name_err)?;
        let (ino, purge) = self
            .change(|batch| {
                let d = self.entry(parent, name)?.ok_or(FsError::NotFound)?;
                if d.kind == Kind::Dir {
                    return Err(FsError::IsDir);
                }
                let _held = self.locks.take(false, &[parent, d.ino]);
                if self.entry(parent, name)? != Some(d) {
                    return Ok(Step::Retry);
                }
                let mut dir = self.dir_attr(parent)?;
                let state = self.state_of(d.ino);
                let mut t = self.touch(d.ino, state.as_ref())?;
                let at = now();
                dir.mtime = at;
                dir.ctime = at;
                let mut ops = vec![BatchOp::Delete(dirent_key(parent, name)), attr_op(&dir)];
                let purge = self.drop_name(&mut t, at, &mut ops);
                if !batch.append(&ops)? {
                    return Ok(Step::Retry);
                }
                t.written();
                Ok(Step::Done((d.ino, purge)))
            })
            .await?;
        if purge {
            self.purge(ino).await?;
        }
        Ok(())
    }

    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.writable()?;
        check_name(name).map_err(name_err)?;
        self.change(|batch| {
            let d = self.entry(parent, name)?.ok_or(FsError::NotFound)?;
            if d.kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            let _held = self.locks.take(false, &[parent, d.ino]);
            if self.entry(parent, name)? != Some(d) {
                return Ok(Step::Retry);
            }
            if self.has_entries(d.ino) {
                return Err(FsError::NotEmpty);
            }
            let mut dir = self.dir_attr(parent)?;
            let at = now();
            dir.nlink = dir.nlink.saturating_sub(1);
            dir.mtime = at;
            dir.ctime = at;
            let mut ops = vec![
                BatchOp::Delete(dirent_key(parent, name)),
                BatchOp::Delete(inode_key(d.ino)),
                attr_op(&dir),
            ];
            self.xattr_deletes(d.ino, &mut ops);
            if !batch.append(&ops)? {
                return Ok(Step::Retry);
            }
            Ok(Step::Done(()))
        })
        .await
    }

    /// Whether directory `ino` is `ancestor` or lies below it.
    fn is_within(&self, mut ino: u64, ancestor: u64) -> FsResult<bool> {
        for _ in 0..1_000_000 {
            if ino == ancestor {
                return Ok(true);
            }
            if ino == ROOT_INO {
                return Ok(false);
            }
            ino = self.dir_attr(ino)?.parent;
        }
        Err(FsError::Invalid("directory parents form a cycle"))
    }

    /// Move the entry `name` of `parent` to `new_name` of `new_parent` (replacing
    /// what is there, or swapping the two with `exchange`), as one batch.
    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> FsResult<()> {
        self.writable()?;
        if flags.noreplace && flags.exchange {
            return Err(FsError::Invalid("RENAME_NOREPLACE with RENAME_EXCHANGE"));
        }
        check_name(name).map_err(name_err)?;
        check_name(new_name).map_err(name_err)?;
        let from = (parent, name);
        let to = (new_parent, new_name);
        let purge = self
            .change(|batch| {
                let s = self.entry(parent, name)?.ok_or(FsError::NotFound)?;
                let t = self.entry(new_parent, new_name)?;
                if from == to {
                    return Ok(Step::Done(None));
                }
                let across = parent != new_parent;
                let moves_dir = across
                    && (s.kind == Kind::Dir
                        || (flags.exchange && t.is_some_and(|t| t.kind == Kind::Dir)));
                let mut inos = vec![parent, new_parent, s.ino];
                inos.extend(t.map(|t| t.ino));
                let _held = self.locks.take(moves_dir, &inos);
                if self.entry(parent, name)? != Some(s) || self.entry(new_parent, new_name)? != t {
                    return Ok(Step::Retry);
                }
                if s.kind == Kind::Dir && across && self.is_within(new_parent, s.ino)? {
                    return Err(FsError::Invalid("cannot move a directory into itself"));
                }
                let states = self.rename_states(s, t);
                let mut m = Rename {
                    s,
                    across,
                    at: now(),
                    touched: self.rename_touch(&states)?,
                    ops: Vec::new(),
                    src_links: 0,
                    dst_links: 0,
                    purge: None,
                    replaced: None,
                };
                let go_on = if flags.exchange {
                    let t = t.ok_or(FsError::NotFound)?;
                    self.rename_exchange(&mut m, from, to, t)?;
                    true
                } else {
                    self.rename_replace(&mut m, from, to, t, flags.noreplace)?
                };
                if !go_on {
                    return Ok(Step::Done(None));
                }
                self.rename_parents(&mut m, parent, new_parent)?;
                if !batch.append(&m.ops)? {
                    return Ok(Step::Retry);
                }
                for (_, t) in m.touched.iter_mut() {
                    t.written();
                }
                Ok(Step::Done(m.purge))
            })
            .await?;
        if let Some(ino) = purge {
            self.purge(ino).await?;
        }
        Ok(())
    }

    /// The open states of a rename's source and target inodes, in inode order (the
    /// order their locks are taken in).
    fn rename_states(&self, s: Dirent, t: Option<Dirent>) -> Vec<(u64, Option<SharedFile>)> {
        let mut ids = vec![s.ino];
        if let Some(t) = t.filter(|t| t.ino != s.ino) {
            ids.push(t.ino);
        }
        ids.sort_unstable();
        ids.into_iter().map(|i| (i, self.state_of(i))).collect()
    }

    /// Lock the states and read the attributes of a rename's inodes.
    fn rename_touch<'a>(
        &self,
        states: &'a [(u64, Option<SharedFile>)],
    ) -> FsResult<Vec<(u64, Touched<'a>)>> {
        states
            .iter()
            .map(|(ino, st)| Ok((*ino, self.touch(*ino, st.as_ref())?)))
            .collect()
    }

    /// `RENAME_EXCHANGE`: the two entries swap inodes; a directory moved to the other
    /// parent takes it as its `..`.
    fn rename_exchange(
        &self,
        m: &mut Rename<'_>,
        (parent, name): (u64, &[u8]),
        (new_parent, new_name): (u64, &[u8]),
        t: Dirent,
    ) -> FsResult<()> {
        if t.kind == Kind::Dir && m.across && self.is_within(parent, t.ino)? {
            return Err(FsError::Invalid("cannot move a directory into itself"));
        }
        m.ops.push(dirent_op(parent, name, t));
        m.ops.push(dirent_op(new_parent, new_name, m.s));
        if t.ino == m.s.ino {
            return Ok(());
        }
        for (ino, to) in [(m.s.ino, new_parent), (t.ino, parent)] {
            let a = &mut touched_of(&mut m.touched, ino).attr;
            a.ctime = m.at;
            if a.kind == Kind::Dir && m.across {
                a.parent = to;
                // A directory leaving a parent takes one link from it.
                let toward_new: i64 = if to == new_parent { 1 } else { -1 };
                m.src_links -= toward_new;
                m.dst_links += toward_new;
            }
        }
        Ok(())
    }

    /// A plain rename: the source's entry moves, replacing the target's (whose inode
    /// loses a name). False when there is nothing to do (two names of one file).
    fn rename_replace(
        &self,
        m: &mut Rename<'_>,
        (parent, name): (u64, &[u8]),
        (new_parent, new_name): (u64, &[u8]),
        t: Option<Dirent>,
        noreplace: bool,
    ) -> FsResult<bool> {
        if let Some(t) = t {
            if noreplace {
                return Err(FsError::Exists);
            }
            if t.ino == m.s.ino {
                // Two names of one file: POSIX says do nothing.
                return Ok(false);
            }
            match (m.s.kind == Kind::Dir, t.kind == Kind::Dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if self.has_entries(t.ino) => return Err(FsError::NotEmpty),
                _ => {}
            }
            m.replaced = Some(t.ino);
            if t.kind == Kind::Dir {
                m.ops.push(BatchOp::Delete(inode_key(t.ino)));
                self.xattr_deletes(t.ino, &mut m.ops);
                m.dst_links -= 1;
            } else if self.drop_name(touched_of(&mut m.touched, t.ino), m.at, &mut m.ops) {
                m.purge = Some(t.ino);
            }
        }
        m.ops.push(BatchOp::Delete(dirent_key(parent, name)));
        m.ops.push(dirent_op(new_parent, new_name, m.s));
        let a = &mut touched_of(&mut m.touched, m.s.ino).attr;
        a.ctime = m.at;
        if a.kind == Kind::Dir && m.across {
            a.parent = new_parent;
            m.src_links -= 1;
            m.dst_links += 1;
        }
        Ok(true)
    }

    /// The records a rename rewrites besides the entries: its inodes' attributes
    /// (but a replaced one's, written or deleted already) and the parents' link
    /// counts and times.
    fn rename_parents(&self, m: &mut Rename<'_>, parent: u64, new_parent: u64) -> FsResult<()> {
        for (ino, t) in &m.touched {
            if m.replaced != Some(*ino) {
                m.ops.push(t.op());
            }
        }
        let mut src_dir = self.dir_attr(parent)?;
        if !m.across {
            src_dir.nlink = add_links(src_dir.nlink, m.src_links + m.dst_links);
            src_dir.mtime = m.at;
            src_dir.ctime = m.at;
            m.ops.push(attr_op(&src_dir));
            return Ok(());
        }
        let mut dst_dir = self.dir_attr(new_parent)?;
        src_dir.nlink = add_links(src_dir.nlink, m.src_links);
        dst_dir.nlink = add_links(dst_dir.nlink, m.dst_links);
        for dir in [&mut src_dir, &mut dst_dir] {
            dir.mtime = m.at;
            dir.ctime = m.at;
        }
        m.ops.push(attr_op(&src_dir));
        m.ops.push(attr_op(&dst_dir));
        Ok(())
    }

    /// A new name `new_name` in `new_parent` for the inode `ino` (a hard link).
    pub async fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> FsResult<Attr> {
        self.writable()?;
        check_name(new_name).map_err(name_err)?;
        self.change(|batch| {
            let _held = self.locks.take(false, &[new_parent, ino]);
            let mut dir = self.dir_attr(new_parent)?;
            if self.entry(new_parent, new_name)?.is_some() {
                return Err(FsError::Exists);
            }
            let state = self.state_of(ino);
            let mut t = self.touch(ino, state.as_ref())?;
            if t.attr.kind == Kind::Dir {
                return Err(FsError::NotPermitted("hard links to directories"));
            }
            if t.attr.nlink == 0 {
                return Err(FsError::NotFound);
            }
            if t.attr.nlink >= LINK_MAX {
                return Err(FsError::TooManyLinks);
            }
            let at = now();
            t.attr.nlink += 1;
            t.attr.ctime = at;
            dir.mtime = at;
            dir.ctime = at;
            let ops = vec![
                dirent_op(
                    new_parent,
                    new_name,
                    Dirent {
                        ino,
                        kind: t.attr.kind,
                    },
                ),
                t.op(),
                attr_op(&dir),
            ];
            if !batch.append(&ops)? {
                return Ok(Step::Retry);
            }
            t.written();
            Ok(Step::Done(match &t.state {
                Some(st) => st.attr,
                None => t.attr,
            }))
        })
        .await
    }

    pub async fn setattr(&self, ino: u64, set: SetAttr) -> FsResult<Attr> {
        self.writable()?;
        if set.size.is_some() {
            return self.set_size_and_attr(ino, set).await;
        }
        // A file open here keeps its attributes in its open state: that path
        // changes them there (after the locks are released).
        let stored = self
            .change(|batch| {
                let _held = self.locks.take(false, &[ino]);
                if self.state_of(ino).is_some() {
                    return Ok(Step::Done(None));
                }
                let mut attr = self.stored_attr(ino)?.ok_or(FsError::NotFound)?;
                apply_set(&mut attr, &set);
                if !batch.append(&[attr_op(&attr)])? {
                    return Ok(Step::Retry);
                }
                Ok(Step::Done(Some(attr)))
            })
            .await?;
        match stored {
            Some(attr) => Ok(attr),
            None => self.set_size_and_attr(ino, set).await,
        }
    }

    pub fn statfs(&self) -> FsStats {
        FsStats {
            files: self.db.len() as u64,
            live_bytes: self.db.live_bytes(),
        }
    }

    /// Commit everything, make it durable and close the engine.
    pub async fn shutdown(&self) -> FsResult<()> {
        if !self.db.is_read_only() {
            self.sync_all().await?;
        }
        self.db.close().await?;
        Ok(())
    }
}

fn add_links(n: u32, delta: i64) -> u32 {
    (n as i64 + delta).clamp(0, u32::MAX as i64) as u32
}

fn dirent_op(parent: u64, name: &[u8], d: Dirent) -> BatchOp {
    BatchOp::PutMeta {
        key: dirent_key(parent, name),
        meta: d.encode(),
        value: Vec::new(),
    }
}

pub(super) fn decode_attr(ino: u64, info: &KeyInfo) -> FsResult<Attr> {
    let meta = info.meta.as_deref().unwrap_or(&[]);
    Attr::decode(ino, meta).map_err(|source| FsError::Corrupt {
        what: format!("inode {ino}"),
        source,
    })
}

pub(super) fn apply_set(attr: &mut Attr, set: &SetAttr) {
    if let Some(p) = set.perm {
        attr.perm = p & 0o7777;
    }
    if let Some(u) = set.uid {
        attr.uid = u;
    }
    if let Some(g) = set.gid {
        attr.gid = g;
    }
    if let Some(a) = set.atime {
        attr.atime = a;
    }
    if let Some(m) = set.mtime {
        attr.mtime = m;
    }
    attr.ctime = now();
}

/// Refuse stores whose keys are not in this namespace layout.
fn check_layout(db: &Db) -> FsResult<()> {
    let outside = db.info(LAYOUT1_SUPER_KEY).is_some()
        || !db
            .scan_info(Bound::Included(&[1u8][..]), Bound::Unbounded, 1)
            .is_empty();
    if outside {
        return Err(FsError::Layout(
            "this store holds keys outside the file-system layout (namespace layout 1, \
             where paths were keys, or keys written through the engine API); this \
             version of kvfs mounts namespace layout 2 only (docs/FORMAT.md)"
                .to_string(),
        ));
    }
    Ok(())
}
