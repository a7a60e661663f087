//! Options of writes, reads and locks. Each has a `Default` and `with_*` builders; passing `None` to a
//! call means the default.

use crate::kv::LeaseId;
use std::time::Duration;

/// How a value is written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteOptions {
    /// Expire the key after this long (rounded up to whole seconds, at least one). Backed by a lease.
    pub ttl: Option<Duration>,
    /// With `ttl`: keep the key alive while this store handle is open (the store renews a lease shared by
    /// its keep-alive keys of that TTL). The key disappears within `ttl` of the store closing or the
    /// process dying.
    pub keep_alive: bool,
    /// Attach the key to this lease (from [`Store::grant_lease`](crate::Store::grant_lease)): it lives as
    /// long as the lease. Takes precedence over `ttl`.
    pub lease: Option<LeaseId>,
}

impl WriteOptions {
    /// Default options: no expiry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Expire after `ttl`.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Keep alive while the store is open (with a `ttl`).
    pub fn with_keep_alive(mut self, keep_alive: bool) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// Attach to `lease`.
    pub fn with_lease(mut self, lease: LeaseId) -> Self {
        self.lease = Some(lease);
        self
    }
}

/// How a value is read.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadOptions {
    /// Linearizable read (the default). `false` allows a replica to answer from possibly stale local
    /// state (etcd's serializable read), which is cheaper.
    pub consistent: bool,
}

impl Default for ReadOptions {
    /// Consistent: unlike Go valkeyrie, where `&ReadOptions{}` silently meant "stale", the default is safe.
    fn default() -> Self {
        ReadOptions { consistent: true }
    }
}

impl ReadOptions {
    /// Default options: consistent.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set [`ReadOptions::consistent`].
    pub fn with_consistent(mut self, consistent: bool) -> Self {
        self.consistent = consistent;
        self
    }
}

/// How a lock behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockOptions {
    /// Written to the lock's key when it is acquired (default: empty).
    pub value: Vec<u8>,
    /// How long the lock survives its holder going silent (default 20 s; rounded up to whole seconds). The
    /// holder renews it every third of this.
    pub ttl: Duration,
    /// Delete the lock's key (the value) on unlock or when the lock is lost, instead of leaving it.
    pub delete_on_unlock: bool,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions { value: Vec::new(), ttl: Duration::from_secs(20), delete_on_unlock: false }
    }
}

impl LockOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set [`LockOptions::value`].
    pub fn with_value(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.value = value.into();
        self
    }

    /// Set [`LockOptions::ttl`].
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Set [`LockOptions::delete_on_unlock`].
    pub fn with_delete_on_unlock(mut self, delete: bool) -> Self {
        self.delete_on_unlock = delete;
        self
    }
}

/// Whole seconds for a TTL: rounded up, at least 1.
pub(crate) fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs().saturating_add(u64::from(ttl.subsec_nanos() > 0));
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TTLs round up to whole seconds, at least one, and saturate instead of overflowing.
    #[test]
    fn ttl_rounding() {
        assert_eq!(ttl_secs(Duration::ZERO), 1);
        assert_eq!(ttl_secs(Duration::from_millis(1)), 1);
        assert_eq!(ttl_secs(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_secs(Duration::from_secs(20)), 20);
        assert_eq!(ttl_secs(Duration::MAX), i64::MAX);
    }
}
