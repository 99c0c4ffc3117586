//! A read-only handle follows a writer: `Db::catch_up` applies new segments and
//! manifests in order, across writer restarts, checkpoints and garbage collection,
//! and reaches a fixed point when the writer is idle.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use kvfs::db::{CatchUp, Db, Options};
use kvfs::store::{DynStore, GetResult, ObjectMeta, ObjectStore, PutMode, StoreError, StoreResult};
use proptest::prelude::*;
use tokio::sync::watch;

use crate::common::{contents_by_get, gc_opts, memory};

/// Catch up until a full cycle of rounds changes nothing; the rounds it took.
async fn settle(f: &Db) -> usize {
    let mut quiet = 0;
    for round in 1..100 {
        let c: CatchUp = f.catch_up().await.unwrap();
        if c.is_empty() && c.manifests == 0 {
            quiet += 1;
            if quiet > kvfs::db::FOLLOW_MANIFEST_EVERY as usize {
                return round;
            }
        } else {
            quiet = 0;
        }
    }
    panic!("the follower never settled");
}

async fn follower(store: &DynStore) -> Db {
    Db::open_store(store.clone(), Options::read_only())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_sees_writes_overwrites_and_deletes() {
    let (_, store) = memory();
    let w = Db::open_store(store.clone(), gc_opts()).await.unwrap();
    w.put(b"a", b"1").await.unwrap();
    w.sync().await.unwrap();
    let f = follower(&store).await;
    assert_eq!(f.get(b"a").await.unwrap().unwrap(), &b"1"[..]);

    w.put(b"b", b"2").await.unwrap();
    w.put(b"a", b"one").await.unwrap();
    w.sync().await.unwrap();
    let c = f.catch_up().await.unwrap();
    assert!(c.segments >= 1, "{c:?}");
    assert!(c.changed.contains(&b"a".to_vec()) && c.changed.contains(&b"b".to_vec()));
    assert_eq!(f.get(b"a").await.unwrap().unwrap(), &b"one"[..]);
    assert_eq!(f.get(b"b").await.unwrap().unwrap(), &b"2"[..]);

    w.delete(b"a").await.unwrap();
    w.sync().await.unwrap();
    f.catch_up().await.unwrap();
    assert_eq!(f.get(b"a").await.unwrap(), None);
    // Idle: rounds change nothing.
    settle(&f).await;
    let c = f.catch_up().await.unwrap();
    assert!(c.is_empty(), "{c:?}");
    w.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_crosses_writer_restarts_and_checkpoints() {
    let (_, store) = memory();
    let w = Db::open_store(store.clone(), gc_opts()).await.unwrap();
    w.put(b"gen", b"1").await.unwrap();
    w.sync().await.unwrap();
    let f = follower(&store).await;
    for generation in 2..6u32 {
        w.put(b"gen", generation.to_string().as_bytes())
            .await
            .unwrap();
        for i in 0..200u32 {
            w.put(
                format!("k{generation}-{i}").as_bytes(),
                &[generation as u8; 300],
            )
            .await
            .unwrap();
        }
        if generation % 2 == 0 {
            w.checkpoint().await.unwrap();
        }
        w.sync().await.unwrap();
        settle(&f).await;
        assert_eq!(
            contents_by_get(&f).await,
            contents_by_get(&w).await,
            "generation {generation}"
        );
    }
    // The writer closes and a new one (a new epoch) carries on.
    w.close().await.unwrap();
    let w = Db::open_store(store.clone(), gc_opts()).await.unwrap();
    w.put(b"gen", b"new writer").await.unwrap();
    w.sync().await.unwrap();
    settle(&f).await;
    assert_eq!(f.get(b"gen").await.unwrap().unwrap(), &b"new writer"[..]);
    assert_eq!(contents_by_get(&f).await, contents_by_get(&w).await);
    w.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reads_right_while_gc_moves_and_deletes_objects() {
    let (_, store) = memory();
    let w = Db::open_store(store.clone(), gc_opts()).await.unwrap();
    for i in 0..400u32 {
        w.put(format!("k{i:03}").as_bytes(), &[1u8; 200])
            .await
            .unwrap();
    }
    w.sync().await.unwrap();
    let f = follower(&store).await;
    // Most keys die; the survivors are moved by GC, whose grace period is 0, so the
    // objects the follower knows are deleted at once.
    for i in 0..400u32 {
        if i % 10 != 0 {
            w.delete(format!("k{i:03}").as_bytes()).await.unwrap();
        }
    }
    w.sync().await.unwrap();
    let done = w.gc(&mut |_| {}).await.unwrap();
    assert!(
        done.objects_rewritten > 0 || done.objects_deleted > 0,
        "{done:?}"
    );
    // No catch-up yet: a read of a moved key finds its object gone, catches up and
    // reads it from its new place.
    assert_eq!(f.get(b"k000").await.unwrap().unwrap(), &[1u8; 200][..]);
    settle(&f).await;
    assert_eq!(contents_by_get(&f).await, contents_by_get(&w).await);
    w.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_fell_far_behind_reloads() {
    let (_, store) = memory();
    let w = Db::open_store(store.clone(), gc_opts()).await.unwrap();
    w.put(b"old", b"1").await.unwrap();
    w.sync().await.unwrap();
    let f = follower(&store).await;
    // Meanwhile: overwrites, checkpoints, a restart and GC remove everything the
    // follower's position names.
    for round in 0..3u32 {
        for i in 0..300u32 {
            w.put(format!("k{i}").as_bytes(), &[round as u8; 200])
                .await
                .unwrap();
        }
        w.checkpoint().await.unwrap();
    }
    w.delete(b"old").await.unwrap();
    w.close().await.unwrap();
    let w = Db::open_store(store.clone(), gc_opts()).await.unwrap();
    w.gc(&mut |_| {}).await.unwrap();
    w.put(b"new", b"2").await.unwrap();
    w.sync().await.unwrap();
    settle(&f).await;
    assert_eq!(f.get(b"old").await.unwrap(), None);
    assert_eq!(contents_by_get(&f).await, contents_by_get(&w).await);
    w.close().await.unwrap();
}

/// Holds whole-object GETs of log segments (what a round of following fetches)
/// while closed, and counts ranged GETs that find no object (what a read of a
/// collected value gets).
#[derive(Debug)]
struct HoldRounds {
    inner: DynStore,
    open: watch::Sender<bool>,
    held: AtomicUsize,
    missed: AtomicUsize,
}

#[async_trait]
impl ObjectStore for HoldRounds {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> StoreResult<String> {
        self.inner.put(key, data, mode).await
    }

    async fn get(&self, key: &str) -> StoreResult<GetResult> {
        if key.starts_with("seg/") {
            let mut rx = self.open.subscribe();
            if !*rx.borrow_and_update() {
                self.held.fetch_add(1, Ordering::SeqCst);
                let _ = rx.wait_for(|open| *open).await;
            }
        }
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        let r = self.inner.get_range(key, range).await;
        if let Err(StoreError::NotFound(_)) = r {
            self.missed.fetch_add(1, Ordering::SeqCst);
        }
        r
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.inner.delete(key).await
    }

    fn describe(&self) -> String {
        format!("holding rounds of {}", self.inner.describe())
    }
}

/// Deletes nothing (a writer's garbage collection then leaves every object).
#[derive(Debug)]
struct KeepAll(DynStore);

#[async_trait]
impl ObjectStore for KeepAll {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> StoreResult<String> {
        self.0.put(key, data, mode).await
    }

    async fn get(&self, key: &str) -> StoreResult<GetResult> {
        self.0.get(key).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        self.0.get_range(key, range).await
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        self.0.list(prefix).await
    }

    async fn delete(&self, _key: &str) -> StoreResult<()> {
        Ok(())
    }

    fn describe(&self) -> String {
        format!("undeleting {}", self.0.describe())
    }
}

/// Yield to the other tasks of this (single-threaded) runtime until `done` holds.
async fn yield_until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..100_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened: {what}");
}

/// Readers that find their objects collected while a round is under way wait for
/// the lock and then share one round between them, rather than each running its
/// own. (A single-threaded runtime, so what a task does between two yields is
/// known: a reader that missed its object is queued for the lock.)
#[tokio::test]
async fn readers_that_find_objects_gone_share_rounds() {
    let (_, mem) = memory();
    let w = Db::open_store(mem.clone(), gc_opts()).await.unwrap();
    for i in 0..400u32 {
        w.put(format!("k{i:03}").as_bytes(), &[1u8; 200])
            .await
            .unwrap();
    }
    w.sync().await.unwrap();
    let hold = Arc::new(HoldRounds {
        inner: mem.clone(),
        open: watch::Sender::new(true),
        held: AtomicUsize::new(0),
        missed: AtomicUsize::new(0),
    });
    let f = Db::open_store(hold.clone(), Options::read_only())
        .await
        .unwrap();
    for i in 0..400u32 {
        if i % 10 != 0 {
            w.delete(format!("k{i:03}").as_bytes()).await.unwrap();
        }
    }
    w.sync().await.unwrap();
    let done = w.gc(&mut |_| {}).await.unwrap();
    assert!(done.objects_deleted > 0, "{done:?}");

    let before = f.follow_rounds();
    hold.open.send_replace(false);
    let read = |i: u32| {
        let f = f.clone();
        tokio::spawn(async move { f.get(format!("k{i:03}").as_bytes()).await })
    };
    // The first reader misses its object and starts a round, held at its first GET.
    let mut readers = vec![read(0)];
    yield_until("a round is held", || hold.held.load(Ordering::SeqCst) == 1).await;
    // Seven more miss theirs and queue for the lock.
    readers.extend((1..8).map(|i| read(i * 10)));
    yield_until("every reader missed its object", || {
        hold.missed.load(Ordering::SeqCst) == 8
    })
    .await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    hold.open.send_replace(true);
    for r in readers {
        assert_eq!(r.await.unwrap().unwrap().unwrap(), &[1u8; 200][..]);
    }
    // The held round started before the others missed, so one more is needed; the
    // rest reuse it.
    let rounds = f.follow_rounds() - before;
    assert!(rounds <= 2, "{rounds} rounds for 8 readers");
    assert_eq!(contents_by_get(&f).await, contents_by_get(&w).await);
    w.close().await.unwrap();
}

/// A run that compaction writes after a follower listed `run/` is read through
/// readahead windows too: about one GET per window, not one per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reads_a_run_written_after_it_listed_runs_by_windows() {
    let (_, store) = memory();
    // The writer deletes nothing, so the follower follows the log through the
    // checkpoints of compaction rather than reloading.
    let kept: DynStore = Arc::new(KeepAll(store.clone()));
    let w = Db::open_store(kept, gc_opts()).await.unwrap();
    let value = |i: u32| format!("{i:06}{}", "v".repeat(194)).into_bytes();
    // Writes to two directories, interleaved so that each is spread over many
    // segments; compaction gathers each into runs.
    let write = |dir: &'static str| {
        let w = w.clone();
        async move {
            for i in 0..1000u32 {
                w.put(format!("{dir}/k{i:05}").as_bytes(), &value(i))
                    .await
                    .unwrap();
                w.put(format!("other/{dir}{i:05}").as_bytes(), &value(i))
                    .await
                    .unwrap();
            }
            w.sync().await.unwrap();
            w.compact(&mut |_| {}).await.unwrap()
        }
    };
    let done = write("a").await;
    assert!(done.keys_moved >= 1000, "{done}");
    // The follower reads from the first run, so it lists `run/`.
    let f = follower(&store).await;
    assert_eq!(f.get(b"a/k00000").await.unwrap().unwrap(), &value(0)[..]);
    // Compaction writes a new run, which the follower learns of by following.
    let done = write("b").await;
    assert!(done.keys_moved >= 1000, "{done}");
    let mut reloaded = false;
    for _ in 0..20 {
        reloaded |= f.catch_up().await.unwrap().reloaded;
    }
    assert!(!reloaded, "the follower reloaded");
    let before = f.metrics().gets;
    for i in 0..1000u32 {
        let got = f.get(format!("b/k{i:05}").as_bytes()).await.unwrap();
        assert_eq!(got.unwrap(), &value(i)[..]);
    }
    let gets = f.metrics().gets - before;
    assert!(gets <= 10, "{gets} GETs for 1000 keys of a run");
    w.close().await.unwrap();
}

#[derive(Clone, Debug)]
enum Step {
    Put(u8, u8),
    Delete(u8),
    Sync,
    Checkpoint,
    Gc,
    Reopen,
    CatchUp,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0u8..40, any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
        3 => (0u8..40).prop_map(Step::Delete),
        2 => Just(Step::Sync),
        1 => Just(Step::Checkpoint),
        1 => Just(Step::Gc),
        1 => Just(Step::Reopen),
        3 => Just(Step::CatchUp),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
    /// Whatever the writer does, repeated rounds bring the follower to the writer's
    /// state and then change nothing (a fixed point).
    #[test]
    fn following_converges_to_the_writers_state(steps in proptest::collection::vec(step(), 1..60)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (_, store) = memory();
            let mut w = Db::open_store(store.clone(), gc_opts()).await.unwrap();
            w.put(b"first", b"x").await.unwrap();
            w.sync().await.unwrap();
            let f = follower(&store).await;
            for s in steps {
                match s {
                    Step::Put(k, v) => w.put(&[b'k', k], &[v; 50]).await.unwrap(),
                    Step::Delete(k) => w.delete(&[b'k', k]).await.unwrap(),
                    Step::Sync => w.sync().await.unwrap(),
                    Step::Checkpoint => w.checkpoint().await.unwrap(),
                    Step::Gc => {
                        w.gc(&mut |_| {}).await.unwrap();
                    }
                    Step::Reopen => {
                        w.close().await.unwrap();
                        w = Db::open_store(store.clone(), gc_opts()).await.unwrap();
                    }
                    Step::CatchUp => {
                        f.catch_up().await.unwrap();
                    }
                }
            }
            w.sync().await.unwrap();
            settle(&f).await;
            assert_eq!(contents_by_get(&f).await, contents_by_get(&w).await);
            w.close().await.unwrap();
        });
    }
}
