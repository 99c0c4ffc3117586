//! Tests of the file system: the namespace without FUSE (a model, extents, directory
//! renames, operations under a held GET or upload), the `kvfs` command, real mounts
//! driven with shell tools, a mount against a model directory, SIGKILL of the
//! mount daemon, and `kvfs unmount`.

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod cli_args;
mod concurrency;
mod disk_cache;
mod encoding;
mod extents;
mod follow;
mod full_store;
mod guards;
mod metrics;
mod mount;
mod mount_crash;
mod mount_model;
mod namespace;
mod outage;
mod posix;
mod rename;
mod sparse;
mod tools;
mod unmount;
