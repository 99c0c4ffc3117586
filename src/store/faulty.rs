//! Fault-injection layer for tests and experiments.
//!
//! Adds latency (fixed plus uniform jitter), random failures (`error_rate`, half 503
//! SlowDown and half 500), stalls (a request that hangs for `stall` before failing as a
//! timeout), ambiguous writes (the write is applied, then the answer is lost), and a
//! total outage switch. The configuration can be changed while requests run, and the
//! random generator is seeded so a run can be repeated.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{DynStore, GetResult, ObjectMeta, ObjectStore, PutMode, StoreError, StoreResult};

/// What to inject. All rates are probabilities in `[0, 1]` per request.
#[derive(Clone, Debug, Default)]
pub struct FaultConfig {
    /// Added to every PUT and DELETE.
    pub put_latency: Duration,
    /// Added to every GET and LIST.
    pub get_latency: Duration,
    /// Extra uniform random delay in `[0, jitter]`.
    pub jitter: Duration,
    /// Probability that a request fails before reaching the backend.
    pub error_rate: f64,
    /// Probability that a request hangs for `stall` and then fails as a timeout.
    pub stall_rate: f64,
    pub stall: Duration,
    /// Probability that a PUT is applied but its answer is lost (reported as a timeout).
    pub ambiguous_put_rate: f64,
    /// Every request fails (an outage) while set.
    pub outage: bool,
}

/// Shared, adjustable fault configuration.
#[derive(Clone, Debug, Default)]
pub struct FaultHandle(Arc<Mutex<FaultConfig>>);

impl FaultHandle {
    pub fn set(&self, cfg: FaultConfig) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = cfg;
    }
    pub fn update(&self, f: impl FnOnce(&mut FaultConfig)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }
    pub fn get(&self) -> FaultConfig {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Wraps a store and injects faults described by a [`FaultHandle`].
#[derive(Debug)]
pub struct FaultyStore {
    inner: DynStore,
    faults: FaultHandle,
    rng: Mutex<StdRng>,
}

enum Before {
    Proceed { ambiguous: bool },
    Fail(StoreError),
}

impl FaultyStore {
    pub fn new(inner: DynStore, faults: FaultHandle, seed: u64) -> Self {
        FaultyStore {
            inner,
            faults,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }

    async fn before(&self, is_write: bool, what: &str) -> Before {
        let cfg = self.faults.get();
        let (delay, fail, stall, ambiguous) = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            let base = if is_write {
                cfg.put_latency
            } else {
                cfg.get_latency
            };
            let jitter = if cfg.jitter.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_nanos(rng.random_range(0..=cfg.jitter.as_nanos() as u64))
            };
            let fail = if rng.random_bool(cfg.error_rate.clamp(0.0, 1.0)) {
                Some(rng.random_bool(0.5))
            } else {
                None
            };
            let stall = rng.random_bool(cfg.stall_rate.clamp(0.0, 1.0));
            let ambiguous = is_write && rng.random_bool(cfg.ambiguous_put_rate.clamp(0.0, 1.0));
            (base + jitter, fail, stall, ambiguous)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if cfg.outage {
            return Before::Fail(StoreError::Transient(format!(
                "{what}: connection refused (injected outage)"
            )));
        }
        if stall {
            tokio::time::sleep(cfg.stall).await;
            return Before::Fail(StoreError::Transient(format!(
                "{what}: timed out (injected stall)"
            )));
        }
        match fail {
            Some(true) => Before::Fail(StoreError::Throttled(format!(
                "{what}: 503 SlowDown (injected)"
            ))),
            Some(false) => Before::Fail(StoreError::Transient(format!(
                "{what}: 500 InternalError (injected)"
            ))),
            None => Before::Proceed { ambiguous },
        }
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> StoreResult<String> {
        match self.before(true, &format!("PUT {key}")).await {
            Before::Fail(e) => Err(e),
            Before::Proceed { ambiguous } => {
                let r = self.inner.put(key, data, mode).await;
                if ambiguous && r.is_ok() {
                    return Err(StoreError::Transient(format!(
                        "PUT {key}: response lost (injected)"
                    )));
                }
                r
            }
        }
    }

    async fn get(&self, key: &str) -> StoreResult<GetResult> {
        match self.before(false, &format!("GET {key}")).await {
            Before::Fail(e) => Err(e),
            Before::Proceed { .. } => self.inner.get(key).await,
        }
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        match self.before(false, &format!("GET {key}")).await {
            Before::Fail(e) => Err(e),
            Before::Proceed { .. } => self.inner.get_range(key, range).await,
        }
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        match self.before(false, &format!("LIST {prefix}")).await {
            Before::Fail(e) => Err(e),
            Before::Proceed { .. } => self.inner.list(prefix).await,
        }
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        match self.before(true, &format!("DELETE {key}")).await {
            Before::Fail(e) => Err(e),
            Before::Proceed { .. } => self.inner.delete(key).await,
        }
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}
