//! Checkers for histories recorded against a cluster: linearizability of a key-value register, and the
//! consistency of what websocket watchers received.
//!
//! **Linearizability** ([`check_linearizable`]) follows Wing & Gong's search as improved by Lowe ("Testing
//! for linearizability", 2017): the history is a time-ordered list of call and return entries; the search
//! repeatedly linearizes a pending call whose model step matches its recorded outcome, backtracks when it
//! reaches a return entry whose operation is not yet linearized, and memoizes every visited (set of
//! linearized operations, model state) pair, so that no configuration is explored twice. Every operation
//! touches one key, so the history is checked key by key (P-compositionality: a history is linearizable
//! iff each key's sub-history is).
//!
//! An operation whose outcome is unknown (a timeout, a lost connection, a 503 on a write) may have taken
//! effect at any moment after its invocation, or never: it gets an infinite return time, and the search
//! succeeds as soon as only such operations are left. Two reductions keep that cheap when a fault leaves
//! hundreds of them pending, both exact (they never change the verdict):
//! - values that no read returned and no CAS compared with are indistinguishable by any operation of the
//!   history, so they all become one "unobserved" value;
//! - pending indeterminate operations with the same effect (same kind and, after that, the same values)
//!   are interchangeable for the rest of the search (none of them ever has to return), so at each step of
//!   the search only the first of them is tried.
//!
//! **Watches** ([`check_watches`]): every watcher's events, in the order received, against each other,
//! against the recorded history and against every node's final state.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

/// Nanoseconds since the history's origin (a monotonic clock).
pub(crate) type Time = u64;

/// An operation on the key-value register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// `put(key, value)`.
    Put { key: String, value: String },
    /// `get(key) -> Option<value>`.
    Get { key: String },
    /// `cas(key, expected, value) -> bool`: writes `value` iff the key holds `expected` (`None`: absent).
    Cas { key: String, expected: Option<String>, value: String },
    /// `delete(key) -> bool` (whether a value was deleted).
    Delete { key: String },
}

impl Op {
    /// The key the operation touches.
    pub(crate) fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Get { key } | Op::Cas { key, .. } | Op::Delete { key } => key,
        }
    }

    /// The value it writes, if any.
    pub(crate) fn written(&self) -> Option<&str> {
        match self {
            Op::Put { value, .. } | Op::Cas { value, .. } => Some(value),
            Op::Get { .. } | Op::Delete { .. } => None,
        }
    }

    fn is_write(&self) -> bool {
        !matches!(self, Op::Get { .. })
    }
}

/// What the client learnt about an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The put was acknowledged.
    Put,
    /// The value read.
    Get(Option<String>),
    /// Whether the CAS succeeded.
    Cas(bool),
    /// Whether the delete removed a value.
    Delete(bool),
    /// Unknown: the write may or may not have taken effect (timeout, connection lost, 503). A read with
    /// this outcome carries no information and is ignored.
    Indeterminate,
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    /// Which client issued it (clients are sequential: one operation at a time).
    pub(crate) client: usize,
    pub(crate) op: Op,
    /// Before the request was sent.
    pub(crate) call: Time,
    /// After the answer (or the failure) was received. Ignored for indeterminate outcomes.
    pub(crate) ret: Time,
    pub(crate) outcome: Outcome,
    /// For an acknowledged write that changed something, the revision it was committed at.
    pub(crate) revision: Option<i64>,
    /// Free text for reports (node asked, status, error).
    pub(crate) note: String,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.as_deref().map_or("∅".to_owned(), |v| format!("{v:?}"));
        let op = match &self.op {
            Op::Put { key, value } => format!("put({key}, {value:?})"),
            Op::Get { key } => format!("get({key})"),
            Op::Cas { key, expected, value } => format!("cas({key}, {}, {value:?})", show(expected)),
            Op::Delete { key } => format!("delete({key})"),
        };
        let out = match &self.outcome {
            Outcome::Put => "ok".to_owned(),
            Outcome::Get(v) => show(v),
            Outcome::Cas(b) | Outcome::Delete(b) => b.to_string(),
            Outcome::Indeterminate => "?".to_owned(),
        };
        let ms = |t: Time| t as f64 / 1e6;
        write!(f, "c{} [{:.3} ms .. ", self.client, ms(self.call))?;
        if self.outcome == Outcome::Indeterminate {
            write!(f, "∞ (gave up at {:.3})", ms(self.ret))?;
        } else {
            write!(f, "{:.3}", ms(self.ret))?;
        }
        write!(f, " ms] {op} -> {out}")?;
        if let Some(r) = self.revision {
            write!(f, " @rev {r}")?;
        }
        if !self.note.is_empty() {
            write!(f, " ({})", self.note)?;
        }
        Ok(())
    }
}

/// Why a key's sub-history is not linearizable (or could not be decided).
#[derive(Debug)]
pub(crate) struct Violation {
    pub(crate) key: String,
    /// The search ran out of its configuration budget: no verdict.
    pub(crate) inconclusive: bool,
    /// The longest linearization found (its last operations, in order, with the state after each).
    pub(crate) longest: Vec<(Record, Option<String>)>,
    /// How many operations that linearization held in all.
    pub(crate) longest_len: usize,
    /// The operation that could not be placed after it (the earliest return not linearized).
    pub(crate) blocked: Option<Record>,
    /// Operations concurrent with the blocked one that were not linearized either.
    pub(crate) pending: Vec<Record>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.inconclusive {
            writeln!(f, "key {}: search budget exhausted, no verdict", self.key)?;
        } else {
            writeln!(f, "key {}: not linearizable", self.key)?;
        }
        let show = |v: &Option<String>| v.as_deref().map_or("∅".to_owned(), |v| format!("{v:?}"));
        writeln!(
            f,
            "  longest linearization: {} operations; its last {}:",
            self.longest_len,
            self.longest.len()
        )?;
        for (r, state) in &self.longest {
            writeln!(f, "    {r}   => {}", show(state))?;
        }
        if let Some(b) = &self.blocked {
            writeln!(f, "  cannot be linearized next: {b}")?;
        }
        if !self.pending.is_empty() {
            writeln!(f, "  other operations pending then:")?;
            for r in &self.pending {
                writeln!(f, "    {r}")?;
            }
        }
        Ok(())
    }
}

