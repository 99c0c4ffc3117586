//! Conformance tests: every object-store backend (memory, local directory, S3 against
//! the in-process test server) must give the same answers to the same requests.
//!
//! The shared checks live in [`conformance`] and [`create_new_race`]; S3-only
//! behaviour (pagination, missing bucket, credentials, injected faults, configuration
//! from the environment) has its own tests below.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{S3Fixture, BUCKET};
use bytes::Bytes;
use kvfs::store::local::LocalStore;
use kvfs::store::memory::MemoryStore;
use kvfs::store::s3::S3Store;
use kvfs::store::{ObjectStore, PutMode, StoreError};
use kvfs_testkit::server::{
    FaultConfig, ServerOptions, TestS3Server, TEST_ACCESS_KEY, TEST_SECRET_KEY,
};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn is_precondition(r: &Result<String, StoreError>) -> bool {
    matches!(r, Err(StoreError::PreconditionFailed(_)))
}

/// The checks every backend must pass. `store` must be empty.
async fn conformance(store: &dyn ObjectStore) {
    let name = store.describe();

    // Missing objects.
    assert!(
        matches!(store.get("nope").await, Err(StoreError::NotFound(_))),
        "{name}: get of a missing object"
    );
    assert!(
        matches!(
            store.get_range("nope", 0..1).await,
            Err(StoreError::NotFound(_))
        ),
        "{name}: ranged get of a missing object"
    );
    store
        .delete("nope")
        .await
        .expect("delete of a missing object is Ok");
    assert!(
        store.list("").await.expect("list").is_empty(),
        "{name}: empty store lists nothing"
    );

    // Round trip; the etag from put is the one get reports.
    let e1 = store
        .put("a/one", b("hello world"), PutMode::Overwrite)
        .await
        .expect("put");
    assert!(!e1.is_empty());
    let got = store.get("a/one").await.expect("get");
    assert_eq!(got.data, b("hello world"), "{name}");
    assert_eq!(got.etag, e1, "{name}: get returns the put etag");

    // Overwrite with other bytes changes the etag.
    let e2 = store
        .put("a/one", b("goodbye"), PutMode::Overwrite)
        .await
        .expect("overwrite");
    assert_ne!(e1, e2, "{name}: etag changes with the content");
    assert_eq!(store.get("a/one").await.expect("get").data, b("goodbye"));

    // Empty objects.
    let e_empty = store
        .put("empty", Bytes::new(), PutMode::CreateNew)
        .await
        .expect("empty put");
    let got = store.get("empty").await.expect("get empty");
    assert!(got.data.is_empty(), "{name}");
    assert_eq!(got.etag, e_empty, "{name}");

    // CreateNew.
    let c1 = store
        .put("lock", b("v1"), PutMode::CreateNew)
        .await
        .expect("create new");
    let again = store.put("lock", b("v2"), PutMode::CreateNew).await;
    assert!(
        is_precondition(&again),
        "{name}: second CreateNew -> {again:?}"
    );
    assert_eq!(
        store.get("lock").await.expect("get").data,
        b("v1"),
        "{name}: loser wrote nothing"
    );

    // IfMatch with the right, a stale and a made-up etag, and on a missing key.
    let c2 = store
        .put("lock", b("v2"), PutMode::IfMatch(c1.clone()))
        .await
        .expect("if-match with the current etag");
    assert_ne!(c1, c2, "{name}");
    let stale = store
        .put("lock", b("v3"), PutMode::IfMatch(c1.clone()))
        .await;
    assert!(
        is_precondition(&stale),
        "{name}: stale If-Match -> {stale:?}"
    );
    let bogus = store
        .put(
            "lock",
            b("v3"),
            PutMode::IfMatch("\"0123456789abcdef\"".into()),
        )
        .await;
    assert!(
        is_precondition(&bogus),
        "{name}: bogus If-Match -> {bogus:?}"
    );
    let missing = store
        .put("no-lock", b("v1"), PutMode::IfMatch(c2.clone()))
        .await;
    assert!(
        is_precondition(&missing),
        "{name}: If-Match on a missing key -> {missing:?}"
    );
    assert!(
        matches!(store.get("no-lock").await, Err(StoreError::NotFound(_))),
        "{name}"
    );
    let got = store.get("lock").await.expect("get");
    assert_eq!(got.data, b("v2"), "{name}");
    assert_eq!(got.etag, c2, "{name}");

    // Ranged reads.
    store
        .put("r", b("0123456789"), PutMode::Overwrite)
        .await
        .expect("put");
    assert_eq!(
        store.get_range("r", 0..10).await.expect("whole"),
        b("0123456789")
    );
    assert_eq!(store.get_range("r", 2..5).await.expect("middle"), b("234"));
    assert_eq!(store.get_range("r", 9..10).await.expect("last"), b("9"));
    assert!(
        store.get_range("r", 4..4).await.expect("empty").is_empty(),
        "{name}"
    );
    assert!(
        store
            .get_range("r", 10..10)
            .await
            .expect("empty at end")
            .is_empty(),
        "{name}"
    );
    for bad in [5..20, 10..11, 11..12, 100..200] {
        let r = store.get_range("r", bad.clone()).await;
        assert!(
            matches!(r, Err(StoreError::InvalidRange { .. })),
            "{name}: range {bad:?} -> {r:?}"
        );
    }
    #[allow(clippy::reversed_empty_ranges)]
    let backwards = store.get_range("r", 6..3).await;
    assert!(
        matches!(backwards, Err(StoreError::InvalidRange { .. })),
        "{name}: backwards range -> {backwards:?}"
    );

    // Listing: key order, prefix filtering, sizes, relative keys.
    for k in ["d/b", "d/a", "d/c/x", "d0", "dz/1", "e"] {
        store.put(k, b(k), PutMode::Overwrite).await.expect("put");
    }
    let keys = |v: Vec<kvfs::store::ObjectMeta>| v.into_iter().map(|m| m.key).collect::<Vec<_>>();
    assert_eq!(
        keys(store.list("d/").await.expect("list")),
        ["d/a", "d/b", "d/c/x"],
        "{name}"
    );
    assert_eq!(
        keys(store.list("d").await.expect("list")),
        ["d/a", "d/b", "d/c/x", "d0", "dz/1"],
        "{name}"
    );
    assert!(store.list("zzz").await.expect("list").is_empty(), "{name}");
    let all = store.list("").await.expect("list all");
    let all_keys = keys(all.clone());
    let mut sorted = all_keys.clone();
    sorted.sort();
    assert_eq!(all_keys, sorted, "{name}: list is sorted");
    assert_eq!(
        all_keys,
        ["a/one", "d/a", "d/b", "d/c/x", "d0", "dz/1", "e", "empty", "lock", "r"],
        "{name}"
    );
    let size_of = |k: &str| all.iter().find(|m| m.key == k).map(|m| m.size);
    assert_eq!(size_of("r"), Some(10), "{name}");
    assert_eq!(size_of("empty"), Some(0), "{name}");
    assert_eq!(size_of("d/c/x"), Some(5), "{name}");

    // Delete.
    store.delete("d/a").await.expect("delete");
    store.delete("d/a").await.expect("delete twice");
    assert!(
        matches!(store.get("d/a").await, Err(StoreError::NotFound(_))),
        "{name}"
    );
    assert_eq!(
        keys(store.list("d/").await.expect("list")),
        ["d/b", "d/c/x"],
        "{name}"
    );
    // A deleted key can be created anew.
    store
        .put("d/a", b("again"), PutMode::CreateNew)
        .await
        .expect("recreate");

    // Keys no backend accepts.
    for bad in ["", "/abs", "dir/", "a//b", "a/../b", "./a"] {
        let r = store.put(bad, b("x"), PutMode::Overwrite).await;
        assert!(
            matches!(r, Err(StoreError::Config(_))),
            "{name}: key {bad:?} -> {r:?}"
        );
    }
}

