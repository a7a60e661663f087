#![allow(clippy::unwrap_used)]
//! Behaviour of the engine's in-process API: revisions, ranges, transactions (all or nothing), leases on
//! paused time, compaction and watches (history replay, ordering, lagging).

use antietcd::*;
use bytes::Bytes;
use futures::StreamExt;
use std::time::Duration;

fn engine() -> Engine {
    Engine::new(Config::default()).unwrap()
}

fn put(e: &Engine, k: &str, v: &str) -> Revision {
    e.put(PutRequest::new(k.to_owned(), v.to_owned())).unwrap().revision
}

fn keys(resp: &RangeResponse) -> Vec<String> {
    resp.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()
}

/// Every put gets the next revision, even an identical one; version counts puts since creation and
/// restarts after a delete.
#[tokio::test]
async fn revisions_and_versions() {
    let e = engine();
    assert_eq!(e.revision(), 0);
    assert_eq!(put(&e, "a", "1"), 1);
    assert_eq!(put(&e, "a", "1"), 2, "an identical put is still a change");
    let (rev, kv) = e.get(b"a").unwrap();
    let kv = kv.unwrap();
    assert_eq!((rev, kv.create_revision, kv.mod_revision, kv.version), (2, 1, 2, 2));
    let d = e.delete_range(&DeleteRequest { range: KeyRange::key("a"), prev_kv: true }).unwrap();
    assert_eq!((d.revision, d.deleted, d.prev_kvs.len()), (3, 1, 1));
    // Deleting a missing key changes nothing and does not bump the revision.
    let d = e.delete_range(&DeleteRequest { range: KeyRange::key("a"), prev_kv: false }).unwrap();
    assert_eq!((d.revision, d.deleted), (3, 0));
    assert_eq!(put(&e, "a", "2"), 4);
    let kv = e.get(b"a").unwrap().1.unwrap();
    assert_eq!((kv.create_revision, kv.version), (4, 1));
}

/// Binary keys, empty values and ranges of every etcd form, with sorted results, limits and counts.
#[tokio::test]
async fn ranges() {
    let e = engine();
    for k in ["b/2", "b/10", "b", "b/1", "a", "c", "b0"] {
        put(&e, k, k);
    }
    e.put(PutRequest::new(vec![0xffu8, 0x00, 0x01], Bytes::new())).unwrap();
    let r = e.range(&RangeRequest::new(KeyRange::prefix("b/"))).unwrap();
    assert_eq!(keys(&r), ["b/1", "b/10", "b/2"], "sorted bytewise, directory key excluded");
    let r = e.range(&RangeRequest::new(KeyRange::between("b", "c"))).unwrap();
    assert_eq!(keys(&r), ["b", "b/1", "b/10", "b/2", "b0"]);
    let r = e.range(&RangeRequest::new(KeyRange::between("b0", "\0"))).unwrap();
    assert_eq!(r.kvs.len(), 3, "from-key range: b0, c and the binary key");
    let r = e.range(&RangeRequest::new(KeyRange::all())).unwrap();
    assert_eq!(r.count, 8);
    assert_eq!(r.kvs.last().unwrap().key, Bytes::from(vec![0xffu8, 0, 1]));
    assert!(r.kvs.last().unwrap().value.is_empty());
    let r = e.range(&RangeRequest::new(KeyRange::between("c", "a"))).unwrap();
    assert!(r.kvs.is_empty(), "an inverted range is empty, not a panic");
    let r = e.range(&RangeRequest { limit: 2, ..RangeRequest::new(KeyRange::prefix("b")) }).unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (2, 5, true));
    let r = e.range(&RangeRequest { count_only: true, ..RangeRequest::new(KeyRange::prefix("b")) }).unwrap();
    assert_eq!((r.kvs.len(), r.count), (0, 5));
    let r = e
        .range(&RangeRequest {
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Key,
            keys_only: true,
            ..RangeRequest::new(KeyRange::prefix("b/"))
        })
        .unwrap();
    assert_eq!(keys(&r), ["b/2", "b/10", "b/1"]);
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
    let r = e
        .range(&RangeRequest {
            min_mod_revision: 7,
            max_mod_revision: 7,
            ..RangeRequest::new(KeyRange::all())
        })
        .unwrap();
    assert_eq!(keys(&r), ["b0"]);
    assert!(matches!(
        e.range(&RangeRequest { revision: 3, ..RangeRequest::new(KeyRange::all()) }),
        Err(Error::HistoricalRead { requested: 3, current: 8 })
    ));
    assert!(matches!(
        e.range(&RangeRequest { revision: 30, ..RangeRequest::new(KeyRange::all()) }),
        Err(Error::FutureRevision { .. })
    ));
    assert_eq!(e.put(PutRequest::new("", "x")), Err(Error::EmptyKey));
}

