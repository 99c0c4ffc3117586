//! The write workload of the crash tests and of `kvfs-bench crash`, and its model.
//!
//! Batch `b` (from 1) is one atomic `write_batch` of one to six puts and deletes over
//! the [`KEY_SPACE`] keys `k000`, `k001`, … (a quarter of them deletes; values mostly
//! short, now and then empty or up to 2 KB), a pure function of `(seed, b)`, that also
//! sets the marker key [`MARKER`] to `b`. A recovered store whose marker reads `m`
//! must hold exactly the model's state after batches `1..=m`: then it is a prefix of
//! the write history, and it holds every acknowledged batch when `m` is at least the
//! last one acknowledged.
//!
//! A crash test runs the workload in a separate writer process ([`run_writer`]) that
//! it kills with SIGKILL at a random moment; the writer reports on its stdout, one
//! line each, `KVFS-READY m epoch e` once it opened the store and found batch `m`,
//! then `KVFS-ACK b` after every sync that returned: batch `b` was written before
//! that sync began, so it is durable ([`parse_event`]). [`WriterProcess`] runs such a
//! process and reads its lines.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use kvfs::db::{BatchOp, Db};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

/// The key that holds the number of the last batch applied.
pub const MARKER: &[u8] = b"__batch";
/// Number of distinct keys the workload touches (besides the marker).
pub const KEY_SPACE: u64 = 150;

/// The operations of batch `b` (for `b >= 1`): a pure function of `(seed, b)`.
pub fn batch_ops(seed: u64, b: u64) -> Vec<BatchOp> {
    let mix = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b.wrapping_mul(0xd1b5_4a32_d192_ed03);
    let mut rng = StdRng::seed_from_u64(mix);
    let n = rng.random_range(1..=6);
    let mut ops = Vec::with_capacity(n + 1);
    for i in 0..n {
        let key = format!("k{:03}", rng.random_range(0..KEY_SPACE)).into_bytes();
        if rng.random_bool(0.25) {
            ops.push(BatchOp::Delete(key));
        } else {
            let len = match rng.random_range(0..20) {
                0 => rng.random_range(500..2000),
                1 => 0,
                _ => rng.random_range(1..120),
            };
            let mut value = format!("{b}.{i}:").into_bytes();
            let start = value.len();
            value.resize(start + len, 0);
            rng.fill(&mut value[start..]);
            ops.push(BatchOp::Put(key, value));
        }
    }
    ops.push(BatchOp::Put(MARKER.to_vec(), b.to_string().into_bytes()));
    ops
}

/// The batch number a marker value names.
pub fn parse_batch(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The expected store contents after batches `1..=applied`.
#[derive(Clone, Debug)]
pub struct Model {
    seed: u64,
    /// The last batch applied.
    pub applied: u64,
    /// Every key and its value, the marker included.
    pub map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Model {
    /// The empty store, before batch 1 of the workload with `seed`.
    pub fn new(seed: u64) -> Model {
        Model {
            seed,
            applied: 0,
            map: BTreeMap::new(),
        }
    }

    /// Apply batches up to `m`. Panics if `m` is before the last batch applied: the
    /// model cannot go back.
    pub fn advance_to(&mut self, m: u64) {
        assert!(m >= self.applied, "the model cannot go back");
        while self.applied < m {
            self.applied += 1;
            for op in batch_ops(self.seed, self.applied) {
                match op {
                    BatchOp::Put(k, v) => {
                        self.map.insert(k, v);
                    }
                    BatchOp::Delete(k) => {
                        self.map.remove(&k);
                    }
                    other => unreachable!("the workload makes no {other:?}"),
                }
            }
        }
    }

    /// Keys whose recovered value differs from the model (missing, unexpected, or
    /// wrong).
    pub fn differences(&self, got: &BTreeMap<Vec<u8>, Vec<u8>>) -> usize {
        let missing_or_wrong = self
            .map
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(*v))
            .count();
        let extra = got.keys().filter(|k| !self.map.contains_key(*k)).count();
        missing_or_wrong + extra
    }
}

/// What a writer process reported in one line of its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// `KVFS-READY m …`: it opened the store, which held batches `1..=m`.
    Ready(u64),
    /// `KVFS-ACK b`: batch `b` is durable.
    Ack(u64),
    /// Anything else (such as the test harness's own lines).
    Other,
}

const READY: &str = "KVFS-READY ";
const ACK: &str = "KVFS-ACK ";

/// The event a line of a writer's output reports. The tag may follow other text on the
/// same line (a test harness prints its test's name before the test's output).
pub fn parse_event(line: &str) -> Event {
    let num_after = |tag: &str| -> Option<u64> {
        let rest = &line[line.find(tag)? + tag.len()..];
        rest.split_whitespace().next()?.parse().ok()
    };
    if let Some(b) = num_after(ACK) {
        Event::Ack(b)
    } else if let Some(m) = num_after(READY) {
        Event::Ready(m)
    } else {
        Event::Other
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
        // The parent is gone.
        std::process::exit(0);
    }
}

