//! End-to-end tests of the `kvfs` command-line tool: every test runs the real binary
//! against a local directory store or the in-process S3 test server.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use std::ops::Bound;

use kvfs::db::{Db, Options};
use kvfs::fs::Namespace;
use kvfs::store::s3::S3Store;
use kvfs::store::DynStore;
use kvfs_testkit::server::{ServerOptions, TestS3Server};
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

const BUCKET: &str = "kvfs-cli";

/// How to run one `kvfs` command.
#[derive(Default, Clone)]
struct Run {
    args: Vec<String>,
    stdin: Option<Vec<u8>>,
    env: Vec<(String, String)>,
}

impl Run {
    fn new<S: AsRef<str>>(args: &[S]) -> Run {
        Run {
            args: args.iter().map(|a| a.as_ref().to_string()).collect(),
            ..Run::default()
        }
    }

    fn stdin(mut self, data: impl Into<Vec<u8>>) -> Run {
        self.stdin = Some(data.into());
        self
    }

    fn envs(mut self, env: &[(String, String)]) -> Run {
        self.env.extend_from_slice(env);
        self
    }

    /// Run the command to completion (blocking).
    fn output(&self) -> Out {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvfs"));
        cmd.args(&self.args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn kvfs");
        // Feed stdin from a thread so a large value cannot deadlock against a full
        // stdout/stderr pipe.
        let feeder = self.stdin.clone().map(|data| {
            let mut pipe = child.stdin.take().expect("stdin pipe");
            std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            })
        });
        let output = child.wait_with_output().expect("wait for kvfs");
        if let Some(f) = feeder {
            f.join().expect("stdin feeder");
        }
        Out {
            desc: format!("kvfs {}", shorten(&self.args.join(" "))),
            output,
        }
    }

    /// Run the command without blocking the async runtime (for tests whose S3
    /// server runs on that runtime).
    async fn output_async(&self) -> Out {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.output())
            .await
            .expect("kvfs runner task")
    }
}

/// Store keys as files through the namespace over an open engine, durably.
async fn put_files(db: &Db, kvs: impl IntoIterator<Item = (String, Vec<u8>)>) -> Namespace {
    let ns = Namespace::new(db.clone(), (0, 0)).await.unwrap();
    for (k, v) in kvs {
        ns.put_file(k.as_bytes(), &v, (0, 0)).await.unwrap();
    }
    ns.sync_all().await.unwrap();
    ns
}

