//! Encrypted and compressed stores: they round-trip on every backend (through
//! compaction, GC, checkpoints and reopening, with values read in ranges from runs),
//! no plaintext reaches a stored byte, a missing or wrong key is refused at once, a
//! changed byte or an object stored under another name is an error (and `fsck` finds
//! it), and plain and compressed objects live in one store.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kvfs::db::{Db, Error, Options};
use kvfs::format::envelope::Compression;
use kvfs::store::encoding::{EncodingError, EncryptionKey};
use kvfs::store::local::LocalStore;
use kvfs::store::{DynStore, PutMode, StoreError};

use crate::common::{contents_by_get, gc_opts, memory, S3Fixture};

const MARKER: &[u8] = b"PLAINTEXT-MARKER-7f3a";

fn key(n: u8) -> EncryptionKey {
    EncryptionKey::from_bytes(&[n; 32])
}

fn with(
    mut opts: Options,
    key: Option<EncryptionKey>,
    compression: Option<Compression>,
) -> Options {
    opts.encoding.key = key;
    opts.encoding.compression = compression;
    opts
}

/// The error of an open that must fail.
fn refused(opened: Result<Db, Error>) -> Error {
    match opened {
        Ok(_) => panic!("the store was opened"),
        Err(e) => e,
    }
}

fn read_only(key: Option<EncryptionKey>) -> Options {
    with(Options::read_only(), key, None)
}

/// Small values and a few large ones, all carrying the marker.
fn workload() -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut model = BTreeMap::new();
    for i in 0..400u32 {
        let mut v = format!("value {i} ")
            .repeat(1 + i as usize % 40)
            .into_bytes();
        v.extend_from_slice(MARKER);
        model.insert(format!("dir{}/file{i:04}", i % 7).into_bytes(), v);
    }
    for i in 0..3u32 {
        let mut v = MARKER.repeat(12_000);
        v.extend_from_slice(format!("large {i}").as_bytes());
        model.insert(format!("large/{i}").into_bytes(), v);
    }
    model
}

/// Write the workload with overwrites and deletes, compact, collect, close.
async fn fill(store: &DynStore, opts: Options) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let db = Db::open_store(store.clone(), opts).await.unwrap();
    let mut model = workload();
    for (k, v) in &model {
        db.put(k, b"an older value").await.unwrap();
        db.put(k, v).await.unwrap();
    }
    db.sync().await.unwrap();
    db.compact(&mut |_| {}).await.unwrap();
    for i in (0..400u32).step_by(3) {
        let k = format!("dir{}/file{i:04}", i % 7).into_bytes();
        db.delete(&k).await.unwrap();
        model.remove(&k);
    }
    db.sync().await.unwrap();
    db.checkpoint().await.unwrap();
    db.gc(&mut |_| {}).await.unwrap();
    db.close().await.unwrap();
    model
}

