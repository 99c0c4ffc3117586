//! Crash tests with real processes and SIGKILL.
//!
//! The test binary re-runs itself as the writer process: [`crash_child`] does nothing
//! unless the environment variable [`CHILD_ENV`] is set, in which case it opens the
//! store as the writer and runs the test kit's deterministic workload
//! ([`kvfs_testkit::crash_workload`]) until it is killed: batches of puts and deletes
//! that also set the marker key `__batch`, and a loop of `sync()` that prints
//! `KVFS-ACK b` after each successful sync, where `b` is the last batch whose
//! `write_batch` returned before the sync began.
//!
//! The parent kills the child with SIGKILL at a random moment (before it even opened
//! the store, before any ACK, or after some ACKs), reaps it, then reopens the store
//! read-only and as a writer and checks: the recovered `__batch = m` is at least the
//! last acknowledged batch; the whole key set equals the model after batches `1..=m`;
//! fsck is clean. The next trial runs on the same store, so every writer after the
//! first takes over the epoch of a killed one.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{S3Fixture, BUCKET};
use kvfs::db::{BatchOp, Db, Options};
use kvfs::store::s3::S3Store;
use kvfs::store::DynStore;
use kvfs_testkit::crash_workload::{
    batch_ops, die, parse_batch, parse_event, run_writer, Event, Model, WriterLoops, WriterProcess,
    KEY_SPACE, MARKER,
};
use kvfs_testkit::server::{FaultConfig, ServerOptions, TestS3Server};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Set in the child's environment to the JSON of a [`ChildSpec`].
const CHILD_ENV: &str = "KVFS_CRASH_CHILD";
/// Optional base seed for the parent's choices (workload seeds and kill moments).
const SEED_ENV: &str = "KVFS_CRASH_SEED";
/// Upper bound on how long the parent waits for any one line from a child; a guard
/// against hangs, never reached in a passing run.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
/// A child that somehow outlives its parent exits on its own after this long.
const CHILD_MAX_LIFETIME: Duration = Duration::from_secs(60);

/// What the child process runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ChildSpec {
    /// Store URL (a local path or `s3://…`; S3 settings come from the environment).
    url: String,
    seed: u64,
    segment_bytes: usize,
    flush_interval_ms: u64,
    max_inflight_uploads: usize,
    max_unflushed_bytes: usize,
    checkpoint_bytes: u64,
    /// Also run `checkpoint()` in a loop.
    checkpoint_loop: bool,
    /// Also run compaction and GC (no grace period) in a loop.
    gc_loop: bool,
    /// Encrypt with this key and compress with zstd (see [`Target::encrypted`]).
    #[serde(default)]
    key: Option<[u8; 32]>,
}

// ---------------------------------------------------------------------------------
// The child.

/// The full name of [`crash_child`] in this test binary (its module path without the
/// binary's name), the filter that runs only it.
fn child_test_name() -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::crash_child")
}

/// The writer process. A no-op unless started by a crash test.
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let spec: ChildSpec = serde_json::from_str(&spec).expect("child spec");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(child_main(spec));
}

async fn child_main(spec: ChildSpec) {
    tokio::spawn(async {
        tokio::time::sleep(CHILD_MAX_LIFETIME).await;
        die("still running after its maximum lifetime; exiting".into());
    });
    let opts = Options {
        segment_bytes: spec.segment_bytes,
        flush_interval: Duration::from_millis(spec.flush_interval_ms),
        max_inflight_uploads: spec.max_inflight_uploads,
        max_unflushed_bytes: spec.max_unflushed_bytes,
        checkpoint_bytes: spec.checkpoint_bytes,
        gc: if spec.gc_loop {
            gc_options()
        } else {
            writer_options().gc
        },
        ..writer_options()
    };
    let opts = encoded(opts, spec.key);
    let db = Db::open(&spec.url, opts)
        .await
        .unwrap_or_else(|e| die(format!("open {}: {e}", spec.url)));
    let loops = WriterLoops {
        checkpoint: spec.checkpoint_loop,
        gc: spec.gc_loop,
    };
    run_writer(db, spec.seed, loops).await
}

/// `opts` encrypting with `key` (if any) and compressing.
fn encoded(mut opts: Options, key: Option<[u8; 32]>) -> Options {
    if let Some(k) = key {
        opts.encoding.key = Some(kvfs::store::encoding::EncryptionKey::from_bytes(&k));
        opts.encoding.compression = Some(kvfs::format::envelope::Compression::Zstd);
    }
    opts
}

