//! The commands behind `kvfs put|get|delete|scan|stats|fsck|gc|compact|mount`.

use std::io::{Read, Write};
use std::ops::Bound;

use kvfs::db::{Db, Error, Options};
use kvfs::fs::{FsError, Namespace};

use super::{Command, MountArgs};

/// The writer a command holds, so that an interrupted command can give its lease
/// back ([`Db::abort`]).
#[derive(Clone, Default)]
pub struct WriterSlot(std::sync::Arc<std::sync::Mutex<Writer>>);

/// What a command knows about the writer it opens.
#[derive(Default)]
enum Writer {
    #[default]
    None,
    /// Being opened: the lease may already be held.
    Opening {
        store: String,
        opts: Box<Options>,
    },
    Open(Db),
}

impl WriterSlot {
    fn set(&self, w: Writer) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = w;
    }

    /// Stop the command's writer at once and give its lease back; a message for the
    /// user, if there was a writer.
    pub async fn abort(&self) -> Option<String> {
        let w = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        let released = match w {
            Writer::None => return None,
            Writer::Opening { store, opts } => Db::release_lease_of_this_process(&store, &opts)
                .await
                .map(|_| ()),
            Writer::Open(db) => db.abort().await,
        };
        Some(match released {
            Ok(()) => "the writer lease is released; what this command wrote but had not \
                       made durable is not stored"
                .to_string(),
            Err(e) => format!("could not release the writer lease: {e}"),
        })
    }
}

/// Open `store` as its writer, recording it in `slot`.
async fn open_writer(
    store: &str,
    mut opts: Options,
    what: &str,
    slot: &WriterSlot,
) -> Result<Db, Error> {
    opts.writer_label = Some(format!("kvfs {what}"));
    slot.set(Writer::Opening {
        store: store.to_string(),
        opts: Box::new(opts.clone()),
    });
    let db = Db::open(store, opts).await?;
    slot.set(Writer::Open(db.clone()));
    Ok(db)
}

