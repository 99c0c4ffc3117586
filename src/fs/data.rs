//! File content: open, read, write, truncate, commit and the deletion of content no
//! name refers to any more.
//!
//! Small files keep their content inline (the inode's value, up to [`INLINE_MAX`]
//! bytes); a file that grows past that moves to extents (see `extents`). Writes land
//! in the file's state (`file`); **commit** turns that into one engine batch: close
//! commits (not durable), fsync commits and then syncs the engine (durable).
//!
//! A read plans under the file's lock (which extents, which dirty bytes), fetches
//! without any lock, and starts again if a commit happened meanwhile. A reader that
//! reads sequentially gets the next extents fetched ahead of it (a window that grows
//! to [`READAHEAD_MAX`]), several ranged GETs in flight.

use std::ops::{Bound, Range};
use std::sync::Arc;

use bytes::Bytes;

use super::attr::{ExtentMeta, Kind};
use super::change::Step;
use super::error::{FsError, FsResult};
use super::extents::{self, Extent, ExtentMap, ExtentOp, Piece, Stored, MAX_EXTENT};
use super::file::{Fetch, FileState, MAX_DIRTY_PER_FILE, MAX_TOUCHED};
use super::keys::{
    extent_key, extent_offset, extent_prefix, inode_key, orphan_ino, orphan_key, orphan_prefix,
};
use super::namespace::{apply_set, lock_file, now, AtimeMode, Namespace, SetAttr, SharedFile};
use crate::db::{prefix_successor, BatchOp, Db};
use crate::format::FormatError;

/// Files up to this size keep their content inline.
pub const INLINE_MAX: u64 = 64 * 1024;
/// Largest file size accepted.
pub const MAX_FILE_SIZE: u64 = 1 << 44;
/// Most bytes fetched ahead of one sequential reader.
pub const READAHEAD_MAX: u64 = 16 * MAX_EXTENT;
/// With relatime, a read updates an access time at least this old.
const RELATIME_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Extent keys deleted per batch when purging a file.
const PURGE_BATCH: usize = 4096;

/// What a read does after planning under the file's lock.
enum ReadPlan {
    Done(Bytes),
    /// Inline content not in memory: fetch the inode's value (valid if no commit
    /// came meanwhile).
    Inline {
        generation: u64,
        end: u64,
    },
    Extents {
        generation: u64,
        end: u64,
        pieces: Vec<(Piece, Fetch)>,
        dirty: Vec<(u64, Vec<u8>)>,
    },
}

impl Namespace {
    /// The open-file state of `ino`, created from its record if needed.
    pub(super) fn file_state(&self, ino: u64) -> FsResult<SharedFile> {
        if let Some(s) = self.state_of(ino) {
            return Ok(s);
        }
        let _held = self.locks.take(false, &[ino]);
        let mut files = self.files();
        if let Some(s) = files.get(&ino) {
            return Ok(s.clone());
        }
        let attr = self.stored_attr(ino)?.ok_or(FsError::NotFound)?;
        if attr.nlink == 0 {
            return Err(FsError::NotFound);
        }
        let s = Arc::new(std::sync::Mutex::new(FileState::new(
            attr,
            self.buffers.clone(),
        )));
        files.insert(ino, s.clone());
        Ok(s)
    }

    /// Forget the state of `ino` if nobody has it open and nothing is unsaved.
    fn drop_idle(&self, ino: u64) {
        let _held = self.locks.take(false, &[ino]);
        let mut files = self.files();
        if let Some(s) = files.get(&ino) {
            let idle = {
                let st = lock_file(s);
                st.opens == 0 && !st.changed && st.attr.nlink > 0
            };
            if idle {
                files.remove(&ino);
            }
        }
    }

    /// Open a file (counts until `release`).
    pub async fn open(&self, ino: u64, truncate: bool) -> FsResult<super::Attr> {
        let attr = self.attr_now(ino)?.ok_or(FsError::NotFound)?;
        match attr.kind {
            Kind::File => {}
            Kind::Dir => return Err(FsError::IsDir),
            _ => return Err(FsError::Invalid("open of a file that is not regular")),
        }
        if truncate {
            self.writable()?;
        }
        let state = self.file_state(ino)?;
        lock_file(&state).opens += 1;
        if truncate {
            if let Err(e) = self.resize(ino, &state, 0).await {
                lock_file(&state).opens -= 1;
                return Err(e);
            }
        }
        let attr = lock_file(&state).attr;
        Ok(attr)
    }

    /// Fetch an inline file's content into its state, unless a commit came between.
    /// Room is made first for the content and `then` bytes a write adds after it.
    async fn load_inline(
        &self,
        ino: u64,
        state: &SharedFile,
        generation: u64,
        then: usize,
    ) -> FsResult<()> {
        let size = lock_file(state).attr.size.min(INLINE_MAX) as usize;
        self.make_room_for_buffers(size + then).await?;
        let value = self.db.get(&inode_key(ino)).await?.unwrap_or_default();
        let mut st = lock_file(state);
        if st.content.is_none() && st.generation == generation && !st.attr.extents {
            // Decoding bounds an inline size (`Attr::decode`); a value longer than
            // that bound is no inline content either. Never size a buffer by either.
            let size = st.attr.size;
            if size > INLINE_MAX || value.len() as u64 > INLINE_MAX {
                return Err(FsError::Corrupt {
                    what: format!("inode {ino}"),
                    source: FormatError::Invalid {
                        what: "inline content",
                        reason: format!(
                            "{size} bytes claimed, {} stored (at most {INLINE_MAX})",
                            value.len()
                        ),
                    },
                });
            }
            let mut c = value.to_vec();
            c.resize(size as usize, 0);
            st.content = Some(c);
        }
        Ok(())
    }

