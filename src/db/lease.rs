//! The writer lease: who may write to a store prefix right now.
//!
//! The lease is the object `lease`, a small JSON document naming the holder (host,
//! boot id, PID namespace and process id), when it was last renewed, and whether it
//! was released. It is always replaced with `If-Match` on the etag read before, so
//! exactly one contender wins.
//!
//! The lease keeps a *live* writer from being displaced by accident; it is not what
//! keeps the store safe. Safety comes from writer epochs and fence segments (see
//! `recovery`), which hold even if two processes both believe they hold the lease
//! (for example after a long pause of a writer).
//!
//! Taking the lease:
//! - absent or released: take it at once;
//! - held by a process on this host that no longer runs: take it at once;
//! - held by a running process on this host: refuse ([`Error::Locked`]);
//! - held by another host: watch it. A live holder renews every `ttl / 3`; if the
//!   etag changes, the holder is live and we refuse. If it stays unchanged for `ttl`
//!   (measured on our own clock), the holder is gone and we take over.
//!
//! "This host" means the same host name, boot id and PID namespace
//! ([`HostIdentity::shares_pids_with`]): only then does the holder's pid name a
//! process we can look up. Containers sharing a host name but not a PID namespace,
//! or a holder from before a reboot, count as other hosts, and so does a lease
//! written before these fields existed (it lacks them): their leases are waited out,
//! never taken at once on the strength of a pid looked up in the wrong place.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use crate::format::names::LEASE;
pub use crate::process::{pid_alive, this_host, HostIdentity};
use crate::store::{DynStore, PutMode, StoreError};

/// The lease document.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseInfo {
    pub kvfs_lease: u32,
    pub host: String,
    pub pid: u32,
    /// The holder's boot id (absent in older leases; see [`HostIdentity`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The inode of the holder's PID namespace (absent in older leases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<u64>,
    /// Unique per acquisition, so two holders never write identical documents.
    pub nonce: u64,
    pub renewed_unix_ms: u64,
    pub ttl_ms: u64,
    pub released: bool,
    /// What the holder is, such as `mount at /mnt/data` (absent in older leases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Longest a writer waits for an unmounted mount of this host to finish uploading.
const FLUSH_WAIT: Duration = Duration::from_secs(120);

/// The label of a mount's lease: `mount at PATH`.
const MOUNT_LABEL: &str = "mount at ";

/// Who takes a lease: the host identity and the process id written into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub identity: HostIdentity,
    pub pid: u32,
}

impl Holder {
    /// This process.
    pub fn this_process() -> Holder {
        Holder {
            identity: HostIdentity::current(),
            pid: std::process::id(),
        }
    }
}

impl LeaseInfo {
    /// Where the holder runs.
    pub fn identity(&self) -> HostIdentity {
        HostIdentity {
            host: self.host.clone(),
            boot_id: self.boot_id.clone(),
            pid_ns: self.pid_ns,
        }
    }

    /// The lease of a mount whose mount point is no longer mounted (on this host):
    /// the daemon is finishing its uploads after an unmount.
    fn is_unmounted_mount(&self) -> bool {
        self.label
            .as_deref()
            .and_then(|l| l.strip_prefix(MOUNT_LABEL))
            .is_some_and(|at| crate::process::mounted_at(std::path::Path::new(at)).is_none())
    }

    pub fn holder(&self) -> String {
        match &self.label {
            Some(l) => format!("{} pid {}, {l}", self.host, self.pid),
            None => format!("{} pid {}", self.host, self.pid),
        }
    }

    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec_pretty(self).unwrap_or_default())
    }

    pub fn decode(data: &[u8]) -> Result<LeaseInfo> {
        serde_json::from_slice::<LeaseInfo>(data)
            .ok()
            .filter(|l| l.kvfs_lease == 1)
            .ok_or_else(|| {
                Error::Inconsistent(format!(
                    "object {LEASE:?} is not a kvfs lease (a foreign object in the store prefix?)"
                ))
            })
    }
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A held lease.
#[derive(Debug)]
pub struct Lease {
    store: DynStore,
    info: LeaseInfo,
    etag: String,
}

impl Lease {
    /// Take the lease of `store`, waiting out a holder on another host that stopped
    /// renewing (logging what it waits for). Refuses a live holder with
    /// [`Error::Locked`].
    pub async fn acquire(store: DynStore, ttl: Duration, label: Option<String>) -> Result<Lease> {
        Self::acquire_as(store, ttl, label, Holder::this_process()).await
    }

