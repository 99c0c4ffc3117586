//! Faults a test can inject into a writer's background tasks (only with the
//! `test-hooks` feature; not part of the stable API). See [`crate::db::Db::inject`].

use std::sync::atomic::{AtomicU8, Ordering};

/// A failure of a background task, armed by [`crate::db::Db::inject`]. Each fires
/// once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskFault {
    /// The next segment upload panics before it sends anything.
    UploadPanics,
    /// The uploader loop panics when it next wakes.
    UploaderPanics,
    /// The uploader loop returns when it next wakes, as a loop that ends by mistake
    /// would.
    UploaderReturns,
}

impl TaskFault {
    fn bit(self) -> u8 {
        match self {
            TaskFault::UploadPanics => 1,
            TaskFault::UploaderPanics => 2,
            TaskFault::UploaderReturns => 4,
        }
    }
}

/// The faults armed and not yet fired.
#[derive(Debug, Default)]
pub(crate) struct Hooks {
    armed: AtomicU8,
}

impl Hooks {
    pub fn arm(&self, fault: TaskFault) {
        self.armed.fetch_or(fault.bit(), Ordering::SeqCst);
    }

    /// Whether `fault` is armed; disarms it.
    pub fn fire(&self, fault: TaskFault) -> bool {
        self.armed.fetch_and(!fault.bit(), Ordering::SeqCst) & fault.bit() != 0
    }
}
