//! Command-line interface: argument parsing and the commands that act on a store.
//!
//! Exit status: 0 on success; 1 when the command failed (a message on stderr says
//! why), including `get` of a missing key and `fsck` finding problems; 2 on a usage
//! error.

mod commands;
mod progress;
mod unmount;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use kvfs::db::{DiskCacheOptions, GcOptions, Options};
use kvfs::format::envelope::Compression;
use kvfs::store::disk_cache::DEFAULT_CACHE_BYTES;
use kvfs::store::encoding::EncryptionKey;

#[derive(Parser, Debug)]
#[command(
    name = "kvfs",
    version,
    about = "A key-value store on S3 that writes small values as large log segments",
    long_about = "A key-value store on S3 that writes small values as large log segments.\n\n\
        STORE is s3://bucket/prefix (standard AWS configuration: credential chain, \
        AWS_REGION, AWS_ENDPOINT_URL), a local directory path, or file:///path."
)]
pub struct Cli {
    /// More log output (-v: what each step did, -vv: debug, -vvv: trace including
    /// the FUSE library). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// The store argument's help, shared by every command.
const STORE_HELP: &str = "The store: s3://bucket/prefix, a local directory, or file:///path";

#[derive(Subcommand, Debug)]
enum Command {
    /// Store a file's content at a path; durable when the command exits 0.
    Put {
        #[arg(help = STORE_HELP)]
        store: String,
        /// The file's path in the store, such as `docs/a.txt` (components separated
        /// by `/`, none empty, `.` or `..`; missing directories are created).
        key: String,
        /// The content; read from standard input when absent.
        value: Option<String>,
        #[command(flatten)]
        access: Access,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Print the content of the file at a path (exit 1 if there is none).
    Get {
        #[arg(help = STORE_HELP)]
        store: String,
        /// The file's path in the store.
        key: String,
        #[command(flatten)]
        access: Access,
    },
    /// Delete the file at a path; durable when the command exits 0.
    Delete {
        #[arg(help = STORE_HELP)]
        store: String,
        /// The file's path in the store.
        key: String,
        #[command(flatten)]
        access: Access,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// List files in byte order of their paths, as `path<TAB>content` lines (or
    /// paths only).
    Scan {
        #[arg(help = STORE_HELP)]
        store: String,
        /// Only paths starting with this prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// First path (inclusive).
        #[arg(long)]
        start: Option<String>,
        /// End path (exclusive).
        #[arg(long)]
        end: Option<String>,
        /// At most this many files.
        #[arg(long)]
        limit: Option<usize>,
        /// Print paths only.
        #[arg(long)]
        keys_only: bool,
        #[command(flatten)]
        access: Access,
    },
    /// Show files and directories, engine records, bytes, objects, manifest and
    /// checkpoint position, writer epoch.
    Stats {
        #[arg(help = STORE_HELP)]
        store: String,
        /// Print the figures as one JSON document.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        access: Access,
    },
    /// List the points in time that can be mounted with `kvfs mount --snapshot N`
    /// (kept for --retain-secs by the writer), oldest first.
    Snapshots {
        #[arg(help = STORE_HELP)]
        store: String,
        #[command(flatten)]
        access: Access,
    },
    /// Read and verify every object and report every problem; exit 1 on any. With
    /// --repair, bring a damaged store back to a consistent state and name every key
    /// lost (needs the writer lease, like `gc`).
    Fsck {
        #[arg(help = STORE_HELP)]
        store: String,
        /// Repair: delete the keys whose values are lost (naming each), move intact
        /// values out of damaged objects, replace a damaged checkpoint, and delete
        /// the damaged objects nothing needs any more (after the grace period).
        #[arg(long)]
        repair: bool,
        /// With --repair: write the lost keys to this file, one a line, instead of
        /// printing them.
        #[arg(long, value_name = "PATH", requires = "repair")]
        lost_keys_file: Option<std::path::PathBuf>,
        /// With --repair: delete damaged objects nothing needs only this long after
        /// the repair stopped needing them (readers that opened the store earlier
        /// may still read them).
        #[arg(long, default_value_t = GcOptions::default().grace.as_secs(), value_name = "SECONDS")]
        gc_grace_secs: u64,
        #[command(flatten)]
        access: Access,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Reclaim space: rewrite mostly dead objects, then delete every object, old
    /// manifest and checkpoint that nothing needs. Needs the writer lease (the store
    /// must not be mounted; a mounted writer does this in the background).
    Gc {
        #[arg(help = STORE_HELP)]
        store: String,
        #[command(flatten)]
        gc: GcArgs,
        #[command(flatten)]
        access: Access,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Rewrite all live data in key order into sorted runs (so a directory is read
    /// back with a few large GETs), then delete what nothing needs, as `gc` does.
    Compact {
        #[arg(help = STORE_HELP)]
        store: String,
        #[command(flatten)]
        gc: GcArgs,
        #[command(flatten)]
        access: Access,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Mount a store as a file system. Returns once the mount is ready and keeps
    /// serving it in the background, unless --foreground; `kvfs unmount MOUNTPOINT`
    /// unmounts it.
    ///
    /// Unmount with `kvfs unmount MOUNTPOINT`: it returns once everything is in the
    /// store, the writer lease is given back and the server has exited (exit 1 with
    /// the server's error if its final upload failed). `umount MOUNTPOINT` and
    /// `fusermount3 -u MOUNTPOINT` (or SIGTERM to the server, Ctrl-C in the
    /// foreground) return at once: the server then finishes uploading in the
    /// background, and a writer that opens the store meanwhile waits for it, but a
    /// reader (`kvfs get`) may not see the last writes yet.
    Mount(MountArgs),
    /// Unmount a kvfs mount and wait until its server has uploaded everything, given
    /// the writer lease back and exited. Exit 0 then; 1 with the server's error if its
    /// final upload failed, or if the wait timed out (saying what the server is still
    /// doing).
    Unmount {
        /// The mount point.
        mountpoint: std::path::PathBuf,
        /// Detach the mount even if files are open in it (MNT_DETACH): it leaves the
        /// directory tree now, and its server finishes once the last of them is
        /// closed (this command waits for that too, up to --timeout-secs).
        #[arg(long)]
        lazy: bool,
        /// Wait at most this long for the server to finish (default: as long as it
        /// takes). On timeout, say what it is still doing and exit 1; the server goes
        /// on in the background.
        #[arg(long, value_name = "SECONDS")]
        timeout_secs: Option<u64>,
    },
}

/// Arguments of `kvfs mount`.
#[derive(Args, Debug)]
pub struct MountArgs {
    #[arg(help = STORE_HELP)]
    store: String,
    /// An existing, empty directory (see --allow-nonempty).
    mountpoint: std::path::PathBuf,
    /// Stay in the foreground, logging to stderr.
    #[arg(long)]
    foreground: bool,
    /// Mount read-only: no writer lease is taken, so a writer may hold the store
    /// (anywhere). The mount follows the writer: its durable changes show up here
    /// within about a second.
    #[arg(long)]
    read_only: bool,
    /// With --read-only: show the store as of the mount, without following the
    /// writer.
    #[arg(long, requires = "read_only")]
    no_follow: bool,
    /// Mount a snapshot read-only: N (see `kvfs snapshots`), or a UTC time such as
    /// 2026-11-26T21:30:00Z for the newest snapshot whose state is from that time
    /// or earlier.
    #[arg(long, value_name = "N|TIME", value_parser = parse_snapshot,
          conflicts_with_all = ["no_follow", "follow_interval_ms"])]
    snapshot: Option<SnapshotSpec>,
    /// With --read-only: look for the writer's changes this often. Each look is a
    /// GET, plus two every fourth time: 5,400 GETs an hour at 1,000 ms (about $1.6
    /// a month at S3 prices), twice that at 500 ms.
    #[arg(long, default_value_t = millis(kvfs::fuse::follow::DEFAULT_INTERVAL), value_name = "MS", requires = "read_only")]
    follow_interval_ms: u64,
    /// Let other users access the mount (non-root users need user_allow_other in
    /// /etc/fuse.conf).
    #[arg(long)]
    allow_other: bool,
    /// Mount even if the mount point is not empty or is already a mount point (what
    /// is there is hidden until the store is unmounted).
    #[arg(long)]
    allow_nonempty: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (such as 127.0.0.1:9187;
    /// the metrics are listed in docs/SEMANTICS.md).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// In the background, append the log to this file (default: discard it).
    #[arg(long, value_name = "FILE")]
    log_file: Option<std::path::PathBuf>,
    /// When reads update access times: relatime (the first read after a change, or
    /// a day after the last update), noatime (never), strictatime (every read).
    #[arg(long, value_enum, default_value_t = kvfs::fs::AtimeMode::Relatime)]
    atime: kvfs::fs::AtimeMode,
    /// Bytes that open files may buffer in memory, all together, before the largest
    /// is committed to the store (written data not yet committed, and small files'
    /// content). With --max-unflushed-bytes and --cache-bytes this bounds the
    /// daemon's data memory (docs/SEMANTICS.md, "Memory").
    #[arg(long, default_value_t = kvfs::fs::DEFAULT_FILE_BUFFER_BYTES, value_name = "BYTES")]
    file_buffer_bytes: usize,
    /// Serve no extended attributes (nor POSIX ACLs): `ls -l` of a large directory
    /// then makes no request per file for them (two otherwise).
    #[arg(long)]
    no_xattrs: bool,
    /// Delete an object no longer needed only this long after it stopped being needed
    /// (readers that opened the store earlier may still read it). 0 is safe only when
    /// no read-only mount or reader of this store is running.
    #[arg(long, default_value_t = GcOptions::default().grace.as_secs(), value_name = "SECONDS")]
    gc_grace_secs: u64,
    /// Turn off garbage collection and compaction in the background.
    #[arg(long)]
    no_background_gc: bool,
    /// Keep every point in time of the last this many seconds mountable with
    /// --snapshot: garbage collection deletes nothing such a snapshot needs.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    retain_secs: u64,
    /// Internal: this process is the background server started by `kvfs mount`.
    #[arg(long, hide = true)]
    daemon_child: bool,
    #[command(flatten)]
    access: Access,
    #[command(flatten)]
    tuning: Tuning,
}

impl MountArgs {
    fn options(&self) -> Options {
        let mut opts = self.tuning.options(&self.access);
        opts.read_only = self.read_only;
        opts.gc.grace = Duration::from_secs(self.gc_grace_secs);
        opts.gc.background = !self.no_background_gc;
        opts.gc.retain = Duration::from_secs(self.retain_secs);
        if let Some(spec) = self.snapshot {
            opts.read_only = true;
            // A time is resolved to a number by the mount, which lists snapshots.
            if let SnapshotSpec::Seq(n) = spec {
                opts.snapshot = Some(n);
            }
        }
        opts
    }

    /// Whether the mount is read-only (asked for, or a snapshot).
    fn is_read_only(&self) -> bool {
        self.read_only || self.snapshot.is_some()
    }
}

/// Which snapshot `--snapshot` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotSpec {
    Seq(u64),
    /// The newest snapshot whose state is from this Unix time (ms) or earlier.
    At(u64),
}

fn parse_snapshot(s: &str) -> Result<SnapshotSpec, String> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(SnapshotSpec::Seq(n));
    }
    parse_utc(s).map(SnapshotSpec::At).ok_or_else(|| {
        format!("{s:?} is neither a snapshot number nor a UTC time like 2026-11-26T21:30:00Z")
    })
}

/// `YYYY-MM-DDTHH:MM:SSZ` (or with a space, or without seconds) as Unix ms.
fn parse_utc(s: &str) -> Option<u64> {
    let s = s.trim().trim_end_matches('Z');
    let (date, time) = s.split_once(['T', ' '])?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':').map(|x| x.parse::<i64>().ok());
    let (h, min) = (t.next()??, t.next()??);
    let sec = t.next().map_or(Some(0), |x| x)?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec > 60 {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date.
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + min * 60 + sec;
    u64::try_from(secs).ok().map(|s| s * 1000)
}

/// How every command reaches its store.
#[derive(Args, Debug, Clone)]
pub struct Access {
    /// Give up on an object store that does not answer after this long (waiting is
    /// reported on stderr after about 2 s and every 10 s).
    #[arg(long, default_value_t = Options::default().retry.max_elapsed.as_secs(), value_name = "SECONDS")]
    retry_timeout_secs: u64,
    /// The store's encryption key: a file of 32 random bytes (`head -c 32
    /// /dev/urandom > FILE`) or 64 hex digits. A new store given a key is encrypted;
    /// an encrypted store cannot be opened without it.
    #[arg(long, env = "KVFS_ENCRYPTION_KEY_FILE", value_name = "FILE", value_parser = parse_key_file)]
    encryption_key_file: Option<EncryptionKey>,
    /// Where S3 stores are cached on the local disk: one subdirectory per store
    /// (named by its id). Default: $XDG_CACHE_HOME/kvfs, else ~/.cache/kvfs.
    #[arg(long, env = "KVFS_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<std::path::PathBuf>,
    /// Most bytes the disk cache keeps of one store (least recently used out); 0
    /// turns it off. Not to be confused with --cache-bytes, the cache in memory.
    #[arg(long, env = "KVFS_CACHE_SIZE", default_value_t = DEFAULT_CACHE_BYTES, value_name = "BYTES")]
    cache_size: u64,
    /// Keep no disk cache (the same as --cache-size 0).
    #[arg(long)]
    no_disk_cache: bool,
}

/// The default base directory of disk caches: $XDG_CACHE_HOME/kvfs, else
/// $HOME/.cache/kvfs; none without either.
fn default_cache_dir() -> Option<std::path::PathBuf> {
    let absolute = |v: std::ffi::OsString| {
        let p = std::path::PathBuf::from(v);
        p.is_absolute().then_some(p)
    };
    std::env::var_os("XDG_CACHE_HOME")
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(absolute)
                .map(|h| h.join(".cache"))
        })
        .map(|d| d.join("kvfs"))
}

fn parse_key_file(path: &str) -> Result<EncryptionKey, String> {
    EncryptionKey::from_file(std::path::Path::new(path)).map_err(|e| e.to_string())
}

impl Access {
    /// Engine options of a command that only reads.
    pub fn read_options(&self) -> Options {
        let mut opts = Options::read_only();
        self.apply(&mut opts);
        opts
    }

