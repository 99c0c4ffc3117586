//! End-to-end tests of `kvfs mount`: real FUSE mounts driven with `std::fs` and shell
//! tools, remounts, interplay with the CLI, the background server, and a mount of an
//! S3 store (the in-process test server). Needs /dev/fuse, root (or a working
//! fusermount3) and `fusermount3` to unmount; `.ci/run` installs it.
//!
//! Every mount is a [`MountGuard`]: it unmounts and stops its server even when the
//! test panics.

use crate::common::mount::{force_unmount, is_mounted, Mount, KVFS};
use crate::common::S3Fixture;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a mount or unmount may take before the test gives up.
const PATIENCE: Duration = Duration::from_secs(60);

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `kvfs mount --foreground` child (the test kit's harness); unmounts and reaps it
/// on drop.
struct MountGuard(Mount);

impl MountGuard {
    /// Mount `store` at `point` (created if missing) and wait until it is visible.
    fn start(store: &str, point: &Path, extra: &[&str], env: &[(&str, String)]) -> MountGuard {
        MountGuard(Mount::start(store, point, extra, env))
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.point().join(rel)
    }

    /// `sh -c script` in the mount point; panics unless it succeeds.
    fn sh(&self, script: &str) -> String {
        let out = self.sh_output(script);
        assert!(
            out.status.success(),
            "`{script}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn sh_output(&self, script: &str) -> Output {
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(self.0.point())
            .output()
            .unwrap()
    }

    /// Unmount cleanly and require exit status 0.
    fn finish(self) {
        self.0.finish();
    }
}

/// A temporary directory with a store and a mount point in it.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn store(&self) -> String {
        self.dir.path().join("store").to_string_lossy().into_owned()
    }

    fn point(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn mount(&self) -> MountGuard {
        MountGuard::start(&self.store(), &self.point(), &[], &[])
    }

    fn kvfs(&self, args: &[&str]) -> Output {
        Command::new(KVFS)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Deterministic pseudo-random bytes.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = crate::common::Rng(seed | 1);
    (0..len).map(|_| rng.next() as u8).collect()
}

fn mtime(p: &Path) -> (i64, i64) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.mtime(), m.mtime_nsec())
}

