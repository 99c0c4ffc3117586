//! `kvfs-bench extract`: write amplification of `tar -x` into a mount.
//!
//! A tree shaped like a source tree (deterministic, `--mib` MiB: many small files,
//! some past the 64 KiB inline limit), or any directory given with `--source`, is
//! packed with `tar -c`, then extracted with `tar -x` (as the user running the
//! bench: as root, tar also sets owners) into a kvfs mount over a local-directory
//! store with background GC off, and the mount is unmounted. Every segment the
//! mount uploaded is then still in the store: their bytes against the files' bytes
//! is the write amplification before GC, and each entry is decoded to say which
//! records the bytes went to.
//!
//! Rows go to `extract.csv` in the `--out` directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::Args;

use kvfs_testkit::extract::{tally_segments, write_source_tree};
use kvfs_testkit::mount::{require, Mount};

use crate::mount::{kvfs_binary, BenchResult};
use crate::report::Table;

#[derive(Args, Debug)]
pub struct ExtractArgs {
    /// MiB of files in the generated tree.
    #[arg(long, default_value_t = 16)]
    mib: u64,
    /// Seed of the generated tree.
    #[arg(long, default_value_t = 26)]
    seed: u64,
    /// Extract a copy of this directory instead of a generated tree.
    #[arg(long)]
    source: Option<PathBuf>,
    /// Write extract.csv here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Regular files under `dir` and their bytes.
fn file_bytes(dir: &Path) -> std::io::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let m = e.path().symlink_metadata()?;
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                files += 1;
                bytes += m.len();
            }
        }
    }
    Ok((files, bytes))
}

fn run_tool(cmd: &mut Command) -> BenchResult<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}

/// Objects under `store/prefix` (such as `ckpt`, `manifest`).
fn count_objects(store: &Path, prefix: &str) -> u64 {
    std::fs::read_dir(store.join(prefix)).map_or(0, |d| d.count() as u64)
}

pub async fn run(a: ExtractArgs) -> BenchResult<()> {
    tokio::task::block_in_place(|| extract(a))
}

fn extract(a: ExtractArgs) -> BenchResult<()> {
    require("tar", "tar")?;
    let work = std::env::temp_dir().join(format!("kvfs-bench-extract-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = extract_in(&a, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn extract_in(a: &ExtractArgs, work: &Path) -> BenchResult<()> {
    let source = match &a.source {
        Some(s) => s.clone(),
        None => {
            let tree = work.join("tree");
            eprintln!("writing a {} MiB source-like tree (seed {})", a.mib, a.seed);
            let s = write_source_tree(&tree, a.mib << 20, a.seed)?;
            eprintln!(
                "{} files in {} directories, {} past 64 KiB",
                s.files, s.dirs, s.large_files
            );
            tree
        }
    };
    let (files, data) = file_bytes(&source)?;
    let tarball = work.join("tree.tar");
    run_tool(
        Command::new("tar")
            .arg("-cf")
            .arg(&tarball)
            .arg("-C")
            .arg(&source)
            .arg("."),
    )?;
    let tar_bytes = std::fs::metadata(&tarball)?.len();
    let store = work.join("store");
    let point = work.join("mnt");
    let m = Mount::start(
        &kvfs_binary(),
        store.to_str().ok_or("work path is not UTF-8")?,
        &point,
        &["--no-background-gc"],
        &[] as &[(&str, &str)],
    )?;
    eprintln!("tar -x of {files} files ({data} bytes) into a mount");
    let start = Instant::now();
    let extracted = run_tool(
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(&m.point),
    );
    let secs = start.elapsed().as_secs_f64();
    let log = m.log_text();
    let status = m.unmount()?;
    extracted?;
    if !status.success() {
        return Err(format!("the mount exited with {status}: {log}").into());
    }
    let tally = tally_segments(&store)?;
    if tally.undecoded > 0 {
        eprintln!(
            "{} segments could not be decoded (their records are not in the breakdown)",
            tally.undecoded
        );
    }
    let ratio = tally.bytes as f64 / data.max(1) as f64;
    let content = tally.content_bytes();
    eprintln!(
        "extract: {data} bytes of files -> {} bytes in {} segments ({ratio:.2}x), \
         {content} bytes of content written ({:.2}x), {secs:.1} s",
        tally.bytes,
        tally.objects,
        content as f64 / data.max(1) as f64
    );

    let mut t = Table::new(
        "Write amplification of tar -x (before GC)",
        &["measure", "entries", "bytes", "per_data_byte"],
    );
    let per = |b: u64| format!("{:.3}", b as f64 / data.max(1) as f64);
    let mut row = |measure: &str, entries: String, bytes: u64| {
        t.row(vec![
            measure.to_string(),
            entries,
            bytes.to_string(),
            per(bytes),
        ]);
    };
    row("file data", files.to_string(), data);
    row("tarball", "1".into(), tar_bytes);
    row("segments", tally.objects.to_string(), tally.bytes);
    row("content written", String::new(), content);
    for (kind, k) in &tally.by_kind {
        row(&format!("  {kind}"), k.entries.to_string(), k.bytes);
    }
    row("checkpoints", count_objects(&store, "ckpt").to_string(), 0);
    row(
        "manifests",
        count_objects(&store, "manifest").to_string(),
        0,
    );
    print!("{}", t.render());
    if let Some(out) = &a.out {
        t.write_csv(out, "extract")?;
        eprintln!("wrote {}", out.join("extract.csv").display());
    }
    Ok(())
}
