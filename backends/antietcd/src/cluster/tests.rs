//! Unit tests of the request/reply plumbing ([`Cluster::request`]) over real sockets: two in-process nodes
//! and a silent third peer (a websocket server that never answers).

#![allow(clippy::unwrap_used)]

use super::{Cluster, PeerError};
use crate::{Node, RaftRole, ServerConfig};
use futures::StreamExt;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_get_replies_errors_and_timeouts() {
    let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let spec = format!(
        "n1=http://{},n2=http://{},n3=http://{}",
        l1.local_addr().unwrap(),
        l2.local_addr().unwrap(),
        silent.local_addr().unwrap()
    );
    // n3 accepts websockets and reads them, never answering.
    let sink = tokio::spawn(async move {
        loop {
            let (tcp, _) = silent.accept().await.unwrap();
            tokio::spawn(async move {
                if let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await {
                    while let Some(Ok(_)) = ws.next().await {}
                }
            });
        }
    });
    let config = |id: &str| ServerConfig {
        cluster: Some(spec.clone()),
        node_id: Some(id.into()),
        cluster_key: Some("k".into()),
        election_timeout: 1000,
        heartbeat_timeout: 200,
        leadership_timeout: Some(600),
        reconnect_interval: 100,
        ..Default::default()
    };
    let n1 = Node::with_listener(config("n1"), l1).await.unwrap();
    let n2 = Node::with_listener(config("n2"), l2).await.unwrap();
    let (s1, s2) = (n1.cluster_status().unwrap(), n2.cluster_status().unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (leader, term) = loop {
        let (a, b) = (s1.borrow().clone(), s2.borrow().clone());
        if a.term == b.term && a.leader.is_some() && a.leader == b.leader && a.connected.len() == 2 {
            if let Some(l) = [&a, &b].into_iter().find(|s| s.role == RaftRole::Leader) {
                break (l.node_id.clone(), l.term);
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{a:?} {b:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (c1, c2): (&Arc<Cluster>, &Arc<Cluster>) = (n1.cluster().unwrap(), n2.cluster().unwrap());
    let (from_follower, follower) = if leader == "n1" { (c2, "n2") } else { (c1, "n1") };
    let from_leader = if leader == "n1" { c1 } else { c2 };
    let t = Duration::from_millis(500);
    // check_leader: the leader confirms its term; a follower, or a wrong term, is a mismatch.
    // check_leader: the leader confirms its term and gives its read index (committed revision) once synced.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ok = from_follower.request(&leader, obj(json!({"check_leader": true, "term": term})), t).await;
        if ok.as_ref().is_ok_and(|v| v.get("revision").is_some_and(Value::is_i64)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{ok:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wrong = from_follower.request(&leader, obj(json!({"check_leader": true, "term": term + 1})), t).await;
    assert_eq!(wrong, Err(PeerError::Remote("raft leader/term mismatch".into())));
    let not = from_leader.request(follower, obj(json!({"check_leader": true, "term": term})), t).await;
    assert_eq!(not, Err(PeerError::Remote("raft leader/term mismatch".into())));
    // dump: answered to the leader of the term only.
    let dump = from_leader.request(follower, obj(json!({"dump": {}, "term": term})), t).await.unwrap();
    assert!(dump.get("state").is_some() && dump.get("mod_revision").is_some(), "{dump}");
    let refused = from_follower.request(&leader, obj(json!({"dump": {}, "term": term})), t).await;
    assert_eq!(refused, Err(PeerError::Remote("raft leader/term mismatch".into())));
    // A silent peer: timeout; an unknown one: unavailable.
    let slow = from_leader.request("n3", obj(json!({"check_leader": true, "term": term})), t).await;
    assert_eq!(slow, Err(PeerError::Timeout));
    let none = from_leader.request("n9", obj(json!({"check_leader": true})), t).await;
    assert_eq!(none, Err(PeerError::Unavailable("n9".into())));
    // No pending request is left behind.
    for c in [c1, c2] {
        assert_eq!(c.links.get("n3").unwrap().pending_len(), 0);
    }
    n1.shutdown().await.unwrap();
    n2.shutdown().await.unwrap();
    sink.abort();
}
