//! What protects a user from mistakes and from waiting blindly: refusals to create a
//! store among foreign files or to mount over something, a refused writer told where
//! the store is in use, retries that are reported, and interrupted commands that give
//! their lease back and stop their mount server.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kvfs::db::lease::LeaseInfo;
use kvfs_testkit::faults::FaultConfig;
use kvfs_testkit::server::ServerOptions;

use crate::common::mount::{is_mounted, Mount, KVFS};
use crate::common::{S3Fixture, BUCKET};

fn kvfs(args: &[&str], env: &[(&str, String)]) -> Output {
    command(args, env).output().expect("run kvfs")
}

fn command(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(KVFS);
    cmd.args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kvfs did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill only sends a signal to our own child.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

#[test]
fn a_new_store_is_not_created_among_foreign_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    std::fs::create_dir_all(dir.join("2024")).unwrap();
    std::fs::write(dir.join("2024/beach.jpg"), b"jpeg").unwrap();
    let d = dir.to_str().unwrap();
    for args in [vec!["put", d, "k", "v"], vec!["gc", d], vec!["compact", d]] {
        let out = kvfs(&args, &[]);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("is not empty and holds no kvfs store") && err.contains("beach.jpg"),
            "{args:?}: {err}"
        );
    }
    // Nothing was added to the directory.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["2024"]);
    // An empty directory becomes a store; an existing store is used as it is.
    let store = tmp.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let s = store.to_str().unwrap();
    assert!(kvfs(&["put", s, "a", "1"], &[]).status.success());
    assert!(kvfs(&["put", s, "b", "2"], &[]).status.success());
    assert_eq!(kvfs(&["get", s, "b"], &[]).stdout, b"2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_store_is_not_created_under_a_foreign_s3_prefix() {
    let fx = S3Fixture::start().await;
    fx.store("shared")
        .put(
            "report.csv",
            bytes::Bytes::from_static(b"a,b"),
            kvfs::store::PutMode::Overwrite,
        )
        .await
        .unwrap();
    let env = fx.server.client_env();
    let url = format!("s3://{BUCKET}/shared");
    let out = tokio::task::spawn_blocking(move || kvfs(&["put", &url, "k", "v"], &env))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("report.csv"), "{}", stderr(&out));
    assert!(matches!(
        fx.store("shared").get("lease").await,
        Err(kvfs::store::StoreError::NotFound(_))
    ));
}

#[test]
fn mounting_over_a_non_empty_directory_or_a_mount_needs_a_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let s = store.to_str().unwrap();
    assert!(kvfs(&["put", s, "file", "content"], &[]).status.success());
    let point = tmp.path().join("mnt");
    std::fs::create_dir(&point).unwrap();
    std::fs::write(point.join("mine"), b"local").unwrap();
    let p = point.to_str().unwrap();
    let out = kvfs(&["mount", s, p], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("is not empty") && err.contains("--allow-nonempty"),
        "{err}"
    );
    assert!(!is_mounted(&point));
    // With the flag it mounts, hiding the local file until unmounted.
    let mount = Mount::start(s, &point, &["--allow-nonempty"], &[]);
    assert_eq!(std::fs::read(point.join("file")).unwrap(), b"content");
    assert!(!point.join("mine").exists());
    // A second mount at the same place is refused, naming what is there.
    let out = kvfs(&["mount", s, p, "--read-only"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("already a mount point") && err.contains("fuse"),
        "{err}"
    );
    mount.finish();
    assert_eq!(std::fs::read(point.join("mine")).unwrap(), b"local");
}

