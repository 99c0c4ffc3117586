//! Damage is contained: a damaged checkpoint falls back to an older one and the log
//! (or is refused with a pointer to `fsck --repair`), a damaged data object costs only
//! the keys whose values lie in it, GC keeps working, `fsck` reports every problem in
//! one run (and nothing a running writer's GC deleted meanwhile), and `repair` brings
//! the store back to a state `fsck` finds clean, naming the keys lost.

use std::collections::BTreeMap;

use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kvfs::db::{Db, Error, Options};
use kvfs::store::{DynStore, GetResult, ObjectMeta, ObjectStore, PutMode, StoreResult};

use crate::common::{contents, gc_opts, small_opts, S3Fixture};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn value(key: &str, version: u32) -> Vec<u8> {
    format!("VAL-{key}-v{version}-{}", "x".repeat(150)).into_bytes()
}

async fn put(db: &Db, model: &mut Model, key: &str, version: u32) {
    let v = value(key, version);
    db.put(key.as_bytes(), &v).await.unwrap();
    model.insert(key.as_bytes().to_vec(), v);
}

async fn names(store: &DynStore, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = store
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    v.sort();
    v
}

/// Flip one byte in the middle of object `name`.
async fn flip_middle(store: &DynStore, name: &str) {
    let mut data = store.get(name).await.unwrap().data.to_vec();
    let at = data.len() / 2;
    data[at] ^= 0x5a;
    store
        .put(name, Bytes::from(data), PutMode::Overwrite)
        .await
        .unwrap();
}

/// Flip a byte inside the stored value of `key` (its newest version, `version`), in
/// the one object under `prefix` that holds it; returns that object's name.
async fn flip_value(store: &DynStore, prefix: &str, key: &str, version: u32) -> String {
    let needle = format!("VAL-{key}-v{version}-").into_bytes();
    let mut found = None;
    for name in names(store, prefix).await {
        let data = store.get(&name).await.unwrap().data.to_vec();
        if let Some(at) = data.windows(needle.len()).position(|w| w == needle) {
            assert!(found.is_none(), "{key} v{version} is in two objects");
            found = Some((name, data, at));
        }
    }
    let (name, mut data, at) = found.expect("the value is stored");
    data[at + needle.len() + 3] ^= 0x5a;
    store
        .put(&name, Bytes::from(data), PutMode::Overwrite)
        .await
        .unwrap();
    name
}

async fn fsck(db: &Db) -> kvfs::db::FsckReport {
    db.fsck(&mut |_| {}).await.unwrap()
}

fn repair_opts() -> Options {
    Options {
        rebuild_damaged: true,
        ..gc_opts()
    }
}