fn shorten(s: &str) -> String {
    if s.len() <= 200 {
        return s.to_string();
    }
    let mut end = 200;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

struct Out {
    desc: String,
    output: Output,
}

impl Out {
    fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    fn context(&self) -> String {
        format!(
            "{}: exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.desc,
            self.code(),
            shorten(&self.stdout()),
            self.stderr()
        )
    }

    /// Assert success; return stdout.
    #[track_caller]
    fn ok(&self) -> String {
        assert_eq!(self.code(), Some(0), "{}", self.context());
        self.stdout()
    }

    /// Assert failure with exit status `code` and no panic; return stderr.
    #[track_caller]
    fn fails(&self, code: i32) -> String {
        assert_eq!(self.code(), Some(code), "{}", self.context());
        let err = self.stderr();
        assert!(!err.contains("panicked"), "{}", self.context());
        err
    }
}

fn kvfs<S: AsRef<str>>(args: &[S]) -> Out {
    Run::new(args).output()
}

/// A fresh local store location (not yet created) inside its own temp dir.
fn local_store() -> (TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let s = path.to_str().expect("utf-8 temp path").to_string();
    (dir, path, s)
}

/// `key<TAB>value` lines of a scan, as pairs.
fn scan_rows(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('\t').unwrap_or((l, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn scan_keys(stdout: &str) -> Vec<String> {
    stdout.lines().map(str::to_string).collect()
}

/// The value of a `name   value` line of `kvfs stats`.
fn stats_field(stats: &str, name: &str) -> String {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(name).map(|r| r.trim().to_string()))
        .unwrap_or_else(|| panic!("no {name:?} line in stats:\n{stats}"))
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("dir entry");
        if e.file_type().expect("file type").is_file() {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

fn flip_byte(path: &Path, at: usize) {
    let mut data = std::fs::read(path).expect("read file");
    let at = at.min(data.len() - 1);
    data[at] ^= 0x5a;
    std::fs::write(path, data).expect("write file");
}

#[test]
fn put_get_delete_roundtrip() {
    let (_dir, _path, store) = local_store();
    kvfs(&["put", &store, "greeting", "hello world"]).ok();
    assert_eq!(kvfs(&["get", &store, "greeting"]).ok(), "hello world");

    // Overwrite.
    kvfs(&["put", &store, "greeting", "bye"]).ok();
    assert_eq!(kvfs(&["get", &store, "greeting"]).ok(), "bye");

    // An empty value is a value.
    kvfs(&["put", &store, "empty", ""]).ok();
    assert_eq!(kvfs(&["get", &store, "empty"]).ok(), "");

    // Delete, then the key is gone.
    kvfs(&["delete", &store, "greeting"]).ok();
    let err = kvfs(&["get", &store, "greeting"]).fails(1);
    assert!(
        err.contains("not found") && err.contains("greeting"),
        "{err}"
    );
    // Deleting a missing key succeeds (with a note).
    let del = kvfs(&["delete", &store, "greeting"]);
    del.ok();
    assert!(del.stderr().contains("did not exist"), "{}", del.context());
    assert_eq!(kvfs(&["get", &store, "empty"]).ok(), "");

    let fsck = kvfs(&["fsck", &store]).ok();
    assert!(fsck.contains("no problems found"), "{fsck}");
}

#[test]
fn get_missing_key_exits_1_with_message() {
    let (_dir, _path, store) = local_store();
    kvfs(&["put", &store, "present", "1"]).ok();
    let out = kvfs(&["get", &store, "absent"]);
    let err = out.fails(1);
    assert!(out.stdout().is_empty(), "{}", out.context());
    assert!(err.contains("key not found: absent"), "{}", out.context());
}

#[test]
fn value_from_stdin() {
    let (_dir, _path, store) = local_store();
    Run::new(&["put", &store, "from-stdin"])
        .stdin("line one\nline two\n")
        .output()
        .ok();
    assert_eq!(
        kvfs(&["get", &store, "from-stdin"]).ok(),
        "line one\nline two\n"
    );
}

#[test]
fn one_mib_binary_value_from_stdin_roundtrips_exactly() {
    let (_dir, _path, store) = local_store();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut value = vec![0u8; 1 << 20];
    rng.fill(&mut value[..]);
    // Make sure bytes that text handling would mangle are present.
    value[0] = 0;
    value[1] = b'\n';
    value[2] = 0xff;
    value[3] = b'\r';
    Run::new(&["put", &store, "blob"])
        .stdin(value.clone())
        .output()
        .ok();
    let got = kvfs(&["get", &store, "blob"]);
    got.ok();
    assert_eq!(got.output.stdout.len(), value.len());
    assert!(got.output.stdout == value, "value differs after roundtrip");
    let fsck = kvfs(&["fsck", &store]).ok();
    assert!(fsck.contains("no problems found"), "{fsck}");
}

#[test]
fn bad_keys_are_rejected_clearly() {
    let (_dir, path, store) = local_store();
    kvfs(&["put", &store, "ok", "1"]).ok();

    let err = kvfs(&["put", &store, "", "v"]).fails(1);
    assert!(
        err.contains("invalid key") && err.contains("empty"),
        "{err}"
    );
    let err = kvfs(&["get", &store, ""]).fails(1);
    assert!(
        err.contains("invalid key") && err.contains("empty"),
        "{err}"
    );
    let err = kvfs(&["delete", &store, ""]).fails(1);
    assert!(
        err.contains("invalid key") && err.contains("empty"),
        "{err}"
    );

    let long = "k".repeat(5000);
    let err = kvfs(&["put", &store, &long, "v"]).fails(1);
    assert!(
        err.contains("invalid key") && err.contains("5000") && err.contains("255"),
        "{err}"
    );
    let err = kvfs(&["get", &store, &long]).fails(1);
    assert!(err.contains("invalid key") && err.contains("5000"), "{err}");
    // Also from stdin: the key is checked, the value is not silently stored.
    let err = Run::new(&["put", &store, &long])
        .stdin("value")
        .output()
        .fails(1);
    assert!(err.contains("invalid key"), "{err}");

    // Nothing was stored by the refused commands.
    let keys = kvfs(&["scan", &store, "--keys-only"]).ok();
    assert_eq!(scan_keys(&keys), vec!["ok".to_string()]);
    // A refused put on a store that does not exist yet creates nothing.
    let fresh = path.with_file_name("fresh");
    let fresh_s = fresh.to_str().unwrap();
    kvfs(&["put", fresh_s, "", "v"]).fails(1);
    assert!(
        !fresh.join("manifest").exists(),
        "a refused put created a store"
    );
}

#[test]
fn scan_prefix_range_limit_keys_only() {
    let (_dir, _path, store) = local_store();
    let pairs = [
        ("a/1", "va1"),
        ("a/2", "va2"),
        ("a/3", "va3"),
        ("b/1", "vb1"),
        ("b/2", "vb2"),
        ("c", "vc"),
    ];
    for (k, v) in pairs {
        kvfs(&["put", &store, k, v]).ok();
    }
    // Value with a tab and a key with spaces survive as text.
    kvfs(&["put", &store, "d e", "x\ty"]).ok();

    let all = scan_rows(&kvfs(&["scan", &store]).ok());
    let mut want: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.push(("d e".into(), "x\ty".into()));
    assert_eq!(all, want);

    let a = scan_rows(&kvfs(&["scan", &store, "--prefix", "a/"]).ok());
    assert_eq!(a, want[0..3].to_vec());

    let range = scan_rows(&kvfs(&["scan", &store, "--start", "a/2", "--end", "b/2"]).ok());
    assert_eq!(range, want[1..4].to_vec(), "start inclusive, end exclusive");

    let limited = scan_rows(&kvfs(&["scan", &store, "--limit", "2"]).ok());
    assert_eq!(limited, want[0..2].to_vec());

    let keys = scan_keys(&kvfs(&["scan", &store, "--prefix", "b", "--keys-only"]).ok());
    assert_eq!(keys, vec!["b/1".to_string(), "b/2".to_string()]);

    // Prefix combined with start/limit: the tighter bound wins.
    let combined = scan_rows(
        &kvfs(&[
            "scan", &store, "--prefix", "a/", "--start", "a/2", "--limit", "5",
        ])
        .ok(),
    );
    assert_eq!(combined, want[1..3].to_vec());

    // Empty results.
    assert_eq!(kvfs(&["scan", &store, "--prefix", "zzz"]).ok(), "");
    assert_eq!(kvfs(&["scan", &store, "--limit", "0"]).ok(), "");
}

#[test]
fn scan_pages_through_many_keys() {
    // More keys than one scan page (1000) of the CLI, written in one process.
    let (_dir, path, store) = local_store();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = Db::open(path.to_str().unwrap(), Options::default())
            .await
            .unwrap();
        put_files(
            &db,
            (0..2500u32).map(|i| (format!("k{i:05}"), format!("v{i}").into_bytes())),
        )
        .await;
        db.close().await.unwrap();
    });
    let rows = scan_rows(&kvfs(&["scan", &store]).ok());
    assert_eq!(rows.len(), 2500);
    for (i, (k, v)) in rows.iter().enumerate() {
        assert_eq!(k, &format!("k{i:05}"));
        assert_eq!(v, &format!("v{i}"));
    }
    let rows = scan_keys(&kvfs(&["scan", &store, "--keys-only", "--limit", "1500"]).ok());
    assert_eq!(rows.len(), 1500);
    assert_eq!(rows[1499], "k01499");
}

#[test]
fn stats_and_fsck_on_local_store() {
    let (_dir, _path, store) = local_store();
    for i in 0..5 {
        kvfs(&["put", &store, &format!("key{i}"), &"x".repeat(10)]).ok();
    }
    kvfs(&["delete", &store, "key0"]).ok();
    let stats = kvfs(&["stats", &store]).ok();
    assert_eq!(stats_field(&stats, "files"), "4", "{stats}");
    assert_eq!(stats_field(&stats, "directories"), "1", "{stats}");
    // Per file an inode and a directory entry; the root and the superblock.
    assert_eq!(stats_field(&stats, "engine records"), "10", "{stats}");
    // Key and value bytes: entries 4 x 14, inodes 4 x 10 + 4 x 10 content, the
    // root's inode 10, the superblock 2.
    assert_eq!(stats_field(&stats, "live bytes"), "148", "{stats}");
    assert!(
        stats_field(&stats, "lease").starts_with("released by"),
        "{stats}"
    );
    assert!(!stats.contains("foreign objects"), "{stats}");
    let fsck = kvfs(&["fsck", &store]).ok();
    assert!(fsck.contains("no problems found"), "{fsck}");
    assert!(fsck.contains("10 live keys verified"), "{fsck}");
}

/// Flip a byte inside the one stored copy of `needle` among the files under `dir`
/// whose path contains `within`; returns that file's path.
fn flip_in_files(dir: &Path, within: &str, needle: &[u8]) -> PathBuf {
    let hits: Vec<(PathBuf, Vec<u8>, usize)> = kvfs_testkit::fixtures::files_with_bytes(dir)
        .into_iter()
        .filter(|(p, _)| p.to_string_lossy().contains(within))
        .filter_map(|(p, d)| {
            let at = d.windows(needle.len()).position(|w| w == needle)?;
            Some((p, d, at))
        })
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "{:?}",
        hits.iter().map(|h| &h.0).collect::<Vec<_>>()
    );
    let (p, mut d, at) = hits.into_iter().next().unwrap();
    d[at + needle.len() + 2] ^= 0x5a;
    std::fs::write(&p, d).unwrap();
    p
}

#[test]
fn fsck_reports_damage_and_repair_names_the_lost_keys() {
    let (_dir, path, store) = local_store();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let opts = Options {
            segment_bytes: 4096,
            checkpoint_on_close_bytes: 1,
            ..Options::default()
        };
        let db = Db::open(&store, opts).await.unwrap();
        for i in 0..200u32 {
            let k = format!("k{i:03}");
            let v = format!("VAL-{k}-{}", "x".repeat(150));
            db.put(k.as_bytes(), v.as_bytes()).await.unwrap();
        }
        db.close().await.unwrap();
    });
    // A flipped byte in one value, and one in the current checkpoint.
    flip_in_files(&path, "seg", b"VAL-k050-");
    let mut ckpts: Vec<PathBuf> = std::fs::read_dir(path.join("ckpt"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    ckpts.sort();
    let ckpt = ckpts.pop().unwrap();
    let mut data = std::fs::read(&ckpt).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x5a;
    std::fs::write(&ckpt, data).unwrap();

    let out = kvfs(&["fsck", &store]);
    out.fails(1);
    let text = out.stdout();
    let ckpt_name = format!("ckpt/{}", ckpt.file_name().unwrap().to_string_lossy());
    assert!(text.contains(&format!("PROBLEM {ckpt_name}")), "{text}");
    assert!(text.contains("PROBLEM seg/"), "{text}");
    assert!(text.contains("\"k050\""), "{text}");
    assert!(text.contains("kvfs fsck --repair"), "{text}");

    let text = kvfs(&["fsck", "--repair", "--gc-grace-secs", "0", &store]).ok();
    assert!(
        text.contains("lost key k050 (its value was in seg/"),
        "{text}"
    );
    assert!(text.contains("1 keys lost"), "{text}");
    assert!(text.contains("repaired: no problems remain"), "{text}");

    let text = kvfs(&["fsck", &store]).ok();
    assert!(text.contains("no problems found"), "{text}");
    assert!(text.contains("199 live keys verified"), "{text}");
    let text = kvfs(&["fsck", "--repair", "--gc-grace-secs", "0", &store]).ok();
    assert!(text.contains("nothing to repair"), "{text}");
    let text = kvfs(&["fsck", &store]).ok();
    assert!(text.contains("no problems found"), "{text}");
}

#[test]
fn repair_of_a_file_system_store_names_the_inode_and_frees_the_name() {
    let (_dir, path, store) = local_store();
    for i in 0..5 {
        let v = format!("CONTENT-{i}-{}", "y".repeat(100));
        kvfs(&["put", &store, &format!("f{i}"), &v]).ok();
    }
    flip_in_files(&path, "seg", b"CONTENT-3-");
    assert!(kvfs(&["get", &store, "f3"])
        .fails(1)
        .contains("corrupt object seg/"));
    let text = kvfs(&["fsck", "--repair", "--gc-grace-secs", "0", &store]).ok();
    assert!(
        text.contains("attributes and small-file content) (its value was in seg/"),
        "{text}"
    );
    assert!(text.contains("1 keys lost"), "{text}");
    assert!(text.contains("removed the name f3 of lost inode"), "{text}");
    let rows = scan_keys(&kvfs(&["scan", &store, "--keys-only"]).ok());
    assert_eq!(rows, vec!["f0", "f1", "f2", "f4"]);
    // The name whose inode record was lost is gone too.
    let names = || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let db = Db::open(&store, Options::read_only()).await.unwrap();
            let ns = Namespace::new(db, (0, 0)).await.unwrap();
            let root = kvfs::fs::keys::ROOT_INO;
            let names: Vec<String> = ns
                .readdir(root)
                .await
                .unwrap()
                .into_iter()
                .map(|e| String::from_utf8_lossy(&e.name).into_owned())
                .collect();
            names
        })
    };
    assert_eq!(names(), vec!["f0", "f1", "f2", "f4"]);
    // The name is free again.
    kvfs(&["put", &store, "f3", "new"]).ok();
    assert_eq!(kvfs(&["get", &store, "f3"]).ok(), "new");
    assert!(kvfs(&["fsck", &store]).ok().contains("no problems found"));
    assert_eq!(
        kvfs(&["get", &store, "f4"]).ok(),
        format!("CONTENT-4-{}", "y".repeat(100))
    );
}

