//! A mount outlives an outage of its object store: the S3 server stops for longer
//! than the retry timeout, fsync fails with EIO meanwhile, and once the server is
//! back the same mount carries on with nothing acknowledged lost.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use kvfs_testkit::server::{ServerOptions, TestS3Server};

use crate::common::mount::Mount;

const BUCKET: &str = "outage";

fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_carries_on_after_the_store_comes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("s3");
    std::fs::create_dir(&root).unwrap();
    let server = TestS3Server::start(&root, ServerOptions::default())
        .await
        .expect("start S3 server");
    server.create_bucket(BUCKET).unwrap();
    let addr = server.addr();
    let env: Vec<(&str, String)> = server.client_env();
    let url = format!("s3://{BUCKET}/fs");
    let point = tmp.path().join("mnt");
    let mount = Mount::start(&url, &point, &["--retry-timeout-secs", "2"], &env);
    let p = mount.point().to_path_buf();

    let before = p.join("before");
    blocking(move || write_synced(&before, b"written before the outage"))
        .await
        .expect("fsync before the outage");

    server.shutdown().await;
    let (during, queued) = (p.join("during"), p.join("queued"));
    let started = Instant::now();
    let err = blocking(move || write_synced(&during, b"fsync fails, data stays queued"))
        .await
        .expect_err("fsync while the store is down");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "fsync waited too long"
    );
    blocking(move || std::fs::write(&queued, b"closed, never synced"))
        .await
        .expect("a write that fits in memory succeeds");
    // Stay down for well over the retry timeout.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let server = TestS3Server::start(
        &root,
        ServerOptions {
            addr: Some(addr),
            ..ServerOptions::default()
        },
    )
    .await
    .expect("restart S3 server on the same address");
    // The same mount takes writes again once the queued segments are stored.
    let after = p.join("after");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let after = after.clone();
        match blocking(move || write_synced(&after, b"written after the outage")).await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the mount did not recover: {e}\n{}", mount.log_text()),
        }
    }
    let log = mount.log_text();
    assert!(
        log.contains("stays queued"),
        "the outage is not logged:\n{log}"
    );
    assert!(
        log.contains("answers again"),
        "the recovery is not logged:\n{log}"
    );
    let status = blocking(move || mount.unmount()).await;
    assert!(status.success(), "daemon exited with {status}");

    // Remounted: every file, acknowledged or queued, is there.
    let mount = Mount::start(&url, &point, &[], &env);
    let p = mount.point().to_path_buf();
    let read = |name: &str| std::fs::read(p.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(read("before"), b"written before the outage");
    assert_eq!(read("during"), b"fsync fails, data stays queued");
    assert_eq!(read("queued"), b"closed, never synced");
    assert_eq!(read("after"), b"written after the outage");
    blocking(move || mount.finish()).await;
    server.shutdown().await;
}