/// Compares on every target with every result, against present and absent keys.
#[tokio::test]
async fn txn_compares() {
    let e = engine();
    put(&e, "k", "m"); // rev 1, version 1
    let check = |target: CompareTarget, result: CompareResult, key: &str| {
        e.txn(&TxnRequest {
            compare: vec![Compare::new(key.to_owned(), result, target)],
            ..Default::default()
        })
        .unwrap()
        .succeeded
    };
    use CompareResult::*;
    use CompareTarget::*;
    assert!(check(Mod(1), Equal, "k"));
    assert!(check(Mod(0), Greater, "k"));
    assert!(check(Mod(2), Less, "k"));
    assert!(check(Mod(2), NotEqual, "k"));
    assert!(!check(Mod(1), NotEqual, "k"));
    assert!(check(Create(0), Equal, "missing"));
    assert!(check(Version(1), Equal, "k"));
    assert!(check(Value("m".into()), Equal, "k"));
    assert!(check(Value("a".into()), Greater, "k"));
    assert!(check(Value("z".into()), Less, "k"));
    assert!(!check(Value("m".into()), NotEqual, "missing"), "value compares on absent keys are false");
    assert!(check(Lease(None), Equal, "k"));
    assert!(check(Mod(0), Equal, "missing"));
    // A deleted key compares as absent (antietcd 1.3.1 returned the tombstone's revision).
    e.delete_range(&DeleteRequest { range: KeyRange::key("k"), prev_kv: false }).unwrap();
    assert!(check(Mod(0), Equal, "k"));
    // A range compare holds only if every key in it holds.
    put(&e, "r/1", "1");
    put(&e, "r/2", "2");
    let all_version_1 = Compare { range: KeyRange::prefix("r/"), result: Equal, target: Version(1) };
    assert!(
        e.txn(&TxnRequest { compare: vec![all_version_1.clone()], ..Default::default() }).unwrap().succeeded
    );
    put(&e, "r/2", "22");
    assert!(!e.txn(&TxnRequest { compare: vec![all_version_1], ..Default::default() }).unwrap().succeeded);
}

