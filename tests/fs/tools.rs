//! Tools users run on a file system (`cp -a`, `rsync -aHAX`, `tar --xattrs`, `git`)
//! give the same tree in a kvfs mount as in a tmpfs, before and after a remount.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::common::mount::Mount;
use kvfs_testkit::mount::mount_tmpfs;

fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        .output()
        .expect("sh runs");
    assert!(
        out.status.success(),
        "{script} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    // SAFETY: valid C string and buffers of the given sizes.
    let n = unsafe { libc::llistxattr(cp.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        let s = String::from_utf8_lossy(name).to_string();
        if s.starts_with("security.") {
            continue;
        }
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        // SAFETY: as above.
        let len =
            unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        v.truncate(len.max(0) as usize);
        out.push((s, v));
    }
    out.sort();
    out
}

/// Everything a copy should keep, per relative path; hard links as groups. Times of
/// symlinks and special files only with `special_times` (rsync does not keep them,
/// on any file system).
fn tree_of(root: &Path, special_times: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if m.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_file() {
                let data = std::fs::read(&p).unwrap();
                let sum: u64 = data
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (i as u64 + 1) * *b as u64)
                    .sum();
                format!("file {} sum {sum}", data.len())
            } else {
                format!("special {:o} rdev {}", m.mode() & libc::S_IFMT, m.rdev())
            };
            if !m.is_dir() {
                inodes.entry(m.ino()).or_default().push(rel.clone());
            }
            let timed = m.is_file() || (special_times && !m.is_dir());
            let mtime = if timed {
                format!(" mtime {}.{}", m.mtime(), m.mtime_nsec())
            } else {
                String::new()
            };
            out.push(format!(
                "{rel}: {what} mode {:o} nlink {}{mtime} xattrs {:?}",
                m.permissions().mode() & 0o7777,
                if m.is_dir() { 0 } else { m.nlink() },
                xattrs(&p)
                    .iter()
                    .map(|(n, v)| format!("{n}={}", String::from_utf8_lossy(&v[..v.len().min(16)])))
                    .collect::<Vec<_>>()
            ));
        }
    }
    out.sort();
    let mut links: Vec<String> = inodes
        .into_values()
        .filter(|names| names.len() > 1)
        .map(|mut names| {
            names.sort();
            format!("linked: {}", names.join(" = "))
        })
        .collect();
    links.sort();
    out.extend(links);
    out
}

fn tree(root: &Path) -> Vec<String> {
    tree_of(root, !root.ends_with("rsync"))
}

/// A source tree with what the tools must keep: content small and large, modes,
/// times, symlinks, hard links, a FIFO and extended attributes.
fn make_source(root: &Path) {
    sh(
        root,
        "mkdir -p src/sub/deeper && cd src && printf 'small\\n' > a.txt && \
         head -c 300000 /dev/zero | tr '\\0' 'z' > sub/big.bin && echo deep > sub/deeper/d && \
         chmod 0640 a.txt && chmod 0750 sub && ln -s a.txt link && ln a.txt hard && \
         ln sub/big.bin sub/deeper/big-again && mkfifo sub/pipe && \
         touch -d '2020-02-02 02:02:02.123456789' a.txt sub/big.bin",
    );
    for (file, name, value) in [
        ("src/a.txt", "user.color", &b"blue"[..]),
        ("src/sub/big.bin", "user.big", &[b'x'; 2000][..]),
        ("src/sub", "user.dir", &b"d"[..]),
    ] {
        let p = CString::new(root.join(file).as_os_str().as_bytes()).unwrap();
        let n = CString::new(name).unwrap();
        // SAFETY: valid C strings and a buffer of the given length.
        let r = unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(r, 0, "setxattr {file}");
    }
}

/// The lines that differ (shortened), or nothing.
fn same(got: &[String], want: &[String], what: &str) {
    let short = |s: &String| s.chars().take(300).collect::<String>();
    let diffs: Vec<String> = got
        .iter()
        .zip(want)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("kvfs  {}\ntmpfs {}", short(a), short(b)))
        .collect();
    assert!(
        diffs.is_empty() && got.len() == want.len(),
        "{what}: {} of {} lines differ ({} against {} lines):\n{}",
        diffs.len(),
        want.len(),
        got.len(),
        want.len(),
        diffs.join("\n")
    );
}

fn copy_with_tools(src_root: &Path, dst: &Path) {
    let src = src_root.join("src");
    let s = src.display();
    sh(dst, &format!("cp -a {s} cp-a"));
    sh(dst, &format!("rsync -aHAX {s}/ rsync/"));
    sh(dst, &format!("tar --xattrs --xattrs-include='*' -C {s} -cf - . | (mkdir untar && tar --xattrs --xattrs-include='*' -C untar -xpf -)"));
}