/// Writer options of every writer in these tests. The lease TTL is far longer than
/// any test: a writer that waited out a killed writer's lease instead of taking over at
/// once would hang (and fail on a timeout) rather than pass slowly.
fn writer_options() -> Options {
    Options {
        lease_ttl: Duration::from_secs(3600),
        ..Options::default()
    }
}

/// GC settings of a writer that compacts and cleans all the time: no grace period,
/// so kills also land between a rewrite and the deletion of what it replaced.
fn gc_options() -> kvfs::db::GcOptions {
    kvfs::db::GcOptions {
        background: false,
        grace: Duration::ZERO,
        ..kvfs::db::GcOptions::default()
    }
}

// ---------------------------------------------------------------------------------
// The parent.

/// Start the child process (this test binary running [`crash_child`]) with `spec`.
fn spawn_child(spec: &ChildSpec, env: &[(String, String)], stderr_path: &Path) -> WriterProcess {
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.args([
        "--exact",
        &child_test_name(),
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, serde_json::to_string(spec).expect("spec json"))
    .envs(env.iter().map(|(k, v)| (k, v)));
    WriterProcess::spawn(cmd, stderr_path).expect("spawn crash child")
}

/// When the parent kills the child.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// This long after spawning, whatever the child is doing (often still opening
    /// the store, or taking over the previous writer's epoch).
    Spawned(Duration),
    /// This long after the child reported it opened the store (often before any ACK).
    Ready(Duration),
    /// After this many ACKs, plus a delay.
    Acked(u64, Duration),
}

fn pick_kill(rng: &mut StdRng) -> KillAt {
    let ms = |rng: &mut StdRng, max: u64| Duration::from_millis(rng.random_range(0..=max));
    match rng.random_range(0..10) {
        0 => KillAt::Spawned(ms(rng, 120)),
        1 | 2 => KillAt::Ready(ms(rng, 15)),
        _ => KillAt::Acked(rng.random_range(1..=15), ms(rng, 20)),
    }
}

/// Where the store under test lives, and how to reach it.
struct Target {
    /// URL the child opens.
    url: String,
    /// Extra environment of the child.
    env: Vec<(String, String)>,
    /// How the parent opens it.
    open: Arc<dyn Fn() -> DynStore + Send + Sync>,
    /// The key of an encrypted (and compressed) store.
    key: Option<[u8; 32]>,
}

impl Target {
    fn local(path: &Path) -> Target {
        let p = path.to_path_buf();
        Target {
            url: path.to_str().expect("utf-8 path").to_string(),
            env: Vec::new(),
            open: Arc::new(move || {
                Arc::new(kvfs::store::local::LocalStore::open(&p).expect("local store")) as DynStore
            }),
            key: None,
        }
    }

    /// The same store, encrypted and compressed by every writer and reader.
    fn encrypted(self) -> Target {
        Target {
            key: Some([0x42; 32]),
            ..self
        }
    }

    fn s3(server: &TestS3Server, bucket: &str, prefix: &str) -> Target {
        let client = server.client();
        let (b, p) = (bucket.to_string(), prefix.to_string());
        Target {
            url: format!("s3://{bucket}/{prefix}"),
            env: server
                .client_env()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            open: Arc::new(move || {
                Arc::new(S3Store::from_client(client.clone(), &b, &p)) as DynStore
            }),
            key: None,
        }
    }

    async fn try_open(&self, opts: Options) -> kvfs::db::Result<Db> {
        let opts = encoded(opts, self.key);
        match tokio::time::timeout(EVENT_TIMEOUT, Db::open_store((self.open)(), opts)).await {
            Ok(r) => r,
            Err(_) => panic!(
                "opening {} took over {EVENT_TIMEOUT:?}: is it waiting for the lease of a \
                 writer that is gone?",
                self.url
            ),
        }
    }

    async fn open(&self, opts: Options) -> Db {
        self.try_open(opts)
            .await
            .unwrap_or_else(|e| panic!("open {}: {e}", self.url))
    }
}

/// How a run of crash trials is configured.
#[derive(Clone, Copy, Debug)]
struct Plan {
    trials: usize,
    /// Checkpoint after this many log bytes (tiny: constantly).
    checkpoint_bytes: u64,
    checkpoint_loop: bool,
    gc_loop: bool,
}

fn base_seed() -> u64 {
    match std::env::var(SEED_ENV) {
        Ok(s) => s.parse().expect("KVFS_CRASH_SEED must be a number"),
        Err(_) => rand::random(),
    }
}

