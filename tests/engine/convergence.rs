//! A writer stays bounded for months: garbage collection reaches a fixed point, an
//! idle writer renews its lease and nothing else, the index's slot table and the
//! checkpoint follow the live data, `close` leaves nothing running, concurrent syncs
//! share PUTs, and reads from a shared readahead window check lengths.
//!
//! Tests of timing run on tokio's paused clock (the engine reads time only through
//! it), so ten idle minutes take milliseconds and latencies are exact.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use crate::common::{contents, gc_opts, memory, small_opts, Rng, S3Fixture};
use kvfs::db::{Db, GcCounters, GcOptions, Options};
use kvfs::store::DynStore;
use kvfs_testkit::faults::{FaultConfig, FaultControl, FaultyStore};
use kvfs_testkit::recording::{RecordingStore, Request};

/// Nothing rewritten, written or deleted among the data objects.
fn idle(c: &GcCounters) -> bool {
    c.objects_rewritten == 0 && c.runs_written == 0 && c.objects_deleted == 0
}

/// The store of the report: one tiny live key beside deleted and overwritten data,
/// on S3. `kvfs gc` used to rewrite the lone run holding that key forever.
#[tokio::test]
async fn gc_of_a_small_store_ends_and_a_second_gc_does_nothing() {
    let s3 = S3Fixture::start().await;
    let store = s3.store("tiny");
    let db = Db::open_store(store.clone(), gc_opts()).await.unwrap();
    db.put(b"k", b"v").await.unwrap();
    db.put(b"other", b"w").await.unwrap();
    db.delete(b"other").await.unwrap();
    for i in 0..50 {
        db.put(format!("p{i:02}").as_bytes(), &[b'x'; 2000])
            .await
            .unwrap();
    }
    db.sync().await.unwrap();
    db.close().await.unwrap();

    let mut rounds = Vec::new();
    for pass in 0..3 {
        let db = Db::open_store(store.clone(), gc_opts()).await.unwrap();
        let mut lines = Vec::new();
        let c = db.gc(&mut |m| lines.push(m.to_string())).await.unwrap();
        assert_eq!(db.get(b"k").await.unwrap().unwrap().as_ref(), b"v");
        assert_eq!(db.len(), 51);
        let report = db.fsck(&mut |_| {}).await.unwrap();
        assert!(report.is_clean(), "fsck: {:?}", report.issues);
        db.close().await.unwrap();
        if pass > 0 {
            assert!(idle(&c), "gc pass {pass} did work: {c}; {lines:?}");
        }
        rounds.push(c);
    }
    // Compacting, then cleaning, reaches the same kind of fixed point.
    let db = Db::open_store(store.clone(), gc_opts()).await.unwrap();
    db.compact(&mut |_| {}).await.unwrap();
    db.close().await.unwrap();
    for _ in 0..2 {
        let db = Db::open_store(store.clone(), gc_opts()).await.unwrap();
        let c = db.gc(&mut |_| {}).await.unwrap();
        assert!(idle(&c), "gc after compaction did work: {c}");
        db.close().await.unwrap();
    }
}

#[derive(Clone, Debug)]
enum Step {
    Put { key: u8, len: u16 },
    Delete { key: u8 },
    Sync,
    Checkpoint,
    Compact,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..40, prop_oneof![0u16..64, 64u16..3000, Just(9000)])
            .prop_map(|(key, len)| Step::Put { key, len }),
        2 => (0u8..40).prop_map(|key| Step::Delete { key }),
        2 => Just(Step::Sync),
        1 => Just(Step::Checkpoint),
        1 => Just(Step::Compact),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any history of writes, checkpoints and compactions: `gc` ends, keeps every
    /// key, and a second `gc` rewrites nothing and deletes nothing.
    #[test]
    fn gc_reaches_a_fixed_point_on_any_store(steps in proptest::collection::vec(step(), 1..120)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (_, store) = memory();
            let db = Db::open_store(store.clone(), gc_opts()).await.unwrap();
            let mut model = BTreeMap::new();
            for (i, s) in steps.iter().enumerate() {
                match s {
                    Step::Put { key, len } => {
                        let k = format!("key{key:02}").into_bytes();
                        let v = vec![(i % 251) as u8; *len as usize];
                        db.put(&k, &v).await.unwrap();
                        model.insert(k, v);
                    }
                    Step::Delete { key } => {
                        let k = format!("key{key:02}").into_bytes();
                        db.delete(&k).await.unwrap();
                        model.remove(&k);
                    }
                    Step::Sync => db.sync().await.unwrap(),
                    Step::Checkpoint => db.checkpoint().await.unwrap(),
                    Step::Compact => {
                        db.compact(&mut |_| {}).await.unwrap();
                    }
                }
            }
            db.close().await.unwrap();
            for pass in 0..2 {
                let db = Db::open_store(store.clone(), gc_opts()).await.unwrap();
                let c = db.gc(&mut |_| {}).await.unwrap();
                prop_assert_eq!(&contents(&db).await, &model);
                db.close().await.unwrap();
                if pass == 1 {
                    prop_assert!(idle(&c), "second gc did work: {}", c);
                }
            }
            Ok(())
        })?;
    }
}

