//! Compressed and encrypted stores through real mounts: 10 MiB of repetitive text
//! written through a compressed mount takes at most 3 MiB in the store; an
//! encrypted mount round-trips across remounts with no plaintext in any stored byte,
//! and refuses to mount without its key or with another key.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use crate::common::mount::{is_mounted, Mount, KVFS};

/// Bytes of every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    crate::common::files_with_bytes(dir)
        .into_iter()
        .map(|(p, d)| (p.display().to_string(), d))
        .collect()
}

/// Log-like text: the same few line shapes with changing numbers.
fn repetitive_text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 200);
    let mut i = 0u64;
    while out.len() < len {
        writeln!(
            out,
            "2026-11-26T12:{:02}:{:02}Z INFO request {} GET /api/items/{} served in {} ms",
            i / 60 % 60,
            i % 60,
            i,
            i * 7 % 1000,
            i % 97
        )
        .unwrap();
        i += 1;
    }
    out.truncate(len);
    out
}

#[test]
fn ten_mib_of_text_takes_at_most_3_mib_through_a_compressed_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let text = repetitive_text(10 << 20);
    let m = Mount::start(
        store.to_str().unwrap(),
        &tmp.path().join("mnt"),
        &["--compression", "zstd"],
        &[],
    );
    let path = m.point().join("app.log");
    let mut f = std::fs::File::create(&path).unwrap();
    for piece in text.chunks(128 << 10) {
        f.write_all(piece).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    m.finish();
    let stored: usize = files_under(&store).iter().map(|(_, d)| d.len()).sum();
    assert!(
        stored <= 3 << 20,
        "10 MiB of text took {stored} bytes in the store"
    );
    // Mounted again (the store remembers its compression), read back whole.
    let m = Mount::start(store.to_str().unwrap(), &tmp.path().join("mnt"), &[], &[]);
    assert!(std::fs::read(m.point().join("app.log")).unwrap() == text);
    std::fs::write(m.point().join("more.log"), &text[..1 << 20]).unwrap();
    m.finish();
    let stored_after: usize = files_under(&store).iter().map(|(_, d)| d.len()).sum();
    assert!(
        stored_after <= stored + (1 << 20) / 3,
        "{stored} then {stored_after}"
    );
}

