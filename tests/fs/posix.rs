//! POSIX behaviour compared with tmpfs: the same steps run in a kvfs mount and in a
//! tmpfs, each step's outcome (errno or the attributes it shows) written to a
//! transcript, and the transcripts must match. Then the kvfs side is remounted and
//! what was left must still match.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::common::mount::Mount;
use kvfs_testkit::mount::mount_tmpfs;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `ok` or the errno name of a libc return code.
fn rc(r: i64) -> String {
    if r >= 0 {
        "ok".into()
    } else {
        format!("errno {}", errno())
    }
}

/// What a path shows, without times: kind, mode, links, size, device numbers.
fn stat_line(p: &Path) -> String {
    match std::fs::symlink_metadata(p) {
        Ok(m) => format!(
            "{:o} nlink {} size {} rdev {}:{}",
            m.mode(),
            m.nlink(),
            if m.is_dir() { 0 } else { m.size() },
            libc::major(m.rdev()),
            libc::minor(m.rdev()),
        ),
        Err(e) => format!("stat errno {}", e.raw_os_error().unwrap_or(0)),
    }
}

fn times(p: &Path) -> String {
    let m = std::fs::symlink_metadata(p).unwrap();
    format!(
        "atime {}.{} mtime {}.{}",
        m.atime(),
        m.atime_nsec(),
        m.mtime(),
        m.mtime_nsec()
    )
}