/// Repair the store with a writer; returns the report.
async fn repair(store: &DynStore) -> kvfs::db::RepairReport {
    let db = Db::open_store(store.clone(), repair_opts()).await.unwrap();
    let report = db.repair(&mut |_| {}).await.unwrap();
    db.close().await.unwrap();
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_checkpoint_falls_back_exactly_and_a_writer_heals_it() {
    let s3 = S3Fixture::start().await;
    let store = s3.store("ckpt-fallback");
    let mut model = Model::new();
    let db = Db::open_store(store.clone(), small_opts()).await.unwrap();
    for i in 0..60 {
        put(&db, &mut model, &format!("k{i:03}"), 1).await;
    }
    db.checkpoint().await.unwrap();
    for i in 0..30 {
        put(&db, &mut model, &format!("k{i:03}"), 2).await;
    }
    for i in 50..60 {
        let k = format!("k{i:03}");
        db.delete(k.as_bytes()).await.unwrap();
        model.remove(k.as_bytes());
    }
    db.checkpoint().await.unwrap();
    for i in 0..10 {
        put(&db, &mut model, &format!("k{i:03}"), 3).await;
    }
    db.close().await.unwrap();

    // One flipped byte in the current checkpoint.
    let victim = names(&store, "ckpt/").await.pop().unwrap();
    flip_middle(&store, &victim).await;

    // Readers fall back exactly to an older checkpoint and the log since.
    let r = Db::open_store(store.clone(), Options::read_only())
        .await
        .unwrap();
    let f = r.recovery_fallback().expect("a fallback was used");
    assert!(f.exact, "{f:?}");
    assert_eq!(f.damaged, victim);
    assert_eq!(contents(&r).await, model);
    // fsck reports the damage, and checks everything else.
    let report = fsck(&r).await;
    assert!(
        report.issues.iter().any(|i| i.object == victim),
        "{:?}",
        report.issues
    );
    assert!(report.lost_keys.is_empty(), "{:?}", report.lost_keys);
    assert_eq!(report.keys_verified, model.len() as u64);
    drop(r);

    // A writer falls back too, and heals the store with a fresh checkpoint.
    let w = Db::open_store(store.clone(), small_opts()).await.unwrap();
    assert!(w.recovery_fallback().is_some_and(|f| f.exact));
    assert_eq!(contents(&w).await, model);
    put(&w, &mut model, "after", 1).await;
    w.close().await.unwrap();
    let r = Db::open_store(store.clone(), Options::read_only())
        .await
        .unwrap();
    assert_eq!(r.recovery_fallback(), None);
    assert_eq!(contents(&r).await, model);
    // Only the old damaged object itself is left to report (GC deletes it later as
    // an old checkpoint; repair deletes it at once).
    let report = fsck(&r).await;
    assert!(
        report.issues.iter().all(|i| i.object == victim),
        "{:?}",
        report.issues
    );
    let rep = repair(&store).await;
    assert!(rep.lost_keys.is_empty());
    assert!(rep.deleted.contains(&victim), "{rep:?}");
    assert!(rep.remaining.is_empty(), "{:?}", rep.remaining);
    let r = Db::open_store(store.clone(), Options::read_only())
        .await
        .unwrap();
    assert!(fsck(&r).await.is_clean());
    assert_eq!(contents(&r).await, model);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_checkpoint_without_a_fallback_is_refused_then_repaired() {
    let s3 = S3Fixture::start().await;
    let store = s3.store("ckpt-none");
    let mut model = Model::new();
    let db = Db::open_store(store.clone(), gc_opts()).await.unwrap();
    for i in 0..60 {
        put(&db, &mut model, &format!("k{i:03}"), 1).await;
    }
    db.checkpoint().await.unwrap();
    for i in 0..40 {
        put(&db, &mut model, &format!("k{i:03}"), 2).await;
    }
    // GC (no grace period) deletes the older manifests and checkpoints and the
    // log they needed.
    db.gc(&mut |_| {}).await.unwrap();
    db.close().await.unwrap();
    let victim = names(&store, "ckpt/").await.pop().unwrap();
    flip_middle(&store, &victim).await;

    for opts in [Options::read_only(), gc_opts()] {
        let e = Db::open_store(store.clone(), opts).await.unwrap_err();
        assert!(matches!(e, Error::Damaged(_)), "{e}");
        let text = e.to_string();
        assert!(text.contains(&victim), "{text}");
        assert!(text.contains("kvfs fsck --repair"), "{text}");
    }
    // fsck still checks everything, from a state rebuilt in memory.
    let r = Db::open_store(
        store.clone(),
        Options {
            rebuild_damaged: true,
            ..Options::read_only()
        },
    )
    .await
    .unwrap();
    let report = fsck(&r).await;
    assert!(report.fallback.as_ref().is_some_and(|f| !f.exact));
    assert!(report.issues.iter().any(|i| i.object == victim));
    drop(r);

    let rep = repair(&store).await;
    assert!(rep.fallback.as_ref().is_some_and(|f| !f.exact), "{rep:?}");
    assert!(rep.checkpoint_written);
    assert!(rep.remaining.is_empty(), "{:?}", rep.remaining);
    let r = Db::open_store(store.clone(), Options::read_only())
        .await
        .unwrap();
    assert_eq!(r.recovery_fallback(), None);
    assert!(fsck(&r).await.is_clean());
    // Every key left is readable, and the keys never overwritten are as written.
    let got = contents(&r).await;
    for i in 40..60 {
        let k = format!("k{i:03}");
        assert_eq!(got.get(k.as_bytes()), model.get(k.as_bytes()), "{k}");
    }
    drop(r);
    let again = repair(&store).await;
    assert!(again.was_clean(), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_segment_and_run_cost_only_their_keys() {
    let s3 = S3Fixture::start().await;
    let store = s3.store("data-damage");
    let mut model = Model::new();
    let db = Db::open_store(store.clone(), gc_opts()).await.unwrap();
    for i in 0..100 {
        put(&db, &mut model, &format!("a{i:03}"), 1).await;
    }
    // The a-keys move to sorted runs.
    db.compact(&mut |_| {}).await.unwrap();
    for i in 0..100 {
        put(&db, &mut model, &format!("b{i:03}"), 1).await;
    }
    db.sync().await.unwrap();
    // All b-keys but one are overwritten: the segments of the first versions are
    // mostly dead, so GC wants to clean them.
    for i in (0..100).filter(|i| *i != 5) {
        put(&db, &mut model, &format!("b{i:03}"), 2).await;
    }
    db.close().await.unwrap();

    let run = flip_value(&store, "run/", "a042", 1).await;
    let seg = flip_value(&store, "seg/", "b005", 1).await;
    let lost: Vec<Vec<u8>> = vec![b"a042".to_vec(), b"b005".to_vec()];

    // Only those two keys are unreadable.
    let r = Db::open_store(store.clone(), Options::read_only())
        .await
        .unwrap();
    for (k, v) in &model {
        match r.get(k).await {
            Ok(got) if !lost.contains(k) => assert_eq!(got.as_deref(), Some(&v[..])),
            Err(Error::Corrupt { .. }) if lost.contains(k) => {}
            other => panic!("{}: {other:?}", String::from_utf8_lossy(k)),
        }
    }
    // fsck reports both objects and both keys, in one run.
    let report = fsck(&r).await;
    assert!(report.issues.iter().any(|i| i.object == run));
    assert!(report.issues.iter().any(|i| i.object == seg));
    let lost_found: Vec<Vec<u8>> = report.lost_keys.iter().map(|k| k.key.clone()).collect();
    assert_eq!(lost_found, lost);
    drop(r);

    // GC keeps working, round after round.
    let w = Db::open_store(store.clone(), gc_opts()).await.unwrap();
    w.gc(&mut |_| {}).await.unwrap();
    w.gc(&mut |_| {}).await.unwrap();
    w.compact(&mut |_| {}).await.unwrap();
    w.close().await.unwrap();
    assert!(names(&store, "").await.contains(&seg), "kept: keys need it");

    let rep = repair(&store).await;
    let lost_repaired: Vec<Vec<u8>> = rep.lost_keys.iter().map(|k| k.key.clone()).collect();
    assert_eq!(lost_repaired, lost);
    assert!(rep.remaining.is_empty(), "{:?}", rep.remaining);
    for k in &lost {
        model.remove(k);
    }
    let r = Db::open_store(store.clone(), Options::read_only())
        .await
        .unwrap();
    assert!(fsck(&r).await.is_clean());
    assert_eq!(contents(&r).await, model);
    drop(r);
    assert!(repair(&store).await.was_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_data_object_is_reported_and_repaired() {
    let s3 = S3Fixture::start().await;
    let store = s3.store("missing");
    let mut model = Model::new();
    let mut opts = gc_opts();
    opts.gc.run_bytes = 64 << 10;
    let db = Db::open_store(store.clone(), opts).await.unwrap();
    for i in 0..500 {
        put(&db, &mut model, &format!("a{i:03}"), 1).await;
    }
    db.compact(&mut |_| {}).await.unwrap();
    db.close().await.unwrap();
    let runs = names(&store, "run/").await;
    assert!(runs.len() > 1, "{runs:?}");
    let victim = runs[0].clone();
    let data = store.get(&victim).await.unwrap().data;
    let in_victim: Vec<Vec<u8>> = model
        .keys()
        .filter(|k| {
            let needle = format!("VAL-{}-v1-", String::from_utf8_lossy(k)).into_bytes();
            data.windows(needle.len()).any(|w| w == needle)
        })
        .cloned()
        .collect();
    assert!(!in_victim.is_empty());
    store.delete(&victim).await.unwrap();

    let r = Db::open_store(store.clone(), Options::read_only())
        .await
        .unwrap();
    let report = fsck(&r).await;
    assert!(report
        .issues
        .iter()
        .any(|i| i.object == victim && i.problem.contains("missing")));
    let lost: Vec<Vec<u8>> = report.lost_keys.iter().map(|k| k.key.clone()).collect();
    assert_eq!(lost, in_victim);
    drop(r);
    let w = Db::open_store(store.clone(), gc_opts()).await.unwrap();
    w.gc(&mut |_| {}).await.unwrap();
    w.close().await.unwrap();

    let rep = repair(&store).await;
    let lost: Vec<Vec<u8>> = rep.lost_keys.iter().map(|k| k.key.clone()).collect();
    assert_eq!(lost, in_victim);
    assert!(rep.remaining.is_empty(), "{:?}", rep.remaining);
    for k in &in_victim {
        model.remove(k);
    }
    let r = Db::open_store(store.clone(), Options::read_only())
        .await
        .unwrap();
    assert!(fsck(&r).await.is_clean());
    assert_eq!(contents(&r).await, model);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_racing_a_writers_gc_reports_no_false_problem() {
    let s3 = S3Fixture::start().await;
    let store = s3.store("race");
    let mut model = Model::new();
    let w = Db::open_store(store.clone(), gc_opts()).await.unwrap();
    for i in 0..100 {
        put(&w, &mut model, &format!("k{i:03}"), 1).await;
    }
    w.sync().await.unwrap();
    // The reader's state points into the log segments ...
    let r = Db::open_store(store.clone(), Options::read_only())
        .await
        .unwrap();
    // ... which the writer's GC then moves into runs and deletes.
    let before = names(&store, "seg/").await;
    w.compact(&mut |_| {}).await.unwrap();
    let after = names(&store, "seg/").await;
    assert!(
        before.iter().any(|s| !after.contains(s)),
        "GC deleted segments"
    );
    let report = fsck(&r).await;
    assert!(report.is_clean(), "{:?}", report.issues);
    assert!(report.vanished > 0, "{report:?}");
    // A missing object the newest state needs is still a problem.
    let run = names(&store, "run/").await[0].clone();
    store.delete(&run).await.unwrap();
    let report = fsck(&r).await;
    assert!(
        report.issues.iter().any(|i| i.object == run),
        "{:?}",
        report.issues
    );
    w.close().await.unwrap();
}

/// A store where objects named in `vanish` disappear the moment they are read, as
/// when a running writer's GC deletes an object between fsck's listing and its read.
#[derive(Debug)]
struct VanishingStore {
    inner: DynStore,
    vanish: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl ObjectStore for VanishingStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> StoreResult<String> {
        self.inner.put(key, data, mode).await
    }
    async fn get(&self, key: &str) -> StoreResult<GetResult> {
        let hit = {
            let mut v = self.vanish.lock().unwrap();
            let hit = v.iter().any(|k| k == key);
            v.retain(|k| k != key);
            hit
        };
        if hit {
            self.inner.delete(key).await?;
        }
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        self.inner.get_range(key, range).await
    }
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_ignores_an_object_deleted_between_listing_and_reading() {
    let s3 = S3Fixture::start().await;
    let store = s3.store("vanish");
    let mut model = Model::new();
    let w = Db::open_store(store.clone(), small_opts()).await.unwrap();
    for i in 0..100 {
        put(&w, &mut model, &format!("k{i:03}"), 1).await;
    }
    w.checkpoint().await.unwrap();
    put(&w, &mut model, "later", 1).await;
    w.checkpoint().await.unwrap();
    // The oldest manifest is no longer needed: a writer's GC may delete it at any
    // moment, here between fsck's listing and its read.
    let old = names(&store, "manifest/").await[0].clone();
    let vanishing = Arc::new(VanishingStore {
        inner: store.clone(),
        vanish: Mutex::new(vec![old.clone()]),
    });
    let r = Db::open_store(vanishing.clone(), Options::read_only())
        .await
        .unwrap();
    assert_eq!(contents(&r).await, model);
    let report = fsck(&r).await;
    assert!(report.is_clean(), "{:?}", report.issues);
    assert_eq!(report.vanished, 1);
    assert!(!names(&store, "manifest/").await.contains(&old));
    // An object the state needs that vanishes is a problem.
    let seg = names(&store, "seg/").await[0].clone();
    vanishing.vanish.lock().unwrap().push(seg.clone());
    let report = fsck(&r).await;
    assert!(
        report
            .issues
            .iter()
            .any(|i| i.object == seg && i.problem.contains("missing")),
        "{:?}",
        report.issues
    );
    assert!(!report.lost_keys.is_empty());
    w.close().await.unwrap();
}
