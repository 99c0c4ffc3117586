//! Large files as extents: random writes, truncates, holes and appends compared with
//! a flat model across commits and reopens; a crash between extent commits; and the
//! index a sequentially written file costs.

use crate::common::{memory, release_lease, small_opts, Rng};
use kvfs::db::{Db, Options};
use kvfs::fs::keys::{extent_prefix, ROOT_INO};
use kvfs::fs::{Namespace, SetAttr};
use kvfs::store::DynStore;

const OWNER: (u32, u32) = (0, 0);

fn opts() -> Options {
    Options {
        segment_bytes: 1 << 20,
        ..small_opts()
    }
}

async fn open(store: &DynStore) -> Namespace {
    Namespace::new(Db::open_store(store.clone(), opts()).await.unwrap(), OWNER)
        .await
        .unwrap()
}

/// How many extents `ino` has.
fn extent_count(ns: &Namespace, ino: u64) -> usize {
    let prefix = extent_prefix(ino);
    ns.db()
        .scan_info(
            std::ops::Bound::Included(prefix.as_slice()),
            std::ops::Bound::Unbounded,
            usize::MAX,
        )
        .into_iter()
        .take_while(|(k, _)| k.starts_with(&prefix))
        .count()
}

async fn content(ns: &Namespace, ino: u64) -> Vec<u8> {
    ns.open(ino, false).await.unwrap();
    let size = ns.getattr(ino).await.unwrap().size;
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let b = ns.read(ino, out.len() as u64, 1 << 20).await.unwrap();
        assert!(!b.is_empty());
        out.extend_from_slice(&b);
    }
    ns.release(ino).await.unwrap();
    out
}