/// Sixteen writers race `CreateNew` on one key: exactly one wins and its bytes stay.
async fn create_new_race(store: Arc<dyn ObjectStore>) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16u32 {
        let store = store.clone();
        tasks.spawn(async move {
            let r = store
                .put(
                    "race/lock",
                    Bytes::from(format!("writer {i}")),
                    PutMode::CreateNew,
                )
                .await;
            (i, r)
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, r) = joined.expect("task");
        match r {
            Ok(etag) => winners.push((i, etag)),
            Err(StoreError::PreconditionFailed(_)) => {}
            Err(other) => panic!("{}: writer {i}: unexpected {other:?}", store.describe()),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "{}: winners {winners:?}",
        store.describe()
    );
    let (i, etag) = &winners[0];
    let got = store.get("race/lock").await.expect("get");
    assert_eq!(got.data, Bytes::from(format!("writer {i}")));
    assert_eq!(&got.etag, etag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_conformance() {
    conformance(&MemoryStore::new()).await;
    create_new_race(Arc::new(MemoryStore::new())).await;
}

/// The local directory backend (`store::local`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_conformance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::open(dir.path().join("store")).expect("open local store");
    conformance(&store).await;
    create_new_race(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_conformance_with_prefix() {
    let fx = S3Fixture::start().await;
    let store = fx.s3_store("tenant/db");
    assert_eq!(store.describe(), format!("s3://{BUCKET}/tenant/db"));
    conformance(&store).await;
    create_new_race(Arc::new(store.clone())).await;

    // Objects live under the prefix, and a neighbouring prefix is not listed.
    let raw = fx.server.client();
    let listed = raw
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix("tenant/db/")
        .send()
        .await
        .expect("raw list");
    assert!(listed
        .contents()
        .iter()
        .any(|o| o.key() == Some("tenant/db/a/one")));
    let neighbour = fx.s3_store("tenant/db2");
    neighbour
        .put("a/one", b("other"), PutMode::Overwrite)
        .await
        .expect("put");
    let keys: Vec<_> = store
        .list("")
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert!(keys.iter().all(|k| !k.starts_with("tenant")), "{keys:?}");
    assert_eq!(store.get("a/one").await.expect("get").data, b("goodbye"));

    let counts = fx.server.request_counts();
    assert!(
        counts.put >= 20 && counts.get >= 10 && counts.list >= 5 && counts.delete >= 2,
        "{counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_conformance_at_bucket_root() {
    let fx = S3Fixture::start().await;
    let store = fx.s3_store("/");
    assert_eq!(store.describe(), format!("s3://{BUCKET}"));
    conformance(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_list_paginates() {
    const N: usize = 1100;
    let fx = S3Fixture::start().await;
    let store = Arc::new(fx.s3_store("pages"));
    let mut tasks = tokio::task::JoinSet::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..16 {
        let (store, next) = (store.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= N {
                    return;
                }
                let key = format!("obj/{i:05}");
                store
                    .put(&key, Bytes::from(vec![7u8; i % 5]), PutMode::Overwrite)
                    .await
                    .expect("put");
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("writer task");
    }
    fx.server.reset_request_counts();
    let listed = store.list("obj/").await.expect("list");
    assert_eq!(listed.len(), N);
    let expected: Vec<String> = (0..N).map(|i| format!("obj/{i:05}")).collect();
    let got: Vec<String> = listed.iter().map(|m| m.key.clone()).collect();
    assert_eq!(got, expected);
    assert!(listed
        .iter()
        .enumerate()
        .all(|(i, m)| m.size == (i % 5) as u64));
    assert_eq!(
        fx.server.request_counts().list,
        2,
        "1100 keys take two pages of 1000"
    );
    let distinct: BTreeSet<_> = got.iter().collect();
    assert_eq!(distinct.len(), N);
}

fn expect_permanent(r: Result<impl std::fmt::Debug, StoreError>, must_contain: &[&str]) -> String {
    match r {
        Err(StoreError::Permanent(msg)) => {
            for s in must_contain {
                assert!(msg.contains(s), "message {msg:?} lacks {s:?}");
            }
            msg
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_missing_bucket_is_permanent() {
    let fx = S3Fixture::start().await;
    let store = S3Store::from_client(fx.server.client(), "no-such-bucket", "p");
    let put = store.put("k", b("x"), PutMode::Overwrite).await;
    expect_permanent(put, &["bucket no-such-bucket does not exist", "PUT"]);
    let create = store.put("k", b("x"), PutMode::CreateNew).await;
    expect_permanent(create, &["bucket no-such-bucket does not exist"]);
    expect_permanent(
        store.get("k").await,
        &["bucket no-such-bucket does not exist", "GET"],
    );
    expect_permanent(store.get_range("k", 0..1).await, &["no-such-bucket"]);
    expect_permanent(
        store.list("").await,
        &["bucket no-such-bucket does not exist", "LIST"],
    );
    expect_permanent(store.delete("k").await, &["no-such-bucket"]);
    // The test server must not have created it on the way.
    assert!(!fx.server.root().join("no-such-bucket").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_credentials_are_permanent() {
    let fx = S3Fixture::start().await;
    let wrong_secret = aws_sdk_s3::Client::from_conf(
        fx.server
            .client_config(TEST_ACCESS_KEY, "not-the-secret")
            .build(),
    );
    let store = S3Store::from_client(wrong_secret, BUCKET, "p");
    expect_permanent(
        store.put("k", b("x"), PutMode::Overwrite).await,
        &["credentials", "PUT"],
    );
    expect_permanent(store.get("k").await, &["credentials"]);
    expect_permanent(store.list("").await, &["credentials"]);

    let unknown_key = aws_sdk_s3::Client::from_conf(
        fx.server
            .client_config("AKIDUNKNOWN", TEST_SECRET_KEY)
            .build(),
    );
    let store = S3Store::from_client(unknown_key, BUCKET, "p");
    expect_permanent(
        store.put("k", b("x"), PutMode::Overwrite).await,
        &["credentials"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_client_without_credentials_is_permanent() {
    let fx = S3Fixture::start().await;
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(fx.server.endpoint())
        .force_path_style(true)
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .build();
    let store = S3Store::from_client(aws_sdk_s3::Client::from_conf(config), BUCKET, "p");
    expect_permanent(
        store.put("k", b("x"), PutMode::Overwrite).await,
        &["credentials"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_injected_faults_are_retryable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = ServerOptions {
        seed: Some(7),
        ..ServerOptions::default()
    };
    let server = TestS3Server::start(dir.path(), opts).await.expect("start");
    server.create_bucket(BUCKET).expect("bucket");
    let store = S3Store::from_client(server.client(), BUCKET, "f");
    store
        .put("k", b("v"), PutMode::Overwrite)
        .await
        .expect("put before faults");

    let faults = server.faults();
    faults.set(FaultConfig {
        error_rate: 1.0,
        ..FaultConfig::default()
    });
    let mut kinds = BTreeSet::new();
    for i in 0..12 {
        let results = [
            store
                .put(&format!("x{i}"), b("v"), PutMode::Overwrite)
                .await
                .err(),
            store.put("k", b("w"), PutMode::CreateNew).await.err(),
            store.get("k").await.err(),
            store.get_range("k", 0..1).await.err(),
            store.list("").await.err(),
            store.delete("k").await.err(),
        ];
        for err in results {
            let err = err.expect("every request fails at error_rate 1.0");
            assert!(err.is_retryable(), "{err:?}");
            kinds.insert(match err {
                StoreError::Throttled(_) => "throttled",
                StoreError::Transient(_) => "transient",
                _ => "other",
            });
        }
    }
    assert_eq!(
        kinds,
        BTreeSet::from(["throttled", "transient"]),
        "both 503 SlowDown and 500 appear"
    );

    faults.set(FaultConfig {
        outage: true,
        ..FaultConfig::default()
    });
    let outage = store.get("k").await;
    assert!(matches!(&outage, Err(e) if e.is_retryable()), "{outage:?}");

    faults.clear();
    assert_eq!(store.get("k").await.expect("get after faults").data, b("v"));
    let counts = server.request_counts();
    assert_eq!(counts.put, 1 + 24);
    assert_eq!(counts.get, 1 + 24 + 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_stalled_server_times_out_as_transient() {
    let fx = S3Fixture::start().await;
    let config = fx
        .server
        .client_config(TEST_ACCESS_KEY, TEST_SECRET_KEY)
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_millis(200))
                .build(),
        );
    let store = S3Store::from_client(aws_sdk_s3::Client::from_conf(config.build()), BUCKET, "s");
    fx.server.faults().update(|f| {
        f.stall = Duration::from_secs(2);
        f.stall_rate = 1.0;
    });
    let r = store.get("k").await;
    assert!(
        matches!(&r, Err(StoreError::Transient(m)) if m.contains("timed out")),
        "{r:?}"
    );
    fx.server.faults().clear();
    assert!(matches!(store.get("k").await, Err(StoreError::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_connection_refused_is_transient() {
    let fx = S3Fixture::start().await;
    let client = fx.server.client();
    let endpoint = fx.server.endpoint();
    fx.server.shutdown().await;
    let store = S3Store::from_client(client, BUCKET, "p");
    let r = store.get("k").await;
    assert!(
        matches!(&r, Err(StoreError::Transient(_))),
        "{endpoint}: {r:?}"
    );
}

// ---------------------------------------------------------------------------------
// `S3Store::connect` reads the process environment, so it runs in a child process
// (this test binary re-executed with a filter) with a controlled environment.

const CHILD_MODE: &str = "KVFS_CONFORMANCE_CHILD";

/// Run the ignored test `name` of this binary in a child process with a clean AWS
/// environment plus `env`; returns (success, output).
async fn run_child(name: &str, env: Vec<(&'static str, String)>) -> (bool, String) {
    let exe = std::env::current_exe().expect("current exe");
    // Test names in this binary start with the module path, without the binary's name.
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let name = format!("{module}::{name}");
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "--exact",
        &name,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(&k);
        }
    }
    // Never reach real AWS configuration or the instance metadata service.
    cmd.env("AWS_CONFIG_FILE", "/nonexistent/kvfs-test/config");
    cmd.env(
        "AWS_SHARED_CREDENTIALS_FILE",
        "/nonexistent/kvfs-test/credentials",
    );
    cmd.env("AWS_EC2_METADATA_DISABLED", "true");
    cmd.env(CHILD_MODE, "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run child test");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ran = text.contains("test result: ok. 1 passed");
    (out.status.success() && ran, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_connect_from_environment() {
    let fx = S3Fixture::start().await;
    let env = vec![
        ("AWS_ENDPOINT_URL", fx.server.endpoint()),
        ("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY.to_string()),
        // No AWS_REGION: connect must default to us-east-1.
        // A CA bundle that does not exist must not break a plain-http endpoint.
        ("AWS_CA_BUNDLE", "/nonexistent/kvfs-test/ca.pem".to_string()),
        ("KVFS_TEST_BUCKET", BUCKET.to_string()),
    ];
    let (ok, output) = run_child("child_connect_from_environment", env).await;
    assert!(ok, "child failed:\n{output}");
    let got = fx
        .store("env")
        .get("from-child")
        .await
        .expect("object written by the child");
    assert_eq!(got.data, b("hello from the environment"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by s3_connect_from_environment in a child process"]
async fn child_connect_from_environment() {
    if std::env::var_os(CHILD_MODE).is_none() {
        return;
    }
    let bucket = std::env::var("KVFS_TEST_BUCKET").expect("KVFS_TEST_BUCKET");
    let store = S3Store::connect(&bucket, "/env/").await.expect("connect");
    assert_eq!(store.describe(), format!("s3://{bucket}/env"));
    store
        .put(
            "from-child",
            b("hello from the environment"),
            PutMode::CreateNew,
        )
        .await
        .expect("put via connect()");
    assert_eq!(
        store.get_range("from-child", 0..5).await.expect("range"),
        b("hello")
    );
    let listed = store.list("").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, "from-child");
    let missing = S3Store::connect("no-such-bucket", "")
        .await
        .expect("connect");
    expect_permanent(
        missing.list("").await,
        &["bucket no-such-bucket does not exist"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_connect_without_credentials_is_permanent() {
    let fx = S3Fixture::start().await;
    let env = vec![("AWS_ENDPOINT_URL", fx.server.endpoint())];
    let (ok, output) = run_child("child_connect_without_credentials", env).await;
    assert!(ok, "child failed:\n{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by s3_connect_without_credentials_is_permanent in a child process"]
async fn child_connect_without_credentials() {
    if std::env::var_os(CHILD_MODE).is_none() {
        return;
    }
    let r = S3Store::connect("some-bucket", "p").await;
    let msg = expect_permanent(r, &["credentials", "some-bucket"]);
    println!("connect without credentials: {msg}");
}
