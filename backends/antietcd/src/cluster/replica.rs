//! Replication (spec sections 5.3-5.7), done so that the cluster is linearizable:
//!
//! * **Leader.** One task ([`run`]) owns the write path. After every election and every change of the
//!   followers it resyncs them (`dump` from each, the most advanced state wins, `load` to each); only then
//!   is it *synced*. Writes arrive as [`Proposal`]s and are applied in batches: the batch takes the read
//!   gate exclusively, applies each write to the engine (which holds the resulting watch batches back),
//!   sends the changes to **every** follower in order (ours: one binary frame per batch, see `frame.rs`;
//!   antietcd's: `replicate` messages), waits for all of them and for its own disk, and only then
//!   publishes the batches to watchers, lets readers in again, tells followers `commit` (ours: in the
//!   next batch's frame when one follows at once), and answers the clients. A failure answers 503, leaves
//!   the batch invisible, and resyncs (which decides whether the batch survives: it does if the winner has
//!   it). A follower whose link is down holds writes back (queued, up to `wait_quorum_timeout`) until it
//!   is back or the election engine drops it from the followers; only a resync failing for two election
//!   timeouts starts an election.
//! * **Follower.** Applies batches and `replicate` messages in order (logged through the engine's journal),
//!   holding the read gate from the first uncommitted change until the leader's `commit`, so local readers
//!   never see a change the leader has not committed. Writes received from clients are forwarded to the
//!   leader.
//! * **Reads** wait for the gate; on the leader they need a confirmed leader lease, on a follower with
//!   `stale_read` off a `check_leader` round trip first: both linearizable.
//!
//! antietcd 1.3.1 peers interoperate: they receive the same `replicate`, `load`, `dump` and `unlock`
//! messages, ignore our `commit`, and our followers apply their leaders' changes without holding (an
//! antietcd leader does not say when a change commits).

use super::frame::{Item, Record};
use super::{Cluster, ClusterStatus, Event, PeerError};
use crate::engine::{JournalRecord, ReplicatedChange, ReplicatedEvent};
use crate::http::Api;
use crate::server::Shared;
use crate::types::{EventKind, LeaseId, Revision};
use crate::wire::{field, lease_id, truthy, ApiError, ApiResult};
use crate::Journal;
use base64::Engine as _;
use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;
use tinyraft::{NodeId, Role, Term};
use tokio::sync::{mpsc, oneshot, watch, OwnedRwLockWriteGuard, RwLock};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The most writes applied and replicated as one batch.
const MAX_BATCH: usize = 256;
/// How often the leader looks for expired leases.
const LEASE_TICK: Duration = Duration::from_millis(250);

/// A write waiting for the leader's write task.
#[derive(Debug)]
pub(crate) struct Proposal {
    api: Api,
    body: Map<String, Value>,
    reply: Option<Reply>,
}

/// Where the answer to a [`Proposal`] goes.
#[derive(Debug)]
enum Reply {
    /// An API call on this node, waiting (a dropped receiver: its client gave up).
    Local(oneshot::Sender<ApiResult<String>>),
    /// A follower's forwarded request, answered straight on that peer's socket (no task of its own waits
    /// for it). Past `deadline` the follower has answered 503 itself: the write must not run anymore (a
    /// client retrying elsewhere could otherwise see it land after its retry).
    Peer { replier: mpsc::Sender<String>, request_id: Option<Value>, deadline: Instant },
}

impl Reply {
    /// Whether nobody waits for the answer anymore (the write is better not applied at all).
    fn gave_up(&self) -> bool {
        match self {
            Reply::Local(tx) => tx.is_closed(),
            Reply::Peer { deadline, .. } => Instant::now() >= *deadline,
        }
    }
}

/// The replication state of one node, shared by its leader task, its peer sockets and its API calls.
#[derive(Debug)]
pub(crate) struct Replica {
    /// API reads share it; a leader's batch in flight, or a follower's uncommitted changes, hold it
    /// exclusively. Fair (FIFO), so readers queued behind a batch go before the next batch.
    gate: Arc<RwLock<()>>,
    /// `Some(term)` while this node is synced in `term`: as leader after its resync, as follower after the
    /// leader's `load`.
    synced: watch::Sender<Option<Term>>,
    /// The term of the last sync, persisted: it ranks this node's data in a resync (antietcd's
    /// `stored_term`).
    stored: tokio::sync::Mutex<super::term::TermStore>,
    stored_now: std::sync::atomic::AtomicU64,
    proposals: mpsc::Sender<Proposal>,
    inbox: Mutex<Option<mpsc::Receiver<Proposal>>>,
    follower: Mutex<FollowerState>,
    /// The node's shared state, set once it exists.
    shared: OnceLock<Weak<Shared>>,
    /// Records the engine journals while this node leads (what the batch must replicate).
    tap: Arc<Tap>,
    /// The followers known to be ours (they answered a summary dump): they take a whole batch in one
    /// `batch` message and need no `unlock`.
    ours: Mutex<BTreeSet<NodeId>>,
    /// Woken whenever a follower publishes committed changes (reads waiting for a read index).
    released: tokio::sync::Notify,
    /// Whether the engine's visible revision is known to be committed: once this process has been synced,
    /// or after a restart whose log noted what was committed (the tail after it is held).
    trusted: AtomicBool,
    /// How this node's resyncs went (`/metrics`).
    pub(crate) stats: ResyncStats,
}

/// How often this node's state was brought in line in a resync, by which means (`/metrics`): catching up
/// keeps the watch history, a full load cancels watchers as lagging.
#[derive(Debug, Default)]
pub(crate) struct ResyncStats {
    /// States replaced whole by another node's (`load` on a follower, a leader taking a winner's dump),
    /// counted only when something changed.
    pub(crate) full_loads: AtomicU64,
    /// Catch-ups with the missing revisions only (`resume` on a follower, `history` pulled by a leader).
    pub(crate) catch_ups: AtomicU64,
    /// Uncommitted tails undone before a catch-up.
    pub(crate) undone_tails: AtomicU64,
}

#[derive(Debug, Default)]
struct FollowerState {
    /// Held from the first applied-but-uncommitted change until the leader's `commit`.
    guard: Option<OwnedRwLockWriteGuard<()>>,
    /// Whether the current leader sends `commit` (ours do, right after `load`; antietcd's never).
    leader_commits: bool,
}

impl Replica {
    pub(crate) fn new(stored: super::term::TermStore) -> Replica {
        let (tx, rx) = mpsc::channel(4096);
        let now = stored.stored();
        Replica {
            gate: Arc::new(RwLock::new(())),
            synced: watch::channel(None).0,
            stored: tokio::sync::Mutex::new(stored),
            stored_now: now.into(),
            proposals: tx,
            inbox: Mutex::new(Some(rx)),
            follower: Mutex::new(FollowerState::default()),
            shared: OnceLock::new(),
            tap: Arc::new(Tap::default()),
            ours: Mutex::new(BTreeSet::new()),
            released: tokio::sync::Notify::new(),
            trusted: AtomicBool::new(false),
            stats: ResyncStats::default(),
        }
    }

    fn follower(&self) -> std::sync::MutexGuard<'_, FollowerState> {
        self.follower.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn shared(&self) -> Option<Arc<Shared>> {
        self.shared.get().and_then(Weak::upgrade)
    }

    /// The term of the last sync.
    pub(crate) fn stored_term(&self) -> Term {
        self.stored_now.load(Ordering::Relaxed)
    }

    async fn set_stored_term(&self, term: Term) -> std::io::Result<()> {
        self.stored.lock().await.raise(term).await?;
        self.stored_now.fetch_max(term, Ordering::Relaxed);
        Ok(())
    }

    /// What this node, as the synced leader of `term`, has committed (its visible revision).
    pub(crate) fn committed_revision(&self, term: Option<Term>) -> Option<Revision> {
        let shared = self.shared()?;
        (term.is_some() && *self.synced.borrow() == term).then(|| shared.engine.visible_revision())
    }

    fn set_synced(&self, term: Option<Term>) {
        if term.is_some() {
            self.trusted.store(true, Ordering::Release);
        }
        self.synced.send_if_modified(|s| {
            let changed = *s != term;
            *s = term;
            changed
        });
    }
}

