//! Engine mode of `kvfs-bench crash`: trials that SIGKILL a writer process
//! (`kvfs-bench crash-child`) at a random moment, then reopen the store as the next
//! writer here, time that open, and check the recovered state against the model.
//!
//! Every trial runs on the same store, so each open takes over the epoch of a killed
//! writer. The kill moment is drawn at random: shortly after the spawn (often while
//! the child is still opening the store), shortly after it reported ready (often
//! before any acknowledged sync), or after a number of acknowledgements.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::ops::Bound;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvfs::db::Db;
use kvfs::store::s3::S3Store;
use kvfs::store::DynStore;
use kvfs_testkit::server::{TestS3Server, TEST_ACCESS_KEY, TEST_REGION, TEST_SECRET_KEY};
use rand::rngs::StdRng;
use rand::Rng;
use tokio::sync::mpsc;

use crate::crash::{ModeResult, Trial};
use crate::crash_child::writer_options;
use crate::mount::BenchResult;
use kvfs_testkit::crash_workload::{parse_batch, Model, MARKER};

/// The longest the parent waits for one line of the child's output.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);
const BUCKET: &str = "crash";
const PREFIX: &str = "engine";

/// A running writer process; killed and reaped on drop.
struct ChildProc {
    child: Option<Child>,
    lines: mpsc::UnboundedReceiver<String>,
    stderr_path: PathBuf,
}

