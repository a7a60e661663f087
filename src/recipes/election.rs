//! Leader election with etcd's election semantics, over any [`Store`].
//!
//! An election is a [`Lock`] whose key holds the leader's value, attached to the leader's lease: the first
//! candidate in the queue leads, the others wait in order; the leader key exists exactly while someone
//! leads. [`Election::leader`] reads it, [`Election::observe`] watches it, [`Leadership::proclaim`] changes
//! the value (only while still leading), [`Leadership::resign`] (or dropping the handle, or the leader's
//! store closing, or its lease expiring) hands over to the next candidate.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> valkeyrie::Result<()> {
//! use valkeyrie::Election;
//! let store = valkeyrie::open("embedded://").await?;
//! let election = Election::new(store.clone(), "services/scheduler/leader");
//! let leadership = election.campaign("10.0.0.7:9000").await?; // waits until elected
//! assert_eq!(election.leader().await?.unwrap().value, b"10.0.0.7:9000");
//! leadership.proclaim("10.0.0.7:9001").await?;
//! leadership.resign().await?;
//! assert!(election.leader().await?.is_none());
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use crate::kv::{EventKind, KVPair};
use crate::lease::Lost;
use crate::options::LockOptions;
use crate::recipes::lock::{Lock, LockHeld};
use crate::store::Store;
use futures::stream::{BoxStream, StreamExt};
use std::sync::Arc;
use std::time::Duration;

/// An election on one key.
#[derive(Debug, Clone)]
pub struct Election {
    store: Arc<dyn Store>,
    name: String,
    ttl: Duration,
}

/// This process's leadership, from [`Election::campaign`].
#[derive(Debug)]
pub struct Leadership {
    lock: Lock,
    held: LockHeld,
}

impl Election {
    /// An election on the key `name` (which holds the leader's value while someone leads). A leader that
    /// goes silent is replaced within 20 s; see [`Election::with_ttl`].
    pub fn new(store: Arc<dyn Store>, name: &str) -> Election {
        Election { store, name: name.to_owned(), ttl: Duration::from_secs(20) }
    }

    /// How long a silent leader keeps leading (whole seconds, at least one). Leaders renew every third.
    pub fn with_ttl(mut self, ttl: Duration) -> Election {
        self.ttl = ttl;
        self
    }

    /// The election's key.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until this candidate leads, then publishes `value` as the leader's value. Candidates are served
    /// in the order they campaigned. To stop waiting, drop the future.
    pub async fn campaign(&self, value: impl Into<Vec<u8>>) -> Result<Leadership> {
        let options = LockOptions::new().with_value(value).with_ttl(self.ttl).with_delete_on_unlock(true);
        let lock = self.store.new_lock(&self.name, Some(options)).await?;
        let held = lock.lock().await?;
        Ok(Leadership { lock, held })
    }

    /// The current leader's value, or `None` while nobody leads.
    pub async fn leader(&self) -> Result<Option<KVPair>> {
        match self.store.get(&self.name, None).await {
            Ok(pair) => Ok(Some(pair)),
            Err(Error::KeyNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The leader now, then every change: `Some(value)` when a leader is elected or proclaims a new value,
    /// `None` when nobody leads. Ends when the store closes.
    pub async fn observe(&self) -> Result<BoxStream<'static, Result<Option<KVPair>>>> {
        let events = self.store.watch(&self.name, None).await?;
        Ok(events
            .filter_map(|ev| async move {
                match ev {
                    Ok(ev) if ev.kind == EventKind::Put => Some(Ok(Some(ev.pair))),
                    Ok(_) => Some(Ok(None)),
                    // The current state follows these: nothing to tell the observer yet.
                    Err(Error::Lagged | Error::Compacted { .. }) => None,
                    Err(e) => Some(Err(e)),
                }
            })
            .boxed())
    }
}

impl Leadership {
    /// Grows with every new leader: a resource can refuse requests from a deposed leader that does not know
    /// it yet by remembering the largest token it has seen.
    pub fn fencing_token(&self) -> u64 {
        self.held.fencing_token()
    }

    /// Fires when this process stops leading without resigning (lease lost, store closed).
    pub fn lost(&self) -> Lost {
        self.held.lost()
    }

    /// Publishes a new leader value; [`Error::NotHeld`] if this process no longer leads.
    pub async fn proclaim(&self, value: impl AsRef<[u8]>) -> Result<()> {
        self.lock.proclaim(value.as_ref()).await
    }

    /// Steps down: the leader key goes and the next candidate leads.
    pub async fn resign(self) -> Result<()> {
        self.lock.unlock().await
    }
}
