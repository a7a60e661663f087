//! Key-value types: options and replies of range, put and delete.
//!
//! Options are plain builders (`RangeOptions::new().with_prefix().with_limit(10)`);
//! replies are decoded straight from the gateway's JSON, with every field defaulted
//! because etcd omits zero values.

use serde::{Deserialize, Serialize};

use crate::codec::{self, b64, id, int, is_false, is_no_lease, is_zero, LeaseId};

/// The header of every reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct ResponseHeader {
    /// The cluster's ID (0 for antietcd).
    #[serde(default, with = "id")]
    pub cluster_id: u64,
    /// The ID of the member that answered (0 for antietcd, whose member IDs are names).
    #[serde(default, with = "id")]
    pub member_id: u64,
    /// The store's revision when the request was served.
    #[serde(default, with = "int")]
    pub revision: i64,
    /// The raft term when the request was served.
    #[serde(default, with = "id")]
    pub raft_term: u64,
}

/// A key with its value and metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct KeyValue {
    /// The key.
    #[serde(default, with = "b64")]
    pub key: Vec<u8>,
    /// The value (empty with `keys_only`).
    #[serde(default, with = "b64")]
    pub value: Vec<u8>,
    /// The revision of the key's creation (0 on antietcd, which does not report it).
    #[serde(default, with = "int")]
    pub create_revision: i64,
    /// The revision of the key's last change.
    #[serde(default, with = "int")]
    pub mod_revision: i64,
    /// How many times the key was written since its creation (0 on antietcd).
    #[serde(default, with = "int")]
    pub version: i64,
    /// The lease attached to the key, or [`LeaseId::NONE`].
    #[serde(default)]
    pub lease: LeaseId,
}

impl KeyValue {
    /// The key as bytes.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The value as bytes.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// The key as UTF-8 text.
    pub fn key_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.key)
    }

    /// The value as UTF-8 text.
    pub fn value_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.value)
    }

    /// Splits into key and value.
    pub fn into_key_value(self) -> (Vec<u8>, Vec<u8>) {
        (self.key, self.value)
    }
}

/// The four range builders of an options type with a `spec: RangeSpec` field; `$what` is the verb that
/// opens each doc line ("Reads", "Deletes", "Watches").
macro_rules! range_builders {
    ($what:literal) => {
        #[doc = concat!($what, " the keys in `[key, end)`.")]
        pub fn with_range_end(mut self, end: impl Into<Vec<u8>>) -> Self {
            self.spec = RangeSpec::End(end.into());
            self
        }

        #[doc = concat!($what, " every key that starts with the key.")]
        pub fn with_prefix(mut self) -> Self {
            self.spec = RangeSpec::Prefix;
            self
        }

        #[doc = concat!($what, " every key greater than or equal to the key.")]
        pub fn with_from_key(mut self) -> Self {
            self.spec = RangeSpec::FromKey;
            self
        }

        #[doc = concat!($what, " every key in the store (the key is ignored).")]
        pub fn with_all_keys(mut self) -> Self {
            self.spec = RangeSpec::All;
            self
        }
    };
}
pub(crate) use range_builders;

/// Which keys a request covers, relative to its key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum RangeSpec {
    /// Only the key itself.
    #[default]
    Single,
    /// `[key, end)`.
    End(Vec<u8>),
    /// Every key that starts with the key.
    Prefix,
    /// Every key `>=` the key.
    FromKey,
    /// Every key (the key is ignored).
    All,
}

impl RangeSpec {
    /// The `(key, range_end)` pair to send; `range_end` is empty for a single key.
    pub(crate) fn resolve(&self, key: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
        match self {
            RangeSpec::Single => (key, Vec::new()),
            RangeSpec::End(end) => (key, end.clone()),
            RangeSpec::Prefix => {
                let end = codec::prefix_range_end(&key);
                (key, end)
            }
            RangeSpec::FromKey => (key, vec![0]),
            RangeSpec::All => (vec![0], vec![0]),
        }
    }
}

/// How range results are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SortOrder {
    /// Server default (by key, ascending).
    #[default]
    None,
    /// Ascending.
    Ascend,
    /// Descending.
    Descend,
}

