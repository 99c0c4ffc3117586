//! `kvfs-bench encoding`: the throughput cost of compression and encryption.
//!
//! Four modes: `plain` (neither), `zstd`, `encrypted` (XChaCha20-Poly1305) and
//! `encrypted+zstd`, each on new local directory stores (under `--work-dir`, by
//! default the system's temporary directory), so that no network latency hides the
//! CPU cost. The stores fsync what they write, so the disk is part of the figures.
//!
//! The data: values of `--value-bytes` (4 KiB), alternately log-like text (lines of a
//! web server log with changing timestamps, paths, statuses, sizes and random request
//! ids; zstd shrinks it several times) and random bytes from a seeded generator
//! (incompressible): "mixed" data, half compressible. A second data set of text
//! only (`--text-mib`, through the engine) shows the best case of compression.
//!
//! 1. **Engine.** `--engine-mib` of mixed values put through the engine from one task
//!    (keys in order), with a sync every `--sync-mib` and at the end: write MB/s.
//!    Then compaction into sorted runs (not timed) and the store's stored bytes over
//!    the bytes of the same objects before encoding (`kvfs stats`); then a fresh
//!    read-only handle (nothing cached) gets every key back and checks it: read MB/s.
//!    The same again with `--text-mib` of text-only values.
//! 2. **Mount.** `kvfs mount` of a new directory store with the mode's
//!    `--compression` and `--encryption-key-file`; a file of `--mount-mib` of the
//!    mixed data written in 1 MiB writes, then fsynced: write MB/s. Unmounted,
//!    mounted again and read back in 1 MiB reads, cold (a new mount has nothing
//!    cached), and checked: read MB/s. Stored bytes: the sizes of all files in the
//!    store directory after the last unmount.
//!
//! Every run is repeated `--repeats` times, after an untimed warm-up of every mode.
//! Within a repeat, the modes run one after the other for each phase, in an order
//! rotated from one repeat to the next, so that noise that drifts hits all modes
//! alike. Reported per mode and phase: the median MB/s (10^6 bytes of values or
//! file per second), its ratio to the plain mode's median, and stored bytes per plain
//! bytes (engine: the store's stored bytes over the bytes of the same objects before
//! encoding; mount: the store directory's bytes over those of the plain mode's).
//!
//! Rows go to `encoding.csv`, the medians as grouped bars to `encoding.png`, in
//! `--out`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use kvfs::db::{Db, GcOptions, Options};
use kvfs::format::envelope::Compression;
use kvfs::store::encoding::EncryptionKey;
use kvfs::store::local::LocalStore;
use kvfs::store::DynStore;
use kvfs_testkit::mount::Mount;

use crate::support::mount::{kvfs_binary, BenchResult};
use crate::support::plot;
use crate::support::report::{quantile, Table};

#[derive(Args, Debug)]
pub struct EncodingArgs {
    /// MiB of mixed data (half log text, half random bytes) put through the engine,
    /// per mode and repeat.
    #[arg(long, default_value_t = 64)]
    engine_mib: u64,
    /// MiB of text-only data put through the engine, per mode and repeat (0: no
    /// text-only runs).
    #[arg(long, default_value_t = 64)]
    text_mib: u64,
    /// MiB of mixed data in the file written and read through a mount, per mode and
    /// repeat.
    #[arg(long, default_value_t = 64)]
    mount_mib: u64,
    /// No mount runs (they need /dev/fuse, fusermount3 and the kvfs binary next to
    /// this one; without FUSE they are skipped anyway).
    #[arg(long)]
    no_mount: bool,
    /// Size of the values put through the engine.
    #[arg(long, default_value_t = 4096)]
    value_bytes: usize,
    /// Sync the engine after every this many MiB of values.
    #[arg(long, default_value_t = 4)]
    sync_mib: u64,
    /// Runs of every mode and phase; the tables show medians.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Seed of the data (and of the encryption key).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory for the stores and mount points (default: the system's temporary
    /// directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// A short run: 16 MiB per data set, one repeat.
    #[arg(long)]
    quick: bool,
    /// Write encoding.csv and encoding.png here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Plain,
    Zstd,
    Encrypted,
    EncryptedZstd,
}

