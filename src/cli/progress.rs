//! Progress of long commands (`gc`, `compact`, `fsck`) on standard error: on a
//! terminal a spinner with the latest step and the time elapsed, otherwise plain
//! `what: step` lines (at most one per `every`, when given).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    what: &'static str,
    bar: Option<ProgressBar>,
    every: Option<Duration>,
    last_line: Option<Instant>,
}

impl Progress {
    pub fn new(what: &'static str, every: Option<Duration>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix}: {msg} [{elapsed}]")
            {
                bar.set_style(style);
            }
            bar.set_prefix(what);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            what,
            bar,
            every,
            last_line: None,
        }
    }

    /// Show `step` as the latest one.
    pub fn step(&mut self, step: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(step.to_string());
            return;
        }
        let due = match (self.every, self.last_line) {
            (Some(every), Some(last)) => last.elapsed() >= every,
            _ => true,
        };
        if due {
            eprintln!("{}: {step}", self.what);
            self.last_line = Some(Instant::now());
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