/// Check a recovered store against the model; returns the recovered batch number.
/// With `fsck`, also verify every object of the store (slow on large stores).
async fn check_store(db: &Db, model: &mut Model, min_batch: u64, fsck: bool, what: &str) -> u64 {
    let m = match db.get(MARKER).await.expect("read marker") {
        Some(v) => parse_batch(&v).expect("marker is a number"),
        None => 0,
    };
    assert!(
        m >= min_batch,
        "{what}: recovered batch {m}, but batch {min_batch} was acknowledged as durable \
         (or recovered before)"
    );
    model.advance_to(m);
    let rows = db
        .scan(Bound::Unbounded, Bound::Unbounded, usize::MAX, false)
        .await
        .unwrap_or_else(|e| panic!("{what}: scan: {e}"));
    let got: BTreeMap<Vec<u8>, Vec<u8>> = rows
        .into_iter()
        .map(|(k, v)| (k, v.expect("scan value").to_vec()))
        .collect();
    if got != model.map {
        let missing: Vec<_> = model
            .map
            .keys()
            .filter(|k| !got.contains_key(*k))
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        let extra: Vec<_> = got
            .keys()
            .filter(|k| !model.map.contains_key(*k))
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        let differ: Vec<_> = got
            .iter()
            .filter(|(k, v)| model.map.get(*k).is_some_and(|mv| mv != *v))
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect();
        panic!(
            "{what}: recovered state is not the state after batches 1..={m}: \
             missing keys {missing:?}, unexpected keys {extra:?}, wrong values {differ:?}"
        );
    }
    assert_eq!(db.len(), model.map.len(), "{what}: len");
    // Point reads agree with the scan, including for absent keys.
    for i in (0..KEY_SPACE).step_by(7) {
        let k = format!("k{i:03}").into_bytes();
        let v = db
            .get(&k)
            .await
            .unwrap_or_else(|e| panic!("{what}: get: {e}"));
        assert_eq!(
            v.as_deref(),
            model.map.get(&k).map(|v| v.as_slice()),
            "{what}: get {}",
            String::from_utf8_lossy(&k)
        );
    }
    if fsck {
        let report = db
            .fsck(&mut |_| {})
            .await
            .unwrap_or_else(|e| panic!("{what}: fsck: {e}"));
        assert!(report.is_clean(), "{what}: fsck found {:?}", report.issues);
    }
    m
}

/// Checks while the writer (process `pid`) runs: a second writer is refused, naming
/// it; a reader sees the state after some batch at least `acked`. Returns that batch.
async fn check_live(target: &Target, model: &mut Model, acked: u64, pid: u32, what: &str) -> u64 {
    match target.try_open(writer_options()).await {
        Err(kvfs::db::Error::Locked { holder, .. }) => assert!(
            holder.contains(&format!("pid {pid}")),
            "{what}: refused, but the holder named is {holder:?}, not pid {pid}"
        ),
        Err(e) => panic!("{what}: a second writer failed with {e}, expected Locked"),
        Ok(_) => panic!("{what}: a second writer opened the store while the first runs"),
    }
    let ro = target.open(Options::read_only()).await;
    let m = check_store(&ro, model, acked, false, &format!("{what}, live reader")).await;
    ro.close().await.expect("close live reader");
    m
}

