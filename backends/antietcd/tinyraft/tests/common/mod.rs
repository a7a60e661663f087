//! An in-memory cluster for TinyRaft engines: a discrete-event simulation with a shared simulated
//! clock (no real time, no sleeps), a router with `isolate`, `cut`, `heal`, random drops and delays,
//! node kill and restart, and invariants checked after every single event:
//!
//! - at most one node believes it is a *confirmed* leader at any instant;
//! - at most one leader per term, over the whole run;
//! - a node's term never decreases (until it is restarted);
//! - every `FollowersChanged` set contains the leader and is a quorum.
//!
//! Messages go through their JSON encoding when the `serde` feature is on, so the wire format is
//! exercised too.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tinyraft::{Action, Config, Engine, Message, RandomSource, Role, SplitMix64, Status, Timer};

fn trace(f: impl FnOnce() -> String) {
    if std::env::var_os("TINYRAFT_TRACE").is_some() {
        eprintln!("{}", f());
    }
}

/// Milliseconds as a `Duration`.
pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Seconds as a `Duration`.
pub(crate) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[derive(Debug)]
struct Envelope {
    from: String,
    to: String,
    message: Message,
}

#[derive(Debug)]
struct SimNode {
    config: Config,
    engine: Option<Engine>,
    timers: BTreeMap<Timer, Duration>,
    last_term: u64,
    restarts: u64,
}

/// A recorded state change.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    /// When.
    pub(crate) at: Duration,
    /// Which node.
    pub(crate) node: String,
    /// Its new status.
    pub(crate) status: Status,
}

/// The simulated cluster.
#[derive(Debug)]
pub(crate) struct Sim {
    now: Duration,
    nodes: BTreeMap<String, SimNode>,
    queue: BTreeMap<(Duration, u64), Envelope>,
    seq: u64,
    cuts: BTreeSet<(String, String)>,
    isolated: BTreeSet<String>,
    /// Probability, in thousandths, that a message is lost.
    pub(crate) drop_per_mille: u64,
    /// Minimum and maximum one-way delay.
    pub(crate) delay: (Duration, Duration),
    rng: SplitMix64,
    seed: u64,
    leaders_by_term: BTreeMap<u64, String>,
    /// Every state change, in order.
    pub(crate) changes: Vec<Change>,
    /// Every followers change: (time, leader, term, followers).
    pub(crate) followers_changes: Vec<(Duration, String, u64, BTreeSet<String>)>,
    /// Number of events processed.
    pub(crate) events: u64,
    /// Messages delivered.
    pub(crate) delivered: u64,
}

/// Node names n1..nN.
pub(crate) fn names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("n{i}")).collect()
}

impl Sim {
    /// A cluster of `n` nodes with antietcd's default timeouts, all started at time 0.
    pub(crate) fn new(n: usize, seed: u64) -> Self {
        let all = names(n);
        let configs = all.iter().map(|id| Config::new(id.clone(), all.clone())).collect();
        Self::with_configs(configs, seed)
    }

    /// A cluster with the given configurations, all started at time 0.
    pub(crate) fn with_configs(configs: Vec<Config>, seed: u64) -> Self {
        let mut sim = Sim {
            now: Duration::ZERO,
            nodes: BTreeMap::new(),
            queue: BTreeMap::new(),
            seq: 0,
            cuts: BTreeSet::new(),
            isolated: BTreeSet::new(),
            drop_per_mille: 0,
            delay: (ms(1), ms(5)),
            rng: SplitMix64::new(seed ^ 0x5EED),
            seed,
            leaders_by_term: BTreeMap::new(),
            changes: Vec::new(),
            followers_changes: Vec::new(),
            events: 0,
            delivered: 0,
        };
        for config in configs {
            let id = config.node_id.clone();
            sim.nodes.insert(
                id.clone(),
                SimNode { config, engine: None, timers: BTreeMap::new(), last_term: 0, restarts: 0 },
            );
            sim.boot(&id, 0);
        }
        sim
    }

    /// A cluster of `n` nodes of which only `up` are started.
    pub(crate) fn with_down(n: usize, seed: u64, down: &[&str]) -> Self {
        let mut sim = Self::new(n, seed);
        for d in down {
            sim.kill(d);
        }
        sim
    }

