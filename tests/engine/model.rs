//! Model-based tests: random operation sequences applied to the engine and to a
//! `BTreeMap`, compared after every step and across reopen (clean and abandoned).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::common::{contents, memory, release_lease, small_opts, Rng};
use kvfs::db::{BatchOp, Db};
use kvfs::store::local::LocalStore;
use kvfs::store::DynStore;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn key(rng: &mut Rng) -> Vec<u8> {
    let dir = rng.below(4);
    let n = rng.below(60);
    format!("d{dir}/k{n:03}").into_bytes()
}

fn value(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(10) {
        0 => 0,
        1 => 2000 + rng.below(6000) as usize,
        _ => 1 + rng.below(200) as usize,
    };
    let b = rng.below(256) as u8;
    (0..len).map(|i| b.wrapping_add(i as u8)).collect()
}

/// Run `steps` random operations, reopening now and then. `synced` is the model as
/// of the last sync: after an abandoned (crashed) handle, the store must equal it.
async fn run_model(store: DynStore, seed: u64, steps: usize) {
    let mut rng = Rng(seed | 1);
    let mut model = Model::new();
    let mut synced = Model::new();
    let mut db = Db::open_store(store.clone(), small_opts()).await.unwrap();
    for step in 0..steps {
        match rng.below(100) {
            0..=44 => {
                let (k, v) = (key(&mut rng), value(&mut rng));
                db.put(&k, &v).await.unwrap();
                model.insert(k, v);
            }
            45..=59 => {
                let k = key(&mut rng);
                db.delete(&k).await.unwrap();
                model.remove(&k);
            }
            60..=63 => {
                // Rename: the destination takes the source's value without a copy.
                let (from, to) = (key(&mut rng), key(&mut rng));
                let ops = vec![
                    BatchOp::Link {
                        key: to.clone(),
                        source: from.clone(),
                        meta: Some(b"renamed".to_vec()),
                    },
                    BatchOp::Delete(from.clone()),
                ];
                let r = db.write_batch(&ops).await;
                match model.get(&from).cloned() {
                    Some(v) if from != to => {
                        r.unwrap();
                        model.remove(&from);
                        model.insert(to, v);
                    }
                    Some(_) => {
                        r.unwrap();
                        model.remove(&from);
                    }
                    None => assert!(r.is_err(), "step {step}: link from a missing key"),
                }
            }
            64..=69 => {
                let mut ops = Vec::new();
                for _ in 0..1 + rng.below(6) {
                    let k = key(&mut rng);
                    if rng.below(3) == 0 {
                        model.remove(&k);
                        ops.push(BatchOp::Delete(k));
                    } else {
                        let v = value(&mut rng);
                        model.insert(k.clone(), v.clone());
                        ops.push(BatchOp::Put(k, v));
                    }
                }
                db.write_batch(&ops).await.unwrap();
            }
            70..=79 => {
                let k = key(&mut rng);
                let got = db.get(&k).await.unwrap().map(|b| b.to_vec());
                assert_eq!(got, model.get(&k).cloned(), "step {step}: get {k:?}");
            }
            80..=84 => {
                db.sync().await.unwrap();
                synced = model.clone();
            }
            85..=87 => {
                let p = format!("d{}/", rng.below(4)).into_bytes();
                let got: Vec<Vec<u8>> = db
                    .scan_prefix(&p, usize::MAX, true)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| r.0)
                    .collect();
                let want: Vec<Vec<u8>> = model
                    .keys()
                    .filter(|k| k.starts_with(&p))
                    .cloned()
                    .collect();
                assert_eq!(got, want, "step {step}: scan prefix");
            }
            88..=91 => {
                db.close().await.unwrap();
                db = Db::open_store(store.clone(), small_opts()).await.unwrap();
                synced = model.clone();
                assert_eq!(contents(&db).await, model, "step {step}: after reopen");
            }
            92..=94 => {
                // Crash: everything synced survives; nothing unsynced is required.
                db.sync().await.unwrap();
                synced = model.clone();
                db.abandon();
                release_lease(&*store).await;
                db = Db::open_store(store.clone(), small_opts()).await.unwrap();
                assert_eq!(contents(&db).await, synced, "step {step}: after crash");
            }
            _ => {
                db.checkpoint().await.unwrap();
                synced = model.clone();
            }
        }
    }
    assert_eq!(contents(&db).await, model);
    let _ = synced;
    db.close().await.unwrap();
    let db = Db::open_store(store, kvfs::db::Options::read_only())
        .await
        .unwrap();
    assert_eq!(contents(&db).await, model);
    let report = db.fsck(&mut |_| {}).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.issues);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_memory_many_seeds() {
    for seed in 1..=12u64 {
        run_model(memory().1, seed * 7919, 400).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_local_directory() {
    for seed in [3u64, 17] {
        let dir = tempfile::tempdir().unwrap();
        let store: DynStore = Arc::new(LocalStore::open(dir.path()).unwrap());
        run_model(store, seed, 300).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_s3_server() {
    let s3 = crate::common::S3Fixture::start().await;
    run_model(s3.store("model/a"), 5, 250).await;
    run_model(s3.store("model/b"), 11, 150).await;
}
