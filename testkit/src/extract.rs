//! Write amplification of extracting a tree: a deterministic tree shaped like a
//! source tree (many small files, some larger ones), and a tally of the log segments
//! a local-directory store holds, by kind of record.
//!
//! The tally reads `seg/` of a local store (run with background GC off, so every
//! segment the writer uploaded is still there) and decodes each entry, so it tells
//! which records the bytes went to: inline content, attribute-only changes,
//! directory entries, extents.

use std::collections::BTreeMap;
use std::path::Path;

use kvfs::format::segment::{delete_len, link_len, put_len, EntryKind, SegmentView};

use crate::fixtures::Rng;

/// What [`write_source_tree`] made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    pub files: u64,
    pub dirs: u64,
    /// Bytes of all regular files.
    pub file_bytes: u64,
    /// Files larger than the file system's inline limit (64 KiB).
    pub large_files: u64,
}

/// A file size drawn like those of a source tree: half the files under 4 KiB, one
/// in seven 16–64 KiB, one in sixteen past 64 KiB (up to 512 KiB); about 18 KiB
/// on average.
fn file_size(rng: &mut Rng) -> u64 {
    let bucket = rng.below(100);
    let (lo, hi) = match bucket {
        0..=49 => (100, 4 << 10),
        50..=79 => (4 << 10, 16 << 10),
        80..=93 => (16 << 10, 64 << 10),
        94..=98 => (64 << 10, 128 << 10),
        _ => (128 << 10, 512 << 10),
    };
    lo + rng.below(hi - lo)
}

/// Text-like content: lines of lower-case words.
fn content(rng: &mut Rng, len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u64) < len {
        let word = 1 + rng.below(10);
        for _ in 0..word {
            out.push(b'a' + rng.below(26) as u8);
        }
        out.push(if rng.below(8) == 0 { b'\n' } else { b' ' });
    }
    out.truncate(len as usize);
    out
}

/// Write a tree of about `total_bytes` under `root` (created), the same for the
/// same `seed`: directories of up to 24 files, nested up to three deep.
pub fn write_source_tree(root: &Path, total_bytes: u64, seed: u64) -> std::io::Result<TreeStats> {
    let mut rng = Rng(seed.max(1));
    let mut stats = TreeStats::default();
    std::fs::create_dir_all(root)?;
    let mut dirs = vec![root.to_path_buf()];
    let mut current = root.to_path_buf();
    let mut in_dir = 0;
    while stats.file_bytes < total_bytes {
        if in_dir > rng.below(24) {
            // A new directory, below one already made (at most three deep).
            let parent = dirs[rng.below(dirs.len() as u64) as usize].clone();
            let depth = parent
                .strip_prefix(root)
                .map_or(0, |p| p.components().count());
            let parent = if depth >= 3 {
                root.to_path_buf()
            } else {
                parent
            };
            current = parent.join(format!("d{:03}", stats.dirs));
            std::fs::create_dir_all(&current)?;
            dirs.push(current.clone());
            stats.dirs += 1;
            in_dir = 0;
        }
        let size = file_size(&mut rng).min(total_bytes - stats.file_bytes);
        let name = format!(
            "f{:05}.{}",
            stats.files,
            ["rs", "c", "h", "md", "txt"][stats.files as usize % 5]
        );
        std::fs::write(current.join(name), content(&mut rng, size))?;
        stats.files += 1;
        stats.file_bytes += size;
        if size > 64 << 10 {
            stats.large_files += 1;
        }
        in_dir += 1;
    }
    Ok(stats)
}

/// Write `files` files of `size` bytes each under `root` (created), 100 to a
/// directory: the small-file extreme, where per-file records weigh most.
pub fn write_uniform_tree(
    root: &Path,
    files: u64,
    size: u64,
    seed: u64,
) -> std::io::Result<TreeStats> {
    let mut rng = Rng(seed.max(1));
    let mut stats = TreeStats::default();
    for i in 0..files {
        let dir = root.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir)?;
            stats.dirs += 1;
        }
        std::fs::write(dir.join(format!("f{i:05}")), content(&mut rng, size))?;
        stats.files += 1;
        stats.file_bytes += size;
        if size > 64 << 10 {
            stats.large_files += 1;
        }
    }
    Ok(stats)
}

/// Count and bytes of one kind of record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub entries: u64,
    /// Bytes of the entries in the segments (header, key, metadata and value).
    pub bytes: u64,
    /// Of which value bytes.
    pub value_bytes: u64,
}

/// The segments of a local store, by kind of record.
#[derive(Clone, Debug, Default)]
pub struct SegmentTally {
    pub objects: u64,
    /// Bytes of the segment objects as stored.
    pub bytes: u64,
    /// Per kind of record, such as `inode put` or `extent link`.
    pub by_kind: BTreeMap<String, Tally>,
    /// Segments that could not be decoded (encrypted or compressed stores): counted
    /// in `objects` and `bytes` only.
    pub undecoded: u64,
}

impl SegmentTally {
    /// Value bytes of puts: the file content written, counting every rewrite.
    pub fn content_bytes(&self) -> u64 {
        self.by_kind
            .iter()
            .filter(|(k, _)| k.ends_with(" put"))
            .map(|(_, t)| t.value_bytes)
            .sum()
    }
}

fn record_kind(key: &[u8]) -> &'static str {
    match key {
        [0, b'S', ..] => "superblock",
        [0, b'i', ..] => "inode",
        [0, b'd', ..] => "dirent",
        [0, b'x', ..] => "extent",
        [0, b'o', ..] => "orphan",
        [0, b'a', ..] => "xattr",
        _ => "other",
    }
}

/// Tally every segment under `store/seg/`.
pub fn tally_segments(store: &Path) -> std::io::Result<SegmentTally> {
    let mut out = SegmentTally::default();
    let dir = store.join("seg");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let buf = std::fs::read(entry?.path())?;
        out.objects += 1;
        out.bytes += buf.len() as u64;
        let Ok(view) = SegmentView::decode(&buf) else {
            out.undecoded += 1;
            continue;
        };
        for e in view.entries() {
            let Ok(e) = e else {
                out.undecoded += 1;
                break;
            };
            let (op, len) = match e.kind {
                EntryKind::Put => (
                    "put",
                    put_len(e.key.len(), e.meta.len(), e.value_len as usize),
                ),
                EntryKind::Link => ("link", link_len(e.key.len(), e.meta.len())),
                EntryKind::Delete => ("delete", delete_len(e.key.len())),
            };
            let t = out
                .by_kind
                .entry(format!("{} {op}", record_kind(e.key)))
                .or_default();
            t.entries += 1;
            t.bytes += len as u64;
            if e.kind == EntryKind::Put {
                t.value_bytes += e.value_len as u64;
            }
        }
    }
    Ok(out)
}
