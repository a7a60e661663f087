//! The same client against Node antietcd 1.3.1: KV with etcd semantics restored
//! client-side (order, prefix, limit, count), transactions, hex lease IDs, and the
//! websocket watch protocol (history filtered to the watched range).
#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::time::Duration;

use etcd_json::{
    Compare, CompareOp, DeleteOptions, Error, EventType, PutOptions, RangeOptions, Txn, TxnOp, WatchOptions,
    WatchResponse, WatchStream,
};
use futures::StreamExt;

const STEP: Duration = Duration::from_secs(10);

async fn next_events(stream: &mut WatchStream) -> WatchResponse {
    loop {
        let item = common::within(STEP, "a watch event", stream.next()).await.expect("ended").unwrap();
        if !item.events.is_empty() {
            return item;
        }
    }
}

/// Put, range (prefix, limit, count, keys only) and delete behave as on etcd.
#[tokio::test]
async fn kv_on_node_antietcd() {
    let (_server, client) = common::antietcd().await;
    assert!(client.flavour().is_antietcd());
    assert!(client.status().await.unwrap().version.starts_with("antietcd"));

    // Inserted out of order, plus the "directory" key itself and a sibling.
    for key in ["/d/c", "/d/a", "/d", "/d/b", "/e"] {
        client.put(key, format!("v{key}"), None).await.unwrap();
    }
    let r = client.range("/d/", Some(RangeOptions::new().with_prefix())).await.unwrap();
    let keys: Vec<&str> = r.kvs.iter().map(|kv| kv.key_str().unwrap()).collect();
    assert_eq!(keys, ["/d/a", "/d/b", "/d/c"]);
    assert_eq!(r.count, 3);
    assert_eq!(r.kvs[0].value_str().unwrap(), "v/d/a");
    assert!(r.kvs[0].mod_revision > 0);

    let r = client.range("/d/", Some(RangeOptions::new().with_prefix().with_limit(2))).await.unwrap();
    assert_eq!(r.kvs.len(), 2);
    assert!(r.more);
    let r = client.range("/d/", Some(RangeOptions::new().with_prefix().with_count_only())).await.unwrap();
    assert!(r.kvs.is_empty());
    assert_eq!(r.count, 3);
    // A non-directory prefix is served by reading more and filtering.
    let r = client.range("/d/a", Some(RangeOptions::new().with_prefix())).await.unwrap();
    assert_eq!(r.kvs.len(), 1);
    let all = client.range("", Some(RangeOptions::new().with_all_keys())).await.unwrap();
    assert_eq!(all.kvs.len(), 5);

    assert_eq!(client.get("/d/b").await.unwrap().as_deref(), Some(&b"v/d/b"[..]));
    // No history on antietcd: a typed error rather than silently current data.
    let err = client.range("/d/b", Some(RangeOptions::new().with_revision(1))).await.unwrap_err();
    assert!(matches!(err, Error::Unimplemented { .. }), "{err:?}");
    assert_eq!(client.get("/missing").await.unwrap(), None);
    let d = client.delete_range("/d/", Some(DeleteOptions::new().with_prefix())).await.unwrap();
    assert_eq!(d.deleted, 3);
    assert_eq!(client.delete_range("/e", None).await.unwrap().deleted, 1);
    // Deleting an arbitrary range would mean deleting more than asked: refused.
    let err = client.delete_range("/a", Some(DeleteOptions::new().with_range_end("/b"))).await.unwrap_err();
    assert!(matches!(err, Error::Unimplemented { .. }), "{err:?}");
}

