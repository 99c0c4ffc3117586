//! Unmounting a kvfs mount and learning how its server finished: the record every
//! mount server keeps of itself, and the `umount` system call with clear errors.
//!
//! Vocabulary:
//! - **mount server**: the process that serves a mount (`kvfs mount`, in the
//!   background or in the foreground). After the kernel lets go of the mount, the
//!   server still commits open files, uploads what it holds, gives the writer lease
//!   back and exits: `umount` and `fusermount3 -u` return before that.
//! - **mount record**: a small JSON file ([`MountRecord`]) the server keeps in a
//!   runtime directory ([`record_dirs`]: `/run/kvfs` for root, else
//!   `$XDG_RUNTIME_DIR/kvfs`), named after the mount point. It holds the server's
//!   pid, store, mount point and device number, what the server is doing
//!   ([`Phase`]), how much it still has to upload, and at the end the outcome of its
//!   final flush. `kvfs unmount` unmounts, waits for the server to exit, reports the
//!   outcome and removes the record. A record whose process no longer runs is stale:
//!   it is ignored, and the next mount at the same point replaces it.
//! - **lazy unmount**: `MNT_DETACH`; the mount leaves the tree at once, and the
//!   kernel ends the session (so the server finishes) when the last file or
//!   directory open in it is closed.

use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The version of the record's layout.
const RECORD_VERSION: u32 = 1;

/// Why unmounting, or keeping a mount record, failed.
#[derive(Debug, thiserror::Error)]
pub enum UnmountError {
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error("cannot look at {path}: {source}")]
    Access { path: PathBuf, source: io::Error },
    #[error("{0} is not mounted")]
    NotMounted(PathBuf),
    #[error("{path} is not a kvfs mount (it is {what})")]
    NotKvfs { path: PathBuf, what: String },
    #[error(
        "{path} is busy: a process has a file or directory open in it, or works in it \
         (`fuser -vm {path}` lists them). Close them and try again, or run \
         `kvfs unmount --lazy {path}`: it detaches the mount now, and the mount server \
         finishes uploading once the last of them is closed",
        path = .0.display()
    )]
    Busy(PathBuf),
    #[error(
        "permission denied: {path} was mounted by user {owner}; only that user or root \
         can unmount it",
        path = path.display()
    )]
    NotOwner { path: PathBuf, owner: u32 },
    #[error("cannot unmount {path}: permission denied ({detail})", path = path.display())]
    Permission { path: PathBuf, detail: String },
    #[error("cannot unmount {path}: {source}", path = path.display())]
    Unmount { path: PathBuf, source: io::Error },
    #[error("cannot unmount {path}: {message}", path = path.display())]
    Helper { path: PathBuf, message: String },
    #[error("mount record {path}: {source}", path = path.display())]
    Record { path: PathBuf, source: io::Error },
    #[error("no directory for mount records: {0}")]
    NoRecordDir(String),
}

/// What a mount server is doing, as its record says.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Serving the mount (or, after a lazy unmount, the files still open in it).
    Serving,
    /// The session ended: committing open files, uploading, closing the store.
    Finishing,
    /// Done: [`MountRecord::error`] says how the final flush went; the process exits.
    Finished,
}

/// What a mount server says about itself (see the module documentation).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MountRecord {
    pub kvfs_mount_record: u32,
    pub pid: u32,
    /// When the process started ([`crate::process::start_time`]), which tells it from
    /// a later process with the same pid.
    pub started: Option<u64>,
    pub store: String,
    /// The canonical mount point.
    pub mountpoint: String,
    /// The mount's device number (`major:minor`), which tells this mount from a
    /// later one at the same point.
    pub dev: Option<String>,
    pub read_only: bool,
    pub phase: Phase,
    /// Bytes written but not yet in the store (while finishing).
    pub unflushed_bytes: u64,
    /// Log segments being uploaded (while finishing).
    pub uploads_in_flight: u64,
    /// Uploads are failing and being retried (while finishing).
    pub store_unanswered: bool,
    pub updated_unix_ms: u64,
    /// Why the final flush failed; `None` after a clean finish.
    pub error: Option<String>,
}