/// Run `plan.trials` crash trials, one after another, on the store `target` names.
async fn crash_trials(target: Target, plan: Plan, scratch: &Path, label: &str) {
    let base = base_seed();
    let mut rng = StdRng::seed_from_u64(base);
    let seed: u64 = rng.random();
    let ctx = format!("{label} ({SEED_ENV}={base})");
    let mut model = Model::new(seed);
    let mut recovered = 0u64;
    let mut last_epoch = 0u64;
    let mut acked_trials = 0;
    for trial in 0..plan.trials {
        let spec = ChildSpec {
            url: target.url.clone(),
            seed,
            segment_bytes: rng.random_range(4096..=16384),
            flush_interval_ms: 20,
            max_inflight_uploads: rng.random_range(2..=8),
            max_unflushed_bytes: 128 << 10,
            checkpoint_bytes: plan.checkpoint_bytes,
            checkpoint_loop: plan.checkpoint_loop,
            gc_loop: plan.gc_loop,
            key: target.key,
        };
        let kill = match trial {
            // Usually while the first writer is still creating the store.
            0 => KillAt::Spawned(Duration::from_millis(rng.random_range(0..=60))),
            _ => pick_kill(&mut rng),
        };
        let t0 = std::time::Instant::now();
        let what = format!("{ctx} trial {trial} ({kill:?}, {spec:?})");
        let mut child = spawn_child(&spec, &target.env, &scratch.join(format!("stderr-{trial}")));

        // Let the child run until the chosen moment, noting what it acknowledged.
        let mut acked = 0u64;
        let mut acks = 0u64;
        let mut ready = None;
        let mut eof = false;
        let mut live = 0;
        let on_line = |line: &str, acked: &mut u64, acks: &mut u64, ready: &mut Option<u64>| {
            match parse_event(line) {
                Event::Ack(b) => {
                    assert!(b >= *acked, "{what}: ACKs went backwards");
                    *acked = b;
                    *acks += 1;
                }
                Event::Ready(m) => *ready = Some(m),
                Event::Other => {}
            }
        };
        match kill {
            KillAt::Spawned(d) => tokio::time::sleep(d).await,
            KillAt::Ready(_) | KillAt::Acked(..) => {
                let (need_acks, delay) = match kill {
                    KillAt::Ready(d) => (0, d),
                    KillAt::Acked(n, d) => (n, d),
                    KillAt::Spawned(_) => unreachable!(),
                };
                while ready.is_none() || acks < need_acks {
                    match child
                        .next_line()
                        .await
                        .unwrap_or_else(|e| panic!("{what}: {e}"))
                    {
                        Some(line) => on_line(&line, &mut acked, &mut acks, &mut ready),
                        None => {
                            eof = true;
                            break;
                        }
                    }
                }
                // A reader of a store whose writer deletes with no grace period
                // could find its objects gone: no live reader in GC trials.
                if !eof && trial % 3 == 0 && !plan.gc_loop {
                    live = check_live(&target, &mut model, acked, child.pid(), &what).await;
                }
                if !eof {
                    tokio::time::sleep(delay).await;
                }
            }
        }
        let (status, rest) = child
            .kill_and_reap()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        for line in &rest {
            on_line(line, &mut acked, &mut acks, &mut ready);
        }
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "{what}: the child exited by itself ({status}); its stderr:\n{}",
            child.stderr()
        );
        if let Some(start) = ready {
            assert_eq!(
                start, recovered,
                "{what}: the child recovered batch {start}, the parent had verified {recovered}"
            );
        }
        if acks > 0 {
            acked_trials += 1;
        }

        // Recovery, read-only.
        let min_batch = acked.max(recovered).max(live);
        let m = match target.try_open(Options::read_only()).await {
            Ok(ro) => {
                let m = check_store(
                    &ro,
                    &mut model,
                    min_batch,
                    true,
                    &format!("{what}, read-only"),
                )
                .await;
                ro.close().await.expect("close read-only");
                m
            }
            // Killed before it created the store: fine if nothing was ever acknowledged.
            Err(kvfs::db::Error::NoStore(_)) if min_batch == 0 => 0,
            Err(e) => panic!("{what}: read-only open: {e}"),
        };

        // Recovery as a writer (takes over the killed writer's epoch) on odd trials;
        // on even trials the next child takes over the killed one directly.
        if trial % 2 == 1 || trial + 1 == plan.trials {
            let w = target.open(writer_options()).await;
            assert!(!w.is_read_only());
            assert!(w.epoch() > last_epoch, "{what}: writer epoch did not grow");
            last_epoch = w.epoch();
            let mw = check_store(&w, &mut model, m, false, &format!("{what}, writer")).await;
            assert_eq!(
                mw, m,
                "{what}: writer and reader recovered different batches"
            );
            w.close().await.expect("close writer");
            drop(w);
        }
        recovered = m;
        eprintln!(
            "{label} trial {trial}: {kill:?}: {acks} ACKs, last {acked}, live reader saw \
             {live}, recovered {m}, in {:?}",
            t0.elapsed()
        );
    }
    assert!(
        acked_trials > 0,
        "{ctx}: no trial got as far as an acknowledged sync"
    );
    assert!(recovered > 0, "{ctx}: nothing was ever recovered");

    // Nothing leaked: one more GC leaves no unneeded object behind.
    if plan.gc_loop {
        let w = target
            .open(Options {
                gc: gc_options(),
                ..writer_options()
            })
            .await;
        check_store(
            &w,
            &mut model,
            recovered,
            true,
            &format!("{ctx}, before final gc"),
        )
        .await;
        w.gc(&mut |_| {}).await.expect("final gc");
        let stats = w.stats().await.expect("stats");
        assert_eq!(stats.unneeded_objects, 0, "{ctx}: leaked objects: {stats}");
        assert_eq!(stats.manifests, 1, "{ctx}: old manifests left: {stats}");
        assert!(
            stats.runs > 0,
            "{ctx}: the writers never compacted: {stats}"
        );
        check_store(
            &w,
            &mut model,
            recovered,
            true,
            &format!("{ctx}, after final gc"),
        )
        .await;
        w.close().await.expect("close");
    }

    // A final writer sees everything, can write, and leaves a clean store.
    let w = target.open(writer_options()).await;
    check_store(&w, &mut model, recovered, false, &format!("{ctx}, final")).await;
    let next = recovered + 1;
    w.write_batch(&batch_ops(seed, next)).await.expect("write");
    w.sync().await.expect("sync");
    w.close().await.expect("close");
    let ro = target.open(Options::read_only()).await;
    check_store(
        &ro,
        &mut model,
        next,
        true,
        &format!("{ctx}, after final write"),
    )
    .await;
    assert_eq!(model.applied, next);
    if plan.checkpoint_bytes < 4096 {
        let stats = ro.stats().await.expect("stats");
        assert!(
            stats.checkpoint.is_some() && stats.checkpoints > 0,
            "{ctx}: no checkpoint was ever published: {stats}"
        );
    }
}

