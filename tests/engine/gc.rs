//! Garbage collection and compaction: space comes back, nothing acknowledged is lost,
//! deleted data is really gone, and compacted directories are read with few GETs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{contents, gc_opts, memory, release_lease, small_opts, Rng, S3Fixture};
use kvfs::db::{BatchOp, Db, GcOptions, Options};
use kvfs::store::local::LocalStore;
use kvfs::store::DynStore;

async fn check_clean(db: &Db) {
    let report = db.fsck(&mut |_| {}).await.unwrap();
    assert!(report.is_clean(), "fsck: {:?}", report.issues);
}

/// Every byte of every file under `dir`.
fn store_bytes(dir: &Path) -> Vec<u8> {
    crate::common::files_with_bytes(dir)
        .into_iter()
        .flat_map(|(_, data)| data)
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn deleted_and_overwritten_data_is_gone_after_gc() {
    let dir = tempfile::tempdir().unwrap();
    let store: DynStore = Arc::new(LocalStore::open(dir.path()).unwrap());
    let db = Db::open_store(store.clone(), gc_opts()).await.unwrap();
    let secret = |i: u32, v: u32| format!("SECRET-{i:04}-v{v}-{}", "s".repeat(200));
    for i in 0..200u32 {
        db.put(format!("k{i:04}").as_bytes(), secret(i, 1).as_bytes())
            .await
            .unwrap();
    }
    db.sync().await.unwrap();
    for i in 0..200u32 {
        if i % 2 == 0 {
            db.delete(format!("k{i:04}").as_bytes()).await.unwrap();
        } else {
            db.put(format!("k{i:04}").as_bytes(), secret(i, 2).as_bytes())
                .await
                .unwrap();
        }
    }
    db.sync().await.unwrap();
    assert!(contains(&store_bytes(dir.path()), b"SECRET-0000-v1"));
    let before = db.stats().await.unwrap();
    let done = db.gc(&mut |_| {}).await.unwrap();
    assert!(done.objects_deleted > 0, "{done}");
    let after = db.stats().await.unwrap();
    assert!(
        after.stored_bytes < before.stored_bytes / 2,
        "{} -> {}",
        before.stored_bytes,
        after.stored_bytes
    );
    assert_eq!(after.unneeded_objects, 0);
    let bytes = store_bytes(dir.path());
    for i in 0..200u32 {
        assert!(
            !contains(&bytes, format!("SECRET-{i:04}-v1").as_bytes()),
            "{i} v1 still stored"
        );
        let v2 = contains(&bytes, format!("SECRET-{i:04}-v2").as_bytes());
        assert_eq!(v2, i % 2 == 1, "key {i}");
    }
    check_clean(&db).await;
    let want = contents(&db).await;
    assert_eq!(want.len(), 100);
    db.close().await.unwrap();
    let db = Db::open_store(store, gc_opts()).await.unwrap();
    assert_eq!(contents(&db).await, want);
    check_clean(&db).await;
    db.close().await.unwrap();
}

#[tokio::test]
async fn cleaning_moves_live_data_out_of_mostly_dead_segments() {
    let (_m, store) = memory();
    let db = Db::open_store(store.clone(), gc_opts()).await.unwrap();
    let mut model = BTreeMap::new();
    // Each segment gets one survivor among many overwritten keys.
    for round in 0..5u32 {
        for i in 0..40u32 {
            let key = if i == 0 {
                format!("keep{round}")
            } else {
                format!("hot{i}")
            };
            let val = format!("{round}-{i}-{}", "v".repeat(100));
            db.put(key.as_bytes(), val.as_bytes()).await.unwrap();
            model.insert(key.into_bytes(), val.into_bytes());
        }
        db.sync().await.unwrap();
    }
    let done = db.gc(&mut |_| {}).await.unwrap();
    assert!(done.keys_moved > 0 && done.runs_written > 0, "{done}");
    let st = db.stats().await.unwrap();
    assert!(st.runs > 0);
    assert_eq!(st.fill_histogram[1] + st.fill_histogram[2], 0, "{st}");
    assert_eq!(contents(&db).await, model);
    check_clean(&db).await;
    db.close().await.unwrap();
    let db = Db::open_store(store, gc_opts()).await.unwrap();
    assert_eq!(contents(&db).await, model);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_sharing_a_value_still_share_it_after_compaction() {
    let (_m, store) = memory();
    let db = Db::open_store(store.clone(), gc_opts()).await.unwrap();
    let big = vec![b'b'; 200_000];
    db.put(b"a", &big).await.unwrap();
    let mut ops = Vec::new();
    for k in [&b"a2"[..], b"a3", b"a4"] {
        ops.push(BatchOp::Link {
            key: k.to_vec(),
            source: b"a".to_vec(),
            meta: Some(k.to_vec()),
        });
    }
    db.write_batch(&ops).await.unwrap();
    db.put(b"small", b"s").await.unwrap();
    db.sync().await.unwrap();
    db.compact(&mut |_| {}).await.unwrap();
    let st = db.stats().await.unwrap();
    // One copy of the value, not four.
    assert!(st.stored_bytes < 2 * big.len() as u64, "{st}");
    for k in [&b"a"[..], b"a2", b"a3", b"a4"] {
        assert_eq!(db.get(k).await.unwrap().unwrap(), &big[..]);
    }
    assert_eq!(db.info(b"a3").unwrap().meta.as_deref(), Some(&b"a3"[..]));
    db.close().await.unwrap();
    let db = Db::open_store(store, gc_opts()).await.unwrap();
    assert_eq!(db.get(b"a4").await.unwrap().unwrap(), &big[..]);
    check_clean(&db).await;
    db.close().await.unwrap();
}

/// Random writes, renames and deletes with GC, compaction, clean reopens and
/// simulated crashes in between, checked against a model.
async fn model_with_gc(store: DynStore, seed: u64) {
    let mut rng = Rng(seed);
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut db = Db::open_store(store.clone(), gc_opts()).await.unwrap();
    for step in 0..600u32 {
        let key = format!("d{}/f{}", rng.below(4), rng.below(40)).into_bytes();
        match rng.below(10) {
            0..=5 => {
                let val = format!("{step}-{}", "x".repeat(rng.below(300) as usize)).into_bytes();
                db.put(&key, &val).await.unwrap();
                model.insert(key, val);
            }
            6 => {
                db.delete(&key).await.unwrap();
                model.remove(&key);
            }
            7 => {
                if let Some(v) = model.get(&key).cloned() {
                    let to = format!("moved/{step}").into_bytes();
                    db.write_batch(&[
                        BatchOp::Link {
                            key: to.clone(),
                            source: key.clone(),
                            meta: None,
                        },
                        BatchOp::Delete(key.clone()),
                    ])
                    .await
                    .unwrap();
                    model.remove(&key);
                    model.insert(to, v);
                }
            }
            _ => {}
        }
        if step % 97 == 96 {
            db.sync().await.unwrap();
            if rng.below(2) == 0 {
                db.compact(&mut |_| {}).await.unwrap();
            } else {
                db.gc(&mut |_| {}).await.unwrap();
            }
            assert_eq!(contents(&db).await, model, "after gc at step {step}");
        }
        if step % 150 == 149 {
            db.sync().await.unwrap();
            if rng.below(2) == 0 {
                db.close().await.unwrap();
            } else {
                db.abandon();
                release_lease(&*store).await;
            }
            db = Db::open_store(store.clone(), gc_opts()).await.unwrap();
            assert_eq!(contents(&db).await, model, "after reopen at step {step}");
        }
    }
    db.sync().await.unwrap();
    db.compact(&mut |_| {}).await.unwrap();
    check_clean(&db).await;
    db.close().await.unwrap();
    let db = Db::open_store(store, Options::read_only()).await.unwrap();
    assert_eq!(contents(&db).await, model);
}

#[tokio::test]
async fn model_with_gc_and_compaction_on_memory() {
    for seed in [1, 7, 99] {
        let (_m, store) = memory();
        model_with_gc(store, seed).await;
    }
}

#[tokio::test]
async fn model_with_gc_and_compaction_on_local_dir() {
    let dir = tempfile::tempdir().unwrap();
    let store: DynStore = Arc::new(LocalStore::open(dir.path()).unwrap());
    model_with_gc(store, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_directory_is_read_with_few_gets() {
    let s3 = S3Fixture::start().await;
    let store = s3.store("compact");
    let opts = Options {
        segment_bytes: 64 << 10,
        ..gc_opts()
    };
    let db = Db::open_store(store.clone(), opts.clone()).await.unwrap();
    // 2,000 files of 1 KiB in one directory, written interleaved with other
    // directories so that they are scattered over many segments.
    let files = 2000u32;
    let value = |i: u32| format!("{i:06}{}", "f".repeat(1018)).into_bytes();
    for i in 0..files {
        db.put(format!("dir/file{i:05}").as_bytes(), &value(i))
            .await
            .unwrap();
        db.put(format!("other{}/x{i}", i % 7).as_bytes(), &value(i))
            .await
            .unwrap();
    }
    db.sync().await.unwrap();
    db.close().await.unwrap();

    let cold_scan_gets = |opts: Options| {
        let store = store.clone();
        let s3 = &s3;
        async move {
            let db = Db::open_store(store, opts).await.unwrap();
            let before = s3.server.request_counts();
            let rows = db.scan_prefix(b"dir/", usize::MAX, false).await.unwrap();
            assert_eq!(rows.len(), files as usize);
            for (i, (_, v)) in rows.iter().enumerate() {
                assert_eq!(v.as_deref().unwrap(), &value(i as u32)[..]);
            }
            let gets = s3.server.request_counts().since(&before).get;
            db.close().await.unwrap();
            gets
        }
    };
    // Scattered, the files are read a segment window at a time: one GET per
    // segment that holds some of them (there are about 64), not one per file.
    let scattered = cold_scan_gets(opts.clone()).await;
    assert!(
        (30..=files as u64 / 10).contains(&scattered),
        "{scattered} GETs before compaction"
    );

    let db = Db::open_store(store.clone(), opts.clone()).await.unwrap();
    let done = db.compact(&mut |_| {}).await.unwrap();
    assert!(done.keys_moved >= files as u64 * 2, "{done}");
    check_clean(&db).await;
    db.close().await.unwrap();

    let compacted = cold_scan_gets(opts).await;
    assert!(
        compacted * 50 <= files as u64 && compacted * 4 <= scattered,
        "{compacted} GETs for {files} files after compaction ({scattered} before)"
    );
    eprintln!("cold scan of {files} files: {scattered} GETs scattered, {compacted} compacted");
    let ro = cold_scan_gets(Options::read_only()).await;
    assert!(ro * 50 <= files as u64, "read-only: {ro} GETs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_worker_compacts_and_cleans() {
    let (_m, store) = memory();
    let opts = Options {
        gc: GcOptions {
            background: true,
            interval: Duration::from_millis(50),
            grace: Duration::from_millis(100),
            min_age: Duration::ZERO,
            compact_min_bytes: 16 << 10,
            ..GcOptions::default()
        },
        checkpoint_bytes: 32 << 10,
        ..small_opts()
    };
    let db = Db::open_store(store.clone(), opts.clone()).await.unwrap();
    let mut model = BTreeMap::new();
    for round in 0..20u32 {
        for i in 0..50u32 {
            let key = format!("k{:03}", (i * 7 + round) % 120).into_bytes();
            let val = format!("{round}-{i}-{}", "z".repeat(150)).into_bytes();
            db.put(&key, &val).await.unwrap();
            model.insert(key, val);
        }
        db.sync().await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // Give the worker time to catch up.
    let mut st = db.stats().await.unwrap();
    for _ in 0..100 {
        if st.gc.runs_written > 0 && st.gc.objects_deleted > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        st = db.stats().await.unwrap();
    }
    assert!(st.gc.runs_written > 0 && st.gc.objects_deleted > 0, "{st}");
    assert_eq!(contents(&db).await, model);
    db.close().await.unwrap();
    let db = Db::open_store(store, Options::read_only()).await.unwrap();
    assert_eq!(contents(&db).await, model);
    check_clean(&db).await;
}
