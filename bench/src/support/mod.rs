//! What the benchmarks share: the S3 server they run against, mounting and
//! unmounting, JuiceFS as a comparison, allocation counting, tables and charts.

pub mod alloc;
pub mod juicefs;
pub mod mount;
pub mod plot;
pub mod report;
pub mod server;