    fn apply(&self, opts: &mut Options) {
        opts.retry.max_elapsed = Duration::from_secs(self.retry_timeout_secs);
        opts.encoding.key = self.encryption_key_file.clone();
        opts.disk_cache = if self.no_disk_cache || self.cache_size == 0 {
            None
        } else {
            // Absolute: the mount server changes directory to `/`.
            let given = self
                .cache_dir
                .clone()
                .map(|d| std::path::absolute(&d).unwrap_or(d));
            match given.or_else(default_cache_dir) {
                Some(dir) => Some(DiskCacheOptions {
                    dir,
                    bytes: self.cache_size,
                }),
                None => {
                    log::info!(
                        "no disk cache: neither --cache-dir, XDG_CACHE_HOME nor HOME is set"
                    );
                    None
                }
            }
        };
    }
}

/// `--compression`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum CompressionArg {
    /// Store new objects as they are.
    None,
    /// Compress new objects with zstd, in 64 KiB chunks.
    Zstd,
}

/// Engine settings for commands that write. Defaults come from
/// [`Options::default()`]; values are checked by [`Options::validate`].
#[derive(Args, Debug, Clone)]
pub struct Tuning {
    /// Seal a log segment at this size.
    #[arg(long, default_value_t = Options::default().segment_bytes, value_name = "BYTES")]
    segment_bytes: usize,
    /// Upload buffered writes at least this often.
    #[arg(long, default_value_t = millis(Options::default().flush_interval), value_name = "MS")]
    flush_interval_ms: u64,
    /// Read cache size.
    #[arg(long, default_value_t = Options::default().cache_bytes, value_name = "BYTES")]
    cache_bytes: usize,
    /// Most data written but not yet uploaded; writers wait beyond it.
    #[arg(long, default_value_t = Options::default().max_unflushed_bytes, value_name = "BYTES")]
    max_unflushed_bytes: usize,
    /// Compress the objects this command writes: zstd or none. Without it, the
    /// store's choice (none for a new store); given to a writer, it becomes the
    /// store's choice. Objects already stored keep theirs.
    #[arg(long, value_enum, value_name = "zstd|none")]
    compression: Option<CompressionArg>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Settings of `kvfs gc` and `kvfs compact`.
#[derive(Args, Debug, Clone)]
pub struct GcArgs {
    /// Bytes of objects read (and rewritten) per round; bounds memory use.
    #[arg(long, default_value_t = GcOptions::default().max_round_bytes, value_name = "BYTES")]
    round_bytes: u64,
    /// Delete an object no longer needed only this long after it stopped being needed
    /// (readers that opened the store earlier may still read it). 0 is safe only when
    /// no read-only mount or reader of this store is running.
    #[arg(long, default_value_t = GcOptions::default().grace.as_secs(), value_name = "SECONDS")]
    gc_grace_secs: u64,
    /// Delete nothing that a point in time of the last this many seconds needs (see
    /// `kvfs snapshots`).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    retain_secs: u64,
}

impl GcArgs {
    pub fn apply(&self, mut opts: Options) -> Options {
        opts.gc.max_round_bytes = self.round_bytes;
        opts.gc.grace = Duration::from_secs(self.gc_grace_secs);
        opts.gc.retain = Duration::from_secs(self.retain_secs);
        opts.gc.background = false;
        opts
    }
}

impl Tuning {
    /// Engine options of a command that writes, with no background GC (a mount
    /// turns it on).
    pub fn options(&self, access: &Access) -> Options {
        let d = Options::default();
        let mut opts = Options {
            segment_bytes: self.segment_bytes,
            flush_interval: Duration::from_millis(self.flush_interval_ms),
            cache_bytes: self.cache_bytes,
            max_unflushed_bytes: self.max_unflushed_bytes,
            gc: GcOptions {
                background: false,
                ..d.gc
            },
            ..d
        };
        access.apply(&mut opts);
        opts.encoding.compression = self.compression.map(|c| match c {
            CompressionArg::None => Compression::None,
            CompressionArg::Zstd => Compression::Zstd,
        });
        opts
    }
}

/// The command-line flag that sets an engine option, for error messages.
pub fn flag_of(option: &str) -> Option<&'static str> {
    Some(match option {
        "segment_bytes" => "--segment-bytes",
        "flush_interval" => "--flush-interval-ms",
        "cache_bytes" => "--cache-bytes",
        "max_unflushed_bytes" => "--max-unflushed-bytes",
        "gc.max_round_bytes" => "--round-bytes",
        "retry.max_elapsed" => "--retry-timeout-secs",
        _ => return None,
    })
}