/// A transaction either applies every operation at one revision, or nothing at all.
#[tokio::test]
async fn txn_is_all_or_nothing() {
    let e = engine();
    let lease = e.lease_grant(60, None).unwrap().id;
    put(&e, "keep", "old");
    let mut watch = e.watch(WatchRequest { range: KeyRange::all(), ..Default::default() }).unwrap();
    let bad = TxnRequest {
        compare: vec![],
        success: vec![
            TxnOp::Put(PutRequest::new("keep", "new").with_lease(lease)),
            TxnOp::Delete(DeleteRequest { range: KeyRange::key("keep"), prev_kv: false }),
            TxnOp::Put(PutRequest::new("x", "1")),
            TxnOp::Put(PutRequest::new("y", "1").with_lease(LeaseId(12345))),
        ],
        failure: vec![],
    };
    assert_eq!(e.txn(&bad), Err(Error::LeaseNotFound(LeaseId(12345))));
    assert_eq!(e.revision(), 1);
    let kv = e.get(b"keep").unwrap().1.unwrap();
    assert_eq!((kv.value, kv.mod_revision, kv.lease), (Bytes::from("old"), 1, None));
    assert!(e.get(b"x").unwrap().1.is_none());
    assert!(e.lease_time_to_live(lease, true).unwrap().keys.is_empty(), "lease links undone too");

    // A good one: several changes, one revision, one batch, later ops see earlier ones.
    let good = TxnRequest {
        compare: vec![Compare::new("keep", CompareResult::Equal, CompareTarget::Value("old".into()))],
        success: vec![
            TxnOp::Put(PutRequest::new("a", "1")),
            TxnOp::Put(PutRequest::new("a", "2")),
            TxnOp::Range(RangeRequest::new(KeyRange::key("a"))),
            TxnOp::Txn(TxnRequest {
                success: vec![TxnOp::Put(PutRequest::new("b", "1"))],
                ..Default::default()
            }),
        ],
        failure: vec![],
    };
    let r = e.txn(&good).unwrap();
    assert!(r.succeeded);
    assert_eq!(r.revision, 2);
    let TxnOpResponse::Range(read) = &r.responses[2] else { panic!("{r:?}") };
    assert_eq!(read.kvs[0].value, "2");
    assert_eq!(read.kvs[0].version, 2);
    let batch = watch.next().await.unwrap().unwrap();
    assert_eq!(batch.revision, 2);
    assert_eq!(batch.events.len(), 3);
}

