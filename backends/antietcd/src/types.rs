//! Request and response types of the engine's in-process API.
//!
//! They follow etcd's v3 messages (`RangeRequest`, `PutRequest`, `Compare`, ...) closely, because both the
//! REST layer (which speaks antietcd's and etcd's JSON) and embedders map onto them. Keys and values are
//! [`Bytes`]: cloning one for a watcher or a response is a reference-count increment, not a copy.

use bytes::Bytes;
use std::fmt;

/// A global revision: every effective change to the key space increments it by one.
pub type Revision = i64;

/// The identifier of a lease. Positive; antietcd writes it as 16 lower-case hex digits on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    /// Formats the id the way antietcd 1.3.1 does: 16 lower-case hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One key as stored, with its revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, arbitrary bytes.
    pub key: Bytes,
    /// The value, arbitrary bytes. Empty for the key of a delete event.
    pub value: Bytes,
    /// Revision of the put that created the key (since its last delete). 0 for a delete event.
    pub create_revision: Revision,
    /// Revision of the last change of the key (for a delete event: the revision of the delete).
    pub mod_revision: Revision,
    /// Number of puts since creation (1 after creation); 0 for a delete event.
    pub version: i64,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// Whether an event wrote or removed its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The key was created or overwritten.
    Put,
    /// The key was deleted (explicitly, by a range delete or by its lease ending).
    Delete,
}

/// One change of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete only `key` and `mod_revision` are set.
    pub kv: KeyValue,
    /// The key before the change, if it existed. Delivered to watchers only when they ask for it.
    pub prev_kv: Option<KeyValue>,
}

/// All the events of one revision that a watcher's range selects, in the order they happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchBatch {
    /// The revision of these events.
    pub revision: Revision,
    /// The events, never empty.
    pub events: Vec<Event>,
}

/// A key or a range of keys, etcd style.
///
/// `range_end` empty selects the single key `key`; `range_end == [0]` selects every key `>= key`; otherwise
/// the half-open interval `[key, range_end)`. `key == [0]` with `range_end == [0]` selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRange {
    /// First key.
    pub key: Bytes,
    /// End of the range (exclusive); see the type's doc for the special values.
    pub range_end: Bytes,
}

impl KeyRange {
    /// The single key `key`.
    pub fn key(key: impl Into<Bytes>) -> Self {
        KeyRange { key: key.into(), range_end: Bytes::new() }
    }

    /// Every key that starts with `prefix` (every key at all when `prefix` is empty).
    pub fn prefix(prefix: impl Into<Bytes>) -> Self {
        let key: Bytes = prefix.into();
        if key.is_empty() {
            return KeyRange::all();
        }
        let range_end = prefix_end(&key);
        KeyRange { key, range_end }
    }

    /// Every key.
    pub fn all() -> Self {
        KeyRange { key: Bytes::from_static(b"\0"), range_end: Bytes::from_static(b"\0") }
    }

    /// `[start, end)`.
    pub fn between(start: impl Into<Bytes>, end: impl Into<Bytes>) -> Self {
        KeyRange { key: start.into(), range_end: end.into() }
    }

    /// Whether this selects a single key.
    pub fn is_single(&self) -> bool {
        self.range_end.is_empty()
    }

    /// Whether `k` lies in this range.
    pub fn contains(&self, k: &[u8]) -> bool {
        if self.range_end.is_empty() {
            return k == &self.key[..];
        }
        if &self.range_end[..] == b"\0" {
            return &self.key[..] == b"\0" || k >= &self.key[..];
        }
        k >= &self.key[..] && k < &self.range_end[..]
    }
}

/// The smallest key greater than every key that starts with `prefix` (etcd's `GetPrefixRangeEnd`):
/// the prefix with its last non-0xff byte incremented, or `[0]` (no end) if it is all 0xff.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xff {
            *last += 1;
            return Bytes::from(end);
        }
        end.pop();
    }
    Bytes::from_static(b"\0")
}

/// What to sort range results by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortTarget {
    /// By key (the natural order).
    #[default]
    Key,
    /// By version.
    Version,
    /// By create revision.
    Create,
    /// By mod revision.
    Mod,
    /// By value bytes.
    Value,
}

/// The direction of a sort.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// Unsorted: key order, which is what the engine produces anyway.
    #[default]
    None,
    /// Ascending.
    Ascend,
    /// Descending.
    Descend,
}

/// A read of one key or a range.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    /// What to read.
    pub range: KeyRange,
    /// Return at most this many keys (0: no limit). `count` and `more` still describe the whole range.
    pub limit: usize,
    /// Must be 0 or the current revision: the engine keeps no old versions of keys.
    pub revision: Revision,
    /// Sort order.
    pub sort_order: SortOrder,
    /// Sort target.
    pub sort_target: SortTarget,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Only keys whose mod revision is `>=` this (0: no bound).
    pub min_mod_revision: Revision,
    /// Only keys whose mod revision is `<=` this (0: no bound).
    pub max_mod_revision: Revision,
    /// Only keys whose create revision is `>=` this (0: no bound).
    pub min_create_revision: Revision,
    /// Only keys whose create revision is `<=` this (0: no bound).
    pub max_create_revision: Revision,
}

impl RangeRequest {
    /// A plain read of `range`.
    pub fn new(range: KeyRange) -> Self {
        RangeRequest { range, ..Default::default() }
    }
}

