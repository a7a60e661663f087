//! The [`Store`] trait: the contract every backend keeps.

use crate::error::Result;
use crate::kv::{Event, KVPair, TreeBatch};
use crate::lease::Lease;
use crate::options::{LockOptions, ReadOptions, WriteOptions};
use crate::recipes::lock::Lock;
use async_trait::async_trait;
use futures::stream::BoxStream;
use std::time::Duration;

/// The stream returned by [`Store::watch`].
pub type KeyWatch = BoxStream<'static, Result<Event>>;

/// The stream returned by [`Store::watch_tree`].
pub type TreeWatch = BoxStream<'static, Result<TreeBatch>>;

/// A key-value store for coordination data.
///
/// Get one with [`open`](crate::open); share it as `Arc<dyn Store>`. Every method takes `&self` and may be
/// called from many tasks at once.
///
/// # Contract
///
/// **Keys** are strings; a store opened with `prefix=/p` stores `k` as `/p/k` and hands back `k`. A key
/// with a trailing `/` is an ordinary key. A **directory** `d` is every key under `d/`; `d` and `d/` name
/// the same directory, and the directory key itself is not part of it. Keys that hold locks' waiting
/// queues (`<lock key>___lock/…`) are hidden from `list` and `watch_tree` of any directory above them.
///
/// **Revisions**: every change gets a revision from one counter that only grows; a [`KVPair`]'s
/// `last_index` is the revision of the key's last change and is the CAS token of the atomic operations.
///
/// **Errors** are semantic: a missing key is [`Error::KeyNotFound`](crate::Error::KeyNotFound) from `get`,
/// `delete`, `list`, `delete_tree` and `atomic_delete`, never from `exists`, `watch` or `watch_tree`; a
/// stale CAS token is [`KeyModified`](crate::Error::KeyModified); a create-only put of an existing key is
/// [`KeyExists`](crate::Error::KeyExists). After [`close`](Store::close) every call fails with
/// [`Closed`](crate::Error::Closed).
///
/// **Watches** deliver the current state first, then every change in revision order, with no gap between
/// the two and no event twice. Errors arrive in the stream. If the stream cannot continue without a gap (the
/// consumer lagged, or the backend compacted the history it needed after a reconnect) it yields
/// [`Lagged`](crate::Error::Lagged) or [`Compacted`](crate::Error::Compacted) and then the current state
/// again, so a consumer that applies items in order always converges. A stream ends only when dropped or
/// when the store is closed; dropping it cancels the watch.
///
/// **Leases** back TTLs, keep-alive keys and locks: a key attached to a lease disappears when the lease
/// ends (expiry, revoke, or its store closing).
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// The backend's name (`"embedded"`, `"etcd"`, `"antietcd"`), for messages.
    fn backend(&self) -> &'static str;

    /// Writes `value` at `key` and returns the stored pair (with its new `last_index`).
    async fn put(&self, key: &str, value: &[u8], options: Option<WriteOptions>) -> Result<KVPair>;

    /// Reads `key`; [`KeyNotFound`](crate::Error::KeyNotFound) if absent.
    async fn get(&self, key: &str, options: Option<ReadOptions>) -> Result<KVPair>;

    /// Deletes `key`; [`KeyNotFound`](crate::Error::KeyNotFound) if absent.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Whether `key` is present. Never fails because of absence.
    async fn exists(&self, key: &str, options: Option<ReadOptions>) -> Result<bool> {
        match self.get(key, options).await {
            Ok(_) => Ok(true),
            Err(crate::Error::KeyNotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Watches `key`, present or not.
    ///
    /// The first item is the current state: a `Put` event with the current pair, or a `Delete` event whose
    /// `last_index` is the revision at which the key was absent. Then one event per change, in order. See
    /// the trait docs for errors and resynchronisation.
    async fn watch(&self, key: &str, options: Option<ReadOptions>) -> Result<KeyWatch>;

    /// Watches the directory `dir`, existing or not.
    ///
    /// The first item is a snapshot ([`TreeBatch::snapshot`] = `true`) of what [`list`](Store::list) would
    /// return; then one batch per revision that changed keys in the directory, with typed events.
    async fn watch_tree(&self, dir: &str, options: Option<ReadOptions>) -> Result<TreeWatch>;

    /// Creates a lock on `key`. The lock is not held until [`Lock::lock`] succeeds.
    async fn new_lock(&self, key: &str, options: Option<LockOptions>) -> Result<Lock>;

    /// Every key under the directory `dir`, recursively, sorted by key, without the directory key itself
    /// and without lock queues. An existing key with nothing under it gives an empty list; a directory
    /// with nothing in it and no key of its name is [`KeyNotFound`](crate::Error::KeyNotFound).
    async fn list(&self, dir: &str, options: Option<ReadOptions>) -> Result<Vec<KVPair>>;

    /// Deletes the directory key `dir` and everything under it, atomically;
    /// [`KeyNotFound`](crate::Error::KeyNotFound) if there was nothing to delete.
    async fn delete_tree(&self, dir: &str) -> Result<()>;

    /// Compare-and-swap. With `previous = None`, creates `key` only if absent
    /// ([`KeyExists`](crate::Error::KeyExists) otherwise). With a previous pair, writes only if the key's
    /// `last_index` still equals `previous.last_index` ([`KeyModified`](crate::Error::KeyModified)
    /// otherwise, including when the key was deleted). Returns the new pair.
    async fn atomic_put(
        &self,
        key: &str,
        value: &[u8],
        previous: Option<&KVPair>,
        options: Option<WriteOptions>,
    ) -> Result<KVPair>;

    /// Deletes `key` only if its `last_index` still equals `previous.last_index`:
    /// [`KeyModified`](crate::Error::KeyModified) if it changed, [`KeyNotFound`](crate::Error::KeyNotFound)
    /// if it is gone, [`PreviousNotSpecified`](crate::Error::PreviousNotSpecified) if `previous` has no
    /// index.
    async fn atomic_delete(&self, key: &str, previous: &KVPair) -> Result<()>;

    /// Grants a lease of `ttl` (whole seconds, rounded up) that this store keeps alive until the returned
    /// handle is dropped or revoked, or the store closes. Attach keys with
    /// [`WriteOptions::with_lease`](crate::WriteOptions::with_lease).
    async fn grant_lease(&self, ttl: Duration) -> Result<Lease>;

    /// Closes the store: stops renewing, revokes this handle's leases (so its keep-alive keys and locks go
    /// at once), ends its watch streams. Later calls fail with [`Closed`](crate::Error::Closed).
    /// Idempotent.
    async fn close(&self) -> Result<()>;
}
