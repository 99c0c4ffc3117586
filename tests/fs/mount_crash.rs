//! Crashes and real workloads through a mount: SIGKILL of the daemon while a writer
//! fsyncs files, and fio's small-file job.

use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
