//! Clustering, antietcd 1.3.1's way (spec section 5): every node dials every peer's URL over a websocket,
//! identifies itself with the cluster key, and a TinyRaft engine (crate `tinyraft`) elects one leader.
//!
//! ```text
//!  peer link tasks (one per peer, peer.rs)      incoming websockets (ws.rs → inbound.rs)
//!    dial ws://peer, send identify, redial        honoured only after a good identify
//!    replies → pending requests by request_id     raft → driver; dump/load/replicate/commit/handler
//!          │ raft, Connected/Disconnected                 │ raft            → replica.rs
//!          ▼                                              ▼
//!                    driver task (driver.rs): owns tinyraft::Engine, its two timers,
//!                    persists the term (term.rs) before acting on a higher one,
//!                    sends raft on the peer links, publishes ClusterStatus on a watch
//!                                          │ status
//!                                          ▼
//!                    leader task (replica.rs): resyncs followers, runs write batches
//!                    (apply → replicate to every follower → commit → answer)
//! ```
//!
//! As in antietcd, a node originates messages (raft, requests) only on its own outgoing socket to a peer;
//! replies travel back on the socket the request came on. `Cluster::request` is the request/reply
//! primitive (`request_id`, per-request timeout) `dump`, `load`, `replicate`, `compact`, `check_leader` and
//! forwarded requests are built on. API calls go through `Cluster::route`: writes to the leader
//! (forwarded by followers), reads behind the replication gate (see the `replica` module for the guarantees).

mod config;
mod driver;
mod frame;
mod inbound;
mod peer;
pub(crate) mod replica;
mod term;
#[cfg(test)]
mod tests;

pub use config::{parse_cluster, peer_ws_url, ClusterConfig, ClusterConfigError, PeerTimeouts};
pub(crate) use frame::is_batch as is_batch_frame;
pub(crate) use inbound::{next_reply, Inbound};

use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tinyraft::{NodeId, Role, Term};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a node knows about the cluster, published by the election driver on a `tokio::sync::watch`
/// ([`Node::cluster_status`](crate::Node::cluster_status)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// This node's id.
    pub node_id: NodeId,
    /// Leader, candidate or follower (TinyRaft's meanings).
    pub role: Role,
    /// The current TinyRaft term.
    pub term: Term,
    /// The leader (for a candidate: the node it voted for), if known.
    pub leader: Option<NodeId>,
    /// While leader: the nodes that follow it, itself included (a quorum).
    pub followers: Option<BTreeSet<NodeId>>,
    /// The peers with an open outgoing connection (identify sent).
    pub connected: BTreeSet<NodeId>,
    /// While leader: the end of its confirmed lease. Changes of this field alone do not wake watchers.
    pub lease_until: Option<tokio::time::Instant>,
}

impl ClusterStatus {
    /// Whether this node is leader with a confirmed lease at `now`: no other node can be leader, so it may
    /// serve linearizable reads.
    pub fn is_confirmed_leader(&self, now: tokio::time::Instant) -> bool {
        self.role == Role::Leader && self.lease_until.is_some_and(|end| now < end)
    }

    /// antietcd's `raftState` word for the role.
    pub fn state_name(&self) -> &'static str {
        match self.role {
            Role::Leader => "leader",
            Role::Candidate => "candidate",
            Role::Follower => "follower",
        }
    }
}

/// A JSON object text with `"request_id": id` added (spliced in: the text is not parsed again).
fn with_request_id(body: &str, id: u64) -> Option<String> {
    let open = body.trim_end().strip_suffix('}')?;
    Some(if open.trim_end().ends_with('{') {
        format!("{open}\"request_id\":{id}}}")
    } else {
        format!("{open},\"request_id\":{id}}}")
    })
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The persisted term could not be read.
    #[error("reading the persisted raft term: {0}")]
    Term(#[from] std::io::Error),
    /// The election engine refused its configuration.
    #[error(transparent)]
    Config(#[from] tinyraft::ConfigError),
}

/// Why a peer request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// No open connection to that peer (or it closed before replying).
    #[error("peer {0} is unavailable")]
    Unavailable(NodeId),
    /// No reply within the request's timeout.
    #[error("timeout")]
    Timeout,
    /// The peer replied `{"error": message}`.
    #[error("{0}")]
    Remote(String),
}

/// An input of the election driver.
#[derive(Debug)]
pub(crate) enum Event {
    /// A raft message from an identified peer.
    Raft { from: NodeId, message: tinyraft::Message },
    /// Our outgoing connection to the peer opened (identify sent).
    Connected(NodeId),
    /// Our outgoing connection to the peer closed.
    Disconnected(NodeId),
    /// Start an election now (e.g. replication failed): antietcd's `raft.start()`.
    Campaign,
}

/// The node's cluster runtime: configuration, peer links, the driver's inbox and its status.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) config: Arc<ClusterConfig>,
    pub(crate) links: Arc<peer::Links>,
    events: mpsc::Sender<Event>,
    status: watch::Receiver<ClusterStatus>,
    next_request: AtomicU64,
    /// Replication state (see the `replica` module).
    pub(crate) repl: replica::Replica,
}