    /// Whether an inline file needs its content in memory before this change.
    fn needs_content(st: &FileState, covers_all: bool) -> Option<u64> {
        (!st.attr.extents && st.content.is_none() && st.attr.size > 0 && !covers_all)
            .then_some(st.generation)
    }

    /// Set the size of a file (truncate or extend with zeros).
    async fn resize(&self, ino: u64, state: &SharedFile, size: u64) -> FsResult<()> {
        if size > MAX_FILE_SIZE {
            return Err(FsError::TooLarge);
        }
        loop {
            let need = {
                let st = lock_file(state);
                if st.attr.kind != Kind::File {
                    return Err(if st.attr.kind == Kind::Dir {
                        FsError::IsDir
                    } else {
                        FsError::Invalid("truncate of a file that is not regular")
                    });
                }
                Self::needs_content(&st, size == 0 || st.attr.extents)
            };
            if let Some(g) = need {
                self.load_inline(ino, state, g, 0).await?;
                continue;
            }
            let mut st = lock_file(state);
            if size == 0 {
                // Empty: inline again, every extent goes at commit.
                st.dirty.clear();
                st.content = Some(Vec::new());
                st.content_changed = true;
                if st.attr.extents || st.attr.size > 0 {
                    st.cut = Some(0);
                }
                st.attr.extents = false;
            } else if !st.attr.extents && size > INLINE_MAX {
                to_extents(&mut st);
            }
            if st.attr.extents {
                if size < st.attr.size {
                    st.dirty.truncate(size);
                    st.cut = Some(st.cut.map_or(size, |c| c.min(size)));
                }
            } else if let Some(c) = st.content.as_mut() {
                c.resize(size as usize, 0);
                st.content_changed = true;
            }
            st.attr.size = size;
            let t = now();
            st.attr.mtime = t;
            st.attr.ctime = t;
            st.changed = true;
            st.readahead = Default::default();
            return Ok(());
        }
    }

