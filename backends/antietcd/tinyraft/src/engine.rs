//! The election state machine: messages and timer expirations in, [`Action`]s out.
//!
//! Every entry point takes the current monotonic time `now` and returns the actions the runtime must
//! perform, in order. The engine keeps its own deadlines and ignores early or stale timer calls, so a
//! runtime may deliver timers late or twice; before handling any input it first applies an overdue
//! lease expiry, so a leader that was paused (SIGSTOP) steps down before it can count old answers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::{Config, ConfigError, Message, NodeId, RandomSource, Term};

/// Messages carrying a term above this are ignored: no honest cluster gets there, and it keeps
/// `term + 1` from overflowing.
const MAX_TERM: Term = u64::MAX / 2;

/// How many recent ping rounds a leader remembers to credit late pongs.
const MAX_ROUNDS: usize = 16;

/// The engine's two timers. Each [`Action::SetTimer`] replaces the previous deadline of that timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// Follower: the leader is presumed gone. Candidate: retry the election. Leader: the lease ends.
    Election,
    /// Leader only: send the next ping round.
    Heartbeat,
}

/// A node's role, with Node TinyRaft's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Following [`Status::leader`], which pinged it in the current term; or, at start, no leader
    /// known yet (`leader` is `None`).
    Follower,
    /// An election is in progress: this node runs (leader = itself), has voted for a candidate that
    /// has not pinged it yet (leader = that candidate), or looks for a quorum in a pre-vote (leader =
    /// `None`). antietcd answers "Quorum not available" in this state.
    Candidate,
    /// Elected in the current term. Whether the leadership is still confirmed is
    /// [`Engine::is_confirmed_leader`].
    Leader,
}

/// The externally visible state, reported by [`Action::StateChanged`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The role.
    pub role: Role,
    /// The current term.
    pub term: Term,
    /// The leader (or, for a candidate, the node it voted for), if any.
    pub leader: Option<NodeId>,
}

/// Something the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `message` to peer `to` (best effort: a message to an unreachable peer may be dropped).
    Send {
        /// The destination node.
        to: NodeId,
        /// The message, to be wrapped as `{"raft": message}` on antietcd's peer socket.
        message: Message,
    },
    /// (Re)arm `timer` to fire at `at` (same clock as `now`), replacing its previous deadline; when it
    /// fires, call [`Engine::handle_timeout`].
    SetTimer {
        /// Which timer.
        timer: Timer,
        /// The deadline.
        at: Duration,
    },
    /// Disarm `timer`.
    CancelTimer {
        /// Which timer.
        timer: Timer,
    },
    /// Role, term or leader changed (antietcd's raft `change` event).
    StateChanged(Status),
    /// This node is leader and its set of followers changed, including right after it was elected
    /// (antietcd resyncs its followers then). The set includes the leader itself and is always a
    /// quorum.
    FollowersChanged {
        /// The leader's term.
        term: Term,
        /// The nodes that voted for or acknowledged this leader in `term`, the leader included.
        followers: BTreeSet<NodeId>,
    },
}

#[derive(Debug)]
struct PreVote {
    /// When it started.
    started: Duration,
    /// The term the pre-vote asks about (current term + 1 or more).
    target: Term,
    /// Nodes that said they would vote for us in `target` (ourselves included).
    grants: BTreeSet<NodeId>,
    /// Nodes that already really voted for us in `target` (Node nodes take a pre-vote as a vote).
    votes: BTreeSet<NodeId>,
}

#[derive(Debug)]
struct Round {
    started: Duration,
    acks: BTreeSet<NodeId>,
}

#[derive(Debug)]
struct LeaderState {
    followers: BTreeSet<NodeId>,
    last_ack: BTreeMap<NodeId, Duration>,
    rounds: BTreeMap<u64, Round>,
    current_round: u64,
    /// End of the confirmed lease, if any round was acknowledged by a quorum.
    lease_end: Option<Duration>,
    /// When leadership expires without further acknowledgements.
    deadline: Duration,
}