/// Run one command; returns the exit status.
pub async fn run(cmd: Command, slot: &WriterSlot) -> Result<i32, Error> {
    match cmd {
        Command::Mount(args) => mount::run(args).await,
        Command::Unmount {
            mountpoint,
            lazy,
            timeout_secs,
        } => {
            let timeout = timeout_secs.map(std::time::Duration::from_secs);
            tokio::task::spawn_blocking(move || super::unmount::run(&mountpoint, lazy, timeout))
                .await
                .map_err(|e| Error::Input(format!("unmount task failed: {e}")))
        }
        Command::Put {
            store,
            key,
            value,
            access,
            tuning,
        } => {
            let value = match value {
                Some(v) => v.into_bytes(),
                // Read on a blocking thread, so a signal can still stop the command.
                None => tokio::task::spawn_blocking(|| {
                    let mut buf = Vec::new();
                    std::io::stdin().read_to_end(&mut buf).map(|_| buf)
                })
                .await
                .map_err(|e| Error::Input(format!("standard input: {e}")))?
                .map_err(|e| Error::Input(format!("standard input: {e}")))?,
            };
            check_key(&key)?;
            let db = open_writer(&store, tuning.options(&access), "put", slot).await?;
            let result = match Namespace::new(db.clone(), process_owner()).await {
                Ok(ns) => match ns.put_file(key.as_bytes(), &value, process_owner()).await {
                    Ok(()) => {
                        log::info!("stored {key:?} ({} bytes); making it durable", value.len());
                        ns.sync_all().await.map_err(|e| key_err(&key, e))
                    }
                    Err(e) => Err(key_err(&key, e)),
                },
                Err(e) => Err(fs_err(e)),
            };
            finish_write(&db, result).await?;
            Ok(0)
        }
        Command::Delete {
            store,
            key,
            access,
            tuning,
        } => {
            check_key(&key)?;
            let db = open_writer(&store, tuning.options(&access), "delete", slot).await?;
            let mut existed = true;
            let result = match Namespace::new(db.clone(), process_owner()).await {
                Ok(ns) => match ns.remove_file(key.as_bytes()).await {
                    Ok(found) => {
                        existed = found;
                        ns.sync_all().await.map_err(|e| key_err(&key, e))
                    }
                    Err(e) => Err(key_err(&key, e)),
                },
                Err(e) => Err(fs_err(e)),
            };
            finish_write(&db, result).await?;
            if !existed {
                eprintln!("kvfs: note: key {key:?} did not exist");
            }
            Ok(0)
        }
        Command::Get { store, key, access } => {
            check_key(&key)?;
            let db = Db::open(&store, access.read_options()).await?;
            let ns = Namespace::new(db, process_owner()).await.map_err(fs_err)?;
            let mut out = std::io::stdout().lock();
            let found = ns
                .read_file(key.as_bytes(), |b| out.write_all(b))
                .await
                .map_err(|e| key_err(&key, e))?;
            out.flush().map_err(stdout_err)?;
            match found {
                Some(_) => Ok(0),
                None => {
                    eprintln!("kvfs: key not found: {key}");
                    Ok(1)
                }
            }
        }
        Command::Scan {
            store,
            prefix,
            start,
            end,
            limit,
            keys_only,
            access,
        } => {
            let db = Db::open(&store, access.read_options()).await?;
            let ns = Namespace::new(db, process_owner()).await.map_err(fs_err)?;
            let limit = limit.unwrap_or(usize::MAX);
            // Combine --prefix with --start/--end: the tighter bound wins.
            let mut lo = start.map(String::into_bytes);
            let mut hi = end.map(String::into_bytes);
            if let Some(p) = prefix {
                let p = p.into_bytes();
                if lo.as_ref().is_none_or(|l| *l < p) {
                    lo = Some(p.clone());
                }
                if let Some(succ) = kvfs::db::prefix_successor(&p) {
                    if hi.as_ref().is_none_or(|h| *h > succ) {
                        hi = Some(succ);
                    }
                }
            }
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            if lo.is_some() && hi.is_some() && lo >= hi {
                // An empty range.
                return Ok(0);
            }
            // Page through the range so memory stays bounded on large stores.
            let mut remaining = limit;
            let mut cursor: Option<Vec<u8>> = None;
            while remaining > 0 {
                let page = remaining.min(1000);
                let from = match &cursor {
                    Some(c) => Bound::Excluded(c.as_slice()),
                    None => lo.as_deref().map_or(Bound::Unbounded, Bound::Included),
                };
                let rows = ns.scan_files(from, hi.as_deref(), page).map_err(fs_err)?;
                let n = rows.len();
                for (k, _) in &rows {
                    out.write_all(k).map_err(stdout_err)?;
                    if !keys_only {
                        out.write_all(b"\t").map_err(stdout_err)?;
                        let mut failed = None;
                        ns.read_file(k, |b| {
                            out.write_all(b)
                                .inspect_err(|e| failed = Some(e.to_string()))
                        })
                        .await
                        .map_err(fs_err)?;
                        if let Some(e) = failed {
                            return Err(Error::Inconsistent(format!(
                                "cannot write to standard output: {e}"
                            )));
                        }
                    }
                    out.write_all(b"\n").map_err(stdout_err)?;
                }
                remaining -= n;
                match rows.into_iter().last() {
                    Some((k, _)) if n == page => cursor = Some(k),
                    _ => break,
                }
            }
            out.flush().map_err(stdout_err)?;
            Ok(0)
        }
        Command::Stats {
            store,
            json,
            access,
        } => {
            let db = Db::open(&store, access.read_options()).await?;
            let mut stats = db.stats().await?;
            stats.files = kvfs::fs::count_files(&db).map_err(fs_err)?;
            if json {
                println!("{:#}", stats.to_json());
            } else {
                println!("{stats}");
            }
            Ok(0)
        }
        Command::Gc {
            store,
            gc,
            access,
            tuning,
        } => {
            let opts = gc.apply(tuning.options(&access));
            gc_command(&store, opts, access.read_options(), false, slot).await
        }
        Command::Compact {
            store,
            gc,
            access,
            tuning,
        } => {
            let opts = gc.apply(tuning.options(&access));
            gc_command(&store, opts, access.read_options(), true, slot).await
        }
        Command::Snapshots { store, access } => {
            let db = Db::open(&store, access.read_options()).await?;
            let list = db.snapshots().await?;
            if list.is_empty() {
                println!("no snapshots (a writer keeps them with --retain-secs)");
                return Ok(0);
            }
            println!(
                "{:>8}  {:<24}  {:<24}  complete",
                "snapshot", "written", "state as of"
            );
            for s in list {
                println!(
                    "{:>8}  {:<24}  {:<24}  {}",
                    s.seq,
                    utc(s.created_unix_ms),
                    utc(s.until_unix_ms),
                    if s.complete { "yes" } else { "no (collected)" }
                );
            }
            Ok(0)
        }
        Command::Fsck {
            store,
            repair,
            lost_keys_file,
            gc_grace_secs,
            access,
            tuning,
        } => {
            if repair {
                let mut opts = tuning.options(&access);
                opts.rebuild_damaged = true;
                opts.gc.background = false;
                opts.gc.grace = std::time::Duration::from_secs(gc_grace_secs);
                return repair_command(&store, opts, lost_keys_file.as_deref(), slot).await;
            }
            // A damaged checkpoint without an exact fallback is reported, and the
            // rest checked from a state rebuilt in memory.
            let mut opts = access.read_options();
            opts.rebuild_damaged = true;
            let db = Db::open(&store, opts).await?;
            let mut shown =
                super::progress::Progress::new("fsck", Some(std::time::Duration::from_secs(1)));
            let report = db.fsck(&mut |msg| shown.step(msg)).await?;
            drop(shown);
            println!(
                "checked {} objects ({} bytes): {} segments, {} runs, {} checkpoints, {} manifests, {} entries; {} live keys verified",
                report.objects,
                report.bytes,
                report.segments,
                report.runs,
                report.checkpoints,
                report.manifests,
                report.entries,
                report.keys_verified
            );
            if report.is_clean() {
                println!("no problems found");
                Ok(0)
            } else {
                for i in &report.issues {
                    println!("PROBLEM {}: {}", i.object, i.problem);
                }
                println!(
                    "{} problems found ({} live keys lost); `kvfs fsck --repair` repairs the store",
                    report.issues.len(),
                    report.lost_keys.len()
                );
                Ok(1)
            }
        }
    }
}

