#![allow(clippy::unwrap_used)]
//! Clustering (issue 5, election slice): three nodes connect over websockets, identify with the cluster
//! key, and elect exactly one leader through TinyRaft; the term stays put while one node is down; peer
//! messages from unidentified connections and wrong keys are refused. In-process `Node`s on port-0
//! listeners, and three `antietcd` processes on 127.0.0.x for SIGKILL / SIGSTOP.

mod common;

use antietcd::{ClusterStatus, Node, RaftRole, ServerConfig, ServerError};
use clap::Parser;
use common::*;
use etcd_json::testing::free_port_on;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

const ELECTION_MS: u64 = 1000;

fn cluster_config(id: &str, cluster: &str, key: &str) -> ServerConfig {
    ServerConfig {
        cluster: Some(cluster.to_owned()),
        node_id: Some(id.to_owned()),
        cluster_key: Some(key.to_owned()),
        election_timeout: ELECTION_MS,
        heartbeat_timeout: 200,
        leadership_timeout: Some(600),
        reconnect_interval: 100,
        ..Default::default()
    }
}

/// Three listeners on 127.0.0.1:0 and the `--cluster` string naming them n1..n3.
async fn listeners() -> (Vec<TcpListener>, String, Vec<String>) {
    let mut ls = Vec::new();
    let mut urls = Vec::new();
    for _ in 0..3 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}", l.local_addr().unwrap()));
        ls.push(l);
    }
    let cluster =
        urls.iter().enumerate().map(|(i, u)| format!("n{}={u}", i + 1)).collect::<Vec<_>>().join(",");
    (ls, cluster, urls)
}

struct Cluster {
    nodes: Vec<Option<Node>>,
    urls: Vec<String>,
    spec: String,
}

impl Cluster {
    async fn start(key_of: impl Fn(usize) -> &'static str) -> Cluster {
        Cluster::start_with(key_of, |_| None).await
    }

    async fn start_with(
        key_of: impl Fn(usize) -> &'static str,
        data_dir: impl Fn(usize) -> Option<std::path::PathBuf>,
    ) -> Cluster {
        let (ls, spec, urls) = listeners().await;
        let mut nodes = Vec::new();
        for (i, l) in ls.into_iter().enumerate() {
            let config = ServerConfig {
                data_dir: data_dir(i),
                ..cluster_config(&format!("n{}", i + 1), &spec, key_of(i))
            };
            nodes.push(Some(Node::with_listener(config, l).await.unwrap()));
        }
        Cluster { nodes, urls, spec }
    }

    fn statuses(&self) -> Vec<Option<watch::Receiver<ClusterStatus>>> {
        self.nodes.iter().map(|n| n.as_ref().map(|n| n.cluster_status().unwrap())).collect()
    }

    async fn stop(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.shutdown().await.unwrap();
        }
    }

    async fn restart(&mut self, i: usize, key: &str) {
        self.restart_with(i, key, None).await;
    }

    async fn restart_with(&mut self, i: usize, key: &str, data_dir: Option<std::path::PathBuf>) {
        self.restart_as(i, key, data_dir, None).await;
    }

    async fn restart_as(
        &mut self,
        i: usize,
        key: &str,
        data_dir: Option<std::path::PathBuf>,
        priority: Option<u64>,
    ) {
        let addr = self.urls[i].trim_start_matches("http://").to_owned();
        let l = TcpListener::bind(addr).await.unwrap();
        let config = ServerConfig {
            data_dir,
            leader_priority: priority,
            ..cluster_config(&format!("n{}", i + 1), &self.spec, key)
        };
        self.nodes[i] = Some(Node::with_listener(config, l).await.unwrap());
    }

    async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}

/// The live nodes agree: exactly one leader, everyone at its term and following it. Returns (leader
/// index, term).
fn agreed(statuses: &[ClusterStatus]) -> Option<(String, u64)> {
    let leaders: Vec<&ClusterStatus> = statuses.iter().filter(|s| s.role == RaftRole::Leader).collect();
    let [leader] = leaders[..] else { return None };
    let ok = statuses.iter().all(|s| {
        s.term == leader.term
            && s.leader.as_deref() == Some(leader.node_id.as_str())
            && (s.role == RaftRole::Follower || s.node_id == leader.node_id)
    });
    ok.then(|| (leader.node_id.clone(), leader.term))
}

fn snapshot(rxs: &[Option<watch::Receiver<ClusterStatus>>]) -> Vec<ClusterStatus> {
    rxs.iter().flatten().map(|r| r.borrow().clone()).collect()
}