/// The TinyRaft engine of one node. See the crate documentation.
#[derive(Debug)]
pub struct Engine {
    config: Config,
    nodes: BTreeSet<NodeId>,
    rng: Box<dyn RandomSource>,
    now: Duration,
    term: Term,
    role: Role,
    leader: Option<NodeId>,
    /// Follower: when the leader was last heard (a ping in the current term).
    last_contact: Option<Duration>,
    /// Follower: the leader's priority from its last ping.
    leader_priority: Option<u64>,
    /// Running candidate: the votes received (self included).
    votes: BTreeSet<NodeId>,
    /// Running candidate: votes seen for other candidates in this term, by candidate.
    tally: BTreeMap<NodeId, BTreeSet<NodeId>>,
    prevote: Option<PreVote>,
    leader_state: Option<LeaderState>,
    election_deadline: Option<Duration>,
    heartbeat_deadline: Option<Duration>,
    last_takeover: Option<Duration>,
    reported: Option<Status>,
    out: Vec<Action>,
}

fn prio(p: Option<u64>) -> u64 {
    p.unwrap_or(0)
}

impl Engine {
    /// Creates the engine of `config.node_id` at `initial_term` (antietcd's persisted `stored_term`,
    /// or 0), as a follower that knows no leader. Call [`Engine::start`] next.
    pub fn new(
        config: Config,
        initial_term: Term,
        rng: impl RandomSource + 'static,
    ) -> Result<Self, ConfigError> {
        let config = config.validate()?;
        let nodes = config.nodes.iter().cloned().collect();
        Ok(Self {
            config,
            nodes,
            rng: Box::new(rng),
            now: Duration::ZERO,
            term: initial_term.min(MAX_TERM),
            role: Role::Follower,
            leader: None,
            last_contact: None,
            leader_priority: None,
            votes: BTreeSet::new(),
            tally: BTreeMap::new(),
            prevote: None,
            leader_state: None,
            election_deadline: None,
            heartbeat_deadline: None,
            last_takeover: None,
            reported: None,
            out: Vec::new(),
        })
    }

    /// Starts the engine: reports the initial state and arms the first election timer within one
    /// heartbeat period (the first election attempt is a harmless pre-vote, so a restarted node may
    /// try early; a live leader's ping usually arrives first).
    pub fn start(&mut self, now: Duration) -> Vec<Action> {
        self.advance(now);
        self.notify();
        let delay = self.rand_below(self.config.heartbeat_timeout);
        self.set_election_timer(now + delay);
        self.take()
    }

    /// Handles a message received from peer `from`. Messages from unknown nodes or from this node's
    /// own id, and messages with absurd terms, are ignored.
    pub fn handle_message(&mut self, from: &str, message: Message, now: Duration) -> Vec<Action> {
        self.advance(now);
        if from == self.config.node_id || !self.nodes.contains(from) || message.term() > MAX_TERM {
            return self.take();
        }
        match message {
            Message::VoteRequest { term, leader, priority, pre_vote } => {
                match leader {
                    // A request on behalf of another node is not honoured.
                    Some(ref candidate) if candidate != from => {}
                    // Node answers every request; without a candidate it is a query of our state.
                    None => self.reply_vote(from),
                    Some(_) if pre_vote => self.on_pre_vote_request(from, term, priority),
                    Some(_) => self.on_vote_request(from, term, priority),
                }
            }
            Message::Vote { term, leader, priority, pre_vote } => {
                self.on_vote(from, term, leader, priority, pre_vote)
            }
            Message::Ping { term, priority, round } => self.on_ping(from, term, priority, round),
            Message::Pong { term, leader, round } => self.on_pong(from, term, leader, round),
        }
        self.take()
    }

