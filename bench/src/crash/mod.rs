//! `kvfs-bench crash`: repeated SIGKILL trials, then recovery checked against a model.
//!
//! - `engine`: a writer process (`kvfs-bench crash-child`) writes atomic batches to
//!   an S3 store on the in-process server and prints each batch a returned `sync`
//!   covers; it is killed at a random moment, the store is reopened here as the next
//!   writer (timed), and its contents must be exactly the model's state after some
//!   batch at or after the last acknowledged one (module `engine`; the writer is `child`).
//! - `mount`: the `kvfs mount --foreground` daemon is killed while a writer creates
//!   and fsyncs files through it; the store is remounted (timed) and every fsync'd
//!   file must be there, with nothing out of order (module `mount`).
//!
//! Per mode: trials, acknowledged writes checked (batches or fsync'd files), writes
//! lost, trials whose state was not a prefix of the history, and recovery time p50 and
//! max. Any loss makes the command fail (after printing and writing everything).

pub mod child;
mod engine;
mod mount;

use std::path::PathBuf;

use clap::Args;
use kvfs_testkit::server::{FaultConfig, ServerOptions, TestS3Server};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::mount::BenchResult;
use crate::support::plot;
use crate::support::report::{quantile, Table};

#[derive(Args, Debug)]
pub struct CrashArgs {
    /// Trials that kill the engine's writer process.
    #[arg(long, default_value_t = 40)]
    engine_trials: usize,
    /// Trials that kill the mount daemon (0: skip the mount mode).
    #[arg(long, default_value_t = 12)]
    mount_trials: usize,
    /// The mount daemon is killed up to this long after the first fsync returned.
    #[arg(long, default_value_t = 1500)]
    max_kill_delay_ms: u64,
    /// Seed of the random choices (default: random; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Half a minute: 10 engine trials and 4 mount trials.
    #[arg(long)]
    quick: bool,
    /// Write crash.csv, crash_trials.csv and crash.png here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One trial: how it was killed and what recovery found.
pub struct Trial {
    pub kill: String,
    /// Writes acknowledged in this trial (batches, or fsync'd files).
    pub acked_writes: u64,
    /// The batch (engine) or the number of acknowledged files (mount) recovered.
    pub recovered: u64,
    pub lost: u64,
    /// Keys or files whose recovered content is not the model's.
    pub differences: u64,
    pub recovery_ms: f64,
}

/// The trials of one mode.
pub struct ModeResult {
    pub mode: &'static str,
    pub store: &'static str,
    pub trials: Vec<Trial>,
    /// Trials whose recovered state was not a prefix of the history.
    pub not_prefix: u64,
    pub notes: Vec<String>,
}

impl ModeResult {
    pub fn new(mode: &'static str, store: &'static str) -> Self {
        ModeResult {
            mode,
            store,
            trials: Vec::new(),
            not_prefix: 0,
            notes: Vec::new(),
        }
    }

    pub fn push(&mut self, t: Trial) {
        if t.differences > 0 {
            self.not_prefix += 1;
        }
        self.trials.push(t);
    }

    fn lost(&self) -> u64 {
        self.trials.iter().map(|t| t.lost).sum()
    }

