//! The JSON wire format of antietcd 1.3.1 (and etcd's gateway spellings): decoding requests into engine
//! types and encoding engine results.
//!
//! Decoding is lenient where antietcd and etcd differ and accepting both costs nothing: snake_case and
//! lowerCamelCase field names, integers as JSON numbers or strings, enums as names or numbers,
//! `result: "EQUAL"`. Every malformed field is an [`ApiError`] (400 unless said otherwise) naming the field.
//! Encoding follows antietcd: numeric revisions, lease ids as 16 hex digits, base64 keys and values (or raw
//! strings with `use_base64` off), plus etcd's `create_revision`, `version`, `count` and `more`.

use crate::types::*;
use base64::Engine as _;
use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{Map, Value};

/// An API failure: an HTTP status and a one-line message (sent as `text/plain`, with a newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }

    pub(crate) fn bad(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// The status and message of an engine error, as antietcd words them where it has one.
    pub(crate) fn engine(e: crate::Error) -> Self {
        use crate::Error as E;
        let status = match &e {
            E::Closed => return ApiError::new(StatusCode::BAD_GATEWAY, "Server is stopping"),
            E::HistoricalRead { .. } => StatusCode::NOT_IMPLEMENTED,
            E::NoRuntime => StatusCode::INTERNAL_SERVER_ERROR,
            // The write-ahead log failed: writes are refused until a restart.
            E::Journal(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.to_string())
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// How keys and values travel: base64 (antietcd's default) or raw strings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Codec {
    pub(crate) base64: bool,
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Field `name` (or its lowerCamel spelling `alt`) of `obj`; JSON `null` counts as absent.
pub(crate) fn field<'a>(obj: &'a Map<String, Value>, name: &str, alt: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| if alt.is_empty() { None } else { obj.get(alt) }).filter(|v| !v.is_null())
}

/// `v` as an object, or an error naming `what`.
pub(crate) fn object<'a>(v: &'a Value, what: &str) -> ApiResult<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| ApiError::bad(format!("{what} should be a JSON object")))
}

/// JavaScript truthiness, which is how antietcd reads its boolean fields.
pub(crate) fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

/// An int64 sent as a JSON number or a decimal string (etcd's gateway sends strings); absent is 0.
pub(crate) fn int(v: Option<&Value>, name: &str) -> ApiResult<i64> {
    match v {
        None => Ok(0),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18).map(|f| f as i64))
            .ok_or_else(|| ApiError::bad(format!("{name} should be an integer"))),
        Some(Value::String(s)) if s.is_empty() => Ok(0),
        Some(Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| ApiError::bad(format!("{name} should be an integer, not {s:?}"))),
        Some(_) => Err(ApiError::bad(format!("{name} should be an integer"))),
    }
}

/// A lease id: antietcd's 16 hex digits, or etcd's decimal int64 (number or string); 0 or absent is none.
pub(crate) fn lease_id(v: Option<&Value>, name: &str) -> ApiResult<Option<LeaseId>> {
    let id = match v {
        None => return Ok(None),
        Some(Value::String(s)) if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(s, 16).map_err(|_| ApiError::bad(format!("bad {name}: {s:?}")))? as i64
        }
        Some(Value::String(s)) if s.is_empty() => 0,
        Some(Value::String(s)) => match s.parse::<i64>() {
            Ok(n) => n,
            Err(_) => match u64::from_str_radix(s, 16) {
                // antietcd ids whose leading zeros were dropped by some client.
                Ok(n) if s.len() < 16 => n as i64,
                _ => {
                    return Err(ApiError::bad(format!(
                        "bad {name}: {s:?} (expected 16 hex digits or an integer)"
                    )))
                }
            },
        },
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|u| u as i64))
            .ok_or_else(|| ApiError::bad(format!("bad {name}: {n}")))?,
        Some(other) => return Err(ApiError::bad(format!("bad {name}: {other} (expected a string)"))),
    };
    Ok((id != 0).then_some(LeaseId(id)))
}