    /// Handles the expiry of `timer`. Calls before the engine's current deadline for that timer, or
    /// for a timer that is not armed, are ignored.
    pub fn handle_timeout(&mut self, timer: Timer, now: Duration) -> Vec<Action> {
        self.advance(now);
        match timer {
            Timer::Heartbeat => {
                if self.role == Role::Leader && self.heartbeat_deadline.is_some_and(|d| self.now >= d) {
                    self.heartbeat();
                }
            }
            Timer::Election => {
                if self.election_deadline.is_some_and(|d| self.now >= d) {
                    self.election_deadline = None;
                    match self.role {
                        // `advance` already stepped down an expired leader; re-arm at the deadline.
                        Role::Leader => {
                            if let Some(d) = self.leader_state.as_ref().map(|l| l.deadline) {
                                self.set_election_timer(d);
                            }
                        }
                        Role::Follower | Role::Candidate => self.start_prevote(),
                    }
                }
            }
        }
        self.take()
    }

    /// Tells the engine that the connection to `peer` (re)opened. Node antietcd starts a whole new
    /// election here; this engine only sends what the peer needs to catch up: a ping if we lead, our
    /// vote request if we are running, our pre-vote request if we look for a quorum.
    pub fn peer_connected(&mut self, peer: &str, now: Duration) -> Vec<Action> {
        self.advance(now);
        if peer == self.config.node_id || !self.nodes.contains(peer) {
            return self.take();
        }
        match self.role {
            Role::Leader => {
                let round = self.leader_state.as_ref().map(|l| l.current_round);
                self.send(
                    peer,
                    Message::Ping { term: self.term, priority: self.config.leader_priority, round },
                );
            }
            Role::Candidate if self.leader.as_deref() == Some(self.config.node_id.as_str()) => {
                self.send(
                    peer,
                    Message::VoteRequest {
                        term: self.term,
                        leader: Some(self.config.node_id.clone()),
                        priority: self.config.leader_priority,
                        pre_vote: false,
                    },
                );
            }
            _ => {
                if let Some(target) = self.prevote.as_ref().map(|p| p.target) {
                    self.send(peer, self.prevote_request(target));
                }
            }
        }
        self.take()
    }

    /// Starts a new election now (Node's `raft.start()`), for instance after a replication failure.
    ///
    /// It goes through a pre-vote: a leader's own followers grant it, so a leader re-elects itself in
    /// the next term and gets a fresh followers set; on a follower of a live leader (pinged within
    /// `election_timeout`) it does nothing.
    pub fn campaign(&mut self, now: Duration) -> Vec<Action> {
        self.advance(now);
        if !(self.role == Role::Follower && self.is_sticky()) {
            self.start_prevote();
        }
        self.take()
    }