/// What a successful check covered.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LinStats {
    pub(crate) keys: usize,
    pub(crate) operations: usize,
    pub(crate) indeterminate: usize,
    /// Configurations visited by the searches, all keys together.
    pub(crate) configurations: u64,
}

/// The most configurations one key's search may visit before giving up (without a verdict).
const BUDGET: u64 = 2_000_000;

/// Checks a whole history, key by key, every key starting absent. `Err` holds one entry per failing key.
pub(crate) fn check_linearizable(history: &[Record]) -> Result<LinStats, Vec<Violation>> {
    let mut by_key: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in history {
        by_key.entry(r.op.key()).or_default().push(r);
    }
    let mut stats = LinStats { keys: by_key.len(), ..LinStats::default() };
    let mut violations = Vec::new();
    for (key, ops) in by_key {
        stats.operations += ops.len();
        stats.indeterminate += ops.iter().filter(|r| r.outcome == Outcome::Indeterminate).count();
        match Search::new(key, &ops).run() {
            Ok(n) => stats.configurations += n,
            Err(v) => violations.push(*v),
        }
    }
    if violations.is_empty() {
        Ok(stats)
    } else {
        Err(violations)
    }
}

/// Value ids inside one key's search: `ABSENT`, `UNOBSERVED` (every value no operation can tell apart),
/// then one id per observed value.
type Val = u32;
const ABSENT: Val = 0;
const UNOBSERVED: Val = 1;

/// One operation in the search's terms.
#[derive(Clone, Copy, Debug)]
enum Step {
    Put(Val),
    Get(Val),
    Cas { expected: Val, value: Val, ok: Option<bool> },
    Delete(Option<bool>),
}

const NIL: usize = usize::MAX;

struct Node {
    /// Index into `Search::ops`; unused for the head.
    op: usize,
    is_call: bool,
    /// For a call, its return node.
    matching: usize,
    prev: usize,
    next: usize,
}

struct Search<'a> {
    key: &'a str,
    records: Vec<&'a Record>,
    steps: Vec<Step>,
    indeterminate: Vec<bool>,
    /// Interchangeable indeterminate operations share a class (see the module docs).
    class: Vec<Option<u32>>,
    names: Vec<Option<String>>,
    /// Doubly linked list of call and return entries in time order; node 0 is the head.
    list: Vec<Node>,
}

