//! One owner for every background task of a writer.
//!
//! Vocabulary:
//! - **loop**: a task that runs as long as the writer does (the uploader, the lease
//!   renewer); stopped by [`TaskSet::stop_loops`] once the log is flushed.
//! - **gc**: the background cleaner; stopped first when the writer closes, so it
//!   appends nothing after the final flush.
//! - **work**: a task that ends by itself (one segment upload, one background
//!   checkpoint). A clean close waits for every one of them; finished ones are
//!   reaped whenever a new one starts, so the set stays as small as the work in
//!   flight.
//!
//! [`TaskSet::abort_all`] (a simulated crash, or the last handle dropped) cancels
//! everything at its next suspension point.

use std::future::Future;

use tokio::task::JoinSet;

/// The tasks of one writer, by kind.
#[derive(Debug, Default)]
pub(crate) struct TaskSet {
    loops: JoinSet<()>,
    gc: JoinSet<()>,
    work: JoinSet<()>,
}

/// Which group a task belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Loop,
    Gc,
    Work,
}

impl TaskSet {
    fn group(&mut self, kind: Kind) -> &mut JoinSet<()> {
        match kind {
            Kind::Loop => &mut self.loops,
            Kind::Gc => &mut self.gc,
            Kind::Work => &mut self.work,
        }
    }

    /// Start `fut` on the current runtime as a task of `kind`.
    pub fn spawn(&mut self, kind: Kind, fut: impl Future<Output = ()> + Send + 'static) {
        let set = self.group(kind);
        // Reap what has finished, so a long-running writer does not accumulate them.
        while set.try_join_next().is_some() {}
        set.spawn(fut);
    }

    /// Take the tasks of `kind` out (to wait for them without holding a lock).
    pub fn take(&mut self, kind: Kind) -> JoinSet<()> {
        std::mem::take(self.group(kind))
    }

    /// Number of tasks of `kind` not yet reaped.
    #[cfg(test)]
    pub fn len(&self, kind: Kind) -> usize {
        match kind {
            Kind::Loop => self.loops.len(),
            Kind::Gc => self.gc.len(),
            Kind::Work => self.work.len(),
        }
    }

    /// Cancel every task.
    pub fn abort_all(&mut self) {
        self.loops.abort_all();
        self.gc.abort_all();
        self.work.abort_all();
    }
}

/// Wait until every task of `set` has ended (after aborting them, with `abort`).
pub(crate) async fn drain(mut set: JoinSet<()>, abort: bool) {
    if abort {
        set.abort_all();
    }
    while let Some(r) = set.join_next().await {
        if let Err(e) = r {
            if e.is_panic() {
                log::error!("a background task panicked: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn work_is_waited_for_and_loops_are_cancelled() {
        let done = Arc::new(AtomicUsize::new(0));
        let mut t = TaskSet::default();
        for _ in 0..3 {
            let d = done.clone();
            t.spawn(Kind::Work, async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                d.fetch_add(1, Ordering::SeqCst);
            });
        }
        t.spawn(Kind::Loop, std::future::pending());
        drain(t.take(Kind::Loop), true).await;
        drain(t.take(Kind::Work), false).await;
        assert_eq!(done.load(Ordering::SeqCst), 3);
        assert_eq!(t.len(Kind::Work), 0);
    }

    #[tokio::test]
    async fn finished_work_is_reaped_when_more_starts() {
        let mut t = TaskSet::default();
        for _ in 0..100 {
            t.spawn(Kind::Work, async {});
            tokio::task::yield_now().await;
        }
        assert!(t.len(Kind::Work) < 100, "{}", t.len(Kind::Work));
        t.abort_all();
    }
}
