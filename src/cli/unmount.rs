//! `kvfs unmount DIR`: unmount a kvfs mount and return only once its mount server has
//! uploaded everything, given the writer lease back and exited.
//!
//! The server's record ([`kvfs::fuse::unmount`]) says which process serves the mount,
//! what it is doing while it finishes, and how its final flush went. Exit status: 0
//! after a clean finish; 1 when the final flush failed (with the server's error),
//! when the server stopped without finishing, when the wait timed out (saying what
//! the server is still doing), or when the unmount itself was refused.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvfs::fuse::unmount::{self as um, MountRecord, Phase, UnmountError};
use kvfs::process::{mount_entry, MountEntry};

/// How often the server's record and process are looked at.
const POLL: Duration = Duration::from_millis(20);
/// Say what the wait is for once it has lasted this long…
const QUIET: Duration = Duration::from_secs(1);
/// …and again this often.
const REPEAT: Duration = Duration::from_secs(10);

/// Run `kvfs unmount`; the exit status.
pub fn run(dir: &Path, lazy: bool, timeout: Option<Duration>) -> i32 {
    match unmount_and_wait(dir, lazy, timeout) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kvfs: {e}");
            1
        }
    }
}

/// The server of a mount, as its record tells.
enum Server {
    /// Its process runs.
    Live(PathBuf, MountRecord),
    /// It stopped without removing its record: killed, crashed, or finished with no
    /// one waiting.
    Gone(PathBuf, MountRecord),
    /// No record of it.
    Unknown,
}

fn unmount_and_wait(
    dir: &Path,
    lazy: bool,
    timeout: Option<Duration>,
) -> Result<i32, UnmountError> {
    let point = resolve(dir)?;
    let entry = mount_entry(&point);
    let server = server_of(&point, entry.as_ref());
    let Some(entry) = entry else {
        // Not mounted, but its server may still be finishing after `umount`.
        return match server {
            Server::Live(path, record) => {
                eprintln!(
                    "kvfs: {} is not mounted any more; its mount server (pid {}) is still \
                     finishing",
                    point.display(),
                    record.pid
                );
                // Detached (lazily, or busy at a signal): files are open in it.
                Ok(wait(&point, &path, record, true, timeout))
            }
            Server::Gone(..) | Server::Unknown => Err(UnmountError::NotMounted(point)),
        };
    };
    if !entry.is_kvfs() {
        return Err(UnmountError::NotKvfs {
            path: point,
            what: format!("{} from {}", entry.fstype, entry.source),
        });
    }
    // SAFETY: geteuid cannot fail and touches no memory.
    let euid = unsafe { libc::geteuid() };
    if let Some(owner) = entry.fuse_user().filter(|o| euid != 0 && *o != euid) {
        return Err(UnmountError::NotOwner { path: point, owner });
    }
    um::unmount(&point, lazy)?;
    match server {
        Server::Live(path, record) => Ok(wait(&point, &path, record, lazy, timeout)),
        Server::Gone(path, record) => {
            um::remove_record(&path);
            eprintln!(
                "kvfs: unmounted {}, but its mount server (pid {}) had stopped without \
                 finishing (killed, or out of memory?): what it had not uploaded is not in \
                 the store; the next writer recovers the store to what was durable",
                point.display(),
                record.pid
            );
            Ok(1)
        }
        Server::Unknown => {
            eprintln!(
                "kvfs: unmounted {}, but found no record of its mount server, so cannot \
                 wait for it to finish uploading (it goes on in the background; a writer \
                 that opens the store waits for it)",
                point.display()
            );
            Ok(1)
        }
    }
}

/// `dir` as the mount table names it: canonical where it can be resolved; a dead or
/// inaccessible FUSE mount (`ENOTCONN`, or `EACCES` for another user's mount) by its
/// canonical parent and its own name.
fn resolve(dir: &Path) -> Result<PathBuf, UnmountError> {
    let err = match dir.canonicalize() {
        Ok(p) => return Ok(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(UnmountError::Missing(dir.to_path_buf()))
        }
        Err(e) => e,
    };
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => match parent.canonicalize() {
            Ok(p) => Ok(p.join(name)),
            Err(_) => Err(UnmountError::Access {
                path: dir.to_path_buf(),
                source: err,
            }),
        },
        _ => Err(UnmountError::Access {
            path: dir.to_path_buf(),
            source: err,
        }),
    }
}

