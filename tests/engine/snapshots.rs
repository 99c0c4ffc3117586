//! Snapshots: manifest `N` read as of its successor shows exactly the state before
//! that successor; a writer that retains them deletes nothing they need, and GC still
//! reaches a fixed point; without retention they go.

use std::collections::BTreeMap;
use std::time::Duration;

use kvfs::db::{Db, Error, Options};
use kvfs::store::DynStore;

use crate::common::{contents_by_get, gc_opts, memory};

async fn open_snapshot(store: &DynStore, n: u64) -> Result<Db, Error> {
    Db::open_store(
        store.clone(),
        Options {
            snapshot: Some(n),
            ..Options::read_only()
        },
    )
    .await
}

/// Write generations of overwrites, a checkpoint (a new manifest) after each; the
/// model state right before each checkpoint, by the manifest it produced.
async fn history(w: &Db, generations: u32) -> Vec<(u64, BTreeMap<Vec<u8>, Vec<u8>>)> {
    let mut states = Vec::new();
    for g in 0..generations {
        for i in 0..60u32 {
            if (i + g) % 7 == 0 {
                w.delete(format!("k{i:02}").as_bytes()).await.unwrap();
            } else {
                w.put(
                    format!("k{i:02}").as_bytes(),
                    format!("gen {g} key {i}").repeat(8).as_bytes(),
                )
                .await
                .unwrap();
            }
        }
        w.sync().await.unwrap();
        let before = contents_by_get(w).await;
        w.checkpoint().await.unwrap();
        let seq = w.stats().await.unwrap().manifest_seq;
        states.push((seq, before));
    }
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_snapshots_show_their_moment_after_gc() {
    let (_, store) = memory();
    let mut opts = gc_opts();
    opts.gc.retain = Duration::from_secs(3600);
    let w = Db::open_store(store.clone(), opts).await.unwrap();
    let states = history(&w, 6).await;
    // GC cleans and deletes, twice; the second pass has nothing left to do.
    w.gc(&mut |_| {}).await.unwrap();
    let again = w.gc(&mut |_| {}).await.unwrap();
    assert_eq!(again.objects_rewritten, 0, "{again:?}");
    assert_eq!(again.objects_deleted, 0, "{again:?}");
    // Snapshot N (manifest N as of N + 1) is the state right before N + 1.
    let listed = w.snapshots().await.unwrap();
    for pair in states.windows(2) {
        let (n, _) = pair[0];
        let (_, want) = &pair[1];
        assert!(
            listed.iter().any(|s| s.seq == n && s.complete),
            "{n} not listed: {listed:?}"
        );
        let snap = open_snapshot(&store, n).await.unwrap();
        assert_eq!(&contents_by_get(&snap).await, want, "snapshot {n}");
        // A snapshot does not follow.
        assert!(snap.catch_up().await.unwrap().is_empty());
    }
    // The newest manifest is the live state, not a snapshot.
    let newest = w.stats().await.unwrap().manifest_seq;
    assert!(matches!(
        open_snapshot(&store, newest).await,
        Err(Error::NoSnapshot(_))
    ));
    w.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retention_old_snapshots_are_collected() {
    let (_, store) = memory();
    let w = Db::open_store(store.clone(), gc_opts()).await.unwrap();
    let states = history(&w, 4).await;
    w.gc(&mut |_| {}).await.unwrap();
    let (first, _) = states[0];
    match open_snapshot(&store, first).await {
        Err(Error::NoSnapshot(why)) => assert!(why.contains(&first.to_string()), "{why}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("snapshot {first} survived a GC without retention"),
    }
    assert!(w.snapshots().await.unwrap().iter().all(|s| s.seq != first));
    w.close().await.unwrap();
}
