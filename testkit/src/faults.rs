//! Fault injection, shared by the test S3 server ([`crate::server`]) and the
//! object-store layer [`FaultyStore`].
//!
//! One [`FaultConfig`] describes what to inject: latency (fixed plus uniform jitter),
//! random failures (`error_rate`, half `503 SlowDown` and half `500 InternalError`),
//! stalls (with probability `stall_rate` a request hangs for `stall`), ambiguous writes
//! (the PUT is applied, then its answer is lost) and a total outage. A
//! [`FaultControl`] holds the configuration and a seeded random source; it can be
//! changed while requests run, and [`FaultControl::decide`] is the one function that
//! turns both into what happens to a request, so a run with a given seed repeats.
//!
//! Where the two users differ, they differ only in how a decision is carried out: a
//! stalled request fails as a timeout in [`FaultyStore`] (the client gave up), while the
//! server handles it after the stall (a slow server, for exercising client timeouts).

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kvfs::store::{DynStore, GetResult, ObjectMeta, ObjectStore, PutMode, StoreError, StoreResult};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What to inject. All rates are probabilities in `[0, 1]` per request; the default
/// injects nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultConfig {
    /// Added to every PUT and DELETE.
    pub put_latency: Duration,
    /// Added to every GET, HEAD and LIST.
    pub get_latency: Duration,
    /// Each PUT, DELETE, GET, HEAD and LIST waits an extra uniform random time in
    /// `[0, jitter]`.
    pub jitter: Duration,
    /// Probability that a request fails before touching storage, with `503 SlowDown`
    /// or `500 InternalError` (chosen at random).
    pub error_rate: f64,
    /// How long a stalled request hangs.
    pub stall: Duration,
    /// Probability that a request stalls for [`FaultConfig::stall`]. The store layer
    /// then fails it as a timeout; the server handles it afterwards.
    pub stall_rate: f64,
    /// Probability that a PUT is applied but its answer is lost (the client sees an
    /// error although the object was written).
    pub ambiguous_put_rate: f64,
    /// An outage: every request fails while set.
    pub outage: bool,
    /// A bucket quota (test server only): a PUT that would make the bucket hold more
    /// bytes than this is refused with `QuotaExceeded`, as an S3-compatible service
    /// with a hard quota refuses it. Deletes always go through.
    pub quota_bytes: Option<u64>,
    /// The store layer says it is short of space (as a local disk below its
    /// reserve does), so the engine refuses writes that add data.
    pub short_of_space: bool,
}

/// The kind of request, for the latency that applies to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpClass {
    /// PUT, DELETE and their relatives: [`FaultConfig::put_latency`].
    Write,
    /// GET, HEAD, LIST: [`FaultConfig::get_latency`].
    Read,
    /// Bucket operations: no latency, no jitter.
    Other,
}

/// An injected failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `503 SlowDown`.
    Throttled,
    /// `500 InternalError`.
    ServerError,
    /// The outage switch is on.
    Outage,
}

/// What happens to one request, as decided by [`FaultControl::decide`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// Latency (and jitter) to add before anything else.
    pub delay: Duration,
    /// The request stalls this long (after `delay`).
    pub stall: Option<Duration>,
    /// The request fails with this instead of reaching storage.
    pub fault: Option<Fault>,
    /// A write is applied, then its answer is lost.
    pub ambiguous: bool,
}

#[derive(Debug)]
struct Inner {
    config: Mutex<FaultConfig>,
    rng: Mutex<StdRng>,
}

/// A runtime-adjustable [`FaultConfig`] with its seeded random source. Clones share
/// both (hand one to a server or store and keep one to change the faults).
#[derive(Clone, Debug)]
pub struct FaultControl(Arc<Inner>);

impl Default for FaultControl {
    /// No faults, random source seeded with 0.
    fn default() -> Self {
        FaultControl::seeded(FaultConfig::default(), 0)
    }
}

impl FaultControl {
    /// `config` in force from the start; the random source is seeded with `seed`, or
    /// from the OS when `None`.
    pub fn new(config: FaultConfig, seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        FaultControl(Arc::new(Inner {
            config: Mutex::new(config),
            rng: Mutex::new(rng),
        }))
    }

    /// `config` with a random source seeded with `seed`.
    pub fn seeded(config: FaultConfig, seed: u64) -> Self {
        FaultControl::new(config, Some(seed))
    }