fn set_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) -> String {
    let ts = [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    // SAFETY: a valid C string and two timespecs.
    rc(unsafe { libc::utimensat(libc::AT_FDCWD, c(p).as_ptr(), ts.as_ptr(), 0) } as i64)
}

fn xattr_set(p: &Path, name: &str, value: &[u8], flags: i32) -> String {
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and a buffer of the given length.
    rc(unsafe {
        libc::lsetxattr(
            c(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    } as i64)
}

fn xattr_get(p: &Path, name: &str, size: usize) -> String {
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; size];
    // SAFETY: valid C strings and a buffer of `size` bytes.
    let r = unsafe { libc::lgetxattr(c(p).as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), size) };
    if r < 0 {
        return format!("errno {}", errno());
    }
    if size == 0 {
        return format!("size {r}");
    }
    format!("{:?}", String::from_utf8_lossy(&buf[..r as usize]))
}

fn xattr_list(p: &Path) -> String {
    let mut buf = vec![0u8; 4096];
    // SAFETY: a valid C string and a buffer of 4096 bytes.
    let r = unsafe { libc::llistxattr(c(p).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return format!("errno {}", errno());
    }
    let mut names: Vec<String> = buf[..r as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).to_string())
        .filter(|n| !n.starts_with("security."))
        .collect();
    names.sort();
    names.join(",")
}

fn xattr_remove(p: &Path, name: &str) -> String {
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings.
    rc(unsafe { libc::lremovexattr(c(p).as_ptr(), n.as_ptr()) } as i64)
}

/// Run the steps in `root`; every outcome goes to the transcript.
fn steps(root: &Path) -> Vec<String> {
    let mut t = Vec::new();
    let p = |n: &str| root.join(n);
    let mut log = |what: &str, out: String| t.push(format!("{what}: {out}"));
    // SAFETY (all libc calls below): valid C strings that outlive the call.
    unsafe {
        libc::umask(0o022);
    }

    // Special files.
    log(
        "mkfifo",
        rc(unsafe { libc::mkfifo(c(&p("fifo")).as_ptr(), 0o640) } as i64),
    );
    log(
        "mknod chr",
        rc(unsafe {
            libc::mknod(
                c(&p("chr")).as_ptr(),
                libc::S_IFCHR | 0o600,
                libc::makedev(1, 3),
            )
        } as i64),
    );
    log(
        "mknod blk",
        rc(unsafe {
            libc::mknod(
                c(&p("blk")).as_ptr(),
                libc::S_IFBLK | 0o600,
                libc::makedev(7, 0),
            )
        } as i64),
    );
    let sock = std::os::unix::net::UnixListener::bind(p("sock"));
    log(
        "bind socket",
        if sock.is_ok() {
            "ok".into()
        } else {
            "failed".into()
        },
    );
    drop(sock);
    for n in ["fifo", "chr", "blk", "sock"] {
        log(&format!("stat {n}"), stat_line(&p(n)));
    }
    // A FIFO opened through the kernel works as a pipe.
    let fifo = p("fifo");
    let writer = std::thread::spawn(move || std::fs::write(fifo, b"through the pipe"));
    log(
        "read fifo",
        format!(
            "{:?}",
            std::fs::read_to_string(p("fifo")).map_err(|e| e.kind())
        ),
    );
    log(
        "fifo writer",
        format!("{:?}", writer.join().unwrap().is_ok()),
    );

    // Hard links.
    std::fs::write(p("file"), b"content").unwrap();
    log(
        "link",
        rc(unsafe { libc::link(c(&p("file")).as_ptr(), c(&p("hard")).as_ptr()) } as i64),
    );
    log("stat file", stat_line(&p("file")));
    log(
        "same inode",
        format!(
            "{}",
            std::fs::metadata(p("file")).unwrap().ino()
                == std::fs::metadata(p("hard")).unwrap().ino()
        ),
    );
    std::fs::write(p("hard"), b"changed through the other name").unwrap();
    log("read file", std::fs::read_to_string(p("file")).unwrap());
    log(
        "rename over own link",
        format!("{:?}", std::fs::rename(p("file"), p("hard")).is_ok()),
    );
    log("stat file after", stat_line(&p("file")));
    log(
        "unlink hard",
        format!("{:?}", std::fs::remove_file(p("hard")).is_ok()),
    );
    log("stat file after unlink", stat_line(&p("file")));
    log(
        "link fifo",
        rc(unsafe { libc::link(c(&p("fifo")).as_ptr(), c(&p("fifo2")).as_ptr()) } as i64),
    );
    std::os::unix::fs::symlink("file", p("sym")).unwrap();
    log(
        "link symlink",
        rc(unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                c(&p("sym")).as_ptr(),
                libc::AT_FDCWD,
                c(&p("sym2")).as_ptr(),
                0,
            )
        } as i64),
    );
    log("stat sym2", stat_line(&p("sym2")));
    std::fs::create_dir(p("dir")).unwrap();
    log(
        "link dir",
        rc(unsafe { libc::link(c(&p("dir")).as_ptr(), c(&p("dir2")).as_ptr()) } as i64),
    );

    // Directory link counts.
    std::fs::create_dir(p("dir/a")).unwrap();
    std::fs::create_dir(p("dir/b")).unwrap();
    std::fs::write(p("dir/f"), b"x").unwrap();
    log("nlink dir", stat_line(&p("dir")));
    std::fs::remove_dir(p("dir/a")).unwrap();
    std::fs::rename(p("dir/b"), p("b")).unwrap();
    log("nlink dir after", stat_line(&p("dir")));
    log("nlink b", stat_line(&p("b")));

    // Times: set exactly, omit, and what entry changes do to a directory.
    log(
        "utimensat",
        set_times(
            &p("file"),
            (1_000_000_000, 123_456_789),
            (1_100_000_000, 987_654_321),
        ),
    );
    log("times", times(&p("file")));
    log(
        "utimensat omit atime",
        set_times(&p("file"), (0, libc::UTIME_OMIT), (1_200_000_000, 5)),
    );
    log("times after omit", times(&p("file")));
    set_times(&p("dir"), (1_000_000_000, 0), (1_000_000_000, 0));
    std::fs::write(p("dir/new"), b"n").unwrap();
    log(
        "dir mtime moved by create",
        format!(
            "{}",
            std::fs::metadata(p("dir")).unwrap().mtime() > 1_000_000_000
        ),
    );
    set_times(&p("dir"), (1_000_000_000, 0), (1_000_000_000, 0));
    std::fs::remove_file(p("dir/new")).unwrap();
    log(
        "dir mtime moved by unlink",
        format!(
            "{}",
            std::fs::metadata(p("dir")).unwrap().mtime() > 1_000_000_000
        ),
    );
    // relatime: the first read after a change moves atime past mtime; the next
    // read leaves it.
    std::fs::read(p("file")).unwrap();
    let m = std::fs::metadata(p("file")).unwrap();
    log(
        "atime after read",
        format!(
            "{}",
            (m.atime(), m.atime_nsec()) > (m.mtime(), m.mtime_nsec())
        ),
    );
    let before = std::fs::metadata(p("file")).unwrap().ctime();
    std::fs::set_permissions(p("file"), std::fs::Permissions::from_mode(0o600)).unwrap();
    log(
        "ctime after chmod",
        format!(
            "{}",
            std::fs::metadata(p("file")).unwrap().ctime() >= before
        ),
    );

    // A set-group-ID directory passes on its group (and the bit, to directories).
    std::fs::create_dir(p("sgid")).unwrap();
    log(
        "chown dir",
        rc(unsafe { libc::chown(c(&p("sgid")).as_ptr(), u32::MAX, 4321) } as i64),
    );
    std::fs::set_permissions(p("sgid"), std::fs::Permissions::from_mode(0o2775)).unwrap();
    std::fs::write(p("sgid/f"), b"g").unwrap();
    std::fs::create_dir(p("sgid/sub")).unwrap();
    for n in ["sgid/f", "sgid/sub"] {
        let m = std::fs::metadata(p(n)).unwrap();
        log(
            &format!("{n} gid and mode"),
            format!("{} {:o}", m.gid(), m.mode()),
        );
    }

    // An unlinked open file.
    let f = std::fs::File::create(p("gone")).unwrap();
    std::fs::remove_file(p("gone")).unwrap();
    log(
        "fstat unlinked",
        format!("nlink {}", f.metadata().unwrap().nlink()),
    );
    drop(f);

    // Names and depth.
    let long = "n".repeat(256);
    log(
        "256-byte name",
        format!(
            "{:?}",
            std::fs::write(p(&long), b"").map_err(|e| e.raw_os_error())
        ),
    );
    // 30 levels of 202-byte names: 6,000 bytes below the root, more than PATH_MAX,
    // reached one level at a time (Linux limits a path argument, not depth).
    let mut fd = unsafe { libc::open(c(root).as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY) };
    let mut made = 0;
    for i in 0..30 {
        let name = CString::new(format!("{i:02}{}", "d".repeat(200))).unwrap();
        if unsafe { libc::mkdirat(fd, name.as_ptr(), 0o755) } != 0 {
            break;
        }
        let next = unsafe { libc::openat(fd, name.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY) };
        unsafe { libc::close(fd) };
        fd = next;
        if fd < 0 {
            break;
        }
        made += 1;
    }
    let leaf = CString::new("leaf").unwrap();
    let file = unsafe { libc::openat(fd, leaf.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644) };
    log("deep levels", format!("{made}, leaf {}", rc(file as i64)));
    unsafe {
        libc::close(file);
        libc::close(fd);
    }

    // Extended attributes.
    log("setxattr", xattr_set(&p("file"), "user.a", b"1", 0));
    log(
        "setxattr big",
        xattr_set(&p("file"), "user.big", &[b'v'; 3000], 0),
    );
    log(
        "setxattr create existing",
        xattr_set(&p("file"), "user.a", b"2", libc::XATTR_CREATE),
    );
    log(
        "setxattr replace missing",
        xattr_set(&p("file"), "user.none", b"2", libc::XATTR_REPLACE),
    );
    log(
        "setxattr replace",
        xattr_set(&p("file"), "user.a", b"22", libc::XATTR_REPLACE),
    );
    log("getxattr", xattr_get(&p("file"), "user.a", 100));
    log("getxattr size", xattr_get(&p("file"), "user.big", 0));
    log(
        "getxattr small buffer",
        xattr_get(&p("file"), "user.big", 10),
    );
    log("getxattr missing", xattr_get(&p("file"), "user.none", 100));
    log("listxattr", xattr_list(&p("file")));
    log(
        "setxattr dir",
        xattr_set(&p("dir"), "user.d", b"on a dir", 0),
    );
    log("getxattr dir", xattr_get(&p("dir"), "user.d", 100));
    log("removexattr", xattr_remove(&p("file"), "user.a"));
    log("removexattr missing", xattr_remove(&p("file"), "user.a"));
    log("listxattr after", xattr_list(&p("file")));
    log(
        "setxattr long name",
        xattr_set(&p("file"), &format!("user.{}", "x".repeat(300)), b"v", 0),
    );
    log(
        "setxattr too big",
        xattr_set(&p("file"), "user.huge", &vec![b'h'; 70_000], 0),
    );

    // fallocate and SEEK_DATA / SEEK_HOLE.
    {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(p("sparse"))
            .unwrap();
        let fd = f.as_raw_fd();
        log(
            "fallocate",
            rc(unsafe { libc::fallocate(fd, 0, 0, 100_000) } as i64),
        );
        log(
            "size after fallocate",
            format!("{}", f.metadata().unwrap().len()),
        );
        log(
            "fallocate keep size",
            rc(unsafe { libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 0, 500_000) } as i64),
        );
        log(
            "size after keep size",
            format!("{}", f.metadata().unwrap().len()),
        );
        f.set_len(0).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[1u8; 4096], 0).unwrap();
        f.write_all_at(&[2u8; 4096], 2 << 20).unwrap();
        f.set_len(3 << 20).unwrap();
        f.sync_all().unwrap();
        for (whence, name) in [(libc::SEEK_DATA, "data"), (libc::SEEK_HOLE, "hole")] {
            for at in [0i64, 5000, 2 << 20, (2 << 20) + 5000] {
                let r = unsafe { libc::lseek(fd, at, whence) };
                log(
                    &format!("seek {name} from {at}"),
                    if r < 0 {
                        format!("errno {}", errno())
                    } else {
                        format!("{r}")
                    },
                );
            }
        }
    }
    t
}