/// End the writer process with exit code 3 and `msg` on stderr.
pub fn die(msg: String) -> ! {
    eprintln!("crash writer: {msg}");
    std::process::exit(3);
}

/// Background work of a writer besides its batches and syncs.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriterLoops {
    /// Run `checkpoint()` in a loop.
    pub checkpoint: bool,
    /// Run compaction and GC, alternately, in a loop.
    pub gc: bool,
}

/// The writer process's work on the store it opened as `db`: report `KVFS-READY`,
/// then write batch after batch of the workload with `seed` from the one after the
/// marker on, while a second task syncs in a loop and reports `KVFS-ACK` after each
/// sync. Runs until the process is killed; any error ends the process ([`die`]).
pub async fn run_writer(db: Db, seed: u64, loops: WriterLoops) -> ! {
    let start = match db.get(MARKER).await {
        Ok(Some(v)) => parse_batch(&v).unwrap_or_else(|| die(format!("bad marker {v:?}"))),
        Ok(None) => 0,
        Err(e) => die(format!("read marker: {e}")),
    };
    say(&format!("{READY}{start} epoch {}", db.epoch()));

    let (written_tx, mut written_rx) = tokio::sync::watch::channel(start);
    let syncer = {
        let db = db.clone();
        tokio::spawn(async move {
            while written_rx.changed().await.is_ok() {
                let b = *written_rx.borrow_and_update();
                if let Err(e) = db.sync().await {
                    die(format!("sync: {e}"));
                }
                say(&format!("{ACK}{b}"));
            }
        })
    };
    if loops.checkpoint {
        let db = db.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = db.checkpoint().await {
                    die(format!("checkpoint: {e}"));
                }
            }
        });
    }
    if loops.gc {
        let db = db.clone();
        tokio::spawn(async move {
            for round in 0u64.. {
                let r = if round % 2 == 0 {
                    db.compact(&mut |_| {}).await
                } else {
                    db.gc(&mut |_| {}).await
                };
                if let Err(e) = r {
                    die(format!("gc round {round}: {e}"));
                }
            }
        });
    }
    let mut b = start;
    loop {
        b += 1;
        if let Err(e) = db.write_batch(&batch_ops(seed, b)).await {
            die(format!("write_batch {b}: {e}"));
        }
        if written_tx.send(b).is_err() || syncer.is_finished() {
            die("the sync task stopped".into());
        }
    }
}

/// Upper bound on how long [`WriterProcess::next_line`] waits for a line; a guard
/// against hangs, never reached in a passing run.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// A running writer process whose stdout is read line by line; killed and reaped on
/// drop.
#[derive(Debug)]
pub struct WriterProcess {
    pid: u32,
    child: Option<Child>,
    lines: mpsc::UnboundedReceiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
    stderr_path: PathBuf,
}

impl WriterProcess {
    /// Start `cmd` with its stdout piped to us and its stderr into `stderr_path`.
    pub fn spawn(mut cmd: Command, stderr_path: &Path) -> Result<WriterProcess, String> {
        let stderr = std::fs::File::create(stderr_path)
            .map_err(|e| format!("{}: {e}", stderr_path.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or("the writer process has no stdout")?;
        let (tx, lines) = mpsc::unbounded_channel();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(WriterProcess {
            pid: child.id(),
            child: Some(child),
            lines,
            reader: Some(reader),
            stderr_path: stderr_path.to_path_buf(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What the process wrote to its stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The next line of the process's stdout, `None` at its end; an error after
    /// [`LINE_TIMEOUT`] without a line.
    pub async fn next_line(&mut self) -> Result<Option<String>, String> {
        match tokio::time::timeout(LINE_TIMEOUT, self.lines.recv()).await {
            Ok(line) => Ok(line),
            Err(_) => Err(format!(
                "no output from the writer process for {LINE_TIMEOUT:?}; its stderr:\n{}",
                self.stderr()
            )),
        }
    }

    /// SIGKILL the process, reap it, and return its exit status and the lines of its
    /// output not read yet.
    pub async fn kill_and_reap(&mut self) -> Result<(ExitStatus, Vec<String>), String> {
        let mut child = self.child.take().ok_or("the writer was already reaped")?;
        let status = tokio::task::spawn_blocking(move || {
            // SIGKILL; fails only if the child was already reaped (it was not).
            let _ = child.kill();
            child.wait()
        })
        .await
        .map_err(|e| format!("reaper task: {e}"))?
        .map_err(|e| format!("wait for the writer: {e}"))?;
        let mut rest = Vec::new();
        while let Some(line) = self.next_line().await? {
            rest.push(line);
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        Ok((status, rest))
    }
}

impl Drop for WriterProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