impl<'a> Search<'a> {
    fn new(key: &'a str, ops: &[&'a Record]) -> Self {
        // A read without an answer tells nothing.
        let records: Vec<&Record> = ops
            .iter()
            .copied()
            .filter(|r| !(matches!(r.op, Op::Get { .. }) && r.outcome == Outcome::Indeterminate))
            .collect();
        // Values some operation can observe: read results and CAS expectations.
        let mut names: Vec<Option<String>> = vec![None, Some("<unobserved>".into())];
        let mut ids: HashMap<&str, Val> = HashMap::new();
        for r in &records {
            let seen = match (&r.op, &r.outcome) {
                (Op::Get { .. }, Outcome::Get(Some(v))) => Some(v),
                (Op::Cas { expected: Some(e), .. }, _) => Some(e),
                _ => None,
            };
            if let Some(v) = seen {
                ids.entry(v.as_str()).or_insert_with(|| {
                    names.push(Some(v.clone()));
                    (names.len() - 1) as Val
                });
            }
        }
        let id = |v: &str| ids.get(v).copied().unwrap_or(UNOBSERVED);
        // When each value was first certainly observed: the earliest return of a read that returned it or
        // of a CAS that succeeded expecting it. Values are unique per write, so an indeterminate write whose
        // value was observed did take effect, before that return: it becomes a definite operation with
        // that return time (a finite window instead of an infinite one, and no "never" option).
        let mut observed_by: HashMap<&str, Time> = HashMap::new();
        for r in &records {
            let seen = match (&r.op, &r.outcome) {
                (Op::Get { .. }, Outcome::Get(Some(v))) => Some(v),
                (Op::Cas { expected: Some(e), .. }, Outcome::Cas(true)) => Some(e),
                _ => None,
            };
            if let Some(v) = seen {
                let t = observed_by.entry(v.as_str()).or_insert(Time::MAX);
                *t = (*t).min(r.ret);
            }
        }
        // The argument needs the value to have one writer: a history that reuses values keeps it off.
        let mut writers: HashMap<&str, usize> = HashMap::new();
        for r in &records {
            if let Some(v) = r.op.written() {
                *writers.entry(v).or_default() += 1;
            }
        }
        observed_by.retain(|v, _| writers.get(v) == Some(&1));
        let mut rets = Vec::with_capacity(records.len());
        let mut steps = Vec::with_capacity(records.len());
        let mut indeterminate = Vec::with_capacity(records.len());
        let mut class = Vec::with_capacity(records.len());
        let mut classes: HashMap<(u8, Val, Val), u32> = HashMap::new();
        for r in &records {
            let seen_at = r.op.written().and_then(|v| observed_by.get(v)).copied();
            let unknown = r.outcome == Outcome::Indeterminate && seen_at.is_none();
            rets.push(match seen_at {
                Some(t) if r.outcome == Outcome::Indeterminate => t,
                _ => r.ret,
            });
            let step = match (&r.op, &r.outcome) {
                (Op::Put { value, .. }, _) => Step::Put(id(value)),
                (Op::Get { .. }, Outcome::Get(v)) => Step::Get(v.as_deref().map_or(ABSENT, id)),
                (Op::Cas { expected, value, .. }, o) => Step::Cas {
                    expected: expected.as_deref().map_or(ABSENT, id),
                    value: id(value),
                    ok: match o {
                        Outcome::Cas(b) => Some(*b),
                        _ if seen_at.is_some() => Some(true),
                        _ => None,
                    },
                },
                (Op::Delete { .. }, Outcome::Delete(b)) => Step::Delete(Some(*b)),
                (Op::Delete { .. }, _) => Step::Delete(None),
                (Op::Get { .. }, _) => unreachable!("filtered above"),
            };
            let c = unknown.then(|| {
                let k = match step {
                    Step::Put(v) => (0, v, 0),
                    Step::Cas { expected, value, .. } => (1, expected, value),
                    Step::Delete(_) => (2, 0, 0),
                    Step::Get(_) => unreachable!("indeterminate reads are filtered"),
                };
                let n = classes.len() as u32;
                *classes.entry(k).or_insert(n)
            });
            steps.push(step);
            indeterminate.push(unknown);
            class.push(c);
        }
        // Entries in time order; an indeterminate operation returns at infinity. At equal times calls come
        // first, so that touching operations count as concurrent (the permissive reading).
        let mut events: Vec<(Time, u8, usize)> = Vec::with_capacity(records.len() * 2);
        for (i, r) in records.iter().enumerate() {
            events.push((r.call, 0, i));
            let ret = if indeterminate[i] { Time::MAX } else { rets[i].max(r.call) };
            events.push((ret, 1, i));
        }
        events.sort_unstable();
        let mut list = vec![Node {
            op: NIL,
            is_call: false,
            matching: NIL,
            prev: NIL,
            next: if events.is_empty() { NIL } else { 1 },
        }];
        let mut call_node = vec![NIL; records.len()];
        for (n, &(_, kind, op)) in events.iter().enumerate() {
            let idx = n + 1;
            let next = if n + 1 < events.len() { idx + 1 } else { NIL };
            list.push(Node { op, is_call: kind == 0, matching: NIL, prev: idx - 1, next });
            if kind == 0 {
                call_node[op] = idx;
            } else {
                list[call_node[op]].matching = idx;
            }
        }
        Search { key, records, steps, indeterminate, class, names, list }
    }

    /// The state after `op` from `state`, if the model allows the recorded outcome.
    fn step(&self, state: Val, op: usize) -> Option<Val> {
        match self.steps[op] {
            Step::Put(v) => Some(v),
            Step::Get(v) => (v == state).then_some(state),
            Step::Cas { expected, value, ok } => {
                let matches = expected == state;
                match ok {
                    Some(ok) if ok != matches => None,
                    _ => Some(if matches { value } else { state }),
                }
            }
            Step::Delete(existed) => match existed {
                Some(e) if e != (state != ABSENT) => None,
                _ => Some(ABSENT),
            },
        }
    }

    fn lift(&mut self, call: usize) {
        let ret = self.list[call].matching;
        for n in [call, ret] {
            let (p, x) = (self.list[n].prev, self.list[n].next);
            self.list[p].next = x;
            if x != NIL {
                self.list[x].prev = p;
            }
        }
    }

    fn unlift(&mut self, call: usize) {
        let ret = self.list[call].matching;
        for n in [ret, call] {
            let (p, x) = (self.list[n].prev, self.list[n].next);
            self.list[p].next = n;
            if x != NIL {
                self.list[x].prev = n;
            }
        }
    }

    /// Returns the number of configurations visited.
    fn run(mut self) -> Result<u64, Box<Violation>> {
        let n = self.records.len();
        let mut linearized = vec![0u64; n.div_ceil(64)];
        let mut cache: HashSet<(Vec<u64>, Val)> = HashSet::new();
        // (call node linearized, state before it, classes tried at its level)
        let mut stack: Vec<(usize, Val, Vec<u32>)> = Vec::new();
        let mut tried: Vec<u32> = Vec::new();
        let mut state = ABSENT;
        let mut entry = self.list[0].next;
        let mut best: (usize, Vec<(usize, Val)>, usize) = (0, Vec::new(), NIL);
        let mut visited = 0u64;
        loop {
            if entry == NIL {
                // Everything is linearized.
                return Ok(visited);
            }
            let node = &self.list[entry];
            let op = node.op;
            if node.is_call {
                if let Some(c) = self.class[op] {
                    if tried.contains(&c) {
                        entry = node.next;
                        continue;
                    }
                    tried.push(c);
                }
                let next = node.next;
                // An indeterminate operation that would not change the state is as good as never taking
                // effect, which stays possible later: trying it only consumes it.
                let step = self.step(state, op).filter(|&after| !(self.indeterminate[op] && after == state));
                if let Some(after) = step {
                    linearized[op / 64] |= 1 << (op % 64);
                    if cache.insert((linearized.clone(), after)) {
                        visited += 1;
                        if visited > BUDGET {
                            return Err(self.violation(true, &best));
                        }
                        stack.push((entry, state, std::mem::take(&mut tried)));
                        state = after;
                        self.lift(entry);
                        entry = self.list[0].next;
                        continue;
                    }
                    linearized[op / 64] &= !(1 << (op % 64));
                }
                entry = next;
            } else {
                if self.indeterminate[op] {
                    // Only operations that never have to take effect are left.
                    return Ok(visited);
                }
                if stack.len() >= best.0 {
                    // The linearization so far, with the state after each operation.
                    let seq = (0..stack.len())
                        .map(|i| {
                            let after = stack.get(i + 1).map_or(state, |s| s.1);
                            (self.list[stack[i].0].op, after)
                        })
                        .collect();
                    best = (stack.len(), seq, op);
                }
                let Some((call, before, t)) = stack.pop() else {
                    return Err(self.violation(false, &best));
                };
                let o = self.list[call].op;
                linearized[o / 64] &= !(1 << (o % 64));
                state = before;
                tried = t;
                self.unlift(call);
                entry = self.list[call].next;
            }
        }
    }

    fn violation(&self, inconclusive: bool, best: &(usize, Vec<(usize, Val)>, usize)) -> Box<Violation> {
        let (len, seq, blocked) = best;
        let keep = 12;
        let longest: Vec<(Record, Option<String>)> = seq
            .iter()
            .skip(seq.len().saturating_sub(keep))
            .map(|&(o, s)| (self.records[o].clone(), self.names[s as usize].clone()))
            .collect();
        let done: HashSet<usize> = seq.iter().map(|&(o, _)| o).collect();
        let blocked_rec = (*blocked != NIL).then(|| self.records[*blocked].clone());
        let pending = match &blocked_rec {
            Some(b) => self
                .records
                .iter()
                .enumerate()
                .filter(|(i, r)| {
                    !done.contains(i)
                        && *i != *blocked
                        && r.call <= b.ret
                        && (self.indeterminate[*i] || r.ret >= b.call)
                })
                .map(|(_, r)| (*r).clone())
                .take(20)
                .collect(),
            None => Vec::new(),
        };
        Box::new(Violation {
            key: self.key.to_owned(),
            inconclusive,
            longest,
            longest_len: *len,
            blocked: blocked_rec,
            pending,
        })
    }
}

// ------------------------------------------------------------------------------------------------------
// Watches

