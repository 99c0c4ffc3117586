//! The one way the namespace changes what is stored.
//!
//! A **change** is a closure run by [`Namespace::change`] until it is done. Each run
//! is an **attempt**: it takes the locks of the inodes it reads and writes, reads
//! them, builds the records of the change and appends them as one engine batch with
//! [`Batch::append`], which never waits. The attempt then says what happened with a
//! [`Step`]: done (with its result), or retry, when the append found no room or what
//! the attempt read before taking its locks had moved.
//!
//! The closure is synchronous, so an attempt cannot await anything while it holds
//! locks: the rule of `locks` (no lock across an object-store request or across
//! backpressure) holds by construction. Waiting for unflushed memory to drain happens
//! between attempts, in [`Namespace::change`], with every lock released.

use super::error::FsResult;
use super::namespace::{ops_len, Namespace};
use crate::db::{BatchOp, Db};

/// What one attempt of a change came to.
pub(super) enum Step<T> {
    /// The change is over: written, or nothing to write (an error is returned as
    /// the closure's `Err` instead).
    Done(T),
    /// Run the attempt again: after waiting for room if its append found none,
    /// at once otherwise.
    Retry,
}

/// The batch of one attempt: appends without waiting, and remembers how much room
/// a refused append needed.
pub(super) struct Batch<'a> {
    db: &'a Db,
    room: usize,
}

impl Batch<'_> {
    /// Append `ops` as one atomic batch if there is room for it now. Returns false,
    /// having written nothing, when there is not: the attempt then returns
    /// [`Step::Retry`], and the next one runs once that much room is free.
    pub fn append(&mut self, ops: &[BatchOp]) -> FsResult<bool> {
        if self.db.try_write_batch(ops)? {
            return Ok(true);
        }
        self.room = self.room.max(ops_len(ops));
        Ok(false)
    }
}

impl Namespace {
    /// Run `attempt` until it is done (see the module documentation).
    pub(super) async fn change<T>(
        &self,
        mut attempt: impl FnMut(&mut Batch<'_>) -> FsResult<Step<T>>,
    ) -> FsResult<T> {
        let mut batch = Batch {
            db: &self.db,
            room: 0,
        };
        loop {
            let room = std::mem::take(&mut batch.room);
            if room > 0 {
                self.db.wait_for_room(room).await?;
            }
            if let Step::Done(v) = attempt(&mut batch)? {
                return Ok(v);
            }
        }
    }
}
