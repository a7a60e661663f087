//! Websocket watches, antietcd 1.3.1's protocol (spec section 3.7), on any path.
//!
//! One task per socket reads client messages and forwards the engine's watch streams:
//! - `create_request {key, range_end?, start_revision?, watch_id?, prev_kv?}` → `{"result":{"header",
//!   "watch_id","created":true,"events"?}}` (events = the retained history from `start_revision`, filtered to
//!   the range), or, if that history is compacted, antietcd's cancel message with `compact_revision`;
//! - `cancel_request {watch_id}` → `{"result":{"header","watch_id","canceled":true}}`;
//! - `progress_request` → `{"result":{"header"}}`.
//!
//! Live changes are sent as `{"result":{"header","events":[...]}}`, one message per revision per socket
//! when `merge_watches` is on (events of all its watches, de-duplicated by key), else one per watch;
//! messages also carry `watch_id` (additive; with merging, only when one watch contributed, and
//! `watch_ids` otherwise). Every malformed frame gets an `{"error": ...}` reply; nothing a client sends can
//! stop the server. A watch that falls `watch_capacity` revisions behind is cancelled with a
//! `cancel_reason`.

use crate::keepalive::{Due, Keepalive};
use crate::server::Shared;
use crate::wire::{field, header, int, object, truthy, type_name, Codec};
use crate::{Revision, WatchBatch, WatchError, WatchRequest};
use axum::extract::ws::{Message, WebSocket};
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures::stream::BoxStream;
use futures::{FutureExt, SinkExt, StreamExt};
use hyper::StatusCode;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_stream::StreamMap;

type WatchStream = BoxStream<'static, Result<WatchBatch, WatchError>>;

/// Accepts the upgrade (if the connection limit allows) and starts the socket's task.
pub(crate) async fn upgrade(shared: Arc<Shared>, req: Request) -> Response {
    let client_certificates = req.extensions().get::<crate::tls::ClientCertificates>().cloned();
    let ws = match crate::http::ws_extract(req).await {
        Ok(ws) => ws,
        Err(r) => return r,
    };
    let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    };
    let token = shared.tracker.token();
    let max = shared.max_ws_message_bytes;
    // A small read buffer: an idle watcher's socket is most of its memory; larger messages grow it. Frames
    // written together (see `Session::run`) are gathered up to 16 KiB, so that they leave in one write.
    ws.read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            let _token = token;
            shared.metrics.ws_connections.fetch_add(1, Ordering::Relaxed);
            let mut session = Session::new(shared.clone());
            session.peer = session.peer.take().map(|p| p.with_client_certificates(client_certificates));
            session.run(socket).await;
            shared.metrics.ws_connections.fetch_sub(1, Ordering::Relaxed);
        })
}