    /// [`Lease::acquire`] for `holder`, which decides which leases are of this host
    /// (their pids looked up with [`pid_alive`]) and is written into the lease.
    pub async fn acquire_as(
        store: DynStore,
        ttl: Duration,
        label: Option<String>,
        holder: Holder,
    ) -> Result<Lease> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let mine = LeaseInfo {
            kvfs_lease: 1,
            host: holder.identity.host.clone(),
            pid: holder.pid,
            boot_id: holder.identity.boot_id.clone(),
            pid_ns: holder.identity.pid_ns,
            nonce: rand::random(),
            renewed_unix_ms: now_unix_ms(),
            ttl_ms,
            released: false,
            label,
        };
        let poll = (ttl / 10).clamp(Duration::from_millis(20), Duration::from_secs(1));
        let mut watched: Option<(String, Instant)> = None;
        let mut waiting_since: Option<Instant> = None;
        loop {
            let current = match store.get(LEASE).await {
                Ok(g) => Some(g),
                Err(StoreError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            };
            let Some(current) = current else {
                let mut info = mine.clone();
                info.renewed_unix_ms = now_unix_ms();
                match store.put(LEASE, info.encode(), PutMode::CreateNew).await {
                    Ok(etag) => return Ok(Lease { store, info, etag }),
                    Err(StoreError::PreconditionFailed(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            let held = LeaseInfo::decode(&current.data)?;
            let take = if held.released {
                true
            } else if holder.identity.shares_pids_with(&held.identity()) {
                if held.pid != mine.pid && !pid_alive(held.pid) {
                    log::warn!(
                        "previous writer ({}) is no longer running; taking over",
                        held.holder()
                    );
                    true
                } else if held.pid != mine.pid && held.is_unmounted_mount() {
                    // Unmounted a moment ago: it uploads what is left, then gives
                    // the lease back. Wait for that, as long as it keeps renewing.
                    if waiting_since.is_none() {
                        log::warn!(
                            "waiting for the previous mount of this store ({}) to finish \
                             uploading",
                            held.holder()
                        );
                    }
                    let since = *waiting_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > FLUSH_WAIT {
                        return Err(Error::Locked {
                            store: store.describe(),
                            holder: held.holder(),
                        });
                    }
                    false
                } else {
                    return Err(Error::Locked {
                        store: store.describe(),
                        holder: held.holder(),
                    });
                }
            } else {
                match &watched {
                    Some((etag, since)) if *etag == current.etag => {
                        if since.elapsed() >= Duration::from_millis(held.ttl_ms) {
                            log::warn!(
                                "lease of {} expired without renewal; taking over",
                                held.holder()
                            );
                            true
                        } else {
                            false
                        }
                    }
                    Some(_) => {
                        return Err(Error::Locked {
                            store: store.describe(),
                            holder: held.holder(),
                        })
                    }
                    None => {
                        log::warn!(
                            "store is held by {}; waiting up to {:.0}s to see whether it is still running",
                            held.holder(),
                            Duration::from_millis(held.ttl_ms).as_secs_f64()
                        );
                        watched = Some((current.etag.clone(), Instant::now()));
                        false
                    }
                }
            };
            if take {
                let mut info = mine.clone();
                info.renewed_unix_ms = now_unix_ms();
                match store
                    .put(LEASE, info.encode(), PutMode::IfMatch(current.etag))
                    .await
                {
                    Ok(etag) => return Ok(Lease { store, info, etag }),
                    Err(StoreError::PreconditionFailed(_)) => {
                        watched = None;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            tokio::time::sleep(poll).await;
        }
    }

    pub fn info(&self) -> &LeaseInfo {
        &self.info
    }

    /// Renew the lease. Fails with [`Error::Fenced`] if someone else took it.
    pub async fn renew(&mut self) -> Result<()> {
        let mut info = self.info.clone();
        info.renewed_unix_ms = now_unix_ms();
        self.replace(info).await
    }

    /// Mark the lease released so the next writer takes over at once.
    pub async fn release(&mut self) -> Result<()> {
        let mut info = self.info.clone();
        info.renewed_unix_ms = now_unix_ms();
        info.released = true;
        self.replace(info).await
    }

    /// Write `info` over the lease we hold (compare-and-swap on its etag).
    ///
    /// A refused swap is not proof of a takeover: a write of ours that the store
    /// applied while its answer was lost (a timeout, a dropped connection) leaves an
    /// etag we never saw. Every acquisition writes a fresh nonce, so the lease is
    /// still ours exactly when the document in the store carries our nonce and
    /// holder; then the swap is repeated on the etag just read. Anything else is a
    /// takeover: [`Error::Fenced`].
    async fn replace(&mut self, info: LeaseInfo) -> Result<()> {
        const ATTEMPTS: usize = 3;
        for _ in 0..ATTEMPTS {
            match self
                .store
                .put(LEASE, info.encode(), PutMode::IfMatch(self.etag.clone()))
                .await
            {
                Ok(etag) => {
                    self.etag = etag;
                    self.info = info;
                    return Ok(());
                }
                Err(StoreError::PreconditionFailed(_)) => {}
                Err(e) => return Err(e.into()),
            }
            let current = match self.store.get(LEASE).await {
                Ok(g) => g,
                Err(StoreError::NotFound(_)) => break,
                Err(e) => return Err(e.into()),
            };
            let stored = LeaseInfo::decode(&current.data)?;
            if stored == info {
                // Our own write landed; its answer was lost.
                self.etag = current.etag;
                self.info = info;
                return Ok(());
            }
            if !self.is_same_acquisition(&stored) {
                break;
            }
            log::debug!("the lease changed under its own holder's write; writing it again");
            self.etag = current.etag;
        }
        Err(Error::Fenced(
            "the writer lease was taken over by another process".to_string(),
        ))
    }

    /// Whether `stored` was written by this acquisition of the lease (same nonce and
    /// holder) and not given back.
    fn is_same_acquisition(&self, stored: &LeaseInfo) -> bool {
        stored.nonce == self.info.nonce
            && stored.pid == self.info.pid
            && stored.identity() == self.info.identity()
            && !stored.released
    }
}

/// Mark the lease released if it names this host and process and is not released
/// yet (compare-and-swap on its etag). Returns whether it did.
pub async fn release_if_held_by_this_process(store: DynStore) -> Result<bool> {
    release_if_held_by(store, &Holder::this_process()).await
}

/// [`release_if_held_by_this_process`] for `holder`: the lease must carry exactly
/// what `holder` writes into a lease.
async fn release_if_held_by(store: DynStore, holder: &Holder) -> Result<bool> {
    let current = match store.get(LEASE).await {
        Ok(g) => g,
        Err(StoreError::NotFound(_)) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let info = LeaseInfo::decode(&current.data)?;
    if info.released || info.identity() != holder.identity || info.pid != holder.pid {
        return Ok(false);
    }
    let mut lease = Lease {
        store,
        info,
        etag: current.etag,
    };
    lease.release().await?;
    Ok(true)
}

/// Read the lease without taking it (for `stats`).
pub async fn peek(store: &DynStore) -> Result<Option<LeaseInfo>> {
    match store.get(LEASE).await {
        Ok(g) => Ok(Some(LeaseInfo::decode(&g.data)?)),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::memory::MemoryStore;

    const TTL: Duration = Duration::from_secs(30);
    /// A pid no process has (above any `pid_max`).
    const DEAD_PID: u32 = i32::MAX as u32;

    fn store() -> DynStore {
        Arc::new(MemoryStore::new())
    }

    /// A holder on host `box` (boot `b1`) in PID namespace `pid_ns`.
    fn holder(pid_ns: u64, pid: u32) -> Holder {
        Holder {
            identity: HostIdentity {
                host: "box".into(),
                boot_id: Some("b1".into()),
                pid_ns: Some(pid_ns),
            },
            pid,
        }
    }

    /// Take the lease as `h` and leave it held, as a process killed with it would.
    async fn held_by(store: &DynStore, h: Holder) -> Lease {
        Lease::acquire_as(store.clone(), TTL, None, h)
            .await
            .unwrap()
    }

    /// Acquire as `h`; the outcome and how long it took on tokio's (paused) clock.
    async fn timed_acquire(store: &DynStore, h: Holder) -> (Result<Lease>, Duration) {
        let start = Instant::now();
        let r = Lease::acquire_as(store.clone(), TTL, None, h).await;
        (r, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_pid_of_this_host_and_namespace_is_taken_at_once() {
        let store = store();
        held_by(&store, holder(100, DEAD_PID)).await;
        let (r, waited) = timed_acquire(&store, holder(100, std::process::id())).await;
        let lease = r.unwrap();
        assert!(waited < TTL, "waited {waited:?}");
        assert_eq!(lease.info().pid_ns, Some(100));
        assert_eq!(lease.info().boot_id.as_deref(), Some("b1"));
    }

    /// Two containers named alike: the holder's pid means nothing in the other's PID
    /// namespace, so the other waits out the TTL instead of taking the lease.
    #[tokio::test(start_paused = true)]
    async fn same_host_name_in_another_pid_namespace_waits_out_the_ttl() {
        let store = store();
        held_by(&store, holder(100, DEAD_PID)).await;
        let (r, waited) = timed_acquire(&store, holder(200, std::process::id())).await;
        r.unwrap();
        assert!(waited >= TTL, "took the lease after {waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_holder_in_another_pid_namespace_is_not_displaced() {
        let store = store();
        let mut live = held_by(&store, holder(100, DEAD_PID)).await;
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(TTL / 3).await;
                if live.renew().await.is_err() {
                    return;
                }
            }
        });
        let (r, _) = timed_acquire(&store, holder(200, std::process::id())).await;
        renewer.abort();
        match r {
            Err(Error::Locked { holder, .. }) => assert!(holder.contains("box"), "{holder}"),
            other => panic!("expected Locked, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn another_boot_waits_out_the_ttl() {
        let store = store();
        let mut before_reboot = holder(100, DEAD_PID);
        before_reboot.identity.boot_id = Some("b0".into());
        held_by(&store, before_reboot).await;
        let (r, waited) = timed_acquire(&store, holder(100, std::process::id())).await;
        r.unwrap();
        assert!(waited >= TTL, "took the lease after {waited:?}");
    }

    /// A lease written before boot ids and PID namespaces were recorded still reads,
    /// and counts as another host's.
    #[tokio::test(start_paused = true)]
    async fn an_old_lease_without_the_identity_fields_waits_out_the_ttl() {
        let store = store();
        let old = format!(
            r#"{{"kvfs_lease": 1, "host": "box", "pid": {DEAD_PID}, "nonce": 7,
                "renewed_unix_ms": 1, "ttl_ms": {}, "released": false}}"#,
            TTL.as_millis()
        );
        store
            .put(LEASE, Bytes::from(old), PutMode::CreateNew)
            .await
            .unwrap();
        let info = peek(&store).await.unwrap().unwrap();
        assert_eq!((info.boot_id, info.pid_ns), (None, None));
        let (r, waited) = timed_acquire(&store, holder(100, std::process::id())).await;
        r.unwrap();
        assert!(waited >= TTL, "took the lease after {waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_exact_holder_releases_on_interrupt() {
        let store = store();
        let me = holder(100, std::process::id());
        held_by(&store, me.clone()).await;
        // The same pid number in another PID namespace is another process.
        assert!(!release_if_held_by(store.clone(), &holder(200, me.pid))
            .await
            .unwrap());
        assert!(!peek(&store).await.unwrap().unwrap().released);
        assert!(release_if_held_by(store.clone(), &me).await.unwrap());
        assert!(peek(&store).await.unwrap().unwrap().released);
    }

    /// A renewal the store applied but whose answer was lost leaves an etag the
    /// holder never saw: the holder keeps its lease. A real takeover still fences.
    #[tokio::test(start_paused = true)]
    async fn a_lost_answer_to_a_renewal_is_not_a_takeover() {
        let store = store();
        let mut lease = held_by(&store, holder(100, std::process::id())).await;
        // The store holds our document under an etag we did not see (as if a
        // renewal landed and its answer was lost).
        let mut landed = lease.info().clone();
        landed.renewed_unix_ms += 1;
        let etag = store.get(LEASE).await.unwrap().etag;
        store
            .put(LEASE, landed.encode(), PutMode::IfMatch(etag))
            .await
            .unwrap();
        lease.renew().await.unwrap();
        lease.renew().await.unwrap();
        // Another process takes over (a new nonce): the next renewal is fenced.
        let mut other = lease.info().clone();
        other.nonce = lease.info().nonce.wrapping_add(1);
        let etag = store.get(LEASE).await.unwrap().etag;
        store
            .put(LEASE, other.encode(), PutMode::IfMatch(etag))
            .await
            .unwrap();
        assert!(matches!(lease.renew().await, Err(Error::Fenced(_))));
        assert!(matches!(lease.release().await, Err(Error::Fenced(_))));
        assert_eq!(peek(&store).await.unwrap().unwrap(), other);
    }

    #[test]
    fn the_identity_round_trips_through_the_document() {
        let info = LeaseInfo {
            kvfs_lease: 1,
            host: "box".into(),
            pid: 9,
            boot_id: Some("b1".into()),
            pid_ns: Some(4026531836),
            nonce: 1,
            renewed_unix_ms: 2,
            ttl_ms: 3,
            released: false,
            label: None,
        };
        let decoded = LeaseInfo::decode(&info.encode()).unwrap();
        assert_eq!(decoded, info);
        assert_eq!(decoded.identity(), holder(4026531836, 9).identity);
    }
}
