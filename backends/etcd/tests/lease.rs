//! Leases against a real etcd: grant, attach, time-to-live, list, revoke, keep-alive, and
//! the background keeper (alive past the TTL, stops when dropped, reports a lost lease).
#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::time::Duration;

use etcd_json::{Error, EventType, LeaseId, PutOptions, WatchOptions};
use futures::StreamExt;

/// The lease calls and their error cases.
#[tokio::test]
async fn lease_lifecycle() {
    let (_etcd, client) = common::etcd().await;
    let grant = client.lease_grant(30, None).await.unwrap();
    assert_eq!(grant.ttl, 30);
    let id = grant.id;
    client.put("/l/a", "1", Some(PutOptions::new().with_lease(id))).await.unwrap();
    client.put("/l/b", "2", Some(PutOptions::new().with_lease(id))).await.unwrap();
    let kv = client.range("/l/a", None).await.unwrap().kvs.pop().unwrap();
    assert_eq!(kv.lease, id);

    let ttl = client.lease_time_to_live(id, true).await.unwrap();
    assert_eq!(ttl.granted_ttl, 30);
    assert!(ttl.ttl > 0 && ttl.ttl <= 30);
    // etcd lists a lease's keys in no particular order.
    let mut keys = ttl.keys.clone();
    keys.sort();
    assert_eq!(keys, vec![b"/l/a".to_vec(), b"/l/b".to_vec()]);
    assert!(client.lease_leases().await.unwrap().leases.contains(&id));
    assert_eq!(client.lease_keep_alive_once(id).await.unwrap().ttl, 30);

    // ignore_lease keeps the lease on overwrite; a plain put detaches it.
    client.put("/l/a", "1b", Some(PutOptions::new().with_ignore_lease())).await.unwrap();
    assert_eq!(client.range("/l/a", None).await.unwrap().kvs[0].lease, id);

    // A client-chosen ID, and its duplicate.
    let chosen = LeaseId(7_587_866_452_438_347_000);
    assert_eq!(client.lease_grant(5, Some(chosen)).await.unwrap().id, chosen);
    let err = client.lease_grant(5, Some(chosen)).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition { .. }), "{err:?}");

    // Revoking deletes the keys; afterwards the lease is gone everywhere.
    client.lease_revoke(id).await.unwrap();
    assert_eq!(client.get("/l/a").await.unwrap(), None);
    let err = client.lease_revoke(id).await.unwrap_err();
    assert!(matches!(err, Error::LeaseNotFound { .. }), "{err:?}");
    let err = client.lease_keep_alive_once(id).await.unwrap_err();
    assert!(matches!(err, Error::LeaseNotFound { .. }), "{err:?}");
    assert_eq!(client.lease_time_to_live(id, false).await.unwrap().ttl, -1);
    let err = client.put("/l/c", "x", Some(PutOptions::new().with_lease(id))).await.unwrap_err();
    assert!(matches!(err, Error::LeaseNotFound { .. }), "{err:?}");
}

/// The keeper keeps a 2 s lease alive well past its TTL; once dropped, the lease expires
/// and its key is deleted.
#[tokio::test]
async fn keeper_keeps_lease_alive_past_ttl() {
    let (_etcd, client) = common::etcd().await;
    let grant = client.lease_grant(2, None).await.unwrap();
    client.put("/k/alive", "1", Some(PutOptions::new().with_lease(grant.id))).await.unwrap();
    let mut deletes = client.watch("/k/alive", Some(WatchOptions::new().with_filter_no_put())).await.unwrap();

    let keeper = client.lease_keeper(grant.id, grant.ttl);
    // For 1.75 TTLs the key must not be deleted.
    let early = tokio::time::timeout(Duration::from_millis(3500), deletes.next()).await;
    assert!(early.is_err(), "the key was deleted while the keeper ran: {early:?}");
    assert!(!keeper.is_lost());
    assert!(keeper.alive_until().is_some());
    assert!(client.lease_time_to_live(grant.id, false).await.unwrap().ttl > 0);

    drop(keeper);
    let deleted =
        common::within(Duration::from_secs(8), "the lease to expire", deletes.next()).await.unwrap().unwrap();
    assert_eq!(deleted.events[0].event_type, EventType::Delete);
}

/// A keeper whose lease is revoked reports it as lost.
#[tokio::test]
async fn keeper_reports_lost_lease() {
    let (_etcd, client) = common::etcd().await;
    let grant = client.lease_grant(3, None).await.unwrap();
    let keeper = client.lease_keeper(grant.id, grant.ttl);
    client.lease_revoke(grant.id).await.unwrap();
    let reason = common::within(Duration::from_secs(5), "the lost signal", keeper.lost()).await;
    assert!(matches!(*reason, Error::LeaseNotFound { .. }), "{reason:?}");
    assert!(keeper.is_lost());
}