/// The result of a [`RangeRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    /// The store's revision when the read happened.
    pub revision: Revision,
    /// The keys, sorted by key unless a sort was asked for.
    pub kvs: Vec<KeyValue>,
    /// How many keys matched (before `limit`).
    pub count: usize,
    /// Whether `limit` left keys out.
    pub more: bool,
}

/// A write of one key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutRequest {
    /// The key; must not be empty.
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
    /// Attach the key to this lease (`None`: detach it from any lease).
    pub lease: Option<LeaseId>,
    /// Return the previous key-value.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

impl PutRequest {
    /// A plain put of `value` at `key`.
    pub fn new(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        PutRequest { key: key.into(), value: value.into(), ..Default::default() }
    }

    /// The same put, attached to `lease`.
    pub fn with_lease(mut self, lease: LeaseId) -> Self {
        self.lease = Some(lease);
        self
    }
}

/// The result of a [`PutRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutResponse {
    /// The revision of the put.
    pub revision: Revision,
    /// The previous key-value, if asked for and present.
    pub prev_kv: Option<KeyValue>,
}

/// A delete of one key or a range.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRequest {
    /// What to delete.
    pub range: KeyRange,
    /// Return the deleted key-values.
    pub prev_kv: bool,
}

/// The result of a [`DeleteRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteResponse {
    /// The store's revision after the delete.
    pub revision: Revision,
    /// How many keys were deleted.
    pub deleted: usize,
    /// The deleted key-values, if asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// What a [`Compare`] looks at, with the operand to compare against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's version (0 if absent).
    Version(i64),
    /// The key's create revision (0 if absent).
    Create(Revision),
    /// The key's mod revision (0 if absent).
    Mod(Revision),
    /// The key's value. As in etcd, a value compare on an absent key is false whatever the result.
    Value(Bytes),
    /// The key's lease (`None`: no lease or absent key).
    Lease(Option<LeaseId>),
}

/// How a [`Compare`] compares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CompareResult {
    /// `stored == operand`
    #[default]
    Equal,
    /// `stored > operand`
    Greater,
    /// `stored < operand`
    Less,
    /// `stored != operand`
    NotEqual,
}

/// One condition of a transaction, evaluated against the state before the transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    /// The key (or keys: with a non-empty `range_end`, every key in the range must satisfy it).
    pub range: KeyRange,
    /// The comparison.
    pub result: CompareResult,
    /// What is compared, with the operand.
    pub target: CompareTarget,
}

impl Compare {
    /// A compare on a single key.
    pub fn new(key: impl Into<Bytes>, result: CompareResult, target: CompareTarget) -> Self {
        Compare { range: KeyRange::key(key), result, target }
    }
}

/// One operation of a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    /// A read.
    Range(RangeRequest),
    /// A write.
    Put(PutRequest),
    /// A delete.
    Delete(DeleteRequest),
    /// A nested transaction.
    Txn(TxnRequest),
}

/// The result of one [`TxnOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOpResponse {
    /// Of a read.
    Range(RangeResponse),
    /// Of a write.
    Put(PutResponse),
    /// Of a delete.
    Delete(DeleteResponse),
    /// Of a nested transaction.
    Txn(TxnResponse),
}

/// An all-or-nothing transaction: if every compare holds, run `success`, else `failure`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRequest {
    /// The conditions.
    pub compare: Vec<Compare>,
    /// Operations run when every compare holds, in order (later ones see earlier ones' effects).
    pub success: Vec<TxnOp>,
    /// Operations run otherwise.
    pub failure: Vec<TxnOp>,
}

/// The result of a [`TxnRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnResponse {
    /// The store's revision after the transaction.
    pub revision: Revision,
    /// Whether every compare held.
    pub succeeded: bool,
    /// One response per operation of the branch that ran.
    pub responses: Vec<TxnOpResponse>,
}

/// A granted lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    /// Its id.
    pub id: LeaseId,
    /// Its time to live in seconds.
    pub ttl: i64,
}

/// What [`Engine::lease_time_to_live`](crate::Engine::lease_time_to_live) tells about a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Its id.
    pub id: LeaseId,
    /// The time to live it was granted, in seconds.
    pub granted_ttl: i64,
    /// Seconds left before it expires (rounded up).
    pub ttl: i64,
    /// The keys attached to it, if asked for.
    pub keys: Vec<Bytes>,
}

/// A request to watch a key or a range.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchRequest {
    /// What to watch.
    pub range: KeyRange,
    /// Deliver history from this revision on (0: only changes after now). Must not be compacted.
    pub start_revision: Revision,
    /// Include each event's previous key-value.
    pub prev_kv: bool,
    /// Leave out put events.
    pub no_put: bool,
    /// Leave out delete events.
    pub no_delete: bool,
}

/// A summary of the engine's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Current revision.
    pub revision: Revision,
    /// Revisions before this one are compacted.
    pub compact_revision: Revision,
    /// Number of live keys.
    pub keys: usize,
    /// Number of live leases.
    pub leases: usize,
    /// Number of registered watchers.
    pub watchers: usize,
}

/// One lease in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSnapshot {
    /// Its id.
    pub id: LeaseId,
    /// The time to live it was granted, in seconds.
    pub ttl: i64,
    /// Time left before it expires.
    pub remaining: std::time::Duration,
}

/// A consistent copy of the whole store at one revision: for dumps and persistence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The revision of this state.
    pub revision: Revision,
    /// The compact revision.
    pub compact_revision: Revision,
    /// Every live key, sorted by key.
    pub kvs: Vec<KeyValue>,
    /// Every live lease, sorted by id.
    pub leases: Vec<LeaseSnapshot>,
}