/// Polls the status watches until `f` holds for the live nodes, or panics after `within`.
async fn wait_until<T>(
    rxs: &[Option<watch::Receiver<ClusterStatus>>],
    within: Duration,
    what: &str,
    f: impl Fn(&[ClusterStatus]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let s = snapshot(rxs);
        if let Some(t) = f(&s) {
            return t;
        }
        assert!(Instant::now() < deadline, "{what} not reached within {within:?}: {s:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn index(id: &str) -> usize {
    id.trim_start_matches('n').parse::<usize>().unwrap() - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_exactly_one_leader() {
    let c = Cluster::start(|_| "secret").await;
    let rxs = c.statuses();
    let (leader, term) = wait_until(&rxs, Duration::from_secs(10), "one leader", agreed).await;
    assert!(term >= 1);
    // Everybody connected to everybody, and the leader's followers are all three.
    let full = wait_until(&rxs, Duration::from_secs(5), "full mesh and followers", |s| {
        let mesh = s.iter().all(|x| x.connected.len() == 2);
        let l = s.iter().find(|x| x.role == RaftRole::Leader)?;
        (mesh && l.followers.as_ref()?.len() == 3).then(|| l.clone())
    })
    .await;
    assert_eq!(full.node_id, leader);
    // /v3/maintenance/status as antietcd reports it.
    for (i, url) in c.urls.iter().enumerate() {
        let st = call(url, "/v3/maintenance/status", json!({})).await;
        assert_eq!(st["header"]["member_id"], format!("n{}", i + 1));
        assert_eq!(st["header"]["raft_term"], term);
        assert_eq!(st["raftTerm"], term);
        assert_eq!(st["leader"], leader.as_str());
        assert_eq!(st["cluster"].as_object().unwrap().len(), 3);
        if index(&leader) == i {
            assert_eq!(st["raftState"], "leader");
            assert_eq!(st["followers"], json!(["n1", "n2", "n3"]));
        } else {
            assert_eq!(st["raftState"], "follower");
            assert!(st.get("followers").is_none());
        }
        // /health is not raft-gated.
        let r = client().get(format!("{url}/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // A write through a follower is forwarded to the leader; once acknowledged every node has it.
    let l = index(&leader);
    let put = json!({"key": b64("/k"), "value": b64("v")}).to_string();
    let (code, text) = post(&c.urls[(l + 1) % 3], "/v3/kv/put", &put).await;
    assert_eq!(code, 200, "{text}");
    for url in &c.urls {
        let r = call(url, "/v3/kv/range", json!({"key": b64("/k")})).await;
        assert_eq!(unb64(&r["kvs"][0]["value"]), "v", "{url}: {r}");
    }
    c.shutdown().await;
}

/// Waits until `f` holds for the answer of `path` on every node in `urls`.
async fn wait_all(urls: &[String], path: &str, body: Value, what: &str, f: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for url in urls {
        loop {
            let r = call(url, path, body.clone()).await;
            if f(&r) {
                break;
            }
            assert!(Instant::now() < deadline, "{what} not reached on {url}: {r}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_with_forwarding_watches_and_leases() {
    let mut c = Cluster::start(|_| "secret").await;
    let rxs = c.statuses();
    let (leader, _) = wait_until(&rxs, Duration::from_secs(10), "one leader", agreed).await;
    let l = index(&leader);
    let (f1, f2) = (c.urls[(l + 1) % 3].clone(), c.urls[(l + 2) % 3].clone());
    // A watcher on one follower sees a write made through the other, at the leader's revision.
    let mut ws = Ws::connect(&f2, "/").await;
    ws.send(&json!({"create_request": {"key": b64("/w/"), "range_end": b64("/w0"), "watch_id": 1}})).await;
    let created = ws.recv().await;
    assert_eq!(created["result"]["created"], true, "{created}");
    let put = call(&f1, "/v3/kv/put", json!({"key": b64("/w/a"), "value": b64("1")})).await;
    let revision = put["header"]["revision"].as_i64().unwrap();
    let event = ws.recv().await;
    let events = &event["result"]["events"];
    assert_eq!(unb64(&events[0]["kv"]["key"]), "/w/a", "{event}");
    assert_eq!(events[0]["kv"]["mod_revision"].as_i64(), Some(revision), "{event}");
    // Every node reports the same revision and value (followers applied it before the ack).
    for url in &c.urls {
        let r = call(url, "/v3/kv/range", json!({"key": b64("/w/a")})).await;
        assert_eq!(r["header"]["revision"].as_i64(), Some(revision), "{url}: {r}");
        assert_eq!(unb64(&r["kvs"][0]["value"]), "1");
    }
    // Errors keep the leader's status code through a follower (antietcd makes every one 503).
    let (code, text) = post(&f1, "/v3/lease/keepalive", r#"{"ID":"1234"}"#).await;
    assert_eq!((code, text.as_str()), (400, "unknown lease\n"));
    let (code, _) = post(&f1, "/v3/kv/put", r#"{"value":"eA=="}"#).await;
    assert_eq!(code, 400);
    // A CAS through a follower: compare on the value, both outcomes.
    let cas = |expect: &str, new: &str| {
        json!({"compare": [{"key": b64("/w/a"), "target": "VALUE", "result": "EQUAL", "value": b64(expect)}],
               "success": [{"request_put": {"key": b64("/w/a"), "value": b64(new)}}]})
    };
    assert_eq!(call(&f2, "/v3/kv/txn", cas("1", "2")).await["succeeded"], true);
    assert_eq!(call(&f1, "/v3/kv/txn", cas("1", "3")).await["succeeded"], false);
    // Frames far larger than a link's read buffer cross both ways: a 300 KiB value forwarded by one
    // follower and replicated to the other, then returned to the first as the previous value of a put.
    let big = "v".repeat(300 * 1024);
    call(&f1, "/v3/kv/put", json!({"key": b64("/big"), "value": b64(&big)})).await;
    let again =
        call(&f1, "/v3/kv/put", json!({"key": b64("/big"), "value": b64("x"), "prev_kv": true})).await;
    let shown: String = again.to_string().chars().take(200).collect();
    assert!(unb64(&again["prev_kv"]["value"]) == big, "prev_kv of /big: {shown}");
    let r = call(&f2, "/v3/kv/range", json!({"key": b64("/big")})).await;
    assert_eq!(unb64(&r["kvs"][0]["value"]), "x", "{r}");
    // Leases: granted through a follower, expire on the leader, and the deletion reaches every node.
    let grant = call(&f1, "/v3/lease/grant", json!({"TTL": 1})).await;
    let id = grant["ID"].as_str().unwrap().to_owned();
    call(&f2, "/v3/kv/put", json!({"key": b64("/w/leased"), "value": b64("x"), "lease": id})).await;
    wait_all(&c.urls, "/v3/kv/range", json!({"key": b64("/w/leased")}), "the leased key", |r| {
        r["kvs"].as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    wait_all(&c.urls, "/v3/kv/range", json!({"key": b64("/w/leased")}), "lease expiry", |r| {
        r["kvs"].as_array().is_none_or(|a| a.is_empty())
    })
    .await;
    // The leader goes: the survivors elect another, keep every acknowledged write and take new ones.
    c.stop(l).await;
    let mut rest = rxs.clone();
    rest[l] = None;
    wait_until(&rest, Duration::from_secs(ELECTION_MS / 1000 + 5), "a new leader", agreed).await;
    let live: Vec<String> = (0..3).filter(|i| *i != l).map(|i| c.urls[i].clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, _) =
            post(&live[0], "/v3/kv/put", &json!({"key": b64("/w/b"), "value": b64("4")}).to_string()).await;
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no write accepted after failover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for url in &live {
        let r = call(url, "/v3/kv/range", json!({"key": b64("/w/"), "range_end": b64("/w0")})).await;
        let kvs: Vec<(String, String)> =
            r["kvs"].as_array().unwrap().iter().map(|kv| (unb64(&kv["key"]), unb64(&kv["value"]))).collect();
        assert_eq!(kvs, vec![("/w/a".into(), "2".into()), ("/w/b".into(), "4".into())], "{url}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_shutdown_elects_a_new_leader() {
    let mut c = Cluster::start(|_| "secret").await;
    let rxs = c.statuses();
    let (leader, term) = wait_until(&rxs, Duration::from_secs(10), "one leader", agreed).await;
    let l = index(&leader);
    let stopped = Instant::now();
    c.stop(l).await;
    let mut rest = rxs.clone();
    rest[l] = None;
    let (new_leader, new_term) =
        wait_until(&rest, Duration::from_millis(ELECTION_MS + 1000), "a new leader", |s| {
            agreed(s).filter(|(_, t)| *t > term)
        })
        .await;
    assert_ne!(new_leader, leader);
    eprintln!("new leader {new_leader} at term {new_term} after {:?}", stopped.elapsed());
    // The old leader comes back: it follows, and nobody's term moves.
    c.restart(l, "secret").await;
    let rxs = c.statuses();
    let (again, t) = wait_until(&rxs, Duration::from_secs(5), "rejoined", agreed).await;
    assert_eq!((again.as_str(), t), (new_leader.as_str(), new_term));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_down_keeps_the_term_constant() {
    let mut c = Cluster::start(|_| "secret").await;
    let rxs = c.statuses();
    let (leader, _) = wait_until(&rxs, Duration::from_secs(10), "one leader", agreed).await;
    // Stop a follower: the two others keep the same leader and term, for many leases and elections.
    let f = (index(&leader) + 1) % 3;
    c.stop(f).await;
    let mut rest = rxs.clone();
    rest[f] = None;
    let (l2, term) = wait_until(&rest, Duration::from_secs(5), "two nodes agree", agreed).await;
    let mut watchers: Vec<_> = rest.iter().flatten().cloned().collect();
    let observe = async {
        loop {
            for w in &mut watchers {
                if w.has_changed().unwrap() {
                    let s = w.borrow_and_update().clone();
                    assert_eq!((s.term, s.leader.as_deref()), (term, Some(l2.as_str())), "flapped: {s:?}");
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    // 6 s = 10 leadership timeouts, 6 election timeouts: Node's TinyRaft re-elects several times here.
    let _ = tokio::time::timeout(Duration::from_secs(6), observe).await;
    assert_eq!(agreed(&snapshot(&rest)), Some((l2.clone(), term)));
    // The follower returns: it rejoins without an election.
    c.restart(f, "secret").await;
    let rxs = c.statuses();
    let back =
        wait_until(&rxs, Duration::from_secs(5), "rejoined", |s| agreed(s).filter(|_| s.len() == 3)).await;
    assert_eq!(back, (l2, term));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unidentified_websocket_peer_messages_are_ignored() {
    let c = Cluster::start(|_| "secret").await;
    let rxs = c.statuses();
    let (leader, term) = wait_until(&rxs, Duration::from_secs(10), "one leader", agreed).await;
    let l = index(&leader);
    for target in [l, (l + 1) % 3] {
        let mut ws = Ws::connect(&c.urls[target], "/").await;
        // A vote request with a huge term, as if from a member: refused.
        ws.send(&json!({"raft": {"type": "vote_request", "term": term + 100, "leader": "n1"}})).await;
        let r = ws.recv().await;
        assert!(r["error"].as_str().unwrap().contains("identify"), "{r}");
        ws.send(&json!({"raft": {"type": "ping", "term": term + 100}})).await;
        assert!(ws.recv().await["error"].is_string());
        // A forwarded request (antietcd executes these from anyone): refused, nothing written.
        ws.send(&json!({"handler": "kv_put", "request": {"key": b64("/x"), "value": b64("1")},
            "context": {"username": "root"}, "request_id": 7}))
            .await;
        let r = ws.recv().await;
        assert_eq!(r["request_id"], 7);
        assert!(r["reply"]["error"].as_str().unwrap().contains("identify"), "{r}");
        for m in [
            json!({"check_leader": true, "term": term, "request_id": 8}),
            json!({"dump": {}, "term": term, "request_id": 9}),
            json!({"replicate": {"header": {"revision": 5}}, "term": term, "request_id": 10}),
        ] {
            ws.send(&m).await;
            let r = ws.recv().await;
            assert!(r["reply"]["error"].as_str().unwrap().contains("identify"), "{m} -> {r}");
        }
        // A wrong key does not identify either.
        ws.send(&json!({"identify": {"key": "guess", "node_id": "n1"}})).await;
        assert_eq!(ws.recv().await, json!({"reply": {"error": "peer authentication error"}}));
        ws.send(&json!({"raft": {"type": "vote_request", "term": term + 100, "leader": "n1"}})).await;
        assert!(ws.recv().await["error"].is_string());
        // Watches keep working on the same socket in cluster mode.
        ws.send(&json!({"create_request": {"key": b64("/w/"), "range_end": b64("/w0")}})).await;
        assert_eq!(ws.recv().await["result"]["created"], true);
    }
    assert!(c.nodes[l].as_ref().unwrap().engine().get(b"/x").unwrap().1.is_none());
    // Nobody's term or leader moved.
    assert_eq!(agreed(&snapshot(&rxs)), Some((leader, term)));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_wrong_cluster_key_is_refused() {
    let c = Cluster::start(|i| if i == 2 { "wrong" } else { "secret" }).await;
    let rxs = c.statuses();
    let two = [rxs[0].clone(), rxs[1].clone(), None];
    let (leader, term) = wait_until(&two, Duration::from_secs(10), "n1 and n2 agree", |s| {
        agreed(s).filter(|(l, _)| {
            let st = &s[index(l)];
            st.followers.as_ref().is_some_and(|f| f.len() == 2)
        })
    })
    .await;
    assert_ne!(leader, "n3");
    // n3 dials both (its sockets open) but is never identified: it never learns a leader nor moves the
    // term, and the leader never counts it as a follower.
    let observe = async {
        loop {
            let s = snapshot(&rxs);
            assert!(s[2].leader.is_none() && s[2].role != RaftRole::Leader, "{:?}", s[2]);
            assert_eq!(agreed(&s[..2]), Some((leader.clone(), term)));
            assert_eq!(s[index(&leader)].followers.as_ref().unwrap().len(), 2);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(3 * ELECTION_MS), observe).await;
    c.shutdown().await;
}

/// A durable follower that was down catches up from the leader's history instead of a full load: its own
/// watch history survives (a watch from before its downtime replays), and it has every write made meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_catches_up_without_a_full_load() {
    let (mut c, dir, dirs, leader) = durable_cluster("catchup").await;
    let l = leader;
    let f = (l + 1) % 3;
    put_keys(&c.urls[l], "/c/", 0..=0, "0").await;
    c.stop(f).await;
    let first = put_keys(&c.urls[l], "/c/", 1..=5, "x").await;
    call(&c.urls[l], "/v3/kv/deleterange", json!({"key": b64("/c/0")})).await;
    c.restart_with(f, "secret", Some(dirs[f].clone())).await;
    let expected: Vec<(String, String)> = (1..=5).map(|i| (format!("/c/{i}"), "x".to_owned())).collect();
    wait_for_keys(&[c.urls[f].as_str()], "/c/", &expected).await;
    // It got the revisions it missed one by one: its history has them (a full load would start the history
    // after the loaded revision, and this watch would be told Compacted).
    let seen = history_from(&c.urls[f], "/c/", first, 6).await;
    assert_eq!(seen[0], ("PUT".to_owned(), "/c/1".to_owned()), "{seen:?}");
    assert_eq!(seen[5], ("DELETE".to_owned(), "/c/0".to_owned()), "{seen:?}");
    c.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A member that was down comes back and is elected leader (its priority) while behind the other member:
/// it takes the revisions it lacks from that member's history (not its whole state), so its own watch
/// history stays whole, and it has every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_behind_takes_the_missing_revisions_from_a_follower() {
    let (mut c, dir, dirs, leader) = durable_cluster("pull").await;
    let l = leader;
    let (f, m) = ((l + 1) % 3, (l + 2) % 3);
    put_keys(&c.urls[l], "/p/", 0..=0, "0").await;
    c.stop(f).await;
    let first = put_keys(&c.urls[l], "/p/", 1..=3, "x").await;
    c.stop(l).await;
    c.restart_as(f, "secret", Some(dirs[f].clone()), Some(100)).await;
    let mut live = c.statuses();
    live[l] = None;
    let (new_leader, _) = wait_until(&live, Duration::from_secs(15), "a leader of two", agreed).await;
    assert_eq!(index(&new_leader), f, "the prioritised member should lead");
    let expected: Vec<(String, String)> = std::iter::once(("/p/0".to_owned(), "0".to_owned()))
        .chain((1..=3).map(|i| (format!("/p/{i}"), "x".to_owned())))
        .collect();
    wait_for_keys(&[c.urls[f].as_str(), c.urls[m].as_str()], "/p/", &expected).await;
    let seen = history_from(&c.urls[f], "/p/", first, 3).await;
    let keys: Vec<&str> = seen.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(keys, ["/p/1", "/p/2", "/p/3"]);
    c.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A member restarts with a log tail the cluster never committed (a leader killed mid-write; here written
/// straight into its log while the cluster is down), and meanwhile the others committed other changes at
/// the same revisions. Its log's commit notes tell it which tail is uncommitted: it undoes that tail and
/// takes the missing revisions one by one, so its watch history stays whole (a full load would cancel a
/// watch from before the tail as compacted) and the foreign key is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_undoes_its_uncommitted_tail() {
    let (mut c, dir, dirs, leader) = durable_cluster("undo").await;
    let first = put_keys(&c.urls[leader], "/u/", 0..=0, "0").await;
    let zero = vec![("/u/0".to_owned(), "0".to_owned())];
    wait_for_keys(&c.urls.iter().map(String::as_str).collect::<Vec<_>>(), "/u/", &zero).await;
    for i in 0..3 {
        c.stop(i).await;
    }
    // The tail: a change applied and logged by member x but never replicated.
    let x = 0;
    {
        let options = antietcd::durable::DurableOptions::default().with_checkpoint_on_close(false);
        let (engine, durable) =
            antietcd::durable::Durable::open(&dirs[x], antietcd::Config::default(), options).await.unwrap();
        assert_eq!(durable.recovery().committed, Some(first), "the log notes what was committed");
        engine.put(antietcd::PutRequest::new("/u/foreign", "x")).unwrap();
        durable.close().await.unwrap();
        engine.close();
    }
    for i in (0..3).filter(|i| *i != x) {
        c.restart_with(i, "secret", Some(dirs[i].clone())).await;
    }
    let mut live = c.statuses();
    live[x] = None;
    let (leader, _) = wait_until(&live, Duration::from_secs(15), "a leader of two", agreed).await;
    put_keys(&c.urls[index(&leader)], "/u/", 1..=3, "y").await;
    c.restart_with(x, "secret", Some(dirs[x].clone())).await;
    let expected: Vec<(String, String)> =
        zero.into_iter().chain((1..=3).map(|i| (format!("/u/{i}"), "y".to_owned()))).collect();
    wait_for_keys(&[c.urls[x].as_str()], "/u/", &expected).await;
    let seen = history_from(&c.urls[x], "/u/", first, 4).await;
    assert_eq!(metric(&c.urls[x], "antietcd_cluster_undone_tails_total").await, Some(1));
    assert_eq!(metric(&c.urls[x], "antietcd_cluster_full_loads_total").await, Some(0));
    assert!(metric(&c.urls[x], "antietcd_cluster_catch_ups_total").await >= Some(1));
    let keys: Vec<&str> = seen.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(keys, ["/u/0", "/u/1", "/u/2", "/u/3"]);
    c.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_term_is_persisted_in_the_data_dir() {
    let (dir, dirs) = scratch_dirs("term");
    let c = Cluster::start_with(|_| "secret", |i| Some(dirs[i].clone())).await;
    let (_, term) = wait_until(&c.statuses(), Duration::from_secs(10), "one leader", agreed).await;
    c.shutdown().await;
    for d in &dirs {
        let stored: u64 = std::fs::read_to_string(d.join("raft_term")).unwrap().trim().parse().unwrap();
        assert!(stored >= term, "{} holds {stored} < {term}", d.display());
    }
    // Restarted, the nodes resume from the stored terms: never below.
    let c = Cluster::start_with(|_| "secret", |i| Some(dirs[i].clone())).await;
    let rxs = c.statuses();
    assert!(snapshot(&rxs).iter().all(|s| s.term >= term));
    let (_, t2) = wait_until(&rxs, Duration::from_secs(10), "one leader again", agreed).await;
    assert!(t2 > term);
    c.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn cluster_options_are_validated_at_start() {
    let base = |f: fn(&mut ServerConfig)| {
        let mut c =
            cluster_config("n1", "n1=http://127.0.0.1:1,n2=http://127.0.0.1:2,n3=http://127.0.0.1:3", "k");
        f(&mut c);
        c
    };
    let refused = |c: ServerConfig| c.validate().unwrap_err().to_string();
    assert!(base(|_| {}).validate().is_ok());
    assert!(refused(base(|c| c.node_id = None)).contains("--node_id"));
    assert!(refused(base(|c| c.cluster_key = Some(String::new()))).contains("--cluster_key"));
    assert!(refused(base(|c| c.node_id = Some("n9".into()))).contains("not listed"));
    assert!(refused(base(|c| c.cluster = Some("n1=http://a:1,n2".into()))).contains("id=url"));
    assert!(refused(base(|c| c.cluster = Some("n1=http://a:1,n1=http://b:1".into()))).contains("twice"));
    assert!(refused(base(|c| c.cluster = Some("n1=tcp://a:1".into()))).contains("http://"));
    assert!(refused(base(|c| c.heartbeat_timeout = 600)).contains("leadership_timeout"));
    assert!(refused(base(|c| c.leadership_timeout = Some(1000))).contains("election_timeout"));
    assert!(refused(base(|c| c.reconnect_interval = 0)).contains("reconnect_interval"));
    assert!(refused(base(|c| c.etcd_proxy = Some("http://x".into()))).contains("etcd_proxy"));
    // Node::start refuses with the typed error before binding anything.
    match Node::start(base(|c| c.node_id = None)).await {
        Err(ServerError::Config(antietcd::ConfigError::Cluster(
            antietcd::ClusterConfigError::MissingNodeId,
        ))) => {}
        other => panic!("{other:?}"),
    }
    // antietcd's flag names, and the dashed spellings.
    let c = ServerConfig::try_parse_from([
        "antietcd",
        "--node_id",
        "n1",
        "--cluster",
        "n1=http://a:1, n2 = http://b:2",
        "--cluster-key",
        "k",
        "--election-timeout",
        "3000",
        "--heartbeat_timeout",
        "500",
        "--leader-priority",
        "2",
        "--stale_read",
        "0",
        "--reconnect-interval",
        "50",
        "--dump_timeout",
        "1",
        "--load-timeout",
        "2",
        "--forward_timeout",
        "3",
        "--replication-timeout",
        "4",
        "--compact_timeout",
        "5",
        "--wait-quorum-timeout",
        "6",
    ])
    .unwrap();
    let cc = antietcd::ClusterConfig::from_server(&c).unwrap().unwrap();
    assert_eq!(cc.nodes.len(), 2);
    assert_eq!(cc.raft.leadership_timeout, Duration::from_millis(1750)); // (500 + 3000) / 2
    assert_eq!(cc.raft.leader_priority, Some(2));
    assert!(!cc.stale_read);
    assert_eq!(cc.reconnect_interval, Duration::from_millis(50));
    assert_eq!(cc.timeouts.wait_quorum, Duration::from_millis(6));
    assert_eq!(cc.timeouts.replication, Duration::from_millis(4));
}

// ----- three antietcd processes -----

struct Proc {
    child: std::process::Child,
    url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(p: &Proc, sig: &str) {
    let ok = std::process::Command::new("kill").args([sig, &p.child.id().to_string()]).status().unwrap();
    assert!(ok.success());
}

async fn proc_status(url: &str) -> Option<Value> {
    let r = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .post(format!("{url}/v3/maintenance/status"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

/// Polls the processes' status until one leader is agreed by all of `live` at a term > `above`.
async fn proc_agreed(procs: &[Proc], live: &[usize], above: u64, within: Duration) -> (String, u64) {
    let deadline = Instant::now() + within;
    loop {
        let mut seen = BTreeMap::new();
        for &i in live {
            if let Some(st) = proc_status(&procs[i].url).await {
                seen.insert(i, st);
            }
        }
        if seen.len() == live.len() {
            let leaders: Vec<_> = seen.values().filter(|s| s["raftState"] == "leader").collect();
            if let [l] = leaders[..] {
                let (id, term) = (l["header"]["member_id"].clone(), l["raftTerm"].as_u64().unwrap_or(0));
                if term > above && seen.values().all(|s| s["leader"] == id && s["raftTerm"] == term) {
                    return (id.as_str().unwrap().to_owned(), term);
                }
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader within {within:?}: {seen:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_cluster_survives_sigkill_and_sigstop() {
    let ips = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];
    let ports: Vec<u16> = ips.iter().map(|ip| free_port_on(ip)).collect();
    let urls: Vec<String> = ips.iter().zip(&ports).map(|(ip, p)| format!("http://{ip}:{p}")).collect();
    let spec = urls.iter().enumerate().map(|(i, u)| format!("n{}={u}", i + 1)).collect::<Vec<_>>().join(",");
    let spawn = |i: usize| Proc {
        child: std::process::Command::new(env!("CARGO_BIN_EXE_antietcd"))
            .args(["--ip", ips[i], "--port", &ports[i].to_string(), "--node_id", &format!("n{}", i + 1)])
            .args(["--cluster", &spec, "--cluster_key", "secret", "--election_timeout", "1000"])
            .args([
                "--heartbeat_timeout",
                "200",
                "--leadership_timeout",
                "600",
                "--reconnect_interval",
                "100",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        url: urls[i].clone(),
    };
    let mut procs: Vec<Proc> = (0..3).map(spawn).collect();
    let (leader, term) = proc_agreed(&procs, &[0, 1, 2], 0, Duration::from_secs(15)).await;

    // SIGSTOP a follower for 3 s: the leader and term do not move; after SIGCONT it follows again.
    let f = (index(&leader) + 1) % 3;
    signal(&procs[f], "-STOP");
    let others: Vec<usize> = (0..3).filter(|&i| i != f).collect();
    tokio::time::sleep(Duration::from_secs(3)).await; // the fault's duration, not an ordering wait
    assert_eq!(proc_agreed(&procs, &others, 0, Duration::from_secs(2)).await, (leader.clone(), term));
    signal(&procs[f], "-CONT");
    assert_eq!(proc_agreed(&procs, &[0, 1, 2], 0, Duration::from_secs(5)).await, (leader.clone(), term));

    // SIGKILL the leader: a new leader within election_timeout + 1 s.
    let l = index(&leader);
    signal(&procs[l], "-KILL");
    let killed = Instant::now();
    let rest: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    let (l2, t2) = proc_agreed(&procs, &rest, term, Duration::from_millis(ELECTION_MS + 1000)).await;
    eprintln!("SIGKILL {leader} -> new leader {l2} at term {t2} after {:?}", killed.elapsed());
    let _ = procs[l].child.wait();
    // It restarts and rejoins as a follower at the same term.
    procs[l] = spawn(l);
    assert_eq!(proc_agreed(&procs, &[0, 1, 2], 0, Duration::from_secs(10)).await, (l2.clone(), t2));

    // SIGSTOP the leader: the others elect another; after SIGCONT the old one steps down and follows.
    let l2i = index(&l2);
    signal(&procs[l2i], "-STOP");
    let rest: Vec<usize> = (0..3).filter(|&i| i != l2i).collect();
    let (l3, t3) = proc_agreed(&procs, &rest, t2, Duration::from_millis(ELECTION_MS + 1000)).await;
    signal(&procs[l2i], "-CONT");
    let (l4, t4) = proc_agreed(&procs, &[0, 1, 2], t2, Duration::from_secs(5)).await;
    assert!(t4 >= t3, "{l3}@{t3} then {l4}@{t4}");

    // Graceful shutdown does not wait for a frozen peer: SIGTERM a node while another is SIGSTOPped.
    signal(&procs[0], "-STOP");
    signal(&procs[1], "-TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(st) = procs[1].child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "SIGTERM did not stop the node within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    signal(&procs[0], "-CONT");
}

/// Mixed clusters with Node antietcd 1.3.1 (`node_modules/.bin/antietcd`): two of ours + one Node, and one
/// of ours + two Node, elect one leader that all three agree on, and keep it (no flapping) for 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_clusters_with_node_antietcd_elect_one_leader() {
    for (round, ours) in [(0u8, 2usize), (1, 1)] {
        let ips: Vec<String> = (0..3).map(|i| format!("127.0.0.{}", 21 + 3 * round + i as u8)).collect();
        let ports: Vec<u16> = ips.iter().map(|ip| free_port_on(ip)).collect();
        let urls: Vec<String> = ips.iter().zip(&ports).map(|(ip, p)| format!("http://{ip}:{p}")).collect();
        let spec =
            urls.iter().enumerate().map(|(i, u)| format!("n{}={u}", i + 1)).collect::<Vec<_>>().join(",");
        let procs: Vec<Proc> = (0..3)
            .map(|i| {
                let bin = if i < ours {
                    std::path::PathBuf::from(env!("CARGO_BIN_EXE_antietcd"))
                } else {
                    node_bin("antietcd")
                };
                Proc {
                    child: std::process::Command::new(bin)
                        .args([
                            "--ip",
                            &ips[i],
                            "--port",
                            &ports[i].to_string(),
                            "--node_id",
                            &format!("n{}", i + 1),
                        ])
                        .args(["--cluster", &spec, "--cluster_key", "secret", "--election_timeout", "1000"])
                        .args(["--heartbeat_timeout", "200", "--leadership_timeout", "600"])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .spawn()
                        .unwrap(),
                    url: urls[i].clone(),
                }
            })
            .collect();
        let (leader, term) = proc_agreed(&procs, &[0, 1, 2], 0, Duration::from_secs(20)).await;
        eprintln!("{ours} of ours + {} Node: leader {leader} at term {term}", 3 - ours);
        // Replication both ways: a write through every member reaches every member.
        for (i, p) in procs.iter().enumerate() {
            put_retrying(&p.url, &format!("/mixed/{i}"), &format!("v{i}")).await;
        }
        let all: Vec<&str> = procs.iter().map(|p| p.url.as_str()).collect();
        let expected: Vec<(String, String)> =
            (0..3).map(|i| (format!("/mixed/{i}"), format!("v{i}"))).collect();
        wait_for_keys(&all, "/mixed/", &expected).await;
        tokio::time::sleep(Duration::from_secs(3)).await; // observation window, not ordering
        assert_eq!(proc_agreed(&procs, &[0, 1, 2], 0, Duration::from_secs(2)).await, (leader.clone(), term));
        // The leader dies: the other two (whatever their kind) elect one, keep the data and take writes.
        let l = index(&leader);
        let mut procs = procs;
        procs[l].child.kill().unwrap();
        let _ = procs[l].child.wait();
        let live: Vec<usize> = (0..3).filter(|i| *i != l).collect();
        let (new_leader, _) = proc_agreed(&procs, &live, term, Duration::from_secs(20)).await;
        eprintln!("after killing {leader}: leader {new_leader}");
        put_retrying(&procs[live[0]].url, "/mixed/after", "x").await;
        let mut expected = expected;
        expected.push(("/mixed/after".into(), "x".into()));
        expected.sort();
        let urls: Vec<&str> = live.iter().map(|i| procs[*i].url.as_str()).collect();
        wait_for_keys(&urls, "/mixed/", &expected).await;
    }
}

/// Puts until the cluster takes it (503 while it elects or syncs), for at most 20 s.
async fn put_retrying(url: &str, key: &str, value: &str) {
    let body = json!({"key": b64(key), "value": b64(value)}).to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, text) = post(url, "/v3/kv/put", &body).await;
        if code == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "put {key} through {url}: {code} {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every node in `urls` lists exactly `expected` under `prefix` (at most 10 s).
/// A fresh scratch directory for a test named `name` and the data dirs of members n1..n3 in it.
fn scratch_dirs(name: &str) -> (std::path::PathBuf, Vec<std::path::PathBuf>) {
    let dir = std::env::temp_dir().join(format!("antietcd-cluster-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dirs = (0..3).map(|i| dir.join(format!("n{}", i + 1))).collect();
    (dir, dirs)
}

/// Three durable members (see [`scratch_dirs`]) once they agree on a leader: the cluster, the scratch
/// directory, the members' data dirs and the leader's index.
async fn durable_cluster(name: &str) -> (Cluster, std::path::PathBuf, Vec<std::path::PathBuf>, usize) {
    let (dir, dirs) = scratch_dirs(name);
    let c = Cluster::start_with(|_| "secret", |i| Some(dirs[i].clone())).await;
    let (leader, _) = wait_until(&c.statuses(), Duration::from_secs(10), "one leader", agreed).await;
    (c, dir, dirs, index(&leader))
}

/// Puts `<prefix><i>` = `value` for each `i` through `url`; returns the revision of the first put.
async fn put_keys(url: &str, prefix: &str, keys: std::ops::RangeInclusive<u32>, value: &str) -> i64 {
    let mut first = None;
    for i in keys {
        let r =
            call(url, "/v3/kv/put", json!({"key": b64(&format!("{prefix}{i}")), "value": b64(value)})).await;
        first = first.or(r["header"]["revision"].as_i64());
    }
    first.unwrap_or(0)
}

/// The first `n` events (type, key) under `prefix` from `start` on a new watch at `url`; fails if the
/// watch is cancelled (the member's history no longer reaches back to `start`: it took a full load).
async fn history_from(url: &str, prefix: &str, start: i64, n: usize) -> Vec<(String, String)> {
    let end = format!("{}0", prefix.trim_end_matches('/'));
    let mut ws = Ws::connect(url, "/").await;
    ws.send(
        &json!({"create_request": {"key": b64(prefix), "range_end": b64(&end), "start_revision": start}}),
    )
    .await;
    let mut seen = Vec::new();
    while seen.len() < n {
        let m = ws.recv().await;
        assert_ne!(m["result"]["canceled"], true, "{url} lost its watch history: {m}");
        for e in m["result"]["events"].as_array().into_iter().flatten() {
            seen.push((e["type"].as_str().unwrap_or("PUT").to_owned(), unb64(&e["kv"]["key"])));
        }
    }
    seen
}

async fn wait_for_keys(urls: &[&str], prefix: &str, expected: &[(String, String)]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for url in urls {
        loop {
            let body =
                json!({"key": b64(prefix), "range_end": b64(&format!("{}0", prefix.trim_end_matches('/')))});
            let (code, text) = post(url, "/v3/kv/range", &body.to_string()).await;
            let mut got: Vec<(String, String)> = Vec::new();
            if code == 200 {
                let r: Value = serde_json::from_str(&text).unwrap();
                for kv in r["kvs"].as_array().into_iter().flatten() {
                    got.push((unb64(&kv["key"]), unb64(&kv["value"])));
                }
                got.sort();
            }
            if got == expected {
                break;
            }
            assert!(Instant::now() < deadline, "{url} has {got:?} ({code}), expected {expected:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
