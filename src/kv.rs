//! The data a store hands back: key-value pairs and watch events.

/// A key, its value and its CAS token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct KVPair {
    /// The key, as the caller names it (without the store's `prefix`).
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// The revision of the key's last change: the CAS token for
    /// [`atomic_put`](crate::Store::atomic_put) and [`atomic_delete`](crate::Store::atomic_delete). Never 0
    /// for a pair read from a store. For the initial "absent" event of a watch, the revision at which the
    /// key was seen absent.
    pub last_index: u64,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

impl KVPair {
    /// A pair with the given key, value and index, and no lease.
    pub fn new(key: impl Into<String>, value: impl Into<Vec<u8>>, last_index: u64) -> Self {
        KVPair { key: key.into(), value: value.into(), last_index, lease: None }
    }

    /// The value as UTF-8 text, if it is.
    pub fn value_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }
}

/// The identifier of a lease on the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

/// Whether a watch event wrote or removed its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// The key was created or overwritten (or, as a watch's first event: the key is present).
    Put,
    /// The key was deleted or expired (or, as a watch's first event: the key is absent).
    Delete,
}

/// One change of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key and its new value; for a delete, the value is empty and `last_index` is the revision of the
    /// delete.
    pub pair: KVPair,
}

impl Event {
    /// An event.
    pub fn new(kind: EventKind, pair: KVPair) -> Self {
        Event { kind, pair }
    }
}

/// What a [`watch_tree`](crate::Store::watch_tree) stream yields: the directory's full content (first, and
/// again after a resynchronisation), or the changes of one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TreeBatch {
    /// The revision this batch brings the consumer to.
    pub revision: u64,
    /// `true`: `events` is the whole directory as `Put` events (forget what you had); `false`: `events` are
    /// the changes of revision `revision`, in order.
    pub snapshot: bool,
    /// The events.
    pub events: Vec<Event>,
}
