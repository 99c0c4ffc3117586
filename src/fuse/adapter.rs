//! [`KvfsFuse`]: the `fuser::Filesystem` implementation over a [`Namespace`].
//!
//! Every handler that may touch the engine runs its namespace call through
//! `KvfsFuse::run`: polled once on the FUSE thread (inside the context of the Tokio
//! runtime whose [`Handle`] the adapter holds), and if it has to wait, handed to that
//! runtime, which finishes it and replies. Only calls that are pure memory
//! bookkeeping (`forget`, `statfs`, `opendir`, `releasedir`, `access`) and the
//! refusals of unsupported operations (`copy_file_range`, `ioctl`, `poll`, `lseek`
//! other than `SEEK_DATA`/`SEEK_HOLE`, `fallocate` modes other than allocation,
//! punching holes and zeroing ranges) reply on the FUSE thread.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType,
    Filesystem, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner,
    OpenFlags, PollEvents, PollFlags, PollNotifier, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen,
    ReplyPoll, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::fs::{self, Attr, DirEntry, FsError, FsResult, Kind, Namespace, SetAttr};

/// How long the kernel may cache entries and attributes.
pub const TTL: Duration = Duration::from_secs(1);

/// Readahead asked of the kernel (it grants at most what it offers).
const MAX_READAHEAD: u32 = 4 << 20;
/// Requests the kernel may have in flight in the background (reads ahead).
const MAX_BACKGROUND: u16 = 64;
/// Block size reported by `stat` and `statfs`.
const BLOCK_SIZE: u32 = 4096;
/// Capacity reported by `statfs` (the store has no fixed size): 1 PiB.
const REPORTED_BYTES: u64 = 1 << 50;
/// Free inodes reported by `statfs`.
const REPORTED_FREE_FILES: u64 = 1 << 40;
/// Longest file name.
const NAME_MAX: u32 = 255;

/// Directory entry offsets: `.` is 0, `..` is 1, the namespace's entries follow.
const DOT_ENTRIES: usize = 2;

/// The `fuser::FileAttr` of namespace attributes.
pub fn file_attr(a: &Attr, blocks: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev as u32,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

/// Answer a `getxattr`/`listxattr`: the size when asked for it (`size` 0), the
/// bytes when they fit, `ERANGE` otherwise.
fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() <= size as usize {
        reply.data(data);
    } else {
        reply.error(Errno::ERANGE);
    }
}

/// The errno for a namespace error; engine and corruption errors are logged, since
/// the caller only sees `EIO`.
fn errno(op: &str, e: &FsError) -> Errno {
    match e {
        // A full store says so once, when it fills up; each refused call need not.
        FsError::Db(_) if e.errno() == libc::ENOSPC => log::debug!("{op}: {e}"),
        FsError::Db(_) | FsError::Corrupt { .. } | FsError::Layout(_) => log::error!("{op}: {e}"),
        _ => log::debug!("{op}: {e}"),
    }
    Errno::from_i32(e.errno())
}

/// The open flags that let the kernel keep its page cache of `ino`, when it may
/// (see `Namespace::keep_page_cache`).
/// When the open changed the access time, the kernel's cached attributes are
/// dropped before the reply, so a `stat` after a read served from the page cache
/// shows it.
fn page_cache(
    ns: &Namespace,
    notifier: &std::sync::OnceLock<fuser::Notifier>,
    ino: u64,
    reading: bool,
) -> FopenFlags {
    let cache = ns.keep_page_cache(ino, reading);
    if cache.attributes_changed {
        if let Some(n) = notifier.get() {
            // Attributes only (a negative offset): no page is touched.
            if let Err(e) = n.inval_inode(INodeNo(ino), -1, 0) {
                log::debug!("invalidating the attributes of inode {ino}: {e}");
            }
        }
    }
    if cache.keep {
        FopenFlags::FOPEN_KEEP_CACHE
    } else {
        FopenFlags::empty()
    }
}

/// Runs the namespace shutdown once; see the module documentation of `crate::fuse`.
struct Shutdown {
    ns: Arc<Namespace>,
    rt: Handle,
    result: tokio::sync::Mutex<Option<FsResult<()>>>,
    /// Turns true when the shutdown starts.
    started: tokio::sync::watch::Sender<bool>,
}

