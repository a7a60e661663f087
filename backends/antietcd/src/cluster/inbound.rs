//! Peer messages arriving on a websocket (section 5.2), honoured only from an identified peer.
//!
//! An incoming socket starts unidentified: every peer message on it is refused with an `error` reply and
//! has no effect (antietcd 1.3.1 executes forwarded requests and `check_leader` from anyone; we do not).
//! `{"identify":{"key","node_id"}}` with this cluster's key and another member's id makes the socket that
//! peer's; a wrong key gets `{"reply":{"error":"peer authentication error"}}`. With `--peer_ca`, `identify`
//! also needs the client certificate the peer presented on this TLS connection to chain to peer_ca
//! ([`crate::tls::PeerCa::admits`]), else the same error. Our own outgoing sockets are identified from the
//! start (we dialed that peer's URL and checked its server certificate).
//!
//! Dispatch order is antietcd's: `raft`, `identify`, `dump`, `load`, `replicate`, `handler` (a forwarded
//! request), `reply`, `compact`, `unlock`, `check_leader`. Requests may be answered later: their replies go
//! through [`Inbound::next_reply`], which the socket's task polls. Binary frames that start with the batch
//! magic byte are our leaders' batches ([`super::frame`]), honoured on the same terms.

use super::{Cluster, Event};
use serde_json::{Map, Value};
use std::sync::Arc;
use tinyraft::{NodeId, Role};
use tokio::sync::mpsc;

/// The peer side of one websocket.
#[derive(Debug)]
pub(crate) struct Inbound {
    cluster: Arc<Cluster>,
    /// The identified peer, if any.
    peer: Option<NodeId>,
    /// Replies produced asynchronously (by request handlers of the replication slice).
    replies_tx: mpsc::Sender<String>,
    replies_rx: mpsc::Receiver<String>,
    /// The certificates the client presented on this connection's TLS handshake (for `--peer_ca`).
    client_certificates: Option<crate::tls::ClientCertificates>,
}

/// The next asynchronous reply for the socket, if it has a peer side; pending forever otherwise.
pub(crate) async fn next_reply(inbound: &mut Option<Inbound>) -> Option<String> {
    match inbound {
        Some(i) => i.next_reply().await,
        None => std::future::pending().await,
    }
}

pub(super) fn reply(request_id: Option<&Value>, body: Value) -> String {
    let mut m = Map::new();
    if let Some(id) = request_id {
        m.insert("request_id".into(), id.clone());
    }
    m.insert("reply".into(), body);
    Value::Object(m).to_string()
}

pub(super) fn error_reply(request_id: Option<&Value>, message: &str) -> String {
    reply(request_id, serde_json::json!({ "error": message }))
}

/// The peer message kinds, in antietcd's dispatch order (then ours: `commit`, `resume`, `batch`, `history`).
const KINDS: [&str; 14] = [
    "raft",
    "identify",
    "dump",
    "load",
    "replicate",
    "handler",
    "reply",
    "compact",
    "unlock",
    "check_leader",
    "commit",
    "resume",
    "batch",
    "history",
];

impl Inbound {
    /// An incoming socket: unidentified until a valid `identify`.
    pub(crate) fn new(cluster: Arc<Cluster>) -> Inbound {
        let (replies_tx, replies_rx) = mpsc::channel(64);
        Inbound { cluster, peer: None, replies_tx, replies_rx, client_certificates: None }
    }

    /// Sets the certificates the client presented on this connection's TLS handshake, checked against
    /// `--peer_ca` when it sends `identify`.
    pub(crate) fn with_client_certificates(
        mut self,
        certs: Option<crate::tls::ClientCertificates>,
    ) -> Inbound {
        self.client_certificates = certs;
        self
    }

    /// Our outgoing socket to `peer`: identified from the start.
    pub(crate) fn trusted(cluster: Arc<Cluster>, peer: NodeId) -> Inbound {
        let mut i = Inbound::new(cluster);
        i.peer = Some(peer);
        i
    }

    /// The next asynchronous reply. Never `None` in practice (this struct holds a sender).
    pub(crate) async fn next_reply(&mut self) -> Option<String> {
        self.replies_rx.recv().await
    }

    /// An asynchronous reply that is ready now, if any (to go out in the same write as others).
    pub(crate) fn try_next_reply(&mut self) -> Option<String> {
        self.replies_rx.try_recv().ok()
    }

