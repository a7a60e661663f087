//! The REST API: antietcd 1.3.1's request pipeline and handlers, plus `/health` and `/metrics`.
//!
//! Pipeline (antietcd's, section 2.1 of the spec): a websocket upgrade on any path goes to
//! [`crate::ws`]; `/health` and `/metrics` are served as etcd does; otherwise the body (at most
//! `max_body_bytes`, else 413) must be a JSON object (an empty body is `{}`), the path `/v3/a/b` names the
//! handler `a_b` and needs POST (405), and `/dump` takes any method. Errors are `text/plain` with the
//! message and a newline; engine errors map to antietcd's codes (400 bad request and unknown lease, 501
//! unsupported, 502 stopping, 503 persistence failure).

use crate::persist::PersistError;
use crate::server::Shared;
use crate::wire::{field, int, lease_id, with_header, ApiError, ApiResult};
use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{CONTENT_TYPE, UPGRADE};
use hyper::{Method, StatusCode};
use serde_json::{Map, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

const SUPPORTED: &str = "Supported APIs: /v3/kv/txn, /v3/kv/range, /v3/kv/put, /v3/kv/deleterange, \
/v3/lease/grant, /v3/lease/revoke, /v3/kv/lease/revoke, /v3/lease/keepalive, /v3/maintenance/status";

/// The APIs, in the order of the request counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    Txn,
    Range,
    Put,
    DeleteRange,
    LeaseGrant,
    LeaseRevoke,
    LeaseKeepalive,
    LeaseTimeToLive,
    LeaseLeases,
    Compaction,
    Status,
    Dump,
}

impl Api {
    pub(crate) const ALL: [Api; 12] = [
        Api::Txn,
        Api::Range,
        Api::Put,
        Api::DeleteRange,
        Api::LeaseGrant,
        Api::LeaseRevoke,
        Api::LeaseKeepalive,
        Api::LeaseTimeToLive,
        Api::LeaseLeases,
        Api::Compaction,
        Api::Status,
        Api::Dump,
    ];

