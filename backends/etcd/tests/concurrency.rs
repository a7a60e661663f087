//! Locks and elections between two clients against a real etcd.
#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::time::Duration;

use etcd_json::{Client, ClientOptions, Error};
use futures::StreamExt;

const STEP: Duration = Duration::from_secs(10);

/// A lock held by one client blocks the other until it is released.
#[tokio::test]
async fn lock_between_two_clients() {
    let (etcd, a) = common::etcd().await;
    let b = Client::connect([etcd.endpoint()], ClientOptions::new()).await.unwrap();
    let lease_a = a.lease_grant(10, None).await.unwrap().id;
    let lease_b = b.lease_grant(10, None).await.unwrap().id;

    let held = a.lock("mylock", lease_a).await.unwrap();
    assert!(held.key.starts_with(b"mylock/"));

    let waiter = tokio::spawn(async move { b.lock("mylock", lease_b).await });
    // While A holds it, B stays blocked.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished());

    a.unlock(held.key.clone()).await.unwrap();
    let got = common::within(STEP, "B's lock", waiter).await.unwrap().unwrap();
    assert!(got.key.starts_with(b"mylock/"));
    assert_ne!(got.key, held.key);
    // Unlocking again is harmless.
    a.unlock(held.key).await.unwrap();
}

/// Campaign, proclaim, observe, resign: leadership passes from A to B.
#[tokio::test]
async fn election_between_two_clients() {
    let (etcd, a) = common::etcd().await;
    let b = Client::connect([etcd.endpoint()], ClientOptions::new()).await.unwrap();
    let err = a.leader("elect").await.unwrap_err();
    assert!(matches!(err, Error::NoLeader), "{err:?}");

    let lease_a = a.lease_grant(10, None).await.unwrap().id;
    let lease_b = b.lease_grant(10, None).await.unwrap().id;
    let leader_a = a.campaign("elect", "a", lease_a).await.unwrap().leader;
    assert_eq!(leader_a.lease, lease_a);
    assert_eq!(a.leader("elect").await.unwrap().kv.value_str().unwrap(), "a");

    let mut observe = b.observe("elect").await.unwrap();
    let first = common::within(STEP, "observe", observe.next()).await.unwrap().unwrap();
    assert_eq!(first.kv.value_str().unwrap(), "a");

    let b2 = b.clone();
    let campaign_b = tokio::spawn(async move { b2.campaign("elect", "b", lease_b).await });

    a.proclaim(&leader_a, "a2").await.unwrap();
    let next = common::within(STEP, "observe", observe.next()).await.unwrap().unwrap();
    assert_eq!(next.kv.value_str().unwrap(), "a2");
    assert!(!campaign_b.is_finished());

    a.resign(&leader_a).await.unwrap();
    let leader_b = common::within(STEP, "B's campaign", campaign_b).await.unwrap().unwrap().leader;
    assert_eq!(leader_b.lease, lease_b);
    let next = common::within(STEP, "observe", observe.next()).await.unwrap().unwrap();
    assert_eq!(next.kv.value_str().unwrap(), "b");

    let err = a.proclaim(&leader_a, "stale").await.unwrap_err();
    assert!(matches!(err, Error::NotLeader), "{err:?}");
    b.resign(&leader_b).await.unwrap();
}