fn init_logging(verbose: u8) {
    // fuser warns when its own unmount after a session finds the file system already
    // unmounted (the normal case after `umount`): keep that out of the default log.
    let level = match verbose {
        0 => "warn,fuser=error",
        1 => "info,fuser=error",
        2 => "debug,fuser=error",
        _ => "trace",
    };
    let logger = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .format_target(false)
        .build();
    let max = logger.filter();
    if log::set_boxed_logger(Box::new(QuietUnmount(logger))).is_ok() {
        log::set_max_level(max);
    }
}

/// The log, except that a FUSE reply the kernel can no longer take because the mount
/// is gone (`ENOENT`: the request was aborted with the connection; `ENODEV`: the
/// connection is closed) is logged at debug level, not as an error: after an unmount
/// with files still open, the kernel aborts what their last close sent, and nobody
/// waits for those answers any more.
struct QuietUnmount(env_logger::Logger);

impl QuietUnmount {
    /// Whether `record` is fuser's report of a reply to a mount that is gone.
    fn is_reply_to_gone_mount(record: &log::Record) -> bool {
        if record.target() != "fuser::reply" || record.level() > log::Level::Warn {
            return false;
        }
        let msg = record.args().to_string();
        msg.starts_with("Failed to send FUSE reply")
            && [libc::ENOENT, libc::ENODEV]
                .iter()
                .any(|e| msg.ends_with(&format!("(os error {e})")))
    }
}

