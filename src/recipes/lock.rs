//! A distributed lock with a FIFO queue, a lost signal and fencing tokens, over any [`Store`].
//!
//! Each acquisition takes a lease (renewed in the background) and enqueues a waiter key
//! `<key>___lock/<lease id>` attached to it with a create-only put; the waiter's revision is its place in
//! the queue. The waiter with the lowest revision holds the lock; every other one watches its
//! predecessor's key and re-checks when it goes. A holder that dies stops renewing: its lease expires, its
//! waiter key goes, and the next waiter moves up within the TTL.
//!
//! The fencing token is the waiter's revision: it is larger for every later acquisition, so a resource
//! that remembers the largest token it has seen can refuse a holder that lost the lock without knowing.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> valkeyrie::Result<()> {
//! use std::time::Duration;
//! use valkeyrie::LockOptions;
//! let store = valkeyrie::open("embedded://").await?;
//! let lock = store.new_lock("jobs/nightly", Some(LockOptions::new().with_ttl(Duration::from_secs(10)))).await?;
//! let held = lock.lock().await?; // waits until acquired; renewed in the background
//! let mut lost = held.lost();
//! tokio::select! {
//!     _ = lost.wait() => { /* lost the lock: stop working */ }
//!     _ = async { /* the critical section, passing held.fencing_token() to the resource */ } => {}
//! }
//! lock.unlock().await?;
//! # Ok(()) }
//! ```

use crate::backend::LOCK_SUFFIX;
use crate::error::{Error, Result};
use crate::kv::{EventKind, KVPair};
use crate::lease::{Lease, Lost};
use crate::options::{LockOptions, WriteOptions};
use crate::store::Store;
use futures::StreamExt;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A lock on one key, from [`Store::new_lock`]. Not held until [`Lock::lock`] succeeds.
///
/// One `Lock` can be locked and unlocked many times; two `Lock`s on the same key (in this process or
/// another) exclude each other.
#[derive(Debug)]
pub struct Lock {
    store: Arc<dyn Store>,
    key: String,
    options: LockOptions,
    held: tokio::sync::Mutex<Option<Held>>,
}

#[derive(Debug)]
struct Held {
    /// `None` only while `unlock` revokes it.
    lease: Option<Lease>,
    token: u64,
    lost: Lost,
    /// The value as last written by this acquisition: the CAS token for [`Lock::proclaim`].
    value: KVPair,
    /// Fires `lost` when the lease or the waiter key goes; aborted on unlock.
    monitor: JoinHandle<()>,
}

impl Drop for Held {
    fn drop(&mut self) {
        // Dropping the lease below stops renewal and revokes it; the monitor has nothing left to watch.
        self.monitor.abort();
    }
}

/// What [`Lock::lock`] returns while the lock is held.
#[derive(Clone, Debug)]
pub struct LockHeld {
    token: u64,
    lost: Lost,
}

impl LockHeld {
    /// The fencing token of this acquisition: larger than that of any earlier acquisition of this lock.
    pub fn fencing_token(&self) -> u64 {
        self.token
    }

    /// A signal that fires if the lock is lost before [`Lock::unlock`] (the lease could not be renewed,
    /// was revoked, or the store closed).
    pub fn lost(&self) -> Lost {
        self.lost.clone()
    }
}

impl Lock {
    pub(crate) fn new(store: Arc<dyn Store>, key: &str, options: LockOptions) -> Lock {
        Lock { store, key: key.to_owned(), options, held: tokio::sync::Mutex::new(None) }
    }