/// The client-visible id of a watch, with the JSON type it was given in; keyed by its text, as antietcd
/// keys a JS object by it (`1` and `"1"` are the same watch).
fn id_key(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

struct Session {
    shared: Arc<Shared>,
    codec: Codec,
    /// Live watches by internal id.
    watches: StreamMap<u64, WatchStream>,
    /// Client id text → (internal id, client id as sent).
    by_client: HashMap<String, u64>,
    /// Internal id → client id as sent.
    client_ids: HashMap<u64, Value>,
    /// The peer side of the socket when clustering is on (non-watch messages go there).
    peer: Option<crate::cluster::Inbound>,
}

impl Session {
    fn new(shared: Arc<Shared>) -> Self {
        let codec = shared.codec;
        let peer = shared.cluster.clone().map(crate::cluster::Inbound::new);
        Session {
            peer,
            shared,
            codec,
            watches: StreamMap::new(),
            by_client: HashMap::new(),
            client_ids: HashMap::new(),
        }
    }

    async fn run(mut self, mut socket: WebSocket) {
        let stopping = self.shared.stopping.clone();
        let mut keepalive = Keepalive::new(self.shared.ws_keepalive);
        loop {
            let mut out: Vec<String> = tokio::select! {
                msg = socket.recv() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        keepalive.heard();
                        self.on_message(t.as_bytes()).await
                    }
                    Some(Ok(Message::Binary(b))) => {
                        keepalive.heard();
                        match self.peer.as_mut() {
                            // Our cluster leader's batch of changes: not JSON (see `cluster::frame`).
                            Some(peer) if crate::cluster::is_batch_frame(&b) => peer.on_batch(&b).await,
                            _ => self.on_message(&b).await,
                        }
                    }
                    Some(Ok(Message::Pong(_))) | Some(Ok(Message::Ping(_))) => {
                        keepalive.heard();
                        continue;
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                },
                Some(first) = self.watches.next(), if !self.watches.is_empty() => self.on_batches(first),
                Some(reply) = crate::cluster::next_reply(&mut self.peer) => {
                    // A leader answers a batch of forwarded requests at once, one task each: those that
                    // are ready to run get their turn first, so that their replies leave together.
                    tokio::task::yield_now().await;
                    vec![reply]
                }
                due = keepalive.due() => {
                    if due == Due::Dead || socket.send(Message::Ping(Default::default())).await.is_err() {
                        break;
                    }
                    continue;
                }
                _ = stopping.cancelled() => {
                    let _ = socket.send(Message::Close(None)).await;
                    break;
                }
            };
            // Peer replies that are ready too (a leader answers a whole batch of forwarded requests at
            // once) leave in the same write: one system call, not one per frame.
            if let Some(peer) = self.peer.as_mut() {
                while out.len() < 64 {
                    match peer.try_next_reply() {
                        Some(text) => out.push(text),
                        None => break,
                    }
                }
            }
            for text in out {
                if self.shared.logs.watch {
                    tracing::info!(target: "antietcd::watch", "<- {text}");
                }
                if socket.feed(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            if socket.flush().await.is_err() {
                return;
            }
        }
    }

    /// The revision watchers have seen (in a cluster, changes not committed yet are not counted).
    fn revision(&self) -> Revision {
        self.shared.engine.visible_revision()
    }

    fn error(&self, message: impl Into<String>, watch_id: Option<&Value>) -> String {
        let mut m = Map::new();
        m.insert("error".into(), Value::String(message.into()));
        if let Some(id) = watch_id {
            m.insert("watch_id".into(), id.clone());
        }
        Value::Object(m).to_string()
    }

    fn result(&self, revision: Revision, body: Map<String, Value>) -> String {
        let mut r = body;
        r.insert("header".into(), header(revision));
        let mut m = Map::with_capacity(1);
        m.insert("result".into(), Value::Object(r));
        Value::Object(m).to_string()
    }

    /// One client frame → the replies to send.
    async fn on_message(&mut self, data: &[u8]) -> Vec<String> {
        if self.shared.logs.access {
            tracing::info!(target: "antietcd::access", "ws -> {}", String::from_utf8_lossy(data));
        }
        let mut msg: Value = match serde_json::from_slice(data) {
            Ok(v) => v,
            Err(_) => return vec![self.error("bad-json", None)],
        };
        if !truthy(Some(&msg)) {
            return vec![self.error("empty-message", None)];
        }
        let Value::Object(obj) = &mut msg else {
            return vec![
                self.error(format!("a message should be a JSON object, not {}", type_name(&msg)), None)
            ];
        };
        if let Some(req) = field(obj, "create_request", "createRequest") {
            return self.create(req).await;
        }
        if let Some(req) = field(obj, "cancel_request", "cancelRequest") {
            return self.cancel(req);
        }
        if obj.contains_key("progress_request") || obj.contains_key("progressRequest") {
            return vec![self.result(self.revision(), Map::new())];
        }
        if let Some(peer) = self.peer.as_mut() {
            if let Some(out) = peer.on_message(obj).await {
                return out;
            }
        }
        vec![self.error("unknown message: expected create_request, cancel_request or progress_request", None)]
    }

    async fn create(&mut self, req: &Value) -> Vec<String> {
        let obj = match object(req, "create_request") {
            Ok(o) => o,
            Err(e) => return vec![self.error(e.message, None)],
        };
        let client_id = field(obj, "watch_id", "watchId").filter(|v| truthy(Some(v))).cloned();
        if let Some(id) = &client_id {
            if self.by_client.contains_key(&id_key(id)) {
                return vec![self.error("watch_id is already in use on this connection", Some(id))];
            }
        }
        let parsed = (|| {
            let range = self.codec.range(obj)?;
            let start_revision = int(field(obj, "start_revision", "startRevision"), "start_revision")?;
            let filters = match field(obj, "filters", "") {
                Some(Value::Array(a)) => a.clone(),
                _ => Vec::new(),
            };
            let has =
                |n: u64, s: &str| filters.iter().any(|f| f.as_u64() == Some(n) || f.as_str() == Some(s));
            Ok::<_, crate::wire::ApiError>(WatchRequest {
                range,
                start_revision: start_revision.max(0),
                prev_kv: truthy(field(obj, "prev_kv", "prevKv")),
                no_put: has(0, "NOPUT"),
                no_delete: has(1, "NODELETE"),
            })
        })();
        let request = match parsed {
            Ok(r) => r,
            Err(e) => return vec![self.error(e.message, client_id.as_ref())],
        };
        let start = request.start_revision;
        if let Some(cluster) = &self.shared.cluster {
            // Until this member is synced its state may hold changes the cluster never committed (a
            // restarted node's log tail, say): no watch may see them.
            if let Err(e) = cluster.wait_synced().await {
                return vec![self.error(e.message, client_id.as_ref())];
            }
        }
        let mut watch = match self.shared.engine.watch(request) {
            Ok(w) => w,
            Err(crate::Error::Compacted { compact_revision, .. }) => {
                let mut m = Map::new();
                if let Some(id) = &client_id {
                    m.insert("watch_id".into(), id.clone());
                }
                m.insert("canceled".into(), true.into());
                m.insert(
                    "cancel_reason".into(),
                    format!("Revisions up to {compact_revision} are compacted").into(),
                );
                m.insert("compact_revision".into(), compact_revision.into());
                return vec![self.result(self.revision(), m)];
            }
            Err(e) => return vec![self.error(e.to_string(), client_id.as_ref())],
        };
        let internal = watch.id();
        let revision = watch.revision();
        let id = client_id.unwrap_or_else(|| Value::from(internal));
        // The history up to the watch's revision goes into the created message; anything newer is live.
        let mut history = Vec::new();
        let mut first_live = None;
        let mut ended = false;
        while let Some(item) = watch.next().now_or_never() {
            match item {
                Some(Ok(batch)) if batch.revision <= revision => {
                    history.extend(batch.events.iter().map(|e| self.codec.event(e)))
                }
                Some(other) => {
                    first_live = Some(other);
                    break;
                }
                None => {
                    ended = true;
                    break;
                }
            }
        }
        let mut m = Map::new();
        m.insert("watch_id".into(), id.clone());
        m.insert("created".into(), true.into());
        if start > 0 {
            m.insert("events".into(), Value::Array(history));
        }
        let created = self.result(revision, m);
        if !ended {
            let stream: WatchStream = futures::stream::iter(first_live).chain(watch).boxed();
            self.watches.insert(internal, stream);
            self.by_client.insert(id_key(&id), internal);
            self.client_ids.insert(internal, id);
            self.shared.metrics.watches.fetch_add(1, Ordering::Relaxed);
        }
        vec![created]
    }

    fn remove(&mut self, internal: u64) -> Option<Value> {
        self.watches.remove(&internal);
        let id = self.client_ids.remove(&internal)?;
        self.by_client.remove(&id_key(&id));
        self.shared.metrics.watches.fetch_sub(1, Ordering::Relaxed);
        Some(id)
    }

    fn cancel(&mut self, req: &Value) -> Vec<String> {
        let id = match req.as_object().and_then(|o| field(o, "watch_id", "watchId")) {
            Some(id) => id.clone(),
            None => return vec![self.error("cancel_request needs a watch_id", None)],
        };
        match self.by_client.get(&id_key(&id)).copied() {
            Some(internal) => {
                self.remove(internal);
                let mut m = Map::new();
                m.insert("watch_id".into(), id);
                m.insert("canceled".into(), true.into());
                vec![self.result(self.revision(), m)]
            }
            None => vec![self.error("unknown watch_id", Some(&id))],
        }
    }

    /// Turns the watch items ready now (starting with `first`) into messages: per revision, one message
    /// for the socket (merged) or one per watch.
    fn on_batches(&mut self, first: (u64, Result<WatchBatch, WatchError>)) -> Vec<String> {
        let mut items = vec![first];
        if self.shared.merge_watches && self.watches.len() > 1 {
            // Publishing happens under the engine's lock: taking it once guarantees every watch of this
            // socket already has the batch of the revision we just received, so draining finds them all.
            let _ = self.shared.engine.revision();
            while items.len() < 1024 {
                match self.watches.next().now_or_never() {
                    Some(Some(item)) => items.push(item),
                    _ => break,
                }
            }
        }
        let mut out = Vec::new();
        let mut by_revision: BTreeMap<Revision, Vec<(u64, WatchBatch)>> = BTreeMap::new();
        for (internal, item) in items {
            match item {
                Ok(batch) => by_revision.entry(batch.revision).or_default().push((internal, batch)),
                Err(WatchError::Lagged) => {
                    if let Some(id) = self.remove(internal) {
                        let mut m = Map::new();
                        m.insert("watch_id".into(), id);
                        m.insert("canceled".into(), true.into());
                        m.insert(
                            "cancel_reason".into(),
                            "watcher lagged behind and was cancelled; resume from the last revision seen"
                                .into(),
                        );
                        out.push(self.result(self.revision(), m));
                    }
                }
            }
        }
        for (revision, batches) in by_revision {
            if self.shared.merge_watches {
                // Events of every watch of this socket, de-duplicated by key (the last one wins).
                let mut events: Vec<&crate::Event> = Vec::new();
                let mut index: HashMap<&[u8], usize> = HashMap::new();
                for (_, batch) in &batches {
                    for e in &batch.events {
                        match index.get(&e.kv.key[..]) {
                            Some(i) => events[*i] = e,
                            None => {
                                index.insert(&e.kv.key[..], events.len());
                                events.push(e);
                            }
                        }
                    }
                }
                let mut ids: Vec<&Value> =
                    batches.iter().filter_map(|(i, _)| self.client_ids.get(i)).collect();
                ids.dedup();
                let ids = if ids.len() == 1 {
                    format!("\"watch_id\":{}", ids[0])
                } else {
                    format!("\"watch_ids\":{}", Value::Array(ids.into_iter().cloned().collect()))
                };
                out.push(self.event_message(revision, &ids, events.into_iter()));
            } else {
                for (internal, batch) in &batches {
                    let ids = match self.client_ids.get(internal) {
                        Some(id) => format!("\"watch_id\":{id}"),
                        None => String::new(),
                    };
                    out.push(self.event_message(revision, &ids, batch.events.iter()));
                }
            }
        }
        out
    }
}

impl Session {
    /// `{"result":{"header":{"revision":R},<ids>,"events":[...]}}`, written directly (the fan-out path).
    fn event_message<'a>(
        &self,
        revision: Revision,
        ids: &str,
        events: impl Iterator<Item = &'a crate::Event>,
    ) -> String {
        let mut s = String::with_capacity(256);
        s.push_str("{\"result\":{\"header\":{\"revision\":");
        s.push_str(&revision.to_string());
        s.push_str("},");
        if !ids.is_empty() {
            s.push_str(ids);
            s.push(',');
        }
        s.push_str("\"events\":[");
        for (i, e) in events.enumerate() {
            if i > 0 {
                s.push(',');
            }
            self.codec.write_event(&mut s, e);
        }
        s.push_str("]}}");
        s
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let n = self.client_ids.len();
        self.shared.metrics.watches.fetch_sub(n as u64, Ordering::Relaxed);
    }
}