/// One event a watcher received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Event {
    pub(crate) revision: i64,
    pub(crate) key: String,
    /// `None` for a delete.
    pub(crate) value: Option<String>,
}

/// Everything one watcher received.
#[derive(Clone, Debug, Default)]
pub(crate) struct WatchLog {
    pub(crate) name: String,
    /// The first revision it watched (its first `start_revision`).
    pub(crate) from: i64,
    /// The last revision it is known to have covered (the harness waits for a final write to arrive).
    pub(crate) to: i64,
    /// Events in the order received (across reconnections, each resumed at the next revision).
    pub(crate) events: Vec<Event>,
    /// Explicit interruptions reported by the server (e.g. a resume refused as compacted): each one is a
    /// gap the watcher was told about; they are violations too.
    pub(crate) interruptions: Vec<String>,
}

/// What a successful watch check covered.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct WatchStats {
    pub(crate) watchers: usize,
    pub(crate) revisions: usize,
    pub(crate) events: usize,
}

/// The most violations reported in one check (the first ones matter most).
const MAX_REPORTED: usize = 40;

/// Checks watcher logs against each other, the history (`keys` all absent before the first revision any
/// watcher covers) and each node's final state of `keys` (`(node name, key -> value)`):
/// - each watcher's events come in increasing (revision, key) order, within what it covered;
/// - all watchers agree on the events of every revision (one committed order), and none misses a
///   revision of that order between its `from` and its `to` (no gaps);
/// - every event is explained by a write that was acknowledged or indeterminate, at the revision it was
///   acknowledged at, and appears once (nothing uncommitted, nothing duplicated);
/// - every acknowledged write within the covered revisions is in that order;
/// - replaying that order gives every node's final state.
pub(crate) fn check_watches(
    logs: &[WatchLog],
    history: &[Record],
    keys: &[String],
    finals: &[(String, BTreeMap<String, String>)],
) -> Result<WatchStats, Vec<String>> {
    let mut v: Vec<String> = Vec::new();
    let key_set: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
    // Per watcher: order and range.
    for log in logs {
        for s in &log.interruptions {
            v.push(format!("{}: interrupted: {s}", log.name));
        }
        for w in log.events.windows(2) {
            if (w[1].revision, &w[1].key) <= (w[0].revision, &w[0].key) {
                v.push(format!("{}: out of order: {:?} received after {:?}", log.name, w[1], w[0]));
            }
        }
        for e in &log.events {
            if e.revision < log.from || e.revision > log.to {
                v.push(format!("{}: event {e:?} outside its range {}..={}", log.name, log.from, log.to));
            }
        }
    }
    // The committed order: the union of all watchers, which must agree.
    let mut order: BTreeMap<i64, BTreeMap<&str, (&Option<String>, &str)>> = BTreeMap::new();
    for log in logs {
        for e in &log.events {
            let at = order.entry(e.revision).or_default();
            match at.get(e.key.as_str()) {
                Some((val, who)) if *val != &e.value => v.push(format!(
                    "watchers disagree at revision {} on {}: {who} saw {:?}, {} saw {:?}",
                    e.revision, e.key, val, log.name, e.value
                )),
                Some(_) => {}
                None => {
                    at.insert(e.key.as_str(), (&e.value, log.name.as_str()));
                }
            }
        }
    }
    // No gaps: each watcher has every revision of the order within its range, with the same events (a
    // revision it has with other events than another watcher is reported once, with everyone's view).
    let mut views: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for log in logs {
        let mut mine: BTreeMap<i64, BTreeMap<&str, &Option<String>>> = BTreeMap::new();
        for e in &log.events {
            mine.entry(e.revision).or_default().insert(e.key.as_str(), &e.value);
        }
        let mut missed = Vec::new();
        for (rev, at) in order.range(log.from..=log.to) {
            match mine.get(rev) {
                None => {
                    let what: Vec<String> =
                        at.iter().map(|(k, (val, who))| format!("{k}={val:?} (seen by {who})")).collect();
                    missed.push(format!("rev {rev} {}", what.join(", ")));
                }
                Some(m) if m.len() != at.len() => {
                    views.entry(*rev).or_default().push(format!("{} saw {m:?}", log.name));
                }
                Some(_) => {}
            }
        }
        if !missed.is_empty() {
            let n = missed.len();
            missed.truncate(8);
            v.push(format!(
                "{}: missed {n} revision(s) within {}..={}: {}{}",
                log.name,
                log.from,
                log.to,
                missed.join("; "),
                if n > 8 { "; ..." } else { "" }
            ));
        }
    }
    for (rev, mut seen) in views {
        let union: Vec<String> =
            order[&rev].iter().map(|(k, (val, who))| format!("{k}={val:?} (seen by {who})")).collect();
        seen.sort();
        v.push(format!(
            "watchers disagree on the events of revision {rev}: {}; all events seen at that revision: {}",
            seen.join(", "),
            union.join(", ")
        ));
    }
    // Explanation by the history. Written values are unique per key by construction of the workload.
    let mut writer: HashMap<(&str, &str), &Record> = HashMap::new();
    let mut written_to: HashMap<&str, &Record> = HashMap::new();
    for r in history {
        if let Some(val) = r.op.written() {
            if let Some(other) = writer.insert((r.op.key(), val), r) {
                v.push(format!("harness error: value {val:?} written twice: {other} and {r}"));
            }
            written_to.insert(val, r);
        }
    }
    let mut seen_values: HashMap<(&str, &str), i64> = HashMap::new();
    for (rev, at) in &order {
        for (k, (val, _)) in at {
            if !key_set.contains(k) {
                continue;
            }
            match val {
                Some(val) => {
                    if let Some(first) = seen_values.insert((k, val), *rev) {
                        v.push(format!("value {val:?} of {k} committed twice: revisions {first} and {rev}"));
                    }
                    match writer.get(&(*k, val.as_str())) {
                        None => match written_to.get(val.as_str()) {
                            Some(w) => v.push(format!(
                                "rev {rev}: {k}={val:?} but that value was written to another key: {w}"
                            )),
                            None => v.push(format!("rev {rev}: {k}={val:?} was never written by anyone")),
                        },
                        Some(w) => match (&w.outcome, w.revision) {
                            (Outcome::Cas(false), _) => v.push(format!(
                                "rev {rev}: {k}={val:?} was written by a CAS that failed: {w}"
                            )),
                            (Outcome::Put | Outcome::Cas(true), Some(r)) if r != *rev => v.push(format!(
                                "rev {rev}: {k}={val:?} but the write was acknowledged at revision {r}: {w}"
                            )),
                            _ => {}
                        },
                    }
                }
                None => {
                    let explained = history.iter().any(|r| {
                        matches!(r.op, Op::Delete { .. })
                            && r.op.key() == *k
                            && match r.outcome {
                                Outcome::Delete(true) => r.revision == Some(*rev),
                                Outcome::Indeterminate => true,
                                _ => false,
                            }
                    });
                    if !explained {
                        v.push(format!(
                            "rev {rev}: delete of {k} explained by no acknowledged (at that revision) or \
                             indeterminate delete"
                        ));
                    }
                }
            }
        }
    }
    // Every acknowledged write inside the covered revisions is in the order.
    let from = logs.iter().map(|l| l.from).min().unwrap_or(0);
    let to = logs.iter().map(|l| l.to).max().unwrap_or(-1);
    for r in history {
        let Some(rev) = r.revision else { continue };
        if !r.op.is_write() || rev < from || rev > to {
            continue;
        }
        let ack = match r.outcome {
            Outcome::Put | Outcome::Cas(true) => Some(r.op.written().map(str::to_owned)),
            Outcome::Delete(true) => Some(None),
            _ => None,
        };
        let Some(expect) = ack else { continue };
        match order.get(&rev).and_then(|at| at.get(r.op.key())) {
            Some((val, _)) if **val == expect => {}
            Some((val, who)) => {
                v.push(format!("acknowledged {r} but {who} saw {}={val:?} at that revision", r.op.key()))
            }
            None => v.push(format!("acknowledged {r} is missing from every watcher")),
        }
    }
    // Replaying the order gives the final state of every node.
    let mut replay: BTreeMap<&str, &str> = BTreeMap::new();
    for at in order.values() {
        for (k, (val, _)) in at {
            if !key_set.contains(k) {
                continue;
            }
            match val {
                Some(val) => replay.insert(k, val.as_str()),
                None => replay.remove(k),
            };
        }
    }
    for (node, state) in finals {
        for k in &key_set {
            let have = state.get(*k).map(String::as_str);
            let want = replay.get(k).copied();
            if have != want {
                let last = order.iter().rev().find_map(|(r, at)| at.get(k).map(|_| *r));
                v.push(format!(
                    "{node} holds {k}={have:?} at the end, but the watched order ends with {k}={want:?} \
                     (last change at revision {last:?})"
                ));
            }
        }
    }
    if v.is_empty() {
        Ok(WatchStats {
            watchers: logs.len(),
            revisions: order.len(),
            events: logs.iter().map(|l| l.events.len()).sum(),
        })
    } else {
        let n = v.len();
        v.truncate(MAX_REPORTED);
        if n > MAX_REPORTED {
            v.push(format!("... and {} more", n - MAX_REPORTED));
        }
        Err(v)
    }
}