/// Ten minutes of a writer with nothing to do cost only its lease renewals, after
/// the background cleaner has finished with what the writes left behind.
#[tokio::test(start_paused = true)]
async fn an_idle_writer_puts_nothing_but_its_lease() {
    let (_, mem) = memory();
    let rec = RecordingStore::new(mem);
    let store: DynStore = rec.clone();
    // Production defaults: 5 s between GC rounds, 30 s minimum age, 60 s grace,
    // 20 s lease; small segments so that there is something to clean.
    let opts = Options {
        segment_bytes: 16 << 10,
        ..Options::default()
    };
    let db = Db::open_store(store, opts).await.unwrap();
    let mut rng = Rng(7);
    for i in 0..3000u64 {
        let key = format!("k{:03}", rng.below(300));
        if rng.below(5) == 0 {
            db.delete(key.as_bytes()).await.unwrap();
        } else {
            let len = 50 + rng.below(1000) as usize;
            db.put(key.as_bytes(), &vec![i as u8; len]).await.unwrap();
        }
        if i % 100 == 99 {
            db.sync().await.unwrap();
        }
    }
    db.sync().await.unwrap();
    // A checkpoint moves the log window on, so the old segments become cleanable.
    db.checkpoint().await.unwrap();
    let expected = contents(&db).await;

    // Ten minutes for the cleaner to do what there is to do.
    let written = rec.len();
    tokio::time::sleep(Duration::from_secs(600)).await;
    let settle = rec.since(written);
    let c = db.gc_counters();
    assert!(
        c.objects_rewritten > 0 && c.objects_deleted > 0,
        "the cleaner had work to do: {c}"
    );

    // Ten more: only the lease.
    let idle_from = rec.len();
    tokio::time::sleep(Duration::from_secs(600)).await;
    let quiet = rec.since(idle_from);
    let other: Vec<_> = quiet.iter().filter(|r| r.key != "lease").collect();
    assert!(
        other.is_empty(),
        "an idle writer made requests beyond its lease: {other:?} (settling made {})",
        settle.len()
    );
    let renewals = quiet.iter().filter(|r| r.request == Request::Put).count();
    // Renewed every third of its 20 s time-to-live.
    assert!((80..=95).contains(&renewals), "{renewals} lease renewals");
    assert_eq!(contents(&db).await, expected);
    db.close().await.unwrap();
}

/// After `close` returns, nothing reaches the store, even when close caught the
/// writer mid-upload with a slow store and a checkpoint running in the background.
#[tokio::test(start_paused = true)]
async fn nothing_reaches_the_store_after_close() {
    let (_, mem) = memory();
    let faults = FaultControl::seeded(
        FaultConfig {
            put_latency: Duration::from_millis(40),
            get_latency: Duration::from_millis(20),
            ..FaultConfig::default()
        },
        1,
    );
    let rec = RecordingStore::new(Arc::new(FaultyStore::new(mem, faults)));
    let store: DynStore = rec.clone();
    let opts = Options {
        segment_bytes: 8 << 10,
        checkpoint_bytes: 32 << 10,
        gc: GcOptions {
            interval: Duration::from_millis(50),
            min_age: Duration::ZERO,
            grace: Duration::ZERO,
            ..GcOptions::default()
        },
        ..small_opts()
    };
    let db = Db::open_store(store.clone(), opts.clone()).await.unwrap();
    for i in 0..400u32 {
        db.put(format!("k{:02}", i % 50).as_bytes(), &[i as u8; 700])
            .await
            .unwrap();
    }
    // No sync: close flushes, waits for uploads and checkpoints, stops the cleaner.
    db.close().await.unwrap();
    let at_close = rec.len();
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(rec.since(at_close), vec![], "requests after close returned");

    let db = Db::open_store(store, opts).await.unwrap();
    for i in 350..400u32 {
        let v = db.get(format!("k{:02}", i % 50).as_bytes()).await.unwrap();
        assert_eq!(v.unwrap().as_ref(), &[i as u8; 700][..]);
    }
    db.close().await.unwrap();
}

