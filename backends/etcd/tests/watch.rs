//! Watches against a real etcd: options, history, filters, transports, resume after a
//! server restart, compaction and cancellation on drop.
#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use etcd_json::testing::EtcdServer;
use etcd_json::{
    Client, ClientOptions, Error, EventType, WatchOptions, WatchResponse, WatchStream, WatchTransport,
};
use futures::StreamExt;

const STEP: Duration = Duration::from_secs(10);

/// The next message with events.
async fn next_events(stream: &mut WatchStream) -> WatchResponse {
    loop {
        let item =
            common::within(STEP, "a watch event", stream.next()).await.expect("the watch ended").unwrap();
        if !item.events.is_empty() {
            return item;
        }
    }
}

/// Live events carry the right kinds, values, revisions and previous values.
#[tokio::test]
async fn live_events_with_prev_kv() {
    let (_etcd, client) = common::etcd().await;
    client.put("/w/a", "0", None).await.unwrap();
    let mut stream =
        client.watch("/w/", Some(WatchOptions::new().with_prefix().with_prev_kv())).await.unwrap();
    assert!(stream.created_revision() > 0);

    let r1 = client.put("/w/a", "1", None).await.unwrap().header.revision;
    client.put("/outside", "x", None).await.unwrap();
    let r2 = client.delete_range("/w/a", None).await.unwrap().header.revision;

    let put = next_events(&mut stream).await;
    assert_eq!(put.events.len(), 1);
    let ev = &put.events[0];
    assert_eq!(ev.event_type, EventType::Put);
    assert_eq!(ev.kv.value_str().unwrap(), "1");
    assert_eq!(ev.kv.mod_revision, r1);
    assert_eq!(ev.prev_kv.as_ref().unwrap().value_str().unwrap(), "0");

    let del = next_events(&mut stream).await;
    let ev = &del.events[0];
    assert_eq!(ev.event_type, EventType::Delete);
    assert_eq!(ev.kv.key_str().unwrap(), "/w/a");
    assert_eq!(ev.kv.mod_revision, r2);
    assert_eq!(ev.prev_kv.as_ref().unwrap().value_str().unwrap(), "1");
}

/// A start revision replays history; filters drop puts or deletes.
#[tokio::test]
async fn history_and_filters() {
    let (_etcd, client) = common::etcd().await;
    let start = client.put("/h/k", "1", None).await.unwrap().header.revision;
    client.put("/h/k", "2", None).await.unwrap();
    client.delete_range("/h/k", None).await.unwrap();
    client.put("/h/k", "3", None).await.unwrap();

    let mut all = client.watch("/h/k", Some(WatchOptions::new().with_start_revision(start))).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        for ev in next_events(&mut all).await.events {
            seen.push((ev.event_type, ev.kv.value.clone()));
        }
    }
    assert_eq!(
        seen,
        vec![
            (EventType::Put, b"1".to_vec()),
            (EventType::Put, b"2".to_vec()),
            (EventType::Delete, Vec::new()),
            (EventType::Put, b"3".to_vec()),
        ]
    );

    let mut deletes_only = client
        .watch("/h/k", Some(WatchOptions::new().with_start_revision(start).with_filter_no_put()))
        .await
        .unwrap();
    let mut puts_only = client
        .watch("/h/k", Some(WatchOptions::new().with_start_revision(start).with_filter_no_delete()))
        .await
        .unwrap();
    let d = next_events(&mut deletes_only).await;
    assert!(d.events.iter().all(|e| e.event_type == EventType::Delete));
    let mut puts = 0;
    while puts < 3 {
        let p = next_events(&mut puts_only).await;
        assert!(p.events.iter().all(|e| e.event_type == EventType::Put));
        puts += p.events.len();
    }
    assert_eq!(puts, 3);
}

/// The websocket transport delivers the same events as the HTTP stream on etcd.
#[tokio::test]
async fn websocket_transport_on_etcd() {
    let (_etcd, client) = common::etcd().await;
    let mut stream = client
        .watch("/ws/", Some(WatchOptions::new().with_prefix().with_transport(WatchTransport::WebSocket)))
        .await
        .unwrap();
    let rev = client.put("/ws/x", "1", None).await.unwrap().header.revision;
    let got = next_events(&mut stream).await;
    assert_eq!(got.events[0].kv.key_str().unwrap(), "/ws/x");
    assert_eq!(got.events[0].kv.mod_revision, rev);
}