fn kvfs(args: &[&str], env: &[(&str, &Path)]) -> std::process::Output {
    let mut cmd = Command::new(KVFS);
    cmd.args(args).env_remove("KVFS_ENCRYPTION_KEY_FILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn an_encrypted_mount_round_trips_and_refuses_a_missing_or_wrong_key() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let store_s = store.to_str().unwrap();
    let key = tmp.path().join("key");
    let other = tmp.path().join("other-key");
    std::fs::write(&key, [0x5au8; 32]).unwrap();
    std::fs::write(&other, "11".repeat(32) + "\n").unwrap();
    let marker = b"PLAINTEXT-MARKER-of-the-mount";
    let big: Vec<u8> = marker.iter().cycle().take(3 << 20).copied().collect();
    let env = [("KVFS_ENCRYPTION_KEY_FILE", key.display().to_string())];
    let m = Mount::start(store_s, &tmp.path().join("mnt"), &[], &env);
    std::fs::create_dir(m.point().join("secret-dir")).unwrap();
    std::fs::write(m.point().join("secret-dir/small"), marker).unwrap();
    std::fs::write(m.point().join("big"), &big).unwrap();
    m.finish();
    for (name, data) in files_under(&store) {
        assert!(
            !data.windows(marker.len()).any(|w| w == marker),
            "plaintext in {name}"
        );
        assert!(
            !data.windows(10).any(|w| w == b"secret-dir"),
            "a file name in {name}"
        );
    }
    // Without the key, or with another, the mount is refused with a clear message.
    let point = tmp.path().join("mnt2");
    std::fs::create_dir(&point).unwrap();
    let point_s = point.to_str().unwrap();
    let out = kvfs(&["mount", store_s, point_s], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is encrypted") && err.contains("--encryption-key-file"),
        "{err}"
    );
    let out = kvfs(
        &[
            "mount",
            store_s,
            point_s,
            "--encryption-key-file",
            other.to_str().unwrap(),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("wrong encryption key"), "{err}");
    assert!(!is_mounted(&point));
    // A key file that is not a key is a usage error.
    let out = kvfs(
        &[
            "get",
            store_s,
            "big",
            "--encryption-key-file",
            "/etc/hostname",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("32 bytes"));
    // The command line reads it with the key; a second mount shows everything.
    let out = kvfs(
        &["get", store_s, "secret-dir/small"],
        &[("KVFS_ENCRYPTION_KEY_FILE", &key)],
    );
    assert_eq!(
        out.stdout,
        marker,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = Mount::start(store_s, &point, &[], &env);
    assert!(std::fs::read(m.point().join("big")).unwrap() == big);
    assert_eq!(
        std::fs::read(m.point().join("secret-dir/small")).unwrap(),
        marker
    );
    m.finish();
    let out = kvfs(&["fsck", store_s], &[("KVFS_ENCRYPTION_KEY_FILE", &key)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Copy every file under `from` to the same path under `to`, replacing what is there.
fn copy_over(from: &Path, to: &Path) -> Vec<String> {
    let mut copied = Vec::new();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), &target).unwrap();
            copied.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    copied
}

#[test]
fn objects_of_a_plain_store_copied_into_an_encrypted_one_are_refused_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key");
    std::fs::write(&key, [9u8; 32]).unwrap();
    let key_s = key.to_str().unwrap();
    let enc = tmp.path().join("enc");
    let plain = tmp.path().join("plain");
    let (enc_s, plain_s) = (enc.to_str().unwrap(), plain.to_str().unwrap());
    let run = |args: &[&str]| {
        let out = kvfs(args, &[]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = run(&["put", enc_s, "k", "secret", "--encryption-key-file", key_s]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = run(&["put", plain_s, "k", "injected"]);
    assert_eq!(code, Some(0), "{text}");
    // The same segment names in both stores: the plain store's replace the
    // encrypted store's.
    let copied = copy_over(&plain.join("seg"), &enc.join("seg"));
    assert!(!copied.is_empty());
    let (code, text) = run(&["get", enc_s, "k", "--encryption-key-file", key_s]);
    assert_eq!(code, Some(1), "{text}");
    assert!(!text.contains("injected"), "{text}");
    assert!(text.contains("not sealed with this store's key"), "{text}");
    assert!(copied.iter().any(|n| text.contains(n.as_str())), "{text}");
    let (code, text) = run(&["fsck", enc_s, "--encryption-key-file", key_s]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("not sealed with this store's key"), "{text}");
}

#[test]
fn an_object_of_another_store_with_the_same_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key");
    std::fs::write(&key, [5u8; 32]).unwrap();
    let key_s = key.to_str().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    for (store, value) in [(&a, "from a"), (&b, "from b")] {
        let out = kvfs(
            &[
                "put",
                store.to_str().unwrap(),
                "k",
                value,
                "--encryption-key-file",
                key_s,
            ],
            &[],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    copy_over(&a.join("seg"), &b.join("seg"));
    let out = kvfs(
        &[
            "get",
            b.to_str().unwrap(),
            "k",
            "--encryption-key-file",
            key_s,
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("from a"));
    assert!(err.contains("authentication"), "{err}");
}

/// Mount flags of the memory tests: 16 MiB for open files' buffers, 32 MiB
/// unflushed, an 8 MiB cache.
const TIGHT_MEMORY: [&str; 6] = [
    "--file-buffer-bytes",
    "16777216",
    "--max-unflushed-bytes",
    "33554432",
    "--cache-bytes",
    "8388608",
];

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// Many files written at once through a mount stay within the memory the settings
/// give: 96 files of 4 MiB, all open, written in turns (each below the size at
/// which a file commits itself), with 16 MiB for file buffers, 32 MiB unflushed
/// and an 8 MiB cache: the daemon's peak RSS stays far below the 384 MiB written.
#[test]
fn many_files_written_at_once_keep_the_daemon_within_its_memory_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let m = Mount::start(
        store.to_str().unwrap(),
        &tmp.path().join("mnt"),
        &TIGHT_MEMORY,
        &[],
    );
    let base = peak_rss(m.pid());
    let mut files: Vec<std::fs::File> = (0..96)
        .map(|i| std::fs::File::create(m.point().join(format!("f{i:02}"))).unwrap())
        .collect();
    let piece = vec![0x5au8; 128 << 10];
    for _ in 0..32 {
        for f in files.iter_mut() {
            f.write_all(&piece).unwrap();
        }
    }
    let peak = peak_rss(m.pid());
    for f in &files {
        f.sync_all().unwrap();
    }
    drop(files);
    let sizes: Vec<u64> = (0..96)
        .map(|i| {
            std::fs::metadata(m.point().join(format!("f{i:02}")))
                .unwrap()
                .len()
        })
        .collect();
    m.finish();
    assert!(sizes.iter().all(|s| *s == 4 << 20), "{sizes:?}");
    // Settings: 16 + 32 + 8 MiB; allow as much again for copies in flight (a batch
    // being encoded, a segment being written) and the allocator.
    let grew = peak.saturating_sub(base);
    assert!(
        grew < 128 << 20,
        "the daemon grew by {} MiB (from {} MiB) for 384 MiB written",
        grew >> 20,
        base >> 20
    );
}

/// Many files read at once through a mount stay within the same bound: 48 files of
/// 8 MiB, read sequentially in turns after a remount (so every byte comes from the
/// store), with 16 MiB for file buffers (which include extents fetched ahead of
/// readers) and an 8 MiB cache: the daemon does not keep a readahead window per file.
#[test]
fn many_files_read_at_once_keep_the_daemon_within_its_memory_bound() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let point = tmp.path().join("mnt");
    let flags = TIGHT_MEMORY;
    let m = Mount::start(store.to_str().unwrap(), &point, &flags, &[]);
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    for i in 0..48 {
        std::fs::write(m.point().join(format!("f{i:02}")), &data).unwrap();
    }
    m.finish();
    let m = Mount::start(store.to_str().unwrap(), &point, &flags, &[]);
    let base = peak_rss(m.pid());
    let mut files: Vec<std::fs::File> = (0..48)
        .map(|i| std::fs::File::open(m.point().join(format!("f{i:02}"))).unwrap())
        .collect();
    let mut piece = vec![0u8; 128 << 10];
    for round in 0..64usize {
        for f in files.iter_mut() {
            f.read_exact(&mut piece).unwrap();
            let at = round * piece.len();
            assert!(piece == data[at..at + piece.len()]);
        }
    }
    let peak = peak_rss(m.pid());
    drop(files);
    m.finish();
    let grew = peak.saturating_sub(base);
    eprintln!(
        "reading 48 files at once: the daemon grew by {} MiB (from {} MiB)",
        grew >> 20,
        base >> 20
    );
    assert!(
        grew < 128 << 20,
        "the daemon grew by {} MiB (from {} MiB) reading 48 files at once",
        grew >> 20,
        base >> 20
    );
}

/// Directories listed at once stay within a page each: 64 handles open in the middle
/// of listing a directory of 12,000 entries (a copy of the whole listing each would
/// be about 2 MiB per handle), and every listing, read to its end, gives every
/// name once.
#[test]
fn open_directory_handles_hold_a_page_not_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let m = Mount::start(store.to_str().unwrap(), &tmp.path().join("mnt"), &[], &[]);
    let dir = m.point().join("big");
    std::fs::create_dir(&dir).unwrap();
    let names: Vec<String> = (0..12_000).map(|i| format!("entry-{i:06}")).collect();
    for n in &names {
        std::fs::write(dir.join(n), b"").unwrap();
    }
    let base = peak_rss(m.pid());
    let mut handles: Vec<std::fs::ReadDir> = (0..64)
        .map(|_| {
            let mut rd = std::fs::read_dir(&dir).unwrap();
            assert!(rd.next().is_some());
            rd
        })
        .collect();
    let peak = peak_rss(m.pid());
    for (i, rd) in handles.iter_mut().enumerate().take(4) {
        let mut seen: Vec<String> = rd
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        seen.push(String::new());
        assert_eq!(seen.len(), names.len(), "handle {i}");
    }
    drop(handles);
    let mut listed: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    assert_eq!(listed, names);
    m.finish();
    let grew = peak.saturating_sub(base);
    assert!(
        grew < 32 << 20,
        "64 open directory handles grew the daemon by {} MiB",
        grew >> 20
    );
}