impl Shutdown {
    async fn run(&self) -> FsResult<()> {
        let mut result = self.result.lock().await;
        if let Some(r) = result.as_ref() {
            return r.clone();
        }
        self.started.send_replace(true);
        let r = self.ns.shutdown().await;
        match &r {
            Ok(()) => log::info!("store flushed and closed"),
            Err(e) => log::error!("could not flush the store: {e}"),
        }
        *result = Some(r.clone());
        r
    }
}

/// Runs or awaits the adapter's shutdown (commit everything, sync, close the engine).
/// Cloneable; every caller gets the result of the one shutdown.
#[derive(Clone)]
pub struct ShutdownHandle(Arc<Shutdown>);

impl ShutdownHandle {
    /// Shut down (or wait for the shutdown under way) and return its result.
    pub async fn shutdown(&self) -> FsResult<()> {
        self.0.run().await
    }

    /// Return once the shutdown has started (at once if it has).
    pub async fn started(&self) {
        let mut rx = self.0.started.subscribe();
        // An error means the sender is gone, which cannot happen while `self` lives.
        let _ = rx.wait_for(|started| *started).await;
    }

    /// Commit every open file and make everything durable, without closing.
    pub async fn sync_all(&self) -> FsResult<()> {
        self.0.ns.sync_all().await
    }

    /// [`shutdown`](Self::shutdown) from a thread outside the runtime; `None` if the
    /// runtime stopped before the shutdown finished.
    pub fn shutdown_blocking(&self) -> Option<FsResult<()>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let me = self.clone();
        self.0.rt.spawn(async move {
            let _ = tx.send(me.shutdown().await);
        });
        rx.recv().ok()
    }
}

impl std::fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShutdownHandle")
    }
}

/// Entries a directory handle reads from the index at a time.
const DIR_PAGE: usize = 1024;

/// A page of a directory listing: entries `first ..` of the listing, in name
/// order, and the name to continue after (`None` at the end).
#[derive(Clone)]
struct DirPage {
    first: usize,
    entries: Arc<Vec<DirEntry>>,
    next: Option<Vec<u8>>,
}

impl DirPage {
    fn end(&self) -> usize {
        self.first + self.entries.len()
    }

    /// The rows of the listing from kernel offset `offset` to the end of this page
    /// (`.` and `..` first), each with the offset of the row after it.
    fn rows_from(&self, offset: u64) -> impl Iterator<Item = (u64, Row<'_>)> {
        let total = self.end() + DOT_ENTRIES;
        ((offset as usize).min(total)..total).map(move |i| {
            let row = match i {
                0 => Row::Dot("."),
                1 => Row::Dot(".."),
                _ => Row::Entry(&self.entries[i - DOT_ENTRIES - self.first]),
            };
            ((i + 1) as u64, row)
        })
    }
}

/// One row of a directory listing.
enum Row<'a> {
    /// `.` or `..`: not counted as lookups; the kernel ignores their inode numbers
    /// (and, in `readdirplus`, their attributes).
    Dot(&'static str),
    Entry(&'a DirEntry),
}

/// Open directory handles: the page each read last. A listing streams through the
/// index a page at a time, continuing after the last name read, so an open handle
/// holds one page however large the directory is. Entries created or removed while
/// a listing goes on may or may not appear (as POSIX allows); none appears twice.
#[derive(Default)]
struct DirHandles {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Option<DirPage>>>,
}

impl DirHandles {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Option<DirPage>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.map().insert(fh, None);
        fh
    }

    fn release(&self, fh: u64) {
        self.map().remove(&fh);
    }

    /// The page of handle `fh` that holds entry `index` of the listing (or is empty,
    /// at its end). Offset 0 (as after `rewinddir`) starts a fresh listing; reading
    /// on continues after the page before; any other offset (`seekdir`) walks the
    /// listing from its start.
    fn page(
        &self,
        ns: &Namespace,
        ino: u64,
        fh: u64,
        index: usize,
        fresh: bool,
    ) -> FsResult<DirPage> {
        let held = if fresh {
            None
        } else {
            self.map().get(&fh).cloned().flatten()
        };
        let mut page = match held {
            Some(p) if p.first <= index && (index < p.end() || p.next.is_none()) => return Ok(p),
            Some(p) if p.end() <= index && p.next.is_some() => p,
            _ => {
                let (entries, next) = ns.readdir_page(ino, None, DIR_PAGE)?;
                DirPage {
                    first: 0,
                    entries: Arc::new(entries),
                    next,
                }
            }
        };
        while index >= page.end() {
            let Some(after) = page.next.take() else {
                break;
            };
            let (entries, next) = ns.readdir_page(ino, Some(&after), DIR_PAGE)?;
            page = DirPage {
                first: page.end(),
                entries: Arc::new(entries),
                next,
            };
        }
        if let Some(slot) = self.map().get_mut(&fh) {
            *slot = Some(page.clone());
        }
        Ok(page)
    }
}

