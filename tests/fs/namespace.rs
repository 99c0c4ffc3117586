//! The namespace without FUSE: random file-system operations applied to kvfs and to a
//! simple in-memory tree, compared after every step and across reopen.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::common::{memory, small_opts, Rng};
use kvfs::db::{Db, Options};
use kvfs::fs::keys::ROOT_INO;
use kvfs::fs::{FsError, Kind, Namespace, RenameFlags, SetAttr};
use kvfs::store::DynStore;

const OWNER: (u32, u32) = (1000, 1000);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File(Vec<u8>),
    Link(Vec<u8>),
}

type Model = BTreeMap<Vec<u8>, Node>;

/// Resolve a path to an inode by looking up each component from the root.
async fn resolve(ns: &Namespace, path: &[u8]) -> Result<u64, FsError> {
    let mut ino = ROOT_INO;
    if path.is_empty() {
        return Ok(ino);
    }
    for comp in path.split(|b| *b == b'/') {
        ino = ns.lookup(ino, comp).await?.ino;
    }
    Ok(ino)
}

fn parent_and_name(path: &[u8]) -> (Vec<u8>, Vec<u8>) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (path[..i].to_vec(), path[i + 1..].to_vec()),
        None => (Vec::new(), path.to_vec()),
    }
}

/// Everything the namespace shows, walked from the root.
async fn snapshot(ns: &Namespace) -> Model {
    let mut out = Model::new();
    let mut stack = vec![(Vec::new(), ROOT_INO)];
    while let Some((path, ino)) = stack.pop() {
        for e in ns.readdir(ino).await.unwrap() {
            let child = if path.is_empty() {
                e.name.clone()
            } else {
                [&path[..], b"/", &e.name[..]].concat()
            };
            let cino = ns.lookup(ino, &e.name).await.unwrap().ino;
            assert_eq!(cino, e.attr.ino, "readdir and lookup agree on {child:?}");
            match e.attr.kind {
                Kind::Dir => {
                    out.insert(child.clone(), Node::Dir);
                    stack.push((child, cino));
                }
                Kind::File => {
                    ns.open(cino, false).await.unwrap();
                    let data = ns.read(cino, 0, u32::MAX).await.unwrap().to_vec();
                    ns.release(cino).await.unwrap();
                    assert_eq!(data.len() as u64, e.attr.size, "{child:?} size");
                    out.insert(child, Node::File(data));
                }
                Kind::Symlink => {
                    out.insert(child, Node::Link(ns.readlink(cino).await.unwrap()));
                }
                kind => panic!("{child:?}: unexpected {kind:?}"),
            }
        }
    }
    out
}

fn pick_path(rng: &mut Rng, model: &Model, want_dir: bool) -> Vec<u8> {
    let names: Vec<&Vec<u8>> = model
        .iter()
        .filter(|(_, n)| !want_dir || **n == Node::Dir)
        .map(|(k, _)| k)
        .collect();
    let base = if names.is_empty() || rng.below(4) == 0 {
        Vec::new()
    } else {
        names[rng.below(names.len() as u64) as usize].clone()
    };
    let leaf = format!("n{}", rng.below(6)).into_bytes();
    if base.is_empty() || !want_dir {
        if want_dir {
            return leaf;
        }
        return if base.is_empty() { leaf } else { base };
    }
    [&base[..], b"/", &leaf[..]].concat()
}

fn errno_of<T>(r: Result<T, FsError>) -> Option<i32> {
    r.err().map(|e| e.errno())
}

