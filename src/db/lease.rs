//! The writer lease: who may write to a store prefix right now.
//!
//! The lease is the object `lease`, a small JSON document naming the holder (host and
//! process id), when it was last renewed, and whether it was released. It is always
//! replaced with `If-Match` on the etag read before, so exactly one contender wins.
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

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use crate::format::names::LEASE;
pub use crate::process::{pid_alive, this_host};
use crate::store::{DynStore, PutMode, StoreError};

/// The lease document.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseInfo {
    pub kvfs_lease: u32,
    pub host: String,
    pub pid: u32,
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

impl LeaseInfo {
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
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let mine = LeaseInfo {
            kvfs_lease: 1,
            host: this_host(),
            pid: std::process::id(),
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
            } else if held.host == mine.host {
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

    async fn replace(&mut self, info: LeaseInfo) -> Result<()> {
        match self
            .store
            .put(LEASE, info.encode(), PutMode::IfMatch(self.etag.clone()))
            .await
        {
            Ok(etag) => {
                self.etag = etag;
                self.info = info;
                Ok(())
            }
            Err(StoreError::PreconditionFailed(_)) => Err(Error::Fenced(
                "the writer lease was taken over by another process".to_string(),
            )),
            Err(e) => Err(e.into()),
        }
    }
}

/// Mark the lease released if it names this host and process and is not released
/// yet (compare-and-swap on its etag). Returns whether it did.
pub async fn release_if_held_by_this_process(store: DynStore) -> Result<bool> {
    let current = match store.get(LEASE).await {
        Ok(g) => g,
        Err(StoreError::NotFound(_)) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let info = LeaseInfo::decode(&current.data)?;
    if info.released || info.host != this_host() || info.pid != std::process::id() {
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
