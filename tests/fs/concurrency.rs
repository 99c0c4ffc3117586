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