    /// Replaces the member list (antietcd never does; membership is static). Votes, grants and
    /// followers of removed nodes are forgotten and the quorum is recomputed.
    pub fn set_nodes<I, S>(&mut self, nodes: I, now: Duration) -> Result<Vec<Action>, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<NodeId>,
    {
        let mut config = self.config.clone();
        config.nodes = nodes.into_iter().map(Into::into).collect();
        let config = config.validate()?;
        self.advance(now);
        self.nodes = config.nodes.iter().cloned().collect();
        self.config = config;
        let nodes = &self.nodes;
        self.votes.retain(|n| nodes.contains(n));
        for voters in self.tally.values_mut() {
            voters.retain(|n| nodes.contains(n));
        }
        if let Some(pv) = self.prevote.as_mut() {
            pv.grants.retain(|n| nodes.contains(n));
            pv.votes.retain(|n| nodes.contains(n));
        }
        if let Some(ls) = self.leader_state.as_mut() {
            let before = ls.followers.len();
            ls.followers.retain(|n| nodes.contains(n));
            ls.last_ack.retain(|n, _| nodes.contains(n));
            for round in ls.rounds.values_mut() {
                round.acks.retain(|n| nodes.contains(n));
            }
            if ls.followers.len() != before {
                let followers = ls.followers.clone();
                self.out.push(Action::FollowersChanged { term: self.term, followers });
            }
        }
        self.check_prevote();
        if self.is_running() && self.votes.len() >= self.config.quorum() {
            self.become_leader();
        }
        Ok(self.take())
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.config.node_id
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The leader (or the candidate voted for while [`Role::Candidate`]).
    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    /// Role, term and leader together.
    pub fn status(&self) -> Status {
        Status { role: self.role, term: self.term, leader: self.leader.clone() }
    }

    /// The leader's followers (itself included), or `None` when not leader.
    pub fn followers(&self) -> Option<&BTreeSet<NodeId>> {
        self.leader_state.as_ref().map(|l| &l.followers)
    }

    /// Whether this node is leader and a quorum (itself included) acknowledged one of its pings sent
    /// less than `leadership_timeout` before `now`.
    ///
    /// While this holds no other node can be leader: every node of that quorum refuses to vote for
    /// anyone else for `election_timeout` after the ping, and `leadership_timeout <
    /// election_timeout`. Gate linearizable reads on it (assuming the nodes' monotonic clocks run at
    /// nearly the same rate; the margin is `election_timeout - leadership_timeout`).
    pub fn is_confirmed_leader(&self, now: Duration) -> bool {
        self.role == Role::Leader
            && self.leader_state.as_ref().and_then(|l| l.lease_end).is_some_and(|end| now < end)
    }

    /// The end of the leader's confirmed lease, if this node is leader and has one.
    pub fn lease_end(&self) -> Option<Duration> {
        self.leader_state.as_ref().and_then(|l| l.lease_end)
    }

    // ----- internals -----

    fn take(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    fn id_string(&self) -> NodeId {
        self.config.node_id.clone()
    }

    fn is_me(&self, node: Option<&str>) -> bool {
        node == Some(self.config.node_id.as_str())
    }

    /// Running candidate: candidate in the current term voting for itself.
    fn is_running(&self) -> bool {
        self.role == Role::Candidate && self.is_me(self.leader.as_deref())
    }

    /// Follows a leader heard within the election timeout, or leads: such a node refuses to vote for
    /// any other node.
    fn is_sticky(&self) -> bool {
        match self.role {
            Role::Leader => true,
            Role::Follower => {
                self.leader.is_some()
                    && self.last_contact.is_some_and(|t| self.now < t + self.config.election_timeout)
            }
            Role::Candidate => false,
        }
    }

    fn advance(&mut self, now: Duration) {
        if now > self.now {
            self.now = now;
        }
        let expired = self.leader_state.as_ref().is_some_and(|l| self.now >= l.deadline);
        if self.role == Role::Leader && expired {
            self.step_down();
        }
    }

    fn rand_below(&mut self, bound: Duration) -> Duration {
        let ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(self.rng.next_u64() % ms)
        }
    }

    fn send(&mut self, to: &str, message: Message) {
        self.out.push(Action::Send { to: to.to_owned(), message });
    }

    fn peers(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|n| **n != self.config.node_id).cloned().collect()
    }

    fn broadcast(&mut self, message: &Message) {
        for peer in self.peers() {
            self.send(&peer, message.clone());
        }
    }

    fn set_election_timer(&mut self, at: Duration) {
        self.election_deadline = Some(at);
        self.out.push(Action::SetTimer { timer: Timer::Election, at });
    }

    fn set_heartbeat_timer(&mut self, at: Duration) {
        self.heartbeat_deadline = Some(at);
        self.out.push(Action::SetTimer { timer: Timer::Heartbeat, at });
    }

    fn cancel_heartbeat(&mut self) {
        if self.heartbeat_deadline.take().is_some() {
            self.out.push(Action::CancelTimer { timer: Timer::Heartbeat });
        }
    }

    /// Follower silence timeout: E plus a random part below H.
    fn arm_follower_timer(&mut self) {
        let delay = self.config.election_timeout + self.rand_below(self.config.heartbeat_timeout);
        self.set_election_timer(self.now + delay);
    }

    fn notify(&mut self) {
        let status = self.status();
        if self.reported.as_ref() != Some(&status) {
            self.reported = Some(status.clone());
            self.out.push(Action::StateChanged(status));
        }
    }

    fn leave_leadership(&mut self) {
        if self.leader_state.take().is_some() {
            self.cancel_heartbeat();
        }
    }

