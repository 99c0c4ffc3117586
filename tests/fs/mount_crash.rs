//! Crashes and real workloads through a mount: SIGKILL of the daemon while a writer
//! fsyncs files, SIGKILL while a file unlinked but still open holds its extents, and
//! fio's small-file job.

use std::io::Write;
use std::ops::Bound;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvfs::db::{prefix_successor, Db, Options};
use kvfs::fs::keys::{extent_prefix, inode_key, orphan_key};

use crate::common::mount::Mount;
use crate::common::Rng;

fn content(trial: u64, i: usize) -> Vec<u8> {
    format!("trial {trial} file {i} ")
        .repeat(1 + i % 40)
        .into_bytes()
}

#[test]
fn fsynced_files_survive_a_killed_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store").to_str().unwrap().to_string();
    let point = tmp.path().join("mnt");
    let mut rng = Rng(0x5eed);
    for trial in 0..4u64 {
        let mount = Mount::start(&store, &point, &[], &[]);
        let dir = point.join(format!("t{trial}"));
        std::fs::create_dir(&dir).unwrap();
        let acked = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (acked, stop, dir) = (acked.clone(), stop.clone(), dir.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let r = (|| -> std::io::Result<()> {
                        let mut f = std::fs::File::create(dir.join(format!("f{i:05}")))?;
                        f.write_all(&content(trial, i))?;
                        f.sync_all()
                    })();
                    if r.is_err() {
                        return;
                    }
                    acked.store(i + 1, Ordering::SeqCst);
                }
            })
        };
        // Let the writer get going, then kill the daemon at a random moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while acked.load(Ordering::SeqCst) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer made no progress"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.below(1200)));
        mount.kill();
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        let acked = acked.load(Ordering::SeqCst);

        let mount = Mount::start(&store, &point, &[], &[]);
        let mut present = 0;
        for i in 0..acked + 5 {
            match std::fs::read(dir.join(format!("f{i:05}"))) {
                Ok(data) => {
                    assert!(
                        data == content(trial, i) || (i >= acked && data.is_empty()),
                        "trial {trial}: f{i:05} has wrong content"
                    );
                    present = i + 1;
                }
                Err(e) => assert!(i >= acked, "trial {trial}: fsync'd f{i:05} lost: {e}"),
            }
        }
        // Nothing out of order: no gap below the last file present.
        for i in 0..present.min(acked) {
            assert!(dir.join(format!("f{i:05}")).exists(), "gap at f{i:05}");
        }
        assert!(acked > 0, "trial {trial}: the writer made progress");
        mount.finish();
    }
}

#[test]
fn fio_small_file_job_reads_back_after_remount() {
    if Command::new("fio").arg("--version").output().is_err() {
        panic!("fio is not installed (apt-get install -y fio; .ci/run installs it)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store").to_str().unwrap().to_string();
    let point = tmp.path().join("mnt");
    let mount = Mount::start(&store, &point, &[], &[]);
    let out = Command::new("fio")
        .args([
            "--name=small",
            &format!("--directory={}", point.display()),
            "--nrfiles=1000",
            "--filesize=1k",
            "--bs=1k",
            "--rw=write",
            "--create_on_open=1",
            "--fsync_on_close=1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fio failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let files = |p: &std::path::Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().to_string(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = files(&point);
    assert_eq!(before.len(), 1000);
    assert!(before.iter().all(|(_, d)| d.len() == 1024));
    mount.finish();
    let mount = Mount::start(&store, &point, &[], &[]);
    assert!(files(&point) == before, "files differ after remount");
    mount.finish();
}

/// What a store (opened read-only, as `kvfs scan` and `stats` do) holds of one inode.
#[derive(Debug, PartialEq, Eq)]
struct Remains {
    inode: bool,
    orphan: bool,
    extents: usize,
    /// Live bytes of the whole store.
    live_bytes: u64,
}

fn remains(store: &str, ino: u64) -> Remains {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = Db::open(store, Options::read_only()).await.unwrap();
        let prefix = extent_prefix(ino);
        let end = prefix_successor(&prefix).unwrap();
        let r = Remains {
            inode: db.info(&inode_key(ino)).is_some(),
            orphan: db.info(&orphan_key(ino)).is_some(),
            extents: db
                .scan_info(
                    Bound::Included(prefix.as_slice()),
                    Bound::Excluded(end.as_slice()),
                    usize::MAX,
                )
                .len(),
            live_bytes: db.stats().await.unwrap().live_bytes,
        };
        db.close().await.unwrap();
        r
    })
}

/// A large file unlinked while open is an orphan: its extents stay until the last
/// close. The daemon killed before that close leaves the orphan in the store; the
/// next mount deletes it (inode, orphan record and every extent), so its bytes are
/// no longer live but garbage for GC.
#[test]
fn an_orphan_left_by_a_killed_daemon_is_purged_at_the_next_mount() {
    const SIZE: usize = 3 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store").to_str().unwrap().to_string();
    let point = tmp.path().join("mnt");
    let mount = Mount::start(&store, &point, &[], &[]);
    let path = point.join("big");
    let mut rng = Rng(0x0a1b);
    let data: Vec<u8> = (0..SIZE).map(|_| rng.below(256) as u8).collect();
    {
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    let open = std::fs::File::open(&path).unwrap();
    let ino = open.metadata().unwrap().ino();
    std::fs::remove_file(&path).unwrap();
    assert!(!path.exists());
    // Make the unlink durable: fsync of the still open file syncs the store.
    open.sync_all().unwrap();
    mount.kill();
    drop(open);

    let left = remains(&store, ino);
    assert!(
        left.inode && left.orphan && left.extents >= 3,
        "the killed daemon left no orphan to purge: {left:?}"
    );
    assert!(left.live_bytes >= SIZE as u64, "{left:?}");

    let mount = Mount::start(&store, &point, &[], &[]);
    assert!(std::fs::read_dir(&point).unwrap().next().is_none());
    mount.finish();

    let after = remains(&store, ino);
    assert_eq!(
        (after.inode, after.orphan, after.extents),
        (false, false, 0),
        "the orphan was not purged: {after:?}"
    );
    // The file's bytes are garbage now, no longer live.
    assert!(
        after.live_bytes + SIZE as u64 <= left.live_bytes,
        "live bytes {} before the purge, {} after",
        left.live_bytes,
        after.live_bytes
    );
    assert_fsck_clean(&store);
}

fn assert_fsck_clean(store: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = Db::open(store, Options::read_only()).await.unwrap();
        let report = db.fsck(&mut |_| {}).await.unwrap();
        db.close().await.unwrap();
        assert!(report.is_clean(), "{:?}", report.issues);
    })
}