const MODES: [Mode; 4] = [
    Mode::Plain,
    Mode::Zstd,
    Mode::Encrypted,
    Mode::EncryptedZstd,
];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Zstd => "zstd",
            Mode::Encrypted => "encrypted",
            Mode::EncryptedZstd => "encrypted+zstd",
        }
    }

    fn encrypted(self) -> bool {
        matches!(self, Mode::Encrypted | Mode::EncryptedZstd)
    }

    fn compression(self) -> Compression {
        match self {
            Mode::Zstd | Mode::EncryptedZstd => Compression::Zstd,
            Mode::Plain | Mode::Encrypted => Compression::None,
        }
    }

    /// Options of the engine writer: no background work, and nothing kept after
    /// compaction (no grace period), so that compaction does not wait.
    fn writer_options(self, key: &EncryptionKey) -> Options {
        let mut opts = Options {
            gc: GcOptions {
                background: false,
                grace: Duration::ZERO,
                ..GcOptions::default()
            },
            ..Options::default()
        };
        opts.encoding.key = self.encrypted().then(|| key.clone());
        opts.encoding.compression = Some(self.compression());
        opts
    }

    fn reader_options(self, key: &EncryptionKey) -> Options {
        let mut opts = Options::read_only();
        opts.encoding.key = self.encrypted().then(|| key.clone());
        opts
    }

    /// `kvfs mount` flags of this mode (given to both mounts: the second needs the
    /// key, and the store remembers its compression anyway).
    fn mount_flags(self, key_file: &Path) -> BenchResult<Vec<String>> {
        let compression = self.compression().name();
        let mut flags = vec![
            "--no-background-gc".to_string(),
            "--compression".to_string(),
            compression.to_string(),
        ];
        if self.encrypted() {
            flags.push("--encryption-key-file".to_string());
            flags.push(
                key_file
                    .to_str()
                    .ok_or("work path is not UTF-8")?
                    .to_string(),
            );
        }
        Ok(flags)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    EngineWrite,
    EngineRead,
    MountWrite,
    MountRead,
    EngineWriteText,
    EngineReadText,
}

/// The order of the rows and of the chart's groups.
const PHASES: [Phase; 6] = [
    Phase::EngineWrite,
    Phase::EngineRead,
    Phase::MountWrite,
    Phase::MountRead,
    Phase::EngineWriteText,
    Phase::EngineReadText,
];

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::EngineWrite => "engine write",
            Phase::EngineRead => "engine read",
            Phase::MountWrite => "mount write",
            Phase::MountRead => "mount read",
            Phase::EngineWriteText => "engine write (text)",
            Phase::EngineReadText => "engine read (text)",
        }
    }

    fn is_mount(self) -> bool {
        matches!(self, Phase::MountWrite | Phase::MountRead)
    }
}

/// One timed run of one phase in one mode.
struct Sample {
    phase: Phase,
    mode: Mode,
    mb_per_s: f64,
    /// Bytes the store held afterwards.
    stored_bytes: u64,
    /// Bytes of the same objects before encoding (engine runs only).
    plain_bytes: Option<u64>,
}

/// Log lines of a web server, one after the other, cut wherever a value ends.
struct LogLines {
    rng: StdRng,
    n: u64,
    line: Vec<u8>,
    pos: usize,
}

impl LogLines {
    fn new(seed: u64) -> Self {
        LogLines {
            rng: StdRng::seed_from_u64(seed),
            n: 0,
            line: Vec::new(),
            pos: 0,
        }
    }