    fn boot(&mut self, id: &str, term: u64) {
        let Some(node) = self.nodes.get_mut(id) else { panic!("unknown node {id}") };
        let seed = self
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(node.restarts * 7919)
            .wrapping_add(id.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))));
        let mut engine = Engine::new(node.config.clone(), term, SplitMix64::new(seed)).expect("valid config");
        node.timers.clear();
        node.last_term = term;
        let actions = engine.start(self.now);
        node.engine = Some(engine);
        self.apply(id, actions);
        self.check();
    }

    /// The current simulated time.
    pub(crate) fn now(&self) -> Duration {
        self.now
    }

    /// Stops a node (its state is lost, messages to it are dropped).
    pub(crate) fn kill(&mut self, id: &str) {
        let node = self.nodes.get_mut(id).expect("known node");
        node.engine = None;
        node.timers.clear();
    }

    /// Restarts a stopped node with a persisted term.
    pub(crate) fn restart(&mut self, id: &str, term: u64) {
        let node = self.nodes.get_mut(id).expect("known node");
        assert!(node.engine.is_none(), "{id} is running");
        node.restarts += 1;
        self.boot(id, term);
    }

    /// Whether the node runs.
    pub(crate) fn is_up(&self, id: &str) -> bool {
        self.nodes.get(id).is_some_and(|n| n.engine.is_some())
    }

    /// Cuts every link of `id`.
    pub(crate) fn isolate(&mut self, id: &str) {
        self.isolated.insert(id.to_owned());
    }

    /// Cuts the link between `a` and `b` (both directions).
    pub(crate) fn cut(&mut self, a: &str, b: &str) {
        self.cuts.insert((a.to_owned(), b.to_owned()));
        self.cuts.insert((b.to_owned(), a.to_owned()));
    }

    /// Splits the cluster into `side` and the rest.
    pub(crate) fn split(&mut self, side: &[&str]) {
        let ids: Vec<String> = self.nodes.keys().cloned().collect();
        for a in side {
            for b in &ids {
                if !side.contains(&b.as_str()) {
                    self.cut(a, b);
                }
            }
        }
    }

    /// Restores every link (drops and delays stay as configured).
    pub(crate) fn heal(&mut self) {
        self.cuts.clear();
        self.isolated.clear();
    }

    fn linked(&self, a: &str, b: &str) -> bool {
        !self.isolated.contains(a)
            && !self.isolated.contains(b)
            && !self.cuts.contains(&(a.to_owned(), b.to_owned()))
    }

    /// The engine of a running node.
    pub(crate) fn engine(&self, id: &str) -> &Engine {
        self.nodes.get(id).and_then(|n| n.engine.as_ref()).expect("node is up")
    }

    /// Mutable access, to drive an engine by hand (actions are applied).
    pub(crate) fn with_engine(&mut self, id: &str, f: impl FnOnce(&mut Engine, Duration) -> Vec<Action>) {
        let now = self.now;
        let node = self.nodes.get_mut(id).expect("known node");
        let engine = node.engine.as_mut().expect("node is up");
        let actions = f(engine, now);
        self.apply(id, actions);
        self.check();
    }

    /// Status of a running node.
    pub(crate) fn status(&self, id: &str) -> Status {
        self.engine(id).status()
    }

    /// Term of a running node.
    pub(crate) fn term(&self, id: &str) -> u64 {
        self.engine(id).term()
    }

    /// Running nodes' ids.
    pub(crate) fn up(&self) -> Vec<String> {
        self.nodes.iter().filter(|(_, n)| n.engine.is_some()).map(|(k, _)| k.clone()).collect()
    }

    /// Nodes that believe they are confirmed leaders now.
    pub(crate) fn confirmed_leaders(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.engine.as_ref().is_some_and(|e| e.is_confirmed_leader(self.now)))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The unique confirmed leader, if exactly one.
    pub(crate) fn leader(&self) -> Option<String> {
        let leaders = self.confirmed_leaders();
        (leaders.len() == 1).then(|| leaders[0].clone())
    }

    /// Nodes in the Leader role (confirmed or not).
    pub(crate) fn role_leaders(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.engine.as_ref().is_some_and(|e| e.role() == Role::Leader))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Whether every running node agrees on one confirmed leader and its term.
    pub(crate) fn converged(&self) -> Option<(String, u64)> {
        let leader = self.leader()?;
        let term = self.term(&leader);
        for id in self.up() {
            let st = self.status(&id);
            if st.term != term || st.leader.as_deref() != Some(leader.as_str()) {
                return None;
            }
            if id != leader && st.role != Role::Follower {
                return None;
            }
        }
        Some((leader, term))
    }

    fn next_event(&self) -> Option<Duration> {
        let msg = self.queue.keys().next().map(|(t, _)| *t);
        let timer =
            self.nodes.values().filter(|n| n.engine.is_some()).flat_map(|n| n.timers.values().copied()).min();
        match (msg, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Processes the next event (a message delivery or a timer), if any is due by `limit`.
    fn step(&mut self, limit: Duration) -> bool {
        let Some(at) = self.next_event() else { return false };
        if at > limit {
            return false;
        }
        self.now = self.now.max(at);
        self.events += 1;
        // Timers first, in node order, then messages: deterministic.
        let due_timer = self.nodes.iter().filter(|(_, n)| n.engine.is_some()).find_map(|(id, n)| {
            n.timers.iter().find(|(_, t)| **t <= at).map(|(timer, _)| (id.clone(), *timer))
        });
        if let Some((id, timer)) = due_timer {
            let now = self.now;
            let node = self.nodes.get_mut(&id).expect("known");
            node.timers.remove(&timer);
            trace(|| format!("{now:?} {id} timer {timer:?}"));
            let actions = node.engine.as_mut().expect("up").handle_timeout(timer, now);
            self.apply(&id, actions);
        } else if let Some(key) = self.queue.keys().next().copied() {
            let env = self.queue.remove(&key).expect("present");
            if self.linked(&env.from, &env.to) {
                let now = self.now;
                if let Some(engine) = self.nodes.get_mut(&env.to).and_then(|n| n.engine.as_mut()) {
                    self.delivered += 1;
                    trace(|| format!("{now:?} {} -> {}: {:?}", env.from, env.to, env.message));
                    let actions = engine.handle_message(&env.from, env.message, now);
                    let to = env.to.clone();
                    self.apply(&to, actions);
                }
            }
        }
        self.check();
        true
    }

    /// Runs every event up to `now + d`, then sets the clock there.
    pub(crate) fn run_for(&mut self, d: Duration) {
        let limit = self.now + d;
        while self.step(limit) {}
        self.now = limit;
        self.check();
    }

    /// Runs until `cond` holds (checked after every event) or `max` elapses; returns the time it held.
    pub(crate) fn run_until(
        &mut self,
        max: Duration,
        mut cond: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let limit = self.now + max;
        loop {
            if cond(self) {
                return Some(self.now);
            }
            if !self.step(limit) {
                self.now = limit;
                self.check();
                return cond(self).then_some(self.now);
            }
        }
    }

    /// Runs for `d`, sampling `f` every `every`.
    pub(crate) fn sample(&mut self, d: Duration, every: Duration, mut f: impl FnMut(&Sim)) {
        let end = self.now + d;
        while self.now < end {
            self.run_for(every);
            f(self);
        }
    }

    fn apply(&mut self, id: &str, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { to, message } => self.send(id, to, message),
                Action::SetTimer { timer, at } => {
                    if let Some(n) = self.nodes.get_mut(id) {
                        n.timers.insert(timer, at);
                    }
                }
                Action::CancelTimer { timer } => {
                    if let Some(n) = self.nodes.get_mut(id) {
                        n.timers.remove(&timer);
                    }
                }
                Action::StateChanged(status) => {
                    trace(|| format!("{:?} {id} state {status:?}", self.now));
                    self.changes.push(Change { at: self.now, node: id.to_owned(), status });
                }
                Action::FollowersChanged { term, followers } => {
                    let quorum = self.nodes[id].config.quorum();
                    assert!(followers.contains(id), "followers of {id} lack the leader: {followers:?}");
                    assert!(followers.len() >= quorum, "followers of {id} not a quorum: {followers:?}");
                    self.followers_changes.push((self.now, id.to_owned(), term, followers));
                }
            }
        }
    }

    fn send(&mut self, from: &str, to: String, message: Message) {
        assert_ne!(from, to, "{from} sent a message to itself");
        assert!(self.nodes.contains_key(&to), "{from} sent to unknown {to}");
        #[cfg(feature = "serde")]
        let message: Message = {
            let text = serde_json::to_string(&message).expect("serializes");
            serde_json::from_str(&text).expect("round-trips")
        };
        if !self.linked(from, &to) {
            return;
        }
        if self.drop_per_mille > 0 && self.rng.next_u64() % 1000 < self.drop_per_mille {
            return;
        }
        let (lo, hi) = self.delay;
        let span = u64::try_from(hi.saturating_sub(lo).as_millis()).unwrap_or(0);
        let delay = lo + if span == 0 { Duration::ZERO } else { ms(self.rng.next_u64() % (span + 1)) };
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), Envelope { from: from.to_owned(), to, message });
    }

    fn check(&mut self) {
        let confirmed = self.confirmed_leaders();
        assert!(
            confirmed.len() <= 1,
            "seed {}: two confirmed leaders at {:?}: {:?} (terms {:?})",
            self.seed,
            self.now,
            confirmed,
            confirmed.iter().map(|c| self.term(c)).collect::<Vec<_>>()
        );
        for (id, node) in self.nodes.iter_mut() {
            let Some(engine) = node.engine.as_ref() else { continue };
            assert!(
                engine.term() >= node.last_term,
                "seed {}: {id}'s term went back from {} to {}",
                self.seed,
                node.last_term,
                engine.term()
            );
            node.last_term = engine.term();
            if engine.role() == Role::Leader {
                let prev = self.leaders_by_term.entry(engine.term()).or_insert_with(|| id.clone());
                assert_eq!(prev, id, "seed {}: two leaders in term {}", self.seed, engine.term());
            }
        }
    }

    /// How many distinct leaders were ever elected (one per term).
    pub(crate) fn elections(&self) -> usize {
        self.leaders_by_term.len()
    }

    /// State changes of `id` after time `t`.
    pub(crate) fn changes_since(&self, id: &str, t: Duration) -> Vec<Change> {
        self.changes.iter().filter(|c| c.node == id && c.at > t).cloned().collect()
    }
}