/// `kvfs fsck --repair`: progress on stderr, what was done and every lost key on
/// stdout (or the lost keys in `lost_keys_file`). Exit 0 when the store is
/// consistent afterwards, 1 when problems remain.
async fn repair_command(
    store: &str,
    opts: Options,
    lost_keys_file: Option<&std::path::Path>,
    slot: &WriterSlot,
) -> Result<i32, Error> {
    let db = open_writer(store, opts, "fsck --repair", slot).await?;
    let mut shown = super::progress::Progress::new("repair", None);
    let result = db.repair(&mut |m| shown.step(m)).await;
    drop(shown);
    // A file system store: names whose inode record was lost go too.
    let dangling = match &result {
        Ok(_) if db.info(kvfs::fs::keys::SUPER_KEY).is_some() => {
            match Namespace::new(db.clone(), process_owner()).await {
                Ok(ns) => ns.remove_dangling_entries().await.map_err(fs_err),
                Err(e) => Err(fs_err(e)),
            }
        }
        _ => Ok(Vec::new()),
    };
    let closed = match (&result, &dangling) {
        (Ok(_), Ok(d)) if !d.is_empty() => match db.sync().await {
            Ok(()) => db.close().await,
            Err(e) => {
                let _ = db.close().await;
                Err(e)
            }
        },
        _ => db.close().await,
    };
    let report = result?;
    let dangling = dangling?;
    closed?;
    if report.was_clean() && dangling.is_empty() {
        println!("no problems found; nothing to repair");
        return Ok(0);
    }
    for i in &report.found {
        println!("found {}: {}", i.object, i.problem);
    }
    if let Some(f) = &report.fallback {
        println!("damaged {}: {}", f.damaged, f.problem);
        println!("{}", f.how);
        if !f.exact {
            println!(
                "the state is not exact: keys written, changed or deleted in these log segments may be stale, resurrected or lost:"
            );
            for s in &f.suspect {
                println!("  {s}");
            }
        }
    }
    let lost: Vec<String> = report.lost_keys.iter().map(|k| show_key(&k.key)).collect();
    match lost_keys_file {
        Some(path) => {
            let mut text = lost.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            std::fs::write(path, text)
                .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
            println!("lost keys written to {}", path.display());
        }
        None => {
            for (k, l) in lost.iter().zip(&report.lost_keys) {
                println!("lost key {k} (its value was in {})", l.object);
            }
        }
    }
    println!("{} keys lost", lost.len());
    if report.keys_salvaged > 0 {
        println!(
            "{} keys with intact values moved out of damaged objects",
            report.keys_salvaged
        );
    }
    if report.checkpoint_written {
        println!("wrote a fresh checkpoint of the repaired state");
    }
    for d in &report.deleted {
        println!("deleted damaged object {d}");
    }
    for (dir, name, ino) in &dangling {
        println!(
            "removed the name {} of lost inode {ino} from directory inode {dir}",
            name.escape_ascii()
        );
    }
    if report.remaining.is_empty() {
        println!("repaired: no problems remain");
        Ok(0)
    } else {
        for i in &report.remaining {
            println!("PROBLEM {}: {}", i.object, i.problem);
        }
        println!("{} problems remain", report.remaining.len());
        Ok(1)
    }
}