/// What range results are ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value.
    Value,
}

/// Options of [`Client::range`](crate::Client::range).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RangeOptions {
    pub(crate) spec: RangeSpec,
    pub(crate) limit: i64,
    pub(crate) revision: i64,
    pub(crate) sort_order: SortOrder,
    pub(crate) sort_target: SortTarget,
    pub(crate) serializable: bool,
    pub(crate) keys_only: bool,
    pub(crate) count_only: bool,
    pub(crate) min_mod_revision: i64,
    pub(crate) max_mod_revision: i64,
    pub(crate) min_create_revision: i64,
    pub(crate) max_create_revision: i64,
}

impl RangeOptions {
    /// Reads the single key, at the latest revision.
    pub fn new() -> Self {
        Self::default()
    }

    range_builders!("Reads");

    /// Returns at most `limit` keys (0: no limit); `more` then says whether there were more.
    pub fn with_limit(mut self, limit: i64) -> Self {
        self.limit = limit;
        self
    }

    /// Reads at this past revision (0: the latest).
    pub fn with_revision(mut self, revision: i64) -> Self {
        self.revision = revision;
        self
    }

    /// Orders the results.
    pub fn with_sort(mut self, target: SortTarget, order: SortOrder) -> Self {
        self.sort_target = target;
        self.sort_order = order;
        self
    }

    /// Serves the read from the answering member's local data (may be stale, no quorum).
    pub fn with_serializable(mut self) -> Self {
        self.serializable = true;
        self
    }

    /// Returns keys without values.
    pub fn with_keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }

    /// Returns only the count of keys.
    pub fn with_count_only(mut self) -> Self {
        self.count_only = true;
        self
    }

    /// Keeps only keys modified at or after this revision.
    pub fn with_min_mod_revision(mut self, revision: i64) -> Self {
        self.min_mod_revision = revision;
        self
    }

    /// Keeps only keys modified at or before this revision.
    pub fn with_max_mod_revision(mut self, revision: i64) -> Self {
        self.max_mod_revision = revision;
        self
    }

    /// Keeps only keys created at or after this revision.
    pub fn with_min_create_revision(mut self, revision: i64) -> Self {
        self.min_create_revision = revision;
        self
    }

    /// Keeps only keys created at or before this revision.
    pub fn with_max_create_revision(mut self, revision: i64) -> Self {
        self.max_create_revision = revision;
        self
    }

    pub(crate) fn to_wire(&self, key: Vec<u8>) -> RangeRequest {
        let (key, range_end) = self.spec.resolve(key);
        RangeRequest {
            key,
            range_end,
            limit: self.limit,
            revision: self.revision,
            sort_order: match self.sort_order {
                SortOrder::None => None,
                SortOrder::Ascend => Some("ASCEND"),
                SortOrder::Descend => Some("DESCEND"),
            },
            sort_target: match self.sort_target {
                SortTarget::Key => None,
                SortTarget::Version => Some("VERSION"),
                SortTarget::Create => Some("CREATE"),
                SortTarget::Mod => Some("MOD"),
                SortTarget::Value => Some("VALUE"),
            },
            serializable: self.serializable,
            keys_only: self.keys_only,
            count_only: self.count_only,
            min_mod_revision: self.min_mod_revision,
            max_mod_revision: self.max_mod_revision,
            min_create_revision: self.min_create_revision,
            max_create_revision: self.max_create_revision,
        }
    }
}

/// The wire form of a range request.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RangeRequest {
    #[serde(with = "b64")]
    pub(crate) key: Vec<u8>,
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub(crate) range_end: Vec<u8>,
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) limit: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) revision: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sort_order: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sort_target: Option<&'static str>,
    #[serde(skip_serializing_if = "is_false")]
    pub(crate) serializable: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub(crate) keys_only: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub(crate) count_only: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) min_mod_revision: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) max_mod_revision: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) min_create_revision: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) max_create_revision: i64,
}

