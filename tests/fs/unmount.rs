//! `kvfs unmount`: it returns only once the mount server has uploaded everything,
//! given the writer lease back and exited, and refuses clearly what it cannot do.
//! Also: a SIGTERM unmount with files still open logs no error.
//!
//! Mounts are the test kit's `kvfs mount --foreground` children (unmounted and reaped
//! on drop whatever happens); `kvfs unmount` finds their server through its record.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kvfs_testkit::faults::FaultConfig;

use crate::common::mount::{is_mounted, Mount, KVFS};
use crate::common::{S3Fixture, BUCKET};

/// How long a server may take to do what a test waits for.
const PATIENCE: Duration = Duration::from_secs(60);

fn kvfs(args: &[&str], env: &[(&str, String)]) -> Output {
    Command::new(KVFS)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("RUST_LOG")
        .output()
        .expect("run kvfs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether process `pid` has exited (gone, or a zombie not yet reaped).
fn exited(pid: u32) -> bool {
    !kvfs::process::pid_alive(pid)
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Files written through a mount whose uploads are slow are all in the store, and
/// the lease is given back, as soon as `kvfs unmount` returns: a `kvfs get` right
/// after it sees every one of them. (`fusermount3 -u` returns before the uploads, and
/// the same reads then miss files.)
#[test]
fn kvfs_unmount_returns_once_everything_is_in_the_store() {
    let (rt, s3) = S3Fixture::start_with_runtime();
    let env = s3.server.client_env();
    let tmp = tempfile::tempdir().unwrap();
    let point = tmp.path().join("mnt");
    let store = format!("s3://{BUCKET}/unmount");
    // Nothing is uploaded before the unmount (a long flush interval); small segments,
    // so that several uploads are under way at once when it comes.
    let m = Mount::start(
        &store,
        &point,
        &["--flush-interval-ms", "600000", "--segment-bytes", "65536"],
        &env,
    );
    let pid = m.pid();
    s3.server.faults().update(|f| {
        *f = FaultConfig {
            put_latency: Duration::from_millis(400),
            jitter: Duration::from_millis(200),
            ..FaultConfig::default()
        }
    });
    fs::create_dir(m.point().join("d")).unwrap();
    for i in 0..60 {
        fs::write(
            m.point().join(format!("d/f{i}")),
            format!("file {i} ").repeat(200),
        )
        .unwrap();
    }
    fs::write(m.point().join("big"), vec![7u8; 400_000]).unwrap();

    let out = kvfs(&["unmount", m.point().to_str().unwrap()], &env);
    assert!(out.status.success(), "kvfs unmount: {}", stderr(&out));
    // The server has given its outcome and is exiting (its last threads may still be
    // on their way out).
    wait_until("the mount server has exited", || exited(pid));
    assert!(!is_mounted(&point));
    for i in [0, 17, 59] {
        let out = kvfs(&["get", &store, &format!("d/f{i}")], &env);
        assert!(out.status.success(), "d/f{i}: {}", stderr(&out));
        assert_eq!(out.stdout, format!("file {i} ").repeat(200).into_bytes());
    }
    let out = kvfs(&["scan", &store, "--keys-only"], &env);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 61);
    let out = kvfs(&["get", &store, "big"], &env);
    assert_eq!(out.stdout, vec![7u8; 400_000]);
    let stats = String::from_utf8_lossy(&kvfs(&["stats", &store], &env).stdout).into_owned();
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("lease") && l.contains("released")),
        "{stats}"
    );
    // Unmounted already: said so.
    let out = kvfs(&["unmount", point.to_str().unwrap()], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not mounted"), "{}", stderr(&out));
    drop(m);
    drop(s3);
    drop(rt);
}

/// When the server's final upload fails (the store stopped answering for longer
/// than the retry timeout), `kvfs unmount` says what it waits for meanwhile, then
/// exits 1 with the server's error.
#[test]
fn kvfs_unmount_reports_a_failed_final_upload() {
    let (rt, s3) = S3Fixture::start_with_runtime();
    let env = s3.server.client_env();
    let tmp = tempfile::tempdir().unwrap();
    let point = tmp.path().join("mnt");
    let store = format!("s3://{BUCKET}/outage");
    let m = Mount::start(
        &store,
        &point,
        &["--flush-interval-ms", "600000", "--retry-timeout-secs", "2"],
        &env,
    );
    fs::write(m.point().join("lost"), b"never uploaded").unwrap();
    s3.server.faults().update(|f| f.outage = true);
    let out = kvfs(&["unmount", m.point().to_str().unwrap()], &env);
    s3.server.faults().clear();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    // The upload is retried for 2 s before it fails: reported meanwhile.
    assert!(
        err.contains(&format!("waiting for the mount server (pid {})", m.pid())),
        "{err}"
    );
    assert!(err.contains("could not upload everything"), "{err}");
    assert!(err.contains("could not flush the store"), "{err}");
    assert!(exited(m.pid()));
    drop(m);
    drop(s3);
    drop(rt);
}

/// A directory that is not a mount point, a mount that is not kvfs, a missing path:
/// each refused with a message that says so.
#[test]
fn kvfs_unmount_refuses_what_is_not_a_kvfs_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let out = kvfs(&["unmount", plain.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not mounted"), "{}", stderr(&out));

    let out = kvfs(
        &["unmount", tmp.path().join("missing").to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));

    let other = tmp.path().join("tmpfs");
    let tmpfs = kvfs_testkit::mount::mount_tmpfs_of_size(&other, 1 << 20).unwrap();
    let out = kvfs(&["unmount", other.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not a kvfs mount (it is tmpfs"),
        "{}",
        stderr(&out)
    );
    assert!(is_mounted(&other), "a tmpfs was unmounted");
    drop(tmpfs);
}

/// A busy mount is refused, naming `--lazy` and `fuser`; `--lazy` detaches it and
/// waits (here until its timeout, saying that files are open); once they are closed
/// a second `kvfs unmount` waits for the server to finish, and every write is kept.
#[test]
fn a_busy_mount_is_refused_and_lazy_unmount_waits_for_open_files() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap();
    let point = tmp.path().join("mnt");
    let m = Mount::start(store, &point, &["--flush-interval-ms", "600000"], &[]);
    let p = m.point().to_str().unwrap().to_string();
    let mut open = File::create(m.point().join("held")).unwrap();
    open.write_all(b"written while held").unwrap();

    let out = kvfs(&["unmount", &p], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("is busy"), "{err}");
    assert!(err.contains("--lazy") && err.contains("fuser -vm"), "{err}");
    assert!(is_mounted(&point), "a busy mount was unmounted");

    let out = kvfs(&["unmount", "--lazy", "--timeout-secs", "1", &p], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("gave up waiting after 1 s"), "{err}");
    assert!(err.contains("files are still open"), "{err}");
    assert!(!is_mounted(&point), "--lazy did not detach");
    assert!(!exited(m.pid()), "the server stopped with a file open");

    drop(open);
    let out = kvfs(&["unmount", &p], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(exited(m.pid()));
    let out = kvfs(&["get", store, "held"], &[]);
    assert_eq!(out.stdout, b"written while held", "{}", stderr(&out));
    let out = kvfs(&["unmount", &p], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not mounted"), "{}", stderr(&out));
    drop(m);
}

/// Another user cannot unmount root's mount: refused with "permission denied", and
/// the mount stays.
#[test]
fn another_users_mount_is_refused() {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root, to run kvfs unmount as another user");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // The other user must reach the mount point's directory.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let store = tmp.path().join("store");
    let point = tmp.path().join("mnt");
    let m = Mount::start(store.to_str().unwrap(), &point, &[], &[]);
    let out = Command::new(KVFS)
        .args(["unmount", m.point().to_str().unwrap()])
        .env_remove("RUST_LOG")
        .env_remove("XDG_RUNTIME_DIR")
        .uid(65534)
        .gid(65534)
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            eprintln!("skipped: cannot run {KVFS} as user 65534: {e}");
            m.finish();
            return;
        }
    };
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );
    assert!(is_mounted(&point));
    m.finish();
}

/// SIGTERM while files are open detaches the mount; when they are closed, the
/// kernel is gone before the replies to their last close: the server's log shows no
/// error for that, and `kvfs unmount` of the detached point waits for the server
/// (or, if it has finished already, says the point is not mounted).
#[test]
fn sigterm_with_files_open_logs_no_error() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap();
    let point = tmp.path().join("mnt");
    let m = Mount::start(store, &point, &[], &[]);
    let mut open = Vec::new();
    for i in 0..16 {
        let mut f = File::create(m.point().join(format!("f{i}"))).unwrap();
        f.write_all(format!("data {i}").as_bytes()).unwrap();
        open.push(f);
    }
    let pid = m.pid();
    // SAFETY: signalling the server this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    wait_until("the mount is detached", || !is_mounted(&point));
    drop(open);
    let out = kvfs(&["unmount", point.to_str().unwrap()], &[]);
    if !out.status.success() {
        // The server finished before the command looked: nothing left to wait for.
        assert!(stderr(&out).contains("is not mounted"), "{}", stderr(&out));
    }
    wait_until("the mount server has exited", || exited(pid));
    let log = m.log_text();
    assert!(log.contains("detached it"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
    for i in [0, 15] {
        let out = kvfs(&["get", store, &format!("f{i}")], &[]);
        assert_eq!(out.stdout, format!("data {i}").into_bytes());
    }
    drop(m);
}
