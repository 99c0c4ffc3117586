//! `kvfs-bench fs`: small-file workloads through mounted file systems, side by side
//! against one S3 endpoint with S3-like latency injected at the server.
//!
//! Systems:
//! - `kvfs`: `kvfs mount s3://bench/kvfs-…`;
//! - `bindfs`: bindfs over tmpfs, no S3 at all (the ceiling FUSE itself allows);
//! - `s3fs`: s3fs-fuse, one object per file;
//! - `rclone`: `rclone mount` (Debian package `rclone`), one object per file, with
//!   rclone's documented settings for small-file writes: `--vfs-cache-mode writes`
//!   (files are written to a local cache and uploaded after close, `--vfs-write-back`
//!   5 s later), path-style requests, configured by an rclone config file in a
//!   temporary directory. Without rclone installed, its column is skipped with a note.
//!
//! Workloads (each in a fresh directory of the mount):
//! - `create_close`: create, write `--file-bytes`, close; one writer; five rounds,
//!   the median round is reported;
//! - `create_fsync_1` / `create_fsync_16`: the same with fsync before close, by 1 and
//!   by 16 concurrent writers;
//! - `ls_l`: `ls -l` of a directory of `--ls-files` files, after a remount (kvfs) —
//!   metadata comes from the index in memory;
//! - the kvfs daemon's peak RSS after all of it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;

use kvfs_testkit::server::{RequestCounts, TestS3Server};
use kvfs_testkit::server::{TEST_ACCESS_KEY, TEST_SECRET_KEY};

use crate::support::mount::{mount_kvfs, BenchResult};
use crate::support::report::{quantile, Table};
use crate::support::server::SimulatedLatency;
use kvfs_testkit::mount::{force_unmount, require, wait_mounted, Mount};

#[derive(Args, Debug)]
pub struct FsArgs {
    /// Files per single-writer workload.
    #[arg(long, default_value_t = 1000)]
    files: usize,
    /// Bytes per file.
    #[arg(long, default_value_t = 1024)]
    file_bytes: usize,
    /// Concurrent writers in the fsync workload.
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Files in the directory listed by `ls -l`.
    #[arg(long, default_value_t = 10_000)]
    ls_files: usize,
    /// MiB written (as 1 MiB files, 4 writers) in the sustained-write run.
    #[arg(long, default_value_t = 1024)]
    sustained_mib: u64,
    /// At most this many files per workload for s3fs (about 10 files/s).
    #[arg(long, default_value_t = 150)]
    s3fs_files: usize,
    #[command(flatten)]
    latency: SimulatedLatency,
    /// At most this many files per workload for rclone.
    #[arg(long, default_value_t = 1000)]
    rclone_files: usize,
    /// Systems to run, comma-separated: kvfs, bindfs, s3fs, rclone.
    #[arg(long, default_value = "kvfs,bindfs,s3fs,rclone")]
    systems: String,
    /// Experiments, comma-separated: small-files (the workloads above, per system),
    /// contention, big-files, readahead, rename (the namespace under load).
    #[arg(
        long,
        default_value = "small-files,contention,big-files,readahead,rename"
    )]
    experiments: String,
    /// Seconds of file creation, alone and next to a cold reader (contention).
    #[arg(long, default_value_t = 10)]
    contention_secs: u64,
    /// Latency of every GET in the contention experiment.
    #[arg(long, default_value_t = 200)]
    contention_get_ms: u64,
    /// MiB stored in large files after a warm-up (big-files).
    #[arg(long, default_value_t = 2048)]
    big_mib: u64,
    /// MiB of the file read cold (readahead).
    #[arg(long, default_value_t = 1024)]
    read_mib: u64,
    /// Latency of every GET in the readahead experiment.
    #[arg(long, default_value_t = 15)]
    read_get_ms: u64,
    /// Files in the directory whose rename is measured in log bytes (rename).
    #[arg(long, default_value_t = 20_000)]
    rename_files: usize,
    /// Files in the directory whose rename is timed (rename).
    #[arg(long, default_value_t = 1_000_000)]
    huge_rename_files: usize,
    /// About a minute: 5x fewer files.
    #[arg(long)]
    quick: bool,
    /// Write fs.csv here.
    #[arg(long)]
    out: Option<PathBuf>,
}

