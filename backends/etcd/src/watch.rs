//! Watches over etcd's HTTP stream or antietcd's websocket, behind one [`WatchStream`].
//!
//! Two transports carry the same messages (`{"result": WatchResponse}`):
//!
//! * **HTTP stream** (etcd): one `POST /v3/watch` whose body is the `create_request`;
//!   the reply is a chunked stream of JSON objects, one per line (parsed as a stream of
//!   concatenated JSON values, so framing by chunk or by newline does not matter). Over
//!   HTTP/1.1 the gateway answers only after the request body is complete, so one POST
//!   carries exactly one watch.
//! * **WebSocket** (antietcd, and etcd without auth): `ws(s)://host/watch` for antietcd,
//!   `/v3/watch` for etcd; one text frame per message. antietcd's events carry no
//!   `watch_id`, its history replay is not filtered by range, and it only watches
//!   "directory" ranges, so each socket carries one watch, other ranges are widened to
//!   the whole store, and events are filtered here.
//!
//! The stream is a state machine driven by polling (no background task): dropping it
//! closes the connection, which cancels the watch on the server. When the connection
//! breaks, the next poll reconnects (with backoff, across endpoints) and re-creates the
//! watch from the last seen revision + 1; events at older revisions are dropped, so
//! nothing is lost or repeated.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{SinkExt, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::client::Client;
use crate::codec::{b64, in_range, int, is_false, is_zero};
use crate::error::{BoxError, Error, Result};
use crate::kv::range_builders;
use crate::kv::{self, KeyValue, RangeSpec, ResponseHeader};

/// How watches reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WatchTransport {
    /// etcd's streaming `POST /v3/watch`.
    HttpStream,
    /// A websocket (antietcd's protocol; also served by etcd when auth is off).
    WebSocket,
    /// The websocket for antietcd, the HTTP stream for etcd (decided from the server
    /// flavour detected at connect time).
    #[default]
    Auto,
}

/// Options of [`Client::watch`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WatchOptions {
    spec: RangeSpec,
    start_revision: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    transport: Option<WatchTransport>,
    reconnect_timeout: Option<Duration>,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            spec: RangeSpec::Single,
            start_revision: 0,
            prev_kv: false,
            no_put: false,
            no_delete: false,
            progress_notify: false,
            transport: None,
            reconnect_timeout: Some(Duration::from_secs(60)),
        }
    }
}

impl WatchOptions {
    /// Watches the single key, from now on.
    pub fn new() -> Self {
        Self::default()
    }

    range_builders!("Watches");

    /// Replays history from this revision (inclusive) before live events.
    pub fn with_start_revision(mut self, revision: i64) -> Self {
        self.start_revision = revision;
        self
    }

    /// Adds the previous key-value pair to each event (etcd only).
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    /// Drops put events.
    pub fn with_filter_no_put(mut self) -> Self {
        self.no_put = true;
        self
    }

    /// Drops delete events.
    pub fn with_filter_no_delete(mut self) -> Self {
        self.no_delete = true;
        self
    }

    /// Asks the server for periodic progress notifications (responses without events).
    pub fn with_progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }

    /// Overrides the client's [`WatchTransport`] for this watch.
    pub fn with_transport(mut self, transport: WatchTransport) -> Self {
        self.transport = Some(transport);
        self
    }

    /// How long to keep trying to reconnect a broken watch before the stream yields the
    /// last error and ends (`None`: forever). Default: 60 s.
    pub fn with_reconnect_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.reconnect_timeout = timeout.into();
        self
    }
}

/// The kind of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum EventType {
    /// A key was written.
    #[default]
    Put,
    /// A key was deleted (or its lease expired).
    Delete,
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        match v {
            serde_json::Value::Null => Ok(EventType::Put),
            serde_json::Value::String(s) if s == "PUT" => Ok(EventType::Put),
            serde_json::Value::String(s) if s == "DELETE" => Ok(EventType::Delete),
            serde_json::Value::Number(n) if n.as_i64() == Some(0) => Ok(EventType::Put),
            serde_json::Value::Number(n) if n.as_i64() == Some(1) => Ok(EventType::Delete),
            other => Err(serde::de::Error::custom(format!("unknown event type {other}"))),
        }
    }
}