impl RangeRequest {
    /// Makes an antietcd reply look like etcd's: antietcd returns ranges in tree order,
    /// includes the directory key of a prefix, returns up to `limit + 1` keys and has no
    /// `count`. Filtering, sorting and truncating here gives callers etcd's semantics.
    pub(crate) fn normalise_antietcd_reply(&self, resp: &mut RangeResponse) {
        let end = if self.key.is_empty() && !self.range_end.is_empty() {
            // antietcd's "whole store" form.
            vec![0]
        } else {
            self.range_end.clone()
        };
        let (min_mod, max_mod) = (self.min_mod_revision, self.max_mod_revision);
        let in_count = |kv: &KeyValue| codec::in_range(&kv.key, &self.key, &end);
        resp.kvs.retain(in_count);
        // etcd's count ignores the mod revision filters: count before applying them.
        if resp.count == 0 {
            resp.count = resp.kvs.len() as i64;
        }
        resp.kvs.retain(|kv| {
            (min_mod == 0 || kv.mod_revision >= min_mod) && (max_mod == 0 || kv.mod_revision <= max_mod)
        });
        let key_of = |kv: &KeyValue| kv.key.clone();
        match self.sort_target {
            None | Some("KEY") => resp.kvs.sort_by_key(key_of),
            Some("VERSION") => resp.kvs.sort_by_key(|kv| kv.version),
            Some("CREATE") => resp.kvs.sort_by_key(|kv| kv.create_revision),
            Some("MOD") => resp.kvs.sort_by_key(|kv| kv.mod_revision),
            Some(_) => resp.kvs.sort_by(|a, b| a.value.cmp(&b.value)),
        }
        if self.sort_order == Some("DESCEND") {
            resp.kvs.reverse();
        }
        if self.limit > 0 && resp.kvs.len() as i64 > self.limit {
            resp.kvs.truncate(self.limit as usize);
            resp.more = true;
        }
        if self.count_only {
            resp.kvs.clear();
        }
    }
}

/// The reply to a range request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct RangeResponse {
    /// The reply header; `header.revision` is the store's current revision.
    #[serde(default)]
    pub header: ResponseHeader,
    /// The keys found.
    #[serde(default)]
    pub kvs: Vec<KeyValue>,
    /// Whether `limit` cut the result short.
    #[serde(default)]
    pub more: bool,
    /// How many keys are in the range (ignoring `limit` and the min/max filters).
    #[serde(default, with = "int")]
    pub count: i64,
}

impl RangeResponse {
    /// The keys found.
    pub fn kvs(&self) -> &[KeyValue] {
        &self.kvs
    }

    /// Takes the keys found.
    pub fn take_kvs(&mut self) -> Vec<KeyValue> {
        std::mem::take(&mut self.kvs)
    }
}

/// Options of [`Client::put`](crate::Client::put).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PutOptions {
    pub(crate) lease: LeaseId,
    pub(crate) prev_kv: bool,
    pub(crate) ignore_value: bool,
    pub(crate) ignore_lease: bool,
}

impl PutOptions {
    /// A plain put: no lease (an existing lease is detached), no previous value.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches the key to a lease.
    pub fn with_lease(mut self, lease: LeaseId) -> Self {
        self.lease = lease;
        self
    }

    /// Returns the previous key-value pair.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    /// Keeps the current value (the key must exist; send an empty value).
    pub fn with_ignore_value(mut self) -> Self {
        self.ignore_value = true;
        self
    }

    /// Keeps the current lease (do not set a lease too).
    pub fn with_ignore_lease(mut self) -> Self {
        self.ignore_lease = true;
        self
    }

    pub(crate) fn to_wire(&self, key: Vec<u8>, value: Vec<u8>) -> PutRequest {
        PutRequest {
            key,
            value,
            lease: self.lease,
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        }
    }
}

/// The wire form of a put request.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PutRequest {
    #[serde(with = "b64")]
    pub(crate) key: Vec<u8>,
    // Always sent, even empty: antietcd stores a missing value as "undefined".
    #[serde(with = "b64")]
    pub(crate) value: Vec<u8>,
    #[serde(skip_serializing_if = "is_no_lease")]
    pub(crate) lease: LeaseId,
    #[serde(skip_serializing_if = "is_false")]
    pub(crate) prev_kv: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub(crate) ignore_value: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub(crate) ignore_lease: bool,
}

