//! A model test through a real mount: random file operations applied to a kvfs mount
//! and to a plain temporary directory, compared after every step and after remounts.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::common::mount::Mount;
use crate::common::Rng;

#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir(u32),
    File(u32, Vec<u8>),
    Link(PathBuf),
}

/// Everything under `root`: kind, permission bits, content or link target.
fn walk(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let perm = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                out.insert(rel, Entry::Link(std::fs::read_link(&path).unwrap()));
            } else if meta.is_dir() {
                out.insert(rel, Entry::Dir(perm));
                stack.push(path);
            } else {
                out.insert(rel, Entry::File(perm, std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

fn errno<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().map(|e| e.raw_os_error().unwrap_or(-1))
}

fn pick(rng: &mut Rng, root: &Path, dirs_only: bool) -> PathBuf {
    let all: Vec<PathBuf> = walk(root)
        .into_iter()
        .filter(|(_, e)| !dirs_only || matches!(e, Entry::Dir(_)))
        .map(|(p, _)| p)
        .collect();
    if all.is_empty() || rng.below(3) == 0 {
        PathBuf::new()
    } else {
        all[rng.below(all.len() as u64) as usize].clone()
    }
}

/// Apply one random operation to `root`; the same `seed` gives the same operation.
fn apply(root: &Path, seed: u64) -> (String, Option<i32>) {
    let mut rng = Rng(seed | 1);
    let dir = pick(&mut rng, root, true);
    let name = format!("n{}", rng.below(5));
    let target = root.join(&dir).join(&name);
    // Never the root itself: renaming or removing the mount point is not a file
    // operation on the mounted tree.
    let any = match pick(&mut rng, root, false) {
        p if p.as_os_str().is_empty() => target.clone(),
        p => root.join(p),
    };
    match rng.below(12) {
        0 | 1 => {
            let len = if rng.below(5) == 0 {
                70_000 + rng.below(90_000)
            } else {
                rng.below(3000)
            };
            let data: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed as u8))
                .collect();
            ("write".into(), errno(std::fs::write(&target, data)))
        }
        2 => {
            let r = std::fs::OpenOptions::new()
                .append(true)
                .open(&any)
                .and_then(|mut f| f.write_all(b"appended"));
            ("append".into(), errno(r))
        }
        3 => {
            let off = rng.below(100_000);
            let r = std::fs::OpenOptions::new()
                .write(true)
                .open(&any)
                .and_then(|mut f| {
                    f.seek(SeekFrom::Start(off))?;
                    f.write_all(&[0xab; 5000])
                });
            ("pwrite".into(), errno(r))
        }
        4 => {
            let len = rng.below(120_000);
            let r = std::fs::OpenOptions::new()
                .write(true)
                .open(&any)
                .and_then(|f| f.set_len(len));
            ("truncate".into(), errno(r))
        }
        5 => ("mkdir".into(), errno(std::fs::create_dir(&target))),
        6 => ("rmdir".into(), errno(std::fs::remove_dir(&any))),
        7 => ("unlink".into(), errno(std::fs::remove_file(&any))),
        8 | 9 => {
            let to = root
                .join(pick(&mut rng, root, true))
                .join(format!("r{}", rng.below(4)));
            ("rename".into(), errno(std::fs::rename(&any, &to)))
        }
        10 => (
            "symlink".into(),
            errno(std::os::unix::fs::symlink(
                format!("t{}", rng.below(9)),
                &target,
            )),
        ),
        _ => {
            let mode = [0o600, 0o644, 0o755, 0o700][rng.below(4) as usize];
            let r = std::fs::symlink_metadata(&any).and_then(|m| {
                if m.file_type().is_symlink() {
                    Ok(())
                } else {
                    std::fs::set_permissions(&any, std::fs::Permissions::from_mode(mode))
                }
            });
            ("chmod".into(), errno(r))
        }
    }
}

#[test]
fn random_operations_match_a_plain_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap().to_string();
    let point = tmp.path().join("mnt");
    let reference = tmp.path().join("ref");
    std::fs::create_dir_all(&reference).unwrap();
    let mut mount = Mount::start(&store, &point, &[], &[]);
    // The two trees start equal, with the same permissions on the root.
    for step in 0..300u64 {
        let seed = step * 7919 + 13;
        let (op_ref, err_ref) = apply(&reference, seed);
        let (op_kv, err_kv) = apply(&point, seed);
        assert_eq!(op_ref, op_kv);
        assert_eq!(
            err_kv, err_ref,
            "step {step}: {op_kv} gave a different result"
        );
        if step % 10 == 9 {
            assert_eq!(walk(&point), walk(&reference), "step {step}: trees differ");
        }
        if step % 75 == 74 {
            let status = mount.unmount();
            assert!(status.success());
            mount = Mount::start(&store, &point, &[], &[]);
            assert_eq!(walk(&point), walk(&reference), "step {step}: after remount");
        }
    }
    assert_eq!(walk(&point), walk(&reference));
    mount.finish();
}
