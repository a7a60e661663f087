//! What runs against the cluster while faults happen: concurrent clients doing put / get / CAS / delete
//! on a few keys through random nodes over the HTTP JSON API, recording every operation for the
//! linearizability checker; websocket watchers, one per node, recording every event they receive; and
//! the final collection (a fence write every watcher must reach, each node's local state, linearizable
//! final reads) that [`finish`] checks.
//!
//! How answers are classified (the write cases are what makes the history honest):
//! - 200: a definite outcome (with the revision of a write that changed something);
//! - connection refused: the request never left, the operation did not happen (not recorded);
//! - 503, 502, a timeout or a broken connection: a write is indeterminate (it may have taken effect); a
//!   read tells nothing and is dropped;
//! - any other status: indeterminate too, and listed as unexpected (the scenario fails on it).

use crate::checker::{self, Event, Op, Outcome, Record, Time, WatchLog};
use crate::cluster::Cluster;
use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Longer than any server-side wait (quorum 1.5 s, forward 1 s, replication 1 s) on the normal path, so
/// that a timeout means trouble, not a slow answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

/// Every key of a run lives under this prefix, which the watchers watch.
pub(crate) const PREFIX: &str = "/cf/";

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(v: &Value) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(v.as_str()?).ok()?;
    String::from_utf8(bytes).ok()
}

/// The shared record of a run: the history, plus counters the scenarios wait on.
pub(crate) struct Recorder {
    origin: std::time::Instant,
    history: Mutex<Vec<Record>>,
    /// Writes answered 200 (the cluster made progress).
    pub(crate) writes_ok: AtomicU64,
    /// Answers by kind (`put 200`, `get 503 Quorum not available`, `cas timeout`...), for the report.
    counts: Mutex<BTreeMap<String, u64>>,
    unexpected: Mutex<Vec<String>>,
}

impl Recorder {
    pub(crate) fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            origin: std::time::Instant::now(),
            history: Mutex::new(Vec::new()),
            writes_ok: AtomicU64::new(0),
            counts: Mutex::new(BTreeMap::new()),
            unexpected: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn now(&self) -> Time {
        self.origin.elapsed().as_nanos() as Time
    }

    fn count(&self, what: String) {
        *self.counts.lock().unwrap().entry(what).or_default() += 1;
    }

    pub(crate) fn history(&self) -> Vec<Record> {
        self.history.lock().unwrap().clone()
    }

    /// Answers by kind, one line.
    pub(crate) fn summary(&self) -> String {
        let counts = self.counts.lock().unwrap();
        counts.iter().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", ")
    }

    /// Runs `op` against node `node` (at `url`) and records it as client `client`. Returns the outcome
    /// (`None` if the request never reached the node).
    pub(crate) async fn run(
        &self,
        http: &reqwest::Client,
        client: usize,
        node: usize,
        url: &str,
        op: Op,
    ) -> Option<Outcome> {
        let (path, body) = request(&op);
        let kind = match op {
            Op::Put { .. } => "put",
            Op::Get { .. } => "get",
            Op::Cas { .. } => "cas",
            Op::Delete { .. } => "delete",
        };
        let call = self.now();
        let answer = http
            .post(format!("{url}{path}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        let answer = match answer {
            Ok(r) => {
                let status = r.status().as_u16();
                r.text().await.map(|t| (status, t))
            }
            Err(e) => Err(e),
        };
        let ret = self.now();
        let node_name = format!("n{}", node + 1);
        let (outcome, revision, note) = match answer {
            Err(e) if e.is_connect() => {
                self.count(format!("{kind} refused"));
                return None;
            }
            Err(e) => {
                let what = if e.is_timeout() { "timeout".to_owned() } else { format!("error {e}") };
                self.count(format!("{kind} {}", if e.is_timeout() { "timeout" } else { "error" }));
                (Outcome::Indeterminate, None, format!("{node_name} {what}"))
            }
            Ok((200, text)) => {
                let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
                    panic!("{path} {body} -> 200 with a body that is not JSON ({e}): {text}")
                });
                self.count(format!("{kind} 200"));
                let (o, rev) =
                    parse(&op, &v).unwrap_or_else(|| panic!("{path} {body} -> unexpected 200 body {text}"));
                if op.written().is_some() || matches!(op, Op::Delete { .. }) {
                    self.writes_ok.fetch_add(1, Ordering::Relaxed);
                }
                (o, rev, node_name)
            }
            Ok((status, text)) => {
                let text = text.trim().to_owned();
                if !matches!(status, 502 | 503) {
                    self.unexpected
                        .lock()
                        .unwrap()
                        .push(format!("{node_name} {path} {body} -> {status} {text}"));
                }
                self.count(format!("{kind} {status} {text}"));
                (Outcome::Indeterminate, None, format!("{node_name} {status} {text}"))
            }
        };
        if matches!(op, Op::Get { .. }) && outcome == Outcome::Indeterminate {
            // A read without an answer tells nothing.
            return Some(outcome);
        }
        self.history.lock().unwrap().push(Record {
            client,
            op,
            call,
            ret,
            outcome: outcome.clone(),
            revision,
            note,
        });
        Some(outcome)
    }

    /// Statuses other than 200 / 502 / 503 (each one fails the scenario).
    pub(crate) fn unexpected(&self) -> Vec<String> {
        self.unexpected.lock().unwrap().clone()
    }
}

