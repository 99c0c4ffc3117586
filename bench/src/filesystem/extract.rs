//! `kvfs-bench extract`: write amplification of `tar -x` into a mount.
//!
//! Trees (each packed with `tar -c`, then extracted with `tar -x` into a fresh kvfs
//! mount over a local-directory store with background GC off, then unmounted):
//! - `source`: a deterministic tree shaped like a source tree, `--mib` MiB: half the
//!   files under 4 KiB, one in sixteen past the 64 KiB inline limit;
//! - `tiny`: `--tiny-files` files of 1 KiB, the small-file extreme where the
//!   per-file records weigh most;
//! - or, with `--source DIR`, a copy of that directory alone.
//!
//! As root, tar sets each file's times, owner and mode before closing it. Every
//! segment the mount uploaded is still in the store afterwards: their bytes against
//! the files' bytes is the write amplification before GC, and each entry is
//! decoded to say which records the bytes went to. Object counts are the PUTs.
//!
//! Rows go to `extract.csv` in the `--out` directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::Args;

use kvfs_testkit::extract::{tally_segments, write_source_tree, write_uniform_tree};
use kvfs_testkit::mount::{require, Mount};

use crate::support::mount::{kvfs_binary, BenchResult};
use crate::support::report::Table;

#[derive(Args, Debug)]
pub struct ExtractArgs {
    /// MiB of files in the source-like tree.
    #[arg(long, default_value_t = 16)]
    mib: u64,
    /// Files of 1 KiB in the tiny-file tree.
    #[arg(long, default_value_t = 4000)]
    tiny_files: u64,
    /// Seed of the generated trees.
    #[arg(long, default_value_t = 26)]
    seed: u64,
    /// Extract a copy of this directory instead of the generated trees.
    #[arg(long)]
    source: Option<PathBuf>,
    /// A quarter of the sizes.
    #[arg(long)]
    quick: bool,
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

/// Run `cmd`; an error with its stderr unless it succeeds.
pub(crate) fn run_tool(cmd: &mut Command) -> BenchResult<()> {
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

fn extract(mut a: ExtractArgs) -> BenchResult<()> {
    require("tar", "tar")?;
    if a.quick {
        a.mib = a.mib.div_ceil(4);
        a.tiny_files = a.tiny_files.div_ceil(4);
    }
    let work = std::env::temp_dir().join(format!("kvfs-bench-extract-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = extract_in(&a, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn extract_in(a: &ExtractArgs, work: &Path) -> BenchResult<()> {
    let mut trees = Vec::new();
    match &a.source {
        Some(s) => trees.push(("copy", s.clone())),
        None => {
            let tree = work.join("source");
            let s = write_source_tree(&tree, a.mib << 20, a.seed)?;
            eprintln!(
                "source: {} files in {} directories ({} past 64 KiB), {} MiB",
                s.files, s.dirs, s.large_files, a.mib
            );
            trees.push(("source", tree));
            let tree = work.join("tiny");
            let s = write_uniform_tree(&tree, a.tiny_files, 1024, a.seed)?;
            eprintln!("tiny: {} files of 1 KiB in {} directories", s.files, s.dirs);
            trees.push(("tiny", tree));
        }
    }
    let mut t = Table::new(
        "Write amplification of tar -x (segments uploaded before GC)",
        &["tree", "measure", "count", "bytes", "per_data_byte"],
    );
    for (name, dir) in &trees {
        extract_one(name, dir, &work.join(format!("{name}-run")), &mut t)?;
    }
    print!("{}", t.render());
    if let Some(out) = &a.out {
        t.write_csv(out, "extract")?;
        eprintln!("wrote {}", out.join("extract.csv").display());
    }
    Ok(())
}

fn extract_one(name: &str, source: &Path, work: &Path, t: &mut Table) -> BenchResult<()> {
    std::fs::create_dir_all(work)?;
    let (files, data) = file_bytes(source)?;
    let tarball = work.join("tree.tar");
    run_tool(
        Command::new("tar")
            .arg("-cf")
            .arg(&tarball)
            .arg("-C")
            .arg(source)
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
    eprintln!("{name}: tar -x of {files} files ({data} bytes) into a mount");
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
            "{name}: {} segments could not be decoded (their records are not in the breakdown)",
            tally.undecoded
        );
    }
    let content = tally.content_bytes();
    let per = |b: u64| format!("{:.3}", b as f64 / data.max(1) as f64);
    eprintln!(
        "{name}: {data} bytes of files -> {} bytes in {} segments ({}x), \
         {content} bytes of content put ({}x), {secs:.1} s",
        tally.bytes,
        tally.objects,
        per(tally.bytes),
        per(content),
    );
    let mut row = |measure: &str, count: String, bytes: String, ratio: String| {
        t.row(vec![
            name.to_string(),
            measure.to_string(),
            count,
            bytes,
            ratio,
        ]);
    };
    row("file data", files.to_string(), data.to_string(), per(data));
    row("tarball", "1".into(), tar_bytes.to_string(), per(tar_bytes));
    row(
        "segments",
        tally.objects.to_string(),
        tally.bytes.to_string(),
        per(tally.bytes),
    );
    row(
        "content put",
        String::new(),
        content.to_string(),
        per(content),
    );
    for (kind, k) in &tally.by_kind {
        row(
            &format!("  {kind}"),
            k.entries.to_string(),
            k.bytes.to_string(),
            per(k.bytes),
        );
    }
    let ckpts = count_objects(&store, "ckpt");
    let manifests = count_objects(&store, "manifest");
    row(
        "checkpoints",
        ckpts.to_string(),
        String::new(),
        String::new(),
    );
    row(
        "manifests",
        manifests.to_string(),
        String::new(),
        String::new(),
    );
    row(
        "objects (segments, checkpoints, manifests)",
        (tally.objects + ckpts + manifests).to_string(),
        String::new(),
        String::new(),
    );
    Ok(())
}