    fn next_line(&mut self) {
        const LEVELS: [&str; 5] = ["INFO", "INFO", "INFO", "DEBUG", "WARN"];
        const METHODS: [&str; 6] = ["GET", "GET", "GET", "POST", "PUT", "DELETE"];
        const PATHS: [&str; 6] = [
            "/api/v1/items",
            "/api/v1/users",
            "/api/v1/orders",
            "/static/js/app.js",
            "/healthz",
            "/api/v1/search",
        ];
        const STATUS: [u16; 9] = [200, 200, 200, 200, 201, 204, 304, 404, 500];
        let r = &mut self.rng;
        // About 270 lines a second.
        let ms = self.n * 37 / 10;
        self.n += 1;
        self.line.clear();
        self.pos = 0;
        let _ = writeln!(
            self.line,
            "2026-11-26T{:02}:{:02}:{:02}.{:03}Z {:<5} [worker-{}] {} {}/{} status={} bytes={} duration_ms={} request_id={:016x}",
            ms / 3_600_000 % 24,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000,
            LEVELS[r.random_range(0..LEVELS.len())],
            r.random_range(0..8),
            METHODS[r.random_range(0..METHODS.len())],
            PATHS[r.random_range(0..PATHS.len())],
            r.random_range(0..100_000),
            STATUS[r.random_range(0..STATUS.len())],
            r.random_range(0..65_536),
            r.random_range(0..250),
            r.random::<u64>(),
        );
    }

    fn fill(&mut self, dst: &mut [u8]) {
        let mut i = 0;
        while i < dst.len() {
            if self.pos == self.line.len() {
                self.next_line();
            }
            let k = (self.line.len() - self.pos).min(dst.len() - i);
            dst[i..i + k].copy_from_slice(&self.line[self.pos..self.pos + k]);
            i += k;
            self.pos += k;
        }
    }
}

/// `mib` MiB of values of `value_bytes`: alternately log text and random bytes
/// (`mixed`), or text only.
fn dataset(mib: u64, value_bytes: usize, mixed: bool, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; (mib << 20) as usize];
    let mut text = LogLines::new(seed);
    let mut noise = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    for (i, v) in out.chunks_mut(value_bytes).enumerate() {
        if mixed && i % 2 == 1 {
            noise.fill_bytes(v);
        } else {
            text.fill(v);
        }
    }
    out
}

fn value_key(i: usize) -> Vec<u8> {
    format!("value/{i:08}").into_bytes()
}

fn mb_per_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

struct EngineOutcome {
    write_mb_s: f64,
    read_mb_s: f64,
    stored_bytes: u64,
    plain_bytes: u64,
}

/// Put `data` as values into a new store at `dir`, compact it, and get every value
/// back through a fresh read-only handle.
async fn engine_run(
    dir: &Path,
    mode: Mode,
    key: &EncryptionKey,
    data: &[u8],
    a: &EncodingArgs,
) -> BenchResult<EngineOutcome> {
    let _ = std::fs::remove_dir_all(dir);
    let store: DynStore = Arc::new(LocalStore::open(dir)?);
    let db = Db::open_store(store, mode.writer_options(key)).await?;
    let values: Vec<&[u8]> = data.chunks(a.value_bytes).collect();
    let sync_every = (a.sync_mib << 20).max(1) as usize;
    let start = Instant::now();
    let mut unsynced = 0;
    for (i, v) in values.iter().enumerate() {
        db.put(&value_key(i), v).await?;
        unsynced += v.len();
        if unsynced >= sync_every {
            db.sync().await?;
            unsynced = 0;
        }
    }
    db.sync().await?;
    let write_secs = start.elapsed().as_secs_f64();
    db.compact(&mut |_| {}).await?;
    let stats = db.stats().await?;
    db.close().await?;

    let store: DynStore = Arc::new(LocalStore::open(dir)?);
    let db = Db::open_store(store, mode.reader_options(key)).await?;
    let start = Instant::now();
    for (i, v) in values.iter().enumerate() {
        match db.get(&value_key(i)).await? {
            Some(got) if got[..] == v[..] => {}
            got => {
                return Err(format!(
                    "{}: value {i} {} after reopening",
                    mode.name(),
                    if got.is_some() { "differs" } else { "missing" }
                )
                .into())
            }
        }
    }
    let read_secs = start.elapsed().as_secs_f64();
    db.close().await?;
    std::fs::remove_dir_all(dir)?;
    Ok(EngineOutcome {
        write_mb_s: mb_per_s(data.len(), write_secs),
        read_mb_s: mb_per_s(data.len(), read_secs),
        stored_bytes: stats.stored_bytes,
        plain_bytes: stats.plain_bytes,
    })
}