    pub(crate) fn from_handler(name: &str) -> Option<Api> {
        Some(match name {
            "kv_txn" => Api::Txn,
            "kv_range" => Api::Range,
            "kv_put" => Api::Put,
            "kv_deleterange" => Api::DeleteRange,
            "lease_grant" => Api::LeaseGrant,
            "lease_revoke" | "kv_lease_revoke" => Api::LeaseRevoke,
            "lease_keepalive" => Api::LeaseKeepalive,
            "lease_timetolive" | "kv_lease_timetolive" => Api::LeaseTimeToLive,
            "lease_leases" | "kv_lease_leases" => Api::LeaseLeases,
            "kv_compaction" => Api::Compaction,
            "maintenance_status" => Api::Status,
            "dump" => Api::Dump,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Api::Txn => "kv_txn",
            Api::Range => "kv_range",
            Api::Put => "kv_put",
            Api::DeleteRange => "kv_deleterange",
            Api::LeaseGrant => "lease_grant",
            Api::LeaseRevoke => "lease_revoke",
            Api::LeaseKeepalive => "lease_keepalive",
            Api::LeaseTimeToLive => "lease_timetolive",
            Api::LeaseLeases => "lease_leases",
            Api::Compaction => "kv_compaction",
            Api::Status => "maintenance_status",
            Api::Dump => "dump",
        }
    }

    /// Whether the API changes state (a cluster replicates it).
    pub(crate) fn writes(self) -> bool {
        matches!(
            self,
            Api::Txn
                | Api::Put
                | Api::DeleteRange
                | Api::LeaseGrant
                | Api::LeaseRevoke
                | Api::LeaseKeepalive
                | Api::Compaction
        )
    }
}

fn text(status: StatusCode, message: &str) -> Response {
    let mut body = String::with_capacity(message.len() + 1);
    body.push_str(message);
    body.push('\n');
    (status, [(CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn json(body: String) -> Response {
    (StatusCode::OK, [(CONTENT_TYPE, "application/json")], body).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        text(self.status, &self.message)
    }
}

impl From<PersistError> for ApiError {
    fn from(e: PersistError) -> Self {
        match e {
            PersistError::Closed => ApiError::new(StatusCode::BAD_GATEWAY, "Server is stopping"),
            e => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
}

/// The single entry point of every HTTP request (axum fallback).
pub(crate) async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    if req.headers().get(UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket")) {
        return crate::ws::upgrade(shared, req).await;
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let access = shared.logs.access;
    let (response, logged_body) = handle_http(&shared, req).await;
    shared.metrics.http_responses[status_class(response.status())].fetch_add(1, Ordering::Relaxed);
    if access {
        tracing::info!(target: "antietcd::access", "{method} {path} {} {}", response.status().as_u16(), logged_body);
    }
    response
}

fn status_class(s: StatusCode) -> usize {
    (s.as_u16() / 100).clamp(1, 5) as usize - 1
}

async fn handle_http(shared: &Arc<Shared>, req: Request) -> (Response, String) {
    let path = req.uri().path();
    if path == "/health" || path == "/livez" || path == "/readyz" {
        let ok = !shared.engine.is_closed() && shared.persister.as_ref().is_none_or(|p| p.check().is_ok());
        let (status, body) = if ok {
            (StatusCode::OK, "{\"health\":\"true\"}")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "{\"health\":\"false\"}")
        };
        return ((status, [(CONTENT_TYPE, "application/json")], body).into_response(), String::new());
    }
    if path == "/metrics" {
        let body = crate::server::metrics_text(shared);
        return (
            (StatusCode::OK, [(CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response(),
            String::new(),
        );
    }
    let api = if let Some(rest) = path.strip_prefix("/v3/") {
        let name = handler_name(rest);
        match Api::from_handler(&name) {
            Some(api) if req.method() == Method::POST => api,
            Some(Api::Dump) => Api::Dump,
            Some(_) => {
                return (text(StatusCode::METHOD_NOT_ALLOWED, "Please use POST method"), String::new())
            }
            None if req.method() != Method::POST => {
                return (text(StatusCode::METHOD_NOT_ALLOWED, "Please use POST method"), String::new())
            }
            None => return (text(StatusCode::NOT_FOUND, SUPPORTED), String::new()),
        }
    } else if path == "/dump" {
        Api::Dump
    } else {
        return (text(StatusCode::NOT_FOUND, SUPPORTED), String::new());
    };
    if let Some(ct) = req.headers().get(CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        // curl's default form type is accepted as etcd's gateway does (it ignores the header).
        if ct != "application/json" && ct != "application/x-www-form-urlencoded" && !ct.is_empty() {
            return (text(StatusCode::BAD_REQUEST, "content-type should be application/json"), String::new());
        }
    }
    let body = match read_body(req.into_body(), shared.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return (e.into_response(), String::new()),
    };
    let logged = if shared.logs.access { String::from_utf8_lossy(&body).into_owned() } else { String::new() };
    shared.metrics.requests[api as usize].fetch_add(1, Ordering::Relaxed);
    let result = match parse_body(&body) {
        Ok(obj) => call(shared, api, obj).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(s) => (json(s), logged),
        Err(e) => (e.into_response(), logged),
    }
}

/// `/v3/kv//lease/revoke/` → `kv_lease_revoke`, as antietcd derives handler names.
fn handler_name(rest: &str) -> String {
    let mut out = String::with_capacity(rest.len());
    let mut slash = false;
    for c in rest.trim_end_matches('/').chars() {
        if c == '/' {
            slash = true;
        } else {
            if slash && !out.is_empty() {
                out.push('_');
            }
            slash = false;
            out.push(c);
        }
    }
    out
}

async fn read_body(body: Body, limit: usize) -> ApiResult<Bytes> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {limit} bytes"),
        )),
        Err(e) => Err(ApiError::bad(format!("could not read the request body: {e}"))),
    }
}

fn parse_body(body: &[u8]) -> ApiResult<Map<String, Value>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad("body should be JSON object")),
        Err(_) => Err(ApiError::bad("body should be valid JSON")),
    }
}

/// Runs one API call on a parsed body; returns the JSON response text. In a cluster every API but status
/// and dump goes through the cluster's gate and routing ([`crate::cluster::Cluster::route`]).
pub(crate) async fn call(shared: &Arc<Shared>, api: Api, body: Map<String, Value>) -> ApiResult<String> {
    if shared.stopping.is_cancelled() {
        return Err(ApiError::new(StatusCode::BAD_GATEWAY, "Server is stopping"));
    }
    match &shared.cluster {
        Some(cluster) if !matches!(api, Api::Status | Api::Dump) => {
            cluster.route(shared, api, body, false).await
        }
        _ => local(shared, api, &body).await,
    }
}

/// Runs one API call on this node's engine, waiting for the disk after a write.
pub(crate) async fn local(shared: &Arc<Shared>, api: Api, body: &Map<String, Value>) -> ApiResult<String> {
    if api.writes() {
        if let Some(p) = &shared.persister {
            p.check()?;
        }
    }
    if api == Api::Dump {
        let snap = shared.engine.snapshot().map_err(ApiError::engine)?;
        return Ok(crate::persist::encode_dump(
            &snap,
            shared.cluster.as_ref().map_or(0, |c| c.synced_term()),
        ));
    }
    let (text, synced_revision) = execute(shared, api, body)?;
    if let (Some(_), Some(d), false) = (synced_revision, &shared.durable, shared.persist_interval) {
        d.sync().await.map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    }
    if let (Some(rev), Some(p)) = (synced_revision, &shared.persister) {
        if !shared.persist_interval {
            p.sync(rev).await?;
        }
    }
    Ok(text)
}

/// Executes one API call on the engine (no disk wait): the response body (JSON text), and the revision a
/// write must have on disk before it is acknowledged.
pub(crate) fn execute(
    shared: &Shared,
    api: Api,
    body: &Map<String, Value>,
) -> ApiResult<(String, Option<crate::Revision>)> {
    let engine = &shared.engine;
    let codec = &shared.codec;
    let (value, synced_revision) = match api {
        // The two hottest calls write their answers directly (no `Value` tree to build and print).
        Api::Range => {
            let req = codec.range_request(body)?;
            let r = engine.range(&req).map_err(ApiError::engine)?;
            let mut out = String::with_capacity(64 + 128 * r.kvs.len());
            codec.write_range(&mut out, &r, req.keys_only);
            return Ok((out, None));
        }
        Api::Put => {
            let req = codec.put_request(body)?;
            let r = engine.put(req).map_err(ApiError::engine)?;
            let mut out = String::with_capacity(64);
            codec.write_put(&mut out, &r);
            return Ok((out, Some(r.revision)));
        }
        Api::DeleteRange => {
            let req = codec.delete_request(body)?;
            let r = engine.delete_range(&req).map_err(ApiError::engine)?;
            (with_header(r.revision, codec.delete_body(&r)), Some(r.revision))
        }
        Api::Txn => {
            let req = codec.txn_request(body, 1)?;
            let r = engine.txn(&req).map_err(ApiError::engine)?;
            (with_header(r.revision, codec.txn_body(&req, &r)), Some(r.revision))
        }
        Api::LeaseGrant => {
            let ttl_raw = field(body, "TTL", "ttl").cloned().unwrap_or(Value::Null);
            let ttl = int(Some(&ttl_raw).filter(|v| !v.is_null()), "TTL")?;
            let id = lease_id(field(body, "ID", "id"), "ID")?;
            let g = engine.lease_grant(ttl, id).map_err(ApiError::engine)?;
            let mut m = Map::new();
            m.insert("ID".into(), g.id.to_string().into());
            // antietcd echoes the TTL exactly as sent (number or string).
            m.insert("TTL".into(), if ttl_raw.is_null() { g.ttl.into() } else { ttl_raw });
            (with_header(engine.revision(), m), None)
        }
        Api::LeaseKeepalive => {
            let id =
                lease_id(field(body, "ID", "id"), "ID")?.ok_or_else(|| ApiError::bad("unknown lease"))?;
            let ttl = engine.lease_keep_alive(id).map_err(lease_error)?;
            let mut r = Map::new();
            r.insert("ID".into(), id.to_string().into());
            r.insert("TTL".into(), ttl.to_string().into());
            let mut m = Map::new();
            m.insert("result".into(), with_header(engine.revision(), r));
            (Value::Object(m), None)
        }
        Api::LeaseRevoke => {
            let id =
                lease_id(field(body, "ID", "id"), "ID")?.ok_or_else(|| ApiError::bad("unknown lease"))?;
            let revision = engine.lease_revoke(id).map_err(lease_error)?;
            (with_header(revision, Map::new()), None)
        }
        Api::LeaseTimeToLive => {
            let id =
                lease_id(field(body, "ID", "id"), "ID")?.ok_or_else(|| ApiError::bad("unknown lease"))?;
            let keys = crate::wire::truthy(field(body, "keys", ""));
            let info = engine.lease_time_to_live(id, keys).map_err(lease_error)?;
            let mut m = Map::new();
            m.insert("ID".into(), id.to_string().into());
            m.insert("TTL".into(), info.ttl.into());
            m.insert("grantedTTL".into(), info.granted_ttl.into());
            if keys {
                m.insert("keys".into(), Value::Array(info.keys.iter().map(|k| codec.encode(k)).collect()));
            }
            (with_header(engine.revision(), m), None)
        }
        Api::LeaseLeases => {
            let leases =
                engine.leases().into_iter().map(|id| serde_json::json!({ "ID": id.to_string() })).collect();
            let mut m = Map::new();
            m.insert("leases".into(), Value::Array(leases));
            (with_header(engine.revision(), m), None)
        }
        Api::Compaction => {
            let revision = int(field(body, "revision", ""), "revision")?;
            engine.compact(revision).map_err(ApiError::engine)?;
            (with_header(engine.revision(), Map::new()), None)
        }
        Api::Status => {
            let st = engine.status();
            let mut header = Map::new();
            header.insert("revision".into(), st.revision.into());
            header.insert("compact_revision".into(), st.compact_revision.into());
            let mut m = Map::new();
            if let Some(cluster) = &shared.cluster {
                cluster.status_fields(&mut header, &mut m);
            }
            m.insert("header".into(), Value::Object(header));
            m.insert("version".into(), "antietcd 1.3.1".into());
            m.insert("server".into(), concat!("antietcd-rs ", env!("CARGO_PKG_VERSION")).into());
            m.insert("dbSize".into(), shared.approx_db_size().into());
            m.insert("keys".into(), st.keys.into());
            m.insert("leases".into(), st.leases.into());
            m.insert("watchers".into(), st.watchers.into());
            (Value::Object(m), None)
        }
        Api::Dump => {
            let snap = engine.snapshot().map_err(ApiError::engine)?;
            let dump =
                crate::persist::encode_dump(&snap, shared.cluster.as_ref().map_or(0, |c| c.synced_term()));
            (
                serde_json::from_str(&dump)
                    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
                None,
            )
        }
    };
    Ok((value.to_string(), synced_revision))
}

/// antietcd answers keepalive and revoke of an unknown lease with plain `unknown lease`.
fn lease_error(e: crate::Error) -> ApiError {
    match e {
        crate::Error::LeaseNotFound(_) => ApiError::bad("unknown lease"),
        e => ApiError::engine(e),
    }
}

/// Hands an upgrade request to axum's websocket extractor.
pub(crate) async fn ws_extract(req: Request) -> Result<axum::extract::ws::WebSocketUpgrade, Response> {
    let (mut parts, _body) = req.into_parts();
    axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(IntoResponse::into_response)
}