/// Progress notifications arrive when asked for.
#[tokio::test]
async fn progress_notify() {
    let etcd = EtcdServer::start_with_args(&["--experimental-watch-progress-notify-interval=300ms"]);
    let client = Client::connect([etcd.endpoint()], ClientOptions::new()).await.unwrap();
    let mut stream = client.watch("/pn", Some(WatchOptions::new().with_progress_notify())).await.unwrap();
    let item = common::within(STEP, "a progress notification", stream.next()).await.unwrap().unwrap();
    assert!(item.is_progress_notify(), "{item:?}");
    assert!(item.header.revision >= stream.created_revision());
}

/// A compacted start revision is a typed error item, after which the stream ends.
#[tokio::test]
async fn compacted_start_revision() {
    let (_etcd, client) = common::etcd().await;
    let old = client.put("/c", "1", None).await.unwrap().header.revision;
    let new = client.put("/c", "2", None).await.unwrap().header.revision;
    client.compact(new, true).await.unwrap();
    let mut stream = client.watch("/c", Some(WatchOptions::new().with_start_revision(old))).await.unwrap();
    let err = common::within(STEP, "the compaction error", stream.next()).await.unwrap().unwrap_err();
    assert!(stream.next().await.is_none());
    match err {
        Error::Compacted { requested, compact_revision } => {
            assert_eq!(requested, old);
            assert_eq!(compact_revision, new);
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
}

/// The watch survives an etcd restart: events written before, during the outage's
/// aftermath and after arrive exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_restart_without_loss_or_duplicates() {
    let mut etcd = EtcdServer::start();
    let client = Client::connect([etcd.endpoint()], ClientOptions::new()).await.unwrap();
    let stream = client.watch("/r/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let collector = tokio::spawn(async move {
        let mut stream = stream;
        while let Some(item) = stream.next().await {
            let item = item.unwrap();
            for ev in item.events {
                let _ = tx.send((ev.kv.mod_revision, ev.kv.value_str().unwrap().to_string()));
            }
        }
    });

    let mut received = Vec::new();
    async fn receive_until(
        n: usize,
        received: &mut Vec<(i64, String)>,
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<(i64, String)>,
    ) {
        while received.len() < n {
            received.push(rx.recv().await.unwrap());
        }
    }
    for i in 0..5 {
        client.put(format!("/r/{i}"), i.to_string(), None).await.unwrap();
    }
    common::within(STEP, "first events", receive_until(5, &mut received, &mut rx)).await;

    tokio::task::block_in_place(|| etcd.restart());
    // Written right after the restart, possibly before the watch reconnected.
    for i in 5..10 {
        client.put(format!("/r/{i}"), i.to_string(), None).await.unwrap();
    }
    common::within(
        Duration::from_secs(20),
        "events after restart",
        receive_until(10, &mut received, &mut rx),
    )
    .await;
    client.put("/r/last", "last", None).await.unwrap();
    common::within(STEP, "last event", receive_until(11, &mut received, &mut rx)).await;

    let values: Vec<&str> = received.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(values, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "last"]);
    let revisions: Vec<i64> = received.iter().map(|(r, _)| *r).collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
    let unique: HashSet<_> = revisions.iter().collect();
    assert_eq!(unique.len(), revisions.len());
    collector.abort();
}

/// Reads etcd's gauge of open watchers.
async fn watcher_count(endpoint: &str) -> Option<i64> {
    let text = reqwest::get(format!("{endpoint}/metrics")).await.ok()?.text().await.ok()?;
    text.lines()
        .find(|l| l.starts_with("etcd_debugging_mvcc_watcher_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as i64)
}

/// Dropping the stream cancels the watch on the server.
#[tokio::test]
async fn drop_cancels_the_watch() {
    let (etcd, client) = common::etcd().await;
    let endpoint = etcd.endpoint();
    let stream = client.watch("/d", None).await.unwrap();
    common::wait_until(STEP, "one watcher", || async { watcher_count(&endpoint).await == Some(1) }).await;
    drop(stream);
    common::wait_until(STEP, "no watcher", || async { watcher_count(&endpoint).await == Some(0) }).await;
}