/// The journal of a cluster node: passes every record on to the write-ahead log (if any) and, while the
/// node leads, keeps a copy for the batch in progress.
#[derive(Debug, Default)]
pub(crate) struct Tap {
    inner: OnceLock<Option<Arc<dyn Journal>>>,
    on: AtomicBool,
    records: Mutex<Vec<JournalRecord<'static>>>,
}

impl Journal for Tap {
    fn record(&self, record: &JournalRecord<'_>) -> Result<(), String> {
        if let Some(Some(inner)) = self.inner.get() {
            inner.record(record)?;
        }
        if self.on.load(Ordering::Acquire) {
            let owned = match record {
                JournalRecord::Commit { revision, events } => {
                    JournalRecord::Commit { revision: *revision, events: events.to_vec().into() }
                }
                JournalRecord::LeaseGrant { id, ttl } => JournalRecord::LeaseGrant { id: *id, ttl: *ttl },
                JournalRecord::LeaseRevoke { id } => JournalRecord::LeaseRevoke { id: *id },
                JournalRecord::Compact { revision } => JournalRecord::Compact { revision: *revision },
            };
            self.records.lock().unwrap_or_else(PoisonError::into_inner).push(owned);
        }
        Ok(())
    }

    fn committed(&self, revision: Revision) {
        if let Some(Some(inner)) = self.inner.get() {
            inner.committed(revision);
        }
    }
}

impl Tap {
    fn take(&self) -> Vec<JournalRecord<'static>> {
        std::mem::take(&mut *self.records.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Wires the replication runtime into a started node: the engine holds batches, leases wait for the
/// leader, the journal is tapped, and the leader task starts.
pub(crate) fn attach(cluster: &Arc<Cluster>, shared: &Arc<Shared>) {
    let repl = &cluster.repl;
    let _ = repl.shared.set(Arc::downgrade(shared));
    let engine = &shared.engine;
    engine.set_hold(true);
    // A restart replayed the log: what it wrote after the last revision it knew committed may not be on
    // the cluster's line. Held again, that tail can be undone at the resync (keeping the watch history
    // whole) instead of being replaced by a full load; and the rest is known committed.
    let committed = shared.durable.as_ref().and_then(|d| d.recovery().committed);
    if let Some(committed) = committed {
        if engine.hold_after(committed) {
            repl.trusted.store(true, Ordering::Release);
            tracing::info!(target: "antietcd::cluster", "{}: restarted at revision {}, committed {committed}",
                cluster.config.node_id, engine.revision());
        }
    }
    engine.pause_lease_expiry(true);
    let _ = repl.tap.inner.set(engine.journal());
    engine.set_journal(Some(repl.tap.clone()));
    let inbox = repl.inbox.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(inbox) = inbox {
        shared.tracker.spawn(run(cluster.clone(), inbox, shared.stopping.clone()));
    }
}

fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
}

// ---- Client requests ------------------------------------------------------------------------------

impl Cluster {
    /// antietcd's request gate (section 5.4) and routing, for every API but status and dump. `forwarded`:
    /// the call came from a follower (never forwarded again).
    pub(crate) async fn route(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        api: Api,
        body: Map<String, Value>,
        forwarded: bool,
    ) -> ApiResult<String> {
        let leaderonly = truthy(body.get("leaderonly"));
        let nowait = truthy(body.get("nowaitquorum"));
        let serializable = truthy(body.get("serializable"));
        let deadline = Instant::now() + self.config.timeouts.wait_quorum;
        let mut status = self.status();
        let mut synced = self.repl.synced.subscribe();
        loop {
            // Only what routing needs (cloning the whole status costs allocations on every call).
            let st = {
                let s = status.borrow_and_update();
                View { role: s.role, term: s.term, leader: s.leader.clone() }
            };
            if leaderonly && st.role != Role::Leader {
                return Err(unavailable("Not leader"));
            }
            let is_synced = *synced.borrow_and_update() == Some(st.term);
            match st.role {
                Role::Follower if api != Api::Range => {
                    if forwarded {
                        return Err(unavailable("Not leader"));
                    }
                    return self.forward(&st, api, &body).await;
                }
                Role::Candidate if nowait => return Err(unavailable("Quorum not available")),
                _ if is_synced && st.role != Role::Candidate => {
                    if st.role == Role::Leader && api.writes() {
                        return self.propose(api, body, deadline).await;
                    }
                    return self.read(shared, &st, api, &body, serializable, deadline).await;
                }
                _ if nowait => return Err(unavailable("Quorum not available")),
                _ => {}
            }
            // Not synced (or a candidate): wait for that to change, up to wait_quorum_timeout.
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Err(unavailable("Quorum not available")),
                r = status.changed() => if r.is_err() { return Err(stopping()) },
                r = synced.changed() => if r.is_err() { return Err(stopping()) },
            }
        }
    }

    /// Waits (up to `wait_quorum_timeout`) until this node is synced in its current term.
    pub(crate) async fn wait_synced(&self) -> ApiResult<()> {
        let deadline = Instant::now() + self.config.timeouts.wait_quorum;
        let mut status = self.status();
        let mut synced = self.repl.synced.subscribe();
        loop {
            let term = status.borrow_and_update().term;
            if *synced.borrow_and_update() == Some(term) {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Err(unavailable("Quorum not available")),
                r = status.changed() => if r.is_err() { return Err(stopping()) },
                r = synced.changed() => if r.is_err() { return Err(stopping()) },
            }
        }
    }

    /// Hands a write to the leader task and waits for its answer.
    async fn propose(&self, api: Api, body: Map<String, Value>, deadline: Instant) -> ApiResult<String> {
        let (tx, rx) = oneshot::channel();
        let proposal = Proposal { api, body, reply: Some(Reply::Local(tx)) };
        self.repl.proposals.send(proposal).await.map_err(|_| stopping())?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(r) => r.map_err(|_| stopping())?,
            // Still queued (the leader is resyncing): dropping the receiver keeps it from being applied.
            Err(_) => Err(unavailable("Quorum not available")),
        }
    }

    /// A read on a synced node: on the leader under a confirmed lease, on a follower after `check_leader`
    /// unless stale reads are allowed; always behind the gate (nothing uncommitted visible).
    async fn read(
        &self,
        shared: &Arc<Shared>,
        st: &View,
        api: Api,
        body: &Map<String, Value>,
        serializable: bool,
        deadline: Instant,
    ) -> ApiResult<String> {
        let linearizable = !serializable && (st.role == Role::Leader || !self.config.stale_read);
        if linearizable && st.role == Role::Leader {
            // The lease is renewed by heartbeats; right after an election it may take one round.
            loop {
                let now = Instant::now();
                let s = self.status.borrow().clone();
                if s.role != Role::Leader || s.term != st.term {
                    return Err(unavailable("Not leader"));
                }
                if s.is_confirmed_leader(now) {
                    break;
                }
                if now >= deadline {
                    return Err(unavailable("Leadership is not confirmed"));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } else if linearizable {
            let leader = st.leader.clone().ok_or_else(|| unavailable("Leader is unavailable"))?;
            let mut req = Map::new();
            req.insert("check_leader".into(), true.into());
            req.insert("term".into(), st.term.into());
            let reply =
                self.request(&leader, req, self.config.timeouts.forward).await.map_err(|e| match e {
                    PeerError::Unavailable(_) => unavailable("Leader is unavailable"),
                    e => unavailable(e.to_string()),
                })?;
            // Raft's read index: wait until this follower has published everything the leader had committed
            // when it confirmed its leadership (a follower cut off from replication never gets there: 503).
            if let Some(index) = reply.get("revision").and_then(Value::as_i64) {
                loop {
                    let released = self.repl.released.notified();
                    tokio::pin!(released);
                    released.as_mut().enable();
                    if shared.engine.visible_revision() >= index {
                        break;
                    }
                    if tokio::time::timeout_at(deadline, released).await.is_err() {
                        return Err(unavailable("this node is behind the leader"));
                    }
                }
            }
        }
        let _read = tokio::time::timeout_at(deadline, self.repl.gate.read())
            .await
            .map_err(|_| unavailable("Quorum not available"))?;
        if shared.engine.has_held() {
            // Uncommitted changes of a leader that died: nothing may be read until the next resync.
            return Err(unavailable("Quorum not available"));
        }
        crate::http::local(shared, api, body).await
    }

    /// Forwards a request to the leader, keeping its answer: status code and message (antietcd turns every
    /// error into 503).
    async fn forward(&self, st: &View, api: Api, body: &Map<String, Value>) -> ApiResult<String> {
        let leader = st.leader.clone().ok_or_else(|| unavailable("Leader is unavailable"))?;
        // Written out directly: no copy of the body into a request object first.
        let request = serde_json::to_string(body).map_err(|e| unavailable(e.to_string()))?;
        let req = format!(
            "{{\"handler\":\"{}\",\"request\":{request},\"context\":{{\"username\":null}}}}",
            api.name()
        );
        match self.request_text(&leader, &req, self.config.timeouts.forward).await {
            // A successful answer, as the leader wrote it.
            Ok(super::peer::PeerReply::Answer(text)) => Ok(text),
            Ok(super::peer::PeerReply::Value(reply)) => match reply.get("error") {
                Some(e) if !e.is_null() => {
                    let message = e.as_str().map_or_else(|| e.to_string(), str::to_owned);
                    let status = reply
                        .get("status")
                        .and_then(Value::as_u64)
                        .and_then(|s| u16::try_from(s).ok())
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        .filter(|s| s.is_client_error() || s.is_server_error())
                        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                    Err(ApiError::new(status, message))
                }
                _ => Ok(reply.to_string()),
            },
            Err(PeerError::Unavailable(_)) => Err(unavailable("Leader is unavailable")),
            Err(e) => Err(unavailable(e.to_string())),
        }
    }
}

/// The part of [`ClusterStatus`] a request is routed by.
struct View {
    role: Role,
    term: Term,
    leader: Option<NodeId>,
}

fn stopping() -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "Server is stopping")
}

