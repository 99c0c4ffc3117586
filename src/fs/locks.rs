//! The namespace's locks, and the order they are taken in.
//!
//! 1. **rename lock**: one per namespace, taken only by a rename that moves a
//!    directory to another parent, so two such renames cannot make a cycle.
//! 2. **inode locks**: striped by inode number. A change takes the locks of every
//!    inode whose records it reads and writes (the directories whose entries change,
//!    the inodes whose link count changes), in ascending stripe order, each stripe
//!    once.
//! 3. **open-file map**, then 4. **one file's state** (see `file`).
//! 5. The engine's own lock, inside `Db`.
//!
//! All of them are plain mutexes held for memory work and one non-waiting append,
//! inside one attempt of a change (`change`, whose attempts are synchronous); none is
//! held across an object-store request or while waiting for unflushed memory to
//! drain. Lookups, `getattr` and `readdir`
//! take none of them: every batch is applied to the engine's index atomically, so
//! they see each change whole or not at all.

use std::sync::{Mutex, MutexGuard};

const STRIPES: usize = 64;

pub struct Locks {
    rename: Mutex<()>,
    stripes: Vec<Mutex<()>>,
}

impl Default for Locks {
    fn default() -> Self {
        Locks {
            rename: Mutex::new(()),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

/// Locks held by one change; released when dropped.
pub struct Held<'a> {
    _rename: Option<MutexGuard<'a, ()>>,
    _stripes: Vec<MutexGuard<'a, ()>>,
}

fn stripe(ino: u64) -> usize {
    (ino.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % STRIPES
}

impl Locks {
    /// Take the locks of `inos` (and the rename lock first when `rename`).
    pub fn take(&self, rename: bool, inos: &[u64]) -> Held<'_> {
        let rename = rename.then(|| self.rename.lock().unwrap_or_else(|e| e.into_inner()));
        let mut idx: Vec<usize> = inos.iter().map(|i| stripe(*i)).collect();
        idx.sort_unstable();
        idx.dedup();
        let stripes = idx
            .into_iter()
            .map(|i| self.stripes[i].lock().unwrap_or_else(|e| e.into_inner()))
            .collect();
        Held {
            _rename: rename,
            _stripes: stripes,
        }
    }
}