    /// Our current choice, Node's `vote{term, leader, priority}` reply.
    fn reply_vote(&mut self, to: &str) {
        let priority = if self.is_me(self.leader.as_deref()) { self.config.leader_priority } else { None };
        let message =
            Message::Vote { term: self.term, leader: self.leader.clone(), priority, pre_vote: false };
        self.send(to, message);
    }

    fn prevote_request(&self, target: Term) -> Message {
        Message::VoteRequest {
            term: target,
            leader: Some(self.id_string()),
            priority: self.config.leader_priority,
            pre_vote: true,
        }
    }

    /// Adopts `term` (> current) voting for / following `candidate`, and tells it so.
    fn vote_for(&mut self, candidate: &str, term: Term, priority: Option<u64>) {
        self.leave_leadership();
        self.term = term;
        self.leader = Some(candidate.to_owned());
        self.role = Role::Candidate;
        self.votes.clear();
        self.tally.clear();
        self.prevote = None;
        self.last_contact = None;
        self.arm_follower_timer();
        self.notify();
        self.send(
            candidate,
            Message::Vote { term, leader: Some(candidate.to_owned()), priority, pre_vote: false },
        );
    }

    /// Learns that the cluster is at `term` (> current) without a known leader.
    fn adopt_leaderless(&mut self, term: Term) {
        self.leave_leadership();
        self.term = term;
        self.leader = None;
        self.role = Role::Candidate;
        self.votes.clear();
        self.tally.clear();
        self.prevote = None;
        self.last_contact = None;
        self.notify();
        let delay = self.config.heartbeat_timeout + self.rand_below(self.config.heartbeat_timeout);
        self.set_election_timer(self.now + delay);
    }

    /// A leader gives the leadership to a node with a higher priority and tells its peers to follow.
    fn abdicate(&mut self, candidate: &str, term: Term, priority: Option<u64>) {
        self.vote_for(candidate, term, None);
        let redirect = Message::Vote { term, leader: Some(candidate.to_owned()), priority, pre_vote: false };
        for peer in self.peers() {
            if peer != candidate {
                self.send(&peer, redirect.clone());
            }
        }
    }

    /// A leader saw a higher term (a Node node that restarted or ran elections on its own): it
    /// re-elects itself above it, through a pre-vote its followers grant.
    fn absorb(&mut self, term: Term) {
        if self.prevote.as_ref().is_some_and(|p| p.target > term) {
            return;
        }
        self.start_prevote_at(term + 1);
    }

    fn on_vote_request(&mut self, from: &str, term: Term, priority: Option<u64>) {
        if term <= self.term {
            self.reply_vote(from);
            return;
        }
        match self.role {
            Role::Leader => {
                if prio(priority) > prio(self.config.leader_priority) {
                    self.abdicate(from, term, priority);
                } else {
                    self.reply_vote(from);
                    self.absorb(term);
                }
                return;
            }
            Role::Follower if self.is_sticky() => {
                if self.leader.as_deref() == Some(from) {
                    self.vote_for(from, term, None);
                } else {
                    self.reply_vote(from);
                }
                return;
            }
            _ => {}
        }
        let mine = prio(self.config.leader_priority);
        if mine > 0 && prio(priority) < mine {
            // Node: a node with a higher priority runs itself instead, one term above.
            self.adopt_leaderless(term);
            self.become_candidate(term + 1, BTreeSet::new());
            self.reply_vote(from);
            return;
        }
        self.vote_for(from, term, None);
    }