    fn recovery_ms(&self) -> Vec<f64> {
        self.trials.iter().map(|t| t.recovery_ms).collect()
    }
}

pub async fn run(mut a: CrashArgs) -> BenchResult<()> {
    if a.quick {
        a.engine_trials = a.engine_trials.min(10);
        a.mount_trials = a.mount_trials.min(4);
        a.max_kill_delay_ms = a.max_kill_delay_ms.min(800);
    }
    let seed = a.seed.unwrap_or_else(rand::random);
    eprintln!("crash: seed {seed} (--seed {seed} repeats the kill moments)");
    let mut rng = StdRng::seed_from_u64(seed);
    let scratch = std::env::temp_dir().join(format!(
        "kvfs-bench-crash-{}-{}",
        std::process::id(),
        rng.random::<u32>()
    ));
    std::fs::create_dir_all(scratch.join("s3"))?;
    // Jittered PUT latency: uploads complete out of order, so the durable point often
    // trails completed segments when the kill lands.
    let server = TestS3Server::start(
        &scratch.join("s3"),
        ServerOptions {
            faults: FaultConfig {
                put_latency: std::time::Duration::from_millis(1),
                jitter: std::time::Duration::from_millis(8),
                ..FaultConfig::default()
            },
            ..ServerOptions::default()
        },
    )
    .await?;
    let mut modes = Vec::new();
    let mut failure = None;
    if a.engine_trials > 0 {
        eprintln!("== engine: {} trials", a.engine_trials);
        match engine::run(&server, a.engine_trials, &mut rng, &scratch).await {
            Ok(m) => modes.push(m),
            Err(e) => failure = Some(format!("engine mode: {e}")),
        }
    }
    if a.mount_trials > 0 && failure.is_none() {
        eprintln!("== mount: {} trials", a.mount_trials);
        let r = tokio::task::block_in_place(|| {
            mount::run(
                &server,
                a.mount_trials,
                a.max_kill_delay_ms,
                &mut rng,
                &scratch,
            )
        });
        match r {
            Ok(m) => modes.push(m),
            Err(e) => failure = Some(format!("mount mode: {e}")),
        }
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&scratch);

    let mut table = Table::new(
        "SIGKILL during writes, then recovery (every acknowledged write must survive)",
        &[
            "mode",
            "store",
            "trials",
            "acked_writes_checked",
            "writes_lost",
            "not_prefix_trials",
            "recovery_p50_ms",
            "recovery_max_ms",
        ],
    );
    let mut trials = Table::new(
        "trials",
        &[
            "mode",
            "trial",
            "kill",
            "acked_writes",
            "recovered",
            "lost",
            "differences",
            "recovery_ms",
        ],
    );
    let mut bad = 0;
    for m in &modes {
        let rec = m.recovery_ms();
        let acked: u64 = m.trials.iter().map(|t| t.acked_writes).sum();
        bad += m.lost() + m.not_prefix;
        table.row(vec![
            m.mode.into(),
            m.store.into(),
            m.trials.len().to_string(),
            acked.to_string(),
            m.lost().to_string(),
            m.not_prefix.to_string(),
            format!("{:.1}", quantile(&rec, 0.5)),
            format!("{:.1}", quantile(&rec, 1.0)),
        ]);
        for (i, t) in m.trials.iter().enumerate() {
            trials.row(vec![
                m.mode.into(),
                i.to_string(),
                t.kill.clone(),
                t.acked_writes.to_string(),
                t.recovered.to_string(),
                t.lost.to_string(),
                t.differences.to_string(),
                format!("{:.2}", t.recovery_ms),
            ]);
        }
    }
    print!("{}", table.render());
    for m in &modes {
        for n in &m.notes {
            println!("note: {}: {n}", m.mode);
        }
    }
    if let Some(out) = &a.out {
        table.write_csv(out, "crash")?;
        trials.write_csv(out, "crash_trials")?;
        let series: Vec<plot::Series> = modes
            .iter()
            .map(|m| plot::Series {
                name: format!("{} ({})", m.mode, m.store),
                points: m
                    .trials
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (i as f64, t.recovery_ms))
                    .collect(),
            })
            .collect();
        plot::lines(
            &out.join("crash.png"),
            &plot::Chart {
                title: "Recovery after SIGKILL: time to reopen / remount",
                x_label: "trial",
                y_label: "recovery time (ms)",
                log_x: false,
                log_y: false,
            },
            &series,
        );
        eprintln!(
            "wrote {} and crash_trials.csv",
            out.join("crash.csv").display()
        );
    }
    if let Some(f) = failure {
        return Err(f.into());
    }
    if bad > 0 {
        return Err(format!(
            "{bad} acknowledged writes lost or trials recovered out of order (seed {seed})"
        )
        .into());
    }
    Ok(())
}
