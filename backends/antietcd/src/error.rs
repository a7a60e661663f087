//! The crate's error type: one variant per thing a caller may want to react to.

use crate::types::{LeaseId, Revision};

/// Everything the engine can refuse.
///
/// The REST layer maps each variant to an HTTP status and message (see its module docs); embedders match on
/// the variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The engine was closed; nothing more can be done with it.
    #[error("the engine is closed")]
    Closed,
    /// The request names a lease that does not exist (or has expired).
    #[error("unknown lease: {0}")]
    LeaseNotFound(LeaseId),
    /// A lease grant asked for an id that is already in use.
    #[error("lease already exists: {0}")]
    LeaseExists(LeaseId),
    /// A lease grant asked for a time to live outside `1..=`[`MAX_LEASE_TTL`](crate::MAX_LEASE_TTL).
    #[error("invalid lease TTL {0}: must be between 1 and {max} seconds", max = crate::MAX_LEASE_TTL)]
    InvalidTtl(i64),
    /// A put with `ignore_value` or `ignore_lease` named a key that does not exist.
    #[error("key not found")]
    KeyNotFound,
    /// The request needs history that compaction has dropped.
    #[error("required revision {requested} has been compacted (compacted up to {compact_revision})")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The store's compact revision: history starts there.
        compact_revision: Revision,
    },
    /// The request names a revision newer than the store's.
    #[error("required revision {requested} is a future revision (current revision is {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
        /// The current revision.
        current: Revision,
    },
    /// A read asked for an old revision; the engine keeps only the latest version of each key.
    #[error("reading at an old revision ({requested}, current {current}) is not supported")]
    HistoricalRead {
        /// The revision asked for.
        requested: Revision,
        /// The current revision.
        current: Revision,
    },
    /// A write named an empty key.
    #[error("key is not provided")]
    EmptyKey,
    /// A transaction nests deeper than [`MAX_TXN_DEPTH`](crate::MAX_TXN_DEPTH) or has more than
    /// [`MAX_TXN_OPS`](crate::MAX_TXN_OPS) operations.
    #[error("transaction too large: {0}")]
    TxnTooLarge(&'static str),
    /// The change could not be logged (the write-ahead log failed); it was not applied.
    #[error("the change could not be logged: {0}")]
    Journal(String),
    /// A change replicated by a cluster leader does not fit this node's state (it repeats or goes back in
    /// revisions): the node needs a resync.
    #[error("replication out of order: {0}")]
    Replication(String),
    /// The engine must be created inside a tokio runtime (it runs a lease-expiry task).
    #[error("the engine needs a tokio runtime")]
    NoRuntime,
}
