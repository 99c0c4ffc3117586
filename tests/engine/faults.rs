//! Injected object-store faults and corrupt objects: nothing acknowledged is lost,
//! and bad data gives a clear error, never a panic.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{memory, small_opts};
use bytes::Bytes;
use kvfs::db::{Db, Error, Lifecycle, Options};
use kvfs::store::retry::RetryPolicy;
use kvfs::store::{DynStore, PutMode};
use kvfs_testkit::faults::{FaultConfig, FaultControl, FaultyStore};

fn faulty(inner: DynStore, cfg: FaultConfig) -> (DynStore, FaultControl) {
    let h = FaultControl::seeded(cfg, 7);
    (Arc::new(FaultyStore::new(inner, h.clone())), h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_stalls_and_lost_responses_lose_nothing() {
    let (_, mem) = memory();
    let (store, _h) = faulty(
        mem.clone(),
        FaultConfig {
            error_rate: 0.25,
            stall_rate: 0.05,
            stall: Duration::from_millis(30),
            ambiguous_put_rate: 0.1,
            ..FaultConfig::default()
        },
    );
    let db = Db::open_store(store.clone(), small_opts()).await.unwrap();
    for i in 0..600u32 {
        db.put(format!("k{i:04}").as_bytes(), format!("v{i}").as_bytes())
            .await
            .unwrap();
        if i % 50 == 49 {
            db.sync().await.unwrap();
        }
    }
    db.close().await.unwrap();
    assert!(db.retries() > 0, "faults were injected and retried");
    let r = Db::open_store(mem, Options::read_only()).await.unwrap();
    assert_eq!(r.len(), 600);
    for i in (0..600u32).step_by(37) {
        let v = r.get(format!("k{i:04}").as_bytes()).await.unwrap().unwrap();
        assert_eq!(v, format!("v{i}").into_bytes());
    }
    let report = r.fsck(&mut |_| {}).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.issues);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_makes_writes_wait_fail_clearly_then_carry_on() {
    let (_, mem) = memory();
    let (store, h) = faulty(mem.clone(), FaultConfig::default());
    let opts = Options {
        segment_bytes: 4096,
        max_unflushed_bytes: 16 << 10,
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
            max_elapsed: Duration::from_millis(1500),
        },
        ..small_opts()
    };
    let db = Db::open_store(store, opts).await.unwrap();
    db.put(b"before", b"outage").await.unwrap();
    db.sync().await.unwrap();
    h.update(|c| c.outage = true);
    // Writes are buffered until the memory bound, then wait, then fail.
    let value = vec![1u8; 1000];
    let mut failed = None;
    let mut accepted = Vec::new();
    for i in 0..100u32 {
        let key = format!("during{i}");
        match db.put(key.as_bytes(), &value).await {
            Ok(()) => accepted.push(key),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
        assert!(db.unflushed_bytes() <= 16 << 10);
    }
    let e = match failed {
        Some(e) => e,
        None => db.sync().await.unwrap_err(),
    };
    assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
    assert!(
        e.to_string().contains("injected outage") && e.to_string().contains("queued"),
        "{e}"
    );
    assert!(matches!(db.sync().await, Err(Error::Unavailable(_))));
    assert_eq!(db.lifecycle(), Lifecycle::Open);
    // The store answers again: the same writer stores what it queued, in order, and
    // takes new writes.
    h.update(|c| c.outage = false);
    db.put(b"after", b"outage").await.unwrap();
    db.sync().await.unwrap();
    db.close().await.unwrap();
    let r = Db::open_store(mem, Options::read_only()).await.unwrap();
    assert_eq!(r.get(b"before").await.unwrap().unwrap(), &b"outage"[..]);
    assert_eq!(r.get(b"after").await.unwrap().unwrap(), &b"outage"[..]);
    for k in &accepted {
        assert_eq!(
            r.get(k.as_bytes()).await.unwrap().unwrap(),
            &value[..],
            "{k}"
        );
    }
    assert!(r.fsck(&mut |_| {}).await.unwrap().is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_during_an_outage_gives_up_after_the_retry_timeout() {
    let (_, mem) = memory();
    let (store, h) = faulty(mem.clone(), FaultConfig::default());
    let opts = Options {
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
            max_elapsed: Duration::from_millis(500),
        },
        ..small_opts()
    };
    let db = Db::open_store(store, opts).await.unwrap();
    db.put(b"synced", b"1").await.unwrap();
    db.sync().await.unwrap();
    h.update(|c| c.outage = true);
    db.put(b"unsynced", b"2").await.unwrap();
    let e = db.close().await.unwrap_err();
    assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
    h.update(|c| c.outage = false);
    // What was synced is there (the lease could not be given back: it stays until
    // this process ends or its time runs out).
    let r = Db::open_store(mem, Options::read_only()).await.unwrap();
    assert_eq!(r.get(b"synced").await.unwrap().unwrap(), &b"1"[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_outage_is_ridden_out_by_retries() {
    let (_, mem) = memory();
    let (store, h) = faulty(mem.clone(), FaultConfig::default());
    let db = Db::open_store(store, small_opts()).await.unwrap();
    db.put(b"a", b"1").await.unwrap();
    h.update(|c| c.outage = true);
    let sync = tokio::spawn({
        let db = db.clone();
        async move { db.sync().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.update(|c| c.outage = false);
    sync.await.unwrap().unwrap();
    db.close().await.unwrap();
    let r = Db::open_store(mem, Options::read_only()).await.unwrap();
    assert_eq!(r.get(b"a").await.unwrap().unwrap(), &b"1"[..]);
}

async fn store_with_data() -> (Arc<kvfs::store::memory::MemoryStore>, DynStore) {
    let (mem, store) = memory();
    let db = Db::open_store(store.clone(), small_opts()).await.unwrap();
    for i in 0..50u32 {
        db.put(format!("k{i:02}").as_bytes(), &[i as u8; 100])
            .await
            .unwrap();
    }
    db.close().await.unwrap();
    (mem, store)
}

async fn names(store: &DynStore, prefix: &str) -> Vec<String> {
    store
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_value_is_an_error_on_get_and_in_fsck() {
    let (mem, store) = store_with_data().await;
    // Checkpointed on close; flip a byte of the first data segment.
    let seg = names(&store, "seg/").await[0].clone();
    let mut data = store.get(&seg).await.unwrap().data.to_vec();
    // Header (32) + entry header (12) + key "k00" (3) + value checksum (4): a byte
    // inside the first value.
    data[32 + 12 + 3 + 4 + 10] ^= 0xff;
    mem.tamper(&seg, Bytes::from(data));
    let r = Db::open_store(store.clone(), Options::read_only())
        .await
        .unwrap();
    let mut saw = false;
    for i in 0..50u32 {
        match r.get(format!("k{i:02}").as_bytes()).await {
            Ok(v) => assert_eq!(v.unwrap().to_vec(), vec![i as u8; 100]),
            Err(e @ Error::Corrupt { .. }) => {
                assert!(e.to_string().contains(&seg), "{e}");
                saw = true;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(saw, "the corrupt entry was detected");
    let report = r.fsck(&mut |_| {}).await.unwrap();
    assert!(report.issues.iter().any(|i| i.object == seg));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_manifest_or_log_fail_open_clearly() {
    // A damaged checkpoint falls back to an older one (tests/engine/damage.rs).
    for target in ["manifest/", "seg/"] {
        let (mem, store) = store_with_data().await;
        // Make the log tail non-empty so that segments are replayed at open.
        let db = Db::open_store(store.clone(), small_opts()).await.unwrap();
        db.put(b"tail", b"x").await.unwrap();
        db.sync().await.unwrap();
        db.abandon();
        drop(db);
        crate::common::release_lease(&*store).await;
        let victim = names(&store, target).await.pop().unwrap();
        let data = store.get(&victim).await.unwrap().data;
        mem.tamper(&victim, data.slice(..data.len() - 3));
        let e = Db::open_store(store.clone(), Options::read_only())
            .await
            .unwrap_err();
        assert!(e.to_string().contains(&victim), "{target}: {e}");
        let e = Db::open_store(store.clone(), small_opts())
            .await
            .unwrap_err();
        assert!(e.to_string().contains(&victim), "{target}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_objects_are_reported() {
    let (_, store) = store_with_data().await;
    store
        .put(
            "notes.txt",
            Bytes::from_static(b"hello"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let r = Db::open_store(store.clone(), Options::read_only())
        .await
        .unwrap();
    let report = r.fsck(&mut |_| {}).await.unwrap();
    assert!(report
        .issues
        .iter()
        .any(|i| i.object == "notes.txt" && i.problem.contains("foreign")));
    // A foreign object under a name kvfs uses is an error, not a panic.
    store
        .put(
            "manifest/00000000000000000099",
            Bytes::from_static(b"{\"not\": \"a manifest\"}"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let e = Db::open_store(store.clone(), Options::read_only())
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("manifest/00000000000000000099"),
        "{e}"
    );
    store
        .put("lease", Bytes::from_static(b"garbage"), PutMode::Overwrite)
        .await
        .unwrap();
    let e = Db::open_store(store.clone(), small_opts())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a kvfs lease"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_segment_of_a_closed_range_is_reported() {
    let (_, store) = memory();
    let db = Db::open_store(
        store.clone(),
        Options {
            checkpoint_on_close_bytes: u64::MAX,
            checkpoint_max_ranges: usize::MAX,
            ..small_opts()
        },
    )
    .await
    .unwrap();
    db.put(b"a", b"1").await.unwrap();
    db.close().await.unwrap();
    // The next open closes epoch 1's range; then lose its segment.
    let db = Db::open_store(
        store.clone(),
        Options {
            checkpoint_on_close_bytes: u64::MAX,
            checkpoint_max_ranges: usize::MAX,
            ..small_opts()
        },
    )
    .await
    .unwrap();
    db.close().await.unwrap();
    store
        .delete("seg/00000000000000000001-00000000000000000001")
        .await
        .unwrap();
    let e = Db::open_store(store, Options::read_only())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}