impl log::Log for QuietUnmount {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if !Self::is_reply_to_gone_mount(record) {
            return self.0.log(record);
        }
        // Shown where fuser's debug output is (-vvv, or RUST_LOG=fuser=debug).
        let demoted = log::Metadata::builder()
            .level(log::Level::Debug)
            .target(record.target())
            .build();
        self.0.log(
            &log::Record::builder()
                .metadata(demoted)
                .args(*record.args())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.0.flush()
    }
}

/// Keep a long-running daemon's resident memory close to what it uses. It allocates
/// large buffers (dirty ranges, segments) from many threads; with glibc's defaults
/// freed memory stays in up to 8 arenas per core, and freeing a large mapped buffer
/// raises the mmap threshold, so later ones come from the heap and stay resident.
/// Two arenas, and a fixed threshold that maps and unmaps every buffer of 4 MiB or
/// more (measured: no growth while 2 GiB are written; EXPERIMENTS.md).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before other threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

/// Rust ignores SIGPIPE, so printing into a closed pipe (`kvfs scan … | head`) would
/// fail with an error; like other command-line tools, just stop instead.
fn restore_default_sigpipe() {
    // SAFETY: resetting a signal disposition to its default is always sound.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The engine options a command would open its store with, if it writes.
fn engine_options(cmd: &Command) -> Option<Options> {
    match cmd {
        Command::Put { tuning, access, .. } | Command::Delete { tuning, access, .. } => {
            Some(tuning.options(access))
        }
        Command::Gc {
            gc, tuning, access, ..
        }
        | Command::Compact {
            gc, tuning, access, ..
        } => Some(gc.apply(tuning.options(access))),
        Command::Mount(m) => Some(m.options()),
        _ => None,
    }
}

/// Print an invalid-option error, naming the flag where there is one.
fn report_invalid_option(option: &str, problem: &str) -> i32 {
    match flag_of(option) {
        Some(flag) => eprintln!("kvfs: invalid {flag}: {problem}"),
        None => eprintln!("kvfs: invalid option {option}: {problem}"),
    }
    2
}

/// The first SIGINT, SIGTERM or SIGHUP: its name and the exit status it asks for
/// (128 + signal number). Never returns if signals cannot be watched.
async fn interrupted() -> (&'static str, i32) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => ("interrupted (SIGINT)", 128 + libc::SIGINT),
        _ = term.recv() => ("terminated (SIGTERM)", 128 + libc::SIGTERM),
        _ = hup.recv() => ("hung up (SIGHUP)", 128 + libc::SIGHUP),
    }
}

