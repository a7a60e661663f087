//! The remote backends' URL features against a real etcd: endpoint failover, username/password auth,
//! and failure behaviour (a server that is down is `NotReachable` within the timeout, never a hang).

#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used)]

use etcd_json::testing::{free_port, EtcdServer};
use std::time::{Duration, Instant};
use valkeyrie::Error;

/// The first listed endpoint is down: the store uses the next one, for reads, writes and watches.
#[tokio::test]
async fn failover_to_the_next_endpoint() {
    let etcd = EtcdServer::start();
    let dead = format!("127.0.0.1:{}", free_port());
    let store = valkeyrie::open(&format!("etcd://{dead},{}?timeout=2s&connect_timeout=300ms", etcd.addr()))
        .await
        .unwrap();
    store.put("k", b"v", None).await.unwrap();
    assert_eq!(store.get("k", None).await.unwrap().value, b"v");
    let lock = store.new_lock("l", None).await.unwrap();
    lock.lock().await.unwrap();
    lock.unlock().await.unwrap();
    store.close().await.unwrap();
}

/// With etcd's auth on, `username`/`password` in the URL authenticate; without them, calls fail with a
/// backend error rather than silently.
#[tokio::test]
async fn username_and_password() {
    let etcd = EtcdServer::start();
    let admin = etcd_json::Client::connect([etcd.endpoint()], etcd_json::ClientOptions::new()).await.unwrap();
    admin.user_add("root", "secret").await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();
    let url = format!("etcd://{}?username=root&password=secret&prefix=/authed", etcd.addr());
    let store = valkeyrie::open(&url).await.unwrap();
    store.put("k", b"v", None).await.unwrap();
    assert_eq!(store.get("k", None).await.unwrap().value, b"v");
    let anonymous = valkeyrie::open(&format!("etcd://{}", etcd.addr())).await.unwrap();
    let err = anonymous.get("/authed/k", None).await.unwrap_err();
    assert!(matches!(err, Error::Backend { backend: "etcd", .. }), "{err:?}");
    let wrong = valkeyrie::open(&format!("etcd://{}?username=root&password=nope", etcd.addr())).await;
    assert!(wrong.is_err(), "a wrong password fails at open");
}

/// A server that stops answering: calls fail with NotReachable within about the configured timeout.
#[tokio::test]
async fn server_down_is_not_reachable_not_a_hang() {
    let mut etcd = EtcdServer::start();
    let store =
        valkeyrie::open(&format!("etcd://{}?timeout=1s&connect_timeout=500ms", etcd.addr())).await.unwrap();
    store.put("k", b"v", None).await.unwrap();
    etcd.kill();
    let started = Instant::now();
    let err = store.get("k", None).await.unwrap_err();
    assert!(matches!(err, Error::NotReachable { backend: "etcd", .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let err = valkeyrie::open(&format!("etcd://{}?connect_timeout=300ms&timeout=500ms", etcd.addr()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotReachable { .. }), "{err:?}");
}

/// A watch survives an etcd restart: after the server comes back, changes made then still arrive, in order.
#[tokio::test]
async fn watch_survives_a_restart() {
    use futures::StreamExt;
    let mut etcd = EtcdServer::start();
    let store =
        valkeyrie::open(&format!("etcd://{}?timeout=2s&connect_timeout=300ms", etcd.addr())).await.unwrap();
    let mut w = store.watch_tree("svc", None).await.unwrap();
    assert!(w.next().await.unwrap().unwrap().snapshot);
    store.put("svc/a", b"1", None).await.unwrap();
    etcd.kill();
    etcd.restart();
    // A put on a connection the old process closed fails as transient (it is not resent: it may not be
    // idempotent); the caller retries.
    let mut tries = 0;
    while let Err(e) = store.put("svc/b", b"2", None).await {
        assert!(e.is_transient(), "{e:?}");
        tries += 1;
        assert!(tries < 20, "etcd did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(20), w.next()).await.expect("events after restart") {
            Some(Ok(b)) => seen.extend(b.events.into_iter().map(|e| e.pair.key)),
            Some(Err(e)) => eprintln!("transient: {e}"),
            None => panic!("stream ended"),
        }
    }
    assert_eq!(seen, ["svc/a", "svc/b"]);
}

/// Discovery across an etcd restart: a registration outlives a short outage (its lease is renewed again
/// once the server is back), and the discovered set converges on the truth, including a service that
/// registered while the watcher was reconnecting.
#[tokio::test]
async fn discovery_resynchronises_after_a_restart() {
    use futures::StreamExt;
    let mut etcd = EtcdServer::start();
    let url = format!("etcd://{}?timeout=2s&connect_timeout=300ms", etcd.addr());
    let (a_store, b_store, watcher) = (
        valkeyrie::open(&url).await.unwrap(),
        valkeyrie::open(&url).await.unwrap(),
        valkeyrie::open(&url).await.unwrap(),
    );
    let a = valkeyrie::register(a_store, "svc", "a", "1", Duration::from_secs(6)).await.unwrap();
    let mut sets = valkeyrie::discover(&*watcher, "svc").await.unwrap();
    assert_eq!(sets.next().await.unwrap().unwrap().len(), 1);
    etcd.kill();
    etcd.restart();
    let b = loop {
        match valkeyrie::register(b_store.clone(), "svc", "b", "2", Duration::from_secs(6)).await {
            Ok(b) => break b,
            Err(e) => assert!(e.is_transient() || matches!(e, Error::Backend { .. }), "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "the set did not converge");
        match tokio::time::timeout(Duration::from_secs(20), sets.next()).await.expect("no update").unwrap() {
            Ok(set) if set.keys().collect::<Vec<_>>() == ["a", "b"] => break,
            _ => continue,
        }
    }
    // The registration that predates the restart is still being renewed: it outlives its TTL.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(!a.lost().is_lost());
    assert!(watcher.exists("svc/a", None).await.unwrap());
    drop((a, b));
}
