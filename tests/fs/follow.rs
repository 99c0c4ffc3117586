//! Read-only mounts follow the writer: with a writer (a mount, or the engine in this
//! process) and a follower mount on one S3 endpoint, new files, overwrites, deletes,
//! renames and big files appear on the follower; it reads right while the writer
//! churns and collects garbage with no grace period; it carries on after the writer
//! is killed and replaced.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use kvfs::db::{Db, GcOptions, Options};
use kvfs::fs::Namespace;

use crate::common::mount::Mount;
use crate::common::{S3Fixture, BUCKET};

/// Wait (at most 30 s) until `check` holds on the follower.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "the follower never showed: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read(p: &Path) -> Option<Vec<u8>> {
    std::fs::read(p).ok()
}

fn write_synced(p: &Path, data: &[u8]) {
    let mut f = std::fs::File::create(p).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn sync_dir(p: &Path) {
    std::fs::File::open(p).unwrap().sync_all().unwrap();
}

/// Run `kvfs ARGS`, require success, return its standard output.
fn kvfs(args: &[&str]) -> String {
    let out = std::process::Command::new(crate::common::mount::KVFS)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A writer in this process on `prefix` of the fixture's bucket, collecting garbage
/// on demand with no grace period, with its namespace.
async fn collecting_writer(fx: &S3Fixture, prefix: &str) -> (Db, Namespace) {
    let opts = Options {
        segment_bytes: 64 << 10,
        gc: GcOptions {
            background: false,
            grace: Duration::ZERO,
            ..GcOptions::default()
        },
        ..Options::default()
    };
    let db = Db::open_store(fx.store(prefix), opts).await.unwrap();
    let ns = Namespace::new(db.clone(), (0, 0)).await.unwrap();
    (db, ns)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_mount_shows_what_the_writer_mount_does() {
    let fx = S3Fixture::start().await;
    let env = fx.server.client_env();
    let url = format!("s3://{BUCKET}/follow");
    let tmp = tempfile::tempdir().unwrap();
    let (wp, rp) = (tmp.path().join("w"), tmp.path().join("r"));
    let writer = Mount::start(&url, &wp, &[], &env);
    let w = writer.point().to_path_buf();
    blocking({
        let w = w.clone();
        move || write_synced(&w.join("first"), b"before the follower")
    })
    .await;
    let follower = Mount::start(&url, &rp, &["--read-only"], &env);
    let r = follower.point().to_path_buf();
    blocking(move || {
        assert_eq!(read(&r.join("first")).unwrap(), b"before the follower");
        // New files and directories.
        std::fs::create_dir_all(w.join("dir/sub")).unwrap();
        write_synced(&w.join("dir/sub/new"), b"new file");
        sync_dir(&w.join("dir/sub"));
        eventually("a new file", || {
            read(&r.join("dir/sub/new")).as_deref() == Some(b"new file")
        });
        // An overwrite of an open file on the follower.
        let mut held = std::fs::File::open(r.join("first")).unwrap();
        write_synced(&w.join("first"), b"overwritten");
        eventually("an overwrite", || {
            read(&r.join("first")).as_deref() == Some(b"overwritten")
        });
        let mut via_open = String::new();
        use std::io::{Read, Seek};
        held.rewind().unwrap();
        held.read_to_string(&mut via_open).unwrap();
        assert_eq!(via_open, "overwritten");
        drop(held);
        // A big file (extents), written in pieces.
        let big: Vec<u8> = (0..6u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
        write_synced(&w.join("dir/big"), &big);
        eventually("a big file", || {
            read(&r.join("dir/big")).as_deref() == Some(&big[..])
        });
        // A directory rename and a delete.
        std::fs::rename(w.join("dir"), w.join("moved")).unwrap();
        std::fs::remove_file(w.join("first")).unwrap();
        sync_dir(&w);
        eventually("a renamed directory", || {
            !r.join("dir").exists()
                && read(&r.join("moved/sub/new")).as_deref() == Some(b"new file")
                && read(&r.join("moved/big")).as_deref() == Some(&big[..])
        });
        eventually("a delete", || !r.join("first").exists());
        // The follower refuses writes.
        let err = std::fs::write(r.join("nope"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        follower.finish();
        writer.finish();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reads_right_while_the_writer_churns_and_collects() {
    let fx = S3Fixture::start().await;
    let env = fx.server.client_env();
    let url = format!("s3://{BUCKET}/churn");
    // The writer: the engine in this process, cleaning with no grace period, so the
    // objects the follower knows are deleted as soon as nothing needs them.
    let (db, ns) = collecting_writer(&fx, "churn").await;
    let content = |round: u32, i: u32| {
        format!("round {round} file {i} ")
            .repeat(1 + (i as usize % 50))
            .into_bytes()
    };
    for i in 0..100 {
        ns.put_file(format!("f/{i:03}").as_bytes(), &content(0, i), (0, 0))
            .await
            .unwrap();
    }
    ns.sync_all().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let follower = Mount::start(&url, &tmp.path().join("r"), &["--read-only"], &env);
    let r = follower.point().to_path_buf();
    for round in 1..6u32 {
        for i in 0..100 {
            if (i + round) % 3 == 0 {
                ns.remove_file(format!("f/{i:03}").as_bytes())
                    .await
                    .unwrap();
            } else {
                ns.put_file(format!("f/{i:03}").as_bytes(), &content(round, i), (0, 0))
                    .await
                    .unwrap();
            }
        }
        ns.sync_all().await.unwrap();
        db.gc(&mut |_| {}).await.unwrap();
        // Meanwhile, and after, every file the follower lists reads as one of the
        // writer's versions, and it converges to the latest.
        let r2 = r.clone();
        blocking(move || {
            eventually("the round's files", || {
                (0..100u32).all(|i| {
                    let want = ((i + round) % 3 != 0).then(|| content(round, i));
                    read(&r2.join(format!("f/{i:03}"))) == want
                })
            })
        })
        .await;
    }
    ns.shutdown().await.unwrap();
    blocking(move || follower.finish()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_carries_on_after_the_writer_is_killed_and_replaced() {
    let fx = S3Fixture::start().await;
    let env = fx.server.client_env();
    let url = format!("s3://{BUCKET}/replaced");
    let tmp = tempfile::tempdir().unwrap();
    let (wp, rp) = (tmp.path().join("w"), tmp.path().join("r"));
    let env2 = env.clone();
    let url2 = url.clone();
    blocking(move || {
        let writer = Mount::start(&url2, &wp, &[], &env2);
        write_synced(&writer.point().join("one"), b"from the first writer");
        let follower = Mount::start(&url2, &rp, &["--read-only"], &env2);
        let r = follower.point().to_path_buf();
        assert_eq!(read(&r.join("one")).unwrap(), b"from the first writer");
        writer.kill();
        // The next writer takes over (same host: at once) and writes.
        let writer = Mount::start(&url2, &wp, &[], &env2);
        write_synced(&writer.point().join("two"), b"from the second writer");
        eventually("the second writer's file", || {
            read(&r.join("two")).as_deref() == Some(b"from the second writer")
        });
        assert_eq!(read(&r.join("one")).unwrap(), b"from the first writer");
        writer.finish();
        follower.finish();
    })
    .await;
    drop(url);
    drop(env);
}

#[test]
fn a_snapshot_mount_keeps_its_point_in_time_while_the_store_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let s = tmp.path().join("store");
    let s = s.to_str().unwrap();
    // Each command opens and closes the store: manifests 1-2, then 3-4.
    kvfs(&["put", s, "file", "version 1"]);
    kvfs(&["put", s, "other", "kept in the snapshot"]);
    let listed = kvfs(&["snapshots", s]);
    // Snapshot 2 is the store right before manifest 3: after the first put.
    assert!(
        listed
            .lines()
            .any(|l| l.split_whitespace().next() == Some("2") && l.ends_with("yes")),
        "{listed}"
    );
    let point = tmp.path().join("snap");
    let snap = Mount::start(s, &point, &["--snapshot", "2"], &[]);
    let p = snap.point().to_path_buf();
    assert_eq!(read(&p.join("file")).unwrap(), b"version 1");
    assert!(!p.join("other").exists());
    // The store moves on and is collected, keeping what the last 10 minutes need.
    kvfs(&["put", s, "file", "version 2"]);
    kvfs(&["delete", s, "other"]);
    kvfs(&["gc", s, "--retain-secs", "600", "--gc-grace-secs", "0"]);
    kvfs(&["compact", s, "--retain-secs", "600", "--gc-grace-secs", "0"]);
    std::thread::sleep(Duration::from_millis(1500)); // past the kernel's cache time-out
    assert_eq!(read(&p.join("file")).unwrap(), b"version 1");
    assert!(!p.join("other").exists());
    // A second snapshot mount of the same point, after the collection.
    let point2 = tmp.path().join("snap2");
    let snap2 = Mount::start(s, &point2, &["--snapshot", "2"], &[]);
    assert_eq!(read(&snap2.point().join("file")).unwrap(), b"version 1");
    let err = std::fs::write(snap2.point().join("file"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    snap2.finish();
    snap.finish();
    assert_eq!(kvfs(&["get", s, "file"]), "version 2");
    // The newest manifest is no snapshot.
    let newest: u64 = kvfs(&["stats", s])
        .lines()
        .find_map(|l| {
            l.strip_prefix("manifest ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("stats names the manifest");
    let out = std::process::Command::new(crate::common::mount::KVFS)
        .args([
            "mount",
            s,
            point.to_str().unwrap(),
            "--snapshot",
            &newest.to_string(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("newest"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_stopped_past_the_grace_period_reloads_by_itself() {
    let fx = S3Fixture::start().await;
    let env = fx.server.client_env();
    let url = format!("s3://{BUCKET}/stopped");
    let (db, ns) = collecting_writer(&fx, "stopped").await;
    for i in 0..50 {
        ns.put_file(format!("f{i}").as_bytes(), b"old", (0, 0))
            .await
            .unwrap();
    }
    ns.sync_all().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let follower = Mount::start(&url, &tmp.path().join("r"), &["--read-only"], &env);
    let r = follower.point().to_path_buf();
    let pid = follower.pid() as i32;
    let r2 = r.clone();
    blocking(move || assert_eq!(read(&r2.join("f0")).unwrap(), b"old")).await;
    // SAFETY: signals to our own child process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // Meanwhile everything the follower knew is rewritten and collected, the old
    // manifests included.
    for i in 0..50 {
        ns.put_file(format!("f{i}").as_bytes(), b"new", (0, 0))
            .await
            .unwrap();
    }
    ns.sync_all().await.unwrap();
    db.checkpoint().await.unwrap();
    db.gc(&mut |_| {}).await.unwrap();
    db.compact(&mut |_| {}).await.unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    blocking(move || {
        eventually("the new contents after a reload", || {
            (0..50).all(|i| read(&r.join(format!("f{i}"))).as_deref() == Some(b"new"))
        });
        follower.finish();
    })
    .await;
    ns.shutdown().await.unwrap();
}

#[test]
fn cli_readers_see_the_newest_durable_state_of_a_mounted_store() {
    let tmp = tempfile::tempdir().unwrap();
    let s = tmp.path().join("store");
    let s = s.to_str().unwrap().to_string();
    let writer = Mount::start(&s, &tmp.path().join("w"), &[], &[]);
    let w = writer.point().to_path_buf();
    std::fs::create_dir(w.join("d")).unwrap();
    write_synced(&w.join("d/f"), b"first");
    assert_eq!(kvfs(&["get", &s, "d/f"]), "first");
    write_synced(&w.join("d/f"), b"second");
    write_synced(&w.join("d/g"), b"another");
    assert_eq!(kvfs(&["get", &s, "d/f"]), "second");
    assert_eq!(kvfs(&["scan", &s, "--keys-only"]), "d/f\nd/g\n");
    writer.finish();
}

/// A read on a follower that finds its object collected runs a round of following
/// itself; what that round changed still reaches the namespace: the next
/// `catch_up` reports it, and an open file takes its new size, with no further
/// change by the writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_run_by_a_read_refreshes_open_files() {
    let (_, store) = crate::common::memory();
    let w = Db::open_store(store.clone(), crate::common::gc_opts())
        .await
        .unwrap();
    let wns = Namespace::new(w.clone(), (0, 0)).await.unwrap();
    let old = vec![1u8; 200 << 10];
    wns.put_file(b"a", &old, (0, 0)).await.unwrap();
    wns.sync_all().await.unwrap();

    let f = Db::open_store(store.clone(), Options::read_only())
        .await
        .unwrap();
    let fns = Namespace::new(f.clone(), (0, 0)).await.unwrap();
    let ino = fns.resolve(b"a").unwrap().ino;
    assert_eq!(fns.open(ino, false).await.unwrap().size, old.len() as u64);

    // The writer rewrites the file, larger, and collects the objects the follower
    // knows it by.
    let new = vec![2u8; 300 << 10];
    wns.put_file(b"a", &new, (0, 0)).await.unwrap();
    wns.sync_all().await.unwrap();
    let done = w.gc(&mut |_| {}).await.unwrap();
    assert!(done.objects_deleted > 0, "{done:?}");

    // The follower's read finds its object gone and runs a round.
    let rounds = f.follow_rounds();
    let got = fns.read(ino, 0, 4096).await.unwrap();
    assert_eq!(&got[..], &new[..4096]);
    assert!(f.follow_rounds() > rounds, "the read ran no round");

    // The follow loop's next round finds nothing new in the store, yet reports what
    // the read's round applied.
    let c = f.catch_up().await.unwrap();
    assert!(!c.is_empty(), "{c:?}");
    fns.apply_catch_up(&c);
    assert_eq!(fns.getattr(ino).await.unwrap().size, new.len() as u64);
    fns.release(ino).await.unwrap();
    wns.shutdown().await.unwrap();
}