struct Row {
    system: String,
    workload: &'static str,
    files: usize,
    seconds: f64,
    files_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: RequestCounts,
}

/// bindfs over a fresh tmpfs under `work`: FUSE with no storage behind it.
pub(crate) fn mount_bindfs(work: &Path) -> BenchResult<Mount> {
    require("bindfs", "bindfs")?;
    let src = work.join("tmpfs");
    let point = work.join("mnt-bindfs");
    std::fs::create_dir_all(&src)?;
    std::fs::create_dir_all(&point)?;
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&src)
        .status()?
        .success();
    if !ok {
        return Err("mounting tmpfs failed".into());
    }
    let ok = Command::new("bindfs")
        .arg(&src)
        .arg(&point)
        .status()?
        .success();
    if !ok {
        force_unmount(&src);
        return Err("bindfs failed".into());
    }
    let mut none = None;
    wait_mounted(&point, &mut none)?;
    let mut m = Mount::adopt(&point, None);
    m.extra_unmount = Some(src);
    Ok(m)
}

fn mount_s3fs(server: &TestS3Server, work: &Path) -> BenchResult<Mount> {
    require("s3fs", "s3fs")?;
    let point = work.join("mnt-s3fs");
    std::fs::create_dir_all(&point)?;
    let passwd = work.join("s3fs-passwd");
    std::fs::write(&passwd, format!("{TEST_ACCESS_KEY}:{TEST_SECRET_KEY}\n"))?;
    let mut perms = std::fs::metadata(&passwd)?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&passwd, perms)?;
    // Documented small-file settings: no local cache, path-style requests.
    let ok = Command::new("s3fs")
        .arg("bench:/s3fs")
        .arg(&point)
        .args([
            "-o",
            &format!("url={}", server.endpoint()),
            "-o",
            "use_path_request_style",
            "-o",
            &format!("passwd_file={}", passwd.display()),
            "-o",
            "endpoint=us-east-1",
            "-o",
            "sigv4",
        ])
        .status()?
        .success();
    if !ok {
        return Err("s3fs failed to mount".into());
    }
    let mut none = None;
    wait_mounted(&point, &mut none)?;
    Ok(Mount::adopt(&point, None))
}