struct MountOutcome {
    write_mb_s: f64,
    read_mb_s: f64,
    stored_bytes: u64,
}

fn unmount(m: Mount) -> BenchResult<()> {
    let point = m.point.clone();
    let status = m.unmount()?;
    if !status.success() {
        return Err(format!("the daemon of {} exited with {status}", point.display()).into());
    }
    Ok(())
}

/// Write `data` as one file through a mount of a new store at `dir/store`, fsync
/// it, unmount; mount again and read it back.
fn mount_run(dir: &Path, mode: Mode, key_file: &Path, data: &[u8]) -> BenchResult<MountOutcome> {
    let _ = std::fs::remove_dir_all(dir);
    let store = dir.join("store");
    let point = dir.join("mnt");
    let store_url = store.to_str().ok_or("work path is not UTF-8")?;
    let flags = mode.mount_flags(key_file)?;
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let no_env: &[(&str, &str)] = &[];

    let m = Mount::start(&kvfs_binary(), store_url, &point, &flags, no_env)?;
    let start = Instant::now();
    let mut f = std::fs::File::create(m.point.join("data"))?;
    for chunk in data.chunks(1 << 20) {
        f.write_all(chunk)?;
    }
    f.sync_all()?;
    let write_secs = start.elapsed().as_secs_f64();
    drop(f);
    unmount(m)?;

    let m = Mount::start(&kvfs_binary(), store_url, &point, &flags, no_env)?;
    let start = Instant::now();
    let mut f = std::fs::File::open(m.point.join("data"))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if data.get(pos..pos + n) != Some(&buf[..n]) {
            return Err(format!("{}: the file read back differs at {pos}", mode.name()).into());
        }
        pos += n;
    }
    let read_secs = start.elapsed().as_secs_f64();
    drop(f);
    unmount(m)?;
    if pos != data.len() {
        return Err(format!("{}: read back {pos} bytes of {}", mode.name(), data.len()).into());
    }
    let stored_bytes = dir_bytes(&store)?;
    std::fs::remove_dir_all(dir)?;
    Ok(MountOutcome {
        write_mb_s: mb_per_s(data.len(), write_secs),
        read_mb_s: mb_per_s(data.len(), read_secs),
        stored_bytes,
    })
}

/// Sizes of all files under `dir`.
fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let meta = e.metadata()?;
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// A directory removed when the benchmark ends, also on an error.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The key every encrypted run uses, and its file for `kvfs mount` (32 raw bytes,
/// readable by the owner only).
fn make_key(dir: &Path, seed: u64) -> BenchResult<(EncryptionKey, PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 32];
    StdRng::seed_from_u64(seed.wrapping_add(0x6b65_7973)).fill_bytes(&mut bytes);
    let path = dir.join("encryption.key");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(&bytes)?;
    Ok((EncryptionKey::from_bytes(&bytes), path))
}

fn mount_possible(a: &EncodingArgs) -> BenchResult<bool> {
    if a.no_mount || a.mount_mib == 0 {
        return Ok(false);
    }
    if !Path::new("/dev/fuse").exists() || !kvfs_testkit::mount::have("fusermount3") {
        eprintln!("warning: no /dev/fuse or no fusermount3: no mount runs");
        return Ok(false);
    }
    let kvfs = kvfs_binary();
    if !kvfs.exists() {
        return Err(format!(
            "{} is missing: cargo build --release -p kvfs -p kvfs-bench (or --no-mount)",
            kvfs.display()
        )
        .into());
    }
    Ok(true)
}