/// The FUSE file system: see the module documentation of `crate::fuse`.
pub struct KvfsFuse {
    ns: Arc<Namespace>,
    rt: Handle,
    shutdown: ShutdownHandle,
    dirs: Arc<DirHandles>,
    xattrs: bool,
    /// Sends cache invalidations to the kernel, once the session exists.
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
}

impl std::fmt::Debug for KvfsFuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvfsFuse").finish_non_exhaustive()
    }
}

impl KvfsFuse {
    /// An adapter over `ns` whose handlers run on the runtime `rt`.
    pub fn new(ns: Arc<Namespace>, rt: Handle) -> KvfsFuse {
        let shutdown = ShutdownHandle(Arc::new(Shutdown {
            ns: ns.clone(),
            rt: rt.clone(),
            result: tokio::sync::Mutex::new(None),
            started: tokio::sync::watch::channel(false).0,
        }));
        KvfsFuse {
            ns,
            rt,
            shutdown,
            dirs: Arc::new(DirHandles::default()),
            xattrs: true,
            notifier: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// Where the session's notifier goes once the file system is mounted (see
    /// `fuse::mount`).
    pub(crate) fn notifier_slot(&self) -> Arc<std::sync::OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    /// Without extended attributes (and so without POSIX ACLs): the first xattr
    /// request is answered `ENOSYS`, after which the kernel asks no more. `ls -l`
    /// then makes no xattr request per file (two otherwise).
    pub fn without_xattrs(mut self) -> KvfsFuse {
        self.xattrs = false;
        self
    }

    /// The handle that runs (or awaits) this adapter's shutdown.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Run `f(namespace)`: see [`KvfsFuse::run`].
    fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<Namespace>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.run(f(self.ns.clone()));
    }

    /// Drive a handler without ever blocking the FUSE thread: poll it once here,
    /// inside the runtime's context. Most requests (lookups, attributes, writes into
    /// memory) complete in that first poll and reply at once, without two thread
    /// hops. One that has to wait (an S3 read, a full write buffer, a busy lock) is
    /// handed, already started, to the runtime, which finishes it and replies.
    fn run<Fut>(&self, fut: Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let _context = self.rt.enter();
        let mut fut = Box::pin(fut);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if fut.as_mut().poll(&mut cx).is_pending() {
            self.rt.spawn(fut);
        }
    }

    /// Run a namespace call that yields attributes and answer with an entry.
    fn spawn_entry<Fut>(
        &self,
        op: &'static str,
        reply: ReplyEntry,
        call: impl FnOnce(Arc<Namespace>) -> Fut,
    ) where
        Fut: Future<Output = FsResult<Attr>> + Send + 'static,
    {
        let ns = self.ns.clone();
        let fut = call(ns.clone());
        self.run(async move {
            match fut.await {
                Ok(attr) => reply.entry(&TTL, &file_attr(&attr, ns.blocks(&attr)), Generation(0)),
                Err(e) => reply.error(errno(op, &e)),
            }
        });
    }

    /// Run a namespace call without a result value and answer with an empty reply.
    fn spawn_empty<Fut>(
        &self,
        op: &'static str,
        reply: ReplyEmpty,
        call: impl FnOnce(Arc<Namespace>) -> Fut,
    ) where
        Fut: Future<Output = FsResult<()>> + Send + 'static,
    {
        let fut = call(self.ns.clone());
        self.run(async move {
            match fut.await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(op, &e)),
            }
        });
    }

    /// Run a namespace call that yields attributes and answer with them.
    fn spawn_attr<Fut>(&self, op: &'static str, reply: ReplyAttr, fut: Fut)
    where
        Fut: Future<Output = FsResult<Attr>> + Send + 'static,
    {
        let ns = self.ns.clone();
        self.run(async move {
            match fut.await {
                Ok(attr) => reply.attr(&TTL, &file_attr(&attr, ns.blocks(&attr))),
                Err(e) => reply.error(errno(op, &e)),
            }
        });
    }
}

