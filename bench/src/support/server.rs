//! `kvfs-bench s3-server`: a local S3 endpoint for experiments, with S3-like latency
//! and faults injected at the server so that every client pays them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use kvfs_testkit::server::{
    FaultConfig, ServerOptions, TestS3Server, TEST_ACCESS_KEY, TEST_SECRET_KEY,
};

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:9000")]
    addr: SocketAddr,
    /// Directory that holds the buckets.
    #[arg(long)]
    dir: PathBuf,
    /// Buckets to create at start.
    #[arg(long, default_value = "kvfs")]
    bucket: Vec<String>,
    /// Latency added to every PUT and DELETE.
    #[arg(long, default_value_t = 0)]
    put_latency_ms: u64,
    /// Latency added to every GET, HEAD and LIST.
    #[arg(long, default_value_t = 0)]
    get_latency_ms: u64,
    /// Extra uniform random latency, up to this much.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// S3 Standard in one region: 25 ms per PUT, 15 ms per GET, 5 ms jitter.
    #[arg(long)]
    s3_standard: bool,
    /// Fraction of requests answered with 503 SlowDown or 500.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Print request counters every this many seconds (0: only at exit).
    #[arg(long, default_value_t = 10)]
    report_secs: u64,
}

pub async fn run(a: ServerArgs) -> Result<(), Box<dyn std::error::Error>> {
    if !a.addr.ip().is_loopback() {
        return Err(format!(
            "{}: the test server listens on loopback addresses only",
            a.addr
        )
        .into());
    }
    std::fs::create_dir_all(&a.dir)?;
    let (put, get, jitter) = if a.s3_standard {
        (25, 15, 5)
    } else {
        (a.put_latency_ms, a.get_latency_ms, a.jitter_ms)
    };
    let server = TestS3Server::start(
        &a.dir,
        ServerOptions {
            addr: Some(a.addr),
            faults: FaultConfig {
                put_latency: Duration::from_millis(put),
                get_latency: Duration::from_millis(get),
                jitter: Duration::from_millis(jitter),
                error_rate: a.error_rate,
                ..FaultConfig::default()
            },
            seed: None,
        },
    )
    .await?;
    for b in &a.bucket {
        server.create_bucket(b)?;
    }
    println!("endpoint {}", server.endpoint());
    println!(
        "export AWS_ENDPOINT_URL={} AWS_ACCESS_KEY_ID={TEST_ACCESS_KEY} AWS_SECRET_ACCESS_KEY={TEST_SECRET_KEY} AWS_REGION=us-east-1",
        server.endpoint()
    );
    println!("latency: {put} ms per PUT, {get} ms per GET/HEAD/LIST, jitter up to {jitter} ms; error rate {}", a.error_rate);
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let period = Duration::from_secs(a.report_secs.max(1));
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = term.recv() => break,
            _ = tokio::time::sleep(period), if a.report_secs > 0 => {
                println!("requests {:?}", server.request_counts());
            }
        }
    }
    println!("requests {:?}", server.request_counts());
    server.shutdown().await;
    Ok(())
}

/// The latency a benchmark's in-process S3 server adds, by default that of S3
/// Standard in one region (`--put-latency-ms`, `--get-latency-ms`).
#[derive(Args, Clone, Copy, Debug)]
pub struct SimulatedLatency {
    /// Latency the S3 server adds to every PUT (and DELETE).
    #[arg(long, default_value_t = 25)]
    pub put_latency_ms: u64,
    /// Latency the S3 server adds to every GET, HEAD and LIST.
    #[arg(long, default_value_t = 15)]
    pub get_latency_ms: u64,
}
