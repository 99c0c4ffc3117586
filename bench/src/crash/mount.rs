//! Mount mode of `kvfs-bench crash`: trials that SIGKILL the `kvfs mount` daemon while
//! a writer here creates files and fsyncs each one, then remount (timed) and check
//! every file whose fsync returned.
//!
//! File `i` of trial `t` has content [`content`]`(t, i)`. After the remount: every
//! fsync'd file must be there with that content (else it is lost); files after them
//! may be there (closed data reaches S3 within the flush interval) with that content or
//! empty, but without gaps: file `i` present means every file before it is present.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvfs_testkit::server::TestS3Server;
use rand::rngs::StdRng;
use rand::Rng;

use crate::crash::{ModeResult, Trial};
use crate::support::mount::{mount_kvfs, BenchResult};
use kvfs_testkit::mount::Mount;

fn content(trial: usize, i: usize) -> Vec<u8> {
    format!("trial {trial} file {i} ")
        .repeat(1 + i % 40)
        .into_bytes()
}

fn file(dir: &Path, i: usize) -> std::path::PathBuf {
    dir.join(format!("f{i:06}"))
}

/// Write, fsync and count files in `dir` until `stop` is set or a write fails (the
/// daemon is gone).
fn writer(dir: &Path, trial: usize, acked: &AtomicUsize, stop: &AtomicBool) {
    for i in 0.. {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let r = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(file(dir, i))?;
            f.write_all(&content(trial, i))?;
            f.sync_all()
        })();
        if r.is_err() {
            return;
        }
        acked.store(i + 1, Ordering::SeqCst);
    }
}

/// Check trial `trial`'s directory after a remount: (lost, differences).
fn check(dir: &Path, trial: usize, acked: usize) -> (u64, u64) {
    let mut lost = 0;
    let mut differences = 0;
    for i in 0..acked {
        match std::fs::read(file(dir, i)) {
            Ok(data) if data == content(trial, i) => {}
            Ok(_) => differences += 1,
            Err(_) => lost += 1,
        }
    }
    // Files written after the last acknowledged fsync: right content or empty, and no
    // file present after one that is missing.
    let mut missing_seen = false;
    for i in acked..acked + 1000 {
        match std::fs::read(file(dir, i)) {
            Ok(data) => {
                if missing_seen || !(data.is_empty() || data == content(trial, i)) {
                    differences += 1;
                }
            }
            Err(_) => missing_seen = true,
        }
    }
    (lost, differences)
}

fn remount(server: &TestS3Server, store: &str, point: &Path) -> BenchResult<(Mount, f64)> {
    let t = Instant::now();
    let m = mount_kvfs(server, store, point, &[])?;
    Ok((m, t.elapsed().as_secs_f64() * 1e3))
}

/// Run `trials` kill-and-remount trials of a kvfs mount of a store on `server`.
pub fn run(
    server: &TestS3Server,
    trials: usize,
    max_kill_delay_ms: u64,
    rng: &mut StdRng,
    scratch: &Path,
) -> BenchResult<ModeResult> {
    server.create_bucket("crashmnt")?;
    let store = "s3://crashmnt/mount";
    let point = scratch.join("mnt");
    let mut result = ModeResult::new("mount", "kvfs mount of S3 (in-process server)");
    let (mut mounted, _) = remount(server, store, &point)?;
    for trial in 0..trials {
        let dir = point.join(format!("t{trial:03}"));
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let acked = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (acked, stop, dir) = (acked.clone(), stop.clone(), dir.clone());
            std::thread::spawn(move || writer(&dir, trial, &acked, &stop))
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let delay = rng.random_range(0..=max_kill_delay_ms);
        std::thread::sleep(Duration::from_millis(delay));
        mounted.kill();
        stop.store(true, Ordering::SeqCst);
        if handle.join().is_err() {
            return Err("the writer thread panicked".into());
        }
        let acked = acked.load(Ordering::SeqCst);
        if acked == 0 {
            return Err(format!("trial {trial}: the writer made no progress in 60 s").into());
        }
        let (m, recovery_ms) = remount(server, store, &point)?;
        mounted = m;
        let (lost, differences) = check(&dir, trial, acked);
        eprintln!(
            "  mount  trial {trial:>3}: killed {delay:>4} ms after the first fsync, {acked:>4} files fsync'd, remounted in {recovery_ms:.1} ms{}",
            if lost + differences > 0 { "  LOSS" } else { "" }
        );
        result.push(Trial {
            kill: format!("{delay} ms after the first fsync"),
            acked_writes: acked as u64,
            recovered: acked as u64 - lost,
            lost,
            differences,
            recovery_ms,
        });
    }
    drop(mounted);
    Ok(result)
}
