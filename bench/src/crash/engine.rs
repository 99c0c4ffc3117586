//! Engine mode of `kvfs-bench crash`: trials that SIGKILL a writer process
//! (`kvfs-bench crash-child`) at a random moment, then reopen the store as the next
//! writer here, time that open, and check the recovered state against the model.
//!
//! Every trial runs on the same store, so each open takes over the epoch of a killed
//! writer. The kill moment is drawn at random: shortly after the spawn (often while
//! the child is still opening the store), shortly after it reported ready (often
//! before any acknowledged sync), or after a number of acknowledgements.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvfs::db::Db;
use kvfs::store::s3::S3Store;
use kvfs::store::DynStore;
use kvfs_testkit::server::TestS3Server;
use rand::rngs::StdRng;
use rand::Rng;

use crate::crash::child::writer_options;
use crate::crash::{ModeResult, Trial};
use crate::support::mount::BenchResult;
use kvfs_testkit::crash_workload::{parse_batch, parse_event, Event, Model, WriterProcess, MARKER};

const BUCKET: &str = "crash";
const PREFIX: &str = "engine";

/// Start a writer process (`kvfs-bench crash-child ARGS`) against `server`.
fn spawn_child(
    args: &[String],
    server: &TestS3Server,
    stderr_path: &Path,
) -> BenchResult<WriterProcess> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("crash-child").args(args).envs(server.client_env());
    Ok(WriterProcess::spawn(cmd, stderr_path)?)
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
        let mut child = spawn_child(&args, server, &scratch.join(format!("child-{trial}")))?;
        let mut acked = 0u64;
        let mut acks = 0u64;
        let mut ready = false;
        let note =
            |line: &str, acked: &mut u64, acks: &mut u64, ready: &mut bool| match parse_event(line)
            {
                Event::Ack(b) => {
                    *acked = (*acked).max(b);
                    *acks += 1;
                }
                Event::Ready(_) => *ready = true,
                Event::Other => {}
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
        let (status, rest) = child.kill_and_reap().await?;
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
