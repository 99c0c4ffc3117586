//! Benchmarks of the engine through its API, against an S3 server with injected
//! latency: the headline targets, the one-object-per-pair baseline, durable puts,
//! recovery, garbage collection, faults, followers, and the cost of encodings.

pub mod encoding;
pub mod faults;
pub mod follow;
pub mod gc;
pub mod kv;
pub mod recovery;
pub mod s3put;
pub mod targets;
