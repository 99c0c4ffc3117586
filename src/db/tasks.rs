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
//!
//! **Monitoring.** Every task is watched: [`TaskSet::spawn`] runs it under
//! `catch_unwind` and hands how it ended ([`Outcome`]) to a report function as soon
//! as it ends, from within the task itself, so nothing has to poll the join handles
//! for a failure to be noticed. A cancelled task reports nothing. The engine's report
//! function (`Shared::task_ended`) poisons the writer when a task panicked, or when a
//! loop ended while the writer was open, and wakes everyone who waits.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tokio::task::JoinSet;

/// The tasks of one writer, by kind.
#[derive(Debug, Default)]
pub(crate) struct TaskSet {
    loops: JoinSet<()>,
    gc: JoinSet<()>,
    work: JoinSet<()>,
}

/// How a task ended (by itself; a cancelled task reports nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Its future completed.
    Returned,
    /// It panicked, with this message.
    Panicked(String),
}

/// The message of a panic, from its payload (`panic!` gives a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
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

    /// Start `fut` on the current runtime as a task of `kind`; `report` learns how
    /// it ended (unless it is cancelled first).
    pub fn spawn(
        &mut self,
        kind: Kind,
        fut: impl Future<Output = ()> + Send + 'static,
        report: impl FnOnce(Outcome) + Send + 'static,
    ) {
        let set = self.group(kind);
        // Reap what has finished, so a long-running writer does not accumulate them.
        while set.try_join_next().is_some() {}
        set.spawn(async move {
            // Unwind safety: after a panic the engine is poisoned and only stops.
            let outcome = match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(()) => Outcome::Returned,
                Err(payload) => Outcome::Panicked(panic_message(&*payload)),
            };
            report(outcome);
        });
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
        // Tasks catch their own panics and report them (see `TaskSet::spawn`): only a
        // panic of the report itself lands here.
        if let Err(e) = r {
            if e.is_panic() {
                log::error!(
                    "a background task panicked: {}",
                    panic_message(&*e.into_panic())
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[tokio::test]
    async fn work_is_waited_for_and_loops_are_cancelled() {
        let done = Arc::new(AtomicUsize::new(0));
        let mut t = TaskSet::default();
        for _ in 0..3 {
            let d = done.clone();
            t.spawn(
                Kind::Work,
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    d.fetch_add(1, Ordering::SeqCst);
                },
                |_| {},
            );
        }
        t.spawn(Kind::Loop, std::future::pending(), |_| {});
        drain(t.take(Kind::Loop), true).await;
        drain(t.take(Kind::Work), false).await;
        assert_eq!(done.load(Ordering::SeqCst), 3);
        assert_eq!(t.len(Kind::Work), 0);
    }

    #[tokio::test]
    async fn finished_work_is_reaped_when_more_starts() {
        let mut t = TaskSet::default();
        for _ in 0..100 {
            t.spawn(Kind::Work, async {}, |_| {});
            tokio::task::yield_now().await;
        }
        assert!(t.len(Kind::Work) < 100, "{}", t.len(Kind::Work));
        t.abort_all();
    }

    /// What tasks reported.
    type Seen = Arc<Mutex<Vec<Outcome>>>;

    /// A report function that records into `seen`.
    fn reporter(seen: &Seen) -> impl FnOnce(Outcome) + Send + 'static {
        let seen = seen.clone();
        move |o| seen.lock().unwrap().push(o)
    }

    #[tokio::test]
    async fn a_panic_is_reported_with_its_message() {
        let seen = Seen::default();
        let mut t = TaskSet::default();
        t.spawn(
            Kind::Work,
            async { panic!("static message") },
            reporter(&seen),
        );
        let n = 7;
        t.spawn(
            Kind::Loop,
            async move { panic!("formatted {n}") },
            reporter(&seen),
        );
        t.spawn(
            Kind::Work,
            async { std::panic::panic_any(42u32) },
            reporter(&seen),
        );
        t.spawn(Kind::Gc, async {}, reporter(&seen));
        for kind in [Kind::Work, Kind::Loop, Kind::Gc] {
            drain(t.take(kind), false).await;
        }
        let mut seen = seen.lock().unwrap().clone();
        seen.sort_by_key(|o| format!("{o:?}"));
        assert_eq!(
            seen,
            vec![
                Outcome::Panicked("a panic without a message".to_string()),
                Outcome::Panicked("formatted 7".to_string()),
                Outcome::Panicked("static message".to_string()),
                Outcome::Returned,
            ]
        );
    }

    #[tokio::test]
    async fn a_cancelled_task_reports_nothing() {
        let seen = Seen::default();
        let mut t = TaskSet::default();
        t.spawn(Kind::Loop, std::future::pending(), reporter(&seen));
        tokio::task::yield_now().await;
        drain(t.take(Kind::Loop), true).await;
        assert!(seen.lock().unwrap().is_empty());
    }
}
