//! Renaming a directory: a constant amount written whatever lies below it, and
//! atomic across a crash, in order with the renames before it.

use crate::common::{memory, release_lease, small_opts};
use kvfs::db::{Db, Options};
use kvfs::fs::keys::ROOT_INO;
use kvfs::fs::{FsError, Namespace, RenameFlags};
use kvfs::store::DynStore;

const OWNER: (u32, u32) = (0, 0);

async fn open(store: &DynStore, opts: Options) -> Namespace {
    Namespace::new(Db::open_store(store.clone(), opts).await.unwrap(), OWNER)
        .await
        .unwrap()
}

async fn fill(ns: &Namespace, dir: u64, files: usize) {
    for i in 0..files {
        let ino = ns
            .create(dir, format!("file-{i:06}").as_bytes(), 0o644, OWNER)
            .await
            .unwrap()
            .ino;
        ns.open(ino, false).await.unwrap();
        ns.write(ino, 0, format!("content {i}").as_bytes())
            .await
            .unwrap();
        ns.release(ino).await.unwrap();
    }
}

/// Bytes uploaded by renaming a directory of `files` files and syncing.
async fn rename_cost(files: usize) -> u64 {
    let (_, store) = memory();
    // No checkpoints, whose uploads would be counted.
    let opts = Options {
        checkpoint_bytes: u64::MAX,
        ..small_opts()
    };
    let ns = open(&store, opts).await;
    let top = ns.mkdir(ROOT_INO, b"top", 0o755, OWNER).await.unwrap().ino;
    let d = ns.mkdir(top, b"dir", 0o755, OWNER).await.unwrap().ino;
    fill(&ns, d, files).await;
    let other = ns
        .mkdir(ROOT_INO, b"other", 0o755, OWNER)
        .await
        .unwrap()
        .ino;
    ns.db().sync().await.unwrap();
    let before = ns.db().metrics().put_bytes;
    ns.rename(top, b"dir", other, b"renamed", RenameFlags::default())
        .await
        .unwrap();
    ns.db().sync().await.unwrap();
    let cost = ns.db().metrics().put_bytes - before;
    assert_eq!(ns.lookup(other, b"renamed").await.unwrap().ino, d);
    assert_eq!(ns.readdir(d).await.unwrap().len(), files);
    assert!(matches!(
        ns.lookup(top, b"dir").await,
        Err(FsError::NotFound)
    ));
    ns.shutdown().await.unwrap();
    cost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_rename_writes_the_same_whatever_its_size() {
    let small = rename_cost(10).await;
    let large = rename_cost(5000).await;
    assert!(large < 4096, "{large} bytes uploaded to rename 5000 files");
    assert!(large <= small + 64, "{small} vs {large} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_renames_are_atomic_and_in_order_across_a_crash() {
    let (_, store) = memory();
    const DIRS: usize = 12;
    const FILES: usize = 40;
    {
        let ns = open(&store, small_opts()).await;
        for i in 0..DIRS {
            let d = ns
                .mkdir(ROOT_INO, format!("d{i}").as_bytes(), 0o755, OWNER)
                .await
                .unwrap()
                .ino;
            fill(&ns, d, FILES).await;
        }
        ns.db().sync().await.unwrap();
        for i in 0..DIRS {
            let name = format!("d{i}");
            let to = format!("e{i}");
            ns.rename(
                ROOT_INO,
                name.as_bytes(),
                ROOT_INO,
                to.as_bytes(),
                RenameFlags::default(),
            )
            .await
            .unwrap();
            if i == 3 {
                ns.db().sync().await.unwrap();
            }
        }
        // Crash with renames 4.. maybe durable, maybe not.
        ns.db().abandon();
    }
    release_lease(&*store).await;
    let ns = open(&store, small_opts()).await;
    let mut renamed = Vec::new();
    for i in 0..DIRS {
        let old = ns.lookup(ROOT_INO, format!("d{i}").as_bytes()).await;
        let new = ns.lookup(ROOT_INO, format!("e{i}").as_bytes()).await;
        let dir = match (old, new) {
            (Ok(a), Err(FsError::NotFound)) => {
                renamed.push(false);
                a
            }
            (Err(FsError::NotFound), Ok(b)) => {
                renamed.push(true);
                b
            }
            (a, b) => panic!("d{i}: {a:?} / e{i}: {b:?}"),
        };
        let names = ns.readdir(dir.ino).await.unwrap();
        assert_eq!(names.len(), FILES, "d{i} is whole");
    }
    assert!(renamed[..4].iter().all(|r| *r), "synced renames are there");
    // In order: once one is missing, so are all after it.
    let first_missing = renamed.iter().position(|r| !r).unwrap_or(DIRS);
    assert!(renamed[first_missing..].iter().all(|r| !r), "{renamed:?}");
    ns.shutdown().await.unwrap();
}
