//! FUSE mounts for the benchmarks: start a file system, wait until it is mounted,
//! and always unmount it again (also when a benchmark fails half-way).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kvfs::testserver::{TestS3Server, TEST_ACCESS_KEY, TEST_REGION, TEST_SECRET_KEY};

pub type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// How long a file system may take to appear in the mount table.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);

/// A mounted file system that is unmounted (and its process stopped) on drop.
pub struct Mounted {
    pub point: PathBuf,
    pub child: Option<Child>,
    /// A second mount (such as the tmpfs under bindfs) to remove afterwards.
    pub extra_unmount: Option<PathBuf>,
}

impl Mounted {
    /// The daemon's process id (0 for daemons that fork away).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// SIGKILL the daemon (a crash), reap it and remove the dead mount.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        unmount(&self.point);
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        unmount(&self.point);
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(p) = &self.extra_unmount {
            unmount(p);
        }
    }
}

/// Unmount whatever is mounted at `point`: politely, then lazily.
pub fn unmount(point: &Path) {
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

/// Whether `point` is a mount point now (also a dead FUSE mount, which cannot be
/// resolved any more).
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

/// Wait until `point` is mounted, or `child` (if any) exits.
pub fn wait_mounted(point: &Path, child: &mut Option<Child>) -> BenchResult<()> {
    let deadline = Instant::now() + MOUNT_TIMEOUT;
    while Instant::now() < deadline {
        if is_mounted(point) {
            return Ok(());
        }
        if let Some(c) = child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!("mount of {} exited early: {status}", point.display()).into());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!(
        "{} was not mounted within {MOUNT_TIMEOUT:?}",
        point.display()
    )
    .into())
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
pub fn require(tool: &str, package: &str) -> BenchResult<()> {
    if have(tool) {
        Ok(())
    } else {
        Err(format!("{tool} not found: apt-get install -y {package}").into())
    }
}

/// The `kvfs` binary built next to this one.
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
) -> BenchResult<Mounted> {
    std::fs::create_dir_all(point)?;
    let log_path = point.with_extension("log");
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let binary = kvfs_binary();
    let child = Command::new(&binary)
        .args(["mount", store])
        .arg(point)
        .arg("--foreground")
        .args(extra)
        .env("AWS_ENDPOINT_URL", server.endpoint())
        .env("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
        .env("AWS_REGION", TEST_REGION)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let mut m = Mounted {
        point: point.to_path_buf(),
        child: Some(child),
        extra_unmount: None,
    };
    if let Err(e) = wait_mounted(point, &mut m.child) {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        return Err(format!("{e}; daemon log:\n{log}").into());
    }
    Ok(m)
}