/// Periodic checkpoints now and then.
fn normal(trials: usize) -> Plan {
    Plan {
        trials,
        checkpoint_bytes: 256 << 10,
        checkpoint_loop: false,
        gc_loop: false,
    }
}

/// Checkpoints all the time, so many kills land in the middle of one.
fn checkpointing(trials: usize) -> Plan {
    Plan {
        trials,
        checkpoint_bytes: 1,
        checkpoint_loop: true,
        gc_loop: false,
    }
}

/// Compaction and GC all the time, so kills land while rewriting, relinking and
/// deleting.
fn collecting(trials: usize) -> Plan {
    Plan {
        trials,
        checkpoint_bytes: 64 << 10,
        checkpoint_loop: false,
        gc_loop: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::local(&dir.path().join("store"));
    crash_trials(target, normal(16), dir.path(), "local").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_local_store_during_gc_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::local(&dir.path().join("store"));
    crash_trials(target, collecting(14), dir.path(), "local, gc").await;
}

/// An encrypted, compressed store: every envelope written before a kill opens after
/// it, and GC still converges over them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_encrypted_local_store_during_gc_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::local(&dir.path().join("store")).encrypted();
    crash_trials(target, collecting(8), dir.path(), "local, encrypted, gc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_local_store_during_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::local(&dir.path().join("store"));
    crash_trials(
        target,
        checkpointing(12),
        dir.path(),
        "local, checkpointing",
    )
    .await;
}

/// A test S3 server with jittered PUT latency: uploads complete out of order, so the
/// durable point often trails completed segments when the kill lands.
async fn s3_fixture() -> S3Fixture {
    S3Fixture::with_options(ServerOptions {
        faults: FaultConfig {
            put_latency: Duration::from_millis(1),
            jitter: Duration::from_millis(8),
            ..FaultConfig::default()
        },
        ..ServerOptions::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_s3_store() {
    let s3 = s3_fixture().await;
    let scratch = tempfile::tempdir().unwrap();
    let target = Target::s3(&s3.server, BUCKET, "crash/normal");
    crash_trials(target, normal(10), scratch.path(), "s3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_s3_store_during_checkpoints() {
    let s3 = s3_fixture().await;
    let scratch = tempfile::tempdir().unwrap();
    let target = Target::s3(&s3.server, BUCKET, "crash/checkpointing");
    crash_trials(
        target,
        checkpointing(8),
        scratch.path(),
        "s3, checkpointing",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_s3_store_during_gc_and_compaction() {
    let s3 = s3_fixture().await;
    let scratch = tempfile::tempdir().unwrap();
    let target = Target::s3(&s3.server, BUCKET, "crash/gc");
    crash_trials(target, collecting(10), scratch.path(), "s3, gc").await;
}

/// The workload really is a pure function of `(seed, b)`, and it exercises both puts
/// and deletes.
#[test]
fn workload_is_deterministic() {
    let mut deletes = 0;
    for b in 1..200 {
        let ops = batch_ops(42, b);
        assert_eq!(ops, batch_ops(42, b));
        assert_eq!(
            ops.last(),
            Some(&BatchOp::Put(MARKER.to_vec(), b.to_string().into_bytes()))
        );
        deletes += ops
            .iter()
            .filter(|o| matches!(o, BatchOp::Delete(_)))
            .count();
    }
    assert!(deletes > 0);
    assert_ne!(batch_ops(42, 1), batch_ops(43, 1));
    assert_eq!(
        parse_event("test crash_child ... KVFS-ACK 17"),
        Event::Ack(17)
    );
    assert_eq!(parse_event("KVFS-READY 5 epoch 3"), Event::Ready(5));
    assert_eq!(parse_event("running 1 test"), Event::Other);
}
