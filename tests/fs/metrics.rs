//! A mount's Prometheus metrics (`--metrics-addr`): served at `/metrics`, parsed by a
//! Prometheus text parser, every documented metric present, and the figures move
//! with what the mount does.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use kvfs::metrics::{Kind, METRICS};

use crate::common::mount::Mount;

/// A port nobody listens on right now.
fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("Prometheus text format")
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref h) => {
                h.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
        .next()
        .unwrap_or_else(|| panic!("no sample of {name} {label:?}"))
}

#[test]
fn a_mount_serves_its_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let addr = free_addr();
    let mount = Mount::start(
        store.to_str().unwrap(),
        &tmp.path().join("mnt"),
        &["--metrics-addr", &addr.to_string()],
        &[],
    );
    for i in 0..20 {
        let mut f = std::fs::File::create(mount.point().join(format!("f{i}"))).unwrap();
        f.write_all(&[b'x'; 1000]).unwrap();
        f.sync_all().unwrap();
    }
    assert_eq!(
        std::fs::read(mount.point().join("f3")).unwrap(),
        [b'x'; 1000]
    );
    // Sampled every second: wait for the figures to show the writes.
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = scrape(addr);
        if value(&s, "kvfs_s3_requests_total", Some(("op", "put"))) >= 20.0 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the metrics never showed the writes"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for (name, kind, _) in METRICS {
        let present = s.samples.iter().any(|x| {
            x.metric == *name
                || (*kind == Kind::Histogram && x.metric.starts_with(&format!("{name}_")))
        });
        assert!(present, "{name} is missing");
        assert!(s.docs.contains_key(*name), "{name} has no help text");
    }
    assert!(value(&s, "kvfs_s3_bytes_total", Some(("op", "put"))) >= 20_000.0);
    assert!(
        value(&s, "kvfs_sync_seconds", None) >= 20.0,
        "every fsync is in the histogram"
    );
    assert!(value(&s, "kvfs_index_keys", None) >= 40.0);
    assert!(value(&s, "kvfs_live_bytes", None) >= 20_000.0);
    assert!(value(&s, "kvfs_s3_estimated_cost_usd", None) > 0.0);
    assert_eq!(value(&s, "kvfs_store_unanswered", None), 0.0);
    mount.finish();
}

#[test]
fn a_metrics_address_in_use_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let point = tmp.path().join("mnt");
    std::fs::create_dir(&point).unwrap();
    let out = std::process::Command::new(crate::common::mount::KVFS)
        .args([
            "mount",
            tmp.path().join("store").to_str().unwrap(),
            point.to_str().unwrap(),
        ])
        .args(["--metrics-addr", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot serve metrics") && err.contains(&addr),
        "{err}"
    );
}

#[test]
fn every_metric_is_documented() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/SEMANTICS.md"))
        .expect("docs/SEMANTICS.md");
    for (name, kind, _) in METRICS {
        let kind = format!("{kind:?}").to_lowercase();
        let row = format!("| `{name}` | {kind} |");
        assert!(doc.contains(&row), "docs/SEMANTICS.md lacks the row {row}");
    }
}

/// A mount of a brand-new S3 store counts no object-store error: looking for objects
/// that do not exist yet (the lease, the next segment or manifest) and conditional
/// writes that find an object are expected answers, counted apart.
#[test]
fn a_new_stores_mount_counts_no_errors() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s3 = rt.block_on(crate::common::S3Fixture::start());
    let tmp = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mount = Mount::start(
        &format!("s3://{}/fresh", crate::common::BUCKET),
        &tmp.path().join("mnt"),
        &["--metrics-addr", &addr.to_string()],
        &s3.server.client_env(),
    );
    for i in 0..5 {
        let mut f = std::fs::File::create(mount.point().join(format!("f{i}"))).unwrap();
        f.write_all(b"fresh").unwrap();
        f.sync_all().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = scrape(addr);
        if value(&s, "kvfs_s3_requests_total", Some(("op", "put"))) >= 5.0 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the metrics never showed the writes"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(value(&s, "kvfs_s3_errors_total", None), 0.0);
    assert!(value(&s, "kvfs_s3_not_found_total", None) >= 1.0);
    mount.finish();
    drop(s3);
    drop(rt);
}