async fn run(store: DynStore, seed: u64, steps: usize) {
    let mut rng = Rng(seed | 1);
    let mut model = Model::new();
    let mut ns = Namespace::new(
        Db::open_store(store.clone(), small_opts()).await.unwrap(),
        OWNER,
    )
    .await
    .unwrap();
    for step in 0..steps {
        let op = rng.below(100);
        match op {
            0..=14 => {
                // mkdir
                let path = pick_path(&mut rng, &model, true);
                let (parent, name) = parent_and_name(&path);
                let want = if model.contains_key(&path) {
                    Some(libc::EEXIST)
                } else if !parent.is_empty() && model.get(&parent) != Some(&Node::Dir) {
                    Some(libc::ENOENT)
                } else {
                    None
                };
                let r = async {
                    let p = resolve(&ns, &parent).await?;
                    ns.mkdir(p, &name, 0o755, OWNER).await
                }
                .await;
                if want.is_none() {
                    model.insert(path.clone(), Node::Dir);
                }
                assert_eq!(errno_of(r), want, "step {step}: mkdir {path:?}");
            }
            15..=39 => {
                // create-or-open, write at an offset, sometimes fsync
                let path = pick_path(&mut rng, &model, true);
                let (parent, name) = parent_and_name(&path);
                if !parent.is_empty() && model.get(&parent) != Some(&Node::Dir) {
                    continue;
                }
                match model.get(&path) {
                    Some(Node::File(_)) | None => {}
                    _ => continue,
                }
                let p = resolve(&ns, &parent).await.unwrap();
                let ino = match ns.lookup(p, &name).await {
                    Ok(a) => a.ino,
                    Err(_) => ns.create(p, &name, 0o644, OWNER).await.unwrap().ino,
                };
                ns.open(ino, false).await.unwrap();
                let size = match rng.below(10) {
                    0 => 100_000 + rng.below(100_000),
                    1 => 5000,
                    _ => 1 + rng.below(3000),
                } as usize;
                let cur = match model.get(&path) {
                    Some(Node::File(d)) => d.clone(),
                    _ => Vec::new(),
                };
                let offset = match rng.below(3) {
                    0 => 0,
                    1 => cur.len() as u64,
                    _ => rng.below(cur.len() as u64 + 10_000),
                };
                let fill = rng.below(250) as u8 + 1;
                let data: Vec<u8> = (0..size).map(|i| fill.wrapping_add(i as u8)).collect();
                ns.write(ino, offset, &data).await.unwrap();
                let mut new = cur;
                let end = offset as usize + size;
                if new.len() < end {
                    new.resize(end, 0);
                }
                new[offset as usize..end].copy_from_slice(&data);
                model.insert(path.clone(), Node::File(new.clone()));
                let back = ns.read(ino, 0, u32::MAX).await.unwrap();
                assert!(back == new, "step {step}: read after write of {path:?}");
                if rng.below(4) == 0 {
                    ns.fsync(ino).await.unwrap();
                }
                ns.release(ino).await.unwrap();
            }
            40..=47 => {
                // truncate
                let Some((path, Node::File(cur))) = model
                    .iter()
                    .find(|(_, n)| matches!(n, Node::File(_)))
                    .map(|(k, v)| (k.clone(), v.clone()))
                else {
                    continue;
                };
                let ino = resolve(&ns, &path).await.unwrap();
                let size = match rng.below(3) {
                    0 => 0,
                    1 => rng.below(cur.len() as u64 + 1),
                    _ => cur.len() as u64 + rng.below(70_000),
                };
                ns.setattr(
                    ino,
                    SetAttr {
                        size: Some(size),
                        ..SetAttr::default()
                    },
                )
                .await
                .unwrap();
                let mut new = cur;
                new.resize(size as usize, 0);
                model.insert(path, Node::File(new));
            }
            48..=57 => {
                // unlink / rmdir
                let Some(path) = model
                    .keys()
                    .nth(rng.below(model.len().max(1) as u64) as usize)
                    .cloned()
                else {
                    continue;
                };
                let (parent, name) = parent_and_name(&path);
                let p = resolve(&ns, &parent).await.unwrap();
                let node = model.get(&path).cloned();
                if node == Some(Node::Dir) {
                    let busy = model
                        .keys()
                        .any(|k| k.starts_with(&[&path[..], b"/"].concat()));
                    let r = ns.rmdir(p, &name).await;
                    if busy {
                        assert_eq!(errno_of(r), Some(libc::ENOTEMPTY), "step {step}");
                    } else {
                        r.unwrap();
                        model.remove(&path);
                    }
                    assert!(errno_of(ns.unlink(p, &name).await).is_some());
                } else {
                    ns.unlink(p, &name).await.unwrap();
                    model.remove(&path);
                }
            }
            58..=71 => {
                // rename (plain, noreplace or exchange)
                if model.is_empty() {
                    continue;
                }
                let src = model
                    .keys()
                    .nth(rng.below(model.len() as u64) as usize)
                    .cloned()
                    .unwrap();
                let dst = pick_path(&mut rng, &model, true);
                let (sp, sn) = parent_and_name(&src);
                let (dp, dn) = parent_and_name(&dst);
                if !dp.is_empty() && model.get(&dp) != Some(&Node::Dir) {
                    continue;
                }
                let flags = match rng.below(4) {
                    0 => RenameFlags {
                        noreplace: true,
                        exchange: false,
                    },
                    1 => RenameFlags {
                        noreplace: false,
                        exchange: true,
                    },
                    _ => RenameFlags::default(),
                };
                let spi = resolve(&ns, &sp).await.unwrap();
                let dpi = resolve(&ns, &dp).await.unwrap();
                let r = ns.rename(spi, &sn, dpi, &dn, flags).await;
                let inside = |a: &[u8], b: &[u8]| b.starts_with(&[a, b"/"].concat());
                let src_dir = model.get(&src) == Some(&Node::Dir);
                let dst_node = model.get(&dst).cloned();
                let want = if src == dst {
                    None
                } else if src_dir && inside(&src, &dst) {
                    Some(libc::EINVAL)
                } else if flags.exchange {
                    match &dst_node {
                        None => Some(libc::ENOENT),
                        Some(Node::Dir) if inside(&dst, &src) => Some(libc::EINVAL),
                        _ => None,
                    }
                } else {
                    match (&dst_node, src_dir) {
                        (Some(_), _) if flags.noreplace => Some(libc::EEXIST),
                        (Some(Node::Dir), false) => Some(libc::EISDIR),
                        (Some(Node::File(_)) | Some(Node::Link(_)), true) => Some(libc::ENOTDIR),
                        (Some(Node::Dir), true) if model.keys().any(|k| inside(&dst, k)) => {
                            Some(libc::ENOTEMPTY)
                        }
                        _ => None,
                    }
                };
                assert_eq!(
                    errno_of(r),
                    want,
                    "step {step}: rename {src:?} -> {dst:?} {flags:?}"
                );
                if want.is_none() && src != dst {
                    let moved = |m: &Model, from: &[u8]| -> Vec<(Vec<u8>, Node)> {
                        m.iter()
                            .filter(|(k, _)| *k == from || inside(from, k))
                            .map(|(k, v)| (k[from.len()..].to_vec(), v.clone()))
                            .collect()
                    };
                    let a = moved(&model, &src);
                    let b = moved(&model, &dst);
                    model.retain(|k, _| {
                        !(k == &src || inside(&src, k) || k == &dst || inside(&dst, k))
                    });
                    for (suffix, v) in a {
                        model.insert([&dst[..], &suffix[..]].concat(), v);
                    }
                    if flags.exchange {
                        for (suffix, v) in b {
                            model.insert([&src[..], &suffix[..]].concat(), v);
                        }
                    }
                }
            }
            72..=77 => {
                // symlink
                let path = pick_path(&mut rng, &model, true);
                let (parent, name) = parent_and_name(&path);
                if model.contains_key(&path)
                    || (!parent.is_empty() && model.get(&parent) != Some(&Node::Dir))
                {
                    continue;
                }
                let p = resolve(&ns, &parent).await.unwrap();
                let target = format!("../target{}", rng.below(100)).into_bytes();
                ns.symlink(p, &name, &target, OWNER).await.unwrap();
                model.insert(path, Node::Link(target));
            }
            78..=85 => {
                assert_eq!(snapshot(&ns).await, model, "step {step}: tree");
            }
            86..=92 => {
                // clean remount
                ns.shutdown().await.unwrap();
                ns = Namespace::new(
                    Db::open_store(store.clone(), small_opts()).await.unwrap(),
                    OWNER,
                )
                .await
                .unwrap();
                assert_eq!(snapshot(&ns).await, model, "step {step}: after remount");
            }
            _ => {
                // inode numbers are stable across a remount
                let Some(path) = model.keys().next().cloned() else {
                    continue;
                };
                let before = resolve(&ns, &path).await.unwrap();
                ns.shutdown().await.unwrap();
                ns = Namespace::new(
                    Db::open_store(store.clone(), small_opts()).await.unwrap(),
                    OWNER,
                )
                .await
                .unwrap();
                assert_eq!(
                    resolve(&ns, &path).await.unwrap(),
                    before,
                    "ino of {path:?}"
                );
            }
        }
    }
    assert_eq!(snapshot(&ns).await, model);
    let files = model
        .values()
        .filter(|n| matches!(n, Node::File(_)))
        .count();
    let dirs = model.values().filter(|n| **n == Node::Dir).count();
    eprintln!("seed {seed}: {files} files, {dirs} directories at the end");
    ns.shutdown().await.unwrap();
    let db = Db::open_store(store, Options::read_only()).await.unwrap();
    let report = db.fsck(&mut |_| {}).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.issues);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_model_many_seeds() {
    for seed in 1..=10u64 {
        run(memory().1, seed * 104_729, 250).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_the_kv_api_are_files_at_their_paths() {
    let (_, store) = memory();
    {
        let ns = Namespace::new(
            Db::open_store(store.clone(), small_opts()).await.unwrap(),
            OWNER,
        )
        .await
        .unwrap();
        ns.put_file(b"users/42/profile.json", b"{\"name\":\"Ada\"}", OWNER)
            .await
            .unwrap();
        ns.put_file(b"top", b"x", OWNER).await.unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        ns.put_file(b"users/big.bin", &big, OWNER).await.unwrap();
        ns.shutdown().await.unwrap();
    }
    let ns = Namespace::new(
        Db::open_store(store.clone(), small_opts()).await.unwrap(),
        OWNER,
    )
    .await
    .unwrap();
    let root: Vec<Vec<u8>> = ns
        .readdir(ROOT_INO)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(root, vec![b"top".to_vec(), b"users".to_vec()]);
    let users = resolve(&ns, b"users").await.unwrap();
    assert_eq!(ns.getattr(users).await.unwrap().kind, Kind::Dir);
    let f = resolve(&ns, b"users/42/profile.json").await.unwrap();
    ns.open(f, false).await.unwrap();
    assert_eq!(
        &ns.read(f, 0, 100).await.unwrap()[..],
        b"{\"name\":\"Ada\"}"
    );
    ns.release(f).await.unwrap();
    let big = ns.get_file(b"users/big.bin").await.unwrap().unwrap();
    assert_eq!(big.len(), 3_000_000);
    assert!(big.iter().enumerate().all(|(i, b)| *b == (i % 253) as u8));
    // A file written through the namespace is a key; keys scan in byte order.
    let top = ns
        .create(ROOT_INO, b"hello.txt", 0o600, OWNER)
        .await
        .unwrap()
        .ino;
    ns.open(top, false).await.unwrap();
    ns.write(top, 0, b"hello").await.unwrap();
    ns.release(top).await.unwrap();
    assert_eq!(ns.get_file(b"hello.txt").await.unwrap().unwrap(), b"hello");
    ns.put_file(b"users-list", b"1", OWNER).await.unwrap();
    ns.put_file(b"users0", b"2", OWNER).await.unwrap();
    let keys = |rows: Vec<(Vec<u8>, kvfs::fs::Attr)>| -> Vec<String> {
        rows.into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect()
    };
    let all = keys(ns.scan_files(Bound::Unbounded, None, usize::MAX).unwrap());
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted);
    assert_eq!(
        all,
        [
            "hello.txt",
            "top",
            "users-list",
            "users/42/profile.json",
            "users/big.bin",
            "users0"
        ]
    );
    let within = keys(
        ns.scan_files(Bound::Included(&b"users/"[..]), Some(&b"users0"[..]), 10)
            .unwrap(),
    );
    assert_eq!(within, ["users/42/profile.json", "users/big.bin"]);
    let after = keys(
        ns.scan_files(Bound::Excluded(&b"users/42/profile.json"[..]), None, 2)
            .unwrap(),
    );
    assert_eq!(after, ["users/big.bin", "users0"]);
    // Removing the last file keeps its directory.
    assert!(ns.remove_file(b"users/42/profile.json").await.unwrap());
    assert!(!ns.remove_file(b"users/42/profile.json").await.unwrap());
    let d42 = resolve(&ns, b"users/42").await.unwrap();
    assert!(ns.readdir(d42).await.unwrap().is_empty());
    for bad in [&b"/a"[..], b"a/", b"a//b", b"a/./b", b"..", b""] {
        assert!(ns.put_file(bad, b"x", OWNER).await.is_err(), "{bad:?}");
    }
    ns.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_overwrite_in_a_large_file_writes_about_its_size() {
    let (_, store) = memory();
    // No background checkpoints, whose PUTs would be counted below.
    let opts = Options {
        checkpoint_bytes: u64::MAX,
        ..small_opts()
    };
    let ns = Namespace::new(Db::open_store(store, opts).await.unwrap(), OWNER)
        .await
        .unwrap();
    let ino = ns.create(ROOT_INO, b"big", 0o644, OWNER).await.unwrap().ino;
    ns.open(ino, false).await.unwrap();
    let chunk = vec![7u8; 128 * 1024];
    for i in 0..64u64 {
        ns.write(ino, i * chunk.len() as u64, &chunk).await.unwrap();
    }
    ns.fsync(ino).await.unwrap();
    let before = ns.db().metrics().put_bytes;
    ns.write(ino, 3 * 1024 * 1024 + 100, &[1u8; 4096])
        .await
        .unwrap();
    ns.fsync(ino).await.unwrap();
    let written = ns.db().metrics().put_bytes - before;
    // 4 KiB of data, plus the split extent's records, attributes and segment framing.
    assert!(
        written < 16 * 1024,
        "{written} bytes written for a 4 KiB overwrite"
    );
    let back = ns.read(ino, 3 * 1024 * 1024, 8192).await.unwrap();
    assert_eq!(&back[..100], &[7u8; 100][..]);
    assert_eq!(&back[100..4196], &[1u8; 4096][..]);
    ns.release(ino).await.unwrap();
    ns.shutdown().await.unwrap();
}

/// What `tar -x` does to each file: write it, then set its times, owner and mode
/// while it is open. The content goes to the log once; each attribute change after
/// that writes the attributes alone. The file reads back whole after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_changes_of_a_small_file_do_not_rewrite_its_content() {
    let (_, store) = memory();
    let opts = Options {
        checkpoint_bytes: u64::MAX,
        ..small_opts()
    };
    let ns = Namespace::new(
        Db::open_store(store.clone(), opts.clone()).await.unwrap(),
        OWNER,
    )
    .await
    .unwrap();
    let ino = ns
        .create(ROOT_INO, b"small", 0o600, OWNER)
        .await
        .unwrap()
        .ino;
    ns.fsync(ino).await.unwrap();
    let before = ns.db().metrics().put_bytes;
    ns.open(ino, false).await.unwrap();
    let data: Vec<u8> = (0..60 * 1024u32).map(|i| (i % 251) as u8).collect();
    ns.write(ino, 0, &data).await.unwrap();
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let changes = [
        SetAttr {
            mtime: Some(mtime),
            ..SetAttr::default()
        },
        SetAttr {
            uid: Some(0),
            gid: Some(0),
            ..SetAttr::default()
        },
        SetAttr {
            perm: Some(0o644),
            ..SetAttr::default()
        },
    ];
    for set in changes {
        ns.setattr(ino, set).await.unwrap();
    }
    ns.release(ino).await.unwrap();
    ns.sync_all().await.unwrap();
    let written = ns.db().metrics().put_bytes - before;
    // The content once, plus a few records and segment framing.
    assert!(
        written < data.len() as u64 + 4096,
        "{written} bytes written for a {} byte file and three attribute changes",
        data.len()
    );
    ns.shutdown().await.unwrap();

    let ns = Namespace::new(Db::open_store(store, opts).await.unwrap(), OWNER)
        .await
        .unwrap();
    let attr = ns.getattr(ino).await.unwrap();
    assert_eq!((attr.perm, attr.uid, attr.mtime), (0o644, 0, mtime));
    assert_eq!(&ns.read(ino, 0, 1 << 20).await.unwrap()[..], &data[..]);
    ns.shutdown().await.unwrap();
}

/// An attribute change of a file open with unsaved writes is saved with them: an
/// fsync makes both durable, and a crash before any commit keeps neither (the file
/// is as it was, not new attributes over old content). A change of the names in
/// between keeps the pending change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_changes_with_unsaved_writes_are_saved_with_them() {
    let (_, store) = memory();
    let data = vec![5u8; 3000];
    let (synced, lost) = {
        let ns = Namespace::new(
            Db::open_store(store.clone(), small_opts()).await.unwrap(),
            OWNER,
        )
        .await
        .unwrap();
        let mut inos = Vec::new();
        for name in [&b"synced"[..], b"lost"] {
            let ino = ns.create(ROOT_INO, name, 0o600, OWNER).await.unwrap().ino;
            ns.fsync(ino).await.unwrap();
            ns.open(ino, false).await.unwrap();
            ns.write(ino, 0, &data).await.unwrap();
            let set = SetAttr {
                perm: Some(0o755),
                ..SetAttr::default()
            };
            assert_eq!(ns.setattr(ino, set).await.unwrap().perm, 0o755);
            // A second name writes the stored attributes; the new mode stays pending.
            let mut second = name.to_vec();
            second.extend_from_slice(b"-link");
            assert_eq!(ns.link(ino, ROOT_INO, &second).await.unwrap().perm, 0o755);
            assert_eq!(ns.getattr(ino).await.unwrap().perm, 0o755);
            inos.push(ino);
        }
        ns.fsync(inos[0]).await.unwrap();
        // Crash with both files open.
        ns.db().abandon();
        (inos[0], inos[1])
    };
    kvfs_testkit::fixtures::release_lease(&*store).await;
    let ns = Namespace::new(Db::open_store(store, small_opts()).await.unwrap(), OWNER)
        .await
        .unwrap();
    let a = ns.getattr(synced).await.unwrap();
    assert_eq!((a.perm, a.size), (0o755, data.len() as u64));
    assert_eq!(&ns.read(synced, 0, 1 << 20).await.unwrap()[..], &data[..]);
    assert_eq!(a.nlink, 2);
    let b = ns.getattr(lost).await.unwrap();
    assert_eq!((b.perm, b.size), (0o600, 0));
    ns.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_model_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store: DynStore =
        std::sync::Arc::new(kvfs::store::local::LocalStore::open(dir.path()).unwrap());
    run(store, 77, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlinked_open_files_keep_their_content_until_closed() {
    let (_, store) = memory();
    let db = Db::open_store(store.clone(), small_opts()).await.unwrap();
    let big_data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    {
        let ns = Namespace::new(db, OWNER).await.unwrap();
        for (name, data) in [(&b"small"[..], &b"tiny"[..]), (b"big", &big_data[..])] {
            let ino = ns.create(ROOT_INO, name, 0o644, OWNER).await.unwrap().ino;
            ns.open(ino, false).await.unwrap();
            ns.write(ino, 0, data).await.unwrap();
            ns.release(ino).await.unwrap();
        }
        ns.shutdown().await.unwrap();
    }
    // A fresh mount: nothing is loaded yet.
    let ns = Namespace::new(Db::open_store(store, small_opts()).await.unwrap(), OWNER)
        .await
        .unwrap();
    let small = ns.lookup(ROOT_INO, b"small").await.unwrap().ino;
    let big = ns.lookup(ROOT_INO, b"big").await.unwrap().ino;
    ns.open(small, false).await.unwrap();
    ns.open(big, false).await.unwrap();
    ns.unlink(ROOT_INO, b"small").await.unwrap();
    // Replace "big" by renaming a new file over it.
    let other = ns
        .create(ROOT_INO, b"other", 0o644, OWNER)
        .await
        .unwrap()
        .ino;
    ns.rename(ROOT_INO, b"other", ROOT_INO, b"big", RenameFlags::default())
        .await
        .unwrap();
    assert_eq!(&ns.read(small, 0, 100).await.unwrap()[..], b"tiny");
    assert!(ns.read(big, 0, 400_000).await.unwrap() == big_data);
    ns.release(small).await.unwrap();
    ns.release(big).await.unwrap();
    // The replaced file's extents and inode are gone once its last user closed it.
    let extents = ns
        .db()
        .scan_prefix(&kvfs::fs::keys::extent_prefix(big), 10, true)
        .await
        .unwrap();
    assert!(extents.is_empty(), "{} extents left", extents.len());
    assert!(ns.db().info(&kvfs::fs::keys::inode_key(big)).is_none());
    assert!(ns.db().info(&kvfs::fs::keys::inode_key(small)).is_none());
    assert_eq!(ns.lookup(ROOT_INO, b"big").await.unwrap().ino, other);
    assert!(matches!(
        ns.lookup(ROOT_INO, b"small").await,
        Err(FsError::NotFound)
    ));
    ns.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_keys_outside_the_layout_is_refused_clearly() {
    let (_, store) = memory();
    let db = Db::open_store(store.clone(), small_opts()).await.unwrap();
    // A key written through the engine API (or a layout-1 path key).
    db.put(b"users/42/profile.json", b"{}").await.unwrap();
    let err = match Namespace::new(db.clone(), OWNER).await {
        Ok(_) => panic!("a store with engine keys was mounted"),
        Err(e) => e,
    };
    assert!(matches!(err, FsError::Layout(_)), "{err}");
    assert!(err.to_string().contains("namespace layout"), "{err}");
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_files_written_at_once_buffer_within_the_bound() {
    let (_, store) = memory();
    let mut ns = Namespace::new(Db::open_store(store, small_opts()).await.unwrap(), OWNER)
        .await
        .unwrap();
    let limit = 4 << 20;
    ns.set_file_buffer_limit(limit);
    let ns = std::sync::Arc::new(ns);
    // 64 files open at once, each written 1 MiB in 64 KiB writes, taking turns
    // (each stays below the 8 MiB at which a file commits itself), and 32 small files
    // kept open with their content loaded.
    let piece = 64 * 1024;
    let mut files = Vec::new();
    for f in 0..64u32 {
        let name = format!("big{f}");
        let ino = ns
            .create(ROOT_INO, name.as_bytes(), 0o644, OWNER)
            .await
            .unwrap()
            .ino;
        ns.open(ino, false).await.unwrap();
        files.push(ino);
    }
    let mut small = Vec::new();
    for f in 0..32u32 {
        let name = format!("small{f}");
        let ino = ns
            .create(ROOT_INO, name.as_bytes(), 0o644, OWNER)
            .await
            .unwrap()
            .ino;
        ns.open(ino, false).await.unwrap();
        ns.write(ino, 0, &vec![f as u8; 60_000]).await.unwrap();
        small.push(ino);
    }
    let mut peak = 0;
    for round in 0..16u64 {
        for (i, &ino) in files.iter().enumerate() {
            let data = vec![(i as u64 * 16 + round) as u8; piece];
            ns.write(ino, round * piece as u64, &data).await.unwrap();
            peak = peak.max(ns.file_buffer_bytes());
        }
    }
    assert!(
        peak <= limit,
        "open files buffered {peak} bytes, bound {limit}"
    );
    for (i, &ino) in files.iter().enumerate() {
        for round in [0u64, 7, 15] {
            let back = ns
                .read(ino, round * piece as u64, piece as u32)
                .await
                .unwrap();
            assert!(back.iter().all(|b| *b == (i as u64 * 16 + round) as u8));
        }
        ns.release(ino).await.unwrap();
    }
    for (f, &ino) in small.iter().enumerate() {
        assert_eq!(
            ns.read(ino, 0, 60_000).await.unwrap(),
            vec![f as u8; 60_000]
        );
        ns.release(ino).await.unwrap();
    }
    assert_eq!(ns.file_buffer_bytes(), 0);
    ns.shutdown().await.unwrap();
}

/// A corrupt or hostile inode record claiming a terabyte of inline content: every
/// operation on the file fails with an I/O error instead of sizing a buffer by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_file_claiming_a_terabyte_is_corrupt_not_allocated() {
    let (_, store) = memory();
    let ns = Namespace::new(
        Db::open_store(store.clone(), small_opts()).await.unwrap(),
        OWNER,
    )
    .await
    .unwrap();
    let ino = ns.create(ROOT_INO, b"f", 0o644, OWNER).await.unwrap().ino;
    ns.write(ino, 0, b"small").await.unwrap();
    ns.release(ino).await.unwrap();
    let mut attr = ns.getattr(ino).await.unwrap();
    assert!(!attr.extents);
    attr.size = 1 << 40;
    ns.db()
        .write_batch(&[kvfs::db::BatchOp::PutMeta {
            key: kvfs::fs::keys::inode_key(ino),
            meta: attr.encode(),
            value: b"small".to_vec(),
        }])
        .await
        .unwrap();
    let corrupt = |r: Result<_, FsError>| match r {
        Err(e @ FsError::Corrupt { .. }) => assert_eq!(e.errno(), libc::EIO),
        Err(e) => panic!("expected a corrupt record, got {e}"),
        Ok(_) => panic!("a terabyte inline file was accepted"),
    };
    corrupt(ns.getattr(ino).await.map(drop));
    corrupt(ns.open(ino, false).await.map(drop));
    corrupt(ns.write(ino, 1, b"x").await.map(drop));
    corrupt(ns.read(ino, 0, 4096).await.map(drop));
    // The rest of the namespace is unharmed.
    let other = ns.create(ROOT_INO, b"g", 0o644, OWNER).await.unwrap().ino;
    ns.write(other, 0, b"fine").await.unwrap();
    assert_eq!(&ns.read(other, 0, 16).await.unwrap()[..], b"fine");
    ns.release(other).await.unwrap();
    ns.shutdown().await.unwrap();
}

/// A read of a small file's stored content that a commit overtakes (the file grew
/// into extents meanwhile, so its inode value no longer holds the content) plans
/// again instead of returning the emptied value as zeros.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_read_overtaken_by_a_commit_reads_the_new_content() {
    let (_, store) = memory();
    let ns = std::sync::Arc::new(
        Namespace::new(Db::open_store(store, small_opts()).await.unwrap(), OWNER)
            .await
            .unwrap(),
    );
    let ino = ns.create(ROOT_INO, b"f", 0o644, OWNER).await.unwrap().ino;
    ns.write(ino, 0, &[b'a'; 1000]).await.unwrap();
    ns.release(ino).await.unwrap();
    let pause = ns.pause_next_inline_read();
    let reader = {
        let ns = ns.clone();
        tokio::spawn(async move { ns.read(ino, 0, 1000).await })
    };
    pause.reached.notified().await;
    ns.open(ino, false).await.unwrap();
    ns.write(ino, 0, &vec![b'b'; 100 << 10]).await.unwrap();
    ns.release(ino).await.unwrap();
    pause.resume.notify_one();
    let got = reader.await.unwrap().unwrap();
    assert_eq!(got.len(), 1000);
    assert!(
        got.iter().all(|b| *b == b'a') || got.iter().all(|b| *b == b'b'),
        "neither the old nor the new content: {:?}",
        &got[..16]
    );
    ns.shutdown().await.unwrap();
}

/// A writer's mount lets the kernel keep the pages of a file across opens, except
/// once after a write covered a page only in part: then the next open for reading
/// drops them, so the file is read back whole rather than a page at a time. The
/// access time is then left to the reads that follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_a_write_covered_in_part_are_dropped_once() {
    let (_, store) = memory();
    let ns = Namespace::new(Db::open_store(store, small_opts()).await.unwrap(), OWNER)
        .await
        .unwrap();
    let create = |name: &'static [u8]| {
        let ns = &ns;
        async move { ns.create(ROOT_INO, name, 0o600, OWNER).await.unwrap().ino }
    };
    // tar's 10 KiB writes end inside pages.
    let partial = create(b"partial").await;
    ns.open(partial, false).await.unwrap();
    let block = vec![7u8; 10240];
    ns.write(partial, 0, &block).await.unwrap();
    ns.write(partial, 10240, &block).await.unwrap();
    ns.release(partial).await.unwrap();
    // Whole pages only.
    let whole = create(b"whole").await;
    ns.open(whole, false).await.unwrap();
    ns.write(whole, 0, &vec![1u8; 8192]).await.unwrap();
    ns.release(whole).await.unwrap();

    // An open for writing leaves the hint for the next read.
    ns.open(partial, false).await.unwrap();
    assert!(ns.keep_page_cache(partial, false).keep);
    ns.release(partial).await.unwrap();
    ns.open(partial, false).await.unwrap();
    let first = ns.keep_page_cache(partial, true);
    assert!(!first.keep, "the partly written pages are dropped");
    assert!(
        !first.attributes_changed,
        "reads that reach kvfs update the access time"
    );
    assert_eq!(ns.read(partial, 0, 20480).await.unwrap().len(), 20480);
    ns.release(partial).await.unwrap();
    ns.open(partial, false).await.unwrap();
    assert!(ns.keep_page_cache(partial, true).keep, "once only");
    ns.release(partial).await.unwrap();

    ns.open(whole, false).await.unwrap();
    let kept = ns.keep_page_cache(whole, true);
    assert!(kept.keep);
    assert!(
        kept.attributes_changed,
        "relatime: the first read after a write moves the access time"
    );
    ns.release(whole).await.unwrap();
}
