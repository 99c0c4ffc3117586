//! A kvfs mount for tests: started with `kvfs mount … --foreground`, always unmounted.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Whether `point` is a mount point now.
pub fn is_mounted(point: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(point) else {
        // A dead FUSE mount fails to stat; ask mountinfo by the given path.
        return mountinfo_has(&point.to_string_lossy());
    };
    mountinfo_has(&canon.to_string_lossy())
}

fn mountinfo_has(target: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| s.lines().any(|l| l.split(' ').nth(4) == Some(target)))
        .unwrap_or(false)
}

/// Unmount whatever is at `point`, however it can be done.
pub fn force_unmount(point: &Path) {
    for args in [vec!["-u"], vec!["-u", "-z"]] {
        if !is_mounted(point) {
            return;
        }
        let _ = Command::new("fusermount3")
            .args(&args)
            .arg(point)
            .stderr(Stdio::null())
            .status();
    }
    if is_mounted(point) {
        let _ = Command::new("umount").arg("-l").arg(point).status();
    }
}

/// A running `kvfs mount --foreground` child.
pub struct Mount {
    pub point: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Mount {
    /// Mount `store` at `point` (created if missing) and wait until it is ready.
    pub fn start(store: &str, point: &Path, extra: &[&str], env: &[(String, String)]) -> Mount {
        std::fs::create_dir_all(point).expect("mount point");
        let log = point.with_extension("mount-log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvfs"));
        cmd.args(["mount", store])
            .arg(point)
            .arg("--foreground")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("kvfs mount starts");
        let mut m = Mount {
            point: point.to_path_buf(),
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !is_mounted(point) {
            if let Some(Ok(Some(status))) = m.child.as_mut().map(|c| c.try_wait()) {
                panic!("kvfs mount exited with {status}: {}", m.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "mount not ready: {}",
                m.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Unmount cleanly and wait for the daemon to flush and exit.
    pub fn unmount(mut self) -> ExitStatus {
        let status = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.point)
            .status()
            .expect("fusermount3 runs");
        assert!(status.success(), "fusermount3 -u failed");
        let mut child = self.child.take().expect("child");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill the daemon with SIGKILL (a crash) and clean up the dead mount.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        force_unmount(&self.point);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        force_unmount(&self.point);
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