/// Transactions: create-if-absent, mod revision compares, both branches.
#[tokio::test]
async fn txn_on_node_antietcd() {
    let (_server, client) = common::antietcd().await;
    let create = Txn::new()
        .when([Compare::create_revision("/t/k", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("/t/k", "1", None)])
        .or_else([TxnOp::range("/t/k", None)]);
    let first = client.txn(create.clone()).await.unwrap();
    assert!(first.succeeded);
    let second = client.txn(create).await.unwrap();
    assert!(!second.succeeded);
    let range = second.responses[0].as_range().unwrap();
    assert_eq!(range.kvs[0].value_str().unwrap(), "1");
    let rev = range.kvs[0].mod_revision;

    let cas = Txn::new()
        .when([Compare::mod_revision("/t/k", CompareOp::Equal, rev)])
        .and_then([TxnOp::put("/t/k", "2", None), TxnOp::delete("/t/other", None)]);
    assert!(client.txn(cas.clone()).await.unwrap().succeeded);
    assert!(!client.txn(cas).await.unwrap().succeeded);
    let less = Txn::new().when([Compare::mod_revision("/t/k", CompareOp::Less, rev + 100)]);
    assert!(client.txn(less).await.unwrap().succeeded);
    // antietcd 1.3.1 has no GREATER: a typed "unsupported" error.
    let greater = Txn::new().when([Compare::version("/t/k", CompareOp::Greater, 0)]);
    let err = client.txn(greater).await.unwrap_err();
    assert!(matches!(err, Error::Unimplemented { .. }), "{err:?}");
}

/// Leases use antietcd's hex IDs end to end.
#[tokio::test]
async fn leases_on_node_antietcd() {
    let (_server, client) = common::antietcd().await;
    let grant = client.lease_grant(10, None).await.unwrap();
    assert!(!grant.id.is_none());
    assert_eq!(grant.ttl, 10);
    client.put("/l/k", "v", Some(PutOptions::new().with_lease(grant.id))).await.unwrap();
    let kv = client.range("/l/k", None).await.unwrap().kvs.pop().unwrap();
    assert_eq!(kv.lease, grant.id);
    assert_eq!(client.lease_keep_alive_once(grant.id).await.unwrap().ttl, 10);
    let keeper = client.lease_keeper(grant.id, grant.ttl);
    assert!(!keeper.is_lost());
    client.lease_revoke(grant.id).await.unwrap();
    assert_eq!(client.get("/l/k").await.unwrap(), None);
    let reason = common::within(Duration::from_secs(10), "lost", keeper.lost()).await;
    assert!(matches!(*reason, Error::LeaseNotFound { .. }), "{reason:?}");
    let err = client.lease_revoke(grant.id).await.unwrap_err();
    assert!(matches!(err, Error::LeaseNotFound { .. }), "{err:?}");
}

/// The websocket watch: live events, and history replay filtered to the watched range.
#[tokio::test]
async fn websocket_watch_on_node_antietcd() {
    let (_server, client) = common::antietcd().await;
    let start = client.put("/w/a", "1", None).await.unwrap().header.revision;
    client.put("/elsewhere", "x", None).await.unwrap();
    client.put("/w/b", "2", None).await.unwrap();

    let mut history = client
        .watch("/w/", Some(WatchOptions::new().with_prefix().with_start_revision(start)))
        .await
        .unwrap();
    let mut keys = Vec::new();
    while keys.len() < 2 {
        for ev in next_events(&mut history).await.events {
            keys.push(ev.kv.key_str().unwrap().to_string());
        }
    }
    assert_eq!(keys, ["/w/a", "/w/b"]);

    let mut live = client.watch("/w/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    // A non-directory prefix would crash Node antietcd if sent as is: it is widened.
    let mut narrow = client.watch("/w/c", Some(WatchOptions::new().with_prefix())).await.unwrap();
    client.put("/elsewhere", "y", None).await.unwrap();
    let rev = client.put("/w/c1", "3", None).await.unwrap().header.revision;
    client.delete_range("/w/a", None).await.unwrap();

    let put = next_events(&mut live).await;
    assert_eq!(put.events.len(), 1);
    assert_eq!(put.events[0].kv.key_str().unwrap(), "/w/c1");
    assert_eq!(put.events[0].kv.mod_revision, rev);
    let del = next_events(&mut live).await;
    assert_eq!(del.events[0].event_type, EventType::Delete);
    assert_eq!(del.events[0].kv.key_str().unwrap(), "/w/a");
    // History events replayed to the first watch are not repeated; new ones arrive.
    let more = next_events(&mut history).await;
    assert_eq!(more.events[0].kv.key_str().unwrap(), "/w/c1");

    let only_c = next_events(&mut narrow).await;
    assert_eq!(only_c.events.len(), 1);
    assert_eq!(only_c.events[0].kv.key_str().unwrap(), "/w/c1");
    // The server survived everything above.
    assert!(client.status().await.is_ok());
}
