//! Sparse files compared with tmpfs: holes punched into small and large files
//! (`fallocate -p`), sizes kept, data around them intact, `SEEK_DATA`/`SEEK_HOLE`,
//! and the blocks `du` counts, before and after a remount. Zeroing a range
//! (`FALLOC_FL_ZERO_RANGE`, which tmpfs refuses) is checked against its meaning; a
//! punched hole writes metadata only and `kvfs gc` gives its extents back.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use kvfs_testkit::mount::mount_tmpfs;

use crate::common::mount::Mount;

/// Deterministic bytes.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

fn fallocate(path: &Path, mode: i32, offset: u64, len: u64) -> String {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    // SAFETY: fallocate on a valid open descriptor.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, len as i64) };
    if rc == 0 {
        "ok".into()
    } else {
        format!(
            "errno {}",
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        )
    }
}

fn seek(path: &Path, whence: i32, at: u64) -> String {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: lseek on a valid open descriptor.
    let r = unsafe { libc::lseek(f.as_raw_fd(), at as i64, whence) };
    if r < 0 {
        format!(
            "errno {}",
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        )
    } else {
        r.to_string()
    }
}

/// Size, blocks and a digest of the content (crc32c of every 64 KiB). A small file
/// (kept inline by kvfs, up to 64 KiB) counts every page up to its size, holes
/// included: its blocks are left out of the comparison and checked on their own.
fn describe(path: &Path) -> String {
    let m = std::fs::metadata(path).unwrap();
    if m.len() <= 64 << 10 {
        let mut data = Vec::new();
        std::fs::File::open(path)
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
        return format!("size {} data {:08x}", m.len(), crc32c::crc32c(&data));
    }
    let mut data = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_end(&mut data)
        .unwrap();
    let digest: Vec<String> = data
        .chunks(64 << 10)
        .map(|c| format!("{:08x}", crc32c::crc32c(c)))
        .collect();
    format!(
        "size {} blocks {} data {}",
        m.len(),
        m.blocks(),
        digest.join(",")
    )
}

const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;

/// The steps, each with its outcome.
fn steps(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut log = |what: &str, v: String| out.push(format!("{what}: {v}"));
    let small = root.join("small");
    std::fs::write(&small, pattern(10_000, 1)).unwrap();
    log("punch small", fallocate(&small, PUNCH, 4096, 4096));
    log("small", describe(&small));
    log(
        "punch small past its end",
        fallocate(&small, PUNCH, 8192, 100_000),
    );
    log("small after", describe(&small));
    let blocks = std::fs::metadata(&small).unwrap().blocks();
    log(
        "small blocks at most its pages",
        format!("{}", blocks <= 24),
    );

    let big = root.join("big");
    let mut f = std::fs::File::create(&big).unwrap();
    f.write_all(&pattern(5 << 20, 2)).unwrap();
    f.sync_all().unwrap();
    drop(f);
    log("big", describe(&big));
    // A whole aligned MiB, then ranges that cut extents at both ends.
    log("punch a MiB", fallocate(&big, PUNCH, 1 << 20, 1 << 20));
    log(
        "punch across extents",
        fallocate(&big, PUNCH, (3 << 20) - 8192, 16384),
    );
    log(
        "punch inside one",
        fallocate(&big, PUNCH, (4 << 20) + 4096, 8192),
    );
    log("big punched", describe(&big));
    for at in [
        0,
        1 << 20,
        (1 << 20) + 100,
        2 << 20,
        (3 << 20) - 8192,
        (4 << 20) + 4096,
    ] {
        log(&format!("seek data {at}"), seek(&big, libc::SEEK_DATA, at));
        log(&format!("seek hole {at}"), seek(&big, libc::SEEK_HOLE, at));
    }
    // Writing into a hole fills it again.
    let mut f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start((1 << 20) + 12_345)).unwrap();
    f.write_all(&pattern(70_000, 3)).unwrap();
    drop(f);
    log("big refilled", describe(&big));
    // A whole file punched: size kept, nothing stored.
    let whole = root.join("whole");
    std::fs::write(&whole, pattern(3 << 20, 4)).unwrap();
    log("punch everything", fallocate(&whole, PUNCH, 0, 3 << 20));
    log("whole", describe(&whole));
    let sparse = root.join("sparse");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    log(
        "sparse",
        format!("blocks {}", std::fs::metadata(&sparse).unwrap().blocks()),
    );
    log(
        "collapse",
        fallocate(&big, libc::FALLOC_FL_COLLAPSE_RANGE, 0, 1 << 20),
    );
    log(
        "insert",
        fallocate(&big, libc::FALLOC_FL_INSERT_RANGE, 0, 1 << 20),
    );
    out
}

