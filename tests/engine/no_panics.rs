//! No input makes the engine's API panic: arbitrary keys (empty, over the limit,
//! any bytes), values, ranges (inverted, empty, unbounded), limits and metadata either
//! work or return an error, and what was accepted reads back as a `BTreeMap` model
//! says.

use std::collections::BTreeMap;
use std::ops::Bound;

use kvfs::db::{BatchOp, Db, MAX_KEY_LEN};
use proptest::prelude::*;

use crate::common::{memory, small_opts};

#[derive(Clone, Debug)]
enum Call {
    Put(Vec<u8>, Vec<u8>),
    PutMeta(Vec<u8>, Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Get(Vec<u8>),
    Scan(Bound<Vec<u8>>, Bound<Vec<u8>>, usize, bool),
    ScanPrefix(Vec<u8>, usize),
    Batch(Vec<(Vec<u8>, Option<Vec<u8>>)>),
    Link(Vec<u8>, Vec<u8>),
    Sync,
    Reopen,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::collection::vec(prop_oneof![Just(0u8), Just(b'a'), Just(b'b'), Just(0xff), any::<u8>()], 0..6),
        1 => Just(Vec::new()),
        1 => (MAX_KEY_LEN - 1..MAX_KEY_LEN + 3).prop_map(|n| vec![b'k'; n]),
    ]
}

fn bound() -> impl Strategy<Value = Bound<Vec<u8>>> {
    prop_oneof![
        Just(Bound::Unbounded),
        key().prop_map(Bound::Included),
        key().prop_map(Bound::Excluded),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => (60_000usize..70_000).prop_map(|n| vec![7u8; n]),
    ]
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        6 => (key(), value()).prop_map(|(k, v)| Call::Put(k, v)),
        1 => (key(), proptest::collection::vec(any::<u8>(), 0..300), value())
            .prop_map(|(k, m, v)| Call::PutMeta(k, m, v)),
        2 => key().prop_map(Call::Delete),
        2 => key().prop_map(Call::Get),
        3 => (bound(), bound(), 0usize..5, any::<bool>())
            .prop_map(|(s, e, l, k)| Call::Scan(s, e, l, k)),
        1 => (key(), 0usize..5).prop_map(|(p, l)| Call::ScanPrefix(p, l)),
        1 => proptest::collection::vec((key(), proptest::option::of(value())), 0..4)
            .prop_map(Call::Batch),
        1 => (key(), key()).prop_map(|(k, s)| Call::Link(k, s)),
        1 => Just(Call::Sync),
        1 => Just(Call::Reopen),
    ]
}

fn valid(k: &[u8]) -> bool {
    !k.is_empty() && k.len() <= MAX_KEY_LEN
}

fn as_bound(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_slice()),
        Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// What the model holds in `[start, end)`, or nothing for a range a `BTreeMap`
/// would refuse (start after end, or equal and excluded).
fn model_range(
    model: &BTreeMap<Vec<u8>, Vec<u8>>,
    start: &Bound<Vec<u8>>,
    end: &Bound<Vec<u8>>,
    limit: usize,
) -> Vec<Vec<u8>> {
    model
        .keys()
        .filter(|k| match start {
            Bound::Included(s) => *k >= s,
            Bound::Excluded(s) => *k > s,
            Bound::Unbounded => true,
        })
        .filter(|k| match end {
            Bound::Included(e) => *k <= e,
            Bound::Excluded(e) => *k < e,
            Bound::Unbounded => true,
        })
        .take(limit)
        .cloned()
        .collect()
}

async fn run(calls: Vec<Call>) {
    let (_, store) = memory();
    let mut db = Db::open_store(store.clone(), small_opts()).await.unwrap();
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for c in calls {
        match c {
            Call::Put(k, v) => {
                let accepted = db.put(&k, &v).await.is_ok();
                assert_eq!(accepted, valid(&k));
                if accepted {
                    model.insert(k, v);
                }
            }
            Call::PutMeta(k, m, v) => {
                if db.put_with_meta(&k, &m, &v).await.is_ok() {
                    model.insert(k, v);
                }
            }
            Call::Delete(k) => {
                if db.delete(&k).await.is_ok() {
                    model.remove(&k);
                }
            }
            Call::Get(k) => match db.get(&k).await {
                Ok(got) => assert_eq!(got.as_deref(), model.get(&k).map(|v| v.as_slice())),
                Err(e) => assert!(!valid(&k), "{e}"),
            },
            Call::Scan(s, e, limit, keys_only) => {
                let rows = db
                    .scan(as_bound(&s), as_bound(&e), limit, keys_only)
                    .await
                    .unwrap();
                let keys: Vec<Vec<u8>> = rows.iter().map(|(k, _)| k.clone()).collect();
                assert_eq!(keys, model_range(&model, &s, &e, limit));
                let info = db.scan_info(as_bound(&s), as_bound(&e), limit);
                assert_eq!(info.len(), keys.len());
            }
            Call::ScanPrefix(p, limit) => {
                let rows = db.scan_prefix(&p, limit, true).await.unwrap();
                let want: Vec<Vec<u8>> = model
                    .keys()
                    .filter(|k| k.starts_with(&p))
                    .take(limit)
                    .cloned()
                    .collect();
                let keys: Vec<Vec<u8>> = rows.into_iter().map(|(k, _)| k).collect();
                assert_eq!(keys, want);
            }
            Call::Batch(ops) => {
                let batch: Vec<BatchOp> = ops
                    .iter()
                    .map(|(k, v)| match v {
                        Some(v) => BatchOp::Put(k.clone(), v.clone()),
                        None => BatchOp::Delete(k.clone()),
                    })
                    .collect();
                if db.write_batch(&batch).await.is_ok() {
                    for (k, v) in ops {
                        match v {
                            Some(v) => model.insert(k, v),
                            None => model.remove(&k),
                        };
                    }
                }
            }
            Call::Link(k, source) => {
                let op = BatchOp::Link {
                    key: k.clone(),
                    source: source.clone(),
                    meta: None,
                };
                let accepted = db.write_batch(&[op]).await.is_ok();
                assert_eq!(accepted, model.contains_key(&source) && valid(&k));
                if let (true, Some(v)) = (accepted, model.get(&source).cloned()) {
                    model.insert(k, v);
                }
            }
            Call::Sync => db.sync().await.unwrap(),
            Call::Reopen => {
                db.close().await.unwrap();
                db = Db::open_store(store.clone(), small_opts()).await.unwrap();
            }
        }
    }
    db.close().await.unwrap();
    let db = Db::open_store(store, kvfs::db::Options::read_only())
        .await
        .unwrap();
    for (k, v) in &model {
        assert_eq!(db.get(k).await.unwrap().as_deref(), Some(v.as_slice()));
    }
    assert_eq!(db.len(), model.len());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn any_calls_work_or_fail_cleanly(calls in proptest::collection::vec(call(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(calls));
    }
}