impl MountRecord {
    /// Whether the process that wrote this record still runs (not a later process
    /// with the same pid).
    pub fn server_runs(&self) -> bool {
        crate::process::pid_alive(self.pid)
            && match self.started {
                Some(t) => crate::process::start_time(self.pid) == Some(t),
                None => true,
            }
    }
}

/// How far a finishing server is, for its record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FinishProgress {
    pub unflushed_bytes: u64,
    pub uploads_in_flight: u64,
    pub store_unanswered: bool,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Where the records of mounts served by user `uid` may be, in the order a server
/// tries them: `/run/kvfs` for root; otherwise `$XDG_RUNTIME_DIR/kvfs` (when this
/// process runs as `uid`) and `/run/user/UID/kvfs`; last `/tmp/kvfs-UID`.
pub fn record_dirs(uid: u32) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if uid == 0 {
        dirs.push(PathBuf::from("/run/kvfs"));
    } else {
        if uid == effective_uid() {
            if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR") {
                let xdg = PathBuf::from(xdg);
                if xdg.is_absolute() {
                    dirs.push(xdg.join("kvfs"));
                }
            }
        }
        let run_user = PathBuf::from(format!("/run/user/{uid}/kvfs"));
        if !dirs.contains(&run_user) {
            dirs.push(run_user);
        }
    }
    dirs.push(std::env::temp_dir().join(format!("kvfs-{uid}")));
    dirs
}

/// The file name of the record of a mount at `mountpoint`: a hash of the path (a
/// path may be longer than a file name may be; the record names the path itself).
fn record_name(mountpoint: &Path) -> String {
    // FNV-1a, 64 bits: stable across versions and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in mountpoint.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("mount-{h:016x}.json")
}

/// Create `dir` (mode 0700) if missing and check that it is this user's own and
/// closed to others (it may be in a shared place such as `/tmp`).
fn prepare_dir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != effective_uid() || meta.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{} is not a directory of this user closed to others",
            dir.display()
        )));
    }
    Ok(())
}

/// Write `record` to `path` atomically (a temporary file renamed over it).
fn write_record(path: &Path, record: &MountRecord) -> Result<(), UnmountError> {
    let err = |source| UnmountError::Record {
        path: path.to_path_buf(),
        source,
    };
    let text = serde_json::to_vec_pretty(record).map_err(|e| err(io::Error::other(e)))?;
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(&text))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

/// The record at `path`, if it exists and parses (a torn or foreign file is `None`).
fn read_record(path: &Path) -> Option<MountRecord> {
    let bytes = std::fs::read(path).ok()?;
    let record: MountRecord = serde_json::from_slice(&bytes).ok()?;
    (record.kvfs_mount_record == RECORD_VERSION).then_some(record)
}

/// The record of the mount at `mountpoint` (canonical) served by user `uid`, with the
/// file it is in: the first of [`record_dirs`] that has one for this mount point.
pub fn find_record(mountpoint: &Path, uid: u32) -> Option<(PathBuf, MountRecord)> {
    let name = record_name(mountpoint);
    let want = mountpoint.as_os_str().to_string_lossy();
    record_dirs(uid).into_iter().find_map(|dir| {
        let path = dir.join(&name);
        let record = read_record(&path)?;
        (record.mountpoint == want).then_some((path, record))
    })
}

/// Re-read the record at `path` (written by the server with pid `pid`).
pub fn reread_record(path: &Path, pid: u32) -> Option<MountRecord> {
    read_record(path).filter(|r| r.pid == pid)
}