pub async fn run(mut a: EncodingArgs) -> BenchResult<()> {
    if a.quick {
        a.engine_mib = a.engine_mib.min(16);
        a.text_mib = a.text_mib.min(16);
        a.mount_mib = a.mount_mib.min(16);
        a.repeats = 1;
    }
    if a.repeats == 0 || a.value_bytes == 0 || a.engine_mib == 0 {
        return Err("need --repeats, --value-bytes and --engine-mib above 0".into());
    }
    let mount = mount_possible(&a)?;
    let base = a.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = WorkDir(base.join(format!("kvfs-bench-encoding-{}", std::process::id())));
    std::fs::create_dir_all(&work.0)?;
    let (key, key_file) = make_key(&work.0, a.seed)?;
    let mixed_mib = a.engine_mib.max(if mount { a.mount_mib } else { 0 });
    let mixed = dataset(mixed_mib, a.value_bytes, true, a.seed);
    let text = dataset(a.text_mib, a.value_bytes, false, a.seed);
    let engine_data = &mixed[..(a.engine_mib << 20) as usize];
    let mount_data = &mixed[..(a.mount_mib.min(mixed_mib) << 20) as usize];

    eprintln!("warm-up: every mode once, untimed");
    let warm = &mixed[..(a.engine_mib.min(4) << 20) as usize];
    for mode in MODES {
        engine_run(&work.0.join("warm-up"), mode, &key, warm, &a).await?;
    }

    let mut samples = Vec::new();
    for rep in 0..a.repeats {
        let order: Vec<Mode> = (0..MODES.len())
            .map(|i| MODES[(i + rep) % MODES.len()])
            .collect();
        let mut sets = vec![(engine_data, Phase::EngineWrite, Phase::EngineRead)];
        if a.text_mib > 0 {
            sets.push((&text[..], Phase::EngineWriteText, Phase::EngineReadText));
        }
        for (data, write, read) in sets {
            for &mode in &order {
                let dir = work.0.join(format!("engine-{rep}"));
                let o = engine_run(&dir, mode, &key, data, &a).await?;
                let ratio = o.stored_bytes as f64 / o.plain_bytes.max(1) as f64;
                eprintln!(
                    "repeat {}: {:<14} {:<20} {:>7.1} MB/s, read {:>7.1} MB/s; stored/plain {ratio:.3}",
                    rep + 1,
                    mode.name(),
                    write.name(),
                    o.write_mb_s,
                    o.read_mb_s
                );
                for (phase, rate) in [(write, o.write_mb_s), (read, o.read_mb_s)] {
                    samples.push(Sample {
                        phase,
                        mode,
                        mb_per_s: rate,
                        stored_bytes: o.stored_bytes,
                        plain_bytes: Some(o.plain_bytes),
                    });
                }
            }
        }
        if mount {
            for &mode in &order {
                let dir = work.0.join(format!("mount-{rep}"));
                let o =
                    tokio::task::block_in_place(|| mount_run(&dir, mode, &key_file, mount_data))?;
                eprintln!(
                    "repeat {}: {:<14} {:<20} {:>7.1} MB/s, read {:>7.1} MB/s; stored {:.1} MiB",
                    rep + 1,
                    mode.name(),
                    "mount write",
                    o.write_mb_s,
                    o.read_mb_s,
                    o.stored_bytes as f64 / (1 << 20) as f64
                );
                for (phase, rate) in [
                    (Phase::MountWrite, o.write_mb_s),
                    (Phase::MountRead, o.read_mb_s),
                ] {
                    samples.push(Sample {
                        phase,
                        mode,
                        mb_per_s: rate,
                        stored_bytes: o.stored_bytes,
                        plain_bytes: None,
                    });
                }
            }
        }
    }
    drop(work);
    report(&a, mount, &samples)
}

/// Medians of one phase in one mode: MB/s, stored bytes, stored/plain (engine).
struct Median {
    mb_per_s: f64,
    stored_bytes: f64,
    stored_per_plain: Option<f64>,
    runs: usize,
}

