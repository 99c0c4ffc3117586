//! `kvfs-bench fs --experiments …`: the namespace under load.
//!
//! - `contention`: files created per second through a mount on an S3 endpoint with
//!   slow GETs, alone and while another process reads cold files.
//! - `big-files`: the daemon's resident memory before and after storing more data
//!   in large files, with a bounded write buffer and cache.
//! - `readahead`: a cold sequential read of a large file over an endpoint with
//!   latency on every GET.
//! - `rename`: bytes appended to the log by renaming a directory of many files, and
//!   the time a rename of a very large directory takes (on the namespace, no mount).
//!
//! Rows go to `fs_load.csv` in the `--out` directory.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvfs::db::{Db, Options};
use kvfs::fs::keys::ROOT_INO;
use kvfs::fs::{Namespace, RenameFlags};
use kvfs_testkit::mount::Mount;
use kvfs_testkit::server::{FaultConfig, ServerOptions, TestS3Server};

use crate::support::mount::{kvfs_binary, mount_kvfs, BenchResult};
use crate::support::report::Table;

/// What the load experiments take from `kvfs-bench fs`'s arguments.
pub struct LoadArgs {
    pub experiments: Vec<String>,
    pub contention_secs: u64,
    pub contention_get_ms: u64,
    pub big_mib: u64,
    pub read_mib: u64,
    pub read_get_ms: u64,
    pub rename_files: usize,
    pub huge_rename_files: usize,
    pub out: Option<PathBuf>,
}

struct Row {
    experiment: &'static str,
    measure: &'static str,
    value: f64,
    unit: &'static str,
    target: String,
}

fn rss_mib(pid: u32) -> f64 {
    crate::support::alloc::proc_status_kib(&pid.to_string(), "VmRSS")
        .map_or(0.0, |kb| kb as f64 / 1024.0)
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

/// Create 1 KiB files in `dir` for `secs` seconds; files per second.
fn create_for(dir: &Path, secs: u64) -> BenchResult<f64> {
    std::fs::create_dir_all(dir)?;
    let data = [b'k'; 1024];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        std::fs::write(dir.join(format!("f{n:07}")), data)?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// A test S3 server keeping its objects under `root`, with a bucket `bench`.
fn start_server(root: &Path) -> BenchResult<TestS3Server> {
    std::fs::create_dir_all(root)?;
    let server = tokio::runtime::Handle::current()
        .block_on(TestS3Server::start(root, ServerOptions::default()))?;
    server.create_bucket("bench")?;
    Ok(server)
}

fn contention(a: &LoadArgs, work: &Path, rows: &mut Vec<Row>) -> BenchResult<()> {
    let server = start_server(&work.join("s3-contention"))?;
    let store = "s3://bench/contention";
    let point = work.join("mnt-contention");
    {
        let m = mount_kvfs(&server, store, &point, &[])?;
        let cold = m.point.join("cold");
        std::fs::create_dir_all(&cold)?;
        for i in 0..400 {
            std::fs::write(cold.join(format!("c{i:04}")), vec![b'c'; 16 << 10])?;
        }
    }
    server.faults().set(FaultConfig {
        get_latency: Duration::from_millis(a.contention_get_ms),
        ..FaultConfig::default()
    });
    // Remounted: nothing is cached, every cold file costs a GET.
    let m = mount_kvfs(&server, store, &point, &[])?;
    let alone = create_for(&m.point.join("alone"), a.contention_secs)?;
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, reads, cold) = (stop.clone(), reads.clone(), m.point.join("cold"));
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 400 {
                let mut buf = Vec::new();
                if let Ok(mut f) = std::fs::File::open(cold.join(format!("c{i:04}"))) {
                    let _ = f.read_to_end(&mut buf);
                }
                reads.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    let with_reader = create_for(&m.point.join("contended"), a.contention_secs)?;
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    drop(m);
    let ratio = with_reader / alone;
    eprintln!(
        "contention: {alone:.0} files/s alone, {with_reader:.0} files/s while reading cold files \
         ({} cold reads at {} ms per GET): ratio {ratio:.2}",
        reads.load(Ordering::Relaxed),
        a.contention_get_ms
    );
    rows.push(Row {
        experiment: "contention",
        measure: "creates_alone",
        value: alone,
        unit: "files/s",
        target: String::new(),
    });
    rows.push(Row {
        experiment: "contention",
        measure: "creates_with_cold_reader",
        value: with_reader,
        unit: "files/s",
        target: String::new(),
    });
    rows.push(Row {
        experiment: "contention",
        measure: "ratio",
        value: ratio,
        unit: "",
        target: ">= 0.5".into(),
    });
    Ok(())
}

/// Write `mib` MiB to a new file, 1 MiB at a time, with a non-repeating pattern.
fn write_big(path: &Path, mib: u64) -> BenchResult<()> {
    let mut f = std::fs::File::create(path)?;
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..mib {
        for (j, chunk) in buf.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&(i << 20 | j as u64).to_le_bytes());
        }
        f.write_all(&buf)?;
    }
    f.sync_all()?;
    Ok(())
}