#[cfg(test)]
mod tests {
    //! Small hand-made histories with a known verdict.
    use super::*;

    /// A compact history builder: times are in "ticks" (1 ms).
    struct H(Vec<Record>);

    const T: Time = 1_000_000;

    impl H {
        fn new() -> Self {
            H(Vec::new())
        }
        fn add(mut self, client: usize, call: u64, ret: u64, op: Op, outcome: Outcome) -> Self {
            self.0.push(Record {
                client,
                op,
                call: call * T,
                ret: ret * T,
                outcome,
                revision: None,
                note: String::new(),
            });
            self
        }
        fn put(self, c: usize, a: u64, b: u64, v: &str) -> Self {
            self.add(c, a, b, Op::Put { key: "k".into(), value: v.into() }, Outcome::Put)
        }
        fn put_unknown(self, c: usize, a: u64, b: u64, v: &str) -> Self {
            self.add(c, a, b, Op::Put { key: "k".into(), value: v.into() }, Outcome::Indeterminate)
        }
        fn get(self, c: usize, a: u64, b: u64, v: Option<&str>) -> Self {
            self.add(c, a, b, Op::Get { key: "k".into() }, Outcome::Get(v.map(Into::into)))
        }
        fn cas(self, c: usize, a: u64, b: u64, e: Option<&str>, v: &str, ok: bool) -> Self {
            let op = Op::Cas { key: "k".into(), expected: e.map(Into::into), value: v.into() };
            self.add(c, a, b, op, Outcome::Cas(ok))
        }
        fn del(self, c: usize, a: u64, b: u64, existed: bool) -> Self {
            self.add(c, a, b, Op::Delete { key: "k".into() }, Outcome::Delete(existed))
        }
        fn ok(&self) -> bool {
            check_linearizable(&self.0).is_ok()
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = H::new()
            .get(0, 0, 1, None)
            .put(0, 2, 3, "a")
            .get(1, 4, 5, Some("a"))
            .cas(0, 6, 7, Some("a"), "b", true)
            .cas(1, 8, 9, Some("a"), "c", false)
            .get(1, 10, 11, Some("b"))
            .del(0, 12, 13, true)
            .del(0, 14, 15, false)
            .cas(1, 16, 17, None, "d", true)
            .get(0, 18, 19, Some("d"));
        assert!(h.ok());
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // put(a) and put(b) overlap: a read after both may see either, and a read overlapping both may see
        // the old value.
        let base = || H::new().put(0, 0, 10, "a").put(1, 1, 9, "b").get(2, 2, 3, None);
        assert!(base().get(2, 11, 12, Some("a")).ok());
        assert!(base().get(2, 11, 12, Some("b")).ok());
        // ...but two later reads cannot go back and forth.
        assert!(!base().get(2, 11, 12, Some("a")).get(2, 13, 14, Some("b")).ok());
    }

    #[test]
    fn stale_read_is_rejected() {
        // b is acknowledged before the read starts: reading a is stale.
        let h = H::new().put(0, 0, 1, "a").put(0, 2, 3, "b").get(1, 4, 5, Some("a"));
        assert!(!h.ok());
        let v = check_linearizable(&h.0).unwrap_err();
        assert_eq!(v.len(), 1);
        let text = v[0].to_string();
        assert!(text.contains("cannot be linearized next") && text.contains("get(k)"), "{text}");
        // Overlapping the second put, the same read is fine.
        assert!(H::new().put(0, 0, 1, "a").put(0, 2, 6, "b").get(1, 4, 5, Some("a")).ok());
    }

