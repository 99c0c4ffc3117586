//! Facts about processes on this host, used to tell a crashed writer from a live one.

/// This machine's host name.
pub fn this_host() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown-host".to_string())
}

/// Where a process id means something: the host name, the kernel's boot and the PID
/// namespace. Two containers may share a host name (and even a kernel) yet number
/// their processes apart; a pid says which process it is only where all three match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostIdentity {
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id`: new at every boot. `None` if unreadable.
    pub boot_id: Option<String>,
    /// The inode of `/proc/self/ns/pid`, which names the PID namespace. `None` if
    /// unreadable.
    pub pid_ns: Option<u64>,
}

impl HostIdentity {
    /// The identity of this process's host, boot and PID namespace.
    pub fn current() -> HostIdentity {
        HostIdentity {
            host: this_host(),
            boot_id: boot_id(),
            pid_ns: pid_namespace(),
        }
    }

    /// Whether a pid recorded by `other` names a process that this one can look up
    /// (with [`pid_alive`]): same host name, same boot and same PID namespace, each
    /// known on both sides. Anything unknown counts as a different host.
    pub fn shares_pids_with(&self, other: &HostIdentity) -> bool {
        self.host == other.host
            && self.boot_id.is_some()
            && self.boot_id == other.boot_id
            && self.pid_ns.is_some()
            && self.pid_ns == other.pid_ns
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), if readable.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The inode number of this process's PID namespace (`/proc/self/ns/pid`), if
/// readable.
pub fn pid_namespace() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
}

/// Whether process `pid` on this host is running (a zombie counts as gone).
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid as i32, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state letter follows the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim().chars().next());
            !matches!(state, Some('Z') | Some('X'))
        }
        Err(_) => true,
    }
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/PID/stat`): with the pid, it names one process, even after the pid is
/// reused. `None` if the process does not exist.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name start with the state (field 3).
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// One line of the mount table (`/proc/self/mountinfo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// The device number of the mounted file system, `major:minor` (for a FUSE mount,
    /// `0:N`, unique while it is mounted).
    pub dev: String,
    /// Where it is mounted.
    pub point: String,
    /// The file-system type, such as `ext4` or `fuse.kvfs`.
    pub fstype: String,
    /// The mount source, such as `/dev/vda1` or `kvfs`.
    pub source: String,
    /// The file system's own options (for FUSE: `user_id=N,group_id=N,…`).
    pub super_options: String,
}

impl MountEntry {
    /// The user that mounted a FUSE file system (its `user_id=` option).
    pub fn fuse_user(&self) -> Option<u32> {
        self.super_options
            .split(',')
            .find_map(|o| o.strip_prefix("user_id="))
            .and_then(|u| u.parse().ok())
    }

    /// Whether this is a kvfs mount (type `fuse.kvfs`, or plain `fuse` from the
    /// source `kvfs`).
    pub fn is_kvfs(&self) -> bool {
        self.fstype == "fuse.kvfs" || (self.fstype == "fuse" && self.source == "kvfs")
    }

    /// Parse one line of `/proc/self/mountinfo`.
    fn parse(line: &str) -> Option<MountEntry> {
        // Fields: id parent major:minor root mount-point options [optional…] - type
        // source super-options
        let (head, tail) = line.split_once(" - ")?;
        let mut head = head.split(' ');
        let dev = head.nth(2)?;
        let point = head.nth(1)?;
        let mut tail = tail.split(' ');
        let fstype = tail.next()?;
        let source = tail.next().unwrap_or("?");
        let super_options = tail.next().unwrap_or("");
        Some(MountEntry {
            dev: dev.to_string(),
            point: unescape_mountinfo(point),
            fstype: unescape_mountinfo(fstype),
            source: unescape_mountinfo(source),
            super_options: unescape_mountinfo(super_options),
        })
    }
}

/// The topmost file system mounted at `point` (an absolute path, compared as given:
/// canonicalize it first where it can be resolved), if any.
pub fn mount_entry(point: &std::path::Path) -> Option<MountEntry> {
    let want = point.as_os_str().to_string_lossy();
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // Later lines are mounted later: the last match is the one on top.
    table
        .lines()
        .rev()
        .filter_map(MountEntry::parse)
        .find(|e| e.point == want)
}

/// What is mounted at `point` (file-system type and source), if anything.
pub fn mounted_at(point: &std::path::Path) -> Option<String> {
    let want = point.canonicalize().ok()?;
    mount_entry(&want).map(|e| format!("{} from {}", e.fstype, e.source))
}

/// Undo mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_has_an_identity_that_shares_pids_only_with_itself() {
        let me = HostIdentity::current();
        // Linux: both are readable.
        assert!(me.boot_id.is_some() && me.pid_ns.is_some(), "{me:?}");
        assert!(me.shares_pids_with(&me.clone()));
        let other_ns = HostIdentity {
            pid_ns: me.pid_ns.map(|n| n + 1),
            ..me.clone()
        };
        assert!(!me.shares_pids_with(&other_ns));
        let other_boot = HostIdentity {
            boot_id: Some("another boot".into()),
            ..me.clone()
        };
        assert!(!me.shares_pids_with(&other_boot));
        let unknown = HostIdentity {
            boot_id: None,
            pid_ns: None,
            ..me.clone()
        };
        assert!(!me.shares_pids_with(&unknown));
        assert!(!unknown.shares_pids_with(&unknown.clone()));
    }

    #[test]
    fn the_root_is_mounted_and_a_fresh_directory_is_not() {
        assert!(mounted_at(std::path::Path::new("/")).is_some());
        let dir = std::env::temp_dir().join(format!("kvfs-not-mounted-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(mounted_at(&dir).is_none());
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(unescape_mountinfo("a\\040b\\011c"), "a b\tc");
    }

    #[test]
    fn mount_table_lines_parse() {
        let line = "52 29 0:47 / /tmp/a\\040b rw,nosuid,nodev,relatime shared:27 - fuse.kvfs kvfs rw,user_id=1000,group_id=1000,default_permissions";
        let e = MountEntry::parse(line).unwrap();
        assert_eq!(e.dev, "0:47");
        assert_eq!(e.point, "/tmp/a b");
        assert!(e.is_kvfs());
        assert_eq!(e.fuse_user(), Some(1000));
        let e = MountEntry::parse("1 0 8:1 / / rw - ext4 /dev/sda1 rw").unwrap();
        assert!(!e.is_kvfs());
        assert_eq!(e.fuse_user(), None);
        assert!(MountEntry::parse("garbage").is_none());
        assert!(mount_entry(std::path::Path::new("/")).is_some());
    }

    #[test]
    fn a_process_has_a_start_time() {
        let me = start_time(std::process::id()).unwrap();
        assert_eq!(start_time(std::process::id()), Some(me));
        assert_eq!(start_time(0), None);
    }

    #[test]
    fn this_process_is_alive_and_pid_zero_is_not() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
    }
}