fn big_files(a: &LoadArgs, work: &Path, rows: &mut Vec<Row>) -> BenchResult<()> {
    let store = work.join("store-big");
    let point = work.join("mnt-big");
    let m = Mount::start(
        &kvfs_binary(),
        store.to_str().ok_or("work path is not UTF-8")?,
        &point,
        &[
            "--max-unflushed-bytes",
            &(32u64 << 20).to_string(),
            "--cache-bytes",
            &(16u64 << 20).to_string(),
        ],
        &[] as &[(&str, &str)],
    )?;
    let pid = m.pid();
    write_big(&m.point.join("warm"), 256)?;
    std::thread::sleep(Duration::from_secs(2));
    let before = rss_mib(pid);
    let start = Instant::now();
    for i in 0..a.big_mib.div_ceil(512) {
        write_big(
            &m.point.join(format!("big{i}")),
            512.min(a.big_mib - i * 512),
        )?;
    }
    let secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_mib(pid);
    drop(m);
    eprintln!(
        "big-files: RSS {before:.1} -> {after:.1} MiB after storing {} MiB more ({:.0} MiB/s)",
        a.big_mib,
        a.big_mib as f64 / secs
    );
    rows.push(Row {
        experiment: "big-files",
        measure: "rss_growth",
        value: after - before,
        unit: "MiB",
        target: format!("<= 40 for 2048 MiB (stored {} MiB)", a.big_mib),
    });
    rows.push(Row {
        experiment: "big-files",
        measure: "write_rate",
        value: a.big_mib as f64 / secs,
        unit: "MiB/s",
        target: String::new(),
    });
    Ok(())
}

fn readahead(a: &LoadArgs, work: &Path, rows: &mut Vec<Row>) -> BenchResult<()> {
    let server = start_server(&work.join("s3-readahead"))?;
    let store = "s3://bench/readahead";
    let point = work.join("mnt-readahead");
    {
        let m = mount_kvfs(&server, store, &point, &[])?;
        write_big(&m.point.join("big"), a.read_mib)?;
    }
    server.faults().set(FaultConfig {
        get_latency: Duration::from_millis(a.read_get_ms),
        ..FaultConfig::default()
    });
    let m = mount_kvfs(&server, store, &point, &[])?;
    let before = server.request_counts();
    let (daemon_cpu, bench_cpu) = (cpu_secs(m.pid()), cpu_secs(std::process::id()));
    let start = Instant::now();
    let mut f = std::fs::File::open(m.point.join("big"))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    let daemon_cpu = cpu_secs(m.pid()) - daemon_cpu;
    let bench_cpu = cpu_secs(std::process::id()) - bench_cpu;
    let gets = server.request_counts().get - before.get;
    drop(m);
    let rate = total as f64 / secs / 1e6;
    eprintln!(
        "readahead: {} MiB read cold in {secs:.2} s = {rate:.0} MB/s with {} ms per GET ({gets} GETs); \
         CPU: daemon {daemon_cpu:.1} s, S3 server and reader {bench_cpu:.1} s",
        total >> 20,
        a.read_get_ms
    );
    rows.push(Row {
        experiment: "readahead",
        measure: "cold_sequential_read",
        value: rate,
        unit: "MB/s",
        target: ">= 200".into(),
    });
    rows.push(Row {
        experiment: "readahead",
        measure: "gets",
        value: gets as f64,
        unit: "requests",
        target: String::new(),
    });
    Ok(())
}

