//! Service discovery over any [`Store`]: instances register under `<service>/<instance>` with a lease kept
//! alive while their [`Registration`] lives; [`discover`] streams the current set of instances.
//!
//! An instance that crashes stops renewing, and its key expires within the TTL; one that shuts down
//! cleanly ([`Registration::deregister`], dropping the handle, or closing its store) disappears at once.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> valkeyrie::Result<()> {
//! use futures::StreamExt;
//! use std::time::Duration;
//! let store = valkeyrie::open("embedded://").await?;
//! let me = valkeyrie::register(store.clone(), "services/api", "api-1", "10.0.0.1:80", Duration::from_secs(10)).await?;
//! let mut instances = valkeyrie::discover(&*store, "services/api").await?;
//! let now = instances.next().await.unwrap()?;
//! assert_eq!(now["api-1"], b"10.0.0.1:80");
//! me.deregister().await?;
//! assert!(instances.next().await.unwrap()?.is_empty());
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use crate::kv::EventKind;
use crate::lease::{Lease, Lost};
use crate::options::WriteOptions;
use crate::store::Store;
use futures::stream::{BoxStream, StreamExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The instances of a service: instance name → value (an address, a JSON document…).
pub type Instances = BTreeMap<String, Vec<u8>>;

/// An instance's registration. Dropping it deregisters the instance (in the background).
#[derive(Debug)]
pub struct Registration {
    store: Arc<dyn Store>,
    key: String,
    lease: Lease,
}

/// Registers `instance` of `service` with `value`, kept alive while the returned handle lives.
///
/// `instance` must be a non-empty name without `/`. `ttl` bounds how long a crashed instance stays listed.
pub async fn register(
    store: Arc<dyn Store>,
    service: &str,
    instance: &str,
    value: impl AsRef<[u8]>,
    ttl: Duration,
) -> Result<Registration> {
    if instance.is_empty() || instance.contains('/') {
        return Err(Error::InvalidKey {
            key: instance.to_owned(),
            reason: "an instance name is one path segment",
        });
    }
    let key = format!("{}/{instance}", service.trim_end_matches('/'));
    let lease = store.grant_lease(ttl).await?;
    store.put(&key, value.as_ref(), Some(WriteOptions::new().with_lease(lease.id()))).await?;
    Ok(Registration { store, key, lease })
}

impl Registration {
    /// The instance's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Changes the instance's value (keeping its lease).
    pub async fn update(&self, value: impl AsRef<[u8]>) -> Result<()> {
        let options = Some(WriteOptions::new().with_lease(self.lease.id()));
        self.store.put(&self.key, value.as_ref(), options).await.map(drop)
    }

    /// Fires if the registration is lost (its lease could not be renewed in time, or the store closed).
    pub fn lost(&self) -> Lost {
        self.lease.lost()
    }

    /// Removes the instance now.
    pub async fn deregister(self) -> Result<()> {
        self.lease.revoke().await
    }
}

/// The current instances of `service`, then the whole set again after every change (join, update, leave,
/// expiry). After a resynchronisation (a lagging consumer, a reconnect past compaction) the set is rebuilt
/// from a fresh snapshot, so it always converges on the truth. Only direct children of the service
/// directory are instances.
pub async fn discover(store: &dyn Store, service: &str) -> Result<BoxStream<'static, Result<Instances>>> {
    let dir = format!("{}/", service.trim_end_matches('/'));
    let batches = store.watch_tree(service, None).await?;
    let mut instances = Instances::new();
    Ok(batches
        .filter_map(move |batch| {
            let item = match batch {
                Ok(batch) => {
                    if batch.snapshot {
                        instances.clear();
                    }
                    for ev in batch.events {
                        let Some(name) = ev.pair.key.strip_prefix(dir.as_str()) else { continue };
                        if name.contains('/') {
                            continue;
                        }
                        match ev.kind {
                            EventKind::Put => instances.insert(name.to_owned(), ev.pair.value),
                            _ => instances.remove(name),
                        };
                    }
                    Some(Ok(instances.clone()))
                }
                Err(Error::Lagged | Error::Compacted { .. }) => None,
                Err(e) => Some(Err(e)),
            };
            futures::future::ready(item)
        })
        .boxed())
}