fn survey(root: &Path) -> Vec<String> {
    ["small", "big", "whole"]
        .iter()
        .map(|n| format!("{n}: {}", describe(&root.join(n))))
        .collect()
}

fn compare(what: &str, kvfs: &[String], tmpfs: &[String]) {
    let diffs: Vec<String> = kvfs
        .iter()
        .zip(tmpfs)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("kvfs  {a}\ntmpfs {b}"))
        .collect();
    assert!(
        diffs.is_empty() && kvfs.len() == tmpfs.len(),
        "{what}: {} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

#[test]
fn punched_holes_match_tmpfs_before_and_after_remount() {
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = mount_tmpfs(&dir.path().join("tmpfs")).expect("tmpfs");
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    let point = dir.path().join("mnt");
    let m = Mount::start(store, &point, &[], &[]);
    let want = steps(&tmpfs.point);
    compare("steps", &steps(m.point()), &want);
    let want = survey(&tmpfs.point);
    compare("survey", &survey(m.point()), &want);
    m.finish();
    let m = Mount::start(store, &point, &[], &[]);
    compare("survey after remount", &survey(m.point()), &want);
    m.finish();
}

#[test]
fn zeroing_a_range_reads_zeros_and_may_grow_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    let point = dir.path().join("mnt");
    let m = Mount::start(store, &point, &[], &[]);
    for (name, len) in [("small", 20_000usize), ("big", 3 << 20)] {
        let p = m.point().join(name);
        let mut want = pattern(len, 5);
        std::fs::write(&p, &want).unwrap();
        let zero = libc::FALLOC_FL_ZERO_RANGE;
        assert_eq!(fallocate(&p, zero, 1000, 5000), "ok");
        want[1000..6000].fill(0);
        // Past the end: the file grows, unless the size is kept.
        assert_eq!(
            fallocate(&p, zero | libc::FALLOC_FL_KEEP_SIZE, len as u64 - 10, 100),
            "ok"
        );
        want[len - 10..].fill(0);
        assert_eq!(fallocate(&p, zero, len as u64 - 10, 100), "ok");
        want.resize(len + 90, 0);
        assert!(std::fs::read(&p).unwrap() == want, "{name}");
    }
    m.finish();
    let m = Mount::start(store, &point, &[], &[]);
    for (name, len) in [("small", 20_000usize), ("big", 3 << 20)] {
        let mut want = pattern(len, 5);
        want[1000..6000].fill(0);
        want[len - 10..].fill(0);
        want.resize(len + 90, 0);
        assert!(
            std::fs::read(m.point().join(name)).unwrap() == want,
            "{name}"
        );
    }
    m.finish();
}

/// `kvfs stats --json` of a local store: (live bytes, stored bytes).
fn live_and_stored(store: &str) -> (u64, u64) {
    let out = std::process::Command::new(crate::common::mount::KVFS)
        .args(["stats", store, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["live_bytes"].as_u64().unwrap(),
        v["stored_bytes"].as_u64().unwrap(),
    )
}

/// Punching a hole into a large file writes metadata only, and the extents it
/// frees are garbage that `kvfs gc` gives back.
#[test]
fn a_punched_hole_writes_metadata_only_and_gc_reclaims_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    let point = dir.path().join("mnt");
    let data = pattern(8 << 20, 9);
    let m = Mount::start(store, &point, &[], &[]);
    std::fs::write(m.point().join("image"), &data).unwrap();
    m.finish();
    let (live_before, stored_before) = live_and_stored(store);
    assert!(live_before >= 8 << 20);

    let m = Mount::start(store, &point, &[], &[]);
    let p = m.point().join("image");
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    assert_eq!(fallocate(&p, punch, 1 << 20, 6 << 20), "ok");
    std::fs::File::open(&p).unwrap().sync_all().unwrap();
    m.finish();
    let (live, stored) = live_and_stored(store);
    // A few records and a manifest: nothing near a MiB of data was written.
    assert!(
        stored - stored_before < 64 << 10,
        "punching wrote {} bytes",
        stored - stored_before
    );
    assert!(
        live_before - live >= 6 << 20,
        "{live_before} -> {live} live bytes"
    );

    let gc = std::process::Command::new(crate::common::mount::KVFS)
        .args(["gc", store, "--gc-grace-secs", "0"])
        .output()
        .unwrap();
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    let (_, after_gc) = live_and_stored(store);
    assert!(
        after_gc + (5 << 20) < stored,
        "gc left {after_gc} of {stored} bytes stored"
    );
    let m = Mount::start(store, &point, &[], &[]);
    let mut want = data;
    want[1 << 20..7 << 20].fill(0);
    assert!(std::fs::read(m.point().join("image")).unwrap() == want);
    m.finish();
}
