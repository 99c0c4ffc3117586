//! Retry layer: repeats retryable failures with exponential backoff and full jitter.
//!
//! Only [`StoreError::is_retryable`] errors are retried (5xx, 503 SlowDown, 429,
//! timeouts, broken connections); 4xx answers are returned at once. A request gives up
//! after `max_elapsed` (an outage then surfaces as the last error).
//!
//! **Ambiguous writes.** A conditional put whose earlier attempt failed in transit may
//! have been applied by the server; the retry then sees `PreconditionFailed` for its
//! own write. In that case the layer reads the object back and reports success when
//! the stored bytes equal the bytes it was writing. kvfs never writes the same bytes
//! under the same key from two writers (every object names its writer epoch), so the
//! comparison is exact.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{DynStore, GetResult, ObjectMeta, ObjectStore, PutMode, StoreError, StoreResult};

/// A request that keeps failing is reported once it has waited about this long…
const REPORT_AFTER: Duration = Duration::from_millis(1500);
/// …and again this often.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// How long and how often to retry.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Backoff before the first retry.
    pub initial_backoff: Duration,
    /// Cap of one backoff.
    pub max_backoff: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(60),
        }
    }
}

/// Wraps a store and retries its retryable failures.
#[derive(Debug)]
pub struct RetryStore {
    inner: DynStore,
    policy: RetryPolicy,
    rng: Mutex<StdRng>,
    retries: AtomicU64,
}

impl RetryStore {
    pub fn new(inner: DynStore, policy: RetryPolicy) -> Self {
        Self::with_seed(inner, policy, rand::random())
    }

    /// A retry layer whose jitter is drawn from a seeded generator (reproducible tests).
    pub fn with_seed(inner: DynStore, policy: RetryPolicy, seed: u64) -> Self {
        RetryStore {
            inner,
            policy,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            retries: AtomicU64::new(0),
        }
    }

