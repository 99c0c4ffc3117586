//! What the kvfs tests and benchmarks share; not part of the product.
//!
//! - [`server`]: an in-process S3 server (s3s + s3s-fs over HTTP on 127.0.0.1) with
//!   request counting and fault injection.
//! - [`faults`]: the one fault configuration ([`faults::FaultConfig`]), its seeded
//!   control, and [`faults::FaultyStore`], an object-store layer that injects the same
//!   faults in process.
//! - [`mount`]: a `kvfs mount --foreground` child that is always unmounted, plus
//!   helpers for other FUSE file systems.
//! - [`crash_workload`]: the deterministic batch workload that crash tests and the
//!   crash benchmark write, and its model.
//! - [`recording`]: an object-store layer that records every request.
//! - [`gate`]: an object-store layer that holds data GETs or PUTs until released.
//! - [`extract`]: a deterministic source-like tree, and a tally of a local store's
//!   segments by kind of record (write amplification of `tar -x`).
//! - [`fixtures`]: small helpers of the engine tests: an S3 server with one bucket,
//!   options that make many small objects, a deterministic random generator.
//!
//! It enables kvfs's `test-hooks` feature (for `Db::abandon`).

pub mod crash_workload;
pub mod extract;
pub mod faults;
pub mod fixtures;
pub mod gate;
pub mod mount;
pub mod recording;
pub mod server;