    fn on_pre_vote_request(&mut self, from: &str, target: Term, priority: Option<u64>) {
        if target <= self.term {
            // The requester is behind: our answer carries the current term and leader, and it joins.
            self.reply_vote(from);
            return;
        }
        let grant = Message::Vote { term: target, leader: Some(from.to_owned()), priority, pre_vote: true };
        match self.role {
            Role::Leader => {
                if prio(priority) > prio(self.config.leader_priority) {
                    self.abdicate(from, target, priority);
                } else {
                    self.reply_vote(from);
                    if target - 1 > self.term {
                        self.absorb(target - 1);
                    }
                }
                return;
            }
            Role::Follower if self.is_sticky() => {
                if self.leader.as_deref() == Some(from) {
                    self.send(from, grant);
                } else {
                    self.reply_vote(from);
                }
                return;
            }
            _ => {}
        }
        let mine = prio(self.config.leader_priority);
        if mine > 0 && prio(priority) < mine {
            self.reply_vote(from);
            if self.prevote.is_none() {
                self.start_prevote();
            }
            return;
        }
        if self.prevote.as_ref().is_some_and(|pv| pv.target == target) {
            // We asked for the same term at about the same time (the leader died and both timers fired
            // within a message delay). Were each to grant the other, both would run and split the vote,
            // losing a whole election round. The tie goes to the higher priority, then the higher node
            // id; the loser grants and drops its own pre-vote (its timer still retries if the winner
            // fails).
            if (prio(priority), from) < (mine, self.config.node_id.as_str()) {
                self.reply_vote(from);
                return;
            }
            self.prevote = None;
        }
        self.send(from, grant);
    }

    fn on_vote(
        &mut self,
        from: &str,
        term: Term,
        leader: Option<NodeId>,
        priority: Option<u64>,
        pre_vote: bool,
    ) {
        let for_me = self.is_me(leader.as_deref());
        if pre_vote {
            if let Some(pv) = self.prevote.as_mut() {
                if pv.target == term && for_me {
                    pv.grants.insert(from.to_owned());
                    self.check_prevote();
                }
            }
            return;
        }
        if term < self.term {
            return;
        }
        if term == self.term {
            if for_me {
                if self.is_running() {
                    self.votes.insert(from.to_owned());
                    if self.votes.len() >= self.config.quorum() {
                        self.become_leader();
                    }
                } else if self.role == Role::Leader {
                    self.ack(from, None, false);
                    let round = self.leader_state.as_ref().map(|l| l.current_round);
                    self.send(
                        from,
                        Message::Ping { term: self.term, priority: self.config.leader_priority, round },
                    );
                }
            } else if self.is_running() {
                if let Some(other) = leader.filter(|l| self.nodes.contains(l)) {
                    self.tally.entry(other).or_default().insert(from.to_owned());
                    self.check_voting_failed();
                }
            }
            return;
        }
        // A higher term.
        if for_me {
            if let Some(pv) = self.prevote.as_mut() {
                if pv.target == term {
                    pv.votes.insert(from.to_owned());
                    pv.grants.insert(from.to_owned());
                    if self.leader.as_deref() == Some(from) {
                        // Our leader gave up its lease and voted for us: we are free to run.
                        self.last_contact = None;
                    }
                    self.check_prevote();
                }
            }
            return;
        }
        let leader = leader.filter(|l| self.nodes.contains(l));
        match self.role {
            Role::Leader => self.absorb(term),
            Role::Follower if self.is_sticky() => {
                // Only our own leader may redirect us (it abdicated for a higher-priority node).
                if self.leader.as_deref() == Some(from) {
                    if let Some(target) = leader {
                        self.vote_for(&target, term, priority);
                    }
                }
            }
            _ => match leader {
                // Node's "join the higher term's leader".
                Some(target) => self.vote_for(&target, term, priority),
                None => self.adopt_leaderless(term),
            },
        }
    }

    fn on_ping(&mut self, from: &str, term: Term, priority: Option<u64>, round: Option<u64>) {
        if term < self.term {
            let message = Message::Pong { term: self.term, leader: self.leader.clone(), round: None };
            self.send(from, message);
            return;
        }
        if term == self.term && self.role == Role::Leader {
            // Two leaders in one term cannot happen between honest nodes: ignore.
            return;
        }
        let same = term == self.term && self.role == Role::Follower && self.leader.as_deref() == Some(from);
        if !same {
            self.leave_leadership();
            self.term = term;
            self.leader = Some(from.to_owned());
            self.role = Role::Follower;
            self.votes.clear();
            self.tally.clear();
            self.prevote = None;
        }
        if self.prevote.as_ref().is_some_and(|p| p.started + self.config.election_timeout <= self.now) {
            self.prevote = None;
        }
        self.last_contact = Some(self.now);
        self.leader_priority = priority;
        self.arm_follower_timer();
        self.notify();
        self.send(from, Message::Pong { term, leader: Some(from.to_owned()), round });
        // Priority takeover: at most one attempt per election timeout.
        let mine = prio(self.config.leader_priority);
        let due = self.last_takeover.is_none_or(|t| self.now >= t + self.config.election_timeout);
        if mine > prio(priority) && due && self.prevote.is_none() {
            self.last_takeover = Some(self.now);
            self.start_prevote();
        }
    }