/// A key as `fsck --repair` prints it: bytes outside printable ASCII escaped (as
/// `\x00`), and what a file system's key records.
fn show_key(key: &[u8]) -> String {
    use kvfs::fs::keys::{key_of, KeyOf};
    let shown = key.escape_ascii().to_string();
    let what = match key_of(key) {
        KeyOf::Super => "the file system's superblock".to_string(),
        KeyOf::Inode(ino) => format!("inode {ino}: attributes and small-file content"),
        KeyOf::Dirent { parent, name } => format!(
            "directory entry {:?} in directory inode {parent}",
            String::from_utf8_lossy(name)
        ),
        KeyOf::Extent { ino, offset } => format!("content of inode {ino} at byte {offset}"),
        KeyOf::Xattr { ino, name } => format!(
            "extended attribute {:?} of inode {ino}",
            String::from_utf8_lossy(name)
        ),
        KeyOf::Orphan(ino) => format!("orphan record of inode {ino}"),
        KeyOf::Other => return shown,
    };
    format!("{shown} ({what})")
}

/// `kvfs gc` and `kvfs compact`, with progress on stderr and a summary on stdout.
async fn gc_command(
    store: &str,
    opts: Options,
    read_opts: Options,
    compact: bool,
    slot: &WriterSlot,
) -> Result<i32, Error> {
    let what = if compact { "compact" } else { "gc" };
    // Plan on a read-only handle first: a run with nothing to do writes nothing (a
    // second `kvfs gc` is a true no-op), and a missing store is refused, not created.
    let reader = Db::open(store, plan_options(&read_opts, &opts)).await?;
    let plan = reader.gc_plan(compact).await;
    reader.close().await?;
    let plan = plan?;
    if plan.is_empty() {
        let verb = if compact { "compact" } else { "clean" };
        println!("nothing to {verb}: the store is unchanged");
        return Ok(0);
    }
    log::info!("{what}: {plan}");
    let db = open_writer(store, opts, what, slot).await?;
    let before = db.stats().await?;
    let mut shown = super::progress::Progress::new(what, None);
    let mut progress = |msg: &str| shown.step(msg);
    let result = if compact {
        db.compact(&mut progress).await
    } else {
        db.gc(&mut progress).await
    };
    drop(shown);
    let closed = db.close().await;
    let done = result?;
    closed?;
    let db = Db::open(store, read_opts).await?;
    let after = db.stats().await?;
    println!("{done}");
    println!(
        "stored {} -> {} bytes in {} -> {} objects; live {} bytes; space amplification {:.2} -> {:.2}",
        before.stored_bytes,
        after.stored_bytes,
        before.objects,
        after.objects,
        after.live_bytes,
        before.space_amplification(),
        after.space_amplification()
    );
    Ok(0)
}

/// Options of the read-only handle that plans a gc or compaction: what it reads
/// with, and the GC settings the run would use.
fn plan_options(read_opts: &Options, run_opts: &Options) -> Options {
    let mut opts = read_opts.clone();
    opts.gc = run_opts.gc.clone();
    opts
}

/// Make a CLI write durable and give the store back; report the first failure.
async fn finish_write(db: &Db, result: Result<(), Error>) -> Result<(), Error> {
    let result = match result {
        Ok(()) => db.sync().await,
        Err(e) => Err(e),
    };
    let closed = db.close().await;
    result?;
    closed?;
    let m = db.metrics();
    log::info!(
        "durable; the lease is released ({} requests, {} bytes uploaded)",
        m.requests(),
        m.put_bytes
    );
    Ok(())
}