    #[test]
    fn lost_write_is_rejected() {
        // An acknowledged put that a later read does not see (and nobody overwrote).
        assert!(!H::new().put(0, 0, 1, "a").get(1, 2, 3, None).ok());
        // An acknowledged put after which the key reads as an older value.
        assert!(!H::new()
            .put(0, 0, 1, "a")
            .put(1, 2, 3, "b")
            .get(0, 4, 5, Some("a"))
            .get(1, 6, 7, Some("b"))
            .ok());
    }

    #[test]
    fn failed_cas_must_have_seen_another_value() {
        // The key holds a, nothing else is going on: cas(a -> b) cannot fail.
        assert!(!H::new().put(0, 0, 1, "a").cas(1, 2, 3, Some("a"), "b", false).ok());
        // cas(∅ -> b) on an existing key fails; on an absent key it cannot fail.
        assert!(H::new().put(0, 0, 1, "a").cas(1, 2, 3, None, "b", false).ok());
        assert!(!H::new().cas(1, 2, 3, None, "b", false).ok());
        // With a concurrent put of c, the failure is explained (the CAS saw c)...
        assert!(H::new().put(0, 0, 1, "a").put(2, 2, 5, "c").cas(1, 3, 4, Some("a"), "b", false).ok());
        // ...even when nobody ever reads c, and even when c's put is indeterminate.
        assert!(H::new()
            .put(0, 0, 1, "a")
            .put_unknown(2, 2, 5, "c")
            .cas(1, 3, 4, Some("a"), "b", false)
            .ok());
        // A succeeded CAS must have seen its expected value.
        assert!(!H::new().put(0, 0, 1, "a").cas(1, 2, 3, Some("x"), "b", true).ok());
    }

    #[test]
    fn indeterminate_write_seen_later_is_accepted() {
        // The put timed out, yet a much later read sees it: it took effect.
        let h = H::new().put(0, 0, 1, "a").put_unknown(1, 2, 3, "b").get(0, 100, 101, Some("b"));
        assert!(h.ok());
        // But not before it was invoked.
        let h = H::new().put(0, 0, 1, "a").get(0, 2, 3, Some("b")).put_unknown(1, 10, 11, "b");
        assert!(!h.ok());
        // Once seen, it cannot be un-applied: a read back to the older value after that is a violation.
        let h = H::new().put(0, 0, 1, "a").put_unknown(1, 2, 3, "b").get(0, 100, 101, Some("b")).get(
            0,
            102,
            103,
            Some("a"),
        );
        assert!(!h.ok());
    }

    #[test]
    fn indeterminate_write_never_seen_is_accepted() {
        let h = H::new().put(0, 0, 1, "a").put_unknown(1, 2, 3, "b").get(0, 4, 5, Some("a")).get(
            0,
            50,
            51,
            Some("a"),
        );
        assert!(h.ok());
        // An indeterminate delete and CAS likewise.
        let h = H::new()
            .put(0, 0, 1, "a")
            .add(1, 2, 3, Op::Delete { key: "k".into() }, Outcome::Indeterminate)
            .add(
                2,
                2,
                3,
                Op::Cas { key: "k".into(), expected: Some("a".into()), value: "z".into() },
                Outcome::Indeterminate,
            )
            .get(0, 10, 11, Some("a"));
        assert!(h.ok());
        // An indeterminate read says nothing.
        let h = H::new().put(0, 0, 1, "a").add(1, 2, 3, Op::Get { key: "k".into() }, Outcome::Indeterminate);
        assert!(h.ok());
    }