/// The async runtime `builder` makes, with every driver; on failure says why.
fn build_runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    match builder.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("kvfs: cannot start the async runtime: {e}");
            None
        }
    }
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    // Bad settings are reported before anything starts (a mount would otherwise
    // fail in its background process).
    if let Some(Err(kvfs::db::Error::InvalidOption { option, problem })) =
        engine_options(&cli.command).map(|o| o.validate())
    {
        return report_invalid_option(option, &problem);
    }
    if !matches!(cli.command, Command::Mount(_)) {
        restore_default_sigpipe();
    }
    if let Command::Unmount {
        mountpoint,
        lazy,
        timeout_secs,
    } = &cli.command
    {
        return unmount::run(mountpoint, *lazy, timeout_secs.map(Duration::from_secs));
    }
    if let Command::Mount(m) = &cli.command {
        tune_allocator();
        if m.daemon_child {
            commands::enter_daemon_session();
        } else if !m.foreground {
            // Re-run in the background and wait until its mount is ready.
            return commands::spawn_mount_daemon();
        }
    }
    let Some(runtime) = build_runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return 1;
    };
    let slot = commands::WriterSlot::default();
    let outcome = runtime.block_on(async {
        if matches!(cli.command, Command::Mount(_)) {
            // The mount handles its signals itself (a clean unmount).
            return Ok(commands::run(cli.command, &slot).await);
        }
        tokio::select! {
            r = commands::run(cli.command, &slot) => Ok(r),
            (name, code) = interrupted() => {
                eprintln!("kvfs: {name}: stopping");
                if let Some(msg) = slot.abort().await {
                    eprintln!("kvfs: {msg}");
                }
                Err(code)
            }
        }
    });
    let result = match outcome {
        Ok(r) => r,
        Err(code) => return code,
    };
    match result {
        Ok(code) => code,
        Err(kvfs::db::Error::InvalidOption { option, problem }) => {
            report_invalid_option(option, &problem)
        }
        Err(e) => {
            eprintln!("kvfs: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_replies_to_a_gone_mount_are_quieted() {
        let gone = |target: &str, level: log::Level, err: std::io::Error| {
            QuietUnmount::is_reply_to_gone_mount(
                &log::Record::builder()
                    .target(target)
                    .level(level)
                    .args(format_args!("Failed to send FUSE reply: {err}"))
                    .build(),
            )
        };
        let os = std::io::Error::from_raw_os_error;
        assert!(gone("fuser::reply", log::Level::Error, os(libc::ENOENT)));
        assert!(gone("fuser::reply", log::Level::Error, os(libc::ENODEV)));
        assert!(!gone("fuser::reply", log::Level::Error, os(libc::EIO)));
        assert!(!gone("kvfs::fuse", log::Level::Error, os(libc::ENOENT)));
        assert!(!gone("fuser::reply", log::Level::Debug, os(libc::ENOENT)));
    }

    #[test]
    fn snapshots_are_named_by_number_or_utc_time() {
        assert_eq!(parse_snapshot("12"), Ok(SnapshotSpec::Seq(12)));
        assert_eq!(
            parse_snapshot("2026-11-26T23:31:12Z"),
            Ok(SnapshotSpec::At(1_795_735_872_000))
        );
        assert_eq!(
            parse_snapshot("2000-02-29 00:00"),
            Ok(SnapshotSpec::At(951_782_400_000))
        );
        assert_eq!(
            parse_snapshot("1970-01-01T00:00:00Z"),
            Ok(SnapshotSpec::At(0))
        );
        for bad in ["", "yesterday", "2026-13-01T00:00Z", "2026-11-26", "-3"] {
            assert!(parse_snapshot(bad).is_err(), "{bad:?}");
        }
    }
}
