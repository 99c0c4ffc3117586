//! Mounts for the benchmarks: the test kit's harness ([`kvfs_testkit::mount`]) with
//! the `kvfs` binary built next to this one, pointed at a test S3 server.

use std::path::{Path, PathBuf};

use kvfs_testkit::mount::Mount;
use kvfs_testkit::server::TestS3Server;

pub type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The `kvfs` binary built next to this one (`cargo build -p kvfs -p kvfs-bench` puts
/// both in the same target directory).
pub fn kvfs_binary() -> PathBuf {
    let me = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("kvfs-bench"));
    me.with_file_name("kvfs")
}

/// `kvfs mount STORE POINT --foreground EXTRA…` against `server`; returns once mounted.
pub fn mount_kvfs(
    server: &TestS3Server,
    store: &str,
    point: &Path,
    extra: &[&str],
) -> BenchResult<Mount> {
    let env = server.client_env();
    Ok(Mount::start(&kvfs_binary(), store, point, extra, &env)?)
}