/// Write and clean 100,000 segments of a store whose live data stays small: the
/// index's slot table and the checkpoint end up sized by the live data, not by the
/// history.
#[tokio::test]
async fn slot_table_and_checkpoint_follow_the_live_data() {
    let (_, store) = memory();
    let db = Db::open_store(store.clone(), gc_opts()).await.unwrap();
    const SEGMENTS: u64 = 100_000;
    for i in 0..SEGMENTS {
        // One sync, one segment.
        db.put(format!("key{:03}", i % 200).as_bytes(), &[i as u8; 40])
            .await
            .unwrap();
        db.sync().await.unwrap();
        if i % 10_000 == 9_999 {
            db.gc(&mut |_| {}).await.unwrap();
        }
    }
    db.gc(&mut |_| {}).await.unwrap();
    db.checkpoint().await.unwrap();
    let stats = db.stats().await.unwrap();
    assert_eq!(stats.keys, 200);
    let live_objects = stats.fill_histogram[1..].iter().sum::<u64>();
    assert!(
        stats.index_slots <= live_objects + 2,
        "{} slots for {live_objects} objects with live data",
        stats.index_slots
    );
    let data = contents(&db).await;
    db.close().await.unwrap();

    // The same live data written once into a new store.
    let (_, fresh) = memory();
    let db = Db::open_store(fresh, gc_opts()).await.unwrap();
    for (k, v) in &data {
        db.put(k, v).await.unwrap();
    }
    db.sync().await.unwrap();
    db.checkpoint().await.unwrap();
    let reference = db.stats().await.unwrap().current_checkpoint_bytes;
    db.close().await.unwrap();
    assert!(
        stats.current_checkpoint_bytes <= reference + 16 * (live_objects + 2),
        "checkpoint of {} bytes against {reference} for the same live data",
        stats.current_checkpoint_bytes
    );
}