async fn fill_dir(ns: &Namespace, dir: u64, files: usize) -> BenchResult<()> {
    for i in 0..files {
        let ino = ns
            .create(dir, format!("f{i:07}").as_bytes(), 0o644, (0, 0))
            .await?
            .ino;
        ns.open(ino, false).await?;
        ns.write(ino, 0, &[b'r'; 64]).await?;
        ns.release(ino).await?;
        if i > 0 && i % 100_000 == 0 {
            eprintln!("rename: {i} files created");
        }
    }
    Ok(())
}

/// Log bytes and time of renaming a directory of `files` files to another parent.
async fn rename_once(work: &Path, files: usize) -> BenchResult<(u64, f64, f64)> {
    let store = work.join(format!("store-rename-{files}"));
    let opts = Options {
        checkpoint_bytes: u64::MAX,
        ..Options::default()
    };
    let db = Db::open(store.to_str().ok_or("work path is not UTF-8")?, opts).await?;
    let ns = Namespace::new(db, (0, 0)).await?;
    let a = ns.mkdir(ROOT_INO, b"a", 0o755, (0, 0)).await?.ino;
    let b = ns.mkdir(ROOT_INO, b"b", 0o755, (0, 0)).await?.ino;
    let d = ns.mkdir(a, b"dir", 0o755, (0, 0)).await?.ino;
    let t = Instant::now();
    fill_dir(&ns, d, files).await?;
    let fill_secs = t.elapsed().as_secs_f64();
    ns.sync_all().await?;
    let before = ns.db().metrics().put_bytes;
    let t = Instant::now();
    ns.rename(a, b"dir", b, b"moved", RenameFlags::default())
        .await?;
    let secs = t.elapsed().as_secs_f64();
    ns.sync_all().await?;
    let bytes = ns.db().metrics().put_bytes - before;
    ns.shutdown().await?;
    let _ = std::fs::remove_dir_all(&store);
    Ok((bytes, secs, fill_secs))
}

async fn rename(a: &LoadArgs, work: &Path, rows: &mut Vec<Row>) -> BenchResult<()> {
    let (bytes, secs, _) = rename_once(work, a.rename_files).await?;
    eprintln!(
        "rename: {} files: {bytes} bytes uploaded, {:.3} ms",
        a.rename_files,
        secs * 1e3
    );
    rows.push(Row {
        experiment: "rename",
        measure: "log_bytes",
        value: bytes as f64,
        unit: "bytes",
        target: format!("<= 262144 for 20000 files ({} files)", a.rename_files),
    });
    let (bytes, secs, fill) = rename_once(work, a.huge_rename_files).await?;
    eprintln!(
        "rename: {} files (created in {fill:.1} s): {bytes} bytes uploaded, {:.3} ms",
        a.huge_rename_files,
        secs * 1e3
    );
    rows.push(Row {
        experiment: "rename",
        measure: "huge_rename_ms",
        value: secs * 1e3,
        unit: "ms",
        target: format!("< 2000 for 1000000 files ({} files)", a.huge_rename_files),
    });
    Ok(())
}

pub async fn run(a: LoadArgs) -> BenchResult<()> {
    let work = std::env::temp_dir().join(format!("kvfs-bench-load-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut rows = Vec::new();
    for e in &a.experiments {
        eprintln!("== {e}");
        match e.as_str() {
            "contention" => tokio::task::block_in_place(|| contention(&a, &work, &mut rows))?,
            "big-files" => tokio::task::block_in_place(|| big_files(&a, &work, &mut rows))?,
            "readahead" => tokio::task::block_in_place(|| readahead(&a, &work, &mut rows))?,
            "rename" => rename(&a, &work, &mut rows).await?,
            other => return Err(format!("unknown experiment {other:?}").into()),
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    let mut t = Table::new(
        "The namespace under load",
        &["experiment", "measure", "value", "unit", "target"],
    );
    for r in &rows {
        t.row(vec![
            r.experiment.to_string(),
            r.measure.to_string(),
            format!("{:.3}", r.value),
            r.unit.to_string(),
            r.target.clone(),
        ]);
    }
    print!("{}", t.render());
    if let Some(out) = &a.out {
        t.write_csv(out, "fs_load")?;
        eprintln!("wrote {}", out.join("fs_load.csv").display());
    }
    Ok(())
}