    /// Handles one binary batch frame ([`super::frame`]) from our leader.
    pub(crate) async fn on_batch(&mut self, data: &[u8]) -> Vec<String> {
        let Some(peer) = self.peer.clone() else {
            tracing::warn!(target: "antietcd::cluster", "batch frame from an unidentified connection ignored");
            return vec![
                serde_json::json!({ "error": "batch refused: identify with the cluster key first" })
                    .to_string(),
            ];
        };
        super::replica::on_peer_batch(&self.cluster, &peer, data, &self.replies_tx).await
    }

    /// Handles one message object; `None` if it is not a peer message (the caller treats it as unknown).
    pub(crate) async fn on_message(&mut self, obj: &mut Map<String, Value>) -> Option<Vec<String>> {
        let kind = KINDS.iter().copied().find(|k| obj.contains_key(*k))?;
        let request_id = obj.get("request_id");
        if kind == "identify" {
            return Some(self.identify(obj.get("identify")));
        }
        let Some(peer) = self.peer.clone() else {
            tracing::warn!(target: "antietcd::cluster", "{kind} message from an unidentified connection ignored");
            let text = format!("{kind} refused: identify with the cluster key first");
            return Some(vec![match request_id {
                Some(_) => error_reply(request_id, &text),
                None => serde_json::json!({ "error": text }).to_string(),
            }]);
        };
        let out = match kind {
            "raft" => {
                match obj.get("raft").cloned().map(serde_json::from_value::<tinyraft::Message>) {
                    Some(Ok(message)) => self.cluster.notify(Event::Raft { from: peer, message }),
                    _ => tracing::debug!(target: "antietcd::cluster", "malformed raft message from {peer}"),
                }
                Vec::new()
            }
            // Replies to our requests come on our outgoing sockets (peer.rs); one here answers nothing.
            "reply" => Vec::new(),
            "check_leader" => {
                let term = obj.get("term").and_then(Value::as_u64);
                let ok = {
                    let st = self.cluster.status.borrow();
                    st.role == Role::Leader
                        && Some(st.term) == term
                        && st.is_confirmed_leader(tokio::time::Instant::now())
                };
                // The read index: what this leader has committed. The follower serves the read once it has
                // that much (antietcd's leader answers `{}`).
                let committed = self.cluster.repl.committed_revision(term);
                vec![if let (true, Some(revision)) = (ok, committed) {
                    reply(request_id, serde_json::json!({ "revision": revision }))
                } else {
                    error_reply(request_id, "raft leader/term mismatch")
                }]
            }
            // dump, load, replicate, handler, compact, unlock, commit.
            other => {
                super::replica::on_peer_message(&self.cluster, &peer, other, obj, &self.replies_tx).await
            }
        };
        Some(out)
    }

    fn identify(&mut self, body: Option<&Value>) -> Vec<String> {
        let key = body.and_then(|b| b.get("key")).and_then(Value::as_str);
        let node_id = body.and_then(|b| b.get("node_id")).and_then(Value::as_str);
        let config = &self.cluster.config;
        if let Some(peer_ca) = &config.tls.peer_ca {
            let chain = self.client_certificates.as_ref().map(|c| &c.0[..]).unwrap_or_default();
            if !peer_ca.admits(chain) {
                tracing::warn!(target: "antietcd::cluster",
                    "identify refused (node_id {node_id:?}): {} does not chain to --peer_ca",
                    if chain.is_empty() { "no client certificate, which" } else { "the client certificate" });
                return vec![error_reply(None, "peer authentication error")];
            }
        }
        let key_ok = key.is_some_and(|k| constant_time_eq(k.as_bytes(), config.key.as_bytes()));
        match node_id {
            Some(id) if key_ok && id != config.node_id && config.nodes.contains_key(id) => {
                tracing::info!(target: "antietcd::cluster", "peer {id} identified");
                self.peer = Some(id.to_owned());
                Vec::new()
            }
            _ => {
                tracing::warn!(target: "antietcd::cluster", "identify refused (node_id {node_id:?}, key {})",
                    if key_ok { "ok" } else { "wrong" });
                vec![error_reply(None, "peer authentication error")]
            }
        }
    }
}

/// Compares secrets without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