fn median_of(samples: &[Sample], phase: Phase, mode: Mode) -> Option<Median> {
    let mine: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.phase == phase && s.mode == mode)
        .collect();
    if mine.is_empty() {
        return None;
    }
    let rates: Vec<f64> = mine.iter().map(|s| s.mb_per_s).collect();
    let stored: Vec<f64> = mine.iter().map(|s| s.stored_bytes as f64).collect();
    let per_plain: Vec<f64> = mine
        .iter()
        .filter_map(|s| {
            s.plain_bytes
                .map(|p| s.stored_bytes as f64 / p.max(1) as f64)
        })
        .collect();
    Some(Median {
        mb_per_s: quantile(&rates, 0.5),
        stored_bytes: quantile(&stored, 0.5),
        stored_per_plain: (!per_plain.is_empty()).then(|| quantile(&per_plain, 0.5)),
        runs: mine.len(),
    })
}

fn runs_phrase(repeats: usize) -> String {
    if repeats == 1 {
        "one run".to_string()
    } else {
        format!("medians of {repeats} runs")
    }
}

fn report(a: &EncodingArgs, mount: bool, samples: &[Sample]) -> BenchResult<()> {
    let mut title = format!(
        "throughput by encoding, {}: {} MiB of {} B values (half log text, half random \
         bytes) through the engine",
        runs_phrase(a.repeats),
        a.engine_mib,
        a.value_bytes
    );
    if a.text_mib > 0 {
        title += &format!(", {} MiB of text only", a.text_mib);
    }
    if mount {
        title += &format!(
            ", a {} MiB file of the same data through a mount",
            a.mount_mib
        );
    }
    title += "; local directory stores";
    let mut t = Table::new(
        &title,
        &[
            "mode",
            "phase",
            "mb_per_s",
            "ratio_to_plain",
            "stored_per_plain_bytes",
            "stored_mib",
            "runs",
        ],
    );
    let mut groups = Vec::new();
    let mut bars: Vec<plot::Bars> = MODES
        .iter()
        .map(|m| plot::Bars {
            name: m.name().to_string(),
            values: Vec::new(),
        })
        .collect();
    for phase in PHASES {
        let Some(plain) = median_of(samples, phase, Mode::Plain) else {
            continue;
        };
        groups.push(phase.name().to_string());
        for (mode, series) in MODES.iter().zip(bars.iter_mut()) {
            let Some(m) = median_of(samples, phase, *mode) else {
                series.values.push(f64::NAN);
                continue;
            };
            let stored_per_plain = if phase.is_mount() {
                m.stored_bytes / plain.stored_bytes.max(1.0)
            } else {
                m.stored_per_plain.unwrap_or(f64::NAN)
            };
            t.row(vec![
                mode.name().to_string(),
                phase.name().to_string(),
                format!("{:.1}", m.mb_per_s),
                format!("{:.2}", m.mb_per_s / plain.mb_per_s),
                format!("{stored_per_plain:.3}"),
                format!("{:.1}", m.stored_bytes / (1 << 20) as f64),
                m.runs.to_string(),
            ]);
            series.values.push(m.mb_per_s);
        }
    }
    print!("{}", t.render());
    let Some(out) = &a.out else {
        return Ok(());
    };
    t.write_csv(out, "encoding")?;
    eprintln!("wrote {}", out.join("encoding.csv").display());
    plot::bars(
        &out.join("encoding.png"),
        &plot::Chart {
            title: &format!(
                "Throughput by encoding ({}, local directory stores)",
                runs_phrase(a.repeats)
            ),
            x_label: "",
            y_label: "MB/s",
            log_x: false,
            log_y: false,
        },
        &groups,
        &bars,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_data_alternates_text_and_noise() {
        let d = dataset(1, 4096, true, 7);
        assert_eq!(d.len(), 1 << 20);
        assert!(d[..4096].is_ascii());
        assert!(!d[4096..8192].is_ascii());
        assert_eq!(d, dataset(1, 4096, true, 7));
        assert!(dataset(1, 4096, false, 7).is_ascii());
    }
}
