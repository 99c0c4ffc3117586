//! The FUSE adapter: a thin translation from kernel requests (through the `fuser`
//! crate) to the [`Namespace`](crate::fs::Namespace), which has no FUSE types in it.
//!
//! Vocabulary:
//! - **adapter**: [`KvfsFuse`], the `fuser::Filesystem` implementation. Each handler
//!   copies its arguments and polls the namespace call once on the FUSE thread; a call
//!   that completes (memory-only work) replies at once, and one that has to wait (S3,
//!   backpressure, a busy lock) moves to a Tokio runtime and replies from there, so a
//!   FUSE thread never waits for S3. Namespace errors become an
//!   errno in one place ([`FsError::errno`](crate::fs::FsError::errno)).
//! - **session**: one mount, from the `mount` system call to the end of the kernel
//!   connection ([`Mounted`]). The session ends when the file system is unmounted
//!   (`umount`, `fusermount3 -u`, or [`Unmounter`]).
//! - **shutdown**: committing every open file, making everything durable and closing
//!   the engine ([`Namespace::shutdown`](crate::fs::Namespace::shutdown)). It runs
//!   exactly once per adapter, when the session ends (the `destroy` callback) or
//!   earlier if its [`ShutdownHandle`] is used; later calls return the first result.
//! - **directory handle**: the state of one `opendir`: a snapshot of the directory's
//!   entries taken by the first `readdir` at offset 0, so that the offsets the kernel
//!   hands back stay meaningful while the directory changes.
//!
//! Choices the kernel sees:
//! - Every entry and attribute is cached for [`TTL`]; `atime`, `mtime`, `ctime` and
//!   link counts are the namespace's; `blksize` is 4096 and `blocks` is `size / 512`
//!   rounded up.
//! - No write-back cache: every `write` reaches the namespace before it returns, each
//!   `close` of a descriptor that can write commits the file (`flush`), `fsync` makes
//!   it durable in the store. Read-only opens tell the kernel not to send `flush`
//!   (`FOPEN_NOFLUSH`): one request less per file a reader opens.
//! - Extended attributes and POSIX ACLs are served unless the mount was started with
//!   `--no-xattrs` (then the handlers answer `ENOSYS`, which the kernel remembers).
//! - **following** (read-only mounts, [`follow`]): a loop applies the writer's new
//!   log segments and manifests, refreshes open files and tells the kernel which
//!   inodes and names to forget.
//! - Permissions are checked by the kernel (`default_permissions`); `access` allows.
//!
//! Unmounting ([`unmount`]): the session ends when the kernel lets go of the mount,
//! before the shutdown; each mount server keeps a record of itself so that `kvfs
//! unmount` can wait for the shutdown and report how it went.

mod adapter;
pub mod follow;
mod mount;
pub mod unmount;

pub use adapter::{file_attr, KvfsFuse, ShutdownHandle, TTL};
pub use mount::{mount, MountError, MountOptions, Mounted, Unmounted, Unmounter};