async fn run(seed: u64, steps: usize) {
    let (_, store) = memory();
    let mut rng = Rng(seed | 1);
    let mut ns = open(&store).await;
    let ino = ns.create(ROOT_INO, b"big", 0o644, OWNER).await.unwrap().ino;
    let mut model: Vec<u8> = Vec::new();
    ns.open(ino, false).await.unwrap();
    for step in 0..steps {
        match rng.below(10) {
            // Writes anywhere up to 6 MiB, small or large, over holes and the end.
            0..=4 => {
                let off = rng.below(6 << 20);
                let len = if rng.below(3) == 0 {
                    1 + rng.below(3 << 20)
                } else {
                    1 + rng.below(9000)
                } as usize;
                let fill = (step as u8).wrapping_mul(37) | 1;
                let data: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
                for (i, chunk) in data.chunks(128 << 10).enumerate() {
                    ns.write(ino, off + (i * (128 << 10)) as u64, chunk)
                        .await
                        .unwrap();
                }
                let end = off as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(&data);
            }
            // Appends.
            5 => {
                let data = vec![(step as u8) | 0x80; 1 + rng.below(300_000) as usize];
                let off = model.len() as u64;
                ns.write(ino, off, &data).await.unwrap();
                model.extend_from_slice(&data);
            }
            // Truncates, down and up (a hole).
            6 => {
                let size = rng.below(7 << 20);
                ns.setattr(
                    ino,
                    SetAttr {
                        size: Some(size),
                        ..SetAttr::default()
                    },
                )
                .await
                .unwrap();
                model.resize(size as usize, 0);
            }
            7 => ns.fsync(ino).await.unwrap(),
            // Reopen: close, shut down, open again.
            8 => {
                ns.release(ino).await.unwrap();
                ns.shutdown().await.unwrap();
                ns = open(&store).await;
                ns.open(ino, false).await.unwrap();
            }
            _ => {
                // A read of a random range, uncommitted writes included.
                let off = rng.below(model.len() as u64 + 10);
                let len = rng.below(2 << 20) as u32;
                let got = ns.read(ino, off, len).await.unwrap();
                let s = (off as usize).min(model.len());
                let e = (off as usize + len as usize).min(model.len());
                assert!(
                    got[..] == model[s..e],
                    "seed {seed} step {step}: ranged read"
                );
            }
        }
        assert_eq!(ns.getattr(ino).await.unwrap().size, model.len() as u64);
    }
    ns.release(ino).await.unwrap();
    let got = content(&ns, ino).await;
    assert!(got == model, "seed {seed}: content differs");
    ns.shutdown().await.unwrap();
    let ns = open(&store).await;
    assert!(
        content(&ns, ino).await == model,
        "seed {seed}: after reopen"
    );
    ns.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extent_files_match_a_flat_model() {
    for seed in 1..=6u64 {
        run(seed * 7919, 80).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_extent_commits_keeps_whole_commits() {
    let (_, store) = memory();
    let data: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i / 4096) as u8 ^ (i as u8))
        .collect();
    let synced = 10 << 20;
    {
        let ns = open(&store).await;
        let ino = ns.create(ROOT_INO, b"f", 0o644, OWNER).await.unwrap().ino;
        ns.open(ino, false).await.unwrap();
        for (i, chunk) in data.chunks(128 << 10).enumerate() {
            let off = (i * (128 << 10)) as u64;
            ns.write(ino, off, chunk).await.unwrap();
            if off + chunk.len() as u64 == synced {
                ns.fsync(ino).await.unwrap();
            }
        }
        // Crash: commits after the fsync (one every 8 MiB) may or may not be there.
        ns.db().abandon();
    }
    release_lease(&*store).await;
    let ns = open(&store).await;
    let ino = ns.lookup(ROOT_INO, b"f").await.unwrap().ino;
    let got = content(&ns, ino).await;
    assert!(got.len() >= synced as usize, "{} bytes", got.len());
    assert!(got[..] == data[..got.len()], "a commit landed in part");
    ns.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequential_file_costs_one_key_per_extent() {
    let (_, store) = memory();
    let ns = open(&store).await;
    let ino = ns.create(ROOT_INO, b"seq", 0o644, OWNER).await.unwrap().ino;
    ns.open(ino, false).await.unwrap();
    let chunk = vec![9u8; 128 << 10];
    for i in 0..512u64 {
        ns.write(ino, i * chunk.len() as u64, &chunk).await.unwrap();
    }
    ns.release(ino).await.unwrap();
    // 64 MiB in extents of 1 MiB.
    assert_eq!(extent_count(&ns, ino), 64);
    // A 4 KiB overwrite in the middle splits one extent: two more keys, not 256.
    ns.open(ino, false).await.unwrap();
    ns.write(ino, (10 << 20) + 4096, &[1u8; 4096])
        .await
        .unwrap();
    ns.release(ino).await.unwrap();
    assert_eq!(extent_count(&ns, ino), 66);
    // Deleting the file deletes every extent.
    ns.unlink(ROOT_INO, b"seq").await.unwrap();
    assert_eq!(extent_count(&ns, ino), 0);
    ns.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_and_mostly_dead_extents_are_merged_at_last_close() {
    use kvfs::fs::keys::extent_key;
    let (_, store) = memory();
    let ns = open(&store).await;
    let ino = ns.create(ROOT_INO, b"f", 0o644, OWNER).await.unwrap().ino;
    let mut model: Vec<u8> = (0..2u32 << 20).map(|i| (i % 199) as u8).collect();
    ns.open(ino, false).await.unwrap();
    ns.write(ino, 0, &model).await.unwrap();
    ns.release(ino).await.unwrap();
    assert_eq!(extent_count(&ns, ino), 2);
    // Many small overwrites in the first MiB, each committed on its own: the
    // window fragments, and is merged into one extent at the last close.
    ns.open(ino, false).await.unwrap();
    for i in 0..40u64 {
        let at = i * 8192 + 100;
        ns.write(ino, at, &[0xAB; 4096]).await.unwrap();
        ns.fsync(ino).await.unwrap();
        model[at as usize..at as usize + 4096].fill(0xAB);
    }
    assert!(
        extent_count(&ns, ino) > 64,
        "{} extents before the merge",
        extent_count(&ns, ino)
    );
    ns.release(ino).await.unwrap();
    assert_eq!(extent_count(&ns, ino), 2);
    assert!(content(&ns, ino).await == model);
    // Truncated to 5,000 bytes, the first extent keeps a 1 MiB value for 5,000
    // live bytes until the last close rewrites it.
    ns.open(ino, false).await.unwrap();
    ns.setattr(
        ino,
        SetAttr {
            size: Some(5000),
            ..SetAttr::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        ns.db().info(&extent_key(ino, 0)).unwrap().value_len,
        1 << 20
    );
    ns.release(ino).await.unwrap();
    assert_eq!(ns.db().info(&extent_key(ino, 0)).unwrap().value_len, 5000);
    model.truncate(5000);
    assert!(content(&ns, ino).await == model);
    ns.shutdown().await.unwrap();
}

/// `tail -f` of a file appended and synced more often than one GET takes: a read of
/// an earlier part of the file finishes, although commits to other parts land while
/// it fetches (it used to start again after each of them, and never finish).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_is_not_restarted_by_commits_to_other_parts_of_the_file() {
    use kvfs_testkit::faults::{FaultConfig, FaultControl, FaultyStore};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let (_, mem) = memory();
    let faults = FaultControl::seeded(FaultConfig::default(), 3);
    let store: DynStore = Arc::new(FaultyStore::new(mem, faults.clone()));
    let ino = {
        let ns = open(&store).await;
        let ino = ns.create(ROOT_INO, b"log", 0o644, OWNER).await.unwrap().ino;
        ns.open(ino, false).await.unwrap();
        ns.write(ino, 0, &vec![b'a'; 2 << 20]).await.unwrap();
        ns.release(ino).await.unwrap();
        ns.shutdown().await.unwrap();
        ino
    };
    release_lease(store.as_ref()).await;
    // Reopened with no cache: the read below must GET its extent.
    let ns = Arc::new(
        Namespace::new(
            Db::open_store(
                store.clone(),
                Options {
                    cache_bytes: 0,
                    ..opts()
                },
            )
            .await
            .unwrap(),
            OWNER,
        )
        .await
        .unwrap(),
    );
    ns.open(ino, false).await.unwrap();
    faults.update(|c| c.get_latency = Duration::from_millis(150));
    let read_done = Arc::new(AtomicBool::new(false));
    let appender = {
        let (ns, read_done) = (ns.clone(), read_done.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut size = 2u64 << 20;
            let mut appends = 0u32;
            while !read_done.load(Ordering::SeqCst) && Instant::now() < deadline {
                ns.write(ino, size, &[b'b'; 100]).await.unwrap();
                ns.fsync(ino).await.unwrap();
                size += 100;
                appends += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (appends, read_done.load(Ordering::SeqCst))
        })
    };
    let got = ns.read(ino, 1000, 64 << 10).await.unwrap();
    read_done.store(true, Ordering::SeqCst);
    let (appends, appender_saw_the_read_end) = appender.await.unwrap();
    assert!(got.iter().all(|b| *b == b'a') && got.len() == 64 << 10);
    assert!(appends > 0, "nothing was appended while the read fetched");
    assert!(
        appender_saw_the_read_end,
        "the read finished only after the appends stopped ({appends} appends)"
    );
    faults.update(|c| c.get_latency = Duration::ZERO);
    ns.release(ino).await.unwrap();
    ns.shutdown().await.unwrap();
}