/// The reply to a put.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct PutResponse {
    /// The reply header; `header.revision` is the revision of this write.
    #[serde(default)]
    pub header: ResponseHeader,
    /// The previous key-value pair, if `prev_kv` was asked for and the key existed.
    #[serde(default)]
    pub prev_kv: Option<KeyValue>,
}

/// Options of [`Client::delete_range`](crate::Client::delete_range).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DeleteOptions {
    pub(crate) spec: RangeSpec,
    pub(crate) prev_kv: bool,
}

impl DeleteOptions {
    /// Deletes the single key.
    pub fn new() -> Self {
        Self::default()
    }

    range_builders!("Deletes");

    /// Returns the deleted key-value pairs.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    pub(crate) fn to_wire(&self, key: Vec<u8>) -> DeleteRequest {
        let (key, range_end) = self.spec.resolve(key);
        DeleteRequest { key, range_end, prev_kv: self.prev_kv }
    }
}

/// The wire form of a delete request.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeleteRequest {
    #[serde(with = "b64")]
    pub(crate) key: Vec<u8>,
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub(crate) range_end: Vec<u8>,
    #[serde(skip_serializing_if = "is_false")]
    pub(crate) prev_kv: bool,
}

/// The reply to a delete.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct DeleteResponse {
    /// The reply header.
    #[serde(default)]
    pub header: ResponseHeader,
    /// How many keys were deleted.
    #[serde(default, with = "int")]
    pub deleted: i64,
    /// The deleted pairs, if `prev_kv` was asked for.
    #[serde(default)]
    pub prev_kvs: Vec<KeyValue>,
}

/// Rewrites a range for antietcd, which serves only "directory" ranges (`/dir/` to
/// `/dir0`) and the whole store (`key = ""`): any other range is widened to the whole
/// store, and the caller filters the result. Returns whether it widened.
pub(crate) fn antietcd_range(key: &mut Vec<u8>, range_end: &mut Vec<u8>) -> bool {
    if range_end.is_empty() || key.is_empty() {
        return false;
    }
    let directory = key.last() == Some(&b'/')
        && range_end.last() == Some(&b'0')
        && key.len() == range_end.len()
        && key[..key.len() - 1] == range_end[..range_end.len() - 1];
    if directory {
        return false;
    }
    key.clear();
    *range_end = vec![0];
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, mod_revision: i64) -> KeyValue {
        KeyValue { key: key.as_bytes().to_vec(), mod_revision, ..KeyValue::default() }
    }

    /// antietcd's unordered, over-wide, over-long reply is cut back to etcd's semantics.
    #[test]
    fn normalises_antietcd_ranges() {
        let request = RangeOptions::new()
            .with_prefix()
            .with_limit(2)
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_min_mod_revision(3)
            .to_wire(b"/d/".to_vec());
        let mut reply = RangeResponse {
            kvs: vec![kv("/d/b", 4), kv("/d", 9), kv("/d/a", 5), kv("/d/c", 6), kv("/d/old", 1), kv("/e", 7)],
            ..RangeResponse::default()
        };
        request.normalise_antietcd_reply(&mut reply);
        let keys: Vec<&[u8]> = reply.kvs.iter().map(|kv| kv.key.as_slice()).collect();
        assert_eq!(keys, vec![&b"/d/c"[..], b"/d/b"]);
        assert!(reply.more);
        assert_eq!(reply.count, 4);
    }

    /// Only directory ranges are sent to antietcd as they are.
    #[test]
    fn widens_non_directory_ranges() {
        let (mut k, mut e) = (b"/d/".to_vec(), b"/d0".to_vec());
        assert!(!antietcd_range(&mut k, &mut e));
        let (mut k, mut e) = (b"/d".to_vec(), b"/e".to_vec());
        assert!(antietcd_range(&mut k, &mut e));
        assert_eq!((k, e), (Vec::new(), vec![0]));
        let (mut k, mut e) = (b"/single".to_vec(), Vec::new());
        assert!(!antietcd_range(&mut k, &mut e));
    }
}