/// Sixteen writers that each write and sync, against a store with 25 ms PUTs:
/// their syncs share PUTs (a sync segment waits a few milliseconds for the writers
/// the previous one released), and one writer's sync costs one PUT round trip.
#[tokio::test(start_paused = true)]
async fn concurrent_syncs_share_puts() {
    const PUT: Duration = Duration::from_millis(25);
    async fn run(writers: usize, per_writer: usize) -> (Duration, u64) {
        let (_, mem) = memory();
        let faults = FaultControl::seeded(
            FaultConfig {
                put_latency: PUT,
                ..FaultConfig::default()
            },
            3,
        );
        let rec = RecordingStore::new(Arc::new(FaultyStore::new(mem, faults)));
        let store: DynStore = rec.clone();
        let db = Db::open_store(store, Options::default()).await.unwrap();
        let before = rec.len();
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..per_writer {
                    // Writers do not move in step: each takes its own 0-2 ms to
                    // prepare the next file.
                    let think = ((w * 7919 + i * 104_729) % 2000) as u64;
                    tokio::time::sleep(Duration::from_micros(think)).await;
                    db.put(format!("w{w:02}/f{i:03}").as_bytes(), &[7u8; 1024])
                        .await
                        .unwrap();
                    db.sync().await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = start.elapsed();
        let segment_puts = rec
            .since(before)
            .iter()
            .filter(|r| r.request == Request::Put && r.key.starts_with("seg/"))
            .count() as u64;
        db.close().await.unwrap();
        (elapsed, segment_puts)
    }
    let (one, one_puts) = run(1, 40).await;
    assert_eq!(one_puts, 40, "a lone writer's sync is one PUT");
    let per_sync = one / 40;
    assert!(
        per_sync <= PUT * 3 / 2,
        "a lone writer's sync took {per_sync:?} against {PUT:?} per PUT"
    );
    let (many, many_puts) = run(16, 40).await;
    let files = 16 * 40;
    let puts_per_file = many_puts as f64 / files as f64;
    assert!(
        puts_per_file <= 0.15,
        "{many_puts} PUTs for {files} synced files"
    );
    let speedup = (files as f64 / many.as_secs_f64()) / (40.0 / one.as_secs_f64());
    assert!(speedup >= 12.0, "16 writers ran {speedup:.1}x one writer");
}

/// A scan of a run holding small values beside a large one that starts late in a
/// readahead window and ends past it: the scan's readers share the window, fetched
/// for the first (small, shorter) request, and the large value is then read on its
/// own instead of being sliced past the window's end.
#[tokio::test(start_paused = true)]
async fn a_scan_of_small_and_large_values_in_one_window() {
    let (_, mem) = memory();
    let faults = FaultControl::seeded(
        FaultConfig {
            get_latency: Duration::from_millis(15),
            ..FaultConfig::default()
        },
        5,
    );
    let store: DynStore = Arc::new(FaultyStore::new(mem, faults));
    let opts = gc_opts();
    let window = opts.gc.readahead_bytes;
    let db = Db::open_store(store.clone(), opts.clone()).await.unwrap();
    let mut model = BTreeMap::new();
    // Small values up to about 7/8 of the first window, then one that starts there
    // and ends a quarter window past its end (and past the windows' overlap).
    let small = 2000;
    for i in 0..(window * 7 / 8 / small) {
        let v = vec![i as u8; small];
        db.put(format!("a{i:04}").as_bytes(), &v).await.unwrap();
        model.insert(format!("a{i:04}").into_bytes(), v);
    }
    let big = vec![0xab; window * 3 / 8];
    db.put(b"b-big", &big).await.unwrap();
    model.insert(b"b-big".to_vec(), big);
    for i in 0..20u32 {
        let v = vec![i as u8; 300];
        db.put(format!("c{i:02}").as_bytes(), &v).await.unwrap();
        model.insert(format!("c{i:02}").into_bytes(), v);
    }
    db.compact(&mut |_| {}).await.unwrap();
    db.close().await.unwrap();
    // Start the scan a few keys before the large value, so it is among the first
    // reads in flight.
    let first = window * 7 / 8 / small - 8;
    let start = format!("a{first:04}").into_bytes();
    let want: Vec<(Vec<u8>, Vec<u8>)> = model
        .range(start.clone()..)
        .take(24)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for _ in 0..3 {
        // A new handle has a cold cache: the readers race for the window.
        let db = Db::open_store(store.clone(), opts.clone()).await.unwrap();
        let got: Vec<(Vec<u8>, Vec<u8>)> = db
            .scan(Bound::Included(&start), Bound::Unbounded, 24, false)
            .await
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.unwrap().to_vec()))
            .collect();
        assert_eq!(got, want);
        db.close().await.unwrap();
    }
}

/// Fence segments (48 bytes, never deleted) are written only by a takeover after a
/// crash: writers that close cleanly close their log range in the manifest, so
/// opening a store again and again leaves no object behind.
#[tokio::test]
async fn only_a_crash_leaves_a_fence_segment() {
    let (mem, store) = memory();
    let fences = || async {
        store
            .list("seg/")
            .await
            .unwrap()
            .iter()
            .filter(|o| o.size == kvfs::db::gc::EMPTY_SEGMENT_LEN)
            .count()
    };
    for i in 0..5u8 {
        let db = Db::open_store(store.clone(), gc_opts()).await.unwrap();
        db.put(&[b'k', i], &[i; 100]).await.unwrap();
        db.close().await.unwrap();
        // An open and close that write nothing leave nothing either.
        let db = Db::open_store(store.clone(), gc_opts()).await.unwrap();
        db.close().await.unwrap();
    }
    assert_eq!(fences().await, 0, "clean closes left fences");
    let db = Db::open_store(store.clone(), gc_opts()).await.unwrap();
    assert_eq!(db.len(), 5);
    db.put(b"after", b"crash").await.unwrap();
    db.sync().await.unwrap();
    db.abandon();
    crate::common::release_lease(mem.as_ref()).await;
    let db = Db::open_store(store.clone(), gc_opts()).await.unwrap();
    assert_eq!(db.get(b"after").await.unwrap().unwrap().as_ref(), b"crash");
    assert_eq!(fences().await, 1, "a takeover after a crash fences the log");
    db.close().await.unwrap();
}