/// A Unix time in milliseconds as an ISO 8601 UTC time.
fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (the proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The user and group of this process: the owner of files the CLI creates.
fn process_owner() -> (u32, u32) {
    // SAFETY: getuid and getgid cannot fail and touch no memory.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// Refuse a key that cannot be a file's path, saying why.
fn check_key(key: &str) -> Result<(), Error> {
    if let Some(long) = key.split('/').find(|c| c.len() > kvfs::fs::keys::NAME_MAX) {
        return Err(Error::InvalidKey(format!(
            "a component of the key is {} bytes; the maximum is {} (a key is a path)",
            long.len(),
            kvfs::fs::keys::NAME_MAX
        )));
    }
    kvfs::fs::split_key(key.as_bytes())
        .map(|_| ())
        .map_err(|e| Error::InvalidKey(e.to_string().replace("invalid argument: ", "")))
}

/// An engine error as itself; any other namespace error as an input error.
fn fs_err(e: FsError) -> Error {
    match e {
        FsError::Db(e) => e,
        e => Error::Input(e.to_string()),
    }
}

/// A namespace error about one key, naming it.
fn key_err(key: &str, e: FsError) -> Error {
    match e {
        FsError::Db(e) => e,
        FsError::NotDir => Error::InvalidKey(format!(
            "{key:?}: a directory on its path is a file (a path cannot be both a file \
             and a directory)"
        )),
        FsError::IsDir => {
            Error::InvalidKey(format!("{key:?} is a directory (it holds other files)"))
        }
        e => Error::InvalidKey(format!("{key:?}: {e}")),
    }
}

fn stdout_err(e: std::io::Error) -> Error {
    Error::Inconsistent(format!("cannot write to standard output: {e}"))
}

pub use mount::{enter_daemon_session, spawn_mount_daemon};

/// `kvfs mount`: serve a store through FUSE until unmounted.
///
/// Without `--foreground` the command re-runs itself with the hidden
/// `--daemon-child` flag, its standard output a pipe: the child mounts, detaches
/// (new session, working directory `/`, standard error to `--log-file` or
/// `/dev/null`), writes [`READY`](mount::READY) on the pipe and closes it. The parent
/// exits 0 on that line; otherwise it waits for the child and exits with its status,
/// the child's error message having gone to the shared standard error.
mod mount {
    use std::ffi::OsString;
    use std::fs::{File, OpenOptions};
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::path::PathBuf;
    use std::process::Stdio;
    use std::sync::Arc;

    use kvfs::db::{Db, Error};
    use kvfs::fs::{FsError, Namespace};
    use kvfs::fuse::unmount::{FinishProgress, RecordKeeper};
    use kvfs::fuse::{self, KvfsFuse, MountOptions, ShutdownHandle, Unmounted, Unmounter};
    use tokio::signal::unix::{signal, Signal, SignalKind};

    use super::MountArgs;

    /// The line the background server writes once its mount is ready.
    pub const READY: &str = "kvfs-mount-ready";

    /// Start the background server and wait until it is ready or has failed.
    pub fn spawn_mount_daemon() -> i32 {
        let exe = match std::env::current_exe() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("kvfs: cannot find this program to start the mount server: {e}");
                return 1;
            }
        };
        // The same arguments, with --daemon-child right after the subcommand (so it is
        // never taken for a positional argument after `--`).
        let mut args: Vec<OsString> = Vec::new();
        let mut inserted = false;
        for a in std::env::args_os().skip(1) {
            let is_mount = !inserted && a == "mount";
            args.push(a);
            if is_mount {
                args.push("--daemon-child".into());
                inserted = true;
            }
        }
        let Some(runtime) =
            crate::cli::build_runtime(tokio::runtime::Builder::new_current_thread())
        else {
            return 1;
        };
        runtime.block_on(wait_for_daemon(exe, args))
    }

    /// Start the server and wait for its ready line. Interrupted first (Ctrl-C), stop
    /// the server too and wait for it: the parent and the server stop together.
    async fn wait_for_daemon(exe: PathBuf, args: Vec<OsString>) -> i32 {
        use tokio::io::AsyncBufReadExt;
        let mut child = match tokio::process::Command::new(exe)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("kvfs: cannot start the mount server: {e}");
                return 1;
            }
        };
        let out = child.stdout.take();
        let ready = async move {
            let mut line = String::new();
            if let Some(out) = out {
                // An error here means the child died without a word: its status tells.
                let _ = tokio::io::BufReader::new(out).read_line(&mut line).await;
            }
            line
        };
        tokio::select! {
            line = ready => {
                if line.trim_end() == READY {
                    return 0;
                }
                match child.wait().await {
                    Ok(status) => status.code().filter(|c| *c != 0).unwrap_or(1),
                    Err(e) => {
                        eprintln!("kvfs: lost the mount server: {e}");
                        1
                    }
                }
            }
            (name, code) = crate::cli::interrupted() => {
                eprintln!("kvfs: {name}: stopping the mount server");
                if let Some(pid) = child.id() {
                    // SAFETY: kill only sends a signal to our own child process.
                    unsafe {
                        libc::kill(pid as i32, libc::SIGTERM);
                    }
                }
                let _ = child.wait().await;
                code
            }
        }
    }

    /// The background server leaves the caller's session and terminal, and closes
    /// the descriptors it inherited beyond stdin, stdout and stderr (a caller's pipe
    /// must not stay open for as long as the mount lives).
    pub fn enter_daemon_session() {
        // SAFETY: setsid has no memory-safety preconditions; it fails harmlessly if
        // this process already leads a process group.
        unsafe {
            libc::setsid();
        }
        let inherited: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
            Ok(dir) => dir
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|fd| *fd > 2)
                .collect(),
            Err(_) => return,
        };
        for fd in inherited {
            // SAFETY: nothing in this process uses these descriptors yet (this runs
            // before the runtime starts); the directory handle that listed them is
            // closed already, so closing its number again only fails with EBADF.
            unsafe {
                libc::close(fd);
            }
        }
    }

    /// Make a local store path absolute: the server changes directory to `/`.
    fn absolute_store(store: &str) -> String {
        if store.contains("://") || store == "memory:" {
            return store.to_string();
        }
        match std::path::absolute(store) {
            Ok(p) => p.to_string_lossy().into_owned(),
            Err(_) => store.to_string(),
        }
    }

    fn fail(msg: impl std::fmt::Display) -> i32 {
        eprintln!("kvfs: {msg}");
        1
    }

    pub async fn run(args: MountArgs) -> Result<i32, Error> {
        // Watch for signals from the start, so one that arrives while the store opens
        // still ends in a clean unmount.
        let signals = match Signals::new() {
            Ok(s) => s,
            Err(e) => return Ok(fail(format!("cannot watch for signals: {e}"))),
        };
        let log_file = match (&args.log_file, args.daemon_child) {
            (Some(path), true) => match OpenOptions::new().create(true).append(true).open(path) {
                Ok(f) => Some(f),
                Err(e) => return Ok(fail(format!("log file {}: {e}", path.display()))),
            },
            _ => None,
        };
        // Check the mount point before the store, for a clear message and no lease.
        let mountpoint = match std::fs::metadata(&args.mountpoint) {
            Ok(m) if m.is_dir() => match std::path::absolute(&args.mountpoint) {
                Ok(p) => p,
                Err(e) => {
                    return Ok(fail(format!(
                        "mount point {}: {e}",
                        args.mountpoint.display()
                    )))
                }
            },
            Ok(_) => {
                return Ok(fail(fuse::MountError::NotADirectory(args.mountpoint)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(fail(fuse::MountError::MissingMountPoint(args.mountpoint)));
            }
            Err(source) => {
                return Ok(fail(fuse::MountError::MountPoint {
                    path: args.mountpoint,
                    source,
                }))
            }
        };
        if !args.allow_nonempty {
            if let Err(problem) = check_mount_point(&mountpoint) {
                return Ok(fail(format!(
                    "{problem} (--allow-nonempty mounts over it anyway, hiding what is there)"
                )));
            }
        }
        let store = absolute_store(&args.store);
        let mut opts = args.options();
        opts.writer_label = Some(format!("mount at {}", mountpoint.display()));
        if let Some(super::super::SnapshotSpec::At(t)) = args.snapshot {
            match snapshot_at(&store, &args, t).await {
                Ok(n) => opts.snapshot = Some(n),
                Err(msg) => return Ok(fail(msg)),
            }
        }
        // A signal while the store opens (which may wait for an unreachable store)
        // stops here, before anything is mounted.
        let mut signals = signals;
        let db = tokio::select! {
            db = Db::open(&store, opts.clone()) => db?,
            name = signals.next() => {
                // The open may have taken the lease already.
                if let Err(e) = Db::release_lease_of_this_process(&store, &opts).await {
                    log::warn!("could not release the writer lease: {e}");
                }
                return Ok(fail(format!("{name} before the mount was ready: stopped")));
            }
        };
        if let Some(addr) = args.metrics_addr {
            if let Err(e) = kvfs::metrics::install(addr) {
                let _ = db.close().await;
                return Ok(fail(e));
            }
            tokio::spawn(kvfs::metrics::sample(db.clone()));
        }
        // SAFETY: getuid and getgid cannot fail and touch no memory.
        let owner = unsafe { (libc::getuid(), libc::getgid()) };
        let ns = match Namespace::new(db.clone(), owner).await {
            Ok(mut ns) => {
                ns.set_atime_mode(args.atime);
                ns.set_file_buffer_limit(args.file_buffer_bytes);
                Arc::new(ns)
            }
            Err(e) => {
                let _ = db.close().await;
                return Ok(fail(e));
            }
        };
        let follow =
            (args.read_only && !args.no_follow && args.snapshot.is_none()).then(|| ns.clone());
        let mut fs = KvfsFuse::new(ns, tokio::runtime::Handle::current());
        if args.no_xattrs {
            fs = fs.without_xattrs();
        }
        let shutdown = fs.shutdown_handle();
        let mopts = MountOptions {
            read_only: args.is_read_only(),
            allow_other: args.allow_other,
            ..MountOptions::default()
        };
        let mp = mountpoint.clone();
        let mounted = tokio::task::spawn_blocking(move || fuse::mount(fs, &mp, &mopts)).await;
        let mut mounted = match mounted {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                let code = fail(e);
                if let Err(e) = shutdown.shutdown().await {
                    fail(format!("closing the store: {e}"));
                }
                return Ok(code);
            }
            Err(e) => return Ok(fail(format!("mount task failed: {e}"))),
        };
        let mountpoint = mounted.mountpoint().to_path_buf();
        let unmounter = Arc::new(mounted.unmounter());
        // The record `kvfs unmount` waits on. The mount table is read rather than the
        // mount point (requests to it wait until the session runs).
        let dev = kvfs::process::mount_entry(&mountpoint).map(|e| e.dev);
        let record = match RecordKeeper::create(&store, &mountpoint, dev, args.is_read_only()) {
            Ok(k) => {
                let k = Arc::new(k);
                tokio::spawn(record_finishing(k.clone(), shutdown.clone(), db.clone()));
                Some(k)
            }
            Err(e) => {
                log::warn!(
                    "{e}: `kvfs unmount` cannot wait for this server (unmount with \
                         `fusermount3 -u`)"
                );
                None
            }
        };
        // Dropped when the session ends, which stops the follow loop.
        let (_stop_following, stop) = tokio::sync::watch::channel(false);
        if let Some(ns) = follow {
            let interval = std::time::Duration::from_millis(args.follow_interval_ms.max(1));
            tokio::spawn(fuse::follow::run(ns, mounted.notifier(), interval, stop));
        }
        tokio::spawn(unmount_on_signal(
            signals,
            unmounter,
            shutdown.clone(),
            mountpoint.clone(),
            record.clone(),
        ));
        if args.daemon_child {
            if let Err(e) = detach_and_report_ready(log_file) {
                log::warn!("could not report readiness: {e}");
            }
        } else {
            eprintln!(
                "kvfs: {store} mounted at {}; unmount with `kvfs unmount {}` or Ctrl-C",
                mountpoint.display(),
                mountpoint.display()
            );
        }
        // The session ends at the unmount; the store is closed (the lease given back)
        // before `run` returns.
        let outcome = match tokio::task::spawn_blocking(move || mounted.run()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => {
                let msg = format!("mount server task failed: {e}");
                match shutdown.shutdown().await {
                    Ok(()) => Err(msg),
                    Err(e) => Err(format!("{msg}; could not flush the store: {e}")),
                }
            }
        };
        if let Some(r) = &record {
            r.finish(outcome.as_ref().err().cloned());
        }
        Ok(match outcome {
            Ok(()) => 0,
            Err(msg) => fail(msg),
        })
    }

    /// Once the shutdown starts (the session ended, or a signal), keep the mount
    /// record saying how much is left to upload.
    async fn record_finishing(record: Arc<RecordKeeper>, shutdown: ShutdownHandle, db: Db) {
        shutdown.started().await;
        loop {
            let f = db.figures();
            record.finishing(FinishProgress {
                unflushed_bytes: f.unflushed_bytes,
                uploads_in_flight: f.uploads_in_flight,
                store_unanswered: f.store_unanswered,
            });
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }

    /// The newest snapshot whose state is from Unix time `t` (ms) or earlier.
    async fn snapshot_at(store: &str, args: &MountArgs, t: u64) -> Result<u64, String> {
        let db = Db::open(store, args.access.read_options())
            .await
            .map_err(|e| e.to_string())?;
        let list = db.snapshots().await.map_err(|e| e.to_string())?;
        let chosen = list.iter().rev().find(|s| s.until_unix_ms <= t);
        match chosen {
            Some(s) => {
                log::info!(
                    "snapshot {} shows the store as of {}",
                    s.seq,
                    super::utc(s.until_unix_ms)
                );
                Ok(s.seq)
            }
            None => Err(format!(
                "no snapshot of {store} is from {} or earlier (`kvfs snapshots` lists them)",
                super::utc(t)
            )),
        }
    }

    /// Why `point` should not be mounted over: it is already a mount point, or it is
    /// not empty.
    fn check_mount_point(point: &std::path::Path) -> Result<(), String> {
        let shown = point.display();
        if let Some(what) = kvfs::process::mounted_at(point) {
            return Err(format!("{shown} is already a mount point ({what})"));
        }
        match std::fs::read_dir(point) {
            Ok(mut entries) => match entries.next() {
                None => Ok(()),
                Some(_) => Err(format!("mount point {shown} is not empty")),
            },
            Err(e) => Err(format!("mount point {shown}: {e}")),
        }
    }

    /// Background server, mount ready: leave the working directory, send standard
    /// error to the log, tell the parent, and let go of its pipe.
    fn detach_and_report_ready(log_file: Option<File>) -> std::io::Result<()> {
        std::env::set_current_dir("/")?;
        let null = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")?;
        let err_fd = log_file
            .as_ref()
            .map_or(null.as_raw_fd(), |f| f.as_raw_fd());
        // SAFETY: both descriptors are open; dup2 only replaces descriptor 2.
        if unsafe { libc::dup2(err_fd, 2) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut out = std::io::stdout().lock();
        let reported = writeln!(out, "{READY}").and_then(|()| out.flush());
        // SAFETY: as above, for descriptor 1 (the pipe to the parent closes).
        if unsafe { libc::dup2(null.as_raw_fd(), 1) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        reported
    }

    /// SIGTERM, SIGINT and SIGHUP.
    struct Signals {
        term: Signal,
        int: Signal,
        hup: Signal,
    }

    impl Signals {
        fn new() -> std::io::Result<Signals> {
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
                hup: signal(SignalKind::hangup())?,
            })
        }

        async fn next(&mut self) -> &'static str {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
                _ = self.hup.recv() => "SIGHUP",
            }
        }
    }

    /// First signal: make everything durable, then unmount (the session then ends and
    /// the store is closed). If files are open the mount is detached and the store
    /// closes once they are closed; a second signal stops at once after a flush.
    async fn unmount_on_signal(
        mut signals: Signals,
        unmounter: Arc<Unmounter>,
        shutdown: ShutdownHandle,
        mountpoint: PathBuf,
        record: Option<Arc<RecordKeeper>>,
    ) {
        let name = signals.next().await;
        log::warn!("{name}: flushing and unmounting {}", mountpoint.display());
        if let Err(e) = shutdown.sync_all().await {
            log::error!("flush before unmounting failed: {e}");
        }
        let u = unmounter.clone();
        match tokio::task::spawn_blocking(move || u.unmount()).await {
            Ok(Ok(Unmounted::Clean)) => return,
            Ok(Ok(Unmounted::Detached)) => log::warn!(
                "files are still open under {}: detached it; the store closes when they \
                 are closed (signal again to stop now)",
                mountpoint.display()
            ),
            Ok(Err(e)) => log::error!(
                "cannot unmount {}: {e} (signal again to stop now)",
                mountpoint.display()
            ),
            Err(e) => log::error!("unmount task failed: {e}"),
        }
        let name = signals.next().await;
        log::warn!("{name}: closing the store and stopping now");
        let closed = shutdown.shutdown().await;
        if let Some(r) = &record {
            r.finish(
                closed
                    .as_ref()
                    .err()
                    .map(|e| format!("could not flush the store: {e}")),
            );
        }
        let code = match closed {
            Ok(()) => 0,
            Err(FsError::Db(e)) => fail(e),
            Err(e) => fail(e),
        };
        std::process::exit(code);
    }
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn unix_times_print_as_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_735_872_999), "2026-11-26T23:31:12Z");
    }
}
