//! `kvfs stats`: what a store holds and where its log stands.

use std::fmt;
use std::time::Duration;

use super::error::Result;
use super::gc::{in_log_window, GcCounters, EMPTY_SEGMENT_LEN};
use super::lease::{peek, LeaseInfo};
use super::Shared;
use crate::format::manifest::LogRange;
use crate::format::names::{parse_name, ObjectKind};
use crate::store::encoding::Encoding;
use crate::store::metered::Metrics;

/// What the file system in a store holds, by kind of inode (each inode once, whatever
/// its number of names). The engine knows keys, not files: `kvfs::fs::count_files`
/// counts them, and a caller puts them in [`Stats::files`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileCounts {
    /// Regular files.
    pub files: u64,
    /// Directories, the root included.
    pub directories: u64,
    pub symlinks: u64,
    /// FIFOs, sockets and device nodes.
    pub special: u64,
}

#[derive(Clone, Debug)]
pub struct Stats {
    pub store: String,
    /// Records in the engine's index (for a file system: per file an inode and a
    /// directory entry, plus extents, extended attributes and the superblock).
    pub keys: u64,
    /// The file system's files, when the store holds one and the caller counted them
    /// (`None` from [`Db::stats`](super::Db::stats)).
    pub files: Option<FileCounts>,
    /// Sum of key and value lengths of live keys.
    pub live_bytes: u64,
    pub objects: u64,
    /// Bytes the object store holds (after compression and encryption).
    pub stored_bytes: u64,
    /// The same objects' plain bytes (before compression and encryption).
    pub plain_bytes: u64,
    /// Whether the store is encrypted, and how this handle compresses.
    pub encoding: Encoding,
    pub segments: u64,
    pub segment_bytes: u64,
    pub runs: u64,
    pub run_bytes: u64,
    /// Data objects (segments and runs) by fill (live / size): empty, under 25 %,
    /// 25–50 %, 50–75 %, 75 % and over. Fence segments are left out.
    pub fill_histogram: [u64; 5],
    /// Data objects with no live data out of the log window: GC deletes them.
    pub unneeded_objects: u64,
    pub unneeded_bytes: u64,
    pub checkpoints: u64,
    pub checkpoint_bytes: u64,
    pub manifests: u64,
    pub other_objects: u64,
    pub manifest_seq: u64,
    pub checkpoint: Option<u64>,
    pub writer_epoch: u64,
    pub log_ranges: Vec<LogRange>,
    pub lease: Option<LeaseInfo>,
    pub open_time: Duration,
    /// Bytes held by the read cache of this handle.
    pub cache_bytes: u64,
    /// The disk cache: its directory (none when no disk cache is kept) and what
    /// it holds and did for this handle.
    pub disk_cache_dir: Option<std::path::PathBuf>,
    pub disk_cache: crate::store::disk_cache::DiskCacheFigures,
    /// Entries of the index's slot table (data objects that live keys refer to,
    /// plus freed slots waiting for reuse): bounded by the live data.
    pub index_slots: u64,
    /// Bytes of the current checkpoint (0 without one).
    pub current_checkpoint_bytes: u64,
    pub requests: Metrics,
    /// What GC and compaction did through this handle.
    pub gc: GcCounters,
}

