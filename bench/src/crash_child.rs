//! `kvfs-bench crash-child` (hidden): the writer process that `kvfs-bench crash`
//! kills. It opens the store as the writer, prints `READY m` (the batch it recovered),
//! then writes batches of [`kvfs_testkit::crash_workload`] in a loop while a second task
//! syncs in a loop and, after each sync that returned, prints `ACK b`: batch `b` was
//! written before that sync began, so it is durable. It runs until it is killed.

use std::io::Write;
use std::time::Duration;

use clap::Args;

use kvfs::db::{Db, Options};

use kvfs_testkit::crash_workload::{batch_ops, parse_batch, MARKER};

#[derive(Args, Debug)]
pub struct ChildArgs {
    /// Store URL (S3 settings come from the environment).
    #[arg(long)]
    pub url: String,
    #[arg(long)]
    pub seed: u64,
    #[arg(long)]
    pub segment_bytes: usize,
    #[arg(long)]
    pub flush_interval_ms: u64,
    #[arg(long)]
    pub max_inflight_uploads: usize,
    #[arg(long)]
    pub checkpoint_bytes: u64,
    /// Exit on its own after this long (if the parent is gone).
    #[arg(long, default_value_t = 120)]
    pub max_lifetime_secs: u64,
}

/// Options of every writer of the crash benchmark. The lease lasts far longer than a
/// run: a writer that waited out a killed writer's lease instead of taking over at once
/// would show up as a hang, not as slow recovery.
pub fn writer_options() -> Options {
    Options {
        lease_ttl: Duration::from_secs(3600),
        ..Options::default()
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
        // The parent is gone.
        std::process::exit(0);
    }
}

fn die(msg: String) -> ! {
    eprintln!("crash-child: {msg}");
    std::process::exit(3);
}

pub async fn run(a: ChildArgs) -> Result<(), Box<dyn std::error::Error>> {
    let lifetime = Duration::from_secs(a.max_lifetime_secs);
    tokio::spawn(async move {
        tokio::time::sleep(lifetime).await;
        die("still running after its maximum lifetime".into());
    });
    let opts = Options {
        segment_bytes: a.segment_bytes,
        flush_interval: Duration::from_millis(a.flush_interval_ms),
        max_inflight_uploads: a.max_inflight_uploads,
        max_unflushed_bytes: 256 << 10,
        checkpoint_bytes: a.checkpoint_bytes,
        ..writer_options()
    };
    let db = Db::open(&a.url, opts)
        .await
        .map_err(|e| format!("open {}: {e}", a.url))?;
    let start = match db.get(MARKER).await? {
        Some(v) => parse_batch(&v).ok_or_else(|| format!("bad marker value {v:?}"))?,
        None => 0,
    };
    say(&format!("READY {start}"));
    let (written_tx, mut written_rx) = tokio::sync::watch::channel(start);
    let syncer = {
        let db = db.clone();
        tokio::spawn(async move {
            while written_rx.changed().await.is_ok() {
                let b = *written_rx.borrow_and_update();
                if let Err(e) = db.sync().await {
                    die(format!("sync: {e}"));
                }
                say(&format!("ACK {b}"));
            }
        })
    };
    let mut b = start;
    loop {
        b += 1;
        if let Err(e) = db.write_batch(&batch_ops(a.seed, b)).await {
            die(format!("write_batch {b}: {e}"));
        }
        if written_tx.send(b).is_err() || syncer.is_finished() {
            die("the sync task stopped".into());
        }
    }
}
