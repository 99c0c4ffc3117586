//! Mounts for the benchmarks: the test kit's harness ([`kvfs_testkit::mount`]) with
//! the `kvfs` binary built next to this one, pointed at a test S3 server.

use std::path::{Path, PathBuf};

use kvfs_testkit::faults::FaultConfig;
use kvfs_testkit::mount::Mount;
use kvfs_testkit::server::{ServerOptions, TestS3Server};

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

/// A test S3 server storing into `dir` (created) with bucket `bench`, adding
/// `put_ms` to every PUT and `get_ms` to every GET, HEAD and LIST; says so on stderr.
pub async fn latency_server(dir: &Path, put_ms: u64, get_ms: u64) -> BenchResult<TestS3Server> {
    std::fs::create_dir_all(dir)?;
    let server = TestS3Server::start(dir, ServerOptions::default()).await?;
    server.create_bucket("bench")?;
    server.faults().set(FaultConfig {
        put_latency: std::time::Duration::from_millis(put_ms),
        get_latency: std::time::Duration::from_millis(get_ms),
        ..FaultConfig::default()
    });
    eprintln!(
        "S3 server at {} with {put_ms} ms per PUT, {get_ms} ms per GET/HEAD/LIST",
        server.endpoint()
    );
    Ok(server)
}