fn git(dir: &Path) -> String {
    sh(
        dir,
        "mkdir repo && cp -r cp-a/a.txt cp-a/sub repo/ && rm -f repo/sub/pipe && cd repo && \
         git init -q && git config user.email t@example.com && git config user.name t && \
         git add -A && git commit -qm first && echo more >> a.txt && git add a.txt && \
         git commit -qm second && git status --porcelain && git log --format=%T && \
         git fsck --no-progress 2>&1",
    )
}

#[test]
fn tools_give_the_tree_they_give_on_tmpfs() {
    for tool in ["git", "rsync", "tar"] {
        if Command::new(tool).arg("--version").output().is_err() {
            panic!("{tool} is needed: apt-get install -y {tool} (.ci/run installs it)");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let source = mount_tmpfs(&dir.path().join("source")).expect("tmpfs");
    make_source(&source.point);
    let reference = mount_tmpfs(&dir.path().join("reference")).expect("tmpfs");
    let store = dir.path().join("store").to_str().unwrap().to_string();
    let point = dir.path().join("mnt");
    let m = Mount::start(&store, &point, &[], &[]);
    copy_with_tools(&source.point, &reference.point);
    copy_with_tools(&source.point, m.point());
    let want: Vec<Vec<String>> = ["cp-a", "rsync", "untar"]
        .iter()
        .map(|d| tree(&reference.point.join(d)))
        .collect();
    same(&want[0], &tree(&source.point.join("src")), "cp -a on tmpfs");
    for (d, w) in ["cp-a", "rsync", "untar"].iter().zip(&want) {
        same(&tree(&m.point().join(d)), w, d);
    }
    let git_want = git(&reference.point);
    assert_eq!(git(m.point()), git_want, "git on kvfs");
    m.finish();
    let m = Mount::start(&store, &point, &[], &[]);
    for (d, w) in ["cp-a", "rsync", "untar"].iter().zip(&want) {
        same(
            &tree(&m.point().join(d)),
            w,
            &format!("{d} after a remount"),
        );
    }
    let status = sh(
        &m.point().join("repo"),
        "git status --porcelain && git fsck --no-progress 2>&1",
    );
    assert_eq!(status, "", "git after a remount");
    m.finish();
}

/// `tar -x` (as root: it also sets each file's times, owner and mode before closing
/// it) uploads each file's content once, and a few records per file: the segments
/// the mount wrote (background GC off, so all are still there) hold the files'
/// bytes once in their puts, at most 400 bytes more per file and directory, and
/// never more than the tarball. For a source-like tree that is at most 1.3 bytes
/// per byte of the files. Both trees read back the same after a remount.
#[test]
fn tar_extract_writes_each_file_once() {
    use kvfs_testkit::extract::{tally_segments, write_source_tree, write_uniform_tree};

    let dir = tempfile::tempdir().unwrap();
    let source = write_source_tree(&dir.path().join("source"), 4 << 20, 26).unwrap();
    assert!(source.files > 100 && source.large_files > 0, "{source:?}");
    let tiny = write_uniform_tree(&dir.path().join("tiny"), 500, 1024, 26).unwrap();
    for (name, tree, bound) in [("source", source, 1.3), ("tiny", tiny, 1.5)] {
        let tarball = dir.path().join(format!("{name}.tar"));
        sh(
            dir.path(),
            &format!("tar -cf {} -C {name} .", tarball.display()),
        );
        let store_dir = dir.path().join(format!("store-{name}"));
        let store = store_dir.to_str().unwrap().to_string();
        let point = dir.path().join(format!("mnt-{name}"));
        let m = Mount::start(&store, &point, &["--no-background-gc"], &[]);
        sh(m.point(), &format!("tar -xf {}", tarball.display()));
        m.finish();

        let tally = tally_segments(&store_dir).unwrap();
        assert_eq!(tally.undecoded, 0, "{name}: {tally:?}");
        let data = tree.file_bytes;
        assert_eq!(
            tally.content_bytes(),
            data,
            "{name}: content bytes put, against the files' bytes: {tally:#?}"
        );
        let records = 400 * (tree.files + tree.dirs + 1);
        let tar_bytes = std::fs::metadata(&tarball).unwrap().len();
        assert!(
            tally.bytes <= data + records && tally.bytes <= tar_bytes,
            "{name}: {} segment bytes for {data} bytes in {} files ({tar_bytes} in the tarball): {tally:#?}",
            tally.bytes,
            tree.files
        );
        assert!(
            tally.bytes as f64 <= bound * data as f64,
            "{name}: {} segment bytes for {data} bytes of files ({:.2}x): {tally:#?}",
            tally.bytes,
            tally.bytes as f64 / data as f64
        );

        let m = Mount::start(&store, &point, &[], &[]);
        sh(m.point(), &format!("tar -df {}", tarball.display()));
        m.finish();
    }
}
