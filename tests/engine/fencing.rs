//! One writer per store: a live writer is not displaced, a stale one is fenced.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{memory, release_lease, small_opts};
use bytes::Bytes;
use kvfs::db::lease::{now_unix_ms, LeaseInfo};
use kvfs::db::{Db, Error, Options};
use kvfs::store::PutMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_writer_is_refused_while_the_first_is_live() {
    let (_, store) = memory();
    let a = Db::open_store(store.clone(), small_opts()).await.unwrap();
    a.put(b"k", b"v").await.unwrap();
    let err = Db::open_store(store.clone(), small_opts())
        .await
        .unwrap_err();
    match &err {
        Error::Locked { holder, .. } => {
            assert!(holder.contains(&std::process::id().to_string()), "{holder}")
        }
        other => panic!("expected Locked, got {other}"),
    }
    assert!(err.to_string().contains("in use by another writer"));
    // Readers are not blocked by the writer.
    let r = Db::open_store(store.clone(), Options::read_only())
        .await
        .unwrap();
    assert_eq!(r.len(), 0);
    a.close().await.unwrap();
    let b = Db::open_store(store, small_opts()).await.unwrap();
    assert_eq!(b.get(b"k").await.unwrap().unwrap(), &b"v"[..]);
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_writer_is_fenced_and_loses_nothing_acknowledged() {
    let (_, store) = memory();
    let a = Db::open_store(store.clone(), small_opts()).await.unwrap();
    a.put(b"acked", b"1").await.unwrap();
    a.sync().await.unwrap();
    a.put(b"unacked", b"2").await.unwrap();
    // A pauses; its lease looks expired; B takes over.
    release_lease(&*store).await;
    let b = Db::open_store(store.clone(), small_opts()).await.unwrap();
    assert!(b.epoch() > a.epoch());
    assert_eq!(b.get(b"acked").await.unwrap().unwrap(), &b"1"[..]);
    // A wakes up: its next sync must fail, not pretend to be durable.
    let e = a.sync().await.unwrap_err();
    assert!(matches!(e, Error::Fenced(_)), "{e}");
    assert!(matches!(a.put(b"x", b"y").await, Err(Error::Fenced(_))));
    b.put(b"from-b", b"3").await.unwrap();
    b.close().await.unwrap();
    let r = Db::open_store(store, Options::read_only()).await.unwrap();
    assert_eq!(r.get(b"acked").await.unwrap().unwrap(), &b"1"[..]);
    assert_eq!(r.get(b"from-b").await.unwrap().unwrap(), &b"3"[..]);
    // The stale writer's unacknowledged write either made it before the fence or not
    // at all; what matters is that the store is consistent.
    let report = r.fsck(&mut |_| {}).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.issues);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_writer_cannot_publish_a_checkpoint() {
    let (_, store) = memory();
    let a = Db::open_store(store.clone(), small_opts()).await.unwrap();
    a.put(b"k", b"v").await.unwrap();
    a.sync().await.unwrap();
    release_lease(&*store).await;
    let b = Db::open_store(store.clone(), small_opts()).await.unwrap();
    let e = a.checkpoint().await.unwrap_err();
    assert!(matches!(e, Error::Fenced(_)), "{e}");
    b.put(b"k", b"w").await.unwrap();
    b.close().await.unwrap();
    let r = Db::open_store(store, Options::read_only()).await.unwrap();
    assert_eq!(r.get(b"k").await.unwrap().unwrap(), &b"w"[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_openers_never_both_write() {
    for round in 0..5 {
        let (_, store) = memory();
        let first = Db::open_store(store.clone(), small_opts()).await.unwrap();
        first.close().await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                match Db::open_store(store, small_opts()).await {
                    Ok(db) => {
                        let r = async {
                            db.put(format!("w{i}").as_bytes(), b"x").await?;
                            db.sync().await
                        }
                        .await;
                        Some((db, r))
                    }
                    Err(Error::Locked { .. }) => None,
                    Err(e) => panic!("round {round}: unexpected error {e}"),
                }
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            if let Some((db, r)) = t.await.unwrap() {
                if r.is_ok() {
                    winners.push(db);
                }
            }
        }
        // The lease admits one writer at a time within a process on one host.
        assert_eq!(winners.len(), 1, "round {round}");
        for w in winners {
            w.close().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_of_a_vanished_remote_writer_expires() {
    let (_, store) = memory();
    let db = Db::open_store(store.clone(), small_opts()).await.unwrap();
    db.put(b"k", b"v").await.unwrap();
    db.sync().await.unwrap();
    db.abandon();
    // Pretend the holder was another machine that stopped renewing.
    let g = store.get("lease").await.unwrap();
    let mut info: LeaseInfo = serde_json::from_slice(&g.data).unwrap();
    info.host = "another-host".into();
    info.ttl_ms = 300;
    info.renewed_unix_ms = now_unix_ms();
    store
        .put(
            "lease",
            Bytes::from(serde_json::to_vec(&info).unwrap()),
            PutMode::IfMatch(g.etag),
        )
        .await
        .unwrap();
    let db = Db::open_store(store.clone(), small_opts()).await.unwrap();
    assert_eq!(db.get(b"k").await.unwrap().unwrap(), &b"v"[..]);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_remote_writer_is_not_displaced() {
    let (_, store) = memory();
    let info = LeaseInfo {
        kvfs_lease: 1,
        host: "another-host".into(),
        pid: 42,
        boot_id: None,
        pid_ns: None,
        nonce: 1,
        renewed_unix_ms: now_unix_ms(),
        ttl_ms: 600,
        released: false,
        label: Some("mount at /mnt/elsewhere".into()),
    };
    let mut etag = store
        .put(
            "lease",
            Bytes::from(serde_json::to_vec(&info).unwrap()),
            PutMode::CreateNew,
        )
        .await
        .unwrap();
    // The remote holder renews every 100 ms.
    let renewer = {
        let store = store.clone();
        tokio::spawn(async move {
            for n in 2.. {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut i = info.clone();
                i.nonce = n;
                i.renewed_unix_ms = now_unix_ms();
                match store
                    .put(
                        "lease",
                        Bytes::from(serde_json::to_vec(&i).unwrap()),
                        PutMode::IfMatch(etag.clone()),
                    )
                    .await
                {
                    Ok(e) => etag = e,
                    Err(_) => return,
                }
            }
        })
    };
    let err = Db::open_store(store.clone(), small_opts())
        .await
        .unwrap_err();
    renewer.abort();
    match err {
        Error::Locked { holder, .. } => {
            assert!(holder.contains("another-host"), "{holder}");
            assert!(holder.contains("pid 42"), "{holder}");
            assert!(holder.contains("mount at /mnt/elsewhere"), "{holder}");
        }
        other => panic!("expected Locked, got {other}"),
    }
    let _ = Arc::strong_count(&store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_over_s3_conditional_writes() {
    let s3 = crate::common::S3Fixture::start().await;
    let store = s3.store("fence");
    let a = Db::open_store(store.clone(), small_opts()).await.unwrap();
    a.put(b"acked", b"1").await.unwrap();
    a.sync().await.unwrap();
    assert!(matches!(
        Db::open_store(store.clone(), small_opts()).await,
        Err(Error::Locked { .. })
    ));
    release_lease(&*store).await;
    let b = Db::open_store(store.clone(), small_opts()).await.unwrap();
    a.put(b"late", b"2").await.unwrap();
    assert!(matches!(a.sync().await, Err(Error::Fenced(_))));
    assert_eq!(b.get(b"acked").await.unwrap().unwrap(), &b"1"[..]);
    assert_eq!(b.get(b"late").await.unwrap(), None);
    b.close().await.unwrap();
    let r = Db::open_store(store, Options::read_only()).await.unwrap();
    assert_eq!(r.get(b"late").await.unwrap(), None);
    assert!(r.fsck(&mut |_| {}).await.unwrap().is_clean());
}
