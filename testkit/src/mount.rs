//! FUSE mounts for tests and benchmarks: start `kvfs mount --foreground` (or adopt
//! any other mounted file system), wait until it is mounted, and always unmount it
//! again, also when a test or benchmark fails half-way.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a file system may take to appear in the mount table, and a daemon to exit
/// after a clean unmount.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether `point` is a mount point now (also a dead FUSE mount, which cannot be
/// resolved any more: then it is looked up by the path as given).
pub fn is_mounted(point: &Path) -> bool {
    let target = match std::fs::canonicalize(point) {
        Ok(canon) => canon.to_string_lossy().to_string(),
        Err(_) => point.to_string_lossy().to_string(),
    };
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| {
            s.lines()
                .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
        })
        .unwrap_or(false)
}

/// Unmount whatever is mounted at `point`, however it can be done: politely, then
/// lazily.
pub fn force_unmount(point: &Path) {
    for args in [&["-u"][..], &["-u", "-z"][..]] {
        if !is_mounted(point) {
            return;
        }
        let _ = Command::new("fusermount3")
            .args(args)
            .arg(point)
            .stderr(Stdio::null())
            .status();
    }
    if is_mounted(point) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(point)
            .stderr(Stdio::null())
            .status();
    }
}

/// Wait until `point` is mounted, or `child` (if any) exits.
pub fn wait_mounted(point: &Path, child: &mut Option<Child>) -> Result<(), String> {
    let deadline = Instant::now() + MOUNT_TIMEOUT;
    while Instant::now() < deadline {
        if is_mounted(point) {
            return Ok(());
        }
        if let Some(c) = child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!(
                    "mount of {} exited early: {status}",
                    point.display()
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!(
        "{} was not mounted within {MOUNT_TIMEOUT:?}",
        point.display()
    ))
}

/// Whether `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// An error naming the package to install unless `tool` is on the PATH.
pub fn require(tool: &str, package: &str) -> Result<(), String> {
    if have(tool) {
        Ok(())
    } else {
        Err(format!("{tool} not found: apt-get install -y {package}"))
    }
}

/// A mounted file system that is unmounted (and its daemon stopped) on drop.
#[derive(Debug)]
pub struct Mount {
    /// The mount point.
    pub point: PathBuf,
    /// The daemon, when it runs in the foreground as our child.
    pub child: Option<Child>,
    /// Where the daemon's stderr goes.
    pub log: Option<PathBuf>,
    /// A second mount (such as the tmpfs under bindfs) to remove afterwards.
    pub extra_unmount: Option<PathBuf>,
}

impl Mount {
    /// Take charge of a file system already mounted at `point` (served by `child`, if
    /// it runs in the foreground).
    pub fn adopt(point: &Path, child: Option<Child>) -> Mount {
        Mount {
            point: point.to_path_buf(),
            child,
            log: None,
            extra_unmount: None,
        }
    }

    /// Run `BINARY mount STORE POINT --foreground EXTRA…` (the `kvfs` binary, with the
    /// variables `env` added to its environment; `POINT` is created if missing) and
    /// return once it is mounted. The daemon's stderr goes to `POINT.mount-log`.
    pub fn start<K, V>(
        binary: &Path,
        store: &str,
        point: &Path,
        extra: &[&str],
        env: &[(K, V)],
    ) -> Result<Mount, String>
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        std::fs::create_dir_all(point).map_err(|e| format!("{}: {e}", point.display()))?;
        let point = point
            .canonicalize()
            .map_err(|e| format!("{}: {e}", point.display()))?;
        let log = point.with_extension("mount-log");
        let log_file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new(binary);
        cmd.args(["mount", store])
            .arg(&point)
            .arg("--foreground")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("{}: {e}", binary.display()))?;
        let mut m = Mount::adopt(&point, Some(child));
        m.log = Some(log);
        if let Err(e) = wait_mounted(&point, &mut m.child) {
            return Err(format!("{e}; daemon log:\n{}", m.log_text()));
        }
        Ok(m)
    }

    /// What the daemon wrote to its log so far.
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default()
    }

    /// The daemon's process id (0 for daemons that fork away).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Unmount with `fusermount3 -u` and wait for the daemon to flush and exit; its
    /// exit status.
    ///
    /// A child that another test forks while this one has a file open holds a copy of
    /// that descriptor until it execs, which can make the unmount fail with EBUSY for a
    /// moment: retry briefly.
    pub fn unmount(mut self) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.point)
                .output()
                .map_err(|e| format!("fusermount3: {e}"))?;
            if out.status.success() {
                break;
            }
            let err = String::from_utf8_lossy(&out.stderr);
            if !err.contains("busy") || Instant::now() > deadline {
                return Err(format!("fusermount3 -u {}: {err}", self.point.display()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut child = self.child.take().ok_or("no daemon to wait for")?;
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("daemon did not exit: {}", self.log_text()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL the daemon (a crash), reap it and remove the dead mount.
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
            let exited = loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break true;
                }
                if Instant::now() > deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            if !exited {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(p) = &self.extra_unmount {
            force_unmount(p);
        }
    }
}

/// Mount a fresh tmpfs at `point` (created if missing): the reference a file-system
/// behaviour is compared with. Unmounted on drop.
pub fn mount_tmpfs(point: &Path) -> Result<Mount, String> {
    mount_tmpfs_of_size(point, 512 << 20)
}

/// Mount a fresh tmpfs of `bytes` at `point` (created if missing): a small one is a
/// disk that fills up. Unmounted on drop.
pub fn mount_tmpfs_of_size(point: &Path, bytes: u64) -> Result<Mount, String> {
    std::fs::create_dir_all(point).map_err(|e| format!("{}: {e}", point.display()))?;
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
        .arg(point)
        .status()
        .map_err(|e| format!("mount -t tmpfs: {e}"))?;
    if !status.success() {
        return Err(format!(
            "mount -t tmpfs {} failed: {status}",
            point.display()
        ));
    }
    Ok(Mount::adopt(point, None))
}