    pub async fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        self.read_at(ino, offset, size, true).await
    }

    /// A read; `for_user` false for the namespace's own reads (merging extents),
    /// which leave the access time alone.
    async fn read_at(&self, ino: u64, offset: u64, size: u32, for_user: bool) -> FsResult<Bytes> {
        let state = self.file_state(ino)?;
        loop {
            let plan = {
                let mut st = lock_file(&state);
                if for_user {
                    self.touch_atime(&mut st);
                }
                self.plan_read(ino, &mut st, offset, size)?
            };
            match plan {
                ReadPlan::Done(b) => return Ok(b),
                ReadPlan::Inline { generation, end } => {
                    #[cfg(feature = "test-hooks")]
                    {
                        let pause = self
                            .inline_read_pause
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .take();
                        if let Some(p) = pause {
                            p.reached.notify_one();
                            p.resume.notified().await;
                        }
                    }
                    let value = self.db.get(&inode_key(ino)).await?.unwrap_or_default();
                    // A commit meanwhile (the file grew into extents, say) may have
                    // changed what the value holds: plan again.
                    if lock_file(&state).generation != generation {
                        continue;
                    }
                    let mut out = vec![0u8; (end - offset) as usize];
                    let e = (end as usize).min(value.len());
                    if (offset as usize) < e {
                        out[..e - offset as usize].copy_from_slice(&value[offset as usize..e]);
                    }
                    return Ok(Bytes::from(out));
                }
                ReadPlan::Extents {
                    generation,
                    end,
                    pieces,
                    dirty,
                } => {
                    if pieces.iter().any(|(_, cell)| cell.get().is_none()) {
                        // The extents about to be fetched already count in full:
                        // bring all open files back within their bound first, so
                        // many files read at once hold no more than it allows
                        // (what others fetched is dropped and read again when
                        // needed). A commit that fails here is its writer's error,
                        // reported to that writer, not to this reader.
                        if let Err(e) = self.make_room_for_buffers(0).await {
                            log::debug!("making room for a read of inode {ino}: {e}");
                        }
                    }
                    let mut tasks = tokio::task::JoinSet::new();
                    let mut values = vec![Bytes::new(); pieces.len()];
                    for (i, (p, cell)) in pieces.iter().enumerate() {
                        // Fetched already (by readahead, or for the previous read).
                        if let Some(b) = cell.get() {
                            values[i] = b.clone();
                            continue;
                        }
                        let (db, cell, key) = (self.db.clone(), cell.clone(), p.key);
                        tasks.spawn(async move {
                            let v = cell
                                .get_or_try_init(|| fetch_extent(db, ino, key))
                                .await
                                .cloned();
                            (i, v)
                        });
                    }
                    let mut failed = None;
                    while let Some(r) = tasks.join_next().await {
                        let (i, v) = r.map_err(|_| FsError::Invalid("extent read task failed"))?;
                        match v {
                            Ok(b) => values[i] = b,
                            Err(e) => failed = Some(e),
                        }
                    }
                    if !self.still_valid(ino, &state, generation, offset..end, &pieces)? {
                        continue;
                    }
                    if let Some(e) = failed {
                        return Err(e);
                    }
                    let mut out = vec![0u8; (end - offset) as usize];
                    for ((p, _), v) in pieces.iter().zip(&values) {
                        let src = v
                            .get(p.skip as usize..(p.skip + p.len) as usize)
                            .ok_or(FsError::Invalid("extent shorter than its record"))?;
                        let at = (p.at - offset) as usize;
                        out[at..at + src.len()].copy_from_slice(src);
                    }
                    for (at, d) in dirty {
                        let s = (at - offset) as usize;
                        out[s..s + d.len()].copy_from_slice(&d);
                    }
                    return Ok(Bytes::from(out));
                }
            }
        }
    }

    /// Whether what a read planned at `generation` and fetched is still what the
    /// file holds in `range`: no commit since then changed a byte of it, and the
    /// extents that hold it are the same (a commit elsewhere may re-key the extent a
    /// piece was read from). So a reader is not restarted by commits to other parts
    /// of the file (`tail -f` of a file appended and synced faster than a GET).
    fn still_valid(
        &self,
        ino: u64,
        state: &SharedFile,
        generation: u64,
        range: Range<u64>,
        pieces: &[(Piece, Fetch)],
    ) -> FsResult<bool> {
        let st = lock_file(state);
        if st.generation == generation {
            return Ok(true);
        }
        if !st.unchanged_since(generation, &range) {
            return Ok(false);
        }
        let stored_end = range.end.min(st.cut.unwrap_or(u64::MAX));
        let map = self.extent_map(ino, range.start, stored_end)?;
        let now = extents::pieces(&map, range.start, stored_end);
        Ok(now.len() == pieces.len() && now.iter().zip(pieces).all(|(a, (b, _))| a == b))
    }

    fn plan_read(
        &self,
        ino: u64,
        st: &mut FileState,
        offset: u64,
        size: u32,
    ) -> FsResult<ReadPlan> {
        if st.attr.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let end = offset.saturating_add(size as u64).min(st.attr.size);
        if offset >= end {
            return Ok(ReadPlan::Done(Bytes::new()));
        }
        if !st.attr.extents {
            return Ok(match &st.content {
                Some(c) => ReadPlan::Done(Bytes::copy_from_slice(
                    &c[offset as usize..(end as usize).min(c.len())],
                )),
                None => ReadPlan::Inline {
                    generation: st.generation,
                    end,
                },
            });
        }
        let stored_end = end.min(st.cut.unwrap_or(u64::MAX));
        let map = self.extent_map(ino, offset, stored_end)?;
        let planned = extents::pieces(&map, offset, stored_end);
        // Sequential: close to the furthest end read so far (the kernel sends a
        // sequential reader's requests several at a time, not always in order).
        let ra = &mut st.readahead;
        let near =
            ra.next > 0 && offset <= ra.next + 2 * MAX_EXTENT && offset + READAHEAD_MAX >= ra.next;
        if near {
            ra.window = (ra.window * 2).clamp(2 * MAX_EXTENT, READAHEAD_MAX);
            ra.next = ra.next.max(end);
        } else {
            ra.window = 0;
            ra.next = end;
        }
        // Values well behind the reader, or far ahead of it, are no longer needed.
        // The extent before the one being read is kept for a request that arrives
        // out of order, but only while open files buffer less than they may: many
        // files read at once then hold about one extent each.
        let ahead_limit = end + READAHEAD_MAX + MAX_EXTENT;
        let behind = if self.file_buffer_bytes() <= self.buffer_limit {
            2 * MAX_EXTENT
        } else {
            MAX_EXTENT
        };
        ra.fetches
            .retain(|k, _| k + behind > offset && *k < ahead_limit);
        let mut pieces = Vec::with_capacity(planned.len());
        for p in planned {
            let cell = ra.fetches.entry(p.key).or_default().clone();
            pieces.push((p, cell));
        }
        // Nothing more is fetched ahead while open files buffer all they may.
        let room = self.file_buffer_bytes() + ra.window as usize <= self.buffer_limit;
        if ra.window > 0 && room {
            let end = ra.next;
            let ahead_end = (end + ra.window)
                .min(st.attr.size)
                .min(st.cut.unwrap_or(u64::MAX));
            if ahead_end > end {
                let ahead = self.extent_map(ino, end, ahead_end)?;
                for p in extents::pieces(&ahead, end, ahead_end) {
                    if ra.fetches.contains_key(&p.key) {
                        continue;
                    }
                    let cell: Fetch = Default::default();
                    ra.fetches.insert(p.key, cell.clone());
                    let db = self.db.clone();
                    tokio::spawn(async move {
                        let _ = cell.get_or_try_init(|| fetch_extent(db, ino, p.key)).await;
                    });
                }
            }
        }
        Ok(ReadPlan::Extents {
            generation: st.generation,
            end,
            pieces,
            dirty: st.dirty.within(offset, end),
        })
    }

    /// A read happened: update the access time as the mount's [`AtimeMode`] says
    /// (written with the file's next commit, at the latest its last close). Whether
    /// it changed.
    fn touch_atime(&self, st: &mut FileState) -> bool {
        let now = now();
        let due = match self.atime {
            AtimeMode::Noatime => false,
            AtimeMode::Strictatime => true,
            AtimeMode::Relatime => {
                let a = st.attr.atime;
                a <= st.attr.mtime
                    || a <= st.attr.ctime
                    || now.duration_since(a).is_ok_and(|d| d >= RELATIME_AGE)
            }
        };
        if due && !self.db.is_read_only() {
            st.attr.atime = now;
            st.changed = true;
            return true;
        }
        false
    }

    /// Update the access time of a file opened for reading as a read would, when
    /// no read may reach kvfs: the kernel keeps the pages it cached (`pages_kept`)
    /// or the file is empty (see `Namespace::keep_page_cache`). Whether it changed.
    pub(super) fn touch_atime_at_open(&self, ino: u64, pages_kept: bool) -> bool {
        self.state_of(ino).is_some_and(|state| {
            let mut st = lock_file(&state);
            (pages_kept || st.attr.size == 0) && self.touch_atime(&mut st)
        })
    }

    /// The stored extents of `ino` that may overlap `start .. end` (`end`
    /// `u64::MAX`: to the end of the file).
    pub(super) fn extent_map(&self, ino: u64, start: u64, end: u64) -> FsResult<ExtentMap> {
        Ok(self
            .extent_rows(ino, start, end)?
            .into_iter()
            .map(|s| (s.at, s.extent))
            .collect())
    }

    /// As [`Namespace::extent_map`], in offset order, with what each value is.
    fn extent_rows(&self, ino: u64, start: u64, end: u64) -> FsResult<Vec<Stored>> {
        if end <= start {
            return Ok(Vec::new());
        }
        let lo = extent_key(ino, start.saturating_sub(MAX_EXTENT - 1));
        let hi = if end == u64::MAX {
            prefix_successor(&extent_prefix(ino))
        } else {
            Some(extent_key(ino, end))
        };
        let rows = self.db.scan_info(
            Bound::Included(lo.as_slice()),
            hi.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
            usize::MAX,
        );
        let mut out = Vec::with_capacity(rows.len());
        for (key, info) in rows {
            let Some(at) = extent_offset(ino, &key) else {
                continue;
            };
            let meta = ExtentMeta::decode(info.meta.as_deref().unwrap_or(&[]), info.value_len)
                .map_err(|source| FsError::Corrupt {
                    what: format!("extent {at} of inode {ino}"),
                    source,
                })?;
            let e = Extent {
                len: meta.len as u64,
                skip: meta.skip as u64,
            };
            out.push(Stored {
                at,
                extent: e,
                value_len: info.value_len as u64,
                value_id: info.value_id,
            });
        }
        Ok(out)
    }

    /// Rewrite runs of small extents, and extents that keep a mostly dead value
    /// stored, in the given windows of a clean file as one extent each
    /// ([`extents::merge_candidates`]). Reads with no lock held; gives up on a
    /// window if the file changes meanwhile or memory is short (it is only tidying).
    async fn merge_extents(&self, ino: u64, state: &SharedFile, windows: Vec<u64>) -> FsResult<()> {
        /// How merging one run of extents went.
        enum Merge {
            /// Merged; the file's state is at this generation.
            Merged(u64),
            /// The file changed since the run was read: on to the next window.
            FileChanged,
            /// Memory is short: give up for now.
            NoRoom,
        }
        for w in windows {
            let (runs, mut generation) = {
                let st = lock_file(state);
                if st.changed || st.attr.nlink == 0 || !st.attr.extents {
                    return Ok(());
                }
                let rows = self.extent_rows(ino, w * MAX_EXTENT, (w + 1) * MAX_EXTENT)?;
                (extents::merge_candidates(&rows), st.generation)
            };
            for (start, end) in runs {
                let data = self
                    .read_at(ino, start, (end - start) as u32, false)
                    .await?;
                if data.len() as u64 != end - start {
                    continue;
                }
                let merged = self
                    .change(|batch| {
                        let mut st = lock_file(state);
                        if st.generation != generation || st.changed {
                            return Ok(Step::Done(Merge::FileChanged));
                        }
                        let mut map = self.extent_map(ino, start, end)?;
                        let ops: Vec<BatchOp> = extents::write(&mut map, start, end)
                            .into_iter()
                            .map(|op| extent_op(ino, op, start, &data))
                            .collect();
                        if !batch.append(&ops)? {
                            // Only tidying: not worth waiting for room.
                            return Ok(Step::Done(Merge::NoRoom));
                        }
                        st.changed_ranges(Some(std::iter::once(start..end).collect()));
                        st.readahead.fetches.clear();
                        Ok(Step::Done(Merge::Merged(st.generation)))
                    })
                    .await?;
                match merged {
                    Merge::Merged(g) => generation = g,
                    Merge::FileChanged => break,
                    Merge::NoRoom => return Ok(()),
                }
            }
        }
        Ok(())
    }

    pub async fn write(&self, ino: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.writable()?;
        // A store short of space takes no more data (deletes still go through).
        if let Some(problem) = self.db.space_problem() {
            return Err(crate::db::Error::NoSpace(problem).into());
        }
        let written = self.write_bytes(ino, offset, data).await?;
        let end = offset + u64::from(written);
        if offset % page_size() != 0 || end % page_size() != 0 {
            self.partly_written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .put(ino, ());
        }
        Ok(written)
    }

    /// `write` without the check for space: also zeroing a range of a small file.
    async fn write_bytes(&self, ino: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= MAX_FILE_SIZE)
            .ok_or(FsError::TooLarge)?;
        self.make_room_for_buffers(data.len()).await?;
        let state = self.file_state(ino)?;
        let commit_now = loop {
            let need = {
                let st = lock_file(&state);
                if st.attr.kind != Kind::File {
                    return Err(FsError::IsDir);
                }
                Self::needs_content(&st, offset == 0 && end >= st.attr.size)
            };
            if let Some(g) = need {
                self.load_inline(ino, &state, g, data.len()).await?;
                continue;
            }
            let mut st = lock_file(&state);
            if !st.attr.extents {
                if end > INLINE_MAX {
                    to_extents(&mut st);
                } else {
                    let mut c = st.content.take().unwrap_or_default();
                    if c.len() < end as usize {
                        c.resize(end as usize, 0);
                    }
                    c[offset as usize..end as usize].copy_from_slice(data);
                    st.content = Some(c);
                    st.content_changed = true;
                }
            }
            if st.attr.extents {
                st.dirty.write(offset, data);
            }
            st.attr.size = st.attr.size.max(end);
            let t = now();
            st.attr.mtime = t;
            st.attr.ctime = t;
            st.changed = true;
            // Commit early under memory pressure, at an extent boundary when the
            // writer is sequential, so extents stay whole.
            let dirty = st.dirty.bytes();
            break dirty > 2 * MAX_DIRTY_PER_FILE
                || (dirty > MAX_DIRTY_PER_FILE && end % MAX_EXTENT == 0);
        };
        if commit_now {
            self.commit(ino).await?;
        }
        Ok(data.len() as u32)
    }

    /// Keep the bytes all open files buffer within the namespace's bound before a
    /// write adds `incoming` more: while over it, the file that buffers the most is
    /// committed (its dirty bytes move to the engine, whose own bound makes this wait
    /// for uploads when needed), and its inline content already stored and its
    /// extents fetched ahead are dropped (read again when needed). Each step frees what the
    /// largest file holds, so this ends; a write larger than the bound proceeds once
    /// nothing else is buffered.
    pub(super) async fn make_room_for_buffers(&self, incoming: usize) -> FsResult<()> {
        loop {
            let held = self.file_buffer_bytes();
            if held == 0 || held + incoming <= self.buffer_limit {
                return Ok(());
            }
            let largest = self
                .files()
                .iter()
                .map(|(ino, s)| (lock_file(s).buffered(), *ino, s.clone()))
                .max_by_key(|(bytes, _, _)| *bytes);
            let Some((bytes, ino, state)) = largest else {
                return Ok(());
            };
            if bytes == 0 {
                return Ok(());
            }
            let changed = lock_file(&state).changed;
            if changed {
                self.commit(ino).await?;
            }
            let mut st = lock_file(&state);
            if !st.changed && st.content.is_some() {
                // Committed (or never changed): the stored value has it all.
                st.content = None;
            }
            // Fetched again if the reader gets there.
            st.readahead.fetches.clear();
            if st.buffered() >= bytes {
                // Changed again meanwhile by its writers; they are over the bound
                // too and commit it themselves. Let this write go on.
                return Ok(());
            }
        }
    }

    /// Turn the file's unsaved state into one engine batch (not yet durable).
    pub async fn commit(&self, ino: u64) -> FsResult<()> {
        let Some(state) = self.state_of(ino) else {
            return Ok(());
        };
        self.change(|batch| {
            let mut st = lock_file(&state);
            if !st.changed {
                return Ok(Step::Done(()));
            }
            if st.attr.nlink == 0 && st.opens == 0 {
                // Deleted and closed: nothing to keep.
                st.changed = false;
                st.dirty.clear();
                return Ok(Step::Done(()));
            }
            let ops = self.commit_ops(ino, &st)?;
            if !batch.append(&ops)? {
                return Ok(Step::Retry);
            }
            // What this commit changed: the dirty ranges and everything from a cut
            // on (an inline file: all of it). The windows it touched are those of
            // the dirty ranges and the one the cut falls in.
            let changed_ranges = st.attr.extents.then(|| {
                st.dirty
                    .ranges()
                    .map(|(o, d)| o..o + d.len() as u64)
                    .chain(st.cut.map(|c| c..u64::MAX))
                    .collect::<Vec<_>>()
            });
            for r in changed_ranges.iter().flatten() {
                let last = if r.end == u64::MAX {
                    r.start
                } else {
                    r.end - 1
                };
                for w in r.start / MAX_EXTENT..=last / MAX_EXTENT {
                    if st.touched.len() >= MAX_TOUCHED {
                        break;
                    }
                    st.touched.insert(w);
                }
            }
            st.dirty.clear();
            st.cut = None;
            st.changed = false;
            st.content_changed = false;
            st.stored = st.attr;
            st.changed_ranges(changed_ranges);
            st.readahead.fetches.clear();
            Ok(Step::Done(()))
        })
        .await
    }

    fn commit_ops(&self, ino: u64, st: &FileState) -> FsResult<Vec<BatchOp>> {
        let mut ops = Vec::new();
        let ranges: Vec<(u64, &[u8])> = st.dirty.ranges().collect();
        if st.cut.is_some() || !ranges.is_empty() {
            let lo = ranges
                .iter()
                .map(|(o, _)| *o)
                .chain(st.cut)
                .min()
                .unwrap_or(0);
            let hi = if st.cut.is_some() {
                u64::MAX
            } else {
                ranges
                    .iter()
                    .map(|(o, d)| o + d.len() as u64)
                    .max()
                    .unwrap_or(0)
            };
            let mut map = self.extent_map(ino, lo, hi)?;
            if let Some(c) = st.cut {
                for op in extents::punch(&mut map, c, None) {
                    ops.push(extent_op(ino, op, 0, &[]));
                }
            }
            for (o, d) in ranges {
                for op in extents::write(&mut map, o, o + d.len() as u64) {
                    ops.push(extent_op(ino, op, o, d));
                }
            }
        }
        let key = inode_key(ino);
        ops.push(match (&st.content, st.attr.extents) {
            (Some(c), false) if st.content_changed => BatchOp::PutMeta {
                key,
                meta: st.attr.encode(),
                value: c.clone(),
            },
            // Content unchanged (never loaded, or what the last commit stored):
            // only the attributes change.
            (_, false) => BatchOp::Link {
                source: key.clone(),
                key,
                meta: Some(st.attr.encode()),
            },
            (_, true) => BatchOp::PutMeta {
                key,
                meta: st.attr.encode(),
                value: Vec::new(),
            },
        });
        Ok(ops)
    }

    /// `fallocate`: mode 0 extends the file with zeros (holes: nothing is stored);
    /// `keep_size` only checks the arguments, since nothing needs reserving.
    pub async fn fallocate(
        &self,
        ino: u64,
        offset: u64,
        len: u64,
        keep_size: bool,
    ) -> FsResult<()> {
        self.writable()?;
        let end = fallocate_end(offset, len)?;
        let attr = self.attr_now(ino)?.ok_or(FsError::NotFound)?;
        match attr.kind {
            Kind::File => {}
            Kind::Dir => return Err(FsError::IsDir),
            _ => return Err(FsError::NotSupported("fallocate of a special file")),
        }
        if keep_size || end <= attr.size {
            return Ok(());
        }
        let grow = SetAttr {
            size: Some(end),
            ..SetAttr::default()
        };
        self.set_size_and_attr(ino, grow).await.map(|_| ())
    }

    /// `fallocate` with `FALLOC_FL_PUNCH_HOLE` or `FALLOC_FL_ZERO_RANGE`: bytes
    /// `offset .. offset + len` read as zeros afterwards. In a large file the
    /// extents in the range are removed, trimmed or split, which changes metadata
    /// only (nothing is read or copied, and what they held becomes garbage that GC
    /// reclaims); a small file's inline content is zeroed. Past the end of the file
    /// nothing is stored; the file grows to `offset + len` unless `keep_size` (a
    /// punched hole always keeps the size: Linux requires `FALLOC_FL_KEEP_SIZE`
    /// with it). Changes that store no more than they drop, so this works on a
    /// store short of space.
    pub async fn zero_range(
        &self,
        ino: u64,
        offset: u64,
        len: u64,
        keep_size: bool,
    ) -> FsResult<()> {
        self.writable()?;
        let end = fallocate_end(offset, len)?;
        let state = self.file_state(ino)?;
        /// How one try at zeroing went.
        enum Zeroing {
            /// Zeroed (a file of extents).
            Done,
            /// The file changed before its state was locked: commit and try again.
            Changed,
            /// An inline file: zero up to `zero_end` by writing, then grow if asked.
            Inline { zero_end: u64, grow: bool },
        }
        loop {
            // Whatever is pending is stored first, so the punch applies to the
            // stored extents alone.
            self.commit(ino).await?;
            let zeroing = self
                .change(|batch| {
                    let mut st = lock_file(&state);
                    match st.attr.kind {
                        Kind::File => {}
                        Kind::Dir => return Err(FsError::IsDir),
                        _ => return Err(FsError::NotSupported("fallocate of a special file")),
                    }
                    if st.changed {
                        return Ok(Step::Done(Zeroing::Changed));
                    }
                    let size = st.attr.size;
                    let zero_end = end.min(size);
                    let grow = !keep_size && end > size;
                    if !st.attr.extents {
                        return Ok(Step::Done(Zeroing::Inline { zero_end, grow }));
                    }
                    let mut ops = Vec::new();
                    if offset < zero_end {
                        let mut map = self.extent_map(ino, offset, zero_end)?;
                        for op in extents::punch(&mut map, offset, Some(zero_end)) {
                            ops.push(extent_op(ino, op, 0, &[]));
                        }
                    }
                    let before = st.attr;
                    let t = now();
                    st.attr.mtime = t;
                    st.attr.ctime = t;
                    if grow {
                        st.attr.size = end;
                    }
                    ops.extend(self.commit_ops(ino, &st)?);
                    if !batch.append(&ops)? {
                        st.attr = before;
                        return Ok(Step::Retry);
                    }
                    if offset < zero_end {
                        for w in offset / MAX_EXTENT..=(zero_end - 1) / MAX_EXTENT {
                            if st.touched.len() >= MAX_TOUCHED {
                                break;
                            }
                            st.touched.insert(w);
                        }
                    }
                    st.stored = st.attr;
                    st.changed_ranges(Some(
                        std::iter::once(offset..zero_end.max(offset)).collect(),
                    ));
                    st.readahead.fetches.clear();
                    Ok(Step::Done(Zeroing::Done))
                })
                .await?;
            let (zero_end, grow) = match zeroing {
                Zeroing::Done => return Ok(()),
                Zeroing::Changed => continue,
                Zeroing::Inline { zero_end, grow } => (zero_end, grow),
            };
            if offset < zero_end {
                let zeros = vec![0u8; (zero_end - offset) as usize];
                self.write_bytes(ino, offset, &zeros).await?;
            }
            if grow {
                let short = lock_file(&state).attr.size < end;
                if short {
                    self.resize(ino, &state, end).await?;
                }
                let mut st = lock_file(&state);
                let t = now();
                st.attr.mtime = t;
                st.attr.ctime = t;
                st.changed = true;
            }
            return self.commit(ino).await;
        }
    }

    /// The 512-byte blocks `stat` reports (`st_blocks`, what `du` adds up): the
    /// 4 KiB pages that hold data, as tmpfs counts them. A small file (stored
    /// inline) counts every page up to its size; a large file the pages its extents
    /// and its unsaved writes cover, so holes count nothing. From memory: the index
    /// holds every extent's bounds.
    pub fn blocks(&self, attr: &super::Attr) -> u64 {
        const PAGE: u64 = 4096;
        const PER_PAGE: u64 = PAGE / 512;
        if attr.kind != Kind::File {
            return attr.size.div_ceil(512);
        }
        if !attr.extents {
            return attr.size.div_ceil(PAGE) * PER_PAGE;
        }
        let Ok(rows) = self.extent_rows(attr.ino, 0, u64::MAX) else {
            return attr.size.div_ceil(PAGE) * PER_PAGE;
        };
        let mut cut = u64::MAX;
        let mut ranges: Vec<(u64, u64)> = Vec::with_capacity(rows.len());
        if let Some(state) = self.state_of(attr.ino) {
            let st = lock_file(&state);
            cut = st.cut.unwrap_or(u64::MAX);
            ranges.extend(st.dirty.ranges().map(|(o, d)| (o, o + d.len() as u64)));
        }
        ranges.extend(rows.iter().map(|r| (r.at, (r.at + r.extent.len).min(cut))));
        ranges.sort_unstable();
        let mut pages = 0;
        let mut counted_to = 0;
        for (start, end) in ranges {
            let end = end.min(attr.size);
            if end <= start {
                continue;
            }
            let first = (start / PAGE).max(counted_to);
            let last = end.div_ceil(PAGE);
            pages += last.saturating_sub(first);
            counted_to = counted_to.max(last);
        }
        pages * PER_PAGE
    }

    /// `lseek` with `SEEK_DATA` (`hole` false) or `SEEK_HOLE` (`hole` true): the
    /// first offset at or after `offset` that is data, or a hole (the end of the
    /// file counts as a hole). `NoSuchOffset` at or past the end.
    pub async fn seek_data(&self, ino: u64, offset: u64, hole: bool) -> FsResult<u64> {
        let state = self.file_state(ino)?;
        let st = lock_file(&state);
        let size = st.attr.size;
        if offset >= size {
            return Err(FsError::NoSuchOffset);
        }
        if !st.attr.extents {
            return Ok(if hole { size } else { offset });
        }
        // Data: stored extents (below a pending truncate) and dirty ranges, merged.
        let stored_end = st.cut.unwrap_or(u64::MAX).min(size);
        let mut data: Vec<(u64, u64)> = self
            .extent_map(ino, 0, stored_end)?
            .into_iter()
            .map(|(at, e)| (at, (at + e.len).min(stored_end)))
            .filter(|(s, e)| s < e)
            .chain(st.dirty.ranges().map(|(o, d)| (o, o + d.len() as u64)))
            .collect();
        data.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, e) in data {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        if hole {
            let mut at = offset;
            for (s, e) in &merged {
                if *s <= at && at < *e {
                    at = *e;
                }
            }
            Ok(at.min(size))
        } else {
            merged
                .iter()
                .find(|(_, e)| *e > offset)
                .map(|(s, _)| (*s).max(offset))
                .filter(|at| *at < size)
                .ok_or(FsError::NoSuchOffset)
        }
    }

    /// Commit `ino` and make everything written so far durable.
    pub async fn fsync(&self, ino: u64) -> FsResult<()> {
        self.commit(ino).await?;
        self.db.sync().await?;
        Ok(())
    }

    /// Commit every open file and make everything durable.
    pub async fn sync_all(&self) -> FsResult<()> {
        let inos: Vec<u64> = self.files().keys().copied().collect();
        for ino in inos {
            self.commit(ino).await?;
        }
        self.db.sync().await?;
        Ok(())
    }

    /// The last close of one open: commit, and forget the state once nobody has it
    /// open (deleting the content if no name refers to it any more).
    pub async fn release(&self, ino: u64) -> FsResult<()> {
        let result = self.commit(ino).await;
        // The last close of a file whose extents changed: merge what fragmented.
        if result.is_ok() {
            if let Some(state) = self.state_of(ino) {
                let windows: Vec<u64> = {
                    let mut st = lock_file(&state);
                    if st.opens == 1 && st.attr.nlink > 0 {
                        std::mem::take(&mut st.touched).into_iter().collect()
                    } else {
                        Vec::new()
                    }
                };
                if !windows.is_empty() {
                    if let Err(e) = self.merge_extents(ino, &state, windows).await {
                        log::warn!("merging extents of inode {ino}: {e}");
                    }
                }
            }
        }
        let purge = {
            let _held = self.locks.take(false, &[ino]);
            let mut files = self.files();
            let Some(state) = files.get(&ino).cloned() else {
                return result;
            };
            let mut st = lock_file(&state);
            st.opens = st.opens.saturating_sub(1);
            if st.opens > 0 {
                false
            } else if st.attr.nlink == 0 {
                files.remove(&ino);
                true
            } else {
                if !st.changed {
                    files.remove(&ino);
                }
                false
            }
        };
        if purge {
            self.purge(ino).await?;
        }
        result
    }

    /// Change the size and attributes of a file through its state. Attributes alone
    /// of a file open with unsaved writes are saved with those writes (at its next
    /// commit: fsync, memory pressure, at the latest its last close), in the same
    /// batch: `tar -x` sets times, owner and mode of each file it writes before it
    /// closes it, and so stores each file in one record. Otherwise they are committed
    /// now.
    pub(super) async fn set_size_and_attr(&self, ino: u64, set: SetAttr) -> FsResult<super::Attr> {
        let state = self.file_state(ino)?;
        if let Some(size) = set.size {
            self.resize(ino, &state, size).await?;
        }
        let with_writes = {
            let mut st = lock_file(&state);
            let with_writes = set.size.is_none() && st.opens > 0 && st.unsaved_writes();
            apply_set(&mut st.attr, &set);
            st.changed = true;
            with_writes
        };
        if with_writes {
            return Ok(lock_file(&state).attr);
        }
        self.commit(ino).await?;
        let attr = lock_file(&state).attr;
        self.drop_idle(ino);
        Ok(attr)
    }

    /// Delete the content and record of an inode no name refers to: extents in
    /// batches, then the inode and its orphan record.
    pub(super) async fn purge(&self, ino: u64) -> FsResult<()> {
        let prefix = extent_prefix(ino);
        loop {
            let keys = self.db.scan_info_prefix(&prefix, None, PURGE_BATCH);
            if keys.is_empty() {
                break;
            }
            let ops: Vec<BatchOp> = keys.into_iter().map(|(k, _)| BatchOp::Delete(k)).collect();
            self.db.write_batch(&ops).await?;
        }
        let mut last = vec![
            BatchOp::Delete(inode_key(ino)),
            BatchOp::Delete(orphan_key(ino)),
        ];
        self.xattr_deletes(ino, &mut last);
        self.db.write_batch(&last).await?;
        Ok(())
    }

    /// Purge what files unlinked while open left behind (after a crash, or a
    /// mount that ended with them open).
    pub(super) async fn purge_orphans(&self) -> FsResult<usize> {
        let orphans: Vec<u64> = self
            .db
            .scan_info_prefix(&orphan_prefix(), None, usize::MAX)
            .into_iter()
            .filter_map(|(k, _)| orphan_ino(&k))
            .collect();
        for ino in &orphans {
            log::info!("deleting inode {ino}: unlinked while open before the last stop");
            self.purge(*ino).await?;
        }
        Ok(orphans.len())
    }
}