/// Sort order and target enums (etcd's names or numbers).
fn enum_value(v: Option<&Value>, name: &str, names: &[&str]) -> ApiResult<usize> {
    match v {
        None => Ok(0),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|n| n as usize)
            .filter(|n| *n < names.len())
            .ok_or_else(|| ApiError::bad(format!("unknown value {n} for {name}"))),
        Some(Value::String(s)) if s.is_empty() => Ok(0),
        Some(Value::String(s)) => names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(s))
            .or_else(|| s.parse::<usize>().ok().filter(|n| *n < names.len()))
            .ok_or_else(|| ApiError::bad(format!("unknown value {s:?} for {name}"))),
        Some(other) => Err(ApiError::bad(format!("unknown value {other} for {name}"))),
    }
}

impl Codec {
    /// A key, value or range end: a base64 string (or a raw string with `use_base64` off).
    pub(crate) fn bytes(&self, v: Option<&Value>, name: &str) -> ApiResult<Option<Bytes>> {
        match v {
            None => Ok(None),
            Some(Value::String(s)) => {
                if self.base64 {
                    B64.decode(s.as_bytes())
                        .map(|b| Some(Bytes::from(b)))
                        .map_err(|e| ApiError::bad(format!("{name} is not valid base64: {e}")))
                } else {
                    Ok(Some(Bytes::copy_from_slice(s.as_bytes())))
                }
            }
            Some(other) => Err(ApiError::bad(format!("{name} should be a string, not {}", type_name(other)))),
        }
    }

    /// The wire form of a key or value.
    pub(crate) fn encode(&self, b: &[u8]) -> Value {
        Value::String(self.encode_string(b))
    }

    pub(crate) fn encode_string(&self, b: &[u8]) -> String {
        if self.base64 {
            B64.encode(b)
        } else {
            String::from_utf8_lossy(b).into_owned()
        }
    }

    /// `key` + `range_end` of a request object as an engine range. antietcd's forms: `key` alone is one
    /// key; `key: ""` with a `range_end` is everything; otherwise etcd's `[key, range_end)` (which is what
    /// antietcd's directory ranges `/dir/`..`/dir0` mean too).
    pub(crate) fn range(&self, obj: &Map<String, Value>) -> ApiResult<KeyRange> {
        let key =
            self.bytes(field(obj, "key", ""), "key")?.ok_or_else(|| ApiError::bad("key is not provided"))?;
        let end = self.bytes(field(obj, "range_end", "rangeEnd"), "range_end")?;
        Ok(match end {
            None => KeyRange::key(key),
            Some(end) if end.is_empty() => KeyRange::key(key),
            Some(_) if key.is_empty() => KeyRange::all(),
            Some(end) => KeyRange::between(key, end),
        })
    }

    pub(crate) fn range_request(&self, obj: &Map<String, Value>) -> ApiResult<RangeRequest> {
        const ORDERS: [&str; 3] = ["NONE", "ASCEND", "DESCEND"];
        const TARGETS: [&str; 5] = ["KEY", "VERSION", "CREATE", "MOD", "VALUE"];
        let limit = int(field(obj, "limit", ""), "limit")?;
        let order = enum_value(field(obj, "sort_order", "sortOrder"), "sort_order", &ORDERS)?;
        let target = enum_value(field(obj, "sort_target", "sortTarget"), "sort_target", &TARGETS)?;
        Ok(RangeRequest {
            range: self.range(obj)?,
            limit: usize::try_from(limit).unwrap_or(0),
            revision: int(field(obj, "revision", ""), "revision")?,
            sort_order: [SortOrder::None, SortOrder::Ascend, SortOrder::Descend][order],
            sort_target: [
                SortTarget::Key,
                SortTarget::Version,
                SortTarget::Create,
                SortTarget::Mod,
                SortTarget::Value,
            ][target],
            keys_only: truthy(field(obj, "keys_only", "keysOnly")),
            count_only: truthy(field(obj, "count_only", "countOnly")),
            min_mod_revision: int(field(obj, "min_mod_revision", "minModRevision"), "min_mod_revision")?,
            max_mod_revision: int(field(obj, "max_mod_revision", "maxModRevision"), "max_mod_revision")?,
            min_create_revision: int(
                field(obj, "min_create_revision", "minCreateRevision"),
                "min_create_revision",
            )?,
            max_create_revision: int(
                field(obj, "max_create_revision", "maxCreateRevision"),
                "max_create_revision",
            )?,
        })
    }

