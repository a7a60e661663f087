//! The one error type of the facade: semantic variants that callers match on, backend detail kept as
//! the `source`.

use std::error::Error as StdError;

/// A boxed backend error, kept as the source of a semantic [`Error`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What a [`Store`](crate::Store) call can fail with.
///
/// Match on the meaning (`KeyNotFound`, `KeyModified`, ...); the backend's own error, where there is one,
/// is the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key (or, for `list` and `delete_tree`, the directory) does not exist.
    #[error("key not found in store: {key:?}")]
    KeyNotFound {
        /// The key as the caller named it.
        key: String,
    },
    /// An atomic operation's `previous` is stale: the key changed or was deleted since it was read.
    #[error("unable to complete atomic operation, key modified: {key:?}")]
    KeyModified {
        /// The key as the caller named it.
        key: String,
    },
    /// A create-only `atomic_put` (no `previous`) found the key present.
    #[error("previous K/V pair exists, cannot complete atomic operation: {key:?}")]
    KeyExists {
        /// The key as the caller named it.
        key: String,
    },
    /// An atomic operation's `previous` has no index (`last_index == 0`), so it cannot be a CAS token.
    #[error("previous K/V pair should be provided (with a non-zero last_index) for the atomic operation")]
    PreviousNotSpecified,
    /// The backend does not support this call (see `compat.md`).
    #[error("the call {call} is not supported by the {backend} backend")]
    CallNotSupported {
        /// The call.
        call: &'static str,
        /// The backend.
        backend: &'static str,
    },
    /// The backend could not be reached (every endpoint failed, or it timed out).
    #[error("{backend} not reachable")]
    NotReachable {
        /// The backend.
        backend: &'static str,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A lock could not be acquired or was lost while being acquired.
    #[error("error acquiring the lock {key:?}")]
    CannotLock {
        /// The lock's key.
        key: String,
        /// Why.
        #[source]
        source: Option<BoxError>,
    },
    /// The lock or leadership is not (or no longer) held by this handle.
    #[error("not held: {key:?} (lost, resigned, or taken over)")]
    NotHeld {
        /// The lock's or election's key.
        key: String,
    },
    /// A lease (from [`Store::grant_lease`](crate::Store::grant_lease) or a lock) no longer exists.
    #[error("lease not found (expired or revoked)")]
    LeaseNotFound,
    /// A watch needs history that the backend has compacted. The stream re-sends the current state next.
    #[error("revision {requested} has been compacted (history starts at {compact_revision})")]
    Compacted {
        /// The revision needed.
        requested: u64,
        /// Where the backend's history starts.
        compact_revision: u64,
    },
    /// A watch consumer fell behind and events were dropped for it. The stream re-sends the current state
    /// next, so the consumer can resynchronise.
    #[error("watch consumer lagged behind; the current state follows")]
    Lagged,
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// The URL could not be parsed.
    #[error("invalid store URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The URL's scheme names no backend.
    #[error("unknown store URL scheme {scheme:?} (supported: {supported})")]
    UnknownScheme {
        /// The scheme.
        scheme: String,
        /// The schemes this build supports.
        supported: &'static str,
    },
    /// The URL's backend is not compiled in: enable the named cargo feature of `valkeyrie`.
    #[error("the {scheme}:// backend needs valkeyrie's cargo feature {feature:?}")]
    FeatureNotEnabled {
        /// The scheme.
        scheme: &'static str,
        /// The feature to enable.
        feature: &'static str,
    },
    /// A URL query parameter is not known to the backend.
    #[error("unknown parameter {name:?} for the {backend} backend")]
    UnknownParameter {
        /// The parameter.
        name: String,
        /// The backend.
        backend: &'static str,
    },
    /// A URL query parameter or an option has a value that cannot be used.
    #[error("invalid value {value:?} for {name}: {reason}")]
    InvalidParameter {
        /// The parameter or option.
        name: String,
        /// Its value.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The key cannot be stored (empty after the store's prefix is applied, or too large).
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// Why.
        reason: &'static str,
    },
    /// Any other backend failure, with the backend's error as the source.
    #[error("{backend} backend error")]
    Backend {
        /// The backend.
        backend: &'static str,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    pub(crate) fn not_found(key: &str) -> Self {
        Error::KeyNotFound { key: key.to_owned() }
    }

    pub(crate) fn modified(key: &str) -> Self {
        Error::KeyModified { key: key.to_owned() }
    }

    pub(crate) fn exists(key: &str) -> Self {
        Error::KeyExists { key: key.to_owned() }
    }

    pub(crate) fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend { backend, source: source.into() }
    }

    /// Whether retrying the same call later may succeed (the backend was unreachable or busy).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::NotReachable { .. })
    }
}

/// `Result<T, Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