/// The HTTP request for an operation.
fn request(op: &Op) -> (&'static str, Value) {
    match op {
        Op::Put { key, value } => ("/v3/kv/put", json!({"key": b64(key), "value": b64(value)})),
        Op::Get { key } => ("/v3/kv/range", json!({"key": b64(key)})),
        Op::Delete { key } => ("/v3/kv/deleterange", json!({"key": b64(key)})),
        Op::Cas { key, expected, value } => {
            // Absent is "mod revision 0" (etcd's idiom); present is a VALUE compare.
            let compare = match expected {
                Some(e) => json!({"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(e)}),
                None => json!({"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": 0}),
            };
            let body = json!({
                "compare": [compare],
                "success": [{"request_put": {"key": b64(key), "value": b64(value)}}],
            });
            ("/v3/kv/txn", body)
        }
    }
}

/// A 200 answer as an outcome (and the revision of a write that changed something).
fn parse(op: &Op, v: &Value) -> Option<(Outcome, Option<i64>)> {
    let rev = v["header"]["revision"].as_i64();
    Some(match op {
        Op::Put { .. } => (Outcome::Put, Some(rev?)),
        Op::Get { key } => {
            let kvs = v["kvs"].as_array()?;
            let value = match &kvs[..] {
                [] => None,
                [kv] if unb64(&kv["key"]).as_deref() == Some(key) => Some(unb64(&kv["value"])?),
                _ => return None,
            };
            (Outcome::Get(value), None)
        }
        Op::Cas { .. } => {
            let ok = v["succeeded"].as_bool()?;
            (Outcome::Cas(ok), if ok { Some(rev?) } else { None })
        }
        Op::Delete { .. } => {
            let n = match &v["deleted"] {
                Value::String(s) => s.parse::<i64>().ok()?,
                other => other.as_i64()?,
            };
            (Outcome::Delete(n > 0), if n > 0 { Some(rev?) } else { None })
        }
    })
}

/// The clients of a run.
pub(crate) struct Clients {
    pub(crate) rec: Arc<Recorder>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// A client's HTTP stack: its own connection pool (as separate applications would have).
pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

impl Clients {
    /// Starts `n` clients doing random operations on `keys` through random nodes of `urls`, each pausing
    /// up to `pause_ms` between operations. Written values are unique (`c<client>.<seq>`).
    pub(crate) fn start(
        rec: Arc<Recorder>,
        urls: &[String],
        keys: &[String],
        n: usize,
        seed: u64,
        pause_ms: u64,
    ) -> Clients {
        let stop = CancellationToken::new();
        let tasks = (0..n)
            .map(|c| {
                let (rec, stop, urls, keys) = (rec.clone(), stop.clone(), urls.to_vec(), keys.to_vec());
                tokio::spawn(async move {
                    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1000).wrapping_add(c as u64));
                    let http = http();
                    // What this client last read per key: its CAS expectations (often right, sometimes not).
                    let mut last: HashMap<String, Option<String>> = HashMap::new();
                    let mut seq = 0u64;
                    // Stop is checked between operations only: an operation in flight always completes
                    // (or times out) and is recorded, since it may take effect.
                    while !stop.is_cancelled() {
                        seq += 1;
                        let key = keys[rng.random_range(0..keys.len())].clone();
                        let value = format!("c{c}.{seq}");
                        let op = match rng.random_range(0..100) {
                            0..35 => Op::Get { key: key.clone() },
                            35..60 => Op::Put { key: key.clone(), value },
                            60..85 => Op::Cas {
                                key: key.clone(),
                                expected: last.get(&key).cloned().flatten(),
                                value,
                            },
                            _ => Op::Delete { key: key.clone() },
                        };
                        let node = rng.random_range(0..urls.len());
                        match rec.run(&http, c, node, &urls[node], op.clone()).await {
                            Some(Outcome::Get(v)) => {
                                last.insert(key, v);
                            }
                            Some(Outcome::Put | Outcome::Cas(true)) => {
                                last.insert(key, op.written().map(str::to_owned));
                            }
                            Some(Outcome::Delete(_)) => {
                                last.insert(key, None);
                            }
                            _ => {}
                        }
                        if pause_ms > 0 {
                            tokio::time::sleep(Duration::from_millis(rng.random_range(0..=pause_ms))).await;
                        }
                    }
                })
            })
            .collect();
        Clients { rec, stop, tasks }
    }

    /// Waits until at least `n` more writes were acknowledged (the cluster makes progress).
    pub(crate) async fn progress(&self, n: u64, within: Duration, what: &str, cluster: &Cluster) {
        let start = self.rec.writes_ok.load(Ordering::Relaxed);
        let deadline = Instant::now() + within;
        loop {
            let done = self.rec.writes_ok.load(Ordering::Relaxed) - start;
            if done >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: only {done} of {n} writes acknowledged within {within:?} (answers so far: {}); {}",
                self.rec.summary(),
                cluster.describe()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the clients after their current operation.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

/// Writes `op` through any node until one answers 200 (each attempt recorded); returns the outcome and
/// when it was acknowledged.
pub(crate) async fn write_until_ok(
    rec: &Recorder,
    urls: &[String],
    nodes: &[usize],
    client: usize,
    mut op: impl FnMut(u64) -> Op,
    within: Duration,
    what: &str,
) -> (Outcome, Option<i64>, Instant) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let deadline = Instant::now() + within;
    let mut attempt = 0u64;
    loop {
        let node = nodes[attempt as usize % nodes.len()];
        let o = op(attempt);
        attempt += 1;
        if let Some(out) = rec.run(&http, client, node, &urls[node], o).await {
            if out != Outcome::Indeterminate {
                let rev = rec.history.lock().unwrap().last().and_then(|r| r.revision);
                return (out, rev, Instant::now());
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no write acknowledged within {within:?}: {}",
            rec.summary()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ------------------------------------------------------------------------------------------------------
// Watchers

/// One websocket watcher per node, on [`PREFIX`], from revision 1.
pub(crate) struct Watchers {
    logs: Vec<Arc<Mutex<WatchLog>>>,
    last: Vec<Arc<AtomicI64>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Watchers {
    /// Starts a watcher per URL; each stays with its node, reconnecting (and resuming at the revision after
    /// the last one it received) whenever the connection ends.
    pub(crate) fn start(urls: &[String]) -> Watchers {
        let stop = CancellationToken::new();
        let mut logs = Vec::new();
        let mut last = Vec::new();
        let mut tasks = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            let log = Arc::new(Mutex::new(WatchLog {
                name: format!("watcher@n{}", i + 1),
                from: 1,
                to: 0,
                ..WatchLog::default()
            }));
            let l = Arc::new(AtomicI64::new(0));
            tasks.push(tokio::spawn(watch_task(url.clone(), log.clone(), l.clone(), stop.clone())));
            logs.push(log);
            last.push(l);
        }
        Watchers { logs, last, stop, tasks }
    }

    /// Waits until every watcher received revision `revision` (or later), then stops them and returns
    /// their logs, covering up to there.
    pub(crate) async fn finish(self, revision: i64, within: Duration, cluster: &Cluster) -> Vec<WatchLog> {
        let deadline = Instant::now() + within;
        loop {
            let behind: Vec<String> = self
                .last
                .iter()
                .enumerate()
                .filter(|(_, l)| l.load(Ordering::Relaxed) < revision)
                .map(|(i, l)| format!("watcher@n{} at {}", i + 1, l.load(Ordering::Relaxed)))
                .collect();
            if behind.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "watchers did not reach revision {revision} within {within:?}: {}; {}",
                behind.join(", "),
                cluster.describe()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.cancel();
        for t in self.tasks {
            t.await.unwrap();
        }
        self.logs
            .iter()
            .map(|l| {
                let mut l = l.lock().unwrap().clone();
                l.to = l.events.last().map_or(revision, |e| e.revision.max(revision));
                l
            })
            .collect()
    }
}

/// Range end of a prefix: the prefix with its last byte incremented.
fn prefix_end(p: &str) -> String {
    let mut b = p.as_bytes().to_vec();
    *b.last_mut().unwrap() += 1;
    String::from_utf8(b).unwrap()
}

async fn watch_task(url: String, log: Arc<Mutex<WatchLog>>, last: Arc<AtomicI64>, stop: CancellationToken) {
    let ws_url = url.replacen("http", "ws", 1) + "/watch";
    let mut next = 1i64;
    while !stop.is_cancelled() {
        // A frozen node accepts the TCP connection but never answers the upgrade.
        let connect = tokio::time::timeout(Duration::from_secs(2), tokio_tungstenite::connect_async(&ws_url));
        let mut ws = tokio::select! {
            r = connect => match r {
                Ok(Ok((ws, _))) => ws,
                _ => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let create = json!({"create_request": {
            "key": b64(PREFIX), "range_end": b64(&prefix_end(PREFIX)), "start_revision": next,
        }});
        if ws.send(Message::Text(create.to_string().into())).await.is_err() {
            continue;
        }
        loop {
            let msg = tokio::select! {
                m = ws.next() => m,
                _ = stop.cancelled() => return,
            };
            let text = match msg {
                Some(Ok(Message::Text(t))) => t.to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
                // Closed or broken: resume elsewhere in time, same node.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            };
            let v: Value = match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(_) => {
                    log.lock().unwrap().interruptions.push(format!("not JSON: {text}"));
                    continue;
                }
            };
            if let Some(e) = v.get("error") {
                log.lock()
                    .unwrap()
                    .interruptions
                    .push(format!("error from the server: {e} (resuming at {next})"));
                break;
            }
            let result = &v["result"];
            if result["canceled"] == true {
                // The watch was ended by the server: record why, resume (a compacted resume is a gap the
                // watcher was told about: the checker reports it).
                let mut l = log.lock().unwrap();
                l.interruptions.push(format!("canceled at {next}: {result}"));
                if let Some(c) = result["compact_revision"].as_i64() {
                    next = next.max(c);
                }
                break;
            }
            if let Some(events) = result["events"].as_array() {
                let mut l = log.lock().unwrap();
                for e in events {
                    let kv = &e["kv"];
                    let key = unb64(&kv["key"]).unwrap_or_default();
                    let revision =
                        kv["mod_revision"].as_i64().or(result["header"]["revision"].as_i64()).unwrap_or(-1);
                    let value = if e["type"] == "DELETE" {
                        None
                    } else {
                        Some(unb64(&kv["value"]).unwrap_or_default())
                    };
                    l.events.push(Event { revision, key, value });
                    next = next.max(revision + 1);
                }
                last.store(next - 1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------------------------------------------
// The end of a run

/// Keys of a run: `PREFIX<round>k<i>`, plus the fence and probe keys the harness writes.
pub(crate) fn keys(round: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{PREFIX}{round}k{i}")).collect()
}

pub(crate) const FENCE: &str = "/cf/fence";
pub(crate) const PROBE: &str = "/cf/probe";

/// Stops the clients, writes the fence, waits for convergence and the watchers, reads every node, and
/// runs both checkers; panics with everything needed to reproduce on any violation. `keys` are all the
/// keys any client wrote.
pub(crate) async fn finish(
    cluster: Cluster,
    clients: Clients,
    watchers: Watchers,
    keys: &[String],
    label: &str,
) {
    let rec = clients.rec.clone();
    clients.stop().await;
    // The fence: once every watcher has it, each one covered everything before it.
    let n = AtomicU64::new(0);
    let (_, fence_rev, _) = write_until_ok(
        &rec,
        &cluster.urls,
        &[0, 1, 2],
        900,
        |_| Op::Put { key: FENCE.into(), value: format!("fence.{}", n.fetch_add(1, Ordering::Relaxed)) },
        Duration::from_secs(20),
        "the fence write",
    )
    .await;
    let fence_rev = fence_rev.unwrap();
    cluster.converged(fence_rev, Duration::from_secs(20)).await;
    let logs = watchers.finish(fence_rev, Duration::from_secs(20), &cluster).await;
    // Each node's own state (serializable: local), and linearizable final reads through each node.
    let http = http();
    let mut all_keys: Vec<String> = keys.to_vec();
    all_keys.extend([FENCE.to_owned(), PROBE.to_owned()]);
    let mut finals = Vec::new();
    for (i, url) in cluster.urls.iter().enumerate() {
        let body = json!({"key": b64(PREFIX), "range_end": b64(&prefix_end(PREFIX)), "serializable": true});
        let r = http
            .post(format!("{url}/v3/kv/range"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "final local read of n{}; {}", i + 1, cluster.describe());
        let v: Value = r.json().await.unwrap();
        let state: BTreeMap<String, String> = v["kvs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| (unb64(&kv["key"]).unwrap(), unb64(&kv["value"]).unwrap()))
            .collect();
        finals.push((format!("n{}", i + 1), state));
        for k in &all_keys {
            let out = rec.run(&http, 1000 + i, i, url, Op::Get { key: k.clone() }).await;
            assert!(
                matches!(out, Some(Outcome::Get(_))),
                "final read of {k} through n{} failed: {out:?}; {}",
                i + 1,
                cluster.describe()
            );
        }
    }
    let history = rec.history();
    let unexpected = rec.unexpected();
    let lin = checker::check_linearizable(&history);
    let watch = checker::check_watches(&logs, &history, &all_keys, &finals);
    let indeterminate = history.iter().filter(|r| r.outcome == Outcome::Indeterminate).count();
    eprintln!(
        "[{label}] {} operations ({indeterminate} indeterminate), fence at revision {fence_rev}; answers: {}",
        history.len(),
        rec.summary()
    );
    let mut failures = Vec::new();
    if !unexpected.is_empty() {
        failures.push(format!(
            "unexpected answers ({}): {:#?}",
            unexpected.len(),
            &unexpected[..unexpected.len().min(10)]
        ));
    }
    match &lin {
        Ok(s) => eprintln!(
            "[{label}] linearizable: {} keys, {} operations ({} indeterminate), {} configurations searched",
            s.keys, s.operations, s.indeterminate, s.configurations
        ),
        Err(vs) => {
            for v in vs {
                failures.push(format!("linearizability violation:\n{v}"));
            }
        }
    }
    match &watch {
        Ok(s) => eprintln!(
            "[{label}] watches consistent: {} watchers, {} revisions, {} events",
            s.watchers, s.revisions, s.events
        ),
        Err(vs) => failures.push(format!("watch violations:\n  {}", vs.join("\n  "))),
    }
    if !failures.is_empty() {
        let dump = cluster.dir.join("history.txt");
        let text: String = history.iter().map(|r| format!("{r}\n")).collect();
        let _ = std::fs::write(&dump, text);
        let wdump = cluster.dir.join("watches.txt");
        let text: String = logs
            .iter()
            .map(|l| {
                let ev: String =
                    l.events.iter().map(|e| format!("  {} {} {:?}\n", e.revision, e.key, e.value)).collect();
                format!("{} {}..={} interruptions {:?}\n{ev}", l.name, l.from, l.to, l.interruptions)
            })
            .collect();
        let _ = std::fs::write(&wdump, text);
        panic!(
            "[{label}] {} problem(s); full history in {}, watch logs in {}; {}\n{}",
            failures.len(),
            dump.display(),
            wdump.display(),
            cluster.describe(),
            failures.join("\n")
        );
    }
    cluster.finish();
}