/// Remove a record that has been read (or is stale).
pub fn remove_record(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// How long a record of a process that no longer runs is kept: long enough for a
/// waiting `kvfs unmount` to read the outcome (it looks every few milliseconds).
const STALE_AFTER_MS: u64 = 60_000;

/// Remove the records in `dir` of processes that ended over [`STALE_AFTER_MS`] ago
/// (their outcome was read, or nobody waited for it), and leftover temporary files.
fn sweep_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let now = unix_ms();
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("mount-") {
            continue;
        }
        let stale = if name.ends_with(".tmp") {
            let age = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            age.is_some_and(|a| a.as_millis() > u128::from(STALE_AFTER_MS))
        } else {
            match read_record(&path) {
                Some(r) => {
                    !r.server_runs() && now.saturating_sub(r.updated_unix_ms) > STALE_AFTER_MS
                }
                None => false,
            }
        };
        if stale {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The mount server's side: keeps this process's record up to date, from the mount
/// to the outcome of the final flush. Once finished it writes nothing more.
#[derive(Debug)]
pub struct RecordKeeper {
    path: PathBuf,
    /// `None` once the outcome is written.
    record: Mutex<Option<MountRecord>>,
}

impl RecordKeeper {
    /// Write the record of a mount (phase [`Phase::Serving`]) in the first usable
    /// directory of [`record_dirs`], replacing a stale one at the same point.
    pub fn create(
        store: &str,
        mountpoint: &Path,
        dev: Option<String>,
        read_only: bool,
    ) -> Result<RecordKeeper, UnmountError> {
        let record = MountRecord {
            kvfs_mount_record: RECORD_VERSION,
            pid: std::process::id(),
            started: crate::process::start_time(std::process::id()),
            store: store.to_string(),
            mountpoint: mountpoint.to_string_lossy().into_owned(),
            dev,
            read_only,
            phase: Phase::Serving,
            unflushed_bytes: 0,
            uploads_in_flight: 0,
            store_unanswered: false,
            updated_unix_ms: unix_ms(),
            error: None,
        };
        let mut problems = Vec::new();
        for dir in record_dirs(effective_uid()) {
            if let Err(e) = prepare_dir(&dir) {
                problems.push(format!("{}: {e}", dir.display()));
                continue;
            }
            sweep_stale(&dir);
            let path = dir.join(record_name(mountpoint));
            write_record(&path, &record)?;
            return Ok(RecordKeeper {
                path,
                record: Mutex::new(Some(record)),
            });
        }
        Err(UnmountError::NoRecordDir(problems.join("; ")))
    }

    /// The record's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Change the record (unless finished) and write it; a failure is logged.
    fn update(&self, change: impl FnOnce(&mut MountRecord)) {
        let mut guard = self.record.lock().unwrap_or_else(|e| e.into_inner());
        let Some(record) = guard.as_mut() else {
            return;
        };
        change(record);
        record.updated_unix_ms = unix_ms();
        let finished = record.phase == Phase::Finished;
        // Another server may have taken this mount point's record since (a mount
        // stacked over this one): leave its record alone.
        let ours = read_record(&self.path).is_none_or(|r| r.pid == record.pid);
        if ours {
            if let Err(e) = write_record(&self.path, record) {
                log::warn!("{e}");
            }
        }
        if finished {
            *guard = None;
        }
    }

    /// The session ended; the server is finishing, this far.
    pub fn finishing(&self, progress: FinishProgress) {
        self.update(|r| {
            r.phase = Phase::Finishing;
            r.unflushed_bytes = progress.unflushed_bytes;
            r.uploads_in_flight = progress.uploads_in_flight;
            r.store_unanswered = progress.store_unanswered;
        });
    }

    /// The server is done (the store closed, the lease given back): record the
    /// outcome of its final flush. Nothing is written after this.
    pub fn finish(&self, error: Option<String>) {
        self.update(|r| {
            r.phase = Phase::Finished;
            r.unflushed_bytes = 0;
            r.uploads_in_flight = 0;
            r.store_unanswered = false;
            r.error = error;
        });
    }
}

/// Unmount `point` (canonical, or as given for a dead mount): detach it with `lazy`.
/// Root unmounts directly; another user through `fusermount3`, which allows the user
/// who mounted. Checks nothing about what is mounted there.
pub fn unmount(point: &Path, lazy: bool) -> Result<(), UnmountError> {
    let path = point.to_path_buf();
    let c = std::ffi::CString::new(point.as_os_str().as_bytes()).map_err(|_| {
        UnmountError::Unmount {
            path: path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "NUL in the path"),
        }
    })?;
    let flags = libc::UMOUNT_NOFOLLOW | if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EBUSY) => Err(UnmountError::Busy(path)),
        Some(libc::EINVAL) => Err(UnmountError::NotMounted(path)),
        Some(libc::ENOENT) => Err(UnmountError::Missing(path)),
        Some(libc::EPERM) => unmount_with_helper(point, lazy),
        _ => Err(UnmountError::Unmount { path, source: err }),
    }
}