    pub(crate) fn put_request(&self, obj: &Map<String, Value>) -> ApiResult<PutRequest> {
        let key =
            self.bytes(field(obj, "key", ""), "key")?.ok_or_else(|| ApiError::bad("key is not provided"))?;
        Ok(PutRequest {
            key,
            value: self.bytes(field(obj, "value", ""), "value")?.unwrap_or_default(),
            lease: lease_id(field(obj, "lease", ""), "lease")?,
            prev_kv: truthy(field(obj, "prev_kv", "prevKv")),
            ignore_value: truthy(field(obj, "ignore_value", "ignoreValue")),
            ignore_lease: truthy(field(obj, "ignore_lease", "ignoreLease")),
        })
    }

    pub(crate) fn delete_request(&self, obj: &Map<String, Value>) -> ApiResult<DeleteRequest> {
        Ok(DeleteRequest { range: self.range(obj)?, prev_kv: truthy(field(obj, "prev_kv", "prevKv")) })
    }

    fn compare(&self, v: &Value) -> ApiResult<Compare> {
        const TARGETS: [&str; 5] = ["VERSION", "CREATE", "MOD", "VALUE", "LEASE"];
        const RESULTS: [&str; 4] = ["EQUAL", "GREATER", "LESS", "NOT_EQUAL"];
        let obj = object(v, "compare")?;
        let target = match field(obj, "target", "") {
            Some(Value::String(s)) => TARGETS.iter().position(|t| t.eq_ignore_ascii_case(s)),
            Some(Value::Number(n)) => n.as_u64().map(|n| n as usize).filter(|n| *n < TARGETS.len()),
            None => Some(0),
            Some(_) => None,
        }
        .ok_or_else(|| {
            let t = field(obj, "target", "").map(|v| v.to_string()).unwrap_or_default();
            ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                format!("Unsupported comparison target: {}", t.trim_matches('"')),
            )
        })?;
        let result = match field(obj, "result", "") {
            Some(Value::String(s)) if s.is_empty() => Some(0),
            Some(Value::String(s)) => RESULTS.iter().position(|t| t.eq_ignore_ascii_case(s)),
            Some(Value::Number(n)) => n.as_u64().map(|n| n as usize).filter(|n| *n < RESULTS.len()),
            None => Some(0),
            Some(_) => None,
        }
        .ok_or_else(|| {
            let r = field(obj, "result", "").map(|v| v.to_string()).unwrap_or_default();
            ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                format!("Unsupported comparison result: {}", r.trim_matches('"')),
            )
        })?;
        let target = match target {
            0 => CompareTarget::Version(int(field(obj, "version", ""), "version")?),
            1 => CompareTarget::Create(int(
                field(obj, "create_revision", "createRevision"),
                "create_revision",
            )?),
            2 => CompareTarget::Mod(int(field(obj, "mod_revision", "modRevision"), "mod_revision")?),
            3 => CompareTarget::Value(self.bytes(field(obj, "value", ""), "value")?.unwrap_or_default()),
            _ => CompareTarget::Lease(lease_id(field(obj, "lease", ""), "lease")?),
        };
        let result =
            [CompareResult::Equal, CompareResult::Greater, CompareResult::Less, CompareResult::NotEqual]
                [result];
        Ok(Compare { range: self.range(obj)?, result, target })
    }

    fn txn_op(&self, v: &Value, depth: usize) -> ApiResult<TxnOp> {
        let obj = object(v, "a txn operation")?;
        if let Some(p) = field(obj, "request_put", "requestPut") {
            return Ok(TxnOp::Put(self.put_request(object(p, "request_put")?)?));
        }
        if let Some(r) = field(obj, "request_range", "requestRange") {
            return Ok(TxnOp::Range(self.range_request(object(r, "request_range")?)?));
        }
        if let Some(d) = field(obj, "request_delete_range", "requestDeleteRange") {
            return Ok(TxnOp::Delete(self.delete_request(object(d, "request_delete_range")?)?));
        }
        if let Some(t) = field(obj, "request_txn", "requestTxn") {
            return Ok(TxnOp::Txn(self.txn_request(object(t, "request_txn")?, depth + 1)?));
        }
        Err(ApiError::bad(
            "a txn operation should have request_put, request_range, request_delete_range or request_txn",
        ))
    }

    pub(crate) fn txn_request(&self, obj: &Map<String, Value>, depth: usize) -> ApiResult<TxnRequest> {
        if depth > crate::MAX_TXN_DEPTH {
            return Err(ApiError::bad("transaction too large: nested too deeply"));
        }
        let list = |name: &str| -> ApiResult<&[Value]> {
            match field(obj, name, "") {
                None => Ok(&[]),
                Some(Value::Array(a)) => Ok(a.as_slice()),
                Some(_) => Err(ApiError::bad(format!("{name} should be an array"))),
            }
        };
        Ok(TxnRequest {
            compare: list("compare")?.iter().map(|c| self.compare(c)).collect::<ApiResult<_>>()?,
            success: list("success")?.iter().map(|o| self.txn_op(o, depth)).collect::<ApiResult<_>>()?,
            failure: list("failure")?.iter().map(|o| self.txn_op(o, depth)).collect::<ApiResult<_>>()?,
        })
    }

    /// A key-value as antietcd sends it, plus etcd's `create_revision` and `version`.
    pub(crate) fn kv(&self, kv: &KeyValue, keys_only: bool) -> Value {
        let mut m = Map::with_capacity(6);
        m.insert("key".into(), self.encode(&kv.key));
        if !keys_only {
            m.insert("value".into(), self.encode(&kv.value));
        }
        m.insert("mod_revision".into(), kv.mod_revision.into());
        m.insert("create_revision".into(), kv.create_revision.into());
        m.insert("version".into(), kv.version.into());
        if let Some(l) = kv.lease {
            m.insert("lease".into(), l.to_string().into());
        }
        Value::Object(m)
    }

    /// A range result without its header (the form nested in txn responses).
    pub(crate) fn range_body(&self, r: &RangeResponse, keys_only: bool) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("kvs".into(), Value::Array(r.kvs.iter().map(|kv| self.kv(kv, keys_only)).collect()));
        m.insert("count".into(), r.count.into());
        if r.more {
            m.insert("more".into(), true.into());
        }
        m
    }

    pub(crate) fn put_body(&self, r: &PutResponse) -> Map<String, Value> {
        let mut m = Map::new();
        if let Some(p) = &r.prev_kv {
            m.insert("prev_kv".into(), self.kv(p, false));
        }
        m
    }

    pub(crate) fn delete_body(&self, r: &DeleteResponse) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("deleted".into(), r.deleted.into());
        if !r.prev_kvs.is_empty() {
            m.insert(
                "prev_kvs".into(),
                Value::Array(r.prev_kvs.iter().map(|kv| self.kv(kv, false)).collect()),
            );
        }
        m
    }

    /// A txn result; `req` is the request, for each range's `keys_only`.
    pub(crate) fn txn_body(&self, req: &TxnRequest, r: &TxnResponse) -> Map<String, Value> {
        let ops = if r.succeeded { &req.success } else { &req.failure };
        let responses = r
            .responses
            .iter()
            .zip(ops)
            .map(|(resp, op)| {
                let (name, body) = match (resp, op) {
                    (TxnOpResponse::Range(rr), TxnOp::Range(q)) => {
                        ("response_range", self.range_body(rr, q.keys_only))
                    }
                    (TxnOpResponse::Range(rr), _) => ("response_range", self.range_body(rr, false)),
                    (TxnOpResponse::Put(p), _) => ("response_put", self.put_body(p)),
                    (TxnOpResponse::Delete(d), _) => ("response_delete_range", self.delete_body(d)),
                    (TxnOpResponse::Txn(t), TxnOp::Txn(q)) => ("response_txn", self.txn_body(q, t)),
                    (TxnOpResponse::Txn(t), _) => ("response_txn", self.txn_body(&TxnRequest::default(), t)),
                };
                let mut m = Map::with_capacity(1);
                m.insert(name.into(), Value::Object(body));
                Value::Object(m)
            })
            .collect();
        let mut m = Map::new();
        m.insert("succeeded".into(), r.succeeded.into());
        m.insert("responses".into(), Value::Array(responses));
        m
    }

    /// Appends `s` (already a valid JSON string body: base64, or raw text escaped) as a JSON string.
    fn push_str_json(&self, out: &mut String, b: &[u8]) {
        if self.base64 {
            out.push('"');
            B64.encode_string(b, out);
            out.push('"');
        } else {
            out.push_str(&Value::String(String::from_utf8_lossy(b).into_owned()).to_string());
        }
    }

    /// [`Codec::kv`] written straight into `out`, fields in the same (sorted) order.
    fn push_kv(&self, out: &mut String, kv: &KeyValue, keys_only: bool) {
        use std::fmt::Write as _;
        let _ = write!(out, "{{\"create_revision\":{},\"key\":", kv.create_revision);
        self.push_str_json(out, &kv.key);
        if let Some(l) = kv.lease {
            let _ = write!(out, ",\"lease\":\"{l}\"");
        }
        let _ = write!(out, ",\"mod_revision\":{}", kv.mod_revision);
        if !keys_only {
            out.push_str(",\"value\":");
            self.push_str_json(out, &kv.value);
        }
        let _ = write!(out, ",\"version\":{}}}", kv.version);
    }

    /// `with_header(r.revision, range_body(r, keys_only))` as text, written directly (the hot read path):
    /// the same bytes.
    pub(crate) fn write_range(&self, out: &mut String, r: &RangeResponse, keys_only: bool) {
        use std::fmt::Write as _;
        let _ = write!(out, "{{\"count\":{},\"header\":{{\"revision\":{}}},\"kvs\":[", r.count, r.revision);
        for (i, kv) in r.kvs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            self.push_kv(out, kv, keys_only);
        }
        out.push(']');
        if r.more {
            out.push_str(",\"more\":true");
        }
        out.push('}');
    }

    /// `with_header(r.revision, put_body(r))` as text, written directly (the hot write path): the same
    /// bytes.
    pub(crate) fn write_put(&self, out: &mut String, r: &PutResponse) {
        use std::fmt::Write as _;
        let _ = write!(out, "{{\"header\":{{\"revision\":{}}}", r.revision);
        if let Some(p) = &r.prev_kv {
            out.push_str(",\"prev_kv\":");
            self.push_kv(out, p, false);
        }
        out.push('}');
    }

    /// [`Codec::event`] written straight into `out` (the watch fan-out's hot path): the same JSON.
    pub(crate) fn write_event(&self, out: &mut String, e: &Event) {
        use std::fmt::Write as _;
        match e.kind {
            EventKind::Put => {
                out.push_str("{\"type\":\"PUT\",\"kv\":");
                if e.prev_kv.is_none() {
                    self.push_kv(out, &e.kv, false);
                } else {
                    let mut kv = String::new();
                    self.push_kv(&mut kv, &e.kv, false);
                    kv.pop();
                    out.push_str(&kv);
                }
            }
            EventKind::Delete => {
                out.push_str("{\"type\":\"DELETE\",\"kv\":{\"key\":");
                self.push_str_json(out, &e.kv.key);
                let _ = write!(out, ",\"mod_revision\":{}", e.kv.mod_revision);
                if e.prev_kv.is_none() {
                    out.push('}');
                }
            }
        }
        if let Some(prev) = &e.prev_kv {
            out.push_str(",\"prev_kv\":");
            self.push_kv(out, prev, false);
            out.push('}');
        }
        out.push('}');
    }

    /// One watch event as antietcd sends it: `{type, kv}`; a delete's kv has `key` and `mod_revision`.
    pub(crate) fn event(&self, e: &Event) -> Value {
        let mut kv = match e.kind {
            EventKind::Put => self.kv(&e.kv, false),
            EventKind::Delete => {
                let mut m = Map::with_capacity(2);
                m.insert("key".into(), self.encode(&e.kv.key));
                m.insert("mod_revision".into(), e.kv.mod_revision.into());
                Value::Object(m)
            }
        };
        if let (Some(prev), Value::Object(m)) = (&e.prev_kv, &mut kv) {
            m.insert("prev_kv".into(), self.kv(prev, false));
        }
        let mut m = Map::with_capacity(2);
        m.insert("type".into(), (if e.kind == EventKind::Put { "PUT" } else { "DELETE" }).into());
        m.insert("kv".into(), kv);
        Value::Object(m)
    }
}

