//! The `antietcd://` backend against our server, through a proxy that can cut the watcher off: after a
//! reconnect the watch resumes from the last revision it saw with nothing lost; if the server compacted
//! that history meanwhile, the stream says so (`Compacted`) and then sends a fresh snapshot.

#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used)]

mod support;

use futures::StreamExt;
use std::time::Duration;
use support::proxy::Proxy;
use valkeyrie::{Error, EventKind, TreeBatch};

async fn server(compact_revisions: i64) -> antietcd::Node {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = antietcd::ServerConfig { compact_revisions, ..Default::default() };
    antietcd::Node::with_listener(config, listener).await.unwrap()
}

async fn next(w: &mut valkeyrie::TreeWatch) -> valkeyrie::Result<TreeBatch> {
    tokio::time::timeout(Duration::from_secs(30), w.next())
        .await
        .expect("nothing arrived")
        .expect("stream ended")
}

/// Cut off while others write a few changes: after healing, every change arrives once, in order.
#[tokio::test]
async fn resumes_without_loss() {
    let node = server(1000).await;
    let proxy = Proxy::start(node.local_addr().unwrap()).await;
    let watcher = valkeyrie::open(&format!("antietcd://{}?timeout=1s", proxy.addr)).await.unwrap();
    let writer = valkeyrie::open(&format!("antietcd://{}", node.local_addr().unwrap())).await.unwrap();
    let mut w = watcher.watch_tree("svc", None).await.unwrap();
    assert!(next(&mut w).await.unwrap().snapshot);
    writer.put("svc/0", b"before", None).await.unwrap();
    assert_eq!(next(&mut w).await.unwrap().events[0].pair.key, "svc/0");
    proxy.set_cut(true);
    for i in 1..=5 {
        writer.put(&format!("svc/{i}"), b"while cut", None).await.unwrap();
    }
    proxy.set_cut(false);
    let mut keys = Vec::new();
    while keys.len() < 5 {
        match next(&mut w).await {
            Ok(b) => {
                assert!(!b.snapshot, "no resync needed: the history was there");
                keys.extend(b.events.into_iter().map(|e| e.pair.key));
            }
            Err(e) => assert!(e.is_transient(), "{e:?}"),
        }
    }
    assert_eq!(keys, ["svc/1", "svc/2", "svc/3", "svc/4", "svc/5"]);
}

/// Cut off while more changes than the server keeps happen: after healing, an explicit `Compacted`
/// error, then a snapshot with the current content, then live changes.
#[tokio::test]
async fn compacted_history_means_error_then_snapshot() {
    let node = server(5).await;
    let proxy = Proxy::start(node.local_addr().unwrap()).await;
    let watcher = valkeyrie::open(&format!("antietcd://{}?timeout=1s", proxy.addr)).await.unwrap();
    let writer = valkeyrie::open(&format!("antietcd://{}", node.local_addr().unwrap())).await.unwrap();
    let mut w = watcher.watch_tree("svc", None).await.unwrap();
    assert!(next(&mut w).await.unwrap().snapshot);
    writer.put("svc/a", b"1", None).await.unwrap();
    assert!(!next(&mut w).await.unwrap().snapshot);
    proxy.set_cut(true);
    for i in 0..30 {
        writer.put("svc/b", i.to_string().as_bytes(), None).await.unwrap();
    }
    writer.delete("svc/a").await.unwrap();
    proxy.set_cut(false);
    let mut saw_compacted = false;
    let snapshot = loop {
        match next(&mut w).await {
            Err(Error::Compacted { .. }) => saw_compacted = true,
            Err(e) => assert!(e.is_transient(), "{e:?}"),
            Ok(b) if b.snapshot => break b,
            Ok(b) => panic!("a stale delta after the gap: {b:?}"),
        }
    };
    assert!(saw_compacted, "the gap was reported");
    let content: Vec<(&str, &[u8])> =
        snapshot.events.iter().map(|e| (e.pair.key.as_str(), e.pair.value.as_slice())).collect();
    assert_eq!(content, [("svc/b", &b"29"[..])], "the snapshot is the current content");
    writer.put("svc/c", b"live", None).await.unwrap();
    let b = next(&mut w).await.unwrap();
    assert_eq!((b.events[0].kind, b.events[0].pair.key.as_str()), (EventKind::Put, "svc/c"));
}

/// An outage longer than the watch's reconnect window: the stream does not end. It reports the
/// interruption (`NotReachable`, repeated with backoff while the server is unreachable), then resynchronises
/// with a fresh snapshot once the server is back, and goes on live.
#[tokio::test]
async fn long_outage_resynchronises_instead_of_ending() {
    let node = server(1000).await;
    let proxy = Proxy::start(node.local_addr().unwrap()).await;
    let url =
        format!("antietcd://{}?timeout=500ms&connect_timeout=200ms&watch_reconnect_timeout=1s", proxy.addr);
    let watcher = valkeyrie::open(&url).await.unwrap();
    let writer = valkeyrie::open(&format!("antietcd://{}", node.local_addr().unwrap())).await.unwrap();
    let mut w = watcher.watch_tree("svc", None).await.unwrap();
    assert!(next(&mut w).await.unwrap().snapshot);
    proxy.set_cut(true);
    writer.put("svc/during", b"outage", None).await.unwrap();
    let mut interruptions = 0;
    while interruptions < 2 {
        match next(&mut w).await {
            Err(e) if e.is_transient() => interruptions += 1,
            other => panic!("expected NotReachable while cut, got {other:?}"),
        }
    }
    proxy.set_cut(false);
    let snapshot = loop {
        match next(&mut w).await {
            Ok(b) if b.snapshot => break b,
            Ok(b) => panic!("a delta before the resynchronising snapshot: {b:?}"),
            Err(e) => assert!(e.is_transient(), "{e:?}"),
        }
    };
    assert_eq!(snapshot.events.iter().map(|e| e.pair.key.as_str()).collect::<Vec<_>>(), ["svc/during"]);
    writer.put("svc/after", b"live", None).await.unwrap();
    assert_eq!(next(&mut w).await.unwrap().events[0].pair.key, "svc/after");
}