    fn on_pong(&mut self, from: &str, term: Term, leader: Option<NodeId>, round: Option<u64>) {
        if self.role != Role::Leader {
            return;
        }
        if term > self.term {
            self.absorb(term);
            return;
        }
        if term == self.term && self.is_me(leader.as_deref()) {
            self.ack(from, round, true);
        }
    }

    /// Records that `from` follows us: adds it to the followers, and with `lease` credits its
    /// acknowledgement to `round` (the current round when the peer did not echo one).
    fn ack(&mut self, from: &str, round: Option<u64>, lease: bool) {
        let quorum = self.config.quorum();
        let leadership = self.config.leadership_timeout;
        let now = self.now;
        let Some(ls) = self.leader_state.as_mut() else { return };
        ls.last_ack.insert(from.to_owned(), now);
        let mut changed = false;
        if ls.followers.insert(from.to_owned()) {
            changed = true;
        }
        let mut extended = None;
        if lease {
            let round = round.unwrap_or(ls.current_round);
            if let Some(r) = ls.rounds.get_mut(&round) {
                r.acks.insert(from.to_owned());
                if r.acks.len() >= quorum {
                    let end = r.started + leadership;
                    if ls.lease_end.is_none_or(|e| e < end) {
                        ls.lease_end = Some(end);
                    }
                    if ls.deadline < end {
                        ls.deadline = end;
                        extended = Some(end);
                    }
                }
            }
        }
        let followers = changed.then(|| ls.followers.clone());
        if let Some(end) = extended {
            self.set_election_timer(end);
        }
        if let Some(followers) = followers {
            self.out.push(Action::FollowersChanged { term: self.term, followers });
        }
    }

    fn heartbeat(&mut self) {
        let quorum = self.config.quorum();
        let leadership = self.config.leadership_timeout;
        let now = self.now;
        let me = self.id_string();
        if self.prevote.as_ref().is_some_and(|p| p.started + self.config.election_timeout <= now) {
            self.prevote = None;
        }
        let Some(ls) = self.leader_state.as_mut() else { return };
        ls.current_round += 1;
        let round = ls.current_round;
        ls.rounds.insert(round, Round { started: now, acks: BTreeSet::from([me.clone()]) });
        ls.rounds.retain(|_, r| r.started + leadership > now);
        while ls.rounds.len() > MAX_ROUNDS {
            ls.rounds.pop_first();
        }
        // Followers silent for a whole lease are dropped while a quorum remains; they come back (and
        // the runtime resyncs them) with their next acknowledgement.
        let stale: Vec<NodeId> = ls
            .followers
            .iter()
            .filter(|f| **f != me && ls.last_ack.get(*f).is_none_or(|t| *t + leadership <= now))
            .cloned()
            .collect();
        let mut changed = false;
        for f in stale {
            if ls.followers.len() > quorum {
                ls.followers.remove(&f);
                changed = true;
            }
        }
        let followers = changed.then(|| ls.followers.clone());
        if let Some(followers) = followers {
            self.out.push(Action::FollowersChanged { term: self.term, followers });
        }
        if quorum == 1 {
            self.ack(&me, Some(round), true);
        }
        let ping =
            Message::Ping { term: self.term, priority: self.config.leader_priority, round: Some(round) };
        self.broadcast(&ping);
        self.set_heartbeat_timer(now + self.config.heartbeat_timeout);
    }

