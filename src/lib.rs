//! kvfs: a key-value store that keeps its data in S3 as a log of large segment
//! objects, exposed as a FUSE file system in which every key is a file.
//!
//! Layers, bottom up:
//! - [`store`]: the object-store trait, its backends (S3, local directory, memory) and
//!   layers (retry, metering).
//! - [`format`]: byte layouts of segments, checkpoints and manifests.
//! - [`db`]: the engine — log writer with group commit, in-memory index, read cache,
//!   checkpoints, recovery and writer fencing.
//! - [`fs`]: the file system's namespace (files, directories, symlinks, attributes)
//!   stored as engine keys, with no FUSE types in it.
//! - [`fuse`]: the FUSE adapter that serves the namespace to the kernel, and mounting.
//! - [`process`]: facts about processes on this host, used to tell a crashed writer
//!   from a live one.
//!
//! Cargo feature `test-hooks`: hooks for tests and experiments, such as
//! [`db::Db`]`::abandon` (an in-process crash). It is not part of the stable API; the
//! test kit (`kvfs-testkit`) enables it.

pub mod db;
pub mod format;
pub mod fs;
pub mod fuse;
pub mod metrics;
pub mod process;
pub mod store;
