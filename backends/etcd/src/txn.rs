//! Transactions: a typed builder for compare / then / else.
//!
//! ```
//! use etcd_json::{Compare, CompareOp, Txn, TxnOp};
//! let txn = Txn::new()
//!     .when([Compare::create_revision("/cfg", CompareOp::Equal, 0)])
//!     .and_then([TxnOp::put("/cfg", "v1", None)])
//!     .or_else([TxnOp::range("/cfg", None)]);
//! # let _ = txn;
//! ```

use serde::{Deserialize, Serialize};

use crate::codec::{b64, LeaseId};
use crate::kv::{
    DeleteOptions, DeleteRequest, DeleteResponse, PutOptions, PutRequest, PutResponse, RangeOptions,
    RangeRequest, RangeResponse, RangeSpec, ResponseHeader,
};

/// How a compare relates the stored value to the given one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompareOp {
    /// Stored == given.
    Equal,
    /// Stored > given.
    Greater,
    /// Stored < given.
    Less,
    /// Stored != given.
    NotEqual,
}

impl CompareOp {
    /// The wire name; `None` for `Equal`, which is the default and is omitted (antietcd
    /// rejects the explicit `"EQUAL"` but treats an absent result as equality).
    fn wire(self) -> Option<&'static str> {
        match self {
            CompareOp::Equal => None,
            CompareOp::Greater => Some("GREATER"),
            CompareOp::Less => Some("LESS"),
            CompareOp::NotEqual => Some("NOT_EQUAL"),
        }
    }
}

/// What a compare looks at, with the value to compare against.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CompareTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(Vec<u8>),
    Lease(LeaseId),
}

/// One condition of a transaction. On a missing key, version, create and mod revision
/// and lease read as 0, and every value compare is false.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    key: Vec<u8>,
    spec: RangeSpec,
    op: CompareOp,
    target: CompareTarget,
}

impl Compare {
    fn new(key: impl Into<Vec<u8>>, op: CompareOp, target: CompareTarget) -> Self {
        Compare { key: key.into(), spec: RangeSpec::Single, op, target }
    }

    /// Compares the key's version (number of writes since creation; 0 if absent).
    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: i64) -> Self {
        Self::new(key, op, CompareTarget::Version(version))
    }

    /// Compares the key's create revision (0 if absent: `Equal, 0` is "key absent").
    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Self {
        Self::new(key, op, CompareTarget::Create(revision))
    }

    /// Compares the key's mod revision.
    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Self {
        Self::new(key, op, CompareTarget::Mod(revision))
    }

    /// Compares the key's value, bytewise.
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Self::new(key, op, CompareTarget::Value(value.into()))
    }

    /// Compares the key's lease.
    pub fn lease(key: impl Into<Vec<u8>>, op: CompareOp, lease: LeaseId) -> Self {
        Self::new(key, op, CompareTarget::Lease(lease))
    }

    /// Makes the compare hold for every key in `[key, end)`.
    pub fn with_range_end(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.spec = RangeSpec::End(end.into());
        self
    }

    /// Makes the compare hold for every key with the key as prefix.
    pub fn with_prefix(mut self) -> Self {
        self.spec = RangeSpec::Prefix;
        self
    }

    fn to_wire(&self) -> WireCompare {
        let (key, range_end) = self.spec.resolve(self.key.clone());
        let mut c = WireCompare {
            key,
            range_end,
            result: self.op.wire(),
            target: "",
            version: None,
            create_revision: None,
            mod_revision: None,
            value: None,
            lease: None,
        };
        match &self.target {
            CompareTarget::Version(v) => {
                c.target = "VERSION";
                c.version = Some(*v);
            }
            CompareTarget::Create(v) => {
                c.target = "CREATE";
                c.create_revision = Some(*v);
            }
            CompareTarget::Mod(v) => {
                c.target = "MOD";
                c.mod_revision = Some(*v);
            }
            CompareTarget::Value(v) => {
                c.target = "VALUE";
                c.value = Some(crate::codec::b64_encode(v));
            }
            CompareTarget::Lease(v) => {
                c.target = "LEASE";
                c.lease = Some(*v);
            }
        }
        c
    }
}

#[derive(Debug, Serialize)]
struct WireCompare {
    #[serde(with = "b64")]
    key: Vec<u8>,
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    range_end: Vec<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'static str>,
    target: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    create_revision: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mod_revision: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<LeaseId>,
}

/// One operation of a transaction branch.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TxnOp {
    /// A range read.
    Range(Vec<u8>, RangeOptions),
    /// A put.
    Put(Vec<u8>, Vec<u8>, PutOptions),
    /// A delete.
    Delete(Vec<u8>, DeleteOptions),
    /// A nested transaction.
    Txn(Txn),
}

impl TxnOp {
    /// A range read.
    pub fn range(key: impl Into<Vec<u8>>, options: Option<RangeOptions>) -> Self {
        TxnOp::Range(key.into(), options.unwrap_or_default())
    }

    /// A put.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, options: Option<PutOptions>) -> Self {
        TxnOp::Put(key.into(), value.into(), options.unwrap_or_default())
    }

    /// A delete.
    pub fn delete(key: impl Into<Vec<u8>>, options: Option<DeleteOptions>) -> Self {
        TxnOp::Delete(key.into(), options.unwrap_or_default())
    }

    /// A nested transaction.
    pub fn txn(txn: Txn) -> Self {
        TxnOp::Txn(txn)
    }

    fn to_wire(&self) -> WireOp {
        match self {
            TxnOp::Range(k, o) => WireOp::Range(o.to_wire(k.clone())),
            TxnOp::Put(k, v, o) => WireOp::Put(o.to_wire(k.clone(), v.clone())),
            TxnOp::Delete(k, o) => WireOp::Delete(o.to_wire(k.clone())),
            TxnOp::Txn(t) => WireOp::Txn(t.to_wire()),
        }
    }
}

