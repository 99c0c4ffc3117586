//! `kvfs-bench`: benchmarks of kvfs. Every command prints a table and, with
//! `--out DIR`, writes its figures there as CSV, and most also as PNG charts.

mod crash;
mod engine;
mod filesystem;
mod support;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOC: support::alloc::Counting = support::alloc::Counting;

#[derive(Parser, Debug)]
#[command(name = "kvfs-bench", version, about = "Benchmarks of kvfs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Engine targets: non-durable put throughput, PUTs per pair, sync latency
    /// against one segment PUT, recovery time and index memory per key.
    Engine(engine::targets::EngineArgs),
    /// Small-file workloads through mounted kvfs, bindfs over tmpfs, s3fs and rclone, against
    /// one S3 endpoint with injected latency: files/s, latency, requests and cost per
    /// file, `ls -l` time, daemon memory.
    Fs(filesystem::small_files::FsArgs),
    /// A local S3 endpoint (s3s + s3s-fs) with injected latency and faults, and
    /// request counters printed while it runs and at exit.
    S3Server(support::server::ServerArgs),
    /// The baseline: every pair (32 B - 1 KiB) as one S3 object, PUT then GET, at
    /// several concurrencies: latency, pairs/s, requests and cost per pair.
    S3Put(engine::s3put::S3PutArgs),
    /// The same pairs through the kvfs engine, durable (put + sync) and not, against
    /// the one-object-per-pair baseline measured in the same run.
    Kv(engine::kv::KvArgs),
    /// Open time against the number of keys (10^3 to 10^7) and against the log
    /// written since the last checkpoint; index memory per key.
    Recovery(engine::recovery::RecoveryArgs),
    /// Garbage collection and compaction: space amplification over time under
    /// overwrites, and GETs of a cold directory scan before and after compaction.
    Gc(engine::gc::GcArgs),
    /// SIGKILL of a writer process and of the mount daemon during writes, then
    /// recovery checked against a model: acknowledged writes lost (must be 0),
    /// recovery time.
    Crash(crash::CrashArgs),
    /// Durable writes through the engine under injected S3 faults (errors, stalls,
    /// outages): throughput, retries, bounded memory, clean failure, nothing lost.
    Faults(engine::faults::FaultsArgs),
    /// Read-only mounts following a writer mount: lag from fsync to visibility
    /// (p50/p99) and the requests of an idle follower, per follow interval.
    Follow(engine::follow::FollowArgs),
    /// The throughput cost of compression and encryption: plain, zstd, encrypted and
    /// both, through the engine and through a mount, on local directory stores: MB/s
    /// written and read back, and stored bytes.
    Encoding(engine::encoding::EncodingArgs),
    /// Write amplification of `tar -x` of a source-like tree into a mount: segment
    /// bytes uploaded before GC against the files' bytes, by kind of record.
    Extract(filesystem::extract::ExtractArgs),
    /// What users do first, on a real source tree from the cargo registry: tar -x,
    /// grep -r, read everything after a remount with the disk cache kept and
    /// emptied, git clone, rm -rf; seconds and S3 requests per step beside a local
    /// directory, bindfs over tmpfs and, when installed, JuiceFS.
    Workload(filesystem::workload::WorkloadArgs),
    /// fio's small-file jobs (mountpoint-s3's `create_files` and 4 KiB files written,
    /// then read back after a remount with caches kept and emptied): files/s and
    /// S3 requests through kvfs, bindfs over tmpfs and, when installed, JuiceFS.
    Fio(filesystem::fio::FioArgs),
    /// The writer process the crash benchmark kills.
    #[command(hide = true)]
    CrashChild(crash::child::ChildArgs),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvfs-bench: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = match cli.command {
        Command::Engine(args) => rt.block_on(engine::targets::run(args)),
        Command::Fs(args) => rt.block_on(filesystem::small_files::run(args)),
        Command::S3Server(args) => rt.block_on(support::server::run(args)),
        Command::S3Put(args) => rt.block_on(engine::s3put::run(args)),
        Command::Kv(args) => rt.block_on(engine::kv::run(args)),
        Command::Recovery(args) => rt.block_on(engine::recovery::run(args)),
        Command::Gc(args) => rt.block_on(engine::gc::run(args)),
        Command::Crash(args) => rt.block_on(crash::run(args)),
        Command::Faults(args) => rt.block_on(engine::faults::run(args)),
        Command::Follow(args) => rt.block_on(engine::follow::run(args)),
        Command::Encoding(args) => rt.block_on(engine::encoding::run(args)),
        Command::Extract(args) => rt.block_on(filesystem::extract::run(args)),
        Command::Workload(args) => rt.block_on(filesystem::workload::run(args)),
        Command::Fio(args) => rt.block_on(filesystem::fio::run(args)),
        Command::CrashChild(args) => rt.block_on(crash::child::run(args)),
    };
    if let Err(e) = result {
        eprintln!("kvfs-bench: {e}");
        std::process::exit(1);
    }
}
