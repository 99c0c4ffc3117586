//! A read-only namespace following its store's writer: what a round of
//! [`Db::catch_up`](crate::db::Db::catch_up) changed, turned into refreshed file
//! states and the kernel caches to invalidate.
//!
//! Vocabulary:
//! - **invalidation**: a kernel cache entry that may now be wrong: an inode's
//!   attributes and data, or a name in a directory.

use std::collections::BTreeSet;

use super::keys::{key_of, KeyOf, ROOT_INO};
use super::namespace::{lock_file, Namespace};
use crate::db::CatchUp;

/// A kernel cache entry to drop.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invalidation {
    /// Attributes and cached data of an inode.
    Inode(u64),
    /// The name `name` in directory `parent`.
    Entry { parent: u64, name: Vec<u8> },
}

impl Namespace {
    /// Bring in-memory file states up to date with what a round of following
    /// applied, and list what the kernel should forget. After a reload every known
    /// inode counts as changed (names the kernel cached expire with their time-out).
    pub fn apply_catch_up(&self, c: &CatchUp) -> Vec<Invalidation> {
        let mut inodes = BTreeSet::new();
        let mut entries = BTreeSet::new();
        if c.reloaded {
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