/// `{"header":{"revision":R}}` merged with `body`.
pub(crate) fn with_header(revision: Revision, mut body: Map<String, Value>) -> Value {
    body.insert("header".into(), header(revision));
    Value::Object(body)
}

pub(crate) fn header(revision: Revision) -> Value {
    let mut h = Map::with_capacity(1);
    h.insert("revision".into(), revision.into());
    Value::Object(h)
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample_kv(k: &[u8], v: &[u8], lease: Option<LeaseId>) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(k),
            value: Bytes::copy_from_slice(v),
            create_revision: 3,
            mod_revision: 7,
            version: 2,
            lease,
        }
    }

    /// The hand-written range and put encoders produce the very bytes of the Value-based ones (clients
    /// that compare text see no change), for every shape: empty, several keys, keys only, `more`, leases,
    /// text that needs escaping and bytes that are not UTF-8.
    #[test]
    fn write_range_and_put_match_value_bytes() {
        let kvs = vec![
            sample_kv(b"/a", b"1", None),
            sample_kv(b"/b\"\n", b"\xff\x00v", Some(LeaseId(0x1234_5678_9abc))),
            sample_kv(b"/c", b"", None),
        ];
        let ranges = [
            RangeResponse { revision: 0, kvs: Vec::new(), count: 0, more: false },
            RangeResponse { revision: 12, kvs: kvs.clone(), count: 3, more: false },
            RangeResponse { revision: 12, kvs: kvs[..1].to_vec(), count: 3, more: true },
        ];
        let puts = [
            PutResponse { revision: 9, prev_kv: None },
            PutResponse { revision: 9, prev_kv: Some(kvs[1].clone()) },
        ];
        for base64 in [true, false] {
            let codec = Codec { base64 };
            for r in &ranges {
                for keys_only in [false, true] {
                    let mut s = String::new();
                    codec.write_range(&mut s, r, keys_only);
                    assert_eq!(s, with_header(r.revision, codec.range_body(r, keys_only)).to_string());
                }
            }
            for r in &puts {
                let mut s = String::new();
                codec.write_put(&mut s, r);
                assert_eq!(s, with_header(r.revision, codec.put_body(r)).to_string());
            }
        }
    }

    /// The hand-written event encoder produces the same JSON as the Value-based one, for every shape.
    #[test]
    fn write_event_matches_event() {
        let kv = |k: &str, v: &str, lease: Option<LeaseId>| sample_kv(k.as_bytes(), v.as_bytes(), lease);
        let events = [
            Event { kind: EventKind::Put, kv: kv("/a", "1", None), prev_kv: None },
            Event {
                kind: EventKind::Put,
                kv: kv("/a", "\"q\"\n", Some(LeaseId(42))),
                prev_kv: Some(kv("/a", "0", None)),
            },
            Event { kind: EventKind::Delete, kv: kv("/d", "", None), prev_kv: None },
            Event { kind: EventKind::Delete, kv: kv("/d", "", None), prev_kv: Some(kv("/d", "x", None)) },
        ];
        for base64 in [true, false] {
            let codec = Codec { base64 };
            for e in &events {
                let mut s = String::new();
                codec.write_event(&mut s, e);
                let parsed: Value = serde_json::from_str(&s).unwrap();
                assert_eq!(parsed, codec.event(e), "{s}");
            }
        }
    }
}