/// Wait (at most three minutes, or ten seconds without progress) until the server has
/// received `n` PUTs since `before`; the number it received.
fn wait_for_puts(server: &TestS3Server, before: &RequestCounts, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut last = (0, Instant::now());
    loop {
        let puts = server.request_counts().since(before).put;
        if puts >= n || Instant::now() > deadline || last.1.elapsed() > Duration::from_secs(10) {
            return puts.min(n);
        }
        if puts != last.0 {
            last = (puts, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn mount_rclone(server: &TestS3Server, work: &Path) -> BenchResult<Mount> {
    require("rclone", "rclone")?;
    let point = work.join("mnt-rclone");
    let conf_dir = work.join("rclone");
    std::fs::create_dir_all(&point)?;
    std::fs::create_dir_all(conf_dir.join("cache"))?;
    let conf = conf_dir.join("rclone.conf");
    std::fs::write(
        &conf,
        format!(
            "[bench]\ntype = s3\nprovider = Other\nendpoint = {}\naccess_key_id = {TEST_ACCESS_KEY}\nsecret_access_key = {TEST_SECRET_KEY}\nregion = us-east-1\nforce_path_style = true\n",
            server.endpoint()
        ),
    )?;
    let log = std::fs::File::create(conf_dir.join("rclone.log"))?;
    // Foreground: the child is the daemon, stopped by unmounting. Only the config file
    // configures it: no AWS_* variables (an AWS_CA_BUNDLE, say, makes rclone fail on a
    // plain-HTTP endpoint) and no RCLONE_* ones.
    let mut cmd = Command::new("rclone");
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if name.starts_with("AWS_") || name.starts_with("RCLONE_") {
            cmd.env_remove(&k);
        }
    }
    let child = cmd
        .arg("mount")
        .arg("bench:bench/rclone")
        .arg(&point)
        .arg("--config")
        .arg(&conf)
        .arg("--cache-dir")
        .arg(conf_dir.join("cache"))
        .args(["--vfs-cache-mode", "writes"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()?;
    let mut m = Mount::adopt(&point, Some(child));
    wait_mounted(&point, &mut m.child)?;
    Ok(m)
}

/// Create `count` files of `bytes` bytes under `dir`, split over `writers` threads.
/// Returns per-file latencies in ms and the wall time.
fn create_files(
    dir: &Path,
    count: usize,
    bytes: usize,
    writers: usize,
    fsync: bool,
) -> BenchResult<(Vec<f64>, f64)> {
    std::fs::create_dir_all(dir)?;
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let data = Arc::new(vec![b'k'; bytes]);
    let start = Instant::now();
    std::thread::scope(|s| {
        for w in 0..writers {
            let (latencies, errors, data) = (latencies.clone(), errors.clone(), data.clone());
            let n = count / writers + usize::from(w < count % writers);
            s.spawn(move || {
                for i in 0..n {
                    let path = dir.join(format!("w{w:02}-f{i:06}"));
                    let t = Instant::now();
                    let r = (|| -> std::io::Result<()> {
                        let mut f = std::fs::File::create(&path)?;
                        f.write_all(&data)?;
                        if fsync {
                            f.sync_all()?;
                        }
                        Ok(())
                    })();
                    match r {
                        Ok(()) => latencies
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(t.elapsed().as_secs_f64() * 1e3),
                        Err(e) => {
                            errors
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(format!("{}: {e}", path.display()));
                            return;
                        }
                    }
                }
            });
        }
    });
    let wall = start.elapsed().as_secs_f64();
    if let Some(e) = errors.lock().unwrap_or_else(|e| e.into_inner()).first() {
        return Err(format!("write failed: {e}").into());
    }
    let l = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok((l, wall))
}

fn peak_rss_mib(pid: u32) -> f64 {
    crate::support::alloc::proc_status_kib(&pid.to_string(), "VmHWM")
        .map_or(0.0, |kb| kb as f64 / 1024.0)
}

struct Runner<'a> {
    server: &'a TestS3Server,
    rows: Vec<Row>,
}

impl Runner<'_> {
    fn measure(
        &mut self,
        system: &str,
        workload: &'static str,
        f: impl FnOnce() -> BenchResult<(Vec<f64>, f64)>,
    ) -> BenchResult<()> {
        let mut f = Some(f);
        self.measure_median(system, workload, 1, |_| match f.take() {
            Some(f) => f(),
            None => Err("a workload ran twice".into()),
        })
    }

    /// Run a workload `rounds` times and record the round with the median rate.
    fn measure_median(
        &mut self,
        system: &str,
        workload: &'static str,
        rounds: usize,
        mut f: impl FnMut(usize) -> BenchResult<(Vec<f64>, f64)>,
    ) -> BenchResult<()> {
        let mut runs = Vec::new();
        for round in 0..rounds {
            let before = self.server.request_counts();
            let (lat, wall) = f(round)?;
            let requests = self.server.request_counts().since(&before);
            runs.push((lat, wall, requests));
        }
        runs.sort_by(|x, y| {
            let rx = x.0.len() as f64 / x.1;
            let ry = y.0.len() as f64 / y.1;
            rx.total_cmp(&ry)
        });
        let rates: Vec<String> = runs
            .iter()
            .map(|r| format!("{:.0}", r.0.len() as f64 / r.1))
            .collect();
        let (lat, wall, requests) = runs.swap_remove(rounds / 2);
        let files = lat.len();
        if rounds == 1 {
            eprintln!(
                "  {system:<7} {workload:<16} {files:>6} files in {wall:7.2} s = {:9.1} files/s",
                files as f64 / wall
            );
        } else {
            eprintln!(
                "  {system:<7} {workload:<16} {files:>6} files, median of {rounds} rounds: {:9.1} files/s (rounds: {})",
                files as f64 / wall,
                rates.join(", ")
            );
        }
        self.rows.push(Row {
            system: system.to_string(),
            workload,
            files,
            seconds: wall,
            files_per_s: files as f64 / wall,
            p50_ms: quantile(&lat, 0.5),
            p99_ms: quantile(&lat, 0.99),
            requests,
        });
        Ok(())
    }

    /// The three file-creation workloads on one mounted system.
    fn creation(&mut self, system: &str, root: &Path, n: usize, a: &FsArgs) -> BenchResult<()> {
        // The fastest workload is the noisiest: run it five times and keep the
        // median round.
        self.measure_median(system, "create_close", 5, |round| {
            create_files(
                &root.join(format!("close{round}")),
                n,
                a.file_bytes,
                1,
                false,
            )
        })?;
        self.measure(system, "create_fsync_1", || {
            create_files(&root.join("fsync1"), n / 4, a.file_bytes, 1, true)
        })?;
        self.measure(system, "create_fsync_16", || {
            create_files(&root.join("fsync16"), n, a.file_bytes, a.writers, true)
        })?;
        Ok(())
    }
}

/// `fs.png`: files/s of each system in each file-creation workload.
fn plot_rates(out: &Path, rows: &[Row], systems: &[String], a: &FsArgs) {
    let workloads = ["create_close", "create_fsync_1", "create_fsync_16"];
    let labels = [
        "create, write, close".to_string(),
        "+ fsync, 1 writer".to_string(),
        format!("+ fsync, {} writers", a.writers),
    ];
    let bars: Vec<crate::support::plot::Bars> = systems
        .iter()
        .filter(|sys| rows.iter().any(|r| &r.system == *sys))
        .map(|sys| crate::support::plot::Bars {
            name: match sys.as_str() {
                "bindfs" => "bindfs over tmpfs (no S3)".to_string(),
                "rclone" => "rclone mount (fsync local only)".to_string(),
                other => other.to_string(),
            },
            values: workloads
                .iter()
                .map(|w| {
                    rows.iter()
                        .find(|r| &r.system == sys && r.workload == *w)
                        .map_or(f64::NAN, |r| r.files_per_s)
                })
                .collect(),
        })
        .collect();
    crate::support::plot::bars(
        &out.join("fs.png"),
        &crate::support::plot::Chart {
            title: &format!(
                "Small files through FUSE ({} B files; S3 at {} ms PUT / {} ms GET)",
                a.file_bytes, a.latency.put_latency_ms, a.latency.get_latency_ms
            ),
            x_label: "workload",
            y_label: "files/s (log scale)",
            log_x: false,
            log_y: true,
        },
        &labels,
        &bars,
    );
}

fn time_ls(dir: &Path) -> BenchResult<(Vec<f64>, f64)> {
    let t = Instant::now();
    let out = Command::new("ls").arg("-l").arg(dir).output()?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!("ls -l failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let lines = out
        .stdout
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        .saturating_sub(1);
    Ok((vec![secs * 1e3; lines], secs))
}

pub async fn run(mut a: FsArgs) -> BenchResult<()> {
    if a.quick {
        a.files = (a.files / 5).max(50);
        a.ls_files = (a.ls_files / 5).max(100);
        a.s3fs_files = (a.s3fs_files / 3).max(20);
        a.sustained_mib = (a.sustained_mib / 8).max(16);
        a.contention_secs = (a.contention_secs / 3).max(2);
        a.big_mib = (a.big_mib / 8).max(64);
        a.read_mib = (a.read_mib / 8).max(32);
        a.huge_rename_files = (a.huge_rename_files / 10).max(1000);
    }
    let experiments: Vec<String> = a
        .experiments
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if experiments.iter().any(|e| e == "small-files") {
        small_files(&a).await?;
    }
    let load: Vec<String> = experiments
        .into_iter()
        .filter(|e| e != "small-files")
        .collect();
    if load.is_empty() {
        return Ok(());
    }
    crate::filesystem::load::run(crate::filesystem::load::LoadArgs {
        experiments: load,
        contention_secs: a.contention_secs,
        contention_get_ms: a.contention_get_ms,
        big_mib: a.big_mib,
        read_mib: a.read_mib,
        read_get_ms: a.read_get_ms,
        rename_files: a.rename_files,
        huge_rename_files: a.huge_rename_files,
        out: a.out.clone(),
    })
    .await
}

/// The small-file workloads, per system.
async fn small_files(a: &FsArgs) -> BenchResult<()> {
    let mut sustained_rss: Option<f64> = None;
    let systems: Vec<String> = a.systems.split(',').map(|s| s.trim().to_string()).collect();
    let work = std::env::temp_dir().join(format!("kvfs-bench-fs-{}", std::process::id()));
    let server = crate::support::mount::latency_server(
        &work.join("s3"),
        a.latency.put_latency_ms,
        a.latency.get_latency_ms,
    )
    .await?;
    let mut runner = Runner {
        server: &server,
        rows: Vec::new(),
    };
    let mut notes = Vec::new();
    let run_id = std::process::id();
    // The workloads do blocking file I/O; run them off the runtime's threads.
    for system in &systems {
        eprintln!("== {system}");
        let result = tokio::task::block_in_place(|| -> BenchResult<()> {
            match system.as_str() {
                "kvfs" => {
                    let store = format!("s3://bench/kvfs-{run_id}");
                    let point = work.join("mnt-kvfs");
                    let pid;
                    {
                        let m = mount_kvfs(&server, &store, &point, &[])?;
                        pid = m.pid();
                        runner.creation("kvfs", &point, a.files, a)?;
                        create_files(&point.join("ls"), a.ls_files, a.file_bytes, 4, false)?;
                        notes.push(format!("kvfs daemon peak RSS {:.1} MiB", peak_rss_mib(pid)));
                    }
                    // Cold: remount, so nothing is cached in the kernel or the daemon.
                    let m = mount_kvfs(&server, &store, &point, &[])?;
                    runner.measure("kvfs", "ls_l_after_remount", || time_ls(&point.join("ls")))?;
                    runner.measure("kvfs", "ls_l_warm", || time_ls(&point.join("ls")))?;
                    drop(m);
                    // Without extended attributes `ls -l` makes no xattr request per
                    // file (it makes two otherwise).
                    let m = mount_kvfs(&server, &store, &point, &["--no-xattrs"])?;
                    time_ls(&point.join("ls"))?;
                    runner.measure("kvfs", "ls_l_warm_no_xattrs", || time_ls(&point.join("ls")))?;
                    drop(m);
                    // Sustained writes with a small memory bound: the daemon waits on
                    // S3 instead of growing.
                    let bound = 32u64 << 20;
                    let bound_arg = bound.to_string();
                    let m = mount_kvfs(
                        &server,
                        &format!("{store}-sustained"),
                        &work.join("mnt-kvfs-sustained"),
                        &["--max-unflushed-bytes", &bound_arg],
                    )?;
                    let pid = m.pid();
                    let total = a.sustained_mib << 20;
                    runner.measure("kvfs", "sustained_1mib_files", || {
                        create_files(
                            &m.point.join("big"),
                            (total >> 20) as usize,
                            1 << 20,
                            4,
                            false,
                        )
                    })?;
                    let rss = peak_rss_mib(pid);
                    notes.push(format!(
                        "kvfs daemon peak RSS {rss:.1} MiB after writing {} MiB with a {} MiB bound on unflushed data",
                        a.sustained_mib,
                        bound >> 20
                    ));
                    sustained_rss = Some(rss);
                    drop(m);
                    Ok(())
                }
                "bindfs" => {
                    let m = mount_bindfs(&work)?;
                    runner.creation("bindfs", &m.point, a.files, a)?;
                    create_files(&m.point.join("ls"), a.ls_files, a.file_bytes, 4, false)?;
                    runner.measure("bindfs", "ls_l_warm", || time_ls(&m.point.join("ls")))?;
                    Ok(())
                }
                "s3fs" => {
                    let m = mount_s3fs(&server, &work)?;
                    runner.creation("s3fs", &m.point, a.s3fs_files, a)?;
                    runner.measure("s3fs", "ls_l_warm", || time_ls(&m.point.join("close0")))?;
                    Ok(())
                }
                "rclone" => {
                    let before = server.request_counts();
                    let m = mount_rclone(&server, &work)?;
                    let files = a.rclone_files.min(a.files);
                    let t = Instant::now();
                    runner.creation("rclone", &m.point, files, a)?;
                    runner.measure("rclone", "ls_l_warm", || time_ls(&m.point.join("close0")))?;
                    // rclone uploads after close (the write-back delay): wait until
                    // every file reached S3 before unmounting, and count the whole
                    // session's requests.
                    let n = 5 * files + files / 4 + files;
                    let uploaded = wait_for_puts(&server, &before, n as u64);
                    let all = server.request_counts().since(&before);
                    drop(m);
                    notes.push(format!(
                        "rclone: {uploaded} of {n} files in S3 {:.1} s after the first was created; the session made {} requests ({} PUTs): {:.2} requests and {:.2} PUTs per file",
                        t.elapsed().as_secs_f64(),
                        all.total(),
                        all.put,
                        all.total() as f64 / n as f64,
                        all.put as f64 / n as f64
                    ));
                    Ok(())
                }
                other => Err(format!("unknown system {other}").into()),
            }
        });
        if let Err(e) = result {
            eprintln!("  {system}: skipped: {e}");
            notes.push(format!("{system} skipped: {e}"));
        }
    }

    let mut table = Table::new(
        &format!(
            "small files through FUSE ({} B files, {} ms PUT / {} ms GET at the server)",
            a.file_bytes, a.latency.put_latency_ms, a.latency.get_latency_ms
        ),
        &[
            "system",
            "workload",
            "files",
            "seconds",
            "files_per_s",
            "p50_ms",
            "p99_ms",
            "puts_per_file",
            "requests_per_file",
            "usd_per_million_files",
        ],
    );
    for r in &runner.rows {
        let total = r.requests.total() as f64;
        let n = r.files.max(1) as f64;
        table.row(vec![
            r.system.clone(),
            r.workload.to_string(),
            r.files.to_string(),
            format!("{:.3}", r.seconds),
            format!("{:.1}", r.files_per_s),
            format!("{:.2}", r.p50_ms),
            format!("{:.2}", r.p99_ms),
            format!("{:.4}", r.requests.put as f64 / n),
            format!("{:.4}", total / n),
            format!("{:.2}", r.requests.cost_usd() / n * 1e6),
        ]);
    }
    print!("{}", table.render());
    let rate = |sys: &str, w: &str| {
        runner
            .rows
            .iter()
            .find(|r| r.system == sys && r.workload == w)
            .map(|r| r.files_per_s)
    };
    let mut ratios = Table::new("ratios (same run)", &["ratio", "value", "target"]);
    if let (Some(k), Some(b)) = (rate("kvfs", "create_close"), rate("bindfs", "create_close")) {
        ratios.row(vec![
            "bindfs_over_kvfs_create_close".into(),
            format!("{:.2}", b / k),
            "<= 2".into(),
        ]);
    }
    if let (Some(k), Some(s)) = (rate("kvfs", "create_close"), rate("s3fs", "create_close")) {
        ratios.row(vec![
            "kvfs_over_s3fs_create_close".into(),
            format!("{:.1}", k / s),
            ">= 100".into(),
        ]);
    }
    if let (Some(k), Some(r)) = (rate("kvfs", "create_close"), rate("rclone", "create_close")) {
        ratios.row(vec![
            "kvfs_over_rclone_create_close".into(),
            format!("{:.1}", k / r),
            "-".into(),
        ]);
    }
    if let (Some(one), Some(many)) = (
        rate("kvfs", "create_fsync_1"),
        rate("kvfs", "create_fsync_16"),
    ) {
        ratios.row(vec![
            format!("kvfs_fsync_{}_writers_over_1", a.writers),
            format!("{:.1}", many / one),
            ">= 12".into(),
        ]);
    }
    if let Some(r) = runner
        .rows
        .iter()
        .find(|r| r.system == "kvfs" && r.workload == "ls_l_after_remount")
    {
        ratios.row(vec![
            format!("kvfs_ls_l_{}_files_seconds", r.files),
            format!("{:.3}", r.seconds),
            "< 0.3 without xattrs; two xattr requests per file with them".into(),
        ]);
    }
    if let Some(r) = runner
        .rows
        .iter()
        .find(|r| r.system == "kvfs" && r.workload == "ls_l_warm_no_xattrs")
    {
        ratios.row(vec![
            format!("kvfs_ls_l_{}_files_no_xattrs_seconds", r.files),
            format!("{:.3}", r.seconds),
            "< 0.3".into(),
        ]);
    }
    if let Some(rss) = sustained_rss {
        ratios.row(vec![
            "kvfs_daemon_peak_rss_mib_sustained".into(),
            format!("{rss:.1}"),
            "bounded (32 MiB unflushed + index + cache)".into(),
        ]);
    }
    print!("{}", ratios.render());
    for n in &notes {
        println!("note: {n}");
    }
    if let Some(out) = &a.out {
        table.write_csv(out, "fs")?;
        ratios.write_csv(out, "fs_ratios")?;
        eprintln!("wrote {} and fs_ratios.csv", out.join("fs.csv").display());
        plot_rates(out, &runner.rows, &systems, a);
    }
    drop(runner);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