    #[test]
    fn values_from_nowhere_are_rejected() {
        assert!(!H::new().put(0, 0, 1, "a").get(1, 2, 3, Some("zzz")).ok());
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut h = H::new().put(0, 0, 1, "a").get(1, 2, 3, Some("a"));
        h.0.push(Record {
            client: 2,
            op: Op::Get { key: "other".into() },
            call: 5 * T,
            ret: 6 * T,
            outcome: Outcome::Get(Some("a".into())),
            revision: None,
            note: String::new(),
        });
        let v = check_linearizable(&h.0).unwrap_err();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].key, "other");
    }

    #[test]
    fn many_pending_indeterminate_writes_stay_cheap() {
        // 300 writes that timed out and were never seen, interleaved with reads of the real value and
        // failed CASes: exponential without the reductions, a few thousand configurations with them.
        let mut h = H::new().put(0, 0, 1, "a");
        for i in 0..300u64 {
            h = h.put_unknown(1 + (i % 5) as usize, 2 + i, 3 + i, &format!("lost{i}"));
            h = h.get(9, 2 + i, 3 + i, Some("a"));
        }
        let h = h.cas(8, 400, 401, Some("a"), "b", false).get(9, 402, 403, Some("lost7"));
        let stats = check_linearizable(&h.0).unwrap();
        assert!(stats.configurations < 100_000, "{stats:?}");
        // The same with a real violation at the end is found just as fast.
        let bad = H(h.0.clone()).get(9, 500, 501, Some("a")).get(9, 502, 503, Some("lost7"));
        let t = std::time::Instant::now();
        let v = check_linearizable(&bad.0).unwrap_err();
        assert!(!v[0].inconclusive, "{}", v[0]);
        assert!(t.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn concurrent_clients_random_sequential_histories_are_accepted() {
        // Histories produced by executing operations atomically at a random point inside their interval
        // are linearizable by construction; some answers are then dropped (indeterminate).
        use rand::{Rng, SeedableRng};
        for seed in 0..30u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut state: Option<String> = None;
            let mut open: Vec<(usize, Time, Op)> = Vec::new();
            let mut recs = Vec::new();
            let mut t: Time = 0;
            let mut n = 0;
            while n < 200 {
                t += rng.random_range(1..5);
                let client = rng.random_range(0..4);
                open.retain(|o| o.1 > t);
                if open.iter().any(|o| o.0 == client) {
                    continue;
                }
                n += 1;
                let key = "k".to_owned();
                let value = format!("v{n}");
                let op = match rng.random_range(0..4) {
                    0 => Op::Put { key, value },
                    1 => Op::Get { key },
                    2 => Op::Cas {
                        key,
                        expected: if rng.random_bool(0.5) {
                            state.clone()
                        } else {
                            Some(format!("v{}", n / 2))
                        },
                        value,
                    },
                    _ => Op::Delete { key },
                };
                // Takes effect now (its linearization point); returns later.
                let outcome = match &op {
                    Op::Put { value, .. } => {
                        state = Some(value.clone());
                        Outcome::Put
                    }
                    Op::Get { .. } => Outcome::Get(state.clone()),
                    Op::Cas { expected, value, .. } => {
                        let ok = *expected == state;
                        if ok {
                            state = Some(value.clone());
                        }
                        Outcome::Cas(ok)
                    }
                    Op::Delete { .. } => Outcome::Delete(state.take().is_some()),
                };
                let call = t - rng.random_range(0..4).min(t);
                let ret = t + rng.random_range(0..6);
                let outcome = if rng.random_bool(0.1) { Outcome::Indeterminate } else { outcome };
                recs.push(Record {
                    client,
                    op: op.clone(),
                    call,
                    ret,
                    outcome,
                    revision: None,
                    note: String::new(),
                });
                open.push((client, ret, op));
            }
            if let Err(v) = check_linearizable(&recs) {
                panic!("seed {seed}: {}", v[0]);
            }
        }
    }

    /// The definition, by brute force: some order of the operations that respects real time, where
    /// each definite operation's outcome is what the model gives, and indeterminate ones are included or
    /// not.
    fn brute_force(recs: &[Record]) -> bool {
        let ops: Vec<&Record> = recs
            .iter()
            .filter(|r| !(matches!(r.op, Op::Get { .. }) && r.outcome == Outcome::Indeterminate))
            .collect();
        fn go(ops: &[&Record], done: &mut Vec<bool>, state: Option<String>) -> bool {
            let definite = |i: usize| ops[i].outcome != Outcome::Indeterminate;
            let Some(deadline) =
                (0..ops.len()).filter(|&i| !done[i] && definite(i)).map(|i| ops[i].ret).min()
            else {
                return true;
            };
            for i in 0..ops.len() {
                if done[i] || ops[i].call > deadline {
                    continue;
                }
                let r = ops[i];
                let next = match (&r.op, &r.outcome) {
                    (Op::Put { value, .. }, _) => Some(Some(value.clone())),
                    (Op::Get { .. }, Outcome::Get(v)) => (*v == state).then(|| state.clone()),
                    (Op::Cas { expected, value, .. }, o) => {
                        let m = *expected == state;
                        let after = if m { Some(value.clone()) } else { state.clone() };
                        match o {
                            Outcome::Cas(ok) if *ok != m => None,
                            _ => Some(after),
                        }
                    }
                    (Op::Delete { .. }, Outcome::Delete(d)) => (*d == state.is_some()).then_some(None),
                    (Op::Delete { .. }, _) => Some(None),
                    (Op::Get { .. }, _) => unreachable!(),
                };
                if let Some(next) = next {
                    done[i] = true;
                    let ok = go(ops, done, next);
                    done[i] = false;
                    if ok {
                        return true;
                    }
                }
            }
            false
        }
        go(&ops, &mut vec![false; ops.len()], None)
    }

    #[test]
    fn verdicts_match_brute_force_on_small_random_histories() {
        // Random (mostly invalid) histories of up to 8 operations, with unique written values (as the
        // workload writes them) and with reused ones: the search and the definition agree on every one.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (mut valid, mut invalid) = (0, 0);
        for case in 0..20_000 {
            let unique = case % 2 == 0;
            let n = rng.random_range(1..=8);
            let mut recs: Vec<Record> = Vec::new();
            for i in 0..n {
                let call: Time = rng.random_range(0..10);
                let ret = call + rng.random_range(0..6);
                let fresh =
                    if unique { format!("w{i}") } else { ["a", "b"][rng.random_range(0..2)].to_owned() };
                let some_value = |rng: &mut rand::rngs::StdRng| -> Option<String> {
                    match rng.random_range(0..4) {
                        0 => None,
                        1 => Some("a".into()),
                        _ => Some(format!("w{}", rng.random_range(0..n))),
                    }
                };
                let key = "k".to_owned();
                let (op, outcome) = match rng.random_range(0..4) {
                    0 => (Op::Put { key, value: fresh }, Outcome::Put),
                    1 => {
                        let v = some_value(&mut rng);
                        (Op::Get { key }, Outcome::Get(v))
                    }
                    2 => {
                        let expected = some_value(&mut rng);
                        (Op::Cas { key, expected, value: fresh }, Outcome::Cas(rng.random_bool(0.5)))
                    }
                    _ => (Op::Delete { key }, Outcome::Delete(rng.random_bool(0.5))),
                };
                let outcome = if rng.random_bool(0.25) { Outcome::Indeterminate } else { outcome };
                recs.push(Record { client: i, op, call, ret, outcome, revision: None, note: String::new() });
            }
            let want = brute_force(&recs);
            let got = check_linearizable(&recs).is_ok();
            assert_eq!(got, want, "case {case}: {recs:#?}");
            if want {
                valid += 1;
            } else {
                invalid += 1;
            }
        }
        // Both verdicts were exercised plenty.
        assert!(valid > 2000 && invalid > 2000, "{valid} valid, {invalid} invalid");
    }

    fn ev(revision: i64, key: &str, value: Option<&str>) -> Event {
        Event { revision, key: key.into(), value: value.map(Into::into) }
    }

    fn rec(op: Op, outcome: Outcome, revision: Option<i64>) -> Record {
        Record { client: 0, op, call: 0, ret: 1, outcome, revision, note: String::new() }
    }

    fn put(k: &str, v: &str, rev: i64) -> Record {
        rec(Op::Put { key: k.into(), value: v.into() }, Outcome::Put, Some(rev))
    }

    /// Three writes committed at revisions 5, 6, 7 (x=a, y=b, x deleted), plus one indeterminate put
    /// that was committed at 8 and one failed CAS.
    fn watch_case() -> (Vec<Record>, Vec<Event>, Vec<String>) {
        let history = vec![
            put("x", "a", 5),
            put("y", "b", 6),
            rec(Op::Delete { key: "x".into() }, Outcome::Delete(true), Some(7)),
            rec(Op::Put { key: "y".into(), value: "c".into() }, Outcome::Indeterminate, None),
            rec(
                Op::Cas { key: "y".into(), expected: Some("zz".into()), value: "d".into() },
                Outcome::Cas(false),
                None,
            ),
            rec(Op::Put { key: "y".into(), value: "never".into() }, Outcome::Indeterminate, None),
        ];
        let events =
            vec![ev(5, "x", Some("a")), ev(6, "y", Some("b")), ev(7, "x", None), ev(8, "y", Some("c"))];
        (history, events, vec!["x".into(), "y".into()])
    }

    fn log(name: &str, from: i64, to: i64, events: Vec<Event>) -> WatchLog {
        WatchLog { name: name.into(), from, to, events, interruptions: Vec::new() }
    }

    fn finals(y: &str) -> Vec<(String, BTreeMap<String, String>)> {
        (1..=3).map(|i| (format!("n{i}"), BTreeMap::from([("y".to_owned(), y.to_owned())]))).collect()
    }

    #[test]
    fn consistent_watchers_pass() {
        let (h, e, keys) = watch_case();
        let logs =
            vec![log("w1", 5, 8, e.clone()), log("w2", 5, 8, e.clone()), log("w3", 7, 8, e[2..].to_vec())];
        let s = check_watches(&logs, &h, &keys, &finals("c")).unwrap();
        assert_eq!((s.watchers, s.revisions, s.events), (3, 4, 10));
    }

    #[test]
    fn values_need_only_be_unique_per_key() {
        // The long run's clients start their sequence again on each round's fresh keys.
        let (mut h, mut e, mut keys) = watch_case();
        h.push(put("z", "a", 9));
        e.push(ev(9, "z", Some("a")));
        keys.push("z".into());
        let mut f = finals("c");
        for (_, state) in &mut f {
            state.insert("z".into(), "a".into());
        }
        check_watches(&[log("w1", 5, 9, e)], &h, &keys, &f).unwrap();
    }

    #[test]
    fn watch_gap_is_found() {
        let (h, e, keys) = watch_case();
        let mut missing = e.clone();
        missing.remove(1);
        let logs = vec![log("w1", 5, 8, e.clone()), log("w2", 5, 8, missing)];
        let v = check_watches(&logs, &h, &keys, &finals("c")).unwrap_err();
        assert!(v.iter().any(|s| s.starts_with("w2: missed 1 revision") && s.contains("rev 6")), "{v:#?}");
        // An explicit interruption counts too.
        let mut l = log("w1", 5, 8, e);
        l.interruptions.push("resume at 6 refused: compacted".into());
        assert!(check_watches(&[l], &h, &keys, &finals("c")).is_err());
    }

    #[test]
    fn watchers_disagreeing_on_order_are_found() {
        let (h, e, keys) = watch_case();
        let mut swapped = e.clone();
        swapped[2] = ev(7, "x", Some("a"));
        let logs = vec![log("w1", 5, 8, e), log("w2", 5, 8, swapped)];
        let v = check_watches(&logs, &h, &keys, &finals("c")).unwrap_err();
        assert!(v.iter().any(|s| s.contains("watchers disagree at revision 7")), "{v:#?}");
        // One watcher has an extra event at a revision the others saw with one event (a made-up delete
        // stamped with that revision).
        let (mut h, e, keys) = watch_case();
        h.push(rec(Op::Delete { key: "x".into() }, Outcome::Indeterminate, None));
        let mut extra = e.clone();
        extra.push(ev(8, "x", None));
        let logs = vec![log("w1", 5, 8, e), log("w2", 5, 8, extra)];
        let v = check_watches(&logs, &h, &keys, &finals("c")).unwrap_err();
        assert!(
            v.iter().any(|s| s.starts_with("watchers disagree on the events of revision 8: w1 saw")),
            "{v:#?}"
        );
        // Revisions going backwards within one watcher.
        let (h, mut e, keys) = watch_case();
        e.swap(0, 1);
        let v = check_watches(&[log("w1", 5, 8, e)], &h, &keys, &finals("c")).unwrap_err();
        assert!(v.iter().any(|s| s.contains("out of order")), "{v:#?}");
    }

    #[test]
    fn uncommitted_events_are_found() {
        // A value nobody wrote.
        let (h, mut e, keys) = watch_case();
        e.push(ev(9, "y", Some("ghost")));
        let v = check_watches(&[log("w1", 5, 9, e)], &h, &keys, &finals("ghost")).unwrap_err();
        assert!(v.iter().any(|s| s.contains("never written")), "{v:#?}");
        // The new value of a CAS that failed.
        let (h, mut e, keys) = watch_case();
        e.push(ev(9, "y", Some("d")));
        let v = check_watches(&[log("w1", 5, 9, e)], &h, &keys, &finals("d")).unwrap_err();
        assert!(v.iter().any(|s| s.contains("CAS that failed")), "{v:#?}");
        // An indeterminate write shown to a watcher but absent from the final state (rolled back): the
        // nodes still hold b.
        let (h, e, keys) = watch_case();
        let v = check_watches(&[log("w1", 5, 8, e)], &h, &keys, &finals("b")).unwrap_err();
        assert!(v.iter().any(|s| s.contains("n1 holds y=Some(\"b\")")), "{v:#?}");
        // The same value committed twice.
        let (h, mut e, keys) = watch_case();
        e.push(ev(9, "y", Some("c")));
        let v = check_watches(&[log("w1", 5, 9, e)], &h, &keys, &finals("c")).unwrap_err();
        assert!(v.iter().any(|s| s.contains("committed twice")), "{v:#?}");
    }

    #[test]
    fn acknowledged_writes_missing_or_misplaced_are_found() {
        let (h, e, keys) = watch_case();
        // The put of b acknowledged at 6 but nobody saw revision 6.
        let mut without = e.clone();
        without.remove(1);
        let v = check_watches(&[log("w1", 5, 8, without)], &h, &keys, &finals("c")).unwrap_err();
        assert!(v.iter().any(|s| s.contains("missing from every watcher")), "{v:#?}");
        // Seen at another revision than acknowledged.
        let moved =
            vec![ev(5, "x", Some("a")), ev(7, "x", None), ev(8, "y", Some("b")), ev(9, "y", Some("c"))];
        let v = check_watches(&[log("w1", 5, 9, moved)], &h, &keys, &finals("c")).unwrap_err();
        assert!(v.iter().any(|s| s.contains("acknowledged at revision 6")), "{v:#?}");
    }
}
