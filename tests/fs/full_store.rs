//! A mount whose local store's disk fills up: writers get ENOSPC (not EIO) before the
//! disk is full, reading and closing files keeps working, deletes go through, and the
//! mount gives the space back by itself (a checkpoint lets the dead log segments go,
//! GC deletes them), after which writes succeed again. No offline step.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kvfs_testkit::mount::mount_tmpfs_of_size;

use crate::common::mount::Mount;

const FILE: usize = 1 << 20;

fn content(i: usize) -> Vec<u8> {
    (0..FILE).map(|j| (i * 31 + j / 251) as u8).collect()
}

/// Create `path`, write `data` and fsync it; the first error.
fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[test]
fn a_full_disk_gives_enospc_keeps_reads_and_deletes_and_comes_back_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk");
    let _disk = mount_tmpfs_of_size(&disk, 40 << 20).expect("mount a small tmpfs");
    let store = disk.join("store");
    let m = Mount::start(
        store.to_str().unwrap(),
        &tmp.path().join("mnt"),
        &["--gc-grace-secs", "1"],
        &[],
    );
    let dir = m.point().to_path_buf();

    let mut written = Vec::new();
    let err = loop {
        let i = written.len();
        assert!(i < 60, "a 40 MiB disk never filled up");
        match write_synced(&dir.join(format!("f{i:03}")), &content(i)) {
            Ok(()) => written.push(i),
            Err(e) => break e,
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(written.len() >= 20, "only {} files fit", written.len());
    // Still refused, also for a small file.
    let e = write_synced(&dir.join("small"), b"hello").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");

    // Reading works, and so does closing a file opened for reading (cat checks it).
    for &i in &written {
        let out = Command::new("cat")
            .arg(dir.join(format!("f{i:03}")))
            .output()
            .unwrap();
        assert!(out.status.success(), "cat f{i:03}: {:?}", out);
        assert!(out.stdout == content(i), "f{i:03} reads back wrong");
    }

    // Deletes go through, and the mount gives the space back by itself.
    let half = written.len() / 2;
    for &i in &written[..half] {
        std::fs::remove_file(dir.join(format!("f{i:03}"))).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut tries = 0;
    loop {
        tries += 1;
        match write_synced(&dir.join("again"), &content(1000)) {
            Ok(()) => break,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500))
            }
            Err(e) => panic!("after {tries} tries: {e}; daemon log:\n{}", m.log_text()),
        }
    }
    for &i in &written[half..] {
        assert!(std::fs::read(dir.join(format!("f{i:03}"))).unwrap() == content(i));
    }
    m.finish();

    // After a remount everything acknowledged is there, and the deleted files are not.
    let m = Mount::start(store.to_str().unwrap(), &tmp.path().join("mnt"), &[], &[]);
    for &i in &written[..half] {
        assert!(!m.point().join(format!("f{i:03}")).exists());
    }
    for &i in &written[half..] {
        assert!(std::fs::read(m.point().join(format!("f{i:03}"))).unwrap() == content(i));
    }
    assert!(std::fs::read(m.point().join("again")).unwrap() == content(1000));
    m.finish();
}
