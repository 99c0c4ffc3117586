//! Tests of the engine and the object stores, without FUSE: store conformance, the
//! engine's API, models against a `BTreeMap`, injected faults, writer fencing, garbage
//! collection, and crashes of a writer process.

#[path = "../common/mod.rs"]
mod common;

mod convergence;
mod crash;
mod damage;
mod encoding;
mod engine;
mod faults;
mod fencing;
mod follow;
mod full_store;
mod gc;
mod model;
mod no_panics;
mod snapshots;
mod store_conformance;
mod task_failure;
