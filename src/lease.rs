//! Leases held by a store handle: a background keeper renews them; the handle signals their loss.

use crate::error::{Error, Result};
use crate::kv::LeaseId;
use async_trait::async_trait;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What a keeper needs from a backend.
#[async_trait]
pub(crate) trait LeaseOps: Send + Sync + std::fmt::Debug + 'static {
    /// Renews the lease once. `Err(LeaseNotFound)` if it is gone.
    async fn keep_alive_once(&self, id: LeaseId) -> Result<()>;
    /// Revokes the lease.
    async fn revoke_lease(&self, id: LeaseId) -> Result<()>;
}

/// The set of leases a store handle owns, revoked when it closes.
pub(crate) type LeaseSet = Arc<Mutex<HashSet<LeaseId>>>;

fn lock_set(set: &LeaseSet) -> std::sync::MutexGuard<'_, HashSet<LeaseId>> {
    set.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A signal that fires once, when a lease (and what depends on it, such as a lock) is lost.
#[derive(Clone, Debug)]
pub struct Lost {
    rx: watch::Receiver<bool>,
}

impl Lost {
    pub(crate) fn from_receiver(rx: watch::Receiver<bool>) -> Lost {
        Lost { rx }
    }

    /// Whether it has fired.
    pub fn is_lost(&self) -> bool {
        *self.rx.borrow()
    }

    /// Waits until it fires.
    pub async fn wait(&mut self) {
        // An error means the keeper is gone without saying: that is a loss too.
        let _ = self.rx.wait_for(|lost| *lost).await;
    }
}

/// A lease kept alive by its store until this handle is dropped or revoked, or the store closes.
///
/// Dropping the handle stops renewing and revokes the lease in the background.
#[derive(Debug)]
pub struct Lease {
    id: LeaseId,
    ttl: Duration,
    lost: Lost,
    keeper: JoinHandle<()>,
    ops: Arc<dyn LeaseOps>,
    owned: LeaseSet,
    revoked: bool,
}

impl Lease {
    /// Starts keeping `id` alive. `closed` fires when the owning store closes.
    pub(crate) fn keep(
        id: LeaseId,
        ttl: Duration,
        ops: Arc<dyn LeaseOps>,
        owned: LeaseSet,
        closed: watch::Receiver<bool>,
    ) -> Lease {
        lock_set(&owned).insert(id);
        let (tx, rx) = watch::channel(false);
        let keeper = tokio::spawn(keep_alive(id, ttl, ops.clone(), tx, closed));
        Lease { id, ttl, lost: Lost::from_receiver(rx), keeper, ops, owned, revoked: false }
    }

    /// The lease's id, for [`WriteOptions::with_lease`](crate::WriteOptions::with_lease).
    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// The lease's time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A signal that fires when the lease is lost: it could not be renewed before it expired, it was
    /// revoked elsewhere, or the store closed.
    pub fn lost(&self) -> Lost {
        self.lost.clone()
    }

    /// Stops renewing and revokes the lease now, deleting its keys.
    pub async fn revoke(mut self) -> Result<()> {
        self.keeper.abort();
        self.revoked = true;
        lock_set(&self.owned).remove(&self.id);
        match self.ops.revoke_lease(self.id).await {
            Err(Error::LeaseNotFound) => Ok(()),
            other => other,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.keeper.abort();
        if self.revoked {
            return;
        }
        lock_set(&self.owned).remove(&self.id);
        // Revoke promptly so that what depends on it (lock queues) moves on without waiting for expiry.
        // This short task ends with the request (each backend bounds its requests by a timeout).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (ops, id) = (self.ops.clone(), self.id);
            rt.spawn(async move {
                let _ = ops.revoke_lease(id).await;
            });
        }
    }
}

async fn keep_alive(
    id: LeaseId,
    ttl: Duration,
    ops: Arc<dyn LeaseOps>,
    lost: watch::Sender<bool>,
    mut closed: watch::Receiver<bool>,
) {
    let period = (ttl / 3).max(Duration::from_millis(100));
    let retry = (ttl / 10).clamp(Duration::from_millis(50), Duration::from_millis(500));
    // Declare the lease lost a little before the server can expire it, so that whoever relies on the lost
    // signal (a lock holder) stops before anybody else can take over. The server started counting no
    // earlier than our last successful request was sent, which is what `deadline` is measured from.
    let margin = (ttl / 10).min(Duration::from_millis(250));
    let mut deadline = Instant::now() + ttl - margin;
    let mut wait = period;
    loop {
        let wake = (Instant::now() + wait).min(deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = closed.wait_for(|c| *c) => break,
        }
        if Instant::now() >= deadline {
            tracing::warn!(lease = id.0, "lease lost: could not renew it in time");
            break;
        }
        let sent = Instant::now();
        // A request that hangs (a cut-off network) must not outlive the lease.
        match tokio::time::timeout_at(deadline, ops.keep_alive_once(id)).await {
            Ok(Ok(())) => {
                deadline = sent + ttl - margin;
                wait = period;
            }
            Ok(Err(Error::LeaseNotFound | Error::Closed)) => break,
            Ok(Err(e)) => {
                tracing::debug!(lease = id.0, error = %e, "lease renewal failed, retrying");
                wait = retry;
            }
            Err(_) => {
                tracing::warn!(lease = id.0, "lease lost: renewal did not answer before it expired");
                break;
            }
        }
    }
    let _ = lost.send(true);
}

/// Revokes every lease in `owned` (on store close).
pub(crate) async fn revoke_all(owned: &LeaseSet, ops: &dyn LeaseOps) {
    let ids: Vec<LeaseId> = lock_set(owned).drain().collect();
    for id in ids {
        let _ = ops.revoke_lease(id).await;
    }
}