/// The server of the mount at `point`, from its record. A record of another mount at
/// the same point (another device number) is not this mount's.
fn server_of(point: &Path, entry: Option<&MountEntry>) -> Server {
    // SAFETY: geteuid cannot fail and touches no memory.
    let euid = unsafe { libc::geteuid() };
    let owner = entry.and_then(MountEntry::fuse_user).unwrap_or(euid);
    let Some((path, record)) = um::find_record(point, owner) else {
        return Server::Unknown;
    };
    let alive = record.server_runs();
    let same_mount = match (entry, &record.dev) {
        (Some(e), Some(dev)) => e.dev == *dev,
        _ => true,
    };
    if alive && same_mount {
        Server::Live(path, record)
    } else if !alive && same_mount && entry.is_some() && record.phase != Phase::Finished {
        Server::Gone(path, record)
    } else {
        Server::Unknown
    }
}

/// Wait for the server of `record` to exit, saying what it does when that takes more
/// than a moment; report its outcome and remove its record. `detached`: the mount was
/// detached, so a server still serving has files open. The exit status.
fn wait(
    point: &Path,
    path: &Path,
    record: MountRecord,
    detached: bool,
    timeout: Option<Duration>,
) -> i32 {
    let pid = record.pid;
    let start = Instant::now();
    let mut next_note = start + QUIET;
    let mut noted = false;
    let mut last = record;
    while last.server_runs() {
        if let Some(r) = um::reread_record(path, pid) {
            last = r;
        }
        let now = Instant::now();
        if let Some(limit) = timeout.filter(|t| now.duration_since(start) >= *t) {
            eprintln!(
                "kvfs: gave up waiting after {} s: {}. It goes on in the background.",
                limit.as_secs(),
                doing(point, &last, detached)
            );
            return 1;
        }
        if now >= next_note {
            eprintln!("kvfs: {}", doing(point, &last, detached));
            next_note = now + REPEAT;
            noted = true;
        }
        std::thread::sleep(POLL);
    }
    let finished = um::reread_record(path, pid).unwrap_or(last);
    um::remove_record(path);
    match (finished.phase, finished.error) {
        (Phase::Finished, None) => {
            if noted {
                eprintln!(
                    "kvfs: {} is unmounted: everything is in the store, and the mount \
                     server has exited",
                    point.display()
                );
            }
            0
        }
        (Phase::Finished, Some(e)) => {
            eprintln!(
                "kvfs: the mount server of {} (pid {pid}) could not upload everything: {e}",
                point.display()
            );
            eprintln!(
                "kvfs: it has exited: what it had not uploaded is not in the store; the \
                 next writer recovers the store to what was durable"
            );
            1
        }
        _ => {
            eprintln!(
                "kvfs: the mount server of {} (pid {pid}) exited without finishing \
                 (killed, or out of memory?): what it had not uploaded is not in the store; \
                 the next writer recovers the store to what was durable",
                point.display()
            );
            1
        }
    }
}

/// What the server of `r` is doing, for the user.
fn doing(point: &Path, r: &MountRecord, detached: bool) -> String {
    let pid = r.pid;
    match r.phase {
        Phase::Serving if detached => format!(
            "{} is detached, but files are still open in it: its mount server (pid {pid}) \
             finishes uploading once the last of them is closed",
            point.display()
        ),
        Phase::Serving => format!("waiting for the mount server (pid {pid}) to finish uploading"),
        Phase::Finishing => {
            let mut s = format!(
                "waiting for the mount server (pid {pid}) to finish uploading: {} not yet \
                 in the store",
                human_bytes(r.unflushed_bytes)
            );
            match r.uploads_in_flight {
                0 => {}
                1 => s.push_str(", 1 upload under way"),
                n => s.push_str(&format!(", {n} uploads under way")),
            }
            if r.store_unanswered {
                s.push_str("; the store does not answer (retrying)");
            }
            s
        }
        Phase::Finished => format!("waiting for the mount server (pid {pid}) to exit"),
    }
}

/// `n` bytes for people: `512 B`, `3.2 MiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
    }

    #[test]
    fn a_missing_directory_is_named() {
        let err = resolve(Path::new("/nonexistent/kvfs-unmount-test")).unwrap_err();
        assert!(matches!(err, UnmountError::Missing(_)), "{err}");
    }
}