/// Unmount through the setuid helper `fusermount3` (or `fusermount`).
fn unmount_with_helper(point: &Path, lazy: bool) -> Result<(), UnmountError> {
    let path = point.to_path_buf();
    for helper in ["fusermount3", "fusermount"] {
        let mut cmd = Command::new(helper);
        cmd.arg("-u");
        if lazy {
            cmd.arg("-z");
        }
        let out = cmd
            .arg("--")
            .arg(point)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(UnmountError::Unmount { path, source }),
        };
        if out.status.success() {
            return Ok(());
        }
        let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(if message.contains("busy") {
            UnmountError::Busy(path)
        } else if message.contains("not found in") || message.contains("ermission") {
            UnmountError::Permission {
                path,
                detail: message,
            }
        } else {
            UnmountError::Helper { path, message }
        });
    }
    Err(UnmountError::Permission {
        path,
        detail: "not root, and fusermount3 is not installed".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pid: u32, point: &str) -> MountRecord {
        MountRecord {
            kvfs_mount_record: RECORD_VERSION,
            pid,
            started: None,
            store: "s3://b/p".into(),
            mountpoint: point.into(),
            dev: Some("0:42".into()),
            read_only: false,
            phase: Phase::Serving,
            unflushed_bytes: 0,
            uploads_in_flight: 0,
            store_unanswered: false,
            updated_unix_ms: 1,
            error: None,
        }
    }

    #[test]
    fn record_names_depend_only_on_the_mount_point() {
        let a = record_name(Path::new("/mnt/a"));
        assert_eq!(a, record_name(Path::new("/mnt/a")));
        assert_ne!(a, record_name(Path::new("/mnt/b")));
        assert!(
            a.starts_with("mount-") && a.ends_with(".json") && a.len() == 27,
            "{a}"
        );
    }

    #[test]
    fn records_round_trip_and_torn_ones_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let r = record(7, "/mnt/a");
        write_record(&path, &r).unwrap();
        assert_eq!(read_record(&path), Some(r.clone()));
        assert_eq!(reread_record(&path, 7), Some(r));
        assert_eq!(reread_record(&path, 8), None);
        std::fs::write(&path, b"{\"kvfs_mount_record\": 1, \"pid\"").unwrap();
        assert_eq!(read_record(&path), None);
        remove_record(&path);
        assert!(!path.exists());
    }

    #[test]
    fn a_keeper_writes_its_outcome_once_and_then_nothing() {
        let point = tempfile::tempdir().unwrap();
        let point = point.path().canonicalize().unwrap();
        let keeper = RecordKeeper::create("memory:", &point, None, false).unwrap();
        let (path, r) = find_record(&point, effective_uid()).unwrap();
        assert_eq!(path, keeper.path());
        assert_eq!((r.pid, r.phase), (std::process::id(), Phase::Serving));
        keeper.finishing(FinishProgress {
            unflushed_bytes: 10,
            uploads_in_flight: 1,
            store_unanswered: true,
        });
        let r = reread_record(&path, r.pid).unwrap();
        assert_eq!((r.phase, r.unflushed_bytes), (Phase::Finishing, 10));
        keeper.finish(Some("the store is full".into()));
        keeper.finishing(FinishProgress::default());
        let r = reread_record(&path, r.pid).unwrap();
        assert_eq!(r.phase, Phase::Finished);
        assert_eq!(r.error.as_deref(), Some("the store is full"));
        remove_record(&path);
    }

    #[test]
    fn a_missing_mount_point_cannot_be_unmounted() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nothing");
        assert!(matches!(
            unmount(&missing, false),
            Err(UnmountError::Missing(_))
        ));
        // Running as root: an ordinary directory is not mounted. (Another user is
        // refused by the helper, which says so.)
        if effective_uid() == 0 {
            assert!(matches!(
                unmount(dir.path(), false),
                Err(UnmountError::NotMounted(_))
            ));
        }
    }
}