    /// The current configuration.
    pub fn get(&self) -> FaultConfig {
        self.0
            .config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replace the configuration; applies to requests that arrive afterwards.
    pub fn set(&self, config: FaultConfig) {
        *self.0.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// Change the configuration in place.
    pub fn update(&self, f: impl FnOnce(&mut FaultConfig)) {
        f(&mut self.0.config.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Remove every fault.
    pub fn clear(&self) {
        self.set(FaultConfig::default());
    }

    /// Reseed the random source (for reproducible experiments).
    pub fn reseed(&self, seed: u64) {
        *self.0.rng.lock().unwrap_or_else(|e| e.into_inner()) = StdRng::seed_from_u64(seed);
    }

    /// Decide what happens to one request of class `class` under the current
    /// configuration.
    pub fn decide(&self, class: OpClass) -> Decision {
        let cfg = self.get();
        let mut rng = self.0.rng.lock().unwrap_or_else(|e| e.into_inner());
        let mut chance = |p: f64| p > 0.0 && rng.random_bool(p.clamp(0.0, 1.0));
        let mut delay = match class {
            OpClass::Write => cfg.put_latency,
            OpClass::Read => cfg.get_latency,
            OpClass::Other => Duration::ZERO,
        };
        let stall = chance(cfg.stall_rate).then_some(cfg.stall);
        let fault = if cfg.outage {
            Some(Fault::Outage)
        } else if chance(cfg.error_rate) {
            if chance(0.5) {
                Some(Fault::Throttled)
            } else {
                Some(Fault::ServerError)
            }
        } else {
            None
        };
        let ambiguous = class == OpClass::Write && chance(cfg.ambiguous_put_rate);
        if class != OpClass::Other && !cfg.jitter.is_zero() {
            let max = u64::try_from(cfg.jitter.as_nanos()).unwrap_or(u64::MAX);
            delay += Duration::from_nanos(rng.random_range(0..=max));
        }
        Decision {
            delay,
            stall,
            fault,
            ambiguous,
        }
    }
}

/// Wraps a store and injects the faults a [`FaultControl`] describes.
#[derive(Debug)]
pub struct FaultyStore {
    inner: DynStore,
    faults: FaultControl,
}

impl FaultyStore {
    /// `inner` with the faults of `faults` (a clone of which the caller keeps to
    /// change them).
    pub fn new(inner: DynStore, faults: FaultControl) -> Self {
        FaultyStore { inner, faults }
    }

    /// Apply the delay and faults of one request; `Ok(ambiguous)` lets it proceed.
    async fn before(&self, class: OpClass, what: &str) -> StoreResult<bool> {
        let d = self.faults.decide(class);
        if !d.delay.is_zero() {
            tokio::time::sleep(d.delay).await;
        }
        if d.fault == Some(Fault::Outage) {
            return Err(StoreError::Transient(format!(
                "{what}: connection refused (injected outage)"
            )));
        }
        if let Some(stall) = d.stall {
            tokio::time::sleep(stall).await;
            return Err(StoreError::Transient(format!(
                "{what}: timed out (injected stall)"
            )));
        }
        match d.fault {
            Some(Fault::Throttled) => Err(StoreError::Throttled(format!(
                "{what}: 503 SlowDown (injected)"
            ))),
            Some(_) => Err(StoreError::Transient(format!(
                "{what}: 500 InternalError (injected)"
            ))),
            None => Ok(d.ambiguous),
        }
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> StoreResult<String> {
        let ambiguous = self.before(OpClass::Write, &format!("PUT {key}")).await?;
        let r = self.inner.put(key, data, mode).await;
        if ambiguous && r.is_ok() {
            return Err(StoreError::Transient(format!(
                "PUT {key}: response lost (injected)"
            )));
        }
        r
    }

    async fn get(&self, key: &str) -> StoreResult<GetResult> {
        self.before(OpClass::Read, &format!("GET {key}")).await?;
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        self.before(OpClass::Read, &format!("GET {key}")).await?;
        self.inner.get_range(key, range).await
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        self.before(OpClass::Read, &format!("LIST {prefix}"))
            .await?;
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.before(OpClass::Write, &format!("DELETE {key}"))
            .await?;
        self.inner.delete(key).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn short_of_space(&self) -> bool {
        self.faults.get().short_of_space || self.inner.short_of_space()
    }
}