#[test]
fn shell_tools_work_and_everything_persists() {
    let fx = Fixture::new();
    let m = fx.mount();

    // echo, append, chmod, touch, cat, ls -l. (Times and modes are set while the
    // content is loaded, or on empty files: see the ignored test
    // `setattr_of_an_open_unwritten_file_keeps_its_content`.)
    m.sh("echo hello > f");
    let when = std::time::UNIX_EPOCH + Duration::new(981173106, 500_000_000);
    {
        let mut f = OpenOptions::new().append(true).open(m.path("f")).unwrap();
        f.write_all(b"more\n").unwrap();
        f.set_modified(when).unwrap();
    }
    m.sh("chmod 640 f && echo again >> f2 && echo again >> f2");
    m.sh("touch empty && touch -d '2001-02-03 04:05:06.5' empty");
    assert_eq!(mtime(&m.path("empty")), (981173106, 500_000_000));
    assert_eq!(m.sh("cat f"), "hello\nmore\n");
    let ls = m.sh("ls -l");
    assert!(ls.contains(" f\n"), "{ls}");
    let out = m.sh_output("ls -la /dev/null . f");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::metadata(m.path("empty")).unwrap().len(), 0);
    assert_eq!(
        fs::metadata(m.path("f")).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    let f_mtime = mtime(&m.path("f"));
    assert_eq!(f_mtime, (981173106, 500_000_000));

    // mkdir -p, rmdir of a non-empty directory.
    m.sh("mkdir -p a/b/c && echo deep > a/b/c/file");
    let e = fs::remove_dir(m.path("a")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOTEMPTY);
    assert!(!m.sh_output("rmdir a").status.success());
    m.sh("mkdir gone && rmdir gone");
    assert!(!m.path("gone").exists());

    // cp, mv of a file and of a directory: the old name is gone, the new one there.
    m.sh("cp f a/b/c/copy");
    assert_eq!(fs::read(m.path("a/b/c/copy")).unwrap(), b"hello\nmore\n");
    m.sh("mv a/b/c/copy a/moved");
    assert!(!m.path("a/b/c/copy").exists());
    assert_eq!(fs::read(m.path("a/moved")).unwrap(), b"hello\nmore\n");
    let c_ino = fs::metadata(m.path("a/b/c")).unwrap().ino();
    m.sh("mv a/b d");
    assert!(!m.path("a/b").exists());
    assert_eq!(fs::read(m.path("d/c/file")).unwrap(), b"deep\n");
    assert_eq!(fs::metadata(m.path("d/c")).unwrap().ino(), c_ino);

    // Symlinks; hard links share the inode, content and link count.
    m.sh("ln -s d/c/file sym");
    assert_eq!(m.sh("readlink sym"), "d/c/file\n");
    assert_eq!(m.sh("cat sym"), "deep\n");
    m.sh("echo one > hl");
    fs::hard_link(m.path("hl"), m.path("hard")).unwrap();
    let (a, b) = (
        fs::metadata(m.path("hl")).unwrap(),
        fs::metadata(m.path("hard")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    m.sh("echo linked >> hard");
    assert_eq!(fs::read(m.path("hl")).unwrap(), b"one\nlinked\n");
    m.sh("rm hard hl");

    // Extended attributes: an unset one is ENODATA.
    let name = std::ffi::CString::new("user.x").unwrap();
    let path = std::ffi::CString::new(m.path("f").to_str().unwrap()).unwrap();
    // SAFETY: valid C strings; a null buffer of size 0 asks for the size only.
    let rc = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(rc, -1);
    assert_eq!(errno(&std::io::Error::last_os_error()), libc::ENODATA);

    // rename flags: RENAME_NOREPLACE, RENAME_EXCHANGE, and an unknown flag.
    m.sh("echo one > x1 && echo two > x2");
    let rename2 = |from: &str, to: &str, flags: u32| -> i32 {
        let a = std::ffi::CString::new(m.path(from).to_str().unwrap()).unwrap();
        let b = std::ffi::CString::new(m.path(to).to_str().unwrap()).unwrap();
        // SAFETY: valid C strings for the duration of the call.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                flags,
            )
        };
        if rc == 0 {
            0
        } else {
            errno(&std::io::Error::last_os_error())
        }
    };
    assert_eq!(rename2("x1", "x2", libc::RENAME_NOREPLACE), libc::EEXIST);
    assert_eq!(rename2("x1", "x2", libc::RENAME_EXCHANGE), 0);
    assert_eq!(fs::read(m.path("x1")).unwrap(), b"two\n");
    assert_eq!(fs::read(m.path("x2")).unwrap(), b"one\n");
    assert_eq!(rename2("x1", "x3", 1 << 7), libc::EINVAL);

    // tar out and back in, cp -a, find, du.
    let src = fx.dir.path().join("src");
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    for i in 0..20 {
        fs::write(
            src.join(format!("sub/f{i}")),
            pattern(100 + i * 997, i as u64),
        )
        .unwrap();
    }
    fs::write(src.join("sub/deeper/big"), pattern(300_000, 99)).unwrap();
    std::os::unix::fs::symlink("sub/f1", src.join("link")).unwrap();
    fs::set_permissions(src.join("sub/f3"), fs::Permissions::from_mode(0o600)).unwrap();
    let src_s = src.to_str().unwrap();
    m.sh(&format!(
        "mkdir untar && tar -C {src_s} -cf - . | tar -C untar -xf -"
    ));
    let back = fx.dir.path().join("back");
    fs::create_dir(&back).unwrap();
    m.sh(&format!(
        "tar -C untar -cf - . | tar -C {} -xf -",
        back.display()
    ));
    let diff = Command::new("diff")
        .arg("-r")
        .arg(&src)
        .arg(&back)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    let out = m.sh_output(&format!("cp -a {src_s} copied"));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "cp -a: {out:?}"
    );
    assert_eq!(
        fs::read(m.path("copied/sub/deeper/big")).unwrap(),
        pattern(300_000, 99)
    );
    assert_eq!(
        fs::metadata(m.path("copied/sub/f3"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let found = m.sh("find untar | sort");
    let mut expected = vec!["untar".to_string()];
    for p in ["link", "sub", "sub/deeper", "sub/deeper/big"] {
        expected.push(format!("untar/{p}"));
    }
    for i in 0..20 {
        expected.push(format!("untar/sub/f{i}"));
    }
    expected.sort();
    assert_eq!(found.lines().collect::<Vec<_>>(), expected);
    let du: u64 = m
        .sh("du -sk untar")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(du >= 300, "du -sk says {du}");

    // rm and rm -r.
    m.sh("rm x1 && rm -r copied");
    assert!(!m.path("x1").exists() && !m.path("copied").exists());

    // Remember what must survive a remount (the root has no stored attributes).
    let names = [
        "f",
        "empty",
        "d",
        "d/c",
        "d/c/file",
        "sym",
        "a/moved",
        "untar/sub/deeper/big",
    ];
    let inos: Vec<u64> = names
        .iter()
        .map(|n| fs::symlink_metadata(m.path(n)).unwrap().ino())
        .collect();
    let listing = m.sh("find . -mindepth 1 -exec ls -ld --time-style=+%s.%N {} + | sort");
    m.finish();

    let m = fx.mount();
    assert_eq!(
        m.sh("find . -mindepth 1 -exec ls -ld --time-style=+%s.%N {} + | sort"),
        listing
    );
    for (n, ino) in names.iter().zip(&inos) {
        assert_eq!(fs::symlink_metadata(m.path(n)).unwrap().ino(), *ino, "{n}");
    }
    assert_eq!(mtime(&m.path("f")), f_mtime);
    assert_eq!(
        fs::metadata(m.path("f")).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    assert_eq!(m.sh("cat f sym"), "hello\nmore\ndeep\n");
    assert_eq!(m.sh("readlink sym"), "d/c/file\n");
    let back2 = fx.dir.path().join("back2");
    fs::create_dir(&back2).unwrap();
    m.sh(&format!(
        "tar -C untar -cf - . | tar -C {} -xf -",
        back2.display()
    ));
    let diff = Command::new("diff")
        .arg("-r")
        .arg(&src)
        .arg(&back2)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    m.finish();
}

#[test]
fn setattr_of_an_open_unwritten_file_keeps_its_content() {
    let fx = Fixture::new();
    let m = fx.mount();
    m.sh("echo hello > f && echo hello > g && echo hello > h");
    // touch opens the file for writing, writes nothing, then sets the times.
    m.sh("touch -d '2001-02-03 04:05:06' f");
    assert_eq!(m.sh("cat f"), "hello\n");
    // chmod and chown while a reader holds the file open.
    {
        let _reader = File::open(m.path("g")).unwrap();
        m.sh("chmod 600 g && chown 0:0 g");
    }
    assert_eq!(m.sh("cat g"), "hello\n");
    {
        let f = File::open(m.path("h")).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();
    }
    assert_eq!(m.sh("cat h"), "hello\n");
    m.finish();
    let m = fx.mount();
    assert_eq!(m.sh("cat f g h"), "hello\nhello\nhello\n");
    m.finish();
}

#[test]
fn large_sparse_and_truncated_files() {
    let fx = Fixture::new();
    let m = fx.mount();

    // 5 MiB in 128 KiB chunks, read back; then 4 KiB overwritten in the middle.
    let mut model = pattern(5 << 20, 7);
    {
        let mut f = File::create(m.path("big")).unwrap();
        for chunk in model.chunks(128 << 10) {
            f.write_all(chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    assert_eq!(fs::read(m.path("big")).unwrap(), model);
    let at = (5 << 20) / 2 + 1000;
    let patch = pattern(4096, 8);
    {
        let mut f = OpenOptions::new().write(true).open(m.path("big")).unwrap();
        f.seek(SeekFrom::Start(at as u64)).unwrap();
        f.write_all(&patch).unwrap();
        f.sync_all().unwrap();
    }
    model[at..at + 4096].copy_from_slice(&patch);
    assert_eq!(fs::read(m.path("big")).unwrap(), model);
    let mut part = vec![0u8; 10_000];
    {
        let mut f = File::open(m.path("big")).unwrap();
        f.seek(SeekFrom::Start(at as u64 - 3000)).unwrap();
        f.read_exact(&mut part).unwrap();
    }
    assert_eq!(part, model[at - 3000..at + 7000]);
    let meta = fs::metadata(m.path("big")).unwrap();
    assert_eq!(meta.len(), 5 << 20);
    assert_eq!(meta.blocks(), (5 << 20) / 512);

    // A sparse write past the end: the gap reads as zeros.
    {
        let mut f = File::create(m.path("sparse")).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(SeekFrom::Start(3 << 20)).unwrap();
        f.write_all(b"tail").unwrap();
    }
    let sparse = fs::read(m.path("sparse")).unwrap();
    assert_eq!(sparse.len(), (3 << 20) + 4);
    assert_eq!(&sparse[..4], b"head");
    assert!(sparse[4..3 << 20].iter().all(|b| *b == 0));
    assert_eq!(&sparse[3 << 20..], b"tail");

    // truncate shrinks and grows, small and large files; O_TRUNC empties.
    m.sh("echo 0123456789 > small && truncate -s 4 small && truncate -s 8 small");
    assert_eq!(fs::read(m.path("small")).unwrap(), b"0123\0\0\0\0");
    m.sh("cp big big2 && truncate -s 100000 big2 && truncate -s 200000 big2");
    let mut expect2 = model[..100_000].to_vec();
    expect2.resize(200_000, 0);
    assert_eq!(fs::read(m.path("big2")).unwrap(), expect2);
    m.sh("cp big big3 && : > big3");
    assert_eq!(fs::metadata(m.path("big3")).unwrap().len(), 0);
    m.sh("echo new >> big3");
    assert_eq!(fs::read(m.path("big3")).unwrap(), b"new\n");
    m.finish();

    let m = fx.mount();
    assert_eq!(fs::read(m.path("big")).unwrap(), model);
    assert_eq!(fs::read(m.path("sparse")).unwrap(), sparse);
    assert_eq!(fs::read(m.path("small")).unwrap(), b"0123\0\0\0\0");
    assert_eq!(fs::read(m.path("big2")).unwrap(), expect2);
    assert_eq!(fs::read(m.path("big3")).unwrap(), b"new\n");
    m.finish();
}

#[test]
fn cli_keys_and_mounted_files_are_the_same_thing() {
    let fx = Fixture::new();
    let store = fx.store();
    let out = fx.kvfs(&["put", &store, "a/b/c", "from the cli"]);
    assert!(out.status.success(), "{out:?}");
    let m = fx.mount();
    assert_eq!(m.sh("cat a/b/c"), "from the cli");
    assert_eq!(m.sh("ls a/b"), "c\n");

    // Written through the mount and fsynced: readable by a read-only CLI at once.
    let e = File::create(m.path("x/y.txt")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOENT);
    fs::create_dir(m.path("x")).unwrap();
    {
        let mut f = File::create(m.path("x/y.txt")).unwrap();
        f.write_all(b"through the mount").unwrap();
        f.sync_all().unwrap();
    }
    let out = fx.kvfs(&["get", &store, "x/y.txt"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"through the mount");

    // A CLI write while the mount holds the store is refused.
    let out = fx.kvfs(&["put", &store, "k", "v"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by another writer"),
        "{out:?}"
    );

    fs::write(m.path("late.txt"), b"closed, not fsynced").unwrap();
    m.finish();
    let out = fx.kvfs(&["get", &store, "late.txt"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"closed, not fsynced");
    let out = fx.kvfs(&["get", &store, "a/b/c"]);
    assert_eq!(out.stdout, b"from the cli");
}

#[test]
fn fsck_repair_is_refused_while_mounted() {
    let fx = Fixture::new();
    let m = fx.mount();
    m.sh("echo x > f && sync f");
    let out = fx.kvfs(&["fsck", "--repair", &fx.store()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another writer"), "{err}");
    // A plain fsck reads only, and works while mounted.
    let out = fx.kvfs(&["fsck", &fx.store()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("no problems found"), "{text}");
    assert_eq!(m.sh("cat f"), "x\n");
}

#[test]
fn a_second_writer_mount_is_refused() {
    let fx = Fixture::new();
    let m = fx.mount();
    m.sh("echo x > f");
    let other = fx.dir.path().join("other");
    fs::create_dir(&other).unwrap();
    let out = fx.kvfs(&[
        "mount",
        &fx.store(),
        other.to_str().unwrap(),
        "--foreground",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another writer"), "{err}");
    assert!(!is_mounted(&other.canonicalize().unwrap()));
    // Read-only mounts take no lease: allowed, and they see what was durable.
    m.sh("sync f");
    let ro = MountGuard::start(&fx.store(), &other, &["--read-only"], &[]);
    assert_eq!(ro.sh("cat f"), "x\n");
    let out = ro.sh_output("echo y > g");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only"),
        "{out:?}"
    );
    ro.finish();
    m.finish();

    // Mount point errors.
    let out = fx.kvfs(&[
        "mount",
        &fx.store(),
        "/nonexistent/kvfs-mnt",
        "--foreground",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{out:?}"
    );
    let file = fx.dir.path().join("plain-file");
    fs::write(&file, b"").unwrap();
    let out = fx.kvfs(&["mount", &fx.store(), file.to_str().unwrap(), "--foreground"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a directory"),
        "{out:?}"
    );
}

#[test]
fn unmount_right_after_close_loses_nothing() {
    let fx = Fixture::new();
    // A long flush interval: nothing reaches the store before the unmount does it.
    let point = fx.point();
    let m = MountGuard::start(&fx.store(), &point, &["--flush-interval-ms", "600000"], &[]);
    fs::create_dir(m.path("d")).unwrap();
    for i in 0..200 {
        fs::write(m.path(&format!("d/{i}")), format!("value {i}")).unwrap();
    }
    fs::write(m.path("blocked"), pattern(300_000, 3)).unwrap();
    m.finish();
    let m = fx.mount();
    for i in 0..200 {
        assert_eq!(
            fs::read_to_string(m.path(&format!("d/{i}"))).unwrap(),
            format!("value {i}")
        );
    }
    assert_eq!(fs::read(m.path("blocked")).unwrap(), pattern(300_000, 3));
    // A directory too big for one readdir reply: every entry once, `.` and `..` too.
    let listed = m.sh("ls -f d");
    let mut names: Vec<&str> = listed.lines().collect();
    assert_eq!(names.len(), 202, "{listed}");
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 202, "{listed}");
    assert_eq!(m.sh("ls -l d | wc -l").trim(), "201");
    m.finish();
}

/// Pids of background servers whose command line names `point`.
fn daemon_pids(point: &Path) -> Vec<i32> {
    let point = point.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "--daemon-child") && args.contains(&point) {
            pids.push(pid);
        }
    }
    pids
}

fn process_gone(pid: i32) -> bool {
    u32::try_from(pid).map_or(true, |p| !kvfs::process::pid_alive(p))
}

#[test]
fn background_mount_is_ready_on_return_and_sigterm_flushes() {
    let fx = Fixture::new();
    let point = fx.point();
    fs::create_dir(&point).unwrap();
    let point = point.canonicalize().unwrap();
    // Guard first, so the mount goes away even if an assertion below fails.
    let cleanup = DaemonCleanup(point.clone());
    let out = fx.kvfs(&[
        "mount",
        &fx.store(),
        point.to_str().unwrap(),
        "--flush-interval-ms",
        "600000",
    ]);
    assert!(out.status.success(), "{out:?}");
    // Ready when the command returns.
    assert!(is_mounted(&point));
    fs::write(point.join("f"), b"written to the daemon").unwrap();
    fs::create_dir(point.join("dir")).unwrap();
    fs::write(point.join("dir/g"), pattern(100_000, 5)).unwrap();

    // A second background mount fails with the lock holder's message.
    let other = fx.dir.path().join("other");
    fs::create_dir(&other).unwrap();
    let out = fx.kvfs(&["mount", &fx.store(), other.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by another writer"),
        "{out:?}"
    );
    let out = fx.kvfs(&["mount", &fx.store(), "/nonexistent/kvfs-mnt"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{out:?}"
    );

    let pids = daemon_pids(&point);
    assert_eq!(pids.len(), 1, "{pids:?}");
    // SAFETY: sending a signal to a process we started.
    assert_eq!(unsafe { libc::kill(pids[0], libc::SIGTERM) }, 0);
    wait_until("the daemon unmounts and exits", || {
        !is_mounted(&point) && process_gone(pids[0])
    });
    drop(cleanup);

    let m = fx.mount();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"written to the daemon");
    assert_eq!(fs::read(m.path("dir/g")).unwrap(), pattern(100_000, 5));
    m.finish();
}

/// Unmounts a background mount and stops its server when dropped.
struct DaemonCleanup(PathBuf);

impl Drop for DaemonCleanup {
    fn drop(&mut self) {
        force_unmount(&self.0);
        for pid in daemon_pids(&self.0) {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !process_gone(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if !process_gone(pid) {
                // SAFETY: signalling a server this test started.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

#[test]
fn mount_of_an_s3_store() {
    let (rt, s3) = S3Fixture::start_with_runtime();
    let env = s3.server.client_env();
    let tmp = tempfile::tempdir().unwrap();
    let point = tmp.path().join("mnt");
    let store = format!("s3://{}/mnt", crate::common::BUCKET);
    let m = MountGuard::start(&store, &point, &[], &env);
    m.sh("echo hello > greeting && mkdir -p dir/sub && echo inner > dir/sub/file");
    assert_eq!(m.sh("cat greeting"), "hello\n");
    assert_eq!(m.sh("ls"), "dir\ngreeting\n");
    m.sh("mv greeting dir/renamed && mv dir moved");
    assert_eq!(
        m.sh("find . | sort"),
        ".\n./moved\n./moved/renamed\n./moved/sub\n./moved/sub/file\n"
    );
    m.finish();

    let m = MountGuard::start(&store, &point, &[], &env);
    assert_eq!(m.sh("cat moved/renamed moved/sub/file"), "hello\ninner\n");
    assert!(!m.path("greeting").exists() && !m.path("dir").exists());
    m.finish();
    drop(s3);
    drop(rt);
}

#[test]
fn gc_and_compaction_keep_every_file_and_reclaim_space() {
    let fx = Fixture::new();
    let store = fx.store();
    let m = fx.mount();
    // Small files, a large one, overwrites, renames and deletes.
    m.sh(
        "mkdir -p src/a src/b && \
         for i in $(seq 1 150); do echo \"file $i $(seq 1 $i | tr '\\n' ' ')\" > src/a/f$i; done && \
         for i in $(seq 1 150); do echo \"other $i\" > src/b/g$i; done && \
         head -c 300000 /dev/urandom > src/big && \
         for i in $(seq 1 100); do echo \"new $i\" > src/a/f$i; done && \
         for i in $(seq 1 50); do rm src/b/g$i; done && \
         mv src/b src/c",
    );
    let before = m.sh("tar cf - src | md5sum");
    m.finish();

    for cmd in ["compact", "gc"] {
        let out = fx.kvfs(&[cmd, &store, "--gc-grace-secs", "0"]);
        assert!(out.status.success(), "kvfs {cmd}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        if cmd == "compact" {
            assert!(
                err.contains(&format!("{cmd}: deleted")),
                "no progress output: {err}"
            );
        } else {
            // Compaction left nothing to clean.
            let said = String::from_utf8_lossy(&out.stdout);
            assert_eq!(said.trim(), "nothing to clean: the store is unchanged");
        }
        let out = fx.kvfs(&["fsck", &store]);
        assert!(out.status.success(), "fsck after {cmd}: {out:?}");
    }
    let stats = String::from_utf8(fx.kvfs(&["stats", &store]).stdout).unwrap();
    assert!(stats.contains("reclaimable      0 objects"), "{stats}");
    assert!(!stats.contains("runs             0 "), "{stats}");

    let m = fx.mount();
    assert_eq!(m.sh("tar cf - src | md5sum"), before);
    assert_eq!(m.sh("cat src/a/f7"), "new 7\n");
    assert_eq!(m.sh("grep -rl 'other 77' src"), "src/c/g77\n");
    assert_eq!(m.sh("ls src/c | wc -l").trim(), "100");
    // Still writable, and the writes survive another compaction.
    m.sh("echo after > src/after && rm src/a/f1");
    m.finish();
    let out = fx.kvfs(&["compact", &store, "--gc-grace-secs", "0"]);
    assert!(out.status.success(), "{out:?}");
    let m = fx.mount();
    assert_eq!(m.sh("cat src/after"), "after\n");
    assert_eq!(m.sh("ls src/a | wc -l").trim(), "149");
    m.finish();
}

/// Objects of a local store other than its lease, by path.
fn store_objects(store: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["seg", "run", "ckpt", "manifest"] {
        let Ok(entries) = std::fs::read_dir(store.join(dir)) else {
            continue;
        };
        for e in entries {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            out.push(format!("{dir}/{name}"));
        }
    }
    out.sort();
    out
}

/// A mount with nothing to do writes no object but its lease: after files were
/// written and fsynced, two background GC rounds and a flush interval pass without
/// a new or deleted segment, run, checkpoint or manifest.
#[test]
fn an_idle_mount_writes_nothing_but_its_lease() {
    let fx = Fixture::new();
    let m = fx.mount();
    m.sh("mkdir d && for i in $(seq 1 50); do echo file $i > d/f$i; done && sync");
    let store = PathBuf::from(fx.store());
    // Let the writes' own uploads land.
    std::thread::sleep(Duration::from_secs(2));
    let before = store_objects(&store);
    assert!(before.iter().any(|o| o.starts_with("seg/")), "{before:?}");
    // Two rounds of the background cleaner (every 5 s) and many flush intervals.
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(
        store_objects(&store),
        before,
        "an idle mount wrote or deleted objects"
    );
    assert_eq!(m.sh("cat d/f7"), "file 7\n");
    m.finish();
}

/// The kernel keeps what it cached of a file across opens on a writer's mount: what
/// was read once, and the whole pages a write filled, are read again with no GET.
#[test]
fn reading_again_costs_no_get() {
    let (rt, s3) = S3Fixture::start_with_runtime();
    let env = s3.server.client_env();
    let tmp = tempfile::tempdir().unwrap();
    let point = tmp.path().join("mnt");
    let store = format!("s3://{}/cache", crate::common::BUCKET);
    // A read cache too small to hold anything and no disk cache: every daemon read
    // is a GET.
    let small_cache = ["--cache-bytes", "4096", "--no-disk-cache"];
    let m = MountGuard::start(&store, &point, &small_cache, &env);
    // Whole pages only (small inline files and a large one with extents), written
    // and fsync'd.
    m.sh(
        "for i in $(seq 1 40); do head -c 8192 /dev/urandom > p$i; done && \
         head -c 3145728 /dev/urandom > big && sync p1 big",
    );
    let written = m.sh("cat p* big | md5sum");
    m.finish();

    let m = MountGuard::start(&store, &point, &small_cache, &env);
    let before = s3.server.request_counts();
    assert_eq!(m.sh("cat p* big | md5sum"), written);
    let cold = s3.server.request_counts().since(&before).get;
    assert!(cold > 0, "a fresh mount reads from the store");
    // Again, from new opens: the kernel kept the pages.
    let before = s3.server.request_counts();
    assert_eq!(m.sh("cat p* big | md5sum"), written);
    assert_eq!(m.sh("cat p* big | md5sum"), written);
    assert_eq!(s3.server.request_counts().since(&before).get, 0);
    // Whole pages written through the mount are read back with no GET either; a
    // file changed since is read as it is now.
    let before = s3.server.request_counts();
    m.sh("for i in $(seq 1 20); do head -c 16384 /dev/urandom > q$i; done");
    let fresh = m.sh("cat q* | md5sum");
    assert_eq!(s3.server.request_counts().since(&before).get, 0);
    m.sh("printf changed | dd of=p1 bs=1 seek=100 conv=notrunc status=none");
    assert_eq!(m.sh("head -c 107 p1 | tail -c 7"), "changed");
    m.finish();

    let m = MountGuard::start(&store, &point, &small_cache, &env);
    assert_eq!(m.sh("cat q* | md5sum"), fresh);
    assert_eq!(m.sh("head -c 107 p1 | tail -c 7"), "changed");
    m.finish();
    drop(s3);
    drop(rt);
}