/// One change of a key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Event {
    /// Put or delete.
    #[serde(default, rename = "type")]
    pub event_type: EventType,
    /// The key after the change; for a delete, only `key` and `mod_revision` (the
    /// revision of the delete) are set.
    #[serde(default)]
    pub kv: KeyValue,
    /// The key before the change, if `prev_kv` was asked for.
    #[serde(default)]
    pub prev_kv: Option<KeyValue>,
}

/// One message of a watch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct WatchResponse {
    /// The reply header (for history batches, the *current* revision).
    #[serde(default)]
    pub header: ResponseHeader,
    /// The watch ID on its stream.
    #[serde(default, with = "int")]
    pub watch_id: i64,
    /// Whether this message confirms the creation of the watch.
    #[serde(default)]
    pub created: bool,
    /// Whether the server cancelled the watch.
    #[serde(default)]
    pub canceled: bool,
    /// Set when cancelled because the start revision is compacted.
    #[serde(default, with = "int")]
    pub compact_revision: i64,
    /// Why the server cancelled the watch.
    #[serde(default)]
    pub cancel_reason: String,
    /// Whether more fragments of this message follow.
    #[serde(default)]
    pub fragment: bool,
    /// The events, in revision order.
    #[serde(default)]
    pub events: Vec<Event>,
}

impl WatchResponse {
    /// Whether this is a progress notification: no events, all events up to
    /// `header.revision` were delivered (for a watcher that caught up).
    pub fn is_progress_notify(&self) -> bool {
        self.events.is_empty() && !self.created && !self.canceled
    }
}

/// A stream error line inside a 200 response (etcd's gateway shape).
#[derive(Debug, Deserialize)]
struct StreamError {
    #[serde(default)]
    grpc_code: Option<i32>,
    #[serde(default)]
    http_code: Option<u16>,
    #[serde(default)]
    message: String,
}

/// One message on the wire: `{"result":..}` or `{"error":..}`.
#[derive(Debug, Deserialize)]
struct Envelope<T> {
    #[serde(default = "Option::default")]
    result: Option<T>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

impl<T> Envelope<T> {
    fn into_result(self) -> Result<T> {
        if let Some(error) = self.error {
            let e = match serde_json::from_value::<StreamError>(error.clone()) {
                Ok(e) => Error::from_status(e.http_code.unwrap_or(503), e.grpc_code, e.message),
                Err(_) => Error::unavailable(format!("stream error: {error}"), None),
            };
            return Err(e);
        }
        self.result.ok_or_else(|| Error::Decode {
            what: "stream message".into(),
            detail: "neither result nor error".into(),
            source: None,
        })
    }
}

#[derive(Debug, Serialize)]
struct CreateRequest {
    #[serde(with = "b64")]
    key: Vec<u8>,
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    range_end: Vec<u8>,
    #[serde(skip_serializing_if = "is_zero")]
    start_revision: i64,
    #[serde(skip_serializing_if = "is_false")]
    prev_kv: bool,
    #[serde(skip_serializing_if = "is_false")]
    progress_notify: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    filters: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
struct CreateMessage {
    create_request: CreateRequest,
}

/// Reads concatenated (or newline-separated) JSON values from a byte stream.
pub(crate) struct JsonStream {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    buf: Vec<u8>,
}

impl JsonStream {
    pub(crate) fn new(response: reqwest::Response) -> Self {
        JsonStream { body: response.bytes_stream().boxed(), buf: Vec::new() }
    }

