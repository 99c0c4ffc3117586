//! kvfs: a key-value store that keeps its data in S3 as a log of large segment
//! objects.
//!
//! Layers, bottom up:
//! - [`store`]: the object-store trait, its backends (S3, local directory, memory) and
//!   layers (retry, metering, fault injection).
//! - [`format`]: byte layouts of segments, checkpoints and manifests.
//! - [`db`]: the engine — log writer with group commit, in-memory index, read cache,
//!   checkpoints, recovery and writer fencing.

pub mod db;
pub mod format;
pub mod fs;
pub mod fuse;
pub mod process;
pub mod store;
pub mod testserver;