#[test]
fn a_refused_writer_is_told_where_the_store_is_mounted() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let s = store.to_str().unwrap();
    let point = tmp.path().join("mnt");
    let mount = Mount::start(s, &point, &[], &[]);
    let out = kvfs(&["put", s, "k", "v"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let pid = format!("pid {}", mount.pid());
    let at = format!("mount at {}", mount.point().display());
    assert!(err.contains(&pid) && err.contains(&at), "{err}");
    mount.finish();
    assert!(kvfs(&["put", s, "k", "v"], &[]).status.success());
}

#[test]
fn waiting_for_an_unreachable_store_is_reported_and_bounded_on_every_command() {
    // Nothing listens on port 1 of the loopback address.
    let env = [
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:1".to_string()),
        ("AWS_ACCESS_KEY_ID", "test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ];
    let url = "s3://nowhere/p";
    for args in [
        vec!["put", url, "k", "v"],
        vec!["get", url, "k"],
        vec!["delete", url, "k"],
        vec!["scan", url],
        vec!["stats", url],
        vec!["fsck", url],
        vec!["gc", url],
        vec!["compact", url],
    ] {
        let mut args = args.clone();
        args.extend(["--retry-timeout-secs", "3"]);
        let out = kvfs(&args, &env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        // The wait was reported before the command gave up at 3 s, with the
        // attempt and the last error.
        let report = err
            .lines()
            .find(|l| l.contains("no answer yet from the object store"))
            .unwrap_or_else(|| panic!("{args:?}: no report of the wait: {err}"));
        assert!(
            report.contains("attempt") && report.contains("Connection refused"),
            "{report}"
        );
        assert!(err.contains("gave up after"), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_writer_gives_its_lease_back() {
    // Slow uploads, so the command is still running when it is interrupted.
    let fx = S3Fixture::with_options(ServerOptions {
        faults: FaultConfig {
            put_latency: Duration::from_millis(1500),
            ..FaultConfig::default()
        },
        ..ServerOptions::default()
    })
    .await;
    let env = fx.server.client_env();
    let url = format!("s3://{BUCKET}/interrupted");
    let mut child = command(&["put", &url, "k", "v"], &env).spawn().unwrap();
    // Wait until it holds the lease.
    let store = fx.store("interrupted");
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.get("lease").await.is_err() {
        assert!(Instant::now() < deadline, "the writer never took the lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&child, libc::SIGINT);
    let status = tokio::task::spawn_blocking(move || {
        let status = wait_exit(&mut child, Duration::from_secs(30));
        let mut err = String::new();
        use std::io::Read;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, err)
    })
    .await
    .unwrap();
    let (status, err) = status;
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "{err}");
    assert!(
        err.contains("interrupted") && err.contains("lease is released"),
        "{err}"
    );
    let lease = LeaseInfo::decode(&store.get("lease").await.unwrap().data).unwrap();
    assert!(lease.released, "{lease:?}");
}

#[test]
fn interrupting_mount_before_it_is_ready_stops_its_server_too() {
    let tmp = tempfile::tempdir().unwrap();
    let point = tmp.path().join("mnt");
    std::fs::create_dir(&point).unwrap();
    let env = [
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:1".to_string()),
        ("AWS_ACCESS_KEY_ID", "test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ];
    let p = point.to_str().unwrap();
    let mut parent = command(&["mount", "s3://nowhere/p", p], &env)
        .spawn()
        .unwrap();
    let server = Instant::now() + Duration::from_secs(30);
    let daemon = loop {
        if let Some(pid) = daemon_of(&point) {
            break pid;
        }
        assert!(Instant::now() < server, "no mount server started");
        std::thread::sleep(Duration::from_millis(20));
    };
    signal(&parent, libc::SIGINT);
    let status = wait_exit(&mut parent, Duration::from_secs(30));
    assert_eq!(status.code(), Some(128 + libc::SIGINT));
    // The server is gone as well, and nothing got mounted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{daemon}")).exists() && kvfs::process::pid_alive(daemon) {
        assert!(
            Instant::now() < deadline,
            "the mount server {daemon} still runs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!is_mounted(&point));
}

/// The pid of a `kvfs mount --daemon-child` process serving `point`.
fn daemon_of(point: &Path) -> Option<u32> {
    let want = point.to_str()?;
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_daemon = args.contains(&&b"--daemon-child"[..]) && args.contains(&want.as_bytes());
        is_daemon.then_some(pid)
    })
}

#[test]
fn odd_cli_paths_are_files_of_those_names_in_a_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let s = store.to_str().unwrap();
    let long = "n".repeat(255);
    let deep = (0..40)
        .map(|i| format!("d{i}"))
        .collect::<Vec<_>>()
        .join("/")
        + "/leaf";
    let paths = [
        "with space",
        "new\nline",
        "tab\there",
        "ünïcödé/文件",
        "-starts-with-dash",
        "dir/child",
        long.as_str(),
        deep.as_str(),
    ];
    for (i, p) in paths.iter().enumerate() {
        // `--` ends the options, for paths that start with `-`.
        let out = kvfs(&["put", s, "--", p, &format!("value {i}")], &[]);
        assert!(out.status.success(), "{p:?}: {}", stderr(&out));
    }
    // Refused paths leave nothing behind.
    for bad in [".", "..", "/abs", "a//b", "dir/child/under-a-file", ""] {
        let out = kvfs(&["put", s, bad, "x"], &[]);
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        assert!(
            stderr(&out).contains("invalid key"),
            "{bad:?}: {}",
            stderr(&out)
        );
    }
    let point = tmp.path().join("mnt");
    let mount = Mount::start(s, &point, &["--read-only"], &[]);
    let mut top: Vec<String> = std::fs::read_dir(mount.point())
        .expect("the root lists")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    let mut want: Vec<String> = vec![
        "with space".into(),
        "new\nline".into(),
        "tab\there".into(),
        "ünïcödé".into(),
        "-starts-with-dash".into(),
        "dir".into(),
        long.clone(),
        "d0".into(),
    ];
    want.sort();
    assert_eq!(top, want);
    for (i, p) in paths.iter().enumerate() {
        let got =
            std::fs::read_to_string(mount.point().join(p)).unwrap_or_else(|e| panic!("{p:?}: {e}"));
        assert_eq!(got, format!("value {i}"), "{p:?}");
    }
    mount.finish();
    // The CLI lists the same paths, in byte order.
    let out = kvfs(&["scan", s, "--keys-only"], &[]);
    let listed = String::from_utf8(out.stdout).unwrap();
    let mut sorted: Vec<&str> = paths.to_vec();
    sorted.sort();
    assert_eq!(
        listed,
        sorted.iter().map(|p| format!("{p}\n")).collect::<String>()
    );
}

#[test]
fn mounting_again_right_after_an_unmount_waits_for_the_previous_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let s = tmp.path().join("store");
    let s = s.to_str().unwrap();
    let point = tmp.path().join("mnt");
    std::fs::create_dir(&point).unwrap();
    let p = point.to_str().unwrap();
    let unmount = || {
        let st = Command::new("fusermount3")
            .args(["-u", p])
            .status()
            .unwrap();
        assert!(st.success());
    };
    let out = kvfs(&["mount", s, p], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Enough data that the daemon is still uploading when the next mount starts.
    let data: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(point.join("big"), &data).unwrap();
    unmount();
    let out = kvfs(&["mount", s, p], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(point.join("big")).unwrap(), data);
    unmount();
    // Let the last daemon finish before the directory goes away.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = String::from_utf8(kvfs(&["stats", s], &[]).stdout).unwrap();
        if stats
            .lines()
            .any(|l| l.starts_with("lease") && l.contains("released"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon kept the lease: {stats}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