impl Stats {
    /// The same figures as the text form, as a JSON document (`kvfs stats --json`;
    /// the fields are listed in docs/SEMANTICS.md, "Statistics").
    pub fn to_json(&self) -> serde_json::Value {
        let r = &self.requests;
        serde_json::json!({
            "store": self.store,
            "files": self.files.map(|c| c.files),
            "directories": self.files.map(|c| c.directories),
            "symlinks": self.files.map(|c| c.symlinks),
            "special_files": self.files.map(|c| c.special),
            "engine_records": self.keys,
            "live_bytes": self.live_bytes,
            "stored_bytes": self.stored_bytes,
            "plain_bytes": self.plain_bytes,
            "encrypted": self.encoding.encrypted,
            "compression": self.encoding.compression.name(),
            "objects": self.objects,
            "segments": { "count": self.segments, "bytes": self.segment_bytes },
            "runs": { "count": self.runs, "bytes": self.run_bytes },
            "space_amplification": self.space_amplification(),
            "fill_histogram": {
                "empty": self.fill_histogram[0],
                "under_25": self.fill_histogram[1],
                "25_to_50": self.fill_histogram[2],
                "50_to_75": self.fill_histogram[3],
                "75_and_over": self.fill_histogram[4],
            },
            "reclaimable": { "objects": self.unneeded_objects, "bytes": self.unneeded_bytes },
            "checkpoints": { "count": self.checkpoints, "bytes": self.checkpoint_bytes },
            "manifests": self.manifests,
            "other_objects": self.other_objects,
            "manifest": self.manifest_seq,
            "checkpoint": self.checkpoint,
            "writer_epoch": self.writer_epoch,
            "log_ranges": self.log_ranges.iter().map(|l| serde_json::json!({
                "epoch": l.epoch,
                "first": l.first,
                "last": (!l.is_open()).then_some(l.last),
            })).collect::<Vec<_>>(),
            "lease": self.lease.as_ref().map(|l| serde_json::json!({
                "host": l.host,
                "pid": l.pid,
                "label": l.label,
                "released": l.released,
                "renewed_unix_ms": l.renewed_unix_ms,
                "ttl_ms": l.ttl_ms,
            })),
            "open_seconds": self.open_time.as_secs_f64(),
            "index_slots": self.index_slots,
            "current_checkpoint_bytes": self.current_checkpoint_bytes,
            "cache": { "bytes": self.cache_bytes },
            "disk_cache": {
                "dir": self.disk_cache_dir.as_ref().map(|d| d.display().to_string()),
                "entries": self.disk_cache.entries,
                "bytes": self.disk_cache.bytes,
                "capacity": self.disk_cache.capacity,
                "hits": self.disk_cache.hits,
                "hit_bytes": self.disk_cache.hit_bytes,
                "misses": self.disk_cache.misses,
                "written_bytes": self.disk_cache.written_bytes,
                "evictions": self.disk_cache.evictions,
                "corrupt": self.disk_cache.corrupt,
            },
            "requests": {
                "put": r.puts, "put_bytes": r.put_bytes,
                "get": r.gets, "get_bytes": r.get_bytes,
                "list": r.lists, "delete": r.deletes, "errors": r.errors,
                "not_found": r.not_found, "precondition_failed": r.precondition_failed,
                "estimated_usd": r.cost_usd(),
            },
        })
    }

    /// Bytes of data objects (segments and runs) per live byte.
    pub fn space_amplification(&self) -> f64 {
        if self.live_bytes == 0 {
            return 0.0;
        }
        (self.segment_bytes + self.run_bytes) as f64 / self.live_bytes as f64
    }
}

/// Bucket of the fill histogram.
fn fill_bucket(live: u64, size: u64) -> usize {
    if live == 0 || size == 0 {
        return 0;
    }
    let fill = live as f64 / size as f64;
    1 + ((fill * 4.0) as usize).min(3)
}

