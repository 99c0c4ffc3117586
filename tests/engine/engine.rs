//! The engine's API on the memory and local directory backends.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::common::{contents, memory, release_lease, small_opts};
use kvfs::db::{BatchOp, Db, Error, Options, MAX_KEY_LEN, MAX_VALUE_LEN};
use kvfs::store::local::LocalStore;
use kvfs::store::DynStore;

async fn basic_api(store: DynStore) {
    let db = Db::open_store(store.clone(), small_opts()).await.unwrap();
    db.put(b"a", b"1").await.unwrap();
    db.put(b"b/x", b"2").await.unwrap();
    db.put(b"b/y", b"3").await.unwrap();
    db.put(b"c", b"4").await.unwrap();
    db.put(b"a", b"one").await.unwrap();
    db.delete(b"c").await.unwrap();
    db.delete(b"never").await.unwrap();
    assert_eq!(db.get(b"a").await.unwrap().unwrap(), &b"one"[..]);
    assert_eq!(db.get(b"c").await.unwrap(), None);
    let pre = db.scan_prefix(b"b/", 10, false).await.unwrap();
    assert_eq!(pre.len(), 2);
    assert_eq!(pre[0].0, b"b/x");
    assert_eq!(pre[1].1.as_deref(), Some(&b"3"[..]));
    let ranged = db
        .scan(Bound::Included(b"a"), Bound::Excluded(b"b/y"), 10, true)
        .await
        .unwrap();
    assert_eq!(
        ranged.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        vec![b"a".to_vec(), b"b/x".to_vec()]
    );
    assert_eq!(db.scan_prefix(b"", 1, true).await.unwrap().len(), 1);
    db.write_batch(&[
        BatchOp::Put(b"d".to_vec(), b"5".to_vec()),
        BatchOp::Delete(b"a".to_vec()),
    ])
    .await
    .unwrap();
    db.sync().await.unwrap();
    let before = contents(&db).await;
    db.close().await.unwrap();

    let db = Db::open_store(store.clone(), small_opts()).await.unwrap();
    assert_eq!(contents(&db).await, before);
    db.close().await.unwrap();
    let ro = Db::open_store(store, Options::read_only()).await.unwrap();
    assert_eq!(contents(&ro).await, before);
    assert!(matches!(ro.put(b"x", b"y").await, Err(Error::ReadOnly)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_api_memory() {
    basic_api(memory().1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_api_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    basic_api(std::sync::Arc::new(LocalStore::open(dir.path()).unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_give_clear_errors() {
    let (_, store) = memory();
    let db = Db::open_store(store, small_opts()).await.unwrap();
    assert!(matches!(db.put(b"", b"x").await, Err(Error::InvalidKey(_))));
    let long = vec![b'k'; MAX_KEY_LEN + 1];
    let e = db.put(&long, b"x").await.unwrap_err();
    assert!(e.to_string().contains("4096"), "{e}");
    db.put(&vec![b'k'; MAX_KEY_LEN], b"max key").await.unwrap();
    let big = vec![1u8; MAX_VALUE_LEN + 1];
    assert!(matches!(
        db.put(b"big", &big).await,
        Err(Error::ValueTooLarge { .. })
    ));
    assert!(matches!(db.get(b"").await, Err(Error::InvalidKey(_))));
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn largest_value_roundtrips_through_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store: DynStore = std::sync::Arc::new(LocalStore::open(dir.path()).unwrap());
    let db = Db::open_store(store.clone(), small_opts()).await.unwrap();
    let value: Vec<u8> = (0..MAX_VALUE_LEN)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    db.put(b"huge", &value).await.unwrap();
    db.put(b"small", b"after").await.unwrap();
    db.sync().await.unwrap();
    db.close().await.unwrap();
    let db = Db::open_store(store, Options::read_only()).await.unwrap();
    let got = db.get(b"huge").await.unwrap().unwrap();
    assert!(got == value, "64 MiB value differs after reopen");
    assert_eq!(db.get(b"small").await.unwrap().unwrap(), &b"after"[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_uses_checkpoint_and_log_tail() {
    let (mem, store) = memory();
    let db = Db::open_store(store.clone(), small_opts()).await.unwrap();
    let mut model = BTreeMap::new();
    for i in 0..3000u32 {
        let k = format!("key/{:05}", i % 700).into_bytes();
        let v = format!("value {i}").into_bytes();
        db.put(&k, &v).await.unwrap();
        model.insert(k, v);
    }
    db.checkpoint().await.unwrap();
    for i in 0..500u32 {
        let k = format!("key/{:05}", i).into_bytes();
        if i % 3 == 0 {
            db.delete(&k).await.unwrap();
            model.remove(&k);
        } else {
            db.put(&k, b"late").await.unwrap();
            model.insert(k, b"late".to_vec());
        }
    }
    db.sync().await.unwrap();
    // Crash: no close, no final checkpoint.
    db.abandon();
    drop(db);
    release_lease(&*store).await;
    let listed = kvfs::store::ObjectStore::list(&*mem, "ckpt/")
        .await
        .unwrap();
    assert!(!listed.is_empty(), "a checkpoint was written");
    let db = Db::open_store(store.clone(), small_opts()).await.unwrap();
    assert_eq!(contents(&db).await, model);
    let report = db.fsck(&mut |_| {}).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.issues);
    assert_eq!(report.keys_verified as usize, model.len());
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsynced_writes_may_vanish_but_synced_ones_stay() {
    let (_, store) = memory();
    let opts = Options {
        flush_interval: std::time::Duration::from_secs(3600),
        ..small_opts()
    };
    let db = Db::open_store(store.clone(), opts).await.unwrap();
    db.put(b"synced", b"yes").await.unwrap();
    db.sync().await.unwrap();
    db.put(b"unsynced", b"maybe").await.unwrap();
    db.abandon();
    drop(db);
    release_lease(&*store).await;
    let db = Db::open_store(store, small_opts()).await.unwrap();
    assert_eq!(db.get(b"synced").await.unwrap().unwrap(), &b"yes"[..]);
    assert_eq!(db.get(b"unsynced").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_syncs_share_uploads() {
    use kvfs_testkit::faults::{FaultConfig, FaultControl, FaultyStore};
    let (_, mem) = memory();
    let faults = FaultControl::seeded(FaultConfig::default(), 1);
    let store: DynStore = std::sync::Arc::new(FaultyStore::new(mem, faults.clone()));
    let opts = Options {
        max_inflight_uploads: 1,
        flush_interval: std::time::Duration::from_secs(3600),
        ..Options::default()
    };
    let db = Db::open_store(store, opts).await.unwrap();
    // Every upload takes a while, so syncs arriving meanwhile queue behind it.
    faults.set(FaultConfig {
        put_latency: std::time::Duration::from_millis(10),
        ..FaultConfig::default()
    });
    let before = db.metrics().puts;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                db.put(format!("t{t}/{i}").as_bytes(), b"v").await.unwrap();
                db.sync().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let puts = db.metrics().puts - before;
    // 320 syncs; with one upload slot they must share PUTs.
    assert!(puts < 320, "{puts} PUTs for 320 syncs");
    assert_eq!(db.len(), 320);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_wait_when_unflushed_memory_is_full() {
    use kvfs_testkit::faults::{FaultConfig, FaultControl, FaultyStore};
    let (_, mem) = memory();
    let faults = FaultControl::seeded(
        FaultConfig {
            put_latency: std::time::Duration::from_millis(30),
            ..FaultConfig::default()
        },
        1,
    );
    let store: DynStore = std::sync::Arc::new(FaultyStore::new(mem.clone(), faults));
    let opts = Options {
        segment_bytes: 8 << 10,
        max_unflushed_bytes: 64 << 10,
        max_inflight_uploads: 2,
        ..small_opts()
    };
    let db = Db::open_store(store, opts).await.unwrap();
    let value = vec![7u8; 1000];
    for i in 0..1000u32 {
        db.put(format!("k{i}").as_bytes(), &value).await.unwrap();
        assert!(db.unflushed_bytes() <= 64 << 10, "memory bound exceeded");
    }
    db.sync().await.unwrap();
    db.close().await.unwrap();
    let db = Db::open_store(mem, Options::read_only()).await.unwrap();
    assert_eq!(db.len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_links_survive_checkpoint_and_replay() {
    let (_, store) = memory();
    let db = Db::open_store(store.clone(), small_opts()).await.unwrap();
    let big = vec![9u8; 100_000];
    db.put_with_meta(b"dir/file", b"mode=644", &big)
        .await
        .unwrap();
    db.checkpoint().await.unwrap();
    let before = db.metrics().put_bytes;
    // A rename: one small link entry, no copy of the 100 KB value.
    db.write_batch(&[
        BatchOp::Link {
            key: b"other/file".to_vec(),
            source: b"dir/file".to_vec(),
            meta: None,
        },
        BatchOp::Delete(b"dir/file".to_vec()),
    ])
    .await
    .unwrap();
    // A metadata-only change.
    db.write_batch(&[BatchOp::Link {
        key: b"other/file".to_vec(),
        source: b"other/file".to_vec(),
        meta: Some(b"mode=600".to_vec()),
    }])
    .await
    .unwrap();
    db.sync().await.unwrap();
    assert!(
        db.metrics().put_bytes - before < 1000,
        "no value was copied"
    );
    // A link to a missing key fails and changes nothing, even inside a batch.
    let e = db
        .write_batch(&[
            BatchOp::Put(b"x".to_vec(), b"1".to_vec()),
            BatchOp::Link {
                key: b"y".to_vec(),
                source: b"missing".to_vec(),
                meta: None,
            },
        ])
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    assert_eq!(db.get(b"x").await.unwrap(), None);
    let info = db.info(b"other/file").unwrap();
    assert_eq!(info.meta.as_deref(), Some(&b"mode=600"[..]));
    assert_eq!(info.value_len, 100_000);
    db.abandon();
    release_lease(&*store).await;
    for opts in [small_opts(), Options::read_only()] {
        let db = Db::open_store(store.clone(), opts).await.unwrap();
        assert_eq!(db.get(b"dir/file").await.unwrap(), None);
        assert_eq!(db.get(b"other/file").await.unwrap().unwrap(), big);
        assert_eq!(
            db.info(b"other/file").unwrap().meta.as_deref(),
            Some(&b"mode=600"[..])
        );
        let listed = db.scan_info(Bound::Unbounded, Bound::Unbounded, 10);
        assert_eq!(listed.len(), 1);
        assert!(db.fsck(&mut |_| {}).await.unwrap().is_clean());
        db.close().await.unwrap();
    }
}

/// Values written together are read back together: a cold read of a log segment
/// fetches its aligned readahead window, so reading back 3,000 small values after a
/// reopen costs about one GET per window of log, not one per value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_reads_of_the_log_fetch_windows_not_values() {
    let (_, store) = memory();
    // Segments as a writer of many files makes them: whole megabytes.
    let opts = Options {
        segment_bytes: 4 << 20,
        flush_interval: Options::default().flush_interval,
        ..small_opts()
    };
    let w = Db::open_store(store.clone(), opts.clone()).await.unwrap();
    let value = |i: u32| format!("{i:06}{}", "v".repeat(494)).into_bytes();
    for i in 0..3000u32 {
        w.put(format!("k{i:05}").as_bytes(), &value(i))
            .await
            .unwrap();
        if i % 500 == 499 {
            w.sync().await.unwrap();
        }
    }
    w.close().await.unwrap();
    for opts in [Options::read_only(), opts] {
        let r = Db::open_store(store.clone(), opts).await.unwrap();
        let before = r.metrics().gets;
        for i in 0..3000u32 {
            let got = r.get(format!("k{i:05}").as_bytes()).await.unwrap();
            assert_eq!(got.unwrap(), &value(i)[..]);
        }
        let gets = r.metrics().gets - before;
        assert!(gets <= 12, "{gets} GETs for 3,000 values in 1.5 MB of log");
        r.close().await.unwrap();
    }
}
