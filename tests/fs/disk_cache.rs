//! The disk cache of an S3 store under real mounts: what a mount wrote or read is
//! read again after a remount with no GET; an encrypted store's cache holds no
//! plaintext; a damaged cache file is fetched again, never served; the cache keeps
//! to its size; an unusable cache directory costs nothing but the cache.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::mount::Mount;
use crate::common::{S3Fixture, BUCKET};

fn sh(point: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(point)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn bytes_under(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// The tree the tests write: 300 small files and a 3 MiB one.
const WRITE_TREE: &str = "mkdir -p t && for i in $(seq 1 300); do \
     echo \"file $i $(seq 1 $((i % 40)) | tr '\\n' ' ')\" > t/f$i; done && \
     head -c 3145728 /dev/urandom > t/big";

/// A remount with the cache kept reads every file with no GET; emptied, the same
/// read fetches from the store again, and the cache is filled again.
#[test]
fn a_warm_remount_reads_nothing_from_the_store() {
    let (rt, s3) = S3Fixture::start_with_runtime();
    let env = s3.server.client_env();
    let tmp = tempfile::tempdir().unwrap();
    let point = tmp.path().join("mnt");
    let store = format!("s3://{BUCKET}/disk-cache/warm");
    // A memory cache too small to help: what is not on disk is a GET.
    let flags = ["--cache-bytes", "4096"];
    let m = Mount::start(&store, &point, &flags, &env);
    sh(m.point(), WRITE_TREE);
    let written = sh(m.point(), "tar cf - t | md5sum");
    m.finish();
    let cache = s3.server.disk_cache_dir().to_path_buf();
    assert!(
        bytes_under(&cache) > 3 << 20,
        "uploads went into the disk cache"
    );

    // Warm: the open (recovery reads the log) and every file come from the disk;
    // what is left are the objects never cached (lease, manifests, store id).
    let opened_at = s3.server.request_counts();
    let m = Mount::start(&store, &point, &flags, &env);
    let before = s3.server.request_counts();
    assert_eq!(sh(m.point(), "tar cf - t | md5sum"), written);
    assert_eq!(
        s3.server.request_counts().since(&before).get,
        0,
        "a warm remount fetched file data from the store"
    );
    m.finish();
    let warm = s3.server.request_counts().since(&opened_at).get;

    // Emptied: the same mount and read fetch the log and the data from the store,
    // and fill the cache again.
    std::fs::remove_dir_all(&cache).unwrap();
    let opened_at = s3.server.request_counts();
    let m = Mount::start(&store, &point, &flags, &env);
    assert_eq!(sh(m.point(), "tar cf - t | md5sum"), written);
    m.finish();
    let cold = s3.server.request_counts().since(&opened_at).get;
    assert!(cold > warm, "emptied: {cold} GETs, warm: {warm}");
    assert!(bytes_under(&cache) > 3 << 20);
    let opened_at = s3.server.request_counts();
    let m = Mount::start(&store, &point, &flags, &env);
    assert_eq!(sh(m.point(), "tar cf - t | md5sum"), written);
    m.finish();
    assert_eq!(s3.server.request_counts().since(&opened_at).get, warm);
    drop(s3);
    drop(rt);
}

/// The cache of an encrypted store holds what the store holds: ciphertext.
#[test]
fn an_encrypted_store_is_never_cached_in_plaintext() {
    let (rt, s3) = S3Fixture::start_with_runtime();
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    let marker = "plaintext-marker-0123456789";
    for (name, encrypted) in [("plain", false), ("sealed", true)] {
        let cache = tmp.path().join(format!("cache-{name}"));
        let mut env = s3.server.client_env();
        env.push(("KVFS_CACHE_DIR", cache.to_string_lossy().into_owned()));
        let store = format!("s3://{BUCKET}/disk-cache/{name}");
        let key_flag = ["--encryption-key-file", key.to_str().unwrap()];
        let flags: &[&str] = if encrypted { &key_flag } else { &[] };
        let point = tmp.path().join(format!("mnt-{name}"));
        let m = Mount::start(&store, &point, flags, &env);
        sh(
            m.point(),
            &format!("for i in $(seq 1 50); do echo {marker} $i > f$i; done; head -c 2000000 /dev/zero | tr '\\0' 'p' > big; echo {marker} >> big"),
        );
        m.finish();
        let files = files_under(&cache);
        assert!(!files.is_empty(), "{name}: nothing cached");
        let found = files.iter().any(|f| {
            let data = std::fs::read(f).unwrap();
            data.windows(marker.len()).any(|w| w == marker.as_bytes())
        });
        assert_eq!(found, !encrypted, "{name}: plaintext in the cache: {found}");
    }
    drop(s3);
    drop(rt);
}

/// A damaged cache file (a changed byte, a torn write) is detected: the files read
/// right, from the store.
#[test]
fn a_damaged_cache_file_is_fetched_again_never_served() {
    let (rt, s3) = S3Fixture::start_with_runtime();
    let env = s3.server.client_env();
    let tmp = tempfile::tempdir().unwrap();
    let point = tmp.path().join("mnt");
    let store = format!("s3://{BUCKET}/disk-cache/damaged");
    let flags = ["--cache-bytes", "4096"];
    let m = Mount::start(&store, &point, &flags, &env);
    sh(m.point(), WRITE_TREE);
    let written = sh(m.point(), "tar cf - t | md5sum");
    m.finish();
    let cache = s3.server.disk_cache_dir().to_path_buf();
    let data_files: Vec<PathBuf> = files_under(&cache)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/seg/") || p.to_string_lossy().contains("/run/"))
        .collect();
    assert!(!data_files.is_empty());
    for (i, f) in data_files.iter().enumerate() {
        let mut raw = std::fs::read(f).unwrap();
        if i % 2 == 0 {
            let at = raw.len() - 1 - (i * 7919) % (raw.len() / 2);
            raw[at] ^= 0x20;
        } else {
            raw.truncate(raw.len() * 2 / 3);
        }
        std::fs::write(f, raw).unwrap();
    }
    for _ in 0..2 {
        let m = Mount::start(&store, &point, &flags, &env);
        assert_eq!(sh(m.point(), "tar cf - t | md5sum"), written);
        m.finish();
    }
    drop(s3);
    drop(rt);
}

/// The cache stays within --cache-size, the least recently used out; a cache
/// directory that cannot be used (a file stands in its way) leaves the mount
/// working without one.
#[test]
fn the_cache_keeps_to_its_size_and_an_unusable_directory_turns_it_off() {
    let (rt, s3) = S3Fixture::start_with_runtime();
    let env = s3.server.client_env();
    let tmp = tempfile::tempdir().unwrap();
    let point = tmp.path().join("mnt");
    let store = format!("s3://{BUCKET}/disk-cache/small");
    let size = 1_500_000u64;
    let flags = ["--cache-size", "1500000", "--segment-bytes", "262144"];
    let m = Mount::start(&store, &point, &flags, &env);
    sh(m.point(), WRITE_TREE);
    let written = sh(m.point(), "tar cf - t | md5sum");
    m.finish();
    let cache = s3.server.disk_cache_dir().to_path_buf();
    let held = bytes_under(&cache);
    assert!(held > 0 && held <= size, "{held} bytes in the cache");

    let blocked = tmp.path().join("not-a-directory");
    std::fs::write(&blocked, b"x").unwrap();
    let mut env = env.clone();
    env.push(("KVFS_CACHE_DIR", blocked.to_string_lossy().into_owned()));
    let m = Mount::start(&store, &point, &[], &env);
    assert_eq!(sh(m.point(), "tar cf - t | md5sum"), written);
    sh(m.point(), "echo more > t/more");
    let log = m.log_text();
    m.finish();
    assert!(log.contains("the disk cache is off"), "{log}");
    drop(s3);
    drop(rt);
}