    /// The next complete JSON value, `None` at the end of the stream.
    pub(crate) async fn next_value(&mut self) -> Option<Result<Vec<u8>>> {
        loop {
            let start = self.buf.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(self.buf.len());
            self.buf.drain(..start);
            if !self.buf.is_empty() {
                let mut values =
                    serde_json::Deserializer::from_slice(&self.buf).into_iter::<serde::de::IgnoredAny>();
                match values.next() {
                    Some(Ok(_)) => {
                        let end = values.byte_offset();
                        let value: Vec<u8> = self.buf.drain(..end).collect();
                        return Some(Ok(value));
                    }
                    Some(Err(e)) if e.is_eof() => {}
                    Some(Err(e)) => {
                        let err = Error::decode("stream message", &self.buf, Some(Box::new(e)));
                        self.buf.clear();
                        return Some(Err(err));
                    }
                    None => {}
                }
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Some(Err(Error::unavailable("the stream broke", Some(Box::new(e) as BoxError))))
                }
                None => return None,
            }
        }
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A live connection carrying one watch.
enum Conn {
    Http(JsonStream),
    Ws(Box<Socket>),
}

impl Conn {
    /// The next message's bytes; `None` when the connection ended.
    async fn next_message(&mut self, idle: Duration) -> Option<Result<Vec<u8>>> {
        match self {
            Conn::Http(stream) => stream.next_value().await,
            Conn::Ws(socket) => {
                // A connection that went silently dead (a dropped NAT entry, a frozen peer) never errors:
                // ping after half the idle timeout, and give the connection up if nothing at all comes.
                let half = idle / 2;
                let mut pinged = false;
                loop {
                    match tokio::time::timeout(half, socket.next()).await {
                        Ok(Some(Ok(Message::Text(text)))) => return Some(Ok(text.as_bytes().to_vec())),
                        Ok(Some(Ok(Message::Binary(data)))) => return Some(Ok(data.to_vec())),
                        Ok(Some(Ok(Message::Close(_))) | None) => return None,
                        Ok(Some(Ok(_))) => pinged = false, // ping or pong: alive
                        Ok(Some(Err(e))) => {
                            return Some(Err(Error::unavailable(
                                "the websocket broke",
                                Some(Box::new(e) as BoxError),
                            )))
                        }
                        Err(_) if pinged => {
                            return Some(Err(Error::unavailable(
                                "the websocket went silent (no answer to a ping)",
                                None,
                            )))
                        }
                        Err(_) => {
                            pinged = true;
                            let ping =
                                tokio::time::timeout(half, socket.send(Message::Ping(Default::default())));
                            if !matches!(ping.await, Ok(Ok(()))) {
                                return Some(Err(Error::unavailable("the websocket went silent", None)));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The resolved transport of one watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Http,
    Ws,
}

/// The watch state machine behind a [`WatchStream`].
struct Driver {
    client: Client,
    /// The watched range as the user asked for it (used to filter events).
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// The range sent to the server (antietcd's may be wider).
    wire_key: Vec<u8>,
    wire_range_end: Vec<u8>,
    options: WatchOptions,
    via: Via,
    /// The revision to (re)start from; 0 before the first creation when watching from now.
    next_revision: i64,
    /// The header revision of the first creation.
    created_revision: i64,
    conn: Option<Conn>,
    pending: VecDeque<Result<WatchResponse>>,
    done: bool,
    /// Whether the last connection attempt re-authenticated (to re-authenticate once).
    reauthenticated: bool,
}

/// Outcome of opening a connection on one endpoint.
enum OpenError {
    /// Try the next endpoint / retry later.
    Retry(Error),
    /// Give up: the stream yields this error and ends.
    Fatal(Error),
}

impl Driver {
    fn create_message(&self) -> CreateMessage {
        let mut filters = Vec::new();
        if self.options.no_put {
            filters.push("NOPUT");
        }
        if self.options.no_delete {
            filters.push("NODELETE");
        }
        CreateMessage {
            create_request: CreateRequest {
                key: self.wire_key.clone(),
                range_end: self.wire_range_end.clone(),
                start_revision: self.next_revision,
                prev_kv: self.options.prev_kv,
                progress_notify: self.options.progress_notify,
                filters,
            },
        }
    }

    /// Opens a connection on the first endpoint that works and waits for the creation.
    async fn open(&mut self) -> std::result::Result<(), OpenError> {
        let mut last = None;
        for index in self.client.endpoint_order() {
            let wait = self.client.inner.options.connect_timeout
                + self.client.inner.options.request_timeout.unwrap_or(Duration::from_secs(10));
            let attempt = self.open_on(index);
            let result = match tokio::time::timeout(wait, attempt).await {
                Ok(r) => r,
                Err(_) => Err(OpenError::Retry(Error::timeout("creating the watch", wait))),
            };
            match result {
                Ok(conn) => {
                    self.client.mark_good(index);
                    self.conn = Some(conn);
                    return Ok(());
                }
                Err(OpenError::Retry(e)) => {
                    tracing::debug!(endpoint = %self.client.inner.endpoints[index], error = %e, "watch connect failed");
                    last = Some(e);
                }
                Err(fatal) => return Err(fatal),
            }
        }
        Err(OpenError::Retry(last.unwrap_or_else(|| Error::unavailable("no endpoint to watch on", None))))
    }

    async fn open_on(&mut self, index: usize) -> std::result::Result<Conn, OpenError> {
        let base = self.client.inner.endpoints[index].clone();
        let body = self.client.encode(&self.create_message()).map_err(OpenError::Fatal)?;
        let mut conn = match self.via {
            Via::Http => Self::open_http(&self.client, &base, body).await?,
            Via::Ws => Self::open_ws(&self.client, &base, body).await?,
        };
        // Wait for the creation message.
        let first = match conn.next_message(self.client.options().ws_idle_timeout).await {
            Some(Ok(bytes)) => bytes,
            Some(Err(e)) => return Err(OpenError::Retry(e)),
            None => {
                return Err(OpenError::Retry(Error::unavailable(
                    "the watch stream ended before the watch was created",
                    None,
                )))
            }
        };
        let response = self.parse(&first).map_err(|e| {
            if e.is_retryable() {
                OpenError::Retry(e)
            } else {
                OpenError::Fatal(e)
            }
        })?;
        if response.canceled {
            let e = self.cancel_error(&response);
            if e.is_token_problem() && self.client.inner.options.user.is_some() && !self.reauthenticated {
                self.reauthenticated = true;
                let stale = self.client.token();
                self.client.authenticate_now(stale).await.map_err(OpenError::Fatal)?;
                return Err(OpenError::Retry(e));
            }
            return Err(OpenError::Fatal(e));
        }
        self.reauthenticated = false;
        if !response.created {
            return Err(OpenError::Fatal(Error::Decode {
                what: "watch creation".into(),
                detail: "the first message does not confirm the creation".into(),
                source: None,
            }));
        }
        if self.created_revision == 0 {
            self.created_revision = response.header.revision;
        }
        if self.next_revision == 0 {
            self.next_revision = response.header.revision + 1;
        }
        // antietcd sends its history replay inside the creation message.
        if !response.events.is_empty() {
            let mut replay = response;
            replay.created = false;
            self.accept(replay);
        }
        Ok(conn)
    }

    async fn open_http(client: &Client, base: &str, body: Bytes) -> std::result::Result<Conn, OpenError> {
        let mut request = client
            .inner
            .http
            .post(format!("{base}/v3/watch"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(token) = client.token() {
            request = request.header(reqwest::header::AUTHORIZATION, token);
        }
        let response = request.send().await.map_err(|e| {
            let err = Error::unavailable("cannot open the watch stream", Some(Box::new(e)));
            OpenError::Retry(err)
        })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            let e = Error::from_reply(status.as_u16(), &body);
            return Err(if e.is_retryable() { OpenError::Retry(e) } else { OpenError::Fatal(e) });
        }
        Ok(Conn::Http(JsonStream::new(response)))
    }

    async fn open_ws(client: &Client, base: &str, body: Bytes) -> std::result::Result<Conn, OpenError> {
        let path = if client.flavour().is_antietcd() { "/watch" } else { "/v3/watch" };
        let url = format!("{}{path}", base.replacen("https://", "wss://", 1).replacen("http://", "ws://", 1));
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| OpenError::Fatal(Error::config("websocket URL", Some(Box::new(e)))))?;
        if let Some(token) = client.token() {
            if let Ok(value) = token.parse() {
                request.headers_mut().insert("authorization", value);
            }
        }
        let connector = tokio_tungstenite::Connector::Rustls(client.inner.tls.clone());
        let (mut socket, _) =
            tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector))
                .await
                .map_err(|e| {
                    let fatal = matches!(
                        e,
                        tokio_tungstenite::tungstenite::Error::Http(ref r)
                            if r.status().is_client_error()
                    );
                    let err = Error::unavailable("cannot open the watch websocket", Some(Box::new(e)));
                    if fatal {
                        OpenError::Fatal(err)
                    } else {
                        OpenError::Retry(err)
                    }
                })?;
        let text = String::from_utf8_lossy(&body).into_owned();
        socket.send(Message::text(text)).await.map_err(|e| {
            OpenError::Retry(Error::unavailable("cannot send the watch request", Some(Box::new(e))))
        })?;
        Ok(Conn::Ws(Box::new(socket)))
    }

    fn parse(&self, bytes: &[u8]) -> Result<WatchResponse> {
        self.client.decode::<Envelope<WatchResponse>>("watch message", bytes)?.into_result()
    }

    fn cancel_error(&self, response: &WatchResponse) -> Error {
        if response.compact_revision > 0 {
            return Error::Compacted {
                requested: self.next_revision,
                compact_revision: response.compact_revision,
            };
        }
        Error::from_message(&response.cancel_reason)
            .unwrap_or_else(|| Error::WatchCanceled { reason: response.cancel_reason.clone() })
    }

    /// Filters a message's events (range, filters, already seen revisions) and queues it.
    fn accept(&mut self, mut response: WatchResponse) {
        let had_events = !response.events.is_empty();
        let next = self.next_revision;
        let (key, end) = (&self.key, &self.range_end);
        let (no_put, no_delete) = (self.options.no_put, self.options.no_delete);
        response.events.retain(|ev| {
            let seen = ev.kv.mod_revision > 0 && ev.kv.mod_revision < next;
            let filtered = match ev.event_type {
                EventType::Put => no_put,
                EventType::Delete => no_delete,
            };
            !seen && !filtered && in_range(&ev.kv.key, key, end)
        });
        if let Some(max) = response.events.iter().map(|ev| ev.kv.mod_revision).max() {
            self.next_revision = self.next_revision.max(max + 1);
        }
        if had_events && response.events.is_empty() {
            return;
        }
        self.pending.push_back(Ok(response));
    }

    /// The next item of the stream.
    async fn next(&mut self) -> Option<Result<WatchResponse>> {
        let mut broken_since: Option<tokio::time::Instant> = None;
        let mut failures: u32 = 0;
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            let Some(conn) = self.conn.as_mut() else {
                let since = *broken_since.get_or_insert_with(tokio::time::Instant::now);
                match self.open().await {
                    Ok(()) => {
                        tracing::debug!(revision = self.next_revision, "watch resumed");
                        failures = 0;
                        continue;
                    }
                    Err(OpenError::Fatal(e)) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                    Err(OpenError::Retry(e)) => {
                        if let Some(limit) = self.options.reconnect_timeout {
                            if since.elapsed() >= limit {
                                self.done = true;
                                return Some(Err(e));
                            }
                        }
                        failures += 1;
                        let delay =
                            Duration::from_millis(100 * (1 << failures.min(5))).min(Duration::from_secs(2));
                        tracing::debug!(error = %e, ?delay, "watch reconnect failed");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                }
            };
            match conn.next_message(self.client.options().ws_idle_timeout).await {
                Some(Ok(bytes)) => match self.parse(&bytes) {
                    Ok(response) if response.canceled => {
                        let e = self.cancel_error(&response);
                        self.conn = None;
                        if !e.is_token_problem() {
                            self.done = true;
                            return Some(Err(e));
                        }
                    }
                    Ok(response) => {
                        if response.created {
                            // A creation we did not ask for: ignore.
                            continue;
                        }
                        self.accept(response);
                    }
                    Err(e) if e.is_retryable() => {
                        tracing::debug!(error = %e, "watch stream error, reconnecting");
                        self.conn = None;
                    }
                    Err(e) => {
                        self.done = true;
                        self.conn = None;
                        return Some(Err(e));
                    }
                },
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "watch connection broke, reconnecting");
                    self.conn = None;
                }
                None => {
                    tracing::debug!("watch connection ended, reconnecting");
                    self.conn = None;
                }
            }
        }
    }
}

/// A watch: a `Stream` of [`WatchResponse`]s holding events (and progress
/// notifications, when asked for).
///
/// It reconnects and resumes by itself. It ends after yielding an error that
/// reconnecting cannot fix: [`Error::Compacted`] (the start revision is gone),
/// a permission problem, or a server unreachable for longer than the reconnect
/// timeout. Dropping it cancels the watch.
pub struct WatchStream {
    inner: BoxStream<'static, Result<WatchResponse>>,
    created_revision: i64,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream")
            .field("created_revision", &self.created_revision)
            .finish_non_exhaustive()
    }
}

impl WatchStream {
    /// The store revision when the watch was created: events after it are delivered
    /// (or from the start revision, when one was given).
    pub fn created_revision(&self) -> i64 {
        self.created_revision
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchResponse>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl Client {
    /// Watches a key or range (see [`WatchOptions`]).
    ///
    /// Returns once the server confirmed the watch: every change after
    /// [`WatchStream::created_revision`] (or from the start revision) will be delivered.
    /// A compacted start revision is the stream's last item, [`Error::Compacted`].
    pub async fn watch(&self, key: impl Into<Vec<u8>>, options: Option<WatchOptions>) -> Result<WatchStream> {
        let options = options.unwrap_or_default();
        let (key, range_end) = options.spec.resolve(key.into());
        let antietcd = self.flavour().is_antietcd();
        let transport = options.transport.unwrap_or(self.inner.options.watch_transport);
        let via = match transport {
            WatchTransport::HttpStream => Via::Http,
            WatchTransport::WebSocket => Via::Ws,
            WatchTransport::Auto if antietcd => Via::Ws,
            WatchTransport::Auto => Via::Http,
        };
        let (mut wire_key, mut wire_range_end) = (key.clone(), range_end.clone());
        if antietcd {
            kv::antietcd_range(&mut wire_key, &mut wire_range_end);
        }
        let mut driver = Driver {
            client: self.clone(),
            next_revision: options.start_revision,
            key,
            range_end,
            wire_key,
            wire_range_end,
            options,
            via,
            created_revision: 0,
            conn: None,
            pending: VecDeque::new(),
            done: false,
            reauthenticated: false,
        };
        loop {
            match driver.open().await {
                Ok(()) => break,
                Err(OpenError::Retry(e)) if e.is_token_problem() && driver.reauthenticated => continue,
                Err(OpenError::Retry(e) | OpenError::Fatal(e)) => return Err(e),
            }
        }
        let created_revision = driver.created_revision;
        let inner = futures::stream::unfold(driver, |mut driver| async move {
            driver.next().await.map(|item| (item, driver))
        })
        .boxed();
        Ok(WatchStream { inner, created_revision })
    }
}