/// What is left after the steps, for comparing after a remount.
fn survey(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for n in [
        "fifo", "fifo2", "chr", "blk", "sock", "file", "sym", "sym2", "dir", "b", "sparse",
    ] {
        out.push(format!("{n}: {}", stat_line(&root.join(n))));
    }
    let m = std::fs::metadata(root.join("file")).unwrap();
    out.push(format!("file: mtime {}.{}", m.mtime(), m.mtime_nsec()));
    out.push(format!("file xattrs: {}", xattr_list(&root.join("file"))));
    out.push(format!(
        "dir xattr: {}",
        xattr_get(&root.join("dir"), "user.d", 100)
    ));
    out.push(format!(
        "file content: {:?}",
        std::fs::read_to_string(root.join("file")).ok()
    ));
    out
}

fn compare(what: &str, kvfs: &[String], tmpfs: &[String]) {
    let diffs: Vec<String> = kvfs
        .iter()
        .zip(tmpfs)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("kvfs  {a}\ntmpfs {b}"))
        .collect();
    assert!(
        diffs.is_empty() && kvfs.len() == tmpfs.len(),
        "{what}: {} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

fn work_dir() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let tmpfs = dir.path().join("tmpfs");
    (dir, store, tmpfs)
}

#[test]
fn posix_steps_match_tmpfs_before_and_after_remount() {
    let (dir, store, tmpfs_point) = work_dir();
    let tmpfs = mount_tmpfs(&tmpfs_point).expect("tmpfs");
    let point = dir.path().join("mnt");
    let store = store.to_str().unwrap().to_string();
    let m = Mount::start(&store, &point, &[], &[]);
    let want = steps(&tmpfs.point);
    let got = steps(m.point());
    compare("steps", &got, &want);
    let want = survey(&tmpfs.point);
    compare("survey", &survey(m.point()), &want);
    m.finish();
    let m = Mount::start(&store, &point, &[], &[]);
    compare("survey after remount", &survey(m.point()), &want);
    m.finish();
}

#[test]
fn without_xattrs_every_xattr_call_is_unsupported() {
    let (dir, store, _) = work_dir();
    let point = dir.path().join("mnt");
    let m = Mount::start(store.to_str().unwrap(), &point, &["--no-xattrs"], &[]);
    let f = m.point().join("f");
    std::fs::write(&f, b"x").unwrap();
    for _ in 0..2 {
        assert_eq!(
            xattr_get(&f, "user.a", 10),
            format!("errno {}", libc::EOPNOTSUPP)
        );
        assert_eq!(
            xattr_set(&f, "user.a", b"1", 0),
            format!("errno {}", libc::EOPNOTSUPP)
        );
    }
    m.finish();
}