#[test]
fn file_urls_work() {
    let (_dir, path, _store) = local_store();
    let url = format!("file://{}", path.display());
    kvfs(&["put", &url, "k", "via url"]).ok();
    assert_eq!(kvfs(&["get", &url, "k"]).ok(), "via url");
    // The same store, named by its plain path.
    assert_eq!(kvfs(&["get", path.to_str().unwrap(), "k"]).ok(), "via url");
    let rows = scan_rows(&kvfs(&["scan", &url]).ok());
    assert_eq!(rows, vec![("k".to_string(), "via url".to_string())]);
    kvfs(&["stats", &url]).ok();
    kvfs(&["fsck", &url]).ok();
    kvfs(&["delete", &url, "k"]).ok();
    kvfs(&["get", &url, "k"]).fails(1);
}

#[test]
fn bad_urls_fail_clearly() {
    for cmd in [
        vec!["put", "http://x", "k", "v"],
        vec!["get", "http://x", "k"],
        vec!["scan", "http://x"],
        vec!["stats", "http://x"],
        vec!["fsck", "http://x"],
    ] {
        let err = kvfs(&cmd).fails(1);
        assert!(
            err.contains("http://x") && err.contains("unsupported store URL"),
            "{cmd:?}: {err}"
        );
    }
    let err = kvfs(&["get", "file://relative/path", "k"]).fails(1);
    assert!(err.contains("absolute path"), "{err}");
    let err = kvfs(&["get", "s3:///prefix", "k"]).fails(1);
    assert!(err.contains("missing bucket name"), "{err}");
}

