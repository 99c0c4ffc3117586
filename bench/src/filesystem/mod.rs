//! Benchmarks through a mounted kvfs, beside a local directory, bindfs over tmpfs
//! and other S3 file systems: small files, the namespace under load, write
//! amplification of `tar -x`, what users do first, and fio's small-file jobs.

pub mod extract;
pub mod fio;
pub mod load;
pub mod small_files;
pub mod workload;
