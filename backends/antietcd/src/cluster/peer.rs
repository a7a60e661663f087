//! Outgoing peer links: one task per peer dials its websocket URL, sends `identify` on open, registers the
//! link (the only way this node sends to that peer), and redials `reconnect_interval` after the socket
//! closes. Replies arriving on the link complete the requests sent on it; anything else from the peer
//! (raft, requests) goes through the same dispatcher as an identified incoming socket.
//!
//! `wss://` peers are dialed with the cluster's peer TLS ([`crate::tls::PeerTls`]): their server
//! certificate must chain to `--peer_ca` (else `--ca`, else the web roots) and match the URL's host, and
//! this node presents `--peer_cert` (else `--cert`) as its client certificate, which the peer checks
//! against its own `--peer_ca` when it receives `identify`.

use super::{Cluster, Event, Inbound};
use crate::keepalive::{Due, Keepalive};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tinyraft::NodeId;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// How many outgoing messages may wait for a slow peer; raft messages beyond it are dropped.
const LINK_QUEUE: usize = 1024;
/// How long one dial (TCP + websocket handshake) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one frame may take to leave (a peer that stops reading, e.g. SIGSTOPped, blocks the socket):
/// past it the link is closed and redialed.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The most frames written at once (see `run_link`).
const COALESCE: usize = 64;
/// How much a dialed link reads per system call. tungstenite zeroes this much of its buffer before every
/// read, so its default (128 KiB) cost a 128 KiB `memset` per answer or acknowledgement received (2-3% of a
/// member's CPU under load); larger frames still arrive whole, the buffer grows to fit them.
const READ_BUFFER: usize = 16 * 1024;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<PeerReply>>>>;

/// A peer's reply to one of our requests.
#[derive(Debug)]
pub(crate) enum PeerReply {
    Value(Value),
    /// A successful API answer (a JSON object whose first field is `header`) as the text it came in: a
    /// forwarded request's answer goes to its client without being parsed and printed again.
    Answer(String),
}

impl PeerReply {
    pub(crate) fn into_value(self) -> Value {
        match self {
            PeerReply::Value(v) => v,
            PeerReply::Answer(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }
}

/// One open outgoing connection.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    /// Frames to send (text, or our binary batch frames).
    pub(crate) tx: mpsc::Sender<Message>,
    pending: Pending,
    generation: u64,
}

impl Link {
    pub(crate) fn add_pending(&self, id: u64, tx: oneshot::Sender<PeerReply>) {
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id, tx);
        }
    }

    #[cfg(test)]
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    pub(crate) fn remove_pending(&self, id: u64) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&id);
        }
    }
}

/// The open outgoing connections, by peer.
#[derive(Debug, Default)]
pub(crate) struct Links {
    links: Mutex<HashMap<NodeId, Link>>,
    generation: std::sync::atomic::AtomicU64,
}

impl Links {
    /// The open link to `peer`, if any.
    pub(crate) fn get(&self, peer: &str) -> Option<Link> {
        self.links.lock().ok()?.get(peer).cloned()
    }

    /// Sends a text frame to `peer` without waiting; false if there is no link or its queue is full.
    pub(crate) fn try_send(&self, peer: &str, text: String) -> bool {
        self.get(peer).is_some_and(|l| l.tx.try_send(Message::text(text)).is_ok())
    }

    fn register(&self, peer: &str, tx: mpsc::Sender<Message>, pending: Pending) -> u64 {
        let generation = self.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if let Ok(mut links) = self.links.lock() {
            links.insert(peer.to_owned(), Link { tx, pending, generation });
        }
        generation
    }

    fn unregister(&self, peer: &str, generation: u64) {
        if let Ok(mut links) = self.links.lock() {
            if links.get(peer).is_some_and(|l| l.generation == generation) {
                links.remove(peer);
            }
        }
    }
}

