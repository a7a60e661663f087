//! The election driver: the one task that owns the [`tinyraft::Engine`]. It feeds the engine peer
//! messages, connection events and timer expirations (tokio `sleep_until` on the engine's
//! `SetTimer`/`CancelTimer`), persists a higher term before performing any action that follows it, sends
//! raft messages on the peer links, and publishes [`ClusterStatus`] on a `watch`.

use super::peer::Links;
use super::term::TermStore;
use super::{ClusterStatus, Event};
use std::sync::Arc;
use std::time::Duration;
use tinyraft::{Action, Engine, Role, Timer};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The driver's state (moved into its task by [`Driver::run`]).
#[derive(Debug)]
pub(crate) struct Driver {
    engine: Engine,
    terms: TermStore,
    links: Arc<Links>,
    status: watch::Sender<ClusterStatus>,
    origin: Instant,
    election_at: Option<Duration>,
    heartbeat_at: Option<Duration>,
}

async fn sleep_until(origin: Instant, at: Option<Duration>) {
    match at {
        Some(at) => tokio::time::sleep_until(origin + at).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    pub(crate) fn new(
        engine: Engine,
        terms: TermStore,
        links: Arc<Links>,
        status: watch::Sender<ClusterStatus>,
    ) -> Driver {
        Driver { engine, terms, links, status, origin: Instant::now(), election_at: None, heartbeat_at: None }
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Runs until `stopping` is cancelled.
    pub(crate) async fn run(mut self, mut events: mpsc::Receiver<Event>, stopping: CancellationToken) {
        let now = self.now();
        let actions = self.engine.start(now);
        if !self.perform(actions, &stopping).await {
            return;
        }
        loop {
            let actions = tokio::select! {
                biased;
                _ = stopping.cancelled() => return,
                event = events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => return,
                },
                _ = sleep_until(self.origin, self.election_at) => {
                    self.election_at = None;
                    let now = self.now();
                    self.engine.handle_timeout(Timer::Election, now)
                }
                _ = sleep_until(self.origin, self.heartbeat_at) => {
                    self.heartbeat_at = None;
                    let now = self.now();
                    self.engine.handle_timeout(Timer::Heartbeat, now)
                }
            };
            if !self.perform(actions, &stopping).await {
                return;
            }
        }
    }

    fn on_event(&mut self, event: Event) -> Vec<Action> {
        let now = self.now();
        match event {
            Event::Raft { from, message } => self.engine.handle_message(&from, message, now),
            Event::Connected(peer) => {
                self.status.send_if_modified(|s| s.connected.insert(peer.clone()));
                self.engine.peer_connected(&peer, now)
            }
            Event::Disconnected(peer) => {
                self.status.send_if_modified(|s| s.connected.remove(&peer));
                Vec::new()
            }
            Event::Campaign => self.engine.campaign(now),
        }
    }

    /// Persists the term if it rose, then performs `actions` and publishes the status. False if the node
    /// is stopping.
    async fn perform(&mut self, actions: Vec<Action>, stopping: &CancellationToken) -> bool {
        // Before any message of the new term leaves this node, the term is on disk (a restarted node must
        // not vote twice in a term). Until it is, the node stays silent: safe, and it retries.
        let term = self.engine.term();
        while let Err(e) = self.terms.raise(term).await {
            tracing::error!(target: "antietcd::cluster", "persisting raft term {term} failed: {e}; retrying");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stopping.cancelled() => return false,
            }
        }
        for action in actions {
            match action {
                Action::Send { to, message } => {
                    let text = serde_json::json!({ "raft": message }).to_string();
                    // Best effort: raft tolerates lost messages (no link, or a peer too slow to drain).
                    let _ = self.links.try_send(&to, text);
                }
                Action::SetTimer { timer: Timer::Election, at } => self.election_at = Some(at),
                Action::SetTimer { timer: Timer::Heartbeat, at } => self.heartbeat_at = Some(at),
                Action::CancelTimer { timer: Timer::Election } => self.election_at = None,
                Action::CancelTimer { timer: Timer::Heartbeat } => self.heartbeat_at = None,
                Action::StateChanged(st) => {
                    tracing::info!(target: "antietcd::cluster", "{}: {:?} term {} leader {:?}",
                        self.engine.id(), st.role, st.term, st.leader);
                }
                Action::FollowersChanged { term, followers } => {
                    // Next slice: resync (dump/load) the new followers before the leader is "synced".
                    tracing::info!(target: "antietcd::cluster", "{}: followers at term {term}: {followers:?}",
                        self.engine.id());
                }
            }
        }
        self.publish();
        true
    }

    fn publish(&self) {
        let e = &self.engine;
        let role = e.role();
        let leader = e.leader().map(str::to_owned);
        let followers = if role == Role::Leader { e.followers().cloned() } else { None };
        let lease_until = if role == Role::Leader { e.lease_end().map(|d| self.origin + d) } else { None };
        self.status.send_if_modified(|s| {
            let changed =
                s.role != role || s.term != e.term() || s.leader != leader || s.followers != followers;
            s.role = role;
            s.term = e.term();
            s.leader = leader;
            s.followers = followers;
            s.lease_until = lease_until;
            changed
        });
    }
}