/// Move an inline file's content (loaded, or the file is empty or about to be
/// wholly overwritten) into dirty ranges of an extent file.
fn to_extents(st: &mut FileState) {
    let mut c = st.content.take().unwrap_or_default();
    c.resize(st.attr.size as usize, 0);
    st.dirty.clear();
    st.dirty.write(0, &c);
    st.attr.extents = true;
    st.cut = Some(0);
}

/// The engine operation of one extent change; `Put`s take their bytes from the
/// dirty range `data` starting at file offset `base`.
fn extent_op(ino: u64, op: ExtentOp, base: u64, data: &[u8]) -> BatchOp {
    match op {
        ExtentOp::Link { at, from, meta } => BatchOp::Link {
            key: extent_key(ino, at),
            source: extent_key(ino, from),
            meta: Some(meta.encode()),
        },
        ExtentOp::Delete { at } => BatchOp::Delete(extent_key(ino, at)),
        ExtentOp::Put { at, len } => {
            let s = (at - base) as usize;
            BatchOp::PutMeta {
                key: extent_key(ino, at),
                meta: ExtentMeta {
                    skip: 0,
                    len: len as u32,
                }
                .encode(),
                value: data[s..s + len as usize].to_vec(),
            }
        }
    }
}

async fn fetch_extent(db: Db, ino: u64, at: u64) -> FsResult<Bytes> {
    db.get(&extent_key(ino, at)).await?.ok_or(FsError::NotFound)
}

/// The kernel's page size: the unit its page cache of a file is whole or not in.
fn page_size() -> u64 {
    static SIZE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SIZE.get_or_init(|| {
        // SAFETY: sysconf reads a constant of the running system.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(n).ok().filter(|n| *n > 0).unwrap_or(4096)
    })
}

/// The end of an `fallocate` range: refuses an empty one and one past the largest
/// file.
fn fallocate_end(offset: u64, len: u64) -> FsResult<u64> {
    if len == 0 {
        return Err(FsError::Invalid("fallocate of zero bytes"));
    }
    offset
        .checked_add(len)
        .filter(|e| *e <= MAX_FILE_SIZE)
        .ok_or(FsError::TooLarge)
}