/// Dials `peer` at `url` until the node stops.
pub(crate) async fn dial_loop(
    cluster: Arc<Cluster>,
    peer: NodeId,
    url: String,
    keepalive: Duration,
    stopping: CancellationToken,
) {
    let reconnect = cluster.config.reconnect_interval;
    // The last dial error, logged at warn level when it changes (a TLS misconfiguration is worth seeing
    // once, not every reconnect_interval).
    let mut last_error = String::new();
    loop {
        let connector = tokio_tungstenite::Connector::Rustls(cluster.config.tls.connector.clone());
        let dial = tokio::time::timeout(
            DIAL_TIMEOUT,
            tokio_tungstenite::connect_async_tls_with_config(
                url.as_str(),
                Some(WebSocketConfig::default().read_buffer_size(READ_BUFFER)),
                true,
                Some(connector),
            ),
        );
        let dialed = tokio::select! {
            d = dial => d,
            _ = stopping.cancelled() => return,
        };
        match dialed {
            Ok(Ok((socket, _response))) => {
                last_error.clear();
                tracing::info!(target: "antietcd::cluster", "connected to {peer} at {url}");
                run_link(&cluster, &peer, socket, keepalive, &stopping).await;
                tracing::info!(target: "antietcd::cluster", "connection to {peer} closed");
                cluster.notify(Event::Disconnected(peer.clone()));
            }
            Ok(Err(e)) => {
                let error = e.to_string();
                if error != last_error {
                    tracing::warn!(target: "antietcd::cluster", "dialing {peer} at {url}: {error}");
                } else {
                    tracing::debug!(target: "antietcd::cluster", "dialing {peer} at {url}: {error}");
                }
                last_error = error;
            }
            Err(_) => tracing::debug!(target: "antietcd::cluster", "dialing {peer} at {url}: timeout"),
        }
        tokio::select! {
            _ = tokio::time::sleep(reconnect) => {}
            _ = stopping.cancelled() => return,
        }
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends one frame unless the node stops or the peer does not take it within [`SEND_TIMEOUT`]; false if
/// the link should close.
async fn send(socket: &mut Socket, message: Message, stopping: &CancellationToken) -> bool {
    tokio::select! {
        r = tokio::time::timeout(SEND_TIMEOUT, socket.send(message)) => matches!(r, Ok(Ok(()))),
        _ = stopping.cancelled() => false,
    }
}

/// Sends frames as one write (buffered, then flushed once), under the same rules as [`send`].
async fn send_all(socket: &mut Socket, frames: Vec<Message>, stopping: &CancellationToken) -> bool {
    let write = async {
        for frame in frames {
            socket.feed(frame).await?;
        }
        socket.flush().await
    };
    tokio::select! {
        r = tokio::time::timeout(SEND_TIMEOUT, write) => matches!(r, Ok(Ok(()))),
        _ = stopping.cancelled() => false,
    }
}

async fn run_link(
    cluster: &Arc<Cluster>,
    peer: &str,
    mut socket: Socket,
    keepalive: Duration,
    stopping: &CancellationToken,
) {
    let identify =
        serde_json::json!({"identify": {"key": cluster.config.key, "node_id": cluster.config.node_id}});
    if !send(&mut socket, Message::text(identify.to_string()), stopping).await {
        return;
    }
    let (tx, mut rx) = mpsc::channel::<Message>(LINK_QUEUE);
    let pending: Pending = Arc::default();
    let generation = cluster.links.register(peer, tx, pending.clone());
    cluster.notify(Event::Connected(peer.to_owned()));
    // Requests the peer sends on this socket are answered here, as by an incoming socket identified as it.
    let mut inbound = Inbound::trusted(cluster.clone(), peer.to_owned());
    let mut keepalive = Keepalive::new(keepalive);
    loop {
        let mut out: Vec<Message> = tokio::select! {
            frame = rx.recv() => match frame {
                Some(frame) => vec![frame],
                None => break,
            },
            msg = socket.next() => match msg {
                Some(Ok(Message::Text(t))) => { keepalive.heard(); texts(on_frame(&pending, &mut inbound, peer, t.as_bytes()).await) }
                Some(Ok(Message::Binary(b))) => { keepalive.heard(); texts(on_frame(&pending, &mut inbound, peer, &b).await) }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => { keepalive.heard(); continue }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            },
            reply = inbound.next_reply() => match reply { Some(r) => vec![Message::text(r)], None => continue },
            due = keepalive.due() => {
                if due == Due::Dead {
                    tracing::info!(target: "antietcd::cluster", "{peer} did not answer a ping: closing");
                    break;
                }
                if !send(&mut socket, Message::Ping(Default::default()), stopping).await { break; }
                continue;
            }
            _ = stopping.cancelled() => {
                let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(Message::Close(None))).await;
                break;
            }
        };
        // Whatever else is ready leaves in the same write: a batch's messages to this peer, replies, raft.
        // One system call (and one wake-up of the peer) instead of one per frame. Tasks that are ready to
        // run get their turn first (a follower's clients forward their writes one task each).
        if rx.is_empty() {
            tokio::task::yield_now().await;
        }
        while out.len() < COALESCE {
            match rx.try_recv() {
                Ok(frame) => out.push(frame),
                Err(_) => match inbound.try_next_reply() {
                    Some(text) => out.push(Message::text(text)),
                    None => break,
                },
            }
        }
        if !send_all(&mut socket, out, stopping).await {
            cluster.links.unregister(peer, generation);
            return;
        }
    }
    cluster.links.unregister(peer, generation);
}

fn texts(texts: Vec<String>) -> Vec<Message> {
    texts.into_iter().map(Message::text).collect()
}

/// `{"reply":{},"request_id":N}` (how our followers acknowledge a batch: serde_json sorts the keys) or
/// `{"request_id":N,"reply":{}}` (antietcd's order), exactly: its request id, without parsing JSON for
/// the most frequent reply of all.
fn empty_reply(data: &[u8]) -> Option<u64> {
    let digits = if let Some(rest) = data.strip_prefix(b"{\"reply\":{},\"request_id\":") {
        rest.strip_suffix(b"}")?
    } else {
        let rest = data.strip_prefix(b"{\"request_id\":")?;
        rest.strip_suffix(b",\"reply\":{}}")?
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// `{"request_id":N,"reply":{"header":...}}` (a successful answer to a forwarded request, as our leaders
/// and antietcd's write it): its request id and the answer's text, found without parsing the answer.
fn answer_reply(data: &[u8]) -> Option<(u64, String)> {
    let rest = data.strip_prefix(b"{\"request_id\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let id = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let answer = rest[digits..].strip_prefix(b",\"reply\":")?.strip_suffix(b"}")?;
    if !answer.starts_with(b"{\"header\":") || !answer.ends_with(b"}") {
        return None;
    }
    Some((id, String::from_utf8(answer.to_vec()).ok()?))
}

/// Completes our pending request `id`, if it still waits.
fn complete(pending: &Pending, id: u64, reply: PeerReply) {
    let waiter = pending.lock().ok().and_then(|mut p| p.remove(&id));
    if let Some(w) = waiter {
        let _ = w.send(reply);
    }
}

/// A frame from the peer on our outgoing socket.
async fn on_frame(pending: &Pending, inbound: &mut Inbound, peer: &str, data: &[u8]) -> Vec<String> {
    if let Some(id) = empty_reply(data) {
        complete(pending, id, PeerReply::Value(Value::Object(serde_json::Map::new())));
        return Vec::new();
    }
    if let Some((id, answer)) = answer_reply(data) {
        complete(pending, id, PeerReply::Answer(answer));
        return Vec::new();
    }
    if super::frame::is_batch(data) {
        return inbound.on_batch(data).await;
    }
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(data) else {
        tracing::debug!(target: "antietcd::cluster", "{peer} sent a frame that is not a JSON object");
        return Vec::new();
    };
    if !obj.contains_key("raft") && !obj.contains_key("identify") {
        if let Some(reply) = obj.remove("reply") {
            match obj.get("request_id").and_then(Value::as_u64) {
                Some(id) => complete(pending, id, PeerReply::Value(reply)),
                None => {
                    tracing::warn!(target: "antietcd::cluster", "{peer} replied {reply} (wrong cluster_key?)")
                }
            }
            return Vec::new();
        }
    }
    inbound.on_message(&mut obj).await.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_and_answers_are_recognised_without_parsing() {
        assert_eq!(empty_reply(br#"{"reply":{},"request_id":42}"#), Some(42));
        assert_eq!(empty_reply(br#"{"request_id":7,"reply":{}}"#), Some(7));
        for other in [
            &br#"{"reply":{},"request_id":}"#[..],
            br#"{"reply":{"error":"x"},"request_id":1}"#,
            br#"{"request_id":1,"reply":{},"x":1}"#,
            br#"{"reply":{},"request_id":1 }"#,
        ] {
            assert_eq!(empty_reply(other), None, "{}", String::from_utf8_lossy(other));
        }
        let answer = br#"{"request_id":3,"reply":{"header":{"revision":5}}}"#;
        assert_eq!(answer_reply(answer), Some((3, r#"{"header":{"revision":5}}"#.to_owned())));
        assert_eq!(answer_reply(br#"{"request_id":3,"reply":{"error":"no"}}"#), None);
        assert_eq!(answer_reply(br#"{"reply":{"header":{}},"request_id":3}"#), None);
    }
}