/// Leases expire on (paused) time, deleting their keys in one revision; keepalive renews; revoke works;
/// a key moved to another lease is no longer deleted with the first.
#[tokio::test(start_paused = true)]
async fn leases_expire_and_renew() {
    let e = engine();
    let short = e.lease_grant(2, None).unwrap().id;
    let long = e.lease_grant(10, None).unwrap().id;
    e.put(PutRequest::new("s1", "x").with_lease(short)).unwrap();
    e.put(PutRequest::new("s2", "x").with_lease(short)).unwrap();
    e.put(PutRequest::new("moved", "x").with_lease(short)).unwrap();
    e.put(PutRequest::new("moved", "y").with_lease(long)).unwrap();
    let mut w = e.watch(WatchRequest { range: KeyRange::all(), ..Default::default() }).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(e.lease_keep_alive(short).unwrap(), 2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(e.get(b"s1").unwrap().1.is_some(), "renewed at 1.5 s, so alive at 3 s");
    let info = e.lease_time_to_live(short, true).unwrap();
    assert_eq!((info.granted_ttl, info.ttl, info.keys.len()), (2, 1, 2));
    let batch = w.next().await.unwrap().unwrap();
    assert_eq!(batch.events.len(), 2, "both keys go in one revision");
    assert!(batch.events.iter().all(|ev| ev.kind == EventKind::Delete));
    assert!(e.get(b"moved").unwrap().1.is_some());
    assert_eq!(e.lease_keep_alive(short), Err(Error::LeaseNotFound(short)));
    e.lease_revoke(long).unwrap();
    assert!(e.get(b"moved").unwrap().1.is_none());
    assert!(e.leases().is_empty());
    assert_eq!(e.lease_grant(0, None), Err(Error::InvalidTtl(0)));
    assert_eq!(e.lease_grant(MAX_LEASE_TTL + 1, None), Err(Error::InvalidTtl(MAX_LEASE_TTL + 1)));
    let fixed = e.lease_grant(5, Some(LeaseId(77))).unwrap();
    assert_eq!(fixed.id, LeaseId(77));
    assert_eq!(e.lease_grant(5, Some(LeaseId(77))), Err(Error::LeaseExists(LeaseId(77))));
}

/// A watch with a start revision replays retained history filtered to its range, then continues live
/// with no gap; a compacted start is refused with the compact revision.
#[tokio::test]
async fn watch_history_and_compaction() {
    let e = Engine::new(Config::default().with_compact_revisions(0)).unwrap();
    put(&e, "w/a", "1"); // 1
    put(&e, "other", "1"); // 2
    put(&e, "w/b", "1"); // 3
    e.delete_range(&DeleteRequest { range: KeyRange::key("w/a"), prev_kv: false }).unwrap(); // 4
    let mut w = e
        .watch(WatchRequest {
            range: KeyRange::prefix("w/"),
            start_revision: 2,
            prev_kv: true,
            ..Default::default()
        })
        .unwrap();
    put(&e, "w/c", "1"); // 5
    let revs: Vec<(Revision, EventKind)> = (0..3)
        .map(|_| futures::executor::block_on(w.next()).unwrap().unwrap())
        .map(|b| (b.revision, b.events[0].kind))
        .collect();
    assert_eq!(revs, [(3, EventKind::Put), (4, EventKind::Delete), (5, EventKind::Put)]);
    e.compact(4).unwrap();
    assert_eq!(
        e.watch(WatchRequest { range: KeyRange::all(), start_revision: 3, ..Default::default() }).err(),
        Some(Error::Compacted { requested: 3, compact_revision: 4 })
    );
    assert!(e
        .watch(WatchRequest { range: KeyRange::all(), start_revision: 4, ..Default::default() })
        .is_ok());
    assert!(matches!(e.compact(4), Err(Error::Compacted { .. })));
    assert!(matches!(e.compact(9), Err(Error::FutureRevision { .. })));
}

/// Automatic compaction keeps between N and 2N revisions of history.
#[tokio::test]
async fn automatic_compaction() {
    let e = Engine::new(Config::default().with_compact_revisions(10)).unwrap();
    for i in 0..21 {
        put(&e, "k", &i.to_string());
    }
    assert_eq!(e.status().compact_revision, 11);
    assert!(e
        .watch(WatchRequest { range: KeyRange::all(), start_revision: 11, ..Default::default() })
        .is_ok());
    assert!(e
        .watch(WatchRequest { range: KeyRange::all(), start_revision: 10, ..Default::default() })
        .is_err());
}

/// Filters drop event kinds; prev_kv carries the previous value; a single-key watch ignores its neighbours.
#[tokio::test]
async fn watch_filters() {
    let e = engine();
    let mut puts_only = e
        .watch(WatchRequest {
            range: KeyRange::key("k"),
            no_delete: true,
            prev_kv: true,
            ..Default::default()
        })
        .unwrap();
    let mut deletes_only =
        e.watch(WatchRequest { range: KeyRange::key("k"), no_put: true, ..Default::default() }).unwrap();
    put(&e, "k0", "neighbour");
    put(&e, "k", "1");
    put(&e, "k", "2");
    e.delete_range(&DeleteRequest { range: KeyRange::key("k"), prev_kv: false }).unwrap();
    let b = puts_only.next().await.unwrap().unwrap();
    assert_eq!((b.revision, b.events[0].prev_kv.as_ref()), (2, None));
    let b = puts_only.next().await.unwrap().unwrap();
    assert_eq!(b.events[0].prev_kv.as_ref().unwrap().value, "1");
    let b = deletes_only.next().await.unwrap().unwrap();
    assert_eq!((b.revision, b.events[0].kind), (4, EventKind::Delete));
    assert!(b.events[0].prev_kv.is_none(), "not asked for");
}

/// A reader that falls behind its capacity gets what was queued, then an explicit Lagged error, and the
/// engine forgets it; closing the engine ends every other stream.
#[tokio::test]
async fn lagging_watcher_and_close() {
    let e = Engine::new(Config::default().with_watch_capacity(4)).unwrap();
    let mut slow = e.watch(WatchRequest { range: KeyRange::all(), ..Default::default() }).unwrap();
    let mut idle = e.watch(WatchRequest { range: KeyRange::key("nothing"), ..Default::default() }).unwrap();
    for i in 0..10 {
        put(&e, "k", &i.to_string());
    }
    assert_eq!(e.status().watchers, 1, "the lagging watcher was dropped from the hub");
    let mut got = Vec::new();
    while let Some(item) = slow.next().await {
        got.push(item.map(|b| b.revision));
    }
    assert_eq!(got, [Ok(1), Ok(2), Ok(3), Ok(4), Err(WatchError::Lagged)]);
    e.close();
    assert_eq!(idle.next().await, None);
    assert_eq!(e.put(PutRequest::new("k", "v")), Err(Error::Closed));
    assert!(matches!(e.watch(WatchRequest::default()), Err(Error::Closed)));
}

/// Dropping a watch unregisters it.
#[tokio::test]
async fn dropping_a_watch_unregisters_it() {
    let e = engine();
    let w = e.watch(WatchRequest { range: KeyRange::all(), ..Default::default() }).unwrap();
    assert_eq!(e.status().watchers, 1);
    drop(w);
    assert_eq!(e.status().watchers, 0);
}

/// Transactions that are too large or too deep are refused before running.
#[tokio::test]
async fn txn_limits() {
    let e = engine();
    let mut t = TxnRequest::default();
    for _ in 0..MAX_TXN_DEPTH + 1 {
        t = TxnRequest { success: vec![TxnOp::Txn(t)], ..Default::default() };
    }
    assert!(matches!(e.txn(&t), Err(Error::TxnTooLarge(_))));
    let big = TxnRequest {
        success: (0..=MAX_TXN_OPS).map(|_| TxnOp::Range(RangeRequest::new(KeyRange::key("a")))).collect(),
        ..Default::default()
    };
    assert!(matches!(e.txn(&big), Err(Error::TxnTooLarge(_))));
}

/// Creating an engine outside a runtime is an error, not a panic.
#[test]
fn needs_a_runtime() {
    assert_eq!(Engine::new(Config::default()).err(), Some(Error::NoRuntime));
}

/// After a restore (loading a persisted file) or a load (a checkpoint), the history is empty: a watch that
/// starts at the restored revision is refused as compacted rather than silently missing its events, and
/// one that starts after it works.
#[tokio::test]
async fn restored_state_has_no_history() {
    let e = engine();
    let kv = KeyValue {
        key: "k".into(),
        value: "v".into(),
        create_revision: 5,
        mod_revision: 7,
        version: 3,
        lease: None,
    };
    e.restore(7, vec![kv.clone()]).unwrap();
    let at =
        |start| e.watch(WatchRequest { range: KeyRange::all(), start_revision: start, ..Default::default() });
    assert!(matches!(at(7), Err(Error::Compacted { requested: 7, compact_revision: 8 })));
    assert!(at(8).is_ok());
    let snapshot = e.snapshot().unwrap();
    e.load(&snapshot).unwrap();
    assert!(matches!(at(7), Err(Error::Compacted { .. })));
    assert_eq!(e.get(b"k").unwrap().1.unwrap(), kv);
}

/// A replayed lease grant of a lease that exists renews it and keeps its keys: a follower logs every
/// replicated keepalive that way, so after a restart the lease still deletes its keys when revoked.
#[tokio::test]
async fn replayed_renewal_keeps_the_leases_keys() {
    let e = engine();
    let id = LeaseId(7);
    e.replay(&JournalRecord::LeaseGrant { id, ttl: 60 }).unwrap();
    let kv = KeyValue {
        key: Bytes::from_static(b"/leased"),
        value: Bytes::from_static(b"v"),
        create_revision: 1,
        mod_revision: 1,
        version: 1,
        lease: Some(id),
    };
    let events = vec![Event { kind: EventKind::Put, kv, prev_kv: None }];
    e.replay(&JournalRecord::Commit { revision: 1, events: events.into() }).unwrap();
    e.replay(&JournalRecord::LeaseGrant { id, ttl: 60 }).unwrap();
    assert_eq!(e.lease_time_to_live(id, true).unwrap().keys, vec![Bytes::from_static(b"/leased")]);
    e.lease_revoke(id).unwrap();
    assert!(e.get(b"/leased").unwrap().1.is_none(), "the revoked lease's key must be gone");
}