impl ChildProc {
    fn spawn(args: &[String], server: &TestS3Server, stderr_path: &Path) -> BenchResult<Self> {
        let stderr = std::fs::File::create(stderr_path)
            .map_err(|e| format!("{}: {e}", stderr_path.display()))?;
        let exe = std::env::current_exe()?;
        let mut child = Command::new(&exe)
            .arg("crash-child")
            .args(args)
            .env("AWS_ENDPOINT_URL", server.endpoint())
            .env("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
            .env("AWS_REGION", TEST_REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent/kvfs-bench-config")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/kvfs-bench-credentials",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or("the writer process has no stdout")?;
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(ChildProc {
            child: Some(child),
            lines,
            stderr_path: stderr_path.to_path_buf(),
        })
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The next line of output, `None` at its end.
    async fn next_line(&mut self) -> BenchResult<Option<String>> {
        match tokio::time::timeout(LINE_TIMEOUT, self.lines.recv()).await {
            Ok(line) => Ok(line),
            Err(_) => Err(format!(
                "no output from the writer process for {LINE_TIMEOUT:?}; its stderr:\n{}",
                self.stderr()
            )
            .into()),
        }
    }

    /// SIGKILL, reap, and return the exit status and the lines not read yet.
    async fn kill(&mut self) -> BenchResult<(std::process::ExitStatus, Vec<String>)> {
        let mut child = self.child.take().ok_or("the writer was already reaped")?;
        let status = tokio::task::spawn_blocking(move || {
            let _ = child.kill();
            child.wait()
        })
        .await??;
        let mut rest = Vec::new();
        while let Some(line) = self.next_line().await? {
            rest.push(line);
        }
        Ok((status, rest))
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// When to kill.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    Spawned(Duration),
    Ready(Duration),
    Acked(u64, Duration),
}

impl KillAt {
    fn pick(rng: &mut StdRng) -> KillAt {
        let ms = |rng: &mut StdRng, max: u64| Duration::from_millis(rng.random_range(0..=max));
        match rng.random_range(0..20) {
            0..=2 => KillAt::Spawned(ms(rng, 150)),
            3..=7 => KillAt::Ready(ms(rng, 30)),
            _ => KillAt::Acked(rng.random_range(1..=25), ms(rng, 30)),
        }
    }

    fn label(&self) -> String {
        match self {
            KillAt::Spawned(d) => format!("{} ms after spawn", d.as_millis()),
            KillAt::Ready(d) => format!("{} ms after open", d.as_millis()),
            KillAt::Acked(n, d) => format!("{} ms after {n} acks", d.as_millis()),
        }
    }
}

fn ack_of(line: &str) -> Option<u64> {
    line.strip_prefix("ACK ")?.trim().parse().ok()
}

fn is_ready(line: &str) -> bool {
    line.starts_with("READY ")
}

/// Run `trials` kill-and-recover trials against a store on `server`.
pub async fn run(
    server: &TestS3Server,
    trials: usize,
    rng: &mut StdRng,
    scratch: &Path,
) -> BenchResult<ModeResult> {
    server.create_bucket(BUCKET)?;
    let client = server.client();
    let open_store =
        || -> DynStore { Arc::new(S3Store::from_client(client.clone(), BUCKET, PREFIX)) };
    let seed: u64 = rng.random();
    let mut model = Model::new(seed);
    let mut result = ModeResult::new("engine", "S3 (in-process server; 1-9 ms per PUT)");
    let mut verified = 0u64;
    for trial in 0..trials {
        let kill = match trial {
            0 => KillAt::Spawned(Duration::from_millis(rng.random_range(0..=80))),
            _ => KillAt::pick(rng),
        };
        let checkpoint_bytes: u64 = if rng.random_bool(0.3) { 1 } else { 256 << 10 };
        let args: Vec<String> = vec![
            "--url".into(),
            format!("s3://{BUCKET}/{PREFIX}"),
            "--seed".into(),
            seed.to_string(),
            "--segment-bytes".into(),
            rng.random_range(4096..=32768usize).to_string(),
            "--flush-interval-ms".into(),
            "20".into(),
            "--max-inflight-uploads".into(),
            rng.random_range(2..=8usize).to_string(),
            "--checkpoint-bytes".into(),
            checkpoint_bytes.to_string(),
        ];
        let mut child = ChildProc::spawn(&args, server, &scratch.join(format!("child-{trial}")))?;
        let mut acked = 0u64;
        let mut acks = 0u64;
        let mut ready = false;
        let note = |line: &str, acked: &mut u64, acks: &mut u64, ready: &mut bool| {
            if let Some(b) = ack_of(line) {
                *acked = (*acked).max(b);
                *acks += 1;
            } else if is_ready(line) {
                *ready = true;
            }
        };
        match kill {
            KillAt::Spawned(d) => tokio::time::sleep(d).await,
            KillAt::Ready(d) | KillAt::Acked(_, d) => {
                let need = if let KillAt::Acked(n, _) = kill { n } else { 0 };
                while !ready || acks < need {
                    match child.next_line().await? {
                        Some(line) => note(&line, &mut acked, &mut acks, &mut ready),
                        None => break,
                    }
                }
                tokio::time::sleep(d).await;
            }
        }
        let (status, rest) = child.kill().await?;
        for line in &rest {
            note(line, &mut acked, &mut acks, &mut ready);
        }
        if status.signal() != Some(libc::SIGKILL) {
            return Err(format!(
                "trial {trial}: the writer exited by itself ({status}); its stderr:\n{}",
                child.stderr()
            )
            .into());
        }

        // Recovery: the next writer opens the store, taking over the killed one.
        let t = Instant::now();
        let db = Db::open_store(open_store(), writer_options())
            .await
            .map_err(|e| format!("trial {trial}: reopen after the kill: {e}"))?;
        let recovery_ms = t.elapsed().as_secs_f64() * 1e3;
        let m = match db.get(MARKER).await? {
            Some(v) => parse_batch(&v).ok_or_else(|| format!("bad marker value {v:?}"))?,
            None => 0,
        };
        let must = acked.max(verified);
        let lost = must.saturating_sub(m);
        if m < model.applied {
            model = Model::new(seed);
        }
        model.advance_to(m);
        let rows = db
            .scan(Bound::Unbounded, Bound::Unbounded, usize::MAX, false)
            .await?;
        let mut got = BTreeMap::new();
        for (k, v) in rows {
            got.insert(k, v.ok_or("scan returned no value")?.to_vec());
        }
        let differences = model.differences(&got);
        if differences > 0 {
            // Carry on from what was recovered, so later trials are checked on their own.
            model.map = got;
        }
        if trial + 1 == trials {
            let report = db.fsck(&mut |_| {}).await?;
            if !report.is_clean() {
                result
                    .notes
                    .push(format!("fsck after the last trial: {:?}", report.issues));
                result.not_prefix += 1;
            }
        }
        db.close().await?;
        drop(db);
        let new_acked = acked.saturating_sub(verified);
        eprintln!(
            "  engine trial {trial:>3}: killed {:<22} {acks:>3} acks (last batch {acked}), recovered batch {m} in {recovery_ms:.1} ms{}",
            kill.label(),
            if lost + differences as u64 > 0 { "  LOSS" } else { "" }
        );
        result.push(Trial {
            kill: kill.label(),
            acked_writes: new_acked,
            recovered: m,
            lost,
            differences: differences as u64,
            recovery_ms,
        });
        verified = verified.max(m);
    }
    Ok(result)
}