#[derive(Debug, Serialize)]
enum WireOp {
    #[serde(rename = "request_range")]
    Range(RangeRequest),
    #[serde(rename = "request_put")]
    Put(PutRequest),
    #[serde(rename = "request_delete_range")]
    Delete(DeleteRequest),
    #[serde(rename = "request_txn")]
    Txn(WireTxn),
}

/// A transaction: if every compare holds, run `and_then`'s ops, else `or_else`'s.
#[derive(Debug, Clone, Default)]
pub struct Txn {
    compare: Vec<Compare>,
    success: Vec<TxnOp>,
    failure: Vec<TxnOp>,
}

impl Txn {
    /// An empty transaction (no compares: always succeeds).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds compares (all must hold).
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compare.extend(compares);
        self
    }

    /// Adds ops run when the compares hold.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success.extend(ops);
        self
    }

    /// Adds ops run when a compare fails.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure.extend(ops);
        self
    }

    pub(crate) fn to_wire(&self) -> WireTxn {
        WireTxn {
            compare: self.compare.iter().map(Compare::to_wire).collect(),
            success: self.success.iter().map(TxnOp::to_wire).collect(),
            failure: self.failure.iter().map(TxnOp::to_wire).collect(),
        }
    }
}

/// The wire form of a transaction.
#[derive(Debug, Serialize)]
pub(crate) struct WireTxn {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    compare: Vec<WireCompare>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    success: Vec<WireOp>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    failure: Vec<WireOp>,
}

/// The reply to a transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct TxnResponse {
    /// The reply header.
    #[serde(default)]
    pub header: ResponseHeader,
    /// Whether the compares held (and `and_then` ran).
    #[serde(default)]
    pub succeeded: bool,
    /// One reply per op of the branch that ran, in order.
    #[serde(default)]
    pub responses: Vec<TxnOpResponse>,
}

/// The reply to one op of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub enum TxnOpResponse {
    /// A range's reply.
    #[serde(rename = "response_range")]
    Range(RangeResponse),
    /// A put's reply.
    #[serde(rename = "response_put")]
    Put(PutResponse),
    /// A delete's reply.
    #[serde(rename = "response_delete_range")]
    Delete(DeleteResponse),
    /// A nested transaction's reply.
    #[serde(rename = "response_txn")]
    Txn(TxnResponse),
}

impl TxnOpResponse {
    /// The range reply, if this is one.
    pub fn as_range(&self) -> Option<&RangeResponse> {
        match self {
            TxnOpResponse::Range(r) => Some(r),
            _ => None,
        }
    }

    /// The put reply, if this is one.
    pub fn as_put(&self) -> Option<&PutResponse> {
        match self {
            TxnOpResponse::Put(r) => Some(r),
            _ => None,
        }
    }

    /// The delete reply, if this is one.
    pub fn as_delete(&self) -> Option<&DeleteResponse> {
        match self {
            TxnOpResponse::Delete(r) => Some(r),
            _ => None,
        }
    }

    /// The nested transaction reply, if this is one.
    pub fn as_txn(&self) -> Option<&TxnResponse> {
        match self {
            TxnOpResponse::Txn(r) => Some(r),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The builder produces the gateway's JSON, omitting `EQUAL`.
    #[test]
    fn wire_shape() {
        let txn = Txn::new()
            .when([
                Compare::create_revision("k", CompareOp::Equal, 0),
                Compare::value("k", CompareOp::NotEqual, "v"),
            ])
            .and_then([TxnOp::put("k", "v", None)])
            .or_else([TxnOp::txn(Txn::new().and_then([TxnOp::delete("k", None)]))]);
        let json = serde_json::to_value(txn.to_wire()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "compare": [
                    {"key": "aw==", "target": "CREATE", "create_revision": 0},
                    {"key": "aw==", "target": "VALUE", "result": "NOT_EQUAL", "value": "dg=="}
                ],
                "success": [{"request_put": {"key": "aw==", "value": "dg=="}}],
                "failure": [{"request_txn": {"success": [{"request_delete_range": {"key": "aw=="}}]}}]
            })
        );
    }

    /// A captured etcd reply decodes, including the absent `succeeded` of a failed txn.
    #[test]
    fn decodes_replies() {
        let ok: TxnResponse = serde_json::from_str(
            r#"{"header":{"revision":"19"},"succeeded":true,"responses":[
            {"response_put":{"header":{"revision":"19"},"prev_kv":{"key":"L3Qvaw==","create_revision":"18","mod_revision":"18","version":"1","value":"djE="}}},
            {"response_range":{"header":{"revision":"19"},"kvs":[{"key":"L3Qvaw==","mod_revision":"19","value":"djI="}],"count":"1"}},
            {"response_delete_range":{"header":{"revision":"19"}}},
            {"response_txn":{"header":{},"succeeded":true}}]}"#,
        )
        .unwrap();
        assert!(ok.succeeded);
        assert_eq!(ok.responses.len(), 4);
        let prev = ok.responses[0].as_put().and_then(|p| p.prev_kv.as_ref());
        assert_eq!(prev.map(|kv| kv.value.as_slice()), Some(&b"v1"[..]));
        let failed: TxnResponse = serde_json::from_str(r#"{"header":{"revision":"20"}}"#).unwrap();
        assert!(!failed.succeeded);
        assert!(failed.responses.is_empty());
    }
}
