//! A read-only namespace following its store's writer: what a round of
//! [`Db::catch_up`](crate::db::Db::catch_up) changed, turned into refreshed file
//! states and the kernel caches to invalidate.
//!
//! Vocabulary:
//! - **invalidation**: a kernel cache entry that may now be wrong: an inode's
//!   attributes and data, or a name in a directory.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use super::keys::{key_of, KeyOf, ROOT_INO};
use super::namespace::{lock_file, Namespace};
use super::AtimeMode;
use crate::db::CatchUp;

/// A kernel cache entry to drop.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invalidation {
    /// Attributes and cached data of an inode.
    Inode(u64),
    /// The name `name` in directory `parent`.
    Entry { parent: u64, name: Vec<u8> },
}

/// What an open tells the kernel about its caches of the file (see
/// [`Namespace::keep_page_cache`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageCache {
    /// The kernel may keep the pages it cached (`FOPEN_KEEP_CACHE`).
    pub keep: bool,
    /// The open changed the attributes (the access time): the kernel's cached
    /// attributes are out of date.
    pub attributes_changed: bool,
}

impl Namespace {
    /// Bring in-memory file states up to date with what a round of following
    /// applied, and list what the kernel should forget. After a reload every known
    /// inode counts as changed (names the kernel cached expire with their time-out).
    pub fn apply_catch_up(&self, c: &CatchUp) -> Vec<Invalidation> {
        let mut inodes = BTreeSet::new();
        let mut entries = BTreeSet::new();
        if c.reloaded {
            self.reloads.fetch_add(1, Ordering::Relaxed);
            inodes.insert(ROOT_INO);
            inodes.extend(self.files().keys().copied());
        }
        for key in &c.changed {
            match key_of(key) {
                KeyOf::Inode(ino) | KeyOf::Extent { ino, .. } | KeyOf::Xattr { ino, .. } => {
                    inodes.insert(ino);
                }
                KeyOf::Dirent { parent, name } => {
                    inodes.insert(parent);
                    entries.insert((parent, name.to_vec()));
                }
                KeyOf::Super | KeyOf::Orphan(_) | KeyOf::Other => {}
            }
        }
        for ino in &inodes {
            self.refresh_file(*ino);
        }
        let mut out: Vec<Invalidation> = entries
            .into_iter()
            .map(|(parent, name)| Invalidation::Entry { parent, name })
            .collect();
        out.extend(inodes.into_iter().map(Invalidation::Inode));
        out
    }

    /// Whether the kernel may keep the pages it cached of `ino` at this open
    /// (`FOPEN_KEEP_CACHE`), so that reading again what was read or written before
    /// costs nothing. A writer's mount changes files only through the kernel, and a
    /// snapshot never changes. A following mount tells the kernel of every inode a
    /// round changed, except after a reload (it fell behind and took the newest
    /// state whole): an inode last opened before the latest reload, or never opened
    /// since this mount began, has its pages dropped at this open.
    ///
    /// A writer's mount drops the pages of a file a write covered only in part
    /// (tar writes 10 KiB at a time): the kernel would read each such page alone.
    ///
    /// Reads the kernel serves from its cache never reach kvfs, so an open for
    /// `reading` that keeps the pages, or of an empty file, updates the access
    /// time as a read would (relatime), and with
    /// `strictatime` the kernel keeps nothing: every read must be seen.
    pub fn keep_page_cache(&self, ino: u64, reading: bool) -> PageCache {
        if !self.db.is_read_only() {
            if self.atime == AtimeMode::Strictatime {
                return PageCache::default();
            }
            // Pages a write covered in part are dropped at the next open for
            // reading, so that the file is read back whole rather than a page at
            // a time. Then the reads reach kvfs and update the access time.
            let keep = !reading
                || self
                    .partly_written
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pop(&ino)
                    .is_none();
            return PageCache {
                keep,
                attributes_changed: reading && self.touch_atime_at_open(ino, keep),
            };
        }
        let reloads = self.reloads.load(Ordering::Relaxed);
        let mut opened = self.opened_at.lock().unwrap_or_else(|e| e.into_inner());
        PageCache {
            keep: opened.put(ino, reloads) == Some(reloads),
            attributes_changed: false,
        }
    }

    /// Reload an open file's attributes from the store and drop what it cached.
    fn refresh_file(&self, ino: u64) {
        let Some(state) = self.state_of(ino) else {
            return;
        };
        let stored = self.stored_attr(ino);
        let mut st = lock_file(&state);
        if let Ok(Some(attr)) = stored {
            st.attr = attr;
            st.stored = attr;
        }
        st.content = None;
        // The writer's changes: which bytes is not known here.
        st.changed_ranges(None);
        st.readahead.fetches.clear();
    }
}
