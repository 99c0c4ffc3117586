//! A store with no room left: writes that add data fail with `NoSpace` (ENOSPC) at
//! once, reads and deletes go on, nothing queued is lost, and writes carry on once
//! there is room again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvfs::db::{Db, Error, Options};
use kvfs::store::DynStore;
use kvfs_testkit::faults::{FaultConfig, FaultControl, FaultyStore};
use kvfs_testkit::recording::{RecordingStore, Request};
use kvfs_testkit::server::ServerOptions;

use crate::common::{contents, memory, small_opts, S3Fixture};

fn value(i: usize) -> Vec<u8> {
    (0..64 << 10).map(|j| (i * 7 + j / 97) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_over_its_quota_refuses_data_keeps_reads_and_deletes_and_loses_nothing() {
    let s3 = S3Fixture::with_options(ServerOptions {
        faults: FaultConfig {
            quota_bytes: Some(1 << 20),
            ..FaultConfig::default()
        },
        ..ServerOptions::default()
    })
    .await;
    let store = s3.store("full");
    let opts = Options {
        segment_bytes: 256 << 10,
        ..small_opts()
    };
    let db = Db::open_store(store.clone(), opts.clone()).await.unwrap();
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut refused = None;
    for i in 0..64 {
        let key = format!("k{i:03}").into_bytes();
        db.put(&key, &value(i)).await.unwrap();
        // Queued: it stays, and lands once there is room.
        model.insert(key, value(i));
        if let Err(e) = db.sync().await {
            refused = Some((i, e));
            break;
        }
    }
    let (filled, err) = refused.expect("the quota was reached");
    assert!(matches!(err, Error::NoSpace(_)), "{err}");
    assert_eq!(err.errno(), libc::ENOSPC);
    assert!(err.to_string().contains("QuotaExceeded"), "{err}");
    assert!(filled >= 4, "only {filled} values fit");
    assert!(db.space_problem().is_some());
    assert!(db.figures().store_full && !db.figures().store_unanswered);

    // Writes that add data are refused at once; syncs say why at once too.
    let started = Instant::now();
    let e = db.put(b"more", &value(99)).await.unwrap_err();
    assert!(matches!(e, Error::NoSpace(_)), "{e}");
    assert!(matches!(db.sync().await, Err(Error::NoSpace(_))));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no waiting for the retry timeout"
    );
    // Reads and deletes go on.
    for (k, v) in model.iter().take(3) {
        assert_eq!(db.get(k).await.unwrap().unwrap(), *v);
    }
    db.delete(b"k000").await.unwrap();
    model.remove(b"k000".as_slice());
    db.put(b"k001", b"").await.unwrap();
    model.insert(b"k001".to_vec(), Vec::new());

    // Room again: what was queued lands in order, and writes carry on.
    s3.server.faults().update(|c| c.quota_bytes = None);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match db.sync().await {
            Ok(()) => break,
            Err(Error::NoSpace(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(db.space_problem().is_none());
    db.put(b"after", b"room again").await.unwrap();
    model.insert(b"after".to_vec(), b"room again".to_vec());
    db.close().await.unwrap();

    let r = Db::open_store(store, Options::read_only()).await.unwrap();
    let mut found = BTreeMap::new();
    for k in model.keys() {
        if let Some(v) = r.get(k).await.unwrap() {
            found.insert(k.clone(), v.to_vec());
        }
    }
    assert_eq!(found, model);
    assert_eq!(r.get(b"k000").await.unwrap(), None);
    assert_eq!(r.get(b"more").await.unwrap(), None);
}

/// Short of space, a writer's background GC lets the log's dead segments go by
/// itself (a checkpoint, then deletion after the grace period), and then reaches a
/// fixed point: ten more minutes cost only lease renewals.
#[tokio::test(start_paused = true)]
async fn short_of_space_the_cleaner_gives_space_back_then_rests() {
    let (_, mem) = memory();
    let rec = RecordingStore::new(mem);
    let faults = FaultControl::default();
    let store: DynStore = Arc::new(FaultyStore::new(rec.clone(), faults.clone()));
    // Production GC settings; checkpoints only at 64 MiB of log, never reached here.
    let opts = Options {
        segment_bytes: 64 << 10,
        ..Options::default()
    };
    let db = Db::open_store(store, opts).await.unwrap();
    for i in 0..400usize {
        db.put(format!("k{i:03}").as_bytes(), &value(i)[..16 << 10])
            .await
            .unwrap();
    }
    db.sync().await.unwrap();
    for i in 0..360usize {
        db.delete(format!("k{i:03}").as_bytes()).await.unwrap();
    }
    db.sync().await.unwrap();
    let expected = contents(&db).await;
    faults.update(|c| c.short_of_space = true);
    let e = db.put(b"new", b"data").await.unwrap_err();
    assert!(matches!(e, Error::NoSpace(_)), "{e}");
    // Deleting and writing what adds nothing still work.
    db.delete(b"k399").await.unwrap();
    db.put(b"k398", &value(398)[..16 << 10]).await.unwrap();
    db.sync().await.unwrap();
    let expected: BTreeMap<_, _> = expected
        .into_iter()
        .filter(|(k, _)| k.as_slice() != b"k399")
        .collect();

    tokio::time::sleep(Duration::from_secs(600)).await;
    let c = db.gc_counters();
    assert!(
        c.objects_deleted >= 4,
        "dead log segments were deleted: {c}"
    );
    let idle_from = rec.len();
    tokio::time::sleep(Duration::from_secs(600)).await;
    let other: Vec<_> = rec
        .since(idle_from)
        .into_iter()
        .filter(|r| r.key != "lease")
        .collect();
    assert!(other.is_empty(), "requests beyond the lease: {other:?}");
    let renewals = rec
        .since(idle_from)
        .iter()
        .filter(|r| r.request == Request::Put)
        .count();
    assert!(renewals > 0, "the lease was renewed");
    assert_eq!(contents(&db).await, expected);
    db.close().await.unwrap();
}