fn name_bytes(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

fn mode_bits(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

fn time_of(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Filesystem for KvfsFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // O_TRUNC arrives with open (one request instead of open + setattr);
        // lookups and readdir in one directory may run in parallel (the namespace
        // has its own locking); readdirplus saves a lookup per entry for `ls -l`.
        // No write-back cache: see the module documentation.
        let mut wanted = InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO;
        if self.xattrs {
            // The kernel applies POSIX ACLs (kept as `system.posix_acl_*` extended
            // attributes): permission checks, the mode an ACL implies.
            wanted |= InitFlags::FUSE_POSIX_ACL;
        }
        let available = wanted & config.capabilities();
        if let Err(missing) = config.add_capabilities(available) {
            log::debug!("kernel lacks FUSE capabilities {missing:?}");
        }
        // Let the kernel read ahead as far as it allows, with many requests in
        // flight: the namespace fetches whole extents ahead of a sequential reader.
        if let Err(max) = config.set_max_readahead(MAX_READAHEAD) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(MAX_BACKGROUND);
        Ok(())
    }

    fn destroy(&mut self) {
        match self.shutdown.shutdown_blocking() {
            Some(Ok(())) => {}
            Some(Err(e)) => log::error!("flush at unmount failed: {e}"),
            None => log::error!("flush at unmount did not finish: the runtime stopped"),
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name_bytes(name);
        self.spawn_entry("lookup", reply, move |ns| async move {
            ns.lookup(parent.0, &name).await
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.ns.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ns = self.ns.clone();
        self.spawn_attr("getattr", reply, async move { ns.getattr(ino.0).await });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            perm: mode.map(|m| (m & 0o7777) as u16),
            uid,
            gid,
            size,
            atime: atime.map(time_of),
            mtime: mtime.map(time_of),
        };
        let ns = self.ns.clone();
        let nothing = set.perm.is_none()
            && set.uid.is_none()
            && set.gid.is_none()
            && set.size.is_none()
            && set.atime.is_none()
            && set.mtime.is_none();
        self.spawn_attr("setattr", reply, async move {
            if nothing {
                ns.getattr(ino.0).await
            } else {
                ns.setattr(ino.0, set).await
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(move |ns| async move {
            match ns.readlink(ino.0).await {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(errno("readlink", &e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => Kind::File,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => {
                reply.error(Errno::EINVAL);
                return;
            }
        };
        let name = name_bytes(name);
        let owner = (req.uid(), req.gid());
        self.spawn_entry("mknod", reply, move |ns| async move {
            ns.mknod(
                parent.0,
                &name,
                kind,
                mode_bits(mode, umask),
                rdev as u64,
                owner,
            )
            .await
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = name_bytes(name);
        let owner = (req.uid(), req.gid());
        self.spawn_entry("mkdir", reply, move |ns| async move {
            ns.mkdir(parent.0, &name, mode_bits(mode, umask), owner)
                .await
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_bytes(name);
        self.spawn_empty("unlink", reply, move |ns| async move {
            ns.unlink(parent.0, &name).await
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_bytes(name);
        self.spawn_empty("rmdir", reply, move |ns| async move {
            ns.rmdir(parent.0, &name).await
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let name = name_bytes(link_name);
        let target = target.as_os_str().as_bytes().to_vec();
        let owner = (req.uid(), req.gid());
        self.spawn_entry("symlink", reply, move |ns| async move {
            ns.symlink(parent.0, &name, &target, owner).await
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let known = RenameFlags::RENAME_NOREPLACE | RenameFlags::RENAME_EXCHANGE;
        if !known.contains(flags) {
            reply.error(Errno::EINVAL);
            return;
        }
        let flags = fs::RenameFlags {
            noreplace: flags.contains(RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(RenameFlags::RENAME_EXCHANGE),
        };
        let name = name_bytes(name);
        let newname = name_bytes(newname);
        self.spawn_empty("rename", reply, move |ns| async move {
            ns.rename(parent.0, &name, newparent.0, &newname, flags)
                .await
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let name = name_bytes(newname);
        self.spawn_entry("link", reply, move |ns| async move {
            ns.link(ino.0, newparent.0, &name).await
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let truncate = flags.0 & libc::O_TRUNC != 0;
        let reading = flags.0 & libc::O_ACCMODE != libc::O_WRONLY;
        // A descriptor that cannot write has nothing to commit at `close`: the kernel
        // need not send `flush` for it (what it changed, the access time, is
        // committed at `release`).
        let no_flush = if flags.0 & libc::O_ACCMODE == libc::O_RDONLY {
            FopenFlags::FOPEN_NOFLUSH
        } else {
            FopenFlags::empty()
        };
        let notifier = self.notifier.clone();
        self.spawn(move |ns| async move {
            match ns.open(ino.0, truncate).await {
                Ok(_) => reply.opened(
                    FileHandle(0),
                    page_cache(&ns, &notifier, ino.0, reading) | no_flush,
                ),
                Err(e) => reply.error(errno("open", &e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn(move |ns| async move {
            match ns.read(ino.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno("read", &e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.spawn(move |ns| async move {
            match ns.write(ino.0, offset, &data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno("write", &e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.spawn_empty(
            "flush",
            reply,
            move |ns| async move { ns.commit(ino.0).await },
        );
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn_empty("release", reply, move |ns| async move {
            ns.release(ino.0).await
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn_empty(
            "fsync",
            reply,
            move |ns| async move { ns.fsync(ino.0).await },
        );
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(self.dirs.open()), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let dirs = self.dirs.clone();
        self.spawn(move |ns| async move {
            let first = (offset as usize).saturating_sub(DOT_ENTRIES);
            let page = match dirs.page(&ns, ino.0, fh.0, first, offset == 0) {
                Ok(p) => p,
                Err(e) => return reply.error(errno("readdir", &e)),
            };
            for (next, row) in page.rows_from(offset) {
                let full = match row {
                    Row::Dot(name) => reply.add(ino, next, FileType::Directory, name),
                    Row::Entry(e) => reply.add(
                        INodeNo(e.attr.ino),
                        next,
                        file_type(e.attr.kind),
                        OsStr::from_bytes(&e.name),
                    ),
                };
                if full {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let dirs = self.dirs.clone();
        self.spawn(move |ns| async move {
            let first = (offset as usize).saturating_sub(DOT_ENTRIES);
            let page = match dirs.page(&ns, ino.0, fh.0, first, offset == 0) {
                Ok(p) => p,
                Err(e) => return reply.error(errno("readdirplus", &e)),
            };
            let mut dir_attr = None;
            for (next, row) in page.rows_from(offset) {
                let e = match row {
                    Row::Dot(name) => {
                        let attr = match dir_attr {
                            Some(a) => a,
                            None => match ns.getattr(ino.0).await {
                                Ok(a) => *dir_attr.insert(file_attr(&a, ns.blocks(&a))),
                                Err(e) => return reply.error(errno("readdirplus", &e)),
                            },
                        };
                        if reply.add(ino, next, name, &TTL, &attr, Generation(0)) {
                            break;
                        }
                        continue;
                    }
                    Row::Entry(e) => e,
                };
                // Every entry returned here counts as a kernel lookup, so take it
                // through the namespace's lookup (which also records the node).
                let attr = match ns.lookup(ino.0, &e.name).await {
                    Ok(a) => a,
                    // Gone since the snapshot: leave it out.
                    Err(FsError::NotFound) => continue,
                    Err(err) => return reply.error(errno("readdirplus", &err)),
                };
                let name = OsStr::from_bytes(&e.name);
                if reply.add(
                    INodeNo(attr.ino),
                    next,
                    name,
                    &TTL,
                    &file_attr(&attr, ns.blocks(&attr)),
                    Generation(0),
                ) {
                    // Did not fit: the kernel will not count this lookup.
                    ns.forget(attr.ino, 1);
                    break;
                }
            }
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.release(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // A directory's changes are engine writes already; syncing the engine makes
        // them durable, along with every open file.
        self.spawn_empty(
            "fsyncdir",
            reply,
            move |ns| async move { ns.sync_all().await },
        );
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let stats = self.ns.statfs();
        let blocks = REPORTED_BYTES / BLOCK_SIZE as u64;
        let used = stats.live_bytes.div_ceil(BLOCK_SIZE as u64).min(blocks);
        let free = blocks - used;
        reply.statfs(
            blocks,
            free,
            free,
            stats.files.saturating_add(REPORTED_FREE_FILES),
            REPORTED_FREE_FILES,
            BLOCK_SIZE,
            NAME_MAX,
            BLOCK_SIZE,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        if !self.xattrs {
            reply.error(Errno::ENOSYS);
            return;
        }
        if position != 0 {
            reply.error(Errno::EINVAL);
            return;
        }
        let flags = fs::XattrFlags {
            create: flags & libc::XATTR_CREATE != 0,
            replace: flags & libc::XATTR_REPLACE != 0,
        };
        let name = name_bytes(name);
        let value = value.to_vec();
        self.spawn_empty("setxattr", reply, move |ns| async move {
            ns.setxattr(ino.0, &name, &value, flags).await
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if !self.xattrs {
            reply.error(Errno::ENOSYS);
            return;
        }
        let name = name_bytes(name);
        self.spawn(move |ns| async move {
            match ns.getxattr(ino.0, &name).await {
                Ok(v) => reply_xattr(reply, size, &v),
                Err(e) => reply.error(errno("getxattr", &e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if !self.xattrs {
            reply.error(Errno::ENOSYS);
            return;
        }
        self.spawn(move |ns| async move {
            match ns.listxattr(ino.0).await {
                Ok(names) => {
                    let mut list = Vec::new();
                    for n in names {
                        list.extend_from_slice(&n);
                        list.push(0);
                    }
                    reply_xattr(reply, size, &list)
                }
                Err(e) => reply.error(errno("listxattr", &e)),
            }
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if !self.xattrs {
            reply.error(Errno::ENOSYS);
            return;
        }
        let name = name_bytes(name);
        self.spawn_empty("removexattr", reply, move |ns| async move {
            ns.removexattr(ino.0, &name).await
        });
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    // Operations left to the kernel's fallbacks. `ENOSYS` makes the kernel stop asking
    // for the rest of the mount (and fall back to reads and writes); answering here
    // keeps `fuser`'s "not implemented" warnings out of the log.

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        // The kernel answers SEEK_SET, SEEK_CUR and SEEK_END itself.
        let hole = match whence {
            libc::SEEK_DATA => false,
            libc::SEEK_HOLE => true,
            _ => {
                reply.error(Errno::EINVAL);
                return;
            }
        };
        if offset < 0 {
            reply.error(Errno::ENXIO);
            return;
        }
        self.spawn(move |ns| async move {
            match ns.seek_data(ino.0, offset as u64, hole).await {
                Ok(at) => reply.offset(at as i64),
                Err(e) => reply.error(errno("lseek", &e)),
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // Plain allocation, punching holes and zeroing ranges, each with or without
        // FALLOC_FL_KEEP_SIZE (the kernel allows a punch only with it); collapsing,
        // inserting and unsharing ranges are not supported (nor by tmpfs).
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let zero = match mode & !libc::FALLOC_FL_KEEP_SIZE {
            0 => false,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE => true,
            _ => {
                reply.error(Errno::EOPNOTSUPP);
                return;
            }
        };
        self.spawn_empty("fallocate", reply, move |ns| async move {
            if zero {
                ns.zero_range(ino.0, offset, length, keep_size).await
            } else {
                ns.fallocate(ino.0, offset, length, keep_size).await
            }
        });
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name_bytes(name);
        let owner = (req.uid(), req.gid());
        let notifier = self.notifier.clone();
        self.spawn(move |ns| async move {
            let created = async {
                let attr = ns
                    .create(parent.0, &name, mode_bits(mode, umask), owner)
                    .await?;
                ns.open(attr.ino, false).await
            };
            match created.await {
                Ok(attr) => reply.created(
                    &TTL,
                    &file_attr(&attr, ns.blocks(&attr)),
                    Generation(0),
                    FileHandle(0),
                    page_cache(&ns, &notifier, attr.ino, false),
                ),
                Err(e) => reply.error(errno("create", &e)),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn attributes_for_the_kernel() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut a = Attr::new(42, Kind::File, 0o644, (1000, 100), t);
        a.size = 513;
        a.ctime = t + Duration::from_secs(5);
        let f = file_attr(&a, 8);
        assert_eq!(f.ino, INodeNo(42));
        assert_eq!((f.size, f.blocks, f.blksize, f.nlink), (513, 8, 4096, 1));
        assert_eq!((f.atime, f.mtime, f.crtime), (t, t, a.ctime));
        assert_eq!(
            (f.uid, f.gid, f.perm, f.kind),
            (1000, 100, 0o644, FileType::RegularFile)
        );
        let d = file_attr(&Attr::new(7, Kind::Dir, 0o755, (0, 0), t), 0);
        assert_eq!((d.kind, d.nlink, d.blocks), (FileType::Directory, 2, 0));
        let mut n = Attr::new(8, Kind::CharDev, 0o600, (0, 0), t);
        n.rdev = 0x0105;
        let n = file_attr(&n, 0);
        assert_eq!((n.kind, n.rdev), (FileType::CharDevice, 0x0105));
        assert_eq!(mode_bits(0o100777, 0o022), 0o755);
        assert_eq!(mode_bits(0o4755, 0), 0o4755);
    }
}