pub(crate) async fn collect(sh: &Shared) -> Result<Stats> {
    let listed = sh.store.list("").await?;
    let lease = peek(&sh.store).await.unwrap_or(None);
    let (keys, live_bytes, manifest, cache_bytes, live_by_object, gc, index_slots) = {
        let st = sh.lock();
        (
            st.index.len() as u64,
            st.index.live_bytes(),
            st.manifest.clone(),
            st.cache.bytes() as u64,
            st.index.live_by_object(),
            st.gc.counters,
            st.index.slot_table_len() as u64,
        )
    };
    let mut s = Stats {
        store: sh.store.describe(),
        keys,
        files: None,
        live_bytes,
        objects: listed.len() as u64,
        stored_bytes: listed.iter().map(|o| o.stored_size).sum(),
        plain_bytes: listed.iter().map(|o| o.size).sum(),
        encoding: sh.encoding,
        segments: 0,
        segment_bytes: 0,
        runs: 0,
        run_bytes: 0,
        fill_histogram: [0; 5],
        unneeded_objects: 0,
        unneeded_bytes: 0,
        checkpoints: 0,
        checkpoint_bytes: 0,
        manifests: 0,
        other_objects: 0,
        manifest_seq: manifest.seq,
        checkpoint: manifest.checkpoint,
        writer_epoch: manifest.writer_epoch,
        log_ranges: manifest.ranges,
        lease,
        open_time: sh.opened_in,
        cache_bytes,
        disk_cache_dir: sh
            .disk_cache
            .as_ref()
            .and_then(|c| c.dir().map(std::path::Path::to_path_buf)),
        disk_cache: sh
            .disk_cache
            .as_ref()
            .map(|c| c.figures())
            .unwrap_or_default(),
        index_slots,
        current_checkpoint_bytes: 0,
        requests: Metrics::default(),
        gc,
    };
    for o in &listed {
        match parse_name(&o.key) {
            ObjectKind::Segment(id) | ObjectKind::Run(id) => {
                if id.is_run() {
                    s.runs += 1;
                    s.run_bytes += o.size;
                } else {
                    s.segments += 1;
                    s.segment_bytes += o.size;
                }
                if !id.is_run() && o.size == EMPTY_SEGMENT_LEN {
                    continue; // a fence
                }
                let live = live_by_object.get(&id).copied().unwrap_or(0);
                s.fill_histogram[fill_bucket(live, o.size)] += 1;
                if live == 0 && !in_log_window(&s.log_ranges, id) {
                    s.unneeded_objects += 1;
                    s.unneeded_bytes += o.size;
                }
            }
            ObjectKind::Checkpoint(n) => {
                s.checkpoints += 1;
                s.checkpoint_bytes += o.size;
                if s.checkpoint == Some(n) {
                    s.current_checkpoint_bytes = o.size;
                }
            }
            ObjectKind::Manifest(_) => s.manifests += 1,
            ObjectKind::Lease | ObjectKind::Encoding | ObjectKind::StoreId => {}
            ObjectKind::Unknown => s.other_objects += 1,
        }
    }
    s.requests = sh.meter.snapshot();
    Ok(s)
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "store            {}", self.store)?;
        if let Some(c) = &self.files {
            writeln!(f, "files            {}", c.files)?;
            writeln!(f, "directories      {}", c.directories)?;
            if c.symlinks > 0 || c.special > 0 {
                writeln!(
                    f,
                    "other inodes     {} symlinks, {} special files",
                    c.symlinks, c.special
                )?;
            }
        }
        writeln!(f, "engine records   {}", self.keys)?;
        writeln!(f, "live bytes       {}", self.live_bytes)?;
        writeln!(
            f,
            "stored bytes     {} in {} objects",
            self.stored_bytes, self.objects
        )?;
        writeln!(
            f,
            "encoding         {}, compression {} ({} plain bytes stored as {})",
            if self.encoding.encrypted {
                "encrypted"
            } else {
                "not encrypted"
            },
            self.encoding.compression,
            self.plain_bytes,
            self.stored_bytes
        )?;
        writeln!(
            f,
            "segments         {} ({} bytes)",
            self.segments, self.segment_bytes
        )?;
        writeln!(
            f,
            "runs             {} ({} bytes)",
            self.runs, self.run_bytes
        )?;
        writeln!(
            f,
            "space amp.       {:.2} (segment and run bytes per live byte)",
            self.space_amplification()
        )?;
        let h = &self.fill_histogram;
        writeln!(
            f,
            "object fill      {} empty, {} <25%, {} 25-50%, {} 50-75%, {} >=75%",
            h[0], h[1], h[2], h[3], h[4]
        )?;
        writeln!(
            f,
            "reclaimable      {} objects ({} bytes) that GC deletes",
            self.unneeded_objects, self.unneeded_bytes
        )?;
        writeln!(
            f,
            "checkpoints      {} ({} bytes)",
            self.checkpoints, self.checkpoint_bytes
        )?;
        writeln!(
            f,
            "index            {} slots; current checkpoint {} bytes",
            self.index_slots, self.current_checkpoint_bytes
        )?;
        writeln!(f, "manifests        {}", self.manifests)?;
        if self.other_objects > 0 {
            writeln!(
                f,
                "foreign objects  {} (not written by kvfs)",
                self.other_objects
            )?;
        }
        writeln!(f, "manifest         {}", self.manifest_seq)?;
        match self.checkpoint {
            Some(c) => writeln!(f, "checkpoint       {c}")?,
            None => writeln!(f, "checkpoint       none")?,
        }
        writeln!(f, "writer epoch     {}", self.writer_epoch)?;
        let ranges: Vec<String> = self
            .log_ranges
            .iter()
            .map(|r| {
                if r.is_open() {
                    format!("epoch {} from {} (open)", r.epoch, r.first)
                } else {
                    format!("epoch {} {}..={}", r.epoch, r.first, r.last)
                }
            })
            .collect();
        if ranges.is_empty() {
            writeln!(f, "log to replay    none (the checkpoint holds everything)")?;
        } else {
            writeln!(f, "log to replay    {}", ranges.join(", "))?;
        }
        match &self.lease {
            Some(l) if l.released => writeln!(f, "lease            released by {}", l.holder())?,
            Some(l) => writeln!(
                f,
                "lease            held by {} (renewed at unix ms {}, ttl {} ms)",
                l.holder(),
                l.renewed_unix_ms,
                l.ttl_ms
            )?,
            None => writeln!(f, "lease            none")?,
        }
        match &self.disk_cache_dir {
            Some(d) => writeln!(
                f,
                "disk cache       {} entries, {} of at most {} bytes in {} ({} hits, {} misses in this run)",
                self.disk_cache.entries,
                self.disk_cache.bytes,
                self.disk_cache.capacity,
                d.display(),
                self.disk_cache.hits,
                self.disk_cache.misses
            )?,
            None => writeln!(f, "disk cache       none")?,
        }
        writeln!(f, "open time        {:.3} s", self.open_time.as_secs_f64())?;
        writeln!(f, "gc (this run)    {}", self.gc)?;
        write!(
            f,
            "requests         {} PUT, {} GET, {} LIST (est. ${:.6})",
            self.requests.puts,
            self.requests.gets,
            self.requests.lists,
            self.requests.cost_usd()
        )
    }
}
