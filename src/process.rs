//! Facts about processes on this host, used to tell a crashed writer from a live one.

/// This machine's host name.
pub fn this_host() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown-host".to_string())
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

/// What is mounted at `point` (file-system type and source), if anything.
pub fn mounted_at(point: &std::path::Path) -> Option<String> {
    let want = point.canonicalize().ok()?;
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    table.lines().rev().find_map(|line| {
        // Fields: id parent major:minor root mount-point options… - type source …
        let mut fields = line.split(' ');
        let at = fields.nth(4)?;
        if unescape_mountinfo(at) != want.as_os_str().to_string_lossy() {
            return None;
        }
        let (_, rest) = line.split_once(" - ")?;
        let mut rest = rest.split(' ');
        let fstype = rest.next().unwrap_or("?");
        let source = rest.next().unwrap_or("?");
        Some(format!("{fstype} from {}", unescape_mountinfo(source)))
    })
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
    fn the_root_is_mounted_and_a_fresh_directory_is_not() {
        assert!(mounted_at(std::path::Path::new("/")).is_some());
        let dir = std::env::temp_dir().join(format!("kvfs-not-mounted-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(mounted_at(&dir).is_none());
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(unescape_mountinfo("a\\040b\\011c"), "a b\tc");
    }

    #[test]
    fn this_process_is_alive_and_pid_zero_is_not() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
    }
}