/// A peer's reply with an `error` field (a string, or anything else not null) is a [`PeerError::Remote`].
fn remote_error(reply: &Value) -> Result<(), PeerError> {
    match reply.get("error") {
        Some(Value::String(e)) => Err(PeerError::Remote(e.clone())),
        Some(e) if !e.is_null() => Err(PeerError::Remote(e.to_string())),
        _ => Ok(()),
    }
}

impl Cluster {
    /// Starts the election driver and one dialing task per peer on `tracker`; they end when `stopping` is
    /// cancelled.
    pub(crate) fn start(
        config: ClusterConfig,
        ws_keepalive: Duration,
        tracker: &TaskTracker,
        stopping: CancellationToken,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let terms = term::TermStore::open(config.term_file.clone())?;
        // The term of the last sync lives next to the raft term (`raft_term.synced`).
        let synced_file = config.term_file.as_ref().map(|p| {
            let mut name = p.file_name().map(|n| n.to_os_string()).unwrap_or_default();
            name.push(".synced");
            p.with_file_name(name)
        });
        let synced = term::TermStore::open(synced_file)?;
        let engine = tinyraft::Engine::new(
            config.raft.clone(),
            terms.stored(),
            tinyraft::SplitMix64::new(rand::random::<u64>()),
        )?;
        let initial = ClusterStatus {
            node_id: config.node_id.clone(),
            role: engine.role(),
            term: engine.term(),
            leader: None,
            followers: None,
            connected: BTreeSet::new(),
            lease_until: None,
        };
        let (status_tx, status_rx) = watch::channel(initial);
        let (events_tx, events_rx) = mpsc::channel(4096);
        let cluster = Arc::new(Cluster {
            config: Arc::new(config),
            links: Arc::new(peer::Links::default()),
            events: events_tx,
            status: status_rx,
            next_request: AtomicU64::new(1),
            repl: replica::Replica::new(synced),
        });
        tracing::info!(target: "antietcd::cluster", "node {} starting at term {}", cluster.config.node_id, terms.stored());
        let driver = driver::Driver::new(engine, terms, cluster.links.clone(), status_tx);
        tracker.spawn(driver.run(events_rx, stopping.clone()));
        for (id, url) in cluster.config.peers() {
            tracker.spawn(peer::dial_loop(cluster.clone(), id.clone(), url, ws_keepalive, stopping.clone()));
        }
        Ok(cluster)
    }

    /// A receiver of the cluster status.
    pub(crate) fn status(&self) -> watch::Receiver<ClusterStatus> {
        self.status.clone()
    }

    /// Hands an event to the driver; dropped if its inbox is full (raft tolerates lost messages).
    pub(crate) fn notify(&self, event: Event) {
        if self.events.try_send(event).is_err() {
            tracing::debug!(target: "antietcd::cluster", "driver inbox full: event dropped");
        }
    }

    /// Sends `body` (a request object; `request_id` is added) to peer `to` on our outgoing connection and
    /// waits up to `timeout` for `{"request_id": R, "reply": X}` on that connection. `X` with an `error`
    /// field is a [`PeerError::Remote`].
    pub(crate) async fn request(
        &self,
        to: &str,
        body: Map<String, Value>,
        timeout: Duration,
    ) -> Result<Value, PeerError> {
        let reply = self.request_value(to, body, timeout).await?;
        remote_error(&reply)?;
        Ok(reply)
    }

    /// [`Cluster::request`] without interpreting the reply.
    pub(crate) async fn request_value(
        &self,
        to: &str,
        mut body: Map<String, Value>,
        timeout: Duration,
    ) -> Result<Value, PeerError> {
        let message = |id: u64| {
            body.insert("request_id".into(), id.into());
            Ok(Message::text(Value::Object(body).to_string()))
        };
        self.call(to, message, timeout).await.map(peer::PeerReply::into_value)
    }

