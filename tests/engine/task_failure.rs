//! A background task of a writer that panics or ends unexpectedly poisons the writer:
//! whatever waits for it (a sync, a writer waiting for room, close) fails at once
//! with an error naming the task, and so does every later write and sync.

use std::future::Future;
use std::time::Duration;

use crate::common::{memory, small_opts};
use kvfs::db::{BatchOp, Db, Error, Lifecycle, Options, TaskFault};
use kvfs::store::DynStore;
use kvfs_testkit::gate::GateStore;

/// A guard against a hang only: every waiter here must end by itself, promptly.
const GUARD: Duration = Duration::from_secs(60);

async fn ends<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(GUARD, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} hangs after a background task failed"),
    }
}

/// The error of a writer poisoned by the failure of `task`, whose panic message (or
/// cause) contains `cause`.
fn assert_task_failure(r: Result<(), Error>, task: &str, cause: &str) {
    match r {
        Err(e @ Error::Poisoned(_)) => {
            let text = e.to_string();
            assert!(text.contains(task) && text.contains(cause), "{text}");
            assert_eq!(e.errno(), libc::EIO);
        }
        other => panic!("expected the failure of {task}, got {other:?}"),
    }
}

fn assert_poisoned_figures(db: &Db) {
    assert_eq!(db.lifecycle(), Lifecycle::Poisoned);
    let f = db.figures();
    assert!(f.poisoned);
    assert_eq!(f.task_failures, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_uploader_fails_every_waiter_and_later_writes() {
    let (_, mem) = memory();
    let gate = GateStore::new(mem);
    let store: DynStore = gate.clone();
    let opts = Options {
        max_unflushed_bytes: 16 << 10,
        ..small_opts()
    };
    let db = Db::open_store(store, opts).await.unwrap();
    // Hold every segment upload, and fill unflushed memory.
    gate.puts.close();
    let value = vec![7u8; 1000];
    let mut n = 0u32;
    while db
        .try_write_batch(&[BatchOp::Put(format!("k{n}").into_bytes(), value.clone())])
        .unwrap()
    {
        n += 1;
        assert!(n < 1000, "unflushed memory never filled");
    }
    gate.puts.until_waiting(1).await;
    // A sync waits for the durable point; a writer and a caller of wait_for_room
    // wait for room.
    let syncer = tokio::spawn({
        let db = db.clone();
        async move { db.sync().await }
    });
    let writer = tokio::spawn({
        let db = db.clone();
        let value = value.clone();
        async move { db.put(b"blocked", &value).await }
    });
    let room = tokio::spawn({
        let db = db.clone();
        async move { db.wait_for_room(2000).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(db.lifecycle(), Lifecycle::Open);

    db.inject(TaskFault::UploaderPanics);
    let cause = "injected panic in the uploader loop";
    for (what, waiter) in [("sync", syncer), ("put", writer), ("wait_for_room", room)] {
        let r = ends(what, waiter).await.unwrap();
        assert_task_failure(r, "the uploader", cause);
    }
    assert_task_failure(db.put(b"later", b"x").await, "the uploader", cause);
    assert_task_failure(ends("sync", db.sync()).await, "the uploader", cause);
    assert_poisoned_figures(&db);
    assert_task_failure(ends("close", db.close()).await, "the uploader", cause);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_upload_fails_sync_and_close() {
    let (_, mem) = memory();
    let db = Db::open_store(mem.clone(), small_opts()).await.unwrap();
    db.put(b"before", b"1").await.unwrap();
    db.sync().await.unwrap();
    db.inject(TaskFault::UploadPanics);
    db.put(b"lost", b"2").await.unwrap();
    let task = "the upload of seg/";
    let cause = "injected panic in the upload of seg/";
    assert_task_failure(ends("sync", db.sync()).await, task, cause);
    assert_task_failure(db.put(b"later", b"3").await, task, cause);
    assert_task_failure(
        db.write_batch(&[BatchOp::Delete(b"before".to_vec())]).await,
        task,
        cause,
    );
    // Reads still work from memory.
    assert_eq!(db.get(b"lost").await.unwrap().unwrap(), &b"2"[..]);
    assert_poisoned_figures(&db);
    assert_task_failure(ends("close", db.close()).await, task, cause);

    // What was durable before the failure is there for the next writer.
    let next = Db::open_store(mem, small_opts()).await.unwrap();
    assert_eq!(next.get(b"before").await.unwrap().unwrap(), &b"1"[..]);
    assert_eq!(next.get(b"later").await.unwrap(), None);
    next.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_that_ends_while_open_poisons_the_writer() {
    let (_, mem) = memory();
    let db = Db::open_store(mem, small_opts()).await.unwrap();
    // The uploader ends at its next wake-up, before it can upload anything: a put
    // wakes it (that put may already see the failure), a sync does at the latest.
    db.inject(TaskFault::UploaderReturns);
    if let Err(e) = db.put(b"a", b"1").await {
        assert_task_failure(Err(e), "the uploader", "ended unexpectedly");
    }
    // Nothing uploads any more: the sync must not wait for it.
    let r = ends("sync", db.sync()).await;
    assert_task_failure(r, "the uploader", "ended unexpectedly");
    assert_task_failure(
        db.put(b"b", b"2").await,
        "the uploader",
        "ended unexpectedly",
    );
    assert_poisoned_figures(&db);
    assert_task_failure(
        ends("close", db.close()).await,
        "the uploader",
        "ended unexpectedly",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_close_is_no_task_failure() {
    let (_, mem) = memory();
    let db = Db::open_store(mem, small_opts()).await.unwrap();
    for i in 0..50u32 {
        db.put(format!("k{i}").as_bytes(), &[1u8; 500])
            .await
            .unwrap();
    }
    db.sync().await.unwrap();
    db.close().await.unwrap();
    let f = db.figures();
    assert!(!f.poisoned);
    assert_eq!(f.task_failures, 0);
    assert_eq!(db.lifecycle(), Lifecycle::Closed);
}
