//! `kvfs-bench crash-child` (hidden): the writer process that `kvfs-bench crash`
//! kills. It opens the store as the writer and runs the test kit's writer
//! ([`kvfs_testkit::crash_workload::run_writer`]): `KVFS-READY m` (the batch it
//! recovered), then batches of the workload while a second task syncs in a loop and,
//! after each sync that returned, prints `KVFS-ACK b`. It runs until it is killed.

use std::time::Duration;

use clap::Args;

use kvfs::db::{Db, Options};

use kvfs_testkit::crash_workload::{die, run_writer, WriterLoops};

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
    run_writer(db, a.seed, WriterLoops::default()).await
}