#[test]
fn reading_a_store_that_does_not_exist_fails_clearly() {
    let (_dir, path, store) = local_store();
    for cmd in [
        vec!["get", &store, "k"],
        vec!["scan", &store],
        vec!["stats", &store],
        vec!["fsck", &store],
    ] {
        let err = kvfs(&cmd).fails(1);
        assert!(err.contains("no kvfs store"), "{cmd:?}: {err}");
    }
    // A file where the store directory should be.
    let file = path.with_file_name("plain-file");
    std::fs::write(&file, "not a directory").unwrap();
    let err = kvfs(&["put", file.to_str().unwrap(), "k", "v"]).fails(1);
    assert!(err.contains("not a directory"), "{err}");
}

#[test]
fn fsck_finds_a_corrupt_segment_in_the_log_tail() {
    let (_dir, path, store) = local_store();
    for i in 0..3 {
        kvfs(&["put", &store, &format!("k{i}"), &"v".repeat(100)]).ok();
    }
    kvfs(&["fsck", &store]).ok();
    let segs = files_under(&path.join("seg"));
    assert!(!segs.is_empty());
    // Corrupt the middle of the first data segment (replayed at open).
    let victim = &segs[0];
    let len = std::fs::metadata(victim).unwrap().len() as usize;
    flip_byte(victim, len / 2);
    let name = victim.file_name().unwrap().to_str().unwrap().to_string();
    let out = kvfs(&["fsck", &store]);
    out.fails(1);
    let all = format!("{}{}", out.stdout(), out.stderr());
    assert!(all.contains(&name), "message does not name {name}: {all}");
    // Reads of the damaged store fail clearly too, rather than returning bad data.
    let out = kvfs(&["get", &store, "k0"]);
    let err = out.fails(1);
    assert!(err.contains(&name), "{err}");
}