    /// [`Cluster::request_value`] of a request already serialised (a JSON object text; `request_id` is
    /// added).
    pub(crate) async fn request_text(
        &self,
        to: &str,
        body: &str,
        timeout: Duration,
    ) -> Result<peer::PeerReply, PeerError> {
        let message = |id| {
            with_request_id(body, id)
                .map(Message::text)
                .ok_or_else(|| PeerError::Remote("not a JSON object".into()))
        };
        self.call(to, message, timeout).await
    }

    /// The request/reply primitive under the `request_*` methods: sends the frame `message` builds for a
    /// fresh request id on our link to `to` and waits up to `timeout` for the reply carrying that id.
    async fn call(
        &self,
        to: &str,
        message: impl FnOnce(u64) -> Result<Message, PeerError>,
        timeout: Duration,
    ) -> Result<peer::PeerReply, PeerError> {
        let link = self.links.get(to).ok_or_else(|| PeerError::Unavailable(to.to_owned()))?;
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let message = message(id)?;
        let (tx, rx) = oneshot::channel();
        link.add_pending(id, tx);
        let sent = async {
            link.tx.send(message).await.map_err(|_| PeerError::Unavailable(to.to_owned()))?;
            rx.await.map_err(|_| PeerError::Unavailable(to.to_owned()))
        };
        let reply = tokio::time::timeout(timeout, sent).await.unwrap_or(Err(PeerError::Timeout));
        link.remove_pending(id);
        reply
    }

    /// Sends every message of `bodies` (JSON object texts; `request_id` is added) to `to` in order on one
    /// link (pipelined: all are sent before any reply is awaited) and waits up to `timeout` for all
    /// replies; the first error or missing reply fails the whole. Texts are serialised once by the caller,
    /// however many peers they go to.
    pub(crate) async fn request_all(
        &self,
        to: &str,
        bodies: &[String],
        timeout: Duration,
    ) -> Result<(), PeerError> {
        let link = self.links.get(to).ok_or_else(|| PeerError::Unavailable(to.to_owned()))?;
        let mut ids = Vec::with_capacity(bodies.len());
        let run = async {
            let mut replies = Vec::with_capacity(bodies.len());
            for body in bodies {
                let id = self.next_request.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = oneshot::channel();
                link.add_pending(id, tx);
                ids.push(id);
                replies.push(rx);
                let text =
                    with_request_id(body, id).ok_or_else(|| PeerError::Remote("not a JSON object".into()))?;
                link.tx.send(Message::text(text)).await.map_err(|_| PeerError::Unavailable(to.to_owned()))?;
            }
            for rx in replies {
                let reply = rx.await.map_err(|_| PeerError::Unavailable(to.to_owned()))?.into_value();
                remote_error(&reply)?;
            }
            Ok(())
        };
        let result = match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(PeerError::Timeout),
        };
        for id in ids {
            link.remove_pending(id);
        }
        result
    }

    /// Sends a binary batch frame ([`frame::encode`]; its request id is set here) to `to` and waits up to
    /// `timeout` for its reply, as [`Cluster::request_all`] does.
    pub(crate) async fn request_frame(
        &self,
        to: &str,
        frame: &[u8],
        timeout: Duration,
    ) -> Result<(), PeerError> {
        let message = |id| {
            let mut frame = frame.to_vec();
            frame::set_request_id(&mut frame, id);
            Ok(Message::binary(frame))
        };
        remote_error(&self.call(to, message, timeout).await?.into_value())
    }

    /// The term of this node's last sync (antietcd's `stored_term`), as reported in dumps.
    pub(crate) fn synced_term(&self) -> Term {
        self.repl.stored_term()
    }

    /// Adds antietcd's cluster fields to `/v3/maintenance/status`: `header.member_id`, `header.raft_term`,
    /// `cluster`, `leader`, `followers` (only while leader), `raftTerm`, `raftState`. Term 0 is omitted.
    pub(crate) fn status_fields(&self, header: &mut Map<String, Value>, body: &mut Map<String, Value>) {
        let st = self.status.borrow().clone();
        header.insert("member_id".into(), st.node_id.clone().into());
        if st.term > 0 {
            header.insert("raft_term".into(), st.term.into());
        }
        let cluster: Map<String, Value> =
            self.config.nodes.iter().map(|(id, url)| (id.clone(), Value::String(url.clone()))).collect();
        body.insert("cluster".into(), Value::Object(cluster));
        if let Some(leader) = &st.leader {
            body.insert("leader".into(), leader.clone().into());
        }
        if let (Role::Leader, Some(f)) = (st.role, &st.followers) {
            body.insert("followers".into(), f.iter().cloned().map(Value::from).collect());
        }
        if st.term > 0 {
            body.insert("raftTerm".into(), st.term.into());
        }
        body.insert("raftState".into(), st.state_name().into());
    }
}