// ---- The leader task ----------------------------------------------------------------------------------

/// The write path of this node: resyncs followers when it becomes leader or they change, then runs
/// batches of proposals; while not leader it refuses them (clients retry; followers forward).
async fn run(cluster: Arc<Cluster>, mut inbox: mpsc::Receiver<Proposal>, stopping: CancellationToken) {
    let mut status = cluster.status();
    let mut synced_for: Option<(Term, BTreeSet<NodeId>)> = None;
    let mut backoff = Duration::from_millis(50);
    // Since when resyncs keep failing: past two election timeouts, start an election (antietcd's remedy).
    let mut failing_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(LEASE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The last batch's commit, not yet told to our followers: it rides in the next batch frame if one
    // follows at once, else it goes alone before this task waits for anything.
    let mut commit: Option<PendingCommit> = None;
    loop {
        let Some(shared) = cluster.repl.shared() else { return };
        if inbox.is_empty() {
            send_commit(&cluster, &mut commit);
        }
        let st = status.borrow_and_update().clone();
        if st.role != Role::Leader {
            if synced_for.take().is_some() {
                cluster.repl.tap.on.store(false, Ordering::Release);
                cluster.repl.set_synced(None);
            }
            tokio::select! {
                _ = stopping.cancelled() => return,
                r = status.changed() => if r.is_err() { return },
                Some(p) = inbox.recv() => answer(&shared, p, Err(unavailable("Not leader"))),
            }
            continue;
        }
        let key = (st.term, st.followers.clone().unwrap_or_default());
        if synced_for.as_ref() != Some(&key) {
            synced_for = None;
            cluster.repl.set_synced(None);
            {
                // A follower's hold on the gate (changes its old leader never committed) ends here: this
                // node's batches need the gate, and the resync decides the fate of those changes.
                let mut f = cluster.repl.follower();
                f.guard = None;
                f.leader_commits = false;
            }
            cluster.repl.tap.on.store(false, Ordering::Release);
            let result = tokio::select! {
                _ = stopping.cancelled() => return,
                _ = status.changed() => continue,
                r = resync(&cluster, &shared, &st) => r,
            };
            match result {
                Ok(()) => {
                    tracing::info!(target: "antietcd::cluster", "{}: leader synced at term {} with {:?}",
                        cluster.config.node_id, st.term, key.1);
                    shared.engine.refresh_leases();
                    cluster.repl.tap.take();
                    cluster.repl.tap.on.store(true, Ordering::Release);
                    cluster.repl.set_synced(Some(st.term));
                    synced_for = Some(key);
                    backoff = Duration::from_millis(50);
                    failing_since = None;
                }
                Err(e) => {
                    tracing::warn!(target: "antietcd::cluster", "{}: resync failed: {e}; retrying in {backoff:?}",
                        cluster.config.node_id);
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > 2 * cluster.config.raft.election_timeout {
                        failing_since = None;
                        cluster.notify(Event::Campaign);
                    }
                    tokio::select! {
                        _ = stopping.cancelled() => return,
                        _ = status.changed() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(cluster.config.raft.election_timeout);
                }
            }
            continue;
        }
        if followers_of(&cluster, &st).iter().any(|peer| cluster.links.get(peer).is_none()) {
            // A follower's link is down: it has missed (or would miss) changes. Resync, which waits until
            // the link is back or the election engine drops that follower, rather than fail writes.
            synced_for = None;
            continue;
        }
        if commit.as_ref().is_some_and(|c| c.term != st.term) {
            send_commit(&cluster, &mut commit);
        }
        let batch = tokio::select! {
            _ = stopping.cancelled() => return,
            r = status.changed() => { send_commit(&cluster, &mut commit); if r.is_err() { return } continue }
            Some(first) = inbox.recv() => {
                // Client tasks that are ready to run propose first: a larger batch costs fewer frames,
                // replies and disk syncs per write.
                tokio::task::yield_now().await;
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match inbox.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                batch
            }
            _ = tick.tick() => {
                let expired = shared.engine.expired_leases();
                if expired.is_empty() { continue }
                expired.into_iter().map(|id| {
                    let mut body = Map::new();
                    body.insert("ID".into(), id.to_string().into());
                    Proposal { api: Api::LeaseRevoke, body, reply: None }
                }).collect()
            }
        };
        if let Err(e) = run_batch(&cluster, &shared, &st, batch, &mut commit).await {
            // No election here (antietcd starts one): a dead or stopped follower leaves the followers
            // within the leader lease, and the resync that follows settles the failed batch.
            tracing::warn!(target: "antietcd::cluster", "{}: {e}; resyncing", cluster.config.node_id);
            synced_for = None;
            cluster.repl.tap.on.store(false, Ordering::Release);
            cluster.repl.set_synced(None);
        }
    }
}

/// A batch's commit that our followers have not been told yet.
struct PendingCommit {
    term: Term,
    revision: Revision,
    peers: Vec<NodeId>,
}

/// Tells our followers the pending commit, if any, in a `commit` message of its own.
fn send_commit(cluster: &Cluster, commit: &mut Option<PendingCommit>) {
    if let Some(c) = commit.take() {
        let text = json!({ "commit": { "revision": c.revision }, "term": c.term }).to_string();
        for peer in &c.peers {
            let _ = cluster.links.try_send(peer, text.clone());
        }
    }
}

/// Answers a proposal: to the waiting API call, or on the socket of the follower that forwarded it.
fn answer(shared: &Shared, p: Proposal, result: ApiResult<String>) {
    match p.reply {
        Some(Reply::Local(tx)) => {
            let _ = tx.send(result);
        }
        Some(Reply::Peer { replier, request_id, .. }) => {
            let reply = peer_reply(request_id.as_ref(), result);
            if let Err(mpsc::error::TrySendError::Full(reply)) = replier.try_send(reply) {
                // The socket is behind: a task of the node waits for room rather than this one.
                shared.tracker.spawn(async move {
                    let _ = replier.send(reply).await;
                });
            }
        }
        None => {}
    }
}

/// The answer to a forwarded request, as the follower reads it.
fn peer_reply(request_id: Option<&Value>, result: ApiResult<String>) -> String {
    match result {
        // The answer is already JSON: spliced in as it is, not parsed and printed again.
        Ok(text) => match request_id {
            Some(id) => format!("{{\"request_id\":{id},\"reply\":{}}}", text.trim_end()),
            None => format!("{{\"reply\":{}}}", text.trim_end()),
        },
        Err(e) => {
            super::inbound::reply(request_id, json!({ "error": e.message, "status": e.status.as_u16() }))
        }
    }
}

fn followers_of(cluster: &Cluster, st: &ClusterStatus) -> Vec<NodeId> {
    st.followers.iter().flatten().filter(|id| **id != cluster.config.node_id).cloned().collect()
}

/// Applies, replicates and commits one batch. `Err` after a replication or disk failure: the batch's
/// clients got 503 and its changes stay invisible.
async fn run_batch(
    cluster: &Arc<Cluster>,
    shared: &Arc<Shared>,
    st: &ClusterStatus,
    batch: Vec<Proposal>,
    commit: &mut Option<PendingCommit>,
) -> Result<(), String> {
    let peers = followers_of(cluster, st);
    let gate = cluster.repl.gate.clone().write_owned().await;
    let engine = &shared.engine;
    let start = engine.revision();
    cluster.repl.tap.take();
    let mut results = Vec::with_capacity(batch.len());
    let mut records: Vec<Record> = Vec::new();
    for p in batch {
        if p.reply.as_ref().is_some_and(Reply::gave_up) {
            // Its client gave up (and was told 503): better not to apply it at all.
            answer(shared, p, Err(unavailable("timeout")));
            continue;
        }
        let result = crate::http::execute(shared, p.api, &p.body);
        records.extend(cluster.repl.tap.take().into_iter().map(Record::Journal));
        if let (Api::LeaseKeepalive, Ok(_)) = (p.api, &result) {
            if let Ok(Some(id)) = lease_id(field(&p.body, "ID", "id"), "ID") {
                if let Ok(info) = engine.lease_time_to_live(id, false) {
                    records.push(Record::KeepAlive { id, ttl: info.granted_ttl });
                }
            }
        }
        results.push((p, result.map(|(text, _)| text)));
    }
    if records.is_empty() {
        drop(gate);
        send_commit(cluster, commit);
        for (p, r) in results {
            answer(shared, p, r);
        }
        return Ok(());
    }
    let last = engine.revision();
    let ours = cluster.repl.ours.lock().unwrap_or_else(PoisonError::into_inner).clone();
    // Our followers take the whole batch as one binary frame (one reply), with the previous batch's
    // commit if it is still to be told; antietcd's take `replicate` JSON messages one by one.
    let piggyback = commit.take().filter(|c| c.term == st.term);
    let frame = peers
        .iter()
        .any(|p| ours.contains(p))
        .then(|| super::frame::encode(&records, st.term, piggyback.as_ref().map(|c| c.revision)));
    let texts: Vec<String> = if peers.iter().all(|p| ours.contains(p)) {
        Vec::new()
    } else {
        to_messages(&records, start, st.term).into_iter().map(|m| Value::Object(m).to_string()).collect()
    };
    let replicated = async {
        let timeout = cluster.config.timeouts.replication;
        let sends = peers.iter().map(|peer| async {
            match &frame {
                Some(frame) if ours.contains(peer) => cluster.request_frame(peer, frame, timeout).await,
                _ => cluster.request_all(peer, &texts, timeout).await,
            }
        });
        futures::future::join_all(sends).await.into_iter().zip(&peers).try_for_each(|(r, peer)| {
            r.map_err(|e| match e {
                PeerError::Unavailable(_) => format!("peer {peer} is unavailable"),
                e => format!("replication to {peer} failed: {e}"),
            })
        })
    };
    let (replicated, on_disk) = tokio::join!(replicated, local_sync(shared, last));
    if let Err(e) = replicated.and(on_disk) {
        drop(gate);
        let message = if e.contains("unavailable") {
            "Peer connection is lost, please retry request"
        } else {
            "Replication failed, please retry request"
        };
        for (p, r) in results {
            // A write that failed by itself changed nothing: its own error stands.
            answer(shared, p, r.and(Err(unavailable(message))));
        }
        return Err(e);
    }
    engine.release(last);
    drop(gate);
    for peer in peers.iter().filter(|p| !ours.contains(*p)) {
        // antietcd followers drop their per-revision locks on `unlock` (and ignore `commit`).
        for r in &records {
            if let Record::Journal(JournalRecord::Commit { revision, .. }) = r {
                let _ = cluster.links.try_send(
                    peer,
                    json!({ "unlock": { "revision": revision }, "term": st.term }).to_string(),
                );
            }
        }
        let _ = cluster
            .links
            .try_send(peer, json!({ "commit": { "revision": last }, "term": st.term }).to_string());
    }
    // Ours publish on `commit`: told with the next batch, or alone (see `run`).
    let peers: Vec<NodeId> = peers.into_iter().filter(|p| ours.contains(p)).collect();
    if !peers.is_empty() {
        *commit = Some(PendingCommit { term: st.term, revision: last, peers });
    }
    for (p, r) in results {
        answer(shared, p, r);
    }
    Ok(())
}

/// The local durability barrier of a batch (write-ahead log, or antietcd's data file).
async fn local_sync(shared: &Arc<Shared>, revision: Revision) -> Result<(), String> {
    if shared.persist_interval {
        return Ok(());
    }
    if let Some(d) = &shared.durable {
        d.sync().await.map_err(|e| format!("the local log failed: {e}"))?;
    }
    if let Some(p) = &shared.persister {
        p.sync(revision).await.map_err(|e| format!("the data file failed: {e}"))?;
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A key or value as antietcd replicates it (raw text); bytes that are not UTF-8 go base64 in `<name>_b64`,
/// which our followers read (antietcd cannot store them anyway).
fn put_bytes(m: &mut Map<String, Value>, name: &str, b: &[u8]) {
    match std::str::from_utf8(b) {
        Ok(s) => {
            m.insert(name.into(), s.into());
        }
        Err(_) => {
            m.insert(name.into(), String::from_utf8_lossy(b).into_owned().into());
            m.insert(format!("{name}_b64"), base64::engine::general_purpose::STANDARD.encode(b).into());
        }
    }
}

/// Turns a batch's records into peer messages, in order: `replicate` (section 3.10) and `compact`.
fn to_messages(records: &[Record], start: Revision, term: Term) -> Vec<Map<String, Value>> {
    let mut out: Vec<Map<String, Value>> = Vec::new();
    let mut revision = start;
    // The message being built: (revision, events, leases, has events).
    let mut current: Option<(Revision, Vec<Value>, Vec<Value>, bool)> = None;
    let flush = |current: &mut Option<(Revision, Vec<Value>, Vec<Value>, bool)>,
                 out: &mut Vec<Map<String, Value>>| {
        if let Some((rev, events, leases, _)) = current.take() {
            let mut r = Map::new();
            r.insert("header".into(), json!({ "revision": rev }));
            if !events.is_empty() {
                r.insert("events".into(), Value::Array(events));
            }
            if !leases.is_empty() {
                r.insert("leases".into(), Value::Array(leases));
            }
            let mut m = Map::new();
            m.insert("replicate".into(), Value::Object(r));
            m.insert("term".into(), term.into());
            out.push(m);
        }
    };
    for record in records {
        match record {
            Record::Journal(JournalRecord::Commit { revision: rev, events }) => {
                flush(&mut current, &mut out);
                revision = *rev;
                let events = events
                    .iter()
                    .map(|e| {
                        let mut m = Map::new();
                        put_bytes(&mut m, "key", &e.kv.key);
                        if e.kind == EventKind::Put {
                            put_bytes(&mut m, "value", &e.kv.value);
                            if let Some(l) = e.kv.lease {
                                m.insert("lease".into(), l.to_string().into());
                            }
                            m.insert("create_revision".into(), e.kv.create_revision.into());
                            m.insert("version".into(), e.kv.version.into());
                        }
                        m.insert("mod_revision".into(), (*rev).into());
                        Value::Object(m)
                    })
                    .collect();
                current = Some((*rev, events, Vec::new(), true));
            }
            Record::Journal(JournalRecord::LeaseRevoke { id }) => {
                let item = json!({ "id": id.to_string() });
                match &mut current {
                    Some((_, _, leases, _)) => leases.push(item),
                    None => current = Some((revision, Vec::new(), vec![item], false)),
                }
            }
            Record::Journal(JournalRecord::LeaseGrant { id, ttl }) | Record::KeepAlive { id, ttl } => {
                let item = json!({ "id": id.to_string(), "ttl": ttl, "expires": now_ms() + ttl * 1000 });
                match &mut current {
                    Some((_, _, leases, false)) => leases.push(item),
                    _ => {
                        flush(&mut current, &mut out);
                        current = Some((revision, Vec::new(), vec![item], false));
                    }
                }
            }
            Record::Journal(JournalRecord::Compact { revision: rev }) => {
                flush(&mut current, &mut out);
                let mut m = Map::new();
                m.insert("compact".into(), json!({ "revision": rev }));
                m.insert("term".into(), term.into());
                out.push(m);
            }
        }
    }
    flush(&mut current, &mut out);
    out
}

/// What a follower told the leader about its state at the start of a resync.
struct PeerState {
    term: Term,
    revision: Revision,
    /// What ours know to be committed (everything after it is uncommitted), if they know.
    committed: Option<Revision>,
    /// Ours: the revision and digest of their newest published batch.
    last_batch: Option<(Revision, u64)>,
    /// The full dump (antietcd nodes always send one; ours send a summary when asked).
    dump: Option<Value>,
}

fn peer_state(peer: &str, reply: Result<Value, PeerError>) -> Result<PeerState, String> {
    let dump = reply.map_err(|e| format!("dump from {peer}: {e}"))?;
    if let Some(e) = dump.get("error").filter(|e| !e.is_null()) {
        return Err(format!("dump from {peer}: {e}"));
    }
    let term = dump.get("term").and_then(Value::as_u64).unwrap_or(0);
    let revision = dump.get("mod_revision").and_then(Value::as_i64).unwrap_or(0);
    let summary = dump.get("summary").and_then(Value::as_bool) == Some(true);
    let committed = dump.get("committed").and_then(Value::as_i64);
    let last_batch = dump
        .get("last_batch")
        .and_then(|b| Some((b.get("revision")?.as_i64()?, b.get("digest")?.as_str()?.parse().ok()?)));
    Ok(PeerState { term, revision, committed, last_batch, dump: (!summary).then_some(dump) })
}

fn dump_request(term: Term, summary: bool) -> Map<String, Value> {
    let mut req = Map::new();
    req.insert("dump".into(), if summary { json!({ "summary": true }) } else { json!({}) });
    req.insert("term".into(), term.into());
    req
}

/// The `replicate` messages that replay history `batches` (all after revision `from`).
fn history_messages(
    batches: &[Arc<crate::types::WatchBatch>],
    from: Revision,
    term: Term,
) -> Vec<Map<String, Value>> {
    let records: Vec<Record> = batches
        .iter()
        .map(|b| {
            Record::Journal(JournalRecord::Commit { revision: b.revision, events: b.events.clone().into() })
        })
        .collect();
    to_messages(&records, from, term)
}

/// antietcd's resync (section 5.3), without its faults: every follower reports its state (antietcd nodes
/// with a full `dump`; ours, asked for a summary, with their stored term and revision); a failure fails the
/// resync, which is retried, instead of stalling it. The most advanced state (highest stored term, then
/// highest revision) wins **as a whole** (no per-key merge that could resurrect deleted keys). Each
/// follower then gets it: one of ours on the winner's line (same stored term, not ahead) catches up with
/// the revisions it misses (`resume`, then `replicate` messages from the history), any other node with a
/// full `load`; every one must succeed.
async fn resync(cluster: &Arc<Cluster>, shared: &Arc<Shared>, st: &ClusterStatus) -> Result<(), String> {
    let peers = followers_of(cluster, st);
    let timeouts = cluster.config.timeouts;
    let replies = futures::future::join_all(
        peers.iter().map(|peer| cluster.request_value(peer, dump_request(st.term, true), timeouts.dump)),
    )
    .await;
    let mut states = Vec::with_capacity(peers.len());
    for (peer, reply) in peers.iter().zip(replies) {
        states.push(peer_state(peer, reply)?);
    }
    {
        let mut ours = cluster.repl.ours.lock().unwrap_or_else(PoisonError::into_inner);
        for (peer, state) in peers.iter().zip(&states) {
            if state.dump.is_none() {
                ours.insert(peer.clone());
            } else {
                ours.remove(peer);
            }
        }
    }
    let engine = &shared.engine;
    let own = (cluster.repl.stored_term(), engine.revision());
    let best = peers.iter().zip(&states).max_by_key(|(_, s)| (s.term, s.revision));
    // The winner's stored term: followers with it are on its line.
    let mut line = own.0;
    if let Some((peer, best)) = best.filter(|(_, s)| (s.term, s.revision) > own) {
        line = best.term;
        // On the same line (or empty), take the revisions we miss from its history, keeping our own
        // watch history; else (or if that fails) its whole state.
        if best.dump.is_none() && (best.term == own.0 || own.1 == 0) {
            match pull_history(cluster, shared, peer, st.term, own.1).await {
                Ok(n) => {
                    cluster.repl.stats.catch_ups.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(target: "antietcd::cluster", "{}: took {n} revisions from {peer} (up to {})",
                        cluster.config.node_id, best.revision);
                    return finish_resync(cluster, shared, st, &peers, &states, line).await;
                }
                Err(e) => {
                    tracing::info!(target: "antietcd::cluster", "{}: history from {peer}: {e}; full dump",
                    cluster.config.node_id)
                }
            }
        }
        let dump = match &best.dump {
            Some(d) => d.clone(),
            None => {
                let reply = cluster.request_value(peer, dump_request(st.term, false), timeouts.dump).await;
                peer_state(peer, reply)?.dump.ok_or_else(|| format!("{peer} sent no dump"))?
            }
        };
        let (snapshot, _) =
            crate::persist::decode_dump(&dump).map_err(|e| format!("dump from {peer}: {e}"))?;
        tracing::info!(target: "antietcd::cluster", "{}: taking the state of {peer} (term {}, revision {})",
            cluster.config.node_id, best.term, best.revision);
        let gate = cluster.repl.gate.clone().write_owned().await;
        let changed =
            engine.load_replicated(&snapshot).map_err(|e| format!("loading the state of {peer}: {e}"))?;
        drop(gate);
        if changed {
            cluster.repl.stats.full_loads.fetch_add(1, Ordering::Relaxed);
            if let Some(d) = &shared.durable {
                d.checkpoint().await.map_err(|e| format!("checkpointing the loaded state: {e}"))?;
            }
        }
    }
    finish_resync(cluster, shared, st, &peers, &states, line).await
}

/// Takes from `peer` (ours, the most advanced) the revisions after `from` and applies them here.
async fn pull_history(
    cluster: &Arc<Cluster>,
    shared: &Arc<Shared>,
    peer: &str,
    term: Term,
    from: Revision,
) -> Result<usize, String> {
    let mut req = Map::new();
    req.insert("history".into(), json!({ "revision": from }));
    req.insert("term".into(), term.into());
    let reply = cluster.request(peer, req, cluster.config.timeouts.dump).await.map_err(|e| e.to_string())?;
    let messages = reply.get("messages").and_then(Value::as_array).ok_or("no messages")?;
    let engine = &shared.engine;
    let _gate = cluster.repl.gate.clone().write_owned().await;
    if engine.revision() != from {
        return Err("this node moved meanwhile".into());
    }
    for m in messages {
        if let Some(payload) = m.get("replicate") {
            let change = parse_replicate(payload)?;
            engine.apply_replicated(&change).map_err(|e| e.to_string())?;
        }
    }
    Ok(messages.len())
}

/// The second half of a resync, once this node holds the winning state: every follower catches up or
/// is loaded, then the term is stored and everything is committed.
async fn finish_resync(
    cluster: &Arc<Cluster>,
    shared: &Arc<Shared>,
    st: &ClusterStatus,
    peers: &[NodeId],
    states: &[PeerState],
    line: Term,
) -> Result<(), String> {
    let engine = &shared.engine;
    let timeouts = cluster.config.timeouts;
    let snapshot = engine.snapshot().map_err(|e| e.to_string())?;
    let own_revision = snapshot.revision;
    // `{"load": <dump>, "term": T}`, serialised once for every follower that needs it.
    let full_load =
        format!("{{\"load\":{},\"term\":{}}}", crate::persist::encode_dump(&snapshot, st.term), st.term);
    let leases: Vec<Value> = engine
        .lease_table()
        .into_iter()
        .map(|(id, ttl)| json!({ "id": id.to_string(), "ttl": ttl }))
        .collect();
    let sends = peers.iter().zip(states).map(|(peer, state)| {
        // Where the follower's state is known to be a prefix of ours: all of it if it is on our line (or
        // empty), else what it knows committed (it undoes the rest first).
        let base = match state.dump {
            Some(_) => None,
            None if (state.term == line && state.revision <= own_revision) || state.revision == 0 => {
                Some(state.revision)
            }
            // A restarted node does not know what of its log was committed; but if its newest batch is one
            // we committed (same revision, same events), everything up to it is ours.
            None => state.committed.or_else(|| {
                state.last_batch.filter(|(r, d)| engine.batch_digest(*r) == Some(*d)).map(|(r, _)| r)
            }),
        };
        let catch_up = base.and_then(|base| engine.batches_after(base).map(|b| (base, b)));
        let catch_up = catch_up.map(|(base, batches)| {
            let mut resume = Map::new();
            resume.insert("resume".into(), json!({ "revision": base, "leases": leases }));
            resume.insert("term".into(), st.term.into());
            tracing::debug!(target: "antietcd::cluster", "{peer} catches up from revision {base} ({} revisions)",
                batches.len());
            let mut messages = vec![resume];
            messages.extend(history_messages(&batches, base, st.term));
            messages.into_iter().map(|m| Value::Object(m).to_string()).collect::<Vec<String>>()
        });
        let load = full_load.clone();
        async move {
            if let Some(messages) = catch_up {
                match cluster.request_all(peer, &messages, timeouts.load).await {
                    Ok(()) => return Ok(()),
                    // It could not take the revisions (its state moved, say): a full load settles it.
                    Err(PeerError::Remote(e)) => {
                        tracing::info!(target: "antietcd::cluster", "{peer} cannot catch up ({e}): full load")
                    }
                    Err(e) => return Err(format!("sync of {peer}: {e}")),
                }
            }
            cluster.request_all(peer, &[load], timeouts.load).await.map_err(|e| format!("sync of {peer}: {e}"))
        }
    });
    for r in futures::future::join_all(sends).await {
        r?;
    }
    cluster.repl.set_stored_term(st.term).await.map_err(|e| format!("persisting the synced term: {e}"))?;
    // Our own uncommitted batches (if we were the most advanced) are now on every follower: committed.
    engine.release(engine.revision());
    for peer in peers {
        let _ = cluster.links.try_send(
            peer,
            json!({ "commit": { "revision": snapshot.revision }, "term": st.term }).to_string(),
        );
    }
    Ok(())
}

// ---- Follower side ------------------------------------------------------------------------------------

/// antietcd's F-check: the message comes from the leader of term `term`, and this node follows it. The
/// leader's raft messages travel on the same socket but reach the election driver through a queue, so a
/// brief wait lets the driver catch up.
async fn check_leader_of(cluster: &Cluster, peer: &str, term: Option<u64>) -> Result<(), &'static str> {
    let Some(term) = term else { return Err("raft leader/term mismatch") };
    let mut status = cluster.status();
    let ok =
        |s: &ClusterStatus| s.role == Role::Follower && s.term == term && s.leader.as_deref() == Some(peer);
    let waited = tokio::time::timeout(
        Duration::from_millis(500),
        // Settled when it matches, or when it never will (a newer term, or we lead this one).
        status.wait_for(|s| ok(s) || s.term > term || (s.term == term && s.role == Role::Leader)),
    )
    .await;
    match waited {
        Ok(Ok(s)) if ok(&s) => Ok(()),
        _ => Err("raft leader/term mismatch"),
    }
}

fn reply_ok(request_id: Option<&Value>) -> String {
    super::inbound::reply(request_id, json!({}))
}

fn reply_err(request_id: Option<&Value>, message: &str) -> String {
    super::inbound::error_reply(request_id, message)
}

/// Handles the replication messages a leader sends to a follower, and forwarded requests on a leader.
/// Called in order for each socket; replies that need the disk come later through `replier`.
pub(crate) async fn on_peer_message(
    cluster: &Arc<Cluster>,
    peer: &str,
    kind: &str,
    obj: &mut Map<String, Value>,
    replier: &mpsc::Sender<String>,
) -> Vec<String> {
    // Owned, so that a forwarded request's body can be taken out of `obj` rather than copied.
    let request_id_value = obj.get("request_id").cloned();
    let request_id = request_id_value.as_ref();
    let Some(shared) = cluster.repl.shared() else {
        return vec![reply_err(request_id, "Server is stopping")];
    };
    let term = obj.get("term").and_then(Value::as_u64);
    let repl = &cluster.repl;
    match kind {
        "handler" => {
            let body = match obj.remove("request") {
                Some(Value::Object(body)) => body,
                _ => Map::new(),
            };
            let name = obj.get("handler").and_then(Value::as_str).unwrap_or_default();
            let Some(api) = Api::from_handler(name) else {
                return vec![reply_err(request_id, &format!("unknown handler {name:?}"))];
            };
            let timeouts = cluster.config.timeouts;
            if api.writes() {
                // On the synced leader (where routing would only propose it), the write goes straight to
                // the write task, which answers on this socket: no task and no timer per request.
                let (role, term) = {
                    let s = cluster.status.borrow();
                    (s.role, s.term)
                };
                if role == Role::Leader && *repl.synced.borrow() == Some(term) {
                    let deadline = Instant::now() + timeouts.forward.min(timeouts.wait_quorum);
                    let reply =
                        Reply::Peer { replier: replier.clone(), request_id: request_id.cloned(), deadline };
                    match repl.proposals.try_send(Proposal { api, body, reply: Some(reply) }) {
                        Ok(()) => return Vec::new(),
                        Err(mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p)) => {
                            return handle_forwarded(cluster, &shared, p.api, p.body, request_id, replier);
                        }
                    }
                }
            }
            handle_forwarded(cluster, &shared, api, body, request_id, replier)
        }
        "dump" => {
            if let Err(e) = check_leader_of(cluster, peer, term).await {
                return vec![reply_err(request_id, e)];
            }
            if obj.get("dump").and_then(|d| d.get("summary")).and_then(Value::as_bool) == Some(true) {
                let mut summary = json!({
                    "summary": true,
                    "term": repl.stored_term(),
                    "mod_revision": shared.engine.revision(),
                });
                if repl.trusted.load(Ordering::Acquire) {
                    summary["committed"] = shared.engine.visible_revision().into();
                }
                if let Some((revision, digest)) = shared.engine.last_batch() {
                    summary["last_batch"] = json!({ "revision": revision, "digest": digest.to_string() });
                }
                return vec![super::inbound::reply(request_id, summary)];
            }
            match shared.engine.snapshot() {
                Ok(snap) => {
                    let dump = crate::persist::encode_dump(&snap, repl.stored_term());
                    match serde_json::from_str::<Value>(&dump) {
                        Ok(v) => vec![super::inbound::reply(request_id, v)],
                        Err(e) => vec![reply_err(request_id, &e.to_string())],
                    }
                }
                Err(e) => vec![reply_err(request_id, &e.to_string())],
            }
        }
        "load" => {
            if let Err(e) = check_leader_of(cluster, peer, term).await {
                return vec![reply_err(request_id, e)];
            }
            let Some(term) = term else { return vec![reply_err(request_id, "raft leader/term mismatch")] };
            let snapshot = match obj.get("load").map(crate::persist::decode_dump) {
                Some(Ok((s, _))) => s,
                Some(Err(e)) => return vec![reply_err(request_id, &format!("bad load: {e}"))],
                None => return vec![reply_err(request_id, "bad load")],
            };
            repl.set_synced(None);
            let old_guard = {
                let mut f = repl.follower();
                f.leader_commits = false;
                f.guard.take()
            };
            // Keep readers out while the state is replaced.
            let guard = match old_guard {
                Some(g) => g,
                None => repl.gate.clone().write_owned().await,
            };
            let changed = match shared.engine.load_replicated(&snapshot) {
                Ok(c) => c,
                Err(e) => return vec![reply_err(request_id, &e.to_string())],
            };
            if changed {
                repl.stats.full_loads.fetch_add(1, Ordering::Relaxed);
                if let Some(d) = &shared.durable {
                    if let Err(e) = d.checkpoint().await {
                        return vec![reply_err(request_id, &format!("checkpointing the loaded state: {e}"))];
                    }
                }
            }
            if let Err(e) = repl.set_stored_term(term).await {
                return vec![reply_err(request_id, &format!("persisting the synced term: {e}"))];
            }
            drop(guard);
            repl.set_synced(Some(term));
            repl.released.notify_waiters();
            vec![reply_ok(request_id)]
        }
        "history" => {
            if let Err(e) = check_leader_of(cluster, peer, term).await {
                return vec![reply_err(request_id, e)];
            }
            let Some(from) = obj.get("history").and_then(|h| h.get("revision")).and_then(Value::as_i64)
            else {
                return vec![reply_err(request_id, "bad history request")];
            };
            match shared.engine.batches_after(from) {
                Some(batches) => {
                    let messages: Vec<Value> = history_messages(&batches, from, term.unwrap_or(0))
                        .into_iter()
                        .map(Value::Object)
                        .collect();
                    vec![super::inbound::reply(request_id, json!({ "messages": messages }))]
                }
                None => vec![reply_err(request_id, "history compacted")],
            }
        }
        "resume" => {
            if let Err(e) = check_leader_of(cluster, peer, term).await {
                return vec![reply_err(request_id, e)];
            }
            let Some(term) = term else { return vec![reply_err(request_id, "raft leader/term mismatch")] };
            let body = obj.get("resume");
            let from = body.and_then(|b| b.get("revision")).and_then(Value::as_i64);
            let leases = match body.map(parse_lease_table) {
                Some(Ok(l)) => l,
                Some(Err(e)) => return vec![reply_err(request_id, &format!("bad resume: {e}"))],
                None => return vec![reply_err(request_id, "bad resume")],
            };
            if from.is_some_and(|f| f < shared.engine.revision() && f == shared.engine.visible_revision()) {
                // Our uncommitted tail is not on the new leader's line: undo it, and checkpoint so that a
                // restart does not replay it from the log.
                let undone = {
                    let _gate = repl.follower().guard.take();
                    shared.engine.rollback_held()
                };
                match undone {
                    Ok(true) => {
                        repl.stats.undone_tails.fetch_add(1, Ordering::Relaxed);
                        if let Some(d) = &shared.durable {
                            if let Err(e) = d.checkpoint().await {
                                return vec![reply_err(
                                    request_id,
                                    &format!("checkpointing after undo: {e}"),
                                )];
                            }
                        }
                    }
                    Ok(false) => {}
                    Err(e) => return vec![reply_err(request_id, &e.to_string())],
                }
            }
            if from != Some(shared.engine.revision()) {
                return vec![reply_err(request_id, "state moved since the dump: full load needed")];
            }
            repl.set_synced(None);
            {
                // What this node held uncommitted is on the winner's line: committed now.
                let mut f = repl.follower();
                f.guard = None;
                f.leader_commits = true;
            }
            shared.engine.release(shared.engine.revision());
            if let Err(e) = shared.engine.set_lease_table(&leases) {
                return vec![reply_err(request_id, &e.to_string())];
            }
            if let Err(e) = repl.set_stored_term(term).await {
                return vec![reply_err(request_id, &format!("persisting the synced term: {e}"))];
            }
            repl.stats.catch_ups.fetch_add(1, Ordering::Relaxed);
            repl.set_synced(Some(term));
            repl.released.notify_waiters();
            vec![reply_ok(request_id)]
        }
        "replicate" | "batch" => {
            let items = if kind == "batch" {
                match obj.get("batch").and_then(Value::as_array) {
                    Some(items) => items
                        .iter()
                        .map(|i| i.as_object().ok_or_else(|| "bad batch item".to_owned()).and_then(json_item))
                        .collect(),
                    None => Err("bad batch".to_owned()),
                }
            } else {
                json_item(obj).map(|i| vec![i])
            };
            apply_batch(cluster, &shared, peer, term, request_id, None, items, replier).await
        }
        "commit" => {
            if check_leader_of(cluster, peer, term).await.is_ok() {
                let revision = obj.get("commit").and_then(|c| c.get("revision")).and_then(Value::as_i64);
                if let Some(revision) = revision {
                    commit_here(repl, &shared, revision);
                }
            }
            Vec::new()
        }
        "compact" => {
            if let Err(e) = check_leader_of(cluster, peer, term).await {
                return vec![reply_err(request_id, e)];
            }
            if let Some(revision) = obj.get("compact").and_then(|c| c.get("revision")).and_then(Value::as_i64)
            {
                // Already compacted further, or not there yet: nothing to do either way.
                let _ = shared.engine.compact(revision);
            }
            vec![reply_ok(request_id)]
        }
        "unlock" => {
            if let Err(e) = check_leader_of(cluster, peer, term).await {
                return vec![reply_err(request_id, e)];
            }
            // Our followers publish on `commit`; antietcd leaders' per-revision locks mean nothing here.
            if request_id.is_some() {
                vec![reply_ok(request_id)]
            } else {
                Vec::new()
            }
        }
        other => vec![reply_err(request_id, &format!("unknown peer message {other}"))],
    }
}

/// A forwarded request run by a task of its own (routing may wait, for a sync or a lease).
fn handle_forwarded(
    cluster: &Arc<Cluster>,
    shared: &Arc<Shared>,
    api: Api,
    body: Map<String, Value>,
    request_id: Option<&Value>,
    replier: &mpsc::Sender<String>,
) -> Vec<String> {
    let (cluster, shared, replier, request_id) =
        (cluster.clone(), shared.clone(), replier.clone(), request_id.cloned());
    shared.tracker.clone().spawn(async move {
        // The follower answers 503 after forward_timeout: past it, the request must not run anymore (a
        // client retrying elsewhere could otherwise see it land after its retry).
        let run = async {
            match api {
                Api::Status | Api::Dump => crate::http::local(&shared, api, &body).await,
                _ => cluster.route(&shared, api, body, true).await,
            }
        };
        let result = tokio::time::timeout(cluster.config.timeouts.forward, run)
            .await
            .unwrap_or_else(|_| Err(unavailable("timeout")));
        let _ = replier.send(peer_reply(request_id.as_ref(), result)).await;
    });
    Vec::new()
}

/// One JSON batch item: a `replicate` message (section 3.10) or a `compact` one.
fn json_item(item: &Map<String, Value>) -> Result<Item, String> {
    if let Some(payload) = item.get("replicate") {
        return parse_replicate(payload).map(Item::Change).map_err(|e| format!("bad replicate: {e}"));
    }
    match item.get("compact").and_then(|c| c.get("revision")).and_then(Value::as_i64) {
        Some(revision) => Ok(Item::Compact(revision)),
        None => Err("bad batch item".into()),
    }
}

/// A binary batch frame from our leader ([`super::frame`]).
pub(crate) async fn on_peer_batch(
    cluster: &Arc<Cluster>,
    peer: &str,
    data: &[u8],
    replier: &mpsc::Sender<String>,
) -> Vec<String> {
    let Some(shared) = cluster.repl.shared() else {
        return vec![reply_err(None, "Server is stopping")];
    };
    match super::frame::decode(data) {
        Ok(b) => {
            let id = Value::from(b.request_id);
            apply_batch(cluster, &shared, peer, Some(b.term), Some(&id), b.commit, Ok(b.items), replier).await
        }
        Err(e) => {
            // The request id is the frame's bytes 1..9, if it got that far.
            let id =
                data.get(1..9).map(|b| Value::from(u64::from_le_bytes(b.try_into().unwrap_or_default())));
            vec![reply_err(id.as_ref(), &format!("bad batch frame: {e}"))]
        }
    }
}

/// A follower applies a batch of its leader's changes in order (logged through the engine's journal),
/// after the leader's piggybacked `commit` of the previous batch, if any; it replies once they are
/// applied and on its disk (later, through `replier`, when that needs a sync).
#[allow(clippy::too_many_arguments)]
async fn apply_batch(
    cluster: &Arc<Cluster>,
    shared: &Arc<Shared>,
    peer: &str,
    term: Option<Term>,
    request_id: Option<&Value>,
    commit: Option<Revision>,
    items: Result<Vec<Item>, String>,
    replier: &mpsc::Sender<String>,
) -> Vec<String> {
    let repl = &cluster.repl;
    if let Err(e) = check_leader_of(cluster, peer, term).await {
        return vec![reply_err(request_id, e)];
    }
    if *repl.synced.borrow() != term {
        return vec![reply_err(request_id, "not synced in this term")];
    }
    let items = match items {
        Ok(items) => items,
        Err(e) => return vec![reply_err(request_id, &e)],
    };
    if let Some(revision) = commit {
        commit_here(repl, shared, revision);
    }
    let commits = repl.follower().leader_commits;
    if commits && repl.follower().guard.is_none() {
        let guard = repl.gate.clone().write_owned().await;
        repl.follower().guard = Some(guard);
    }
    for item in items {
        match item {
            Item::Change(change) => {
                if let Err(e) = shared.engine.apply_replicated(&change) {
                    return vec![reply_err(request_id, &e.to_string())];
                }
            }
            // Already compacted further, or not there yet: nothing to do either way.
            Item::Compact(revision) => {
                let _ = shared.engine.compact(revision);
            }
        }
    }
    if !commits {
        shared.engine.release(shared.engine.revision());
        repl.released.notify_waiters();
    }
    let revision = shared.engine.revision();
    if shared.persist_interval || (shared.durable.is_none() && shared.persister.is_none()) {
        return vec![reply_ok(request_id)];
    }
    let (replier, request_id, shared) = (replier.clone(), request_id.cloned(), shared.clone());
    shared.tracker.clone().spawn(async move {
        let reply = match local_sync(&shared, revision).await {
            Ok(()) => reply_ok(request_id.as_ref()),
            Err(e) => reply_err(request_id.as_ref(), &e),
        };
        let _ = replier.send(reply).await;
    });
    Vec::new()
}

/// A follower publishes what its leader committed (up to `revision`), and lets readers in once nothing
/// uncommitted is left.
fn commit_here(repl: &Replica, shared: &Shared, revision: Revision) {
    shared.engine.release(revision);
    repl.released.notify_waiters();
    let mut f = repl.follower();
    f.leader_commits = true;
    if revision >= shared.engine.revision() {
        f.guard = None;
    }
}

/// Parses the lease table of a `resume` message: `{"leases":[{"id","ttl"}]}`.
fn parse_lease_table(v: &Value) -> Result<Vec<(LeaseId, i64)>, String> {
    let mut out = Vec::new();
    for l in v.get("leases").and_then(Value::as_array).ok_or("no leases")? {
        let id = lease_id(l.get("id"), "id").map_err(|e| e.message)?.ok_or("a lease without id")?;
        let ttl = l.get("ttl").and_then(Value::as_i64).filter(|t| *t > 0).ok_or("a lease without ttl")?;
        out.push((id, ttl));
    }
    Ok(out)
}

/// Parses a `replicate` payload (section 3.10, plus our exact counters and `_b64` bytes).
fn parse_replicate(v: &Value) -> Result<ReplicatedChange, String> {
    let obj = v.as_object().ok_or("not an object")?;
    let revision = obj
        .get("header")
        .and_then(|h| h.get("revision"))
        .and_then(|r| r.as_i64().or_else(|| r.as_str().and_then(|s| s.parse().ok())))
        .ok_or("no header.revision")?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let bytes = |m: &Map<String, Value>, name: &str| -> Result<Option<Bytes>, String> {
        if let Some(s) = m.get(&format!("{name}_b64")).and_then(Value::as_str) {
            return b64.decode(s).map(|b| Some(b.into())).map_err(|e| format!("{name}_b64: {e}"));
        }
        Ok(match m.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(Bytes::from(s.clone().into_bytes())),
            // antietcd's embedded API can store any JSON value: keep its text.
            Some(other) => Some(Bytes::from(other.to_string().into_bytes())),
        })
    };
    let lease = |v: Option<&Value>| -> Result<Option<LeaseId>, String> {
        lease_id(v.filter(|v| !v.is_null()), "lease").map_err(|e| e.message)
    };
    let mut change = ReplicatedChange { revision, ..Default::default() };
    if let Some(leases) = obj.get("leases") {
        for l in leases.as_array().ok_or("leases should be an array")? {
            let l = l.as_object().ok_or("a lease should be an object")?;
            let id = lease(l.get("id"))?.ok_or("a lease without id")?;
            let ttl =
                l.get("ttl").and_then(|t| t.as_i64().or_else(|| t.as_str().and_then(|s| s.parse().ok())));
            change.leases.push((id, ttl.filter(|t| *t > 0)));
        }
    }
    if let Some(events) = obj.get("events") {
        for e in events.as_array().ok_or("events should be an array")? {
            let e = e.as_object().ok_or("an event should be an object")?;
            let key = bytes(e, "key")?.filter(|k| !k.is_empty()).ok_or("an event without key")?;
            change.events.push(ReplicatedEvent {
                key,
                value: bytes(e, "value")?,
                lease: lease(e.get("lease"))?,
                create_revision: e.get("create_revision").and_then(Value::as_i64),
                version: e.get("version").and_then(Value::as_i64),
            });
        }
    }
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Event, KeyValue};

    fn put(key: &str, value: &str, rev: Revision) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: Bytes::from(key.to_owned()),
                value: Bytes::from(value.to_owned()),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                lease: Some(LeaseId(0x2a)),
            },
            prev_kv: None,
        }
    }

    #[test]
    fn messages_round_trip_through_the_follower_parser() {
        let records = vec![
            Record::Journal(JournalRecord::LeaseGrant { id: LeaseId(0x2a), ttl: 10 }),
            Record::Journal(JournalRecord::Commit { revision: 5, events: vec![put("/a", "1", 5)].into() }),
            Record::Journal(JournalRecord::LeaseRevoke { id: LeaseId(7) }),
            Record::KeepAlive { id: LeaseId(0x2a), ttl: 10 },
            Record::Journal(JournalRecord::Compact { revision: 3 }),
        ];
        let messages = to_messages(&records, 4, 9);
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert_eq!(messages[0]["replicate"]["header"]["revision"], 4);
        assert_eq!(messages[0]["term"], 9);
        let grant = parse_replicate(&messages[0]["replicate"]).unwrap();
        assert_eq!(grant.leases, vec![(LeaseId(0x2a), Some(10))]);
        let commit = parse_replicate(&messages[1]["replicate"]).unwrap();
        assert_eq!(commit.revision, 5);
        assert_eq!(commit.leases, vec![(LeaseId(7), None)]);
        assert_eq!(commit.events.len(), 1);
        assert_eq!(commit.events[0].value.as_deref(), Some(&b"1"[..]));
        assert_eq!(commit.events[0].lease, Some(LeaseId(0x2a)));
        assert_eq!(commit.events[0].create_revision, Some(5));
        let keepalive = parse_replicate(&messages[2]["replicate"]).unwrap();
        assert_eq!(keepalive.revision, 5);
        assert_eq!(keepalive.leases, vec![(LeaseId(0x2a), Some(10))]);
        assert_eq!(messages[3]["compact"]["revision"], 3);
    }

    #[test]
    fn binary_keys_travel_as_base64() {
        let mut e = put("x", "y", 2);
        e.kv.key = Bytes::from_static(&[0xff, 0x00]);
        e.kv.value = Bytes::from_static(&[0xfe]);
        let records = vec![Record::Journal(JournalRecord::Commit { revision: 2, events: vec![e].into() })];
        let m = to_messages(&records, 1, 1);
        let c = parse_replicate(&m[0]["replicate"]).unwrap();
        assert_eq!(&c.events[0].key[..], &[0xff, 0x00]);
        assert_eq!(c.events[0].value.as_deref(), Some(&[0xfe][..]));
    }

    #[test]
    fn bad_payloads_are_errors_not_panics() {
        for bad in [
            json!(null),
            json!({}),
            json!({"header": {"revision": 1}, "events": 5}),
            json!({"header": {"revision": 1}, "events": [{"value": "x"}]}),
            json!({"header": {"revision": 1}, "leases": [{"ttl": 5}]}),
            json!({"header": {"revision": 1}, "events": [{"key": "a", "lease": "zz"}]}),
        ] {
            assert!(parse_replicate(&bad).is_err(), "{bad}");
        }
    }
}