#[test]
fn fsck_finds_a_corrupt_segment_covered_by_a_checkpoint() {
    let (_dir, path, store) = local_store();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = Db::open(&store, Options::default()).await.unwrap();
        put_files(
            &db,
            (0..20u32).map(|i| (format!("k{i:02}"), vec![b'v'; 200])),
        )
        .await;
        db.sync().await.unwrap();
        db.checkpoint().await.unwrap();
        db.close().await.unwrap();
    });
    kvfs(&["fsck", &store]).ok();
    let segs = files_under(&path.join("seg"));
    // The first segment holds the values; the checkpoint points into it, so the store
    // opens without reading it and only fsck's own checks can find the damage.
    let victim = &segs[0];
    let len = std::fs::metadata(victim).unwrap().len() as usize;
    flip_byte(victim, len / 2);
    let name = victim.file_name().unwrap().to_str().unwrap().to_string();
    let out = kvfs(&["fsck", &store]);
    out.fails(1);
    let stdout = out.stdout();
    assert!(
        stdout.contains("PROBLEM") && stdout.contains(&name),
        "{}",
        out.context()
    );
    assert!(stdout.contains("problems found"), "{}", out.context());
}

#[test]
fn fsck_finds_a_foreign_file() {
    let (_dir, path, store) = local_store();
    kvfs(&["put", &store, "k", "v"]).ok();
    kvfs(&["fsck", &store]).ok();
    std::fs::write(path.join("notes.txt"), "my notes").unwrap();
    let out = kvfs(&["fsck", &store]);
    out.fails(1);
    assert!(
        out.stdout().contains("PROBLEM notes.txt") && out.stdout().contains("foreign"),
        "{}",
        out.context()
    );
    let stats = kvfs(&["stats", &store]).ok();
    assert!(stats.contains("foreign objects  1"), "{stats}");
    // The data itself is still readable.
    assert_eq!(kvfs(&["get", &store, "k"]).ok(), "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_writer_on_a_local_store_is_refused_naming_the_holder() {
    let (_dir, _path, store) = local_store();
    let db = Db::open(&store, Options::default()).await.unwrap();
    put_files(&db, [("held".to_string(), b"1".to_vec())]).await;

    let out = Run::new(&["put", &store, "k", "v"]).output_async().await;
    let err = out.fails(1);
    let me = format!("pid {}", std::process::id());
    assert!(err.contains("another writer") && err.contains(&me), "{err}");
    let out = Run::new(&["delete", &store, "held"]).output_async().await;
    let err = out.fails(1);
    assert!(err.contains(&me), "{err}");
    // Readers are not refused and see the synced data.
    let out = Run::new(&["get", &store, "held"]).output_async().await;
    assert_eq!(out.ok(), "1");

    db.close().await.unwrap();
    // Once the writer is gone, CLI writes work again.
    Run::new(&["put", &store, "k", "v"])
        .output_async()
        .await
        .ok();
    let out = Run::new(&["scan", &store]).output_async().await;
    assert_eq!(out.ok(), "held\t1\nk\tv\n");
}

/// The in-process S3 server, with one bucket, and the environment a `kvfs` child
/// needs to reach it.
struct S3 {
    server: TestS3Server,
    _root: TempDir,
}

impl S3 {
    async fn start() -> S3 {
        let root = tempfile::tempdir().expect("tempdir");
        let server = TestS3Server::start(root.path(), ServerOptions::default())
            .await
            .expect("start S3 test server");
        server.create_bucket(BUCKET).expect("create bucket");
        S3 {
            server,
            _root: root,
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        self.server
            .client_env()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    async fn run<S: AsRef<str>>(&self, args: &[S]) -> Out {
        Run::new(args).envs(&self.env()).output_async().await
    }

    fn store(&self, prefix: &str) -> DynStore {
        Arc::new(S3Store::from_client(self.server.client(), BUCKET, prefix))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_roundtrip() {
    let s3 = S3::start().await;
    let url = format!("s3://{BUCKET}/cli/roundtrip");
    s3.run(&["put", &url, "a/1", "one"]).await.ok();
    s3.run(&["put", &url, "a/2", "two"]).await.ok();
    s3.run(&["put", &url, "b", "bee"]).await.ok();
    let out = Run::new(&["put", &url, "stdin"])
        .envs(&s3.env())
        .stdin("from stdin")
        .output_async()
        .await;
    out.ok();

    assert_eq!(s3.run(&["get", &url, "a/2"]).await.ok(), "two");
    assert_eq!(s3.run(&["get", &url, "stdin"]).await.ok(), "from stdin");
    let err = s3.run(&["get", &url, "nope"]).await.fails(1);
    assert!(err.contains("key not found"), "{err}");

    let rows = scan_rows(&s3.run(&["scan", &url, "--prefix", "a/"]).await.ok());
    assert_eq!(
        rows,
        vec![
            ("a/1".to_string(), "one".to_string()),
            ("a/2".to_string(), "two".to_string())
        ]
    );
    s3.run(&["delete", &url, "a/1"]).await.ok();
    let keys = scan_keys(&s3.run(&["scan", &url, "--keys-only"]).await.ok());
    assert_eq!(keys, vec!["a/2", "b", "stdin"]);

    let stats = s3.run(&["stats", &url]).await.ok();
    assert_eq!(stats_field(&stats, "store"), url, "{stats}");
    assert_eq!(stats_field(&stats, "files"), "3", "{stats}");
    assert_eq!(stats_field(&stats, "directories"), "2", "{stats}");
    // Per file or directory an inode and an entry (a/2, b, stdin, a); the root and
    // the superblock.
    assert_eq!(stats_field(&stats, "engine records"), "10", "{stats}");
    let fsck = s3.run(&["fsck", &url]).await.ok();
    assert!(fsck.contains("no problems found"), "{fsck}");

    // The engine in this process sees the same data.
    let db = Db::open_store(s3.store("cli/roundtrip"), Options::read_only())
        .await
        .unwrap();
    let ns = Namespace::new(db, (0, 0)).await.unwrap();
    assert_eq!(ns.get_file(b"b").await.unwrap().unwrap(), b"bee");
    assert_eq!(ns.scan_files(Bound::Unbounded, None, 10).unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_missing_bucket_is_named() {
    let s3 = S3::start().await;
    let url = "s3://no-such-bucket-here/p";
    for cmd in [
        vec!["put", url, "k", "v"],
        vec!["get", url, "k"],
        vec!["scan", url],
        vec!["stats", url],
        vec!["fsck", url],
    ] {
        let out = s3.run(&cmd).await;
        let err = out.fails(1);
        assert!(
            err.contains("no-such-bucket-here"),
            "{cmd:?} does not name the bucket: {}",
            out.context()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_second_writer_is_refused_naming_the_holder() {
    let s3 = S3::start().await;
    let url = format!("s3://{BUCKET}/held");
    let db = Db::open_store(s3.store("held"), Options::default())
        .await
        .unwrap();
    let ns = put_files(&db, [("k".to_string(), b"first".to_vec())]).await;

    let out = s3.run(&["put", &url, "k", "second"]).await;
    let err = out.fails(1);
    let holder = format!(
        "{} pid {}",
        kvfs::db::lease::this_host(),
        std::process::id()
    );
    assert!(
        err.contains("another writer") && err.contains(&holder),
        "message does not name {holder:?}: {}",
        out.context()
    );
    // The refused write changed nothing.
    assert_eq!(s3.run(&["get", &url, "k"]).await.ok(), "first");
    assert_eq!(ns.get_file(b"k").await.unwrap().unwrap(), b"first");
    ns.put_file(b"k2", b"still writable", (0, 0)).await.unwrap();
    ns.sync_all().await.unwrap();
    db.close().await.unwrap();

    s3.run(&["put", &url, "k", "second"]).await.ok();
    assert_eq!(s3.run(&["get", &url, "k"]).await.ok(), "second");
    assert_eq!(s3.run(&["get", &url, "k2"]).await.ok(), "still writable");
    let fsck = s3.run(&["fsck", &url]).await.ok();
    assert!(fsck.contains("no problems found"), "{fsck}");
}

/// Read-only commands on a path where no store exists fail and create nothing.
#[test]
fn read_only_commands_do_not_create_a_local_store() {
    let (_dir, path, store) = local_store();
    for cmd in [
        vec!["get", &store, "k"],
        vec!["scan", &store],
        vec!["stats", &store],
        vec!["fsck", &store],
    ] {
        kvfs(&cmd).fails(1);
        assert!(!path.exists(), "{cmd:?} created {}", path.display());
    }
}

/// The store of the report: one tiny live key beside deleted and overwritten data.
/// `kvfs gc` ends; run again, it rewrites nothing and deletes no data object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_gc_ends_and_a_second_gc_does_nothing() {
    let s3 = S3::start().await;
    let url = format!("s3://{BUCKET}/cli/gc-small");
    s3.run(&["put", &url, "k", "v"]).await.ok();
    s3.run(&["put", &url, "other", "w"]).await.ok();
    s3.run(&["delete", &url, "other"]).await.ok();
    let two_kb = "x".repeat(2000);
    for i in 0..50 {
        s3.run(&["put", &url, &format!("p{i:02}"), &two_kb])
            .await
            .ok();
    }
    let first = s3.run(&["gc", &url, "--gc-grace-secs", "0"]).await.ok();
    assert!(first.contains("rewritten into"), "{first}");
    let store = s3.store("cli/gc-small");
    let after_first = objects_with_etags(&store).await;
    for _ in 0..2 {
        let again = s3.run(&["gc", &url, "--gc-grace-secs", "0"]).await;
        let summary = again.ok();
        assert_eq!(
            summary.trim(),
            "nothing to clean: the store is unchanged",
            "a second gc did work:\n{}",
            again.stderr()
        );
        assert_eq!(objects_with_etags(&store).await, after_first);
    }
    // The same for compaction: the first compacts, a second finds nothing to do.
    s3.run(&["compact", &url, "--gc-grace-secs", "0"])
        .await
        .ok();
    let compacted = objects_with_etags(&store).await;
    let again = s3
        .run(&["compact", &url, "--gc-grace-secs", "0"])
        .await
        .ok();
    assert_eq!(again.trim(), "nothing to compact: the store is unchanged");
    assert_eq!(objects_with_etags(&store).await, compacted);
    // Commands that only read write nothing, not even a lease.
    assert_eq!(s3.run(&["get", &url, "k"]).await.ok(), "v");
    let keys = scan_keys(&s3.run(&["scan", &url, "--keys-only"]).await.ok());
    assert_eq!(keys.len(), 51);
    let fsck = s3.run(&["fsck", &url]).await.ok();
    assert!(fsck.contains("no problems found"), "{fsck}");
    s3.run(&["stats", &url]).await.ok();
    s3.run(&["stats", &url, "--json"]).await.ok();
    assert_eq!(objects_with_etags(&store).await, compacted);
}

/// Every object of a store with its etag (a rewritten object gets a new one).
async fn objects_with_etags(store: &DynStore) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for o in store.list("").await.expect("list store") {
        let etag = store.get(&o.key).await.expect("get object").etag;
        out.push((o.key, etag));
    }
    out.sort();
    out
}

/// `kvfs gc` and `kvfs compact` refuse a path where no store exists, creating
/// nothing.
#[test]
fn gc_does_not_create_a_store() {
    let (_dir, path, store) = local_store();
    for cmd in ["gc", "compact"] {
        let err = kvfs(&[cmd, &store]).fails(1);
        assert!(err.contains("no kvfs store"), "{err}");
        assert!(!path.exists(), "{cmd} created {}", path.display());
    }
}

#[test]
fn settings_that_cannot_work_are_refused_naming_the_flag() {
    let (dir, path, store) = local_store();
    let err = kvfs(&["put", &store, "k", "v", "--segment-bytes", "10"]).fails(2);
    assert!(
        err.contains("invalid --segment-bytes: must be at least 4096 (got 10)"),
        "{err}"
    );
    let err = kvfs(&["put", &store, "k", "v", "--flush-interval-ms", "0"]).fails(2);
    assert!(err.contains("invalid --flush-interval-ms"), "{err}");
    let err = kvfs(&["gc", &store, "--round-bytes", "0"]).fails(2);
    assert!(err.contains("invalid --round-bytes"), "{err}");
    // Refused before anything starts: no store was created, no mount attempted.
    let point = dir.path().join("m");
    std::fs::create_dir_all(&point).unwrap();
    let err = kvfs(&[
        "mount",
        &store,
        point.to_str().unwrap(),
        "--max-unflushed-bytes",
        "0",
    ])
    .fails(2);
    assert!(err.contains("invalid --max-unflushed-bytes"), "{err}");
    assert!(!path.exists(), "a refused command created the store");
}

#[test]
fn stats_json_has_the_same_figures_as_the_text() {
    let tmp = tempfile::tempdir().unwrap();
    let s = tmp.path().join("store");
    let s = s.to_str().unwrap();
    Run::new(&["put", s, "a/b", "hello"]).output().ok();
    let text = Run::new(&["stats", s]).output().ok();
    let json: serde_json::Value =
        serde_json::from_str(&Run::new(&["stats", s, "--json"]).output().ok()).unwrap();
    assert_eq!(json["store"], s);
    assert_eq!(
        json["engine_records"].to_string(),
        stats_field(&text, "engine records")
    );
    assert_eq!(json["files"].to_string(), stats_field(&text, "files"));
    assert_eq!(
        json["directories"].to_string(),
        stats_field(&text, "directories")
    );
    assert_eq!(
        (json["symlinks"].as_u64(), json["special_files"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(json["requests"]["errors"], 0);
    assert_eq!(
        json["manifest"].to_string(),
        stats_field(&text, "manifest ")
    );
    assert_eq!(json["lease"]["released"], true);
    assert_eq!(json["lease"]["label"], "kvfs put");
    assert!(json["stored_bytes"].as_u64().unwrap() > 0);
    assert!(json["requests"]["estimated_usd"].as_f64().is_some());
}

/// `kvfs stats` counts what a user means by files: after the quick start (two keys
/// stored with `put` and one file written), 3 files in 4 directories, the root
/// included; the engine's records, several per file, are labelled as such.
#[test]
fn stats_count_files_and_directories_apart_from_engine_records() {
    let (_dir, _path, store) = local_store();
    kvfs(&["put", &store, "greeting", "hello, kvfs"]).ok();
    kvfs(&[
        "put",
        &store,
        "users/42/profile.json",
        "{\"name\": \"Ada\"}",
    ])
    .ok();
    kvfs(&["put", &store, "a/b", "hello"]).ok();
    let text = kvfs(&["stats", &store]).ok();
    assert_eq!(stats_field(&text, "files"), "3", "{text}");
    assert_eq!(stats_field(&text, "directories"), "4", "{text}");
    let records: u64 = stats_field(&text, "engine records").parse().unwrap();
    // An inode and a name per file and directory (but the root's name), the
    // superblock.
    assert_eq!(records, 3 * 2 + 4 * 2 - 1 + 1, "{text}");
    assert!(!text.lines().any(|l| l.starts_with("keys")), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&kvfs(&["stats", &store, "--json"]).ok()).unwrap();
    assert_eq!(json["files"], 3);
    assert_eq!(json["directories"], 4);
    assert_eq!(json["engine_records"], records);
    assert!(json.get("keys").is_none(), "{json}");
}