    /// The lock's key (which receives the value when the lock is acquired).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Waits until the lock is acquired, then writes the lock's value to its key.
    ///
    /// If the lock is already held through this `Lock`, returns the current acquisition. To give up
    /// waiting, drop the future (e.g. with [`tokio::time::timeout`]): the place in the queue is released.
    pub async fn lock(&self) -> Result<LockHeld> {
        let mut held = self.held.lock().await;
        if let Some(h) = held.as_ref() {
            if !h.lost.is_lost() {
                return Ok(LockHeld { token: h.token, lost: h.lost.clone() });
            }
        }
        // A lost acquisition is dropped (its monitor stops, its lease is revoked) before trying again.
        held.take();
        let queue = format!("{}{LOCK_SUFFIX}", self.key);
        let lease = self.store.grant_lease(self.options.ttl).await?;
        let waiter = format!("{queue}/{:016x}", lease.id().0);
        let with_lease = Some(WriteOptions::new().with_lease(lease.id()));
        // From here on, dropping this future drops `lease`, which revokes it and removes the waiter key.
        let me = self.store.atomic_put(&waiter, b"", None, with_lease.clone()).await?;
        let mut lease_lost = lease.lost();
        loop {
            let waiters = match self.store.list(&queue, None).await {
                Ok(w) => w,
                Err(Error::KeyNotFound { .. }) => Vec::new(),
                Err(e) => return Err(e),
            };
            if !waiters.iter().any(|w| w.key == waiter) {
                return Err(Error::CannotLock {
                    key: self.key.clone(),
                    source: Some(Box::new(Error::LeaseNotFound)),
                });
            }
            let Some(before) =
                waiters.iter().filter(|w| w.last_index < me.last_index).max_by_key(|w| w.last_index)
            else {
                break;
            };
            // Wait for the waiter just before us to go. The watch starts with its current state, so if it
            // went meanwhile we see a delete at once.
            let mut events = self.store.watch(&before.key, None).await?;
            loop {
                tokio::select! {
                    ev = events.next() => match ev {
                        Some(Ok(ev)) if ev.kind == EventKind::Delete => break,
                        Some(Ok(_)) => {}
                        Some(Err(Error::Lagged | Error::Compacted { .. })) => {}
                        Some(Err(e)) => return Err(e),
                        None => return Err(Error::Closed),
                    },
                    _ = lease_lost.wait() => {
                        return Err(Error::CannotLock { key: self.key.clone(), source: Some(Box::new(Error::LeaseNotFound)) });
                    }
                }
            }
        }
        let value_options = if self.options.delete_on_unlock { with_lease } else { None };
        let value = self.store.put(&self.key, &self.options.value, value_options).await?;
        let (tx, rx) = watch::channel(false);
        let lost = Lost::from_receiver(rx);
        let monitor = tokio::spawn(monitor(self.store.clone(), waiter, lease.lost(), tx));
        let token = me.last_index;
        *held = Some(Held { lease: Some(lease), token, lost: lost.clone(), value, monitor });
        Ok(LockHeld { token, lost })
    }

    /// Replaces the value while the lock is held, failing with [`Error::NotHeld`] if it is not held or the
    /// value was changed by someone else (so this holder can no longer vouch for it).
    pub(crate) async fn proclaim(&self, value: &[u8]) -> Result<()> {
        let mut held = self.held.lock().await;
        let Some(h) = held.as_mut().filter(|h| !h.lost.is_lost()) else {
            return Err(Error::NotHeld { key: self.key.clone() });
        };
        let options = match (&h.lease, self.options.delete_on_unlock) {
            (Some(lease), true) => Some(WriteOptions::new().with_lease(lease.id())),
            _ => None,
        };
        match self.store.atomic_put(&self.key, value, Some(&h.value), options).await {
            Ok(pair) => {
                h.value = pair;
                Ok(())
            }
            Err(Error::KeyModified { .. } | Error::KeyNotFound { .. }) => {
                Err(Error::NotHeld { key: self.key.clone() })
            }
            Err(e) => Err(e),
        }
    }

    /// Releases the lock (deleting its value first with `delete_on_unlock`). Does nothing if not held.
    pub async fn unlock(&self) -> Result<()> {
        let Some(mut held) = self.held.lock().await.take() else { return Ok(()) };
        if self.options.delete_on_unlock {
            match self.store.delete(&self.key).await {
                Ok(()) | Err(Error::KeyNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        match held.lease.take() {
            Some(lease) => lease.revoke().await,
            None => Ok(()),
        }
    }
}

/// Fires `lost` when the lease is lost or the waiter key disappears (deleted by someone else).
async fn monitor(store: Arc<dyn Store>, waiter: String, mut lease_lost: Lost, lost: watch::Sender<bool>) {
    let waiter_gone = async {
        let Ok(mut events) = store.watch(&waiter, None).await else { return };
        while let Some(ev) = events.next().await {
            if matches!(ev, Ok(ev) if ev.kind == EventKind::Delete) {
                return;
            }
        }
    };
    tokio::select! {
        _ = lease_lost.wait() => {}
        _ = waiter_gone => {}
    }
    let _ = lost.send(true);
}