    fn step_down(&mut self) {
        self.leave_leadership();
        self.role = Role::Candidate;
        self.leader = None;
        self.notify();
        self.start_prevote();
    }

    fn start_prevote(&mut self) {
        let target = self.term + 1;
        self.start_prevote_at(target);
    }

    fn start_prevote_at(&mut self, target: Term) {
        if target > MAX_TERM + 1 {
            return;
        }
        self.prevote = Some(PreVote {
            started: self.now,
            target,
            grants: BTreeSet::from([self.id_string()]),
            votes: BTreeSet::new(),
        });
        // A leader or a follower of a live leader keeps its role while it asks (re-election above a
        // higher term, priority takeover); anyone else is leaderless until the pre-vote ends.
        if !self.is_sticky() {
            self.role = Role::Candidate;
            self.leader = None;
            self.votes.clear();
            self.tally.clear();
            self.notify();
            let delay = self.config.heartbeat_timeout + self.rand_below(self.config.heartbeat_timeout);
            self.set_election_timer(self.now + delay);
        }
        let request = self.prevote_request(target);
        self.broadcast(&request);
        self.check_prevote();
    }

    fn check_prevote(&mut self) {
        // A follower that acknowledged a live leader must not vote for itself either: the leader's
        // lease counts on it. It runs only once released (its leader abdicated) or the leader is gone.
        if self.role == Role::Follower && self.is_sticky() {
            return;
        }
        let Some(pv) = self.prevote.as_ref() else { return };
        if pv.grants.len() >= self.config.quorum() && pv.target > self.term {
            let target = pv.target;
            let votes = pv.votes.clone();
            self.become_candidate(target, votes);
        }
    }

    fn become_candidate(&mut self, term: Term, early_votes: BTreeSet<NodeId>) {
        self.leave_leadership();
        self.term = term;
        self.role = Role::Candidate;
        self.leader = Some(self.id_string());
        self.prevote = None;
        self.tally.clear();
        self.last_contact = None;
        self.votes = early_votes;
        self.votes.insert(self.id_string());
        let delay = self.config.heartbeat_timeout + self.rand_below(self.config.election_timeout);
        self.set_election_timer(self.now + delay);
        self.notify();
        let request = Message::VoteRequest {
            term,
            leader: Some(self.id_string()),
            priority: self.config.leader_priority,
            pre_vote: false,
        };
        for peer in self.peers() {
            if !self.votes.contains(&peer) {
                self.send(&peer, request.clone());
            }
        }
        if self.votes.len() >= self.config.quorum() {
            self.become_leader();
        }
    }

    /// Node's "voting failed" test, with the arithmetic fixed: no candidate can still reach a
    /// quorum with the nodes that have not voted yet (a split vote), so retry soon.
    fn check_voting_failed(&mut self) {
        let mut voted: BTreeSet<&NodeId> = self.votes.iter().collect();
        let mut best = self.votes.len();
        for voters in self.tally.values() {
            voted.extend(voters.iter());
            best = best.max(voters.len());
        }
        let undecided = self.nodes.len().saturating_sub(voted.len());
        if best + undecided < self.config.quorum() {
            let delay = self.rand_below(self.config.heartbeat_timeout);
            self.set_election_timer(self.now + delay);
        }
    }

    fn become_leader(&mut self) {
        let now = self.now;
        let followers = std::mem::take(&mut self.votes);
        let last_ack = followers.iter().map(|f| (f.clone(), now)).collect();
        let deadline = now + self.config.leadership_timeout;
        self.role = Role::Leader;
        self.leader = Some(self.id_string());
        self.tally.clear();
        self.prevote = None;
        self.leader_state = Some(LeaderState {
            followers: followers.clone(),
            last_ack,
            rounds: BTreeMap::new(),
            current_round: 0,
            lease_end: None,
            deadline,
        });
        self.set_election_timer(deadline);
        self.notify();
        self.out.push(Action::FollowersChanged { term: self.term, followers });
        self.heartbeat();
    }
}