/// Every stored byte of every object, as the backend holds it.
async fn stored_objects(raw: &DynStore) -> Vec<(String, Bytes)> {
    let mut out = Vec::new();
    for o in raw.list("").await.unwrap() {
        out.push((o.key.clone(), raw.get(&o.key).await.unwrap().data));
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn round_trip(raw: DynStore, encrypt: bool, compression: Option<Compression>) {
    let k = encrypt.then(|| key(1));
    let model = fill(&raw, with(gc_opts(), k.clone(), compression)).await;
    // A fresh reader knows no layout: it reads runs in ranges after probing them.
    let reader = Db::open_store(raw.clone(), read_only(k.clone()))
        .await
        .unwrap();
    assert_eq!(contents_by_get(&reader).await, model);
    let stats = reader.stats().await.unwrap();
    assert_eq!(stats.encoding.encrypted, encrypt);
    assert!(stats.runs > 0, "{stats:?}");
    let report = reader.fsck(&mut |_| {}).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.issues);
    reader.close().await.unwrap();
    let objects = stored_objects(&raw).await;
    let stored: u64 = objects.iter().map(|(_, d)| d.len() as u64).sum();
    if encrypt {
        for (name, data) in &objects {
            assert!(!contains(data, MARKER), "plaintext in {name}");
            assert!(!contains(data, b"dir3/file"), "a key in {name}");
        }
    }
    if compression == Some(Compression::Zstd) {
        assert!(
            stored < stats.plain_bytes / 3,
            "{stored} stored for {} plain",
            stats.plain_bytes
        );
    }
    // A writer again, with the recorded compression; then read once more.
    let db = Db::open_store(raw.clone(), with(gc_opts(), k.clone(), None))
        .await
        .unwrap();
    db.put(b"after/reopen", MARKER).await.unwrap();
    db.close().await.unwrap();
    let reader = Db::open_store(raw.clone(), read_only(k)).await.unwrap();
    let mut want = model;
    want.insert(b"after/reopen".to_vec(), MARKER.to_vec());
    assert_eq!(contents_by_get(&reader).await, want);
}

const MODES: [(bool, Option<Compression>); 3] = [
    (true, None),
    (false, Some(Compression::Zstd)),
    (true, Some(Compression::Zstd)),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_in_memory() {
    for (encrypt, compression) in MODES {
        round_trip(memory().1, encrypt, compression).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_in_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (encrypt, compression)) in MODES.into_iter().enumerate() {
        let store: DynStore = Arc::new(LocalStore::open(dir.path().join(i.to_string())).unwrap());
        round_trip(store, encrypt, compression).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_on_s3() {
    let s3 = S3Fixture::start().await;
    for (i, (encrypt, compression)) in MODES.into_iter().enumerate() {
        round_trip(s3.store(&format!("enc{i}")), encrypt, compression).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_key_is_refused_at_once() {
    let (_, raw) = memory();
    fill(&raw, with(gc_opts(), Some(key(1)), None)).await;
    let before = raw.list("").await.unwrap();
    for (opts, what) in [
        (read_only(None), "missing"),
        (with(gc_opts(), None, None), "missing"),
        (with(gc_opts(), None, Some(Compression::Zstd)), "missing"),
        (read_only(Some(key(2))), "wrong"),
        (with(gc_opts(), Some(key(2)), None), "wrong"),
    ] {
        let err = refused(Db::open_store(raw.clone(), opts).await);
        let text = err.to_string();
        match what {
            "missing" => assert!(
                matches!(err, Error::Encoding(EncodingError::MissingKey { .. }))
                    && text.contains("--encryption-key-file"),
                "{text}"
            ),
            _ => assert!(
                matches!(err, Error::Encoding(EncodingError::WrongKey { .. })),
                "{text}"
            ),
        }
    }
    // Refusals changed nothing (no lease taken, nothing written).
    assert_eq!(raw.list("").await.unwrap(), before);
    // A key for a plain store is refused too: a store is encrypted from its creation.
    let (_, plain) = memory();
    fill(&plain, gc_opts()).await;
    let err = refused(Db::open_store(plain.clone(), with(gc_opts(), Some(key(1)), None)).await);
    assert!(
        matches!(err, Error::Encoding(EncodingError::NotEncrypted { .. })),
        "{err}"
    );
}

/// Replace an object's stored bytes behind the store's back.
async fn replace(raw: &DynStore, name: &str, data: Bytes) {
    raw.put(name, data, PutMode::Overwrite).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_byte_or_a_swapped_object_is_an_error_and_fsck_finds_it() {
    for compression in [None, Some(Compression::Zstd)] {
        let (_, raw) = memory();
        let model = fill(&raw, with(gc_opts(), Some(key(1)), compression)).await;
        let runs: Vec<String> = raw
            .list("run/")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert!(!runs.is_empty());
        let victim = runs[0].clone();
        let original = raw.get(&victim).await.unwrap().data;

        // One flipped bit in the middle of a chunk.
        let mut bad = original.to_vec();
        let at = bad.len() - 100;
        bad[at] ^= 0x10;
        replace(&raw, &victim, Bytes::from(bad)).await;
        let db = Db::open_store(raw.clone(), read_only(Some(key(1))))
            .await
            .unwrap();
        // The byte is near the end of the run: read from the last key back until a
        // read fails (every read before must be right).
        let mut failed = false;
        for k in model.keys().rev() {
            match db.get(k).await {
                Ok(v) => assert_eq!(v.as_deref(), model.get(k).map(|v| &v[..])),
                Err(e) => {
                    assert!(e.to_string().contains(&victim), "{e}");
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "no read noticed the changed byte");
        let report = db.fsck(&mut |_| {}).await.unwrap();
        assert!(
            report.issues.iter().any(|i| i.object == victim),
            "{:?}",
            report.issues
        );
        db.close().await.unwrap();

        // Another object's bytes stored under this name (both are valid envelopes).
        let mut other = None;
        for (name, data) in stored_objects(&raw).await {
            if name != victim && data.starts_with(b"KVFSENV1") {
                other = Some(data);
            }
        }
        replace(&raw, &victim, other.expect("another envelope")).await;
        let db = Db::open_store(raw.clone(), read_only(Some(key(1))))
            .await
            .unwrap();
        let report = db.fsck(&mut |_| {}).await.unwrap();
        let issue = report
            .issues
            .iter()
            .find(|i| i.object == victim)
            .unwrap_or_else(|| panic!("{:?}", report.issues));
        assert!(issue.problem.contains("authentication"), "{issue:?}");
        db.close().await.unwrap();
        replace(&raw, &victim, original).await;
        let db = Db::open_store(raw.clone(), read_only(Some(key(1))))
            .await
            .unwrap();
        assert_eq!(contents_by_get(&db).await, model);
        assert!(db.fsck(&mut |_| {}).await.unwrap().is_clean());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_compressed_objects_share_a_store() {
    let (_, raw) = memory();
    // Plain first; then compressed writes into the same store; then plain again.
    let mut model = fill(&raw, gc_opts()).await;
    assert!(
        raw.get("encoding").await.is_err(),
        "a plain store has no record"
    );
    let db = Db::open_store(raw.clone(), with(gc_opts(), None, Some(Compression::Zstd)))
        .await
        .unwrap();
    for i in 0..200u32 {
        let k = format!("zstd/{i}").into_bytes();
        let v = format!("compressible {i} ").repeat(200).into_bytes();
        db.put(&k, &v).await.unwrap();
        model.insert(k, v);
    }
    db.close().await.unwrap();
    let kinds = |objects: &[(String, Bytes)]| {
        let env = objects
            .iter()
            .filter(|(_, d)| d.starts_with(b"KVFSENV1"))
            .count();
        (env, objects.len() - env)
    };
    let (envelopes, plain) = kinds(&stored_objects(&raw).await);
    assert!(
        envelopes > 0 && plain > 2,
        "{envelopes} envelopes, {plain} plain"
    );
    // The choice was recorded: a writer without --compression keeps compressing.
    let db = Db::open_store(raw.clone(), gc_opts()).await.unwrap();
    assert_eq!(
        db.stats().await.unwrap().encoding.compression,
        Compression::Zstd
    );
    db.put(b"later", &b"x".repeat(100_000)).await.unwrap();
    model.insert(b"later".to_vec(), b"x".repeat(100_000));
    db.close().await.unwrap();
    // And back to none: new objects are plain again, old ones stay readable.
    let db = Db::open_store(raw.clone(), with(gc_opts(), None, Some(Compression::None)))
        .await
        .unwrap();
    db.put(b"plain/again", b"v").await.unwrap();
    model.insert(b"plain/again".to_vec(), b"v".to_vec());
    db.compact(&mut |_| {}).await.unwrap();
    db.close().await.unwrap();
    let reader = Db::open_store(raw.clone(), read_only(None)).await.unwrap();
    assert_eq!(contents_by_get(&reader).await, model);
    assert!(reader.fsck(&mut |_| {}).await.unwrap().is_clean());
    assert_eq!(
        reader.stats().await.unwrap().encoding.compression,
        Compression::None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_for_an_empty_prefix_with_other_objects_creates_nothing() {
    let (_, raw) = memory();
    raw.put(
        "notes.txt",
        Bytes::from_static(b"hello"),
        PutMode::CreateNew,
    )
    .await
    .unwrap();
    let err = refused(Db::open_store(raw.clone(), with(gc_opts(), Some(key(1)), None)).await);
    assert!(matches!(err, Error::NotAStore { .. }), "{err}");
    assert!(matches!(
        raw.get("encoding").await,
        Err(StoreError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_an_encrypted_compressed_store_keeps_up_through_gc() {
    let (_, raw) = memory();
    let k = Some(key(4));
    let w = Db::open_store(
        raw.clone(),
        with(gc_opts(), k.clone(), Some(Compression::Zstd)),
    )
    .await
    .unwrap();
    w.put(b"first", b"1").await.unwrap();
    w.sync().await.unwrap();
    let f = Db::open_store(raw.clone(), read_only(k)).await.unwrap();
    for round in 0..4u32 {
        for i in 0..300u32 {
            let v = format!("round {round} value {i} ").repeat(20);
            w.put(format!("k{i:03}").as_bytes(), v.as_bytes())
                .await
                .unwrap();
        }
        w.sync().await.unwrap();
        w.compact(&mut |_| {}).await.unwrap();
        w.gc(&mut |_| {}).await.unwrap();
        for _ in 0..2 * kvfs::db::FOLLOW_MANIFEST_EVERY {
            f.catch_up().await.unwrap();
        }
        assert_eq!(
            contents_by_get(&f).await,
            contents_by_get(&w).await,
            "round {round}"
        );
    }
    w.close().await.unwrap();
}