    /// Number of retries performed so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .policy
            .initial_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.policy.max_backoff);
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        let nanos = rng.random_range(0..=exp.as_nanos().max(1) as u64);
        Duration::from_nanos(nanos)
    }

    async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> StoreResult<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = StoreResult<T>>,
    {
        let start = Instant::now();
        let mut attempt = 0u32;
        let mut last_report: Option<Instant> = None;
        loop {
            match op(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() => {
                    // The last attempt is made when the time is up, not earlier.
                    let left = self.policy.max_elapsed.saturating_sub(start.elapsed());
                    let pause = self.backoff(attempt).min(left);
                    if left.is_zero() {
                        log::info!("{what}: giving up after {} attempts: {e}", attempt + 1);
                        return Err(match e {
                            StoreError::Throttled(m) => StoreError::Throttled(format!(
                                "{m} (gave up after {} attempts in {:.1}s)",
                                attempt + 1,
                                start.elapsed().as_secs_f64()
                            )),
                            StoreError::Transient(m) => StoreError::Transient(format!(
                                "{m} (gave up after {} attempts in {:.1}s)",
                                attempt + 1,
                                start.elapsed().as_secs_f64()
                            )),
                            other => other,
                        });
                    }
                    // Say so when waiting gets long, and again periodically.
                    let waited = start.elapsed() + pause;
                    let due = match last_report {
                        None => waited >= REPORT_AFTER,
                        Some(t) => t.elapsed() + pause >= REPORT_EVERY,
                    };
                    if due {
                        last_report = Some(Instant::now());
                        log::warn!(
                            "{what}: no answer yet from the object store (attempt {}: {e}); \
                             retrying for up to {:.0} s more",
                            attempt + 1,
                            self.policy
                                .max_elapsed
                                .saturating_sub(start.elapsed())
                                .as_secs_f64()
                        );
                    } else {
                        log::debug!("{what}: attempt {} failed ({e}); retrying", attempt + 1);
                    }
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[async_trait]
impl ObjectStore for RetryStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> StoreResult<String> {
        let ambiguous = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let result = self
            .run(&format!("PUT {key}"), |_| {
                let data = data.clone();
                let mode = mode.clone();
                let ambiguous = ambiguous.clone();
                async move {
                    let r = self.inner.put(key, data, mode).await;
                    if matches!(&r, Err(e) if e.is_retryable()) {
                        ambiguous.store(true, Ordering::Relaxed);
                    }
                    r
                }
            })
            .await;
        match result {
            Err(StoreError::PreconditionFailed(k))
                if mode != PutMode::Overwrite && ambiguous.load(Ordering::Relaxed) =>
            {
                // An earlier attempt may have landed: accept it if the bytes are ours.
                let current = self.get(key).await?;
                if current.data == data {
                    Ok(current.etag)
                } else {
                    Err(StoreError::PreconditionFailed(k))
                }
            }
            other => other,
        }
    }

    async fn get(&self, key: &str) -> StoreResult<GetResult> {
        self.run(&format!("GET {key}"), |_| self.inner.get(key))
            .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        self.run(&format!("GET {key} {range:?}"), |_| {
            self.inner.get_range(key, range.clone())
        })
        .await
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        self.run(&format!("LIST {prefix}"), |_| self.inner.list(prefix))
            .await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.run(&format!("DELETE {key}"), |_| self.inner.delete(key))
            .await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn short_of_space(&self) -> bool {
        self.inner.short_of_space()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::sync::atomic::AtomicU32;

    /// Fails the first `failures` requests with `error`, then passes through.
    #[derive(Debug)]
    struct Flaky {
        inner: MemoryStore,
        failures: AtomicU32,
        error: StoreError,
        apply_before_failing: bool,
    }

    #[async_trait]
    impl ObjectStore for Flaky {
        async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> StoreResult<String> {
            if self.failures.load(Ordering::SeqCst) > 0 {
                self.failures.fetch_sub(1, Ordering::SeqCst);
                if self.apply_before_failing {
                    self.inner.put(key, data, mode).await?;
                }
                return Err(self.error.clone());
            }
            self.inner.put(key, data, mode).await
        }
        async fn get(&self, key: &str) -> StoreResult<GetResult> {
            self.inner.get(key).await
        }
        async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
            self.inner.get_range(key, range).await
        }
        async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
            self.inner.list(prefix).await
        }
        async fn delete(&self, key: &str) -> StoreResult<()> {
            self.inner.delete(key).await
        }
        fn describe(&self) -> String {
            "flaky".into()
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            max_elapsed: Duration::from_millis(300),
        }
    }

    fn flaky(failures: u32, error: StoreError, apply: bool) -> Arc<Flaky> {
        Arc::new(Flaky {
            inner: MemoryStore::new(),
            failures: AtomicU32::new(failures),
            error,
            apply_before_failing: apply,
        })
    }

    #[tokio::test]
    async fn retries_transient_errors_until_success() {
        let f = flaky(3, StoreError::Throttled("slow down".into()), false);
        let r = RetryStore::with_seed(f.clone(), policy(), 1);
        r.put("k", Bytes::from_static(b"v"), PutMode::CreateNew)
            .await
            .unwrap();
        assert_eq!(r.retries(), 3);
    }

    #[tokio::test]
    async fn does_not_retry_permanent_errors() {
        let f = flaky(3, StoreError::Permanent("access denied".into()), false);
        let r = RetryStore::with_seed(f, policy(), 1);
        let e = r
            .put("k", Bytes::from_static(b"v"), PutMode::Overwrite)
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Permanent(_)));
        assert_eq!(r.retries(), 0);
    }

    #[tokio::test]
    async fn gives_up_after_max_elapsed_with_a_clear_message() {
        let f = flaky(
            u32::MAX,
            StoreError::Transient("connection refused".into()),
            false,
        );
        let r = RetryStore::with_seed(f, policy(), 1);
        let e = r
            .put("k", Bytes::from_static(b"v"), PutMode::Overwrite)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("gave up after"), "{e}");
    }

    #[tokio::test]
    async fn lost_response_of_a_conditional_put_counts_as_success() {
        let f = flaky(1, StoreError::Transient("timed out".into()), true);
        let r = RetryStore::with_seed(f.clone(), policy(), 1);
        r.put("k", Bytes::from_static(b"mine"), PutMode::CreateNew)
            .await
            .unwrap();
        // Someone else's object under the name is still a conflict.
        let f = flaky(1, StoreError::Transient("timed out".into()), false);
        f.inner
            .put("k", Bytes::from_static(b"theirs"), PutMode::Overwrite)
            .await
            .unwrap();
        let r = RetryStore::with_seed(f, policy(), 1);
        let e = r
            .put("k", Bytes::from_static(b"mine"), PutMode::CreateNew)
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::PreconditionFailed(_)));
    }
}
