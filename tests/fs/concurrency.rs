//! The namespace under load: a GET or an upload held open for as long as the test
//! likes (the gate layer of the test kit) must not hold up operations that need no
//! request of their own.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{memory, small_opts};
use kvfs::db::{Db, Options};
use kvfs::fs::keys::ROOT_INO;
use kvfs::fs::{Namespace, RenameFlags, SetAttr};
use kvfs::store::DynStore;
use kvfs_testkit::gate::GateStore;

const OWNER: (u32, u32) = (0, 0);
/// Far longer than any of the operations below needs; only a hang reaches it.
const HANG: Duration = Duration::from_secs(60);

async fn ns_over(store: DynStore, opts: Options) -> Arc<Namespace> {
    Arc::new(
        Namespace::new(Db::open_store(store, opts).await.unwrap(), OWNER)
            .await
            .unwrap(),
    )
}

async fn write_file(ns: &Namespace, dir: u64, name: &[u8], data: &[u8]) -> u64 {
    let ino = ns.create(dir, name, 0o644, OWNER).await.unwrap().ino;
    ns.open(ino, false).await.unwrap();
    ns.write(ino, 0, data).await.unwrap();
    ns.release(ino).await.unwrap();
    ino
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_get_blocks_no_other_operation() {
    let (_, mem) = memory();
    let gate = GateStore::new(mem);
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
    {
        let ns = ns_over(gate.clone(), small_opts()).await;
        write_file(&ns, ROOT_INO, b"cold", &[b'c'; 1000]).await;
        write_file(&ns, ROOT_INO, b"bigcold", &big).await;
        let d = ns.mkdir(ROOT_INO, b"dir", 0o755, OWNER).await.unwrap().ino;
        for i in 0..50 {
            write_file(&ns, d, format!("f{i}").as_bytes(), b"x").await;
        }
        ns.shutdown().await.unwrap();
    }
    // A fresh open: nothing is cached, every read of content needs a GET.
    let ns = ns_over(gate.clone(), small_opts()).await;
    let cold = ns.lookup(ROOT_INO, b"cold").await.unwrap().ino;
    let bigcold = ns.lookup(ROOT_INO, b"bigcold").await.unwrap().ino;
    gate.gets.close();
    let reader = {
        let ns = ns.clone();
        tokio::spawn(async move {
            ns.open(cold, false).await.unwrap();
            let v = ns.read(cold, 0, 4096).await.unwrap();
            ns.release(cold).await.unwrap();
            v
        })
    };
    let big_reader = {
        let ns = ns.clone();
        tokio::spawn(async move {
            ns.open(bigcold, false).await.unwrap();
            let v = ns.read(bigcold, 1 << 20, 1 << 20).await.unwrap();
            ns.release(bigcold).await.unwrap();
            v
        })
    };
    gate.gets.until_waiting(2).await;

    // Everything below needs no GET, so it completes while both reads wait.
    tokio::time::timeout(HANG, async {
        for i in 0..200 {
            write_file(&ns, ROOT_INO, format!("new{i}").as_bytes(), &[b'n'; 1024]).await;
        }
        let d = ns.lookup(ROOT_INO, b"dir").await.unwrap().ino;
        assert_eq!(ns.readdir(d).await.unwrap().len(), 50);
        ns.rename(ROOT_INO, b"dir", ROOT_INO, b"moved", RenameFlags::default())
            .await
            .unwrap();
        assert_eq!(ns.lookup(ROOT_INO, b"moved").await.unwrap().ino, d);
        ns.unlink(d, b"f0").await.unwrap();
        let f1 = ns.lookup(d, b"f1").await.unwrap().ino;
        ns.link(f1, ROOT_INO, b"f1-link").await.unwrap();
        assert_eq!(ns.getattr(f1).await.unwrap().nlink, 2);
        ns.setattr(
            f1,
            SetAttr {
                perm: Some(0o600),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(ns.getattr(cold).await.unwrap().size, 1000);
        // Writing into the big file being read needs no GET either (extents), and
        // its commit completes.
        ns.open(bigcold, false).await.unwrap();
        ns.write(bigcold, 100, b"changed").await.unwrap();
        ns.fsync(bigcold).await.unwrap();
        ns.release(bigcold).await.unwrap();
        ns.db().sync().await.unwrap();
    })
    .await
    .expect("operations that need no GET completed while a GET was held");
    assert!(!reader.is_finished() && !big_reader.is_finished());
    assert!(gate.gets.waiting() >= 2);

    gate.gets.open();
    let v = tokio::time::timeout(HANG, reader).await.unwrap().unwrap();
    assert_eq!(&v[..], &[b'c'; 1000][..]);
    let v = tokio::time::timeout(HANG, big_reader)
        .await
        .unwrap()
        .unwrap();
    assert!(
        v[..] == big[1 << 20..2 << 20],
        "a read across a commit is whole"
    );
    assert_eq!(
        ns.get_file(b"bigcold").await.unwrap().unwrap()[100..107],
        *b"changed"
    );
    ns.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_waiting_for_memory_blocks_no_lookup() {
    let (_, mem) = memory();
    let gate = GateStore::new(mem);
    let opts = Options {
        segment_bytes: 64 << 10,
        max_unflushed_bytes: 256 << 10,
        ..small_opts()
    };
    let ns = ns_over(gate.clone(), opts).await;
    write_file(&ns, ROOT_INO, b"before", b"b").await;
    let d = ns.mkdir(ROOT_INO, b"d", 0o755, OWNER).await.unwrap().ino;
    ns.db().sync().await.unwrap();
    gate.puts.close();
    // Write until the writer has to wait for uploads that cannot finish.
    let writer = {
        let ns = ns.clone();
        tokio::spawn(async move {
            for i in 0..400 {
                write_file(&ns, d, format!("w{i}").as_bytes(), &[b'w'; 4096]).await;
            }
        })
    };
    gate.puts.until_waiting(1).await;
    while ns.db().unflushed_bytes() < 192 << 10 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::timeout(HANG, async {
        for _ in 0..20 {
            let a = ns.lookup(ROOT_INO, b"before").await.unwrap();
            assert_eq!(ns.getattr(a.ino).await.unwrap().size, 1);
            assert!(!ns.readdir(ROOT_INO).await.unwrap().is_empty());
            let listed = ns.readdir(d).await.unwrap().len();
            assert!(listed < 400);
            ns.open(a.ino, false).await.unwrap();
            assert_eq!(&ns.read(a.ino, 0, 10).await.unwrap()[..], b"b");
            ns.release(a.ino).await.unwrap();
        }
    })
    .await
    .expect("lookups completed while a writer waited for memory");
    assert!(!writer.is_finished());
    gate.puts.open();
    tokio::time::timeout(HANG, writer).await.unwrap().unwrap();
    assert_eq!(ns.readdir(d).await.unwrap().len(), 400);
    ns.shutdown().await.unwrap();
}

/// Content of version `v` of a file: small or large (extents), always whole.
fn version(v: u64) -> Vec<u8> {
    let len = if v % 5 == 0 {
        200_000
    } else {
        100 + v as usize % 900
    };
    (0..len)
        .map(|i| (v as u8).wrapping_add((i / 7) as u8))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_see_only_whole_writes() {
    use crate::common::Rng;
    use kvfs::fs::{FsError, Kind};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let (_, mem) = memory();
    let ns = ns_over(mem, small_opts()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let versions = Arc::new(AtomicU64::new(0));
    let files_read = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for r in 0..2u64 {
        let (ns, stop, versions, files_read) = (
            ns.clone(),
            stop.clone(),
            versions.clone(),
            files_read.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut rng = Rng(r + 11);
            while !stop.load(Ordering::SeqCst) {
                let mut dirs = vec![ROOT_INO];
                while let Some(d) = dirs.pop() {
                    let entries = match ns.readdir(d).await {
                        Ok(e) => e,
                        // Removed or renamed away meanwhile.
                        Err(FsError::NotFound) | Err(FsError::NotDir) => continue,
                        Err(e) => panic!("readdir: {e}"),
                    };
                    for e in entries {
                        match e.attr.kind {
                            Kind::Dir => dirs.push(e.attr.ino),
                            Kind::File if rng.below(2) == 0 => {
                                if ns.open(e.attr.ino, false).await.is_err() {
                                    continue;
                                }
                                let got = ns.read(e.attr.ino, 0, 1 << 20).await.unwrap();
                                ns.release(e.attr.ino).await.unwrap();
                                let known = versions.load(Ordering::SeqCst);
                                let whole = got.is_empty()
                                    || (0..=known).any(|v| version(v)[..] == got[..]);
                                assert!(
                                    whole,
                                    "a reader saw {} bytes of no whole write",
                                    got.len()
                                );
                                files_read.fetch_add(1, Ordering::SeqCst);
                            }
                            _ => {}
                        }
                    }
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut rng = Rng(99);
    let dirs: Vec<u64> = {
        let mut v = vec![ROOT_INO];
        for i in 0..4 {
            let d = ns
                .mkdir(ROOT_INO, format!("d{i}").as_bytes(), 0o755, OWNER)
                .await
                .unwrap()
                .ino;
            v.push(d);
        }
        v
    };
    for step in 0..400u64 {
        let dir = dirs[rng.below(dirs.len() as u64) as usize];
        let name = format!("f{}", rng.below(8));
        match rng.below(6) {
            0..=2 => {
                // Replace the content whole: open with truncate, one write, close.
                let v = step + 1;
                versions.store(v, Ordering::SeqCst);
                let ino = match ns.lookup(dir, name.as_bytes()).await {
                    Ok(a) => a.ino,
                    Err(_) => {
                        ns.create(dir, name.as_bytes(), 0o644, OWNER)
                            .await
                            .unwrap()
                            .ino
                    }
                };
                ns.open(ino, true).await.unwrap();
                ns.write(ino, 0, &version(v)).await.unwrap();
                ns.release(ino).await.unwrap();
            }
            3 => {
                let to = dirs[rng.below(dirs.len() as u64) as usize];
                let _ = ns
                    .rename(dir, name.as_bytes(), to, b"moved", RenameFlags::default())
                    .await;
            }
            4 => {
                let _ = ns.unlink(dir, name.as_bytes()).await;
            }
            _ => {
                // Move a whole directory into another and back.
                let i = 1 + rng.below(4);
                let name = format!("d{i}");
                let into = dirs[1 + rng.below(4) as usize];
                let moved = ns
                    .rename(
                        ROOT_INO,
                        name.as_bytes(),
                        into,
                        b"sub",
                        RenameFlags::default(),
                    )
                    .await;
                if moved.is_ok() {
                    ns.rename(
                        into,
                        b"sub",
                        ROOT_INO,
                        name.as_bytes(),
                        RenameFlags::default(),
                    )
                    .await
                    .unwrap();
                }
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        tokio::time::timeout(HANG, r).await.unwrap().unwrap();
    }
    assert!(files_read.load(Ordering::SeqCst) > 0);
    ns.shutdown().await.unwrap();
}
