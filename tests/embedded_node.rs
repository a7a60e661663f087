//! `embedded:///path` (persistent) and `embedded://?listen=ip:port` (serving the antietcd API from inside
//! the application): data survives a close and reopen, other processes' clients see the same store, and a
//! disk that cannot be written refuses writes instead of acknowledging them.

#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used)]

use etcd_json::testing::free_port;
use futures::StreamExt;
use std::path::PathBuf;
use valkeyrie::{Error, EventKind};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("valkeyrie-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Everything acknowledged is there after close and reopen, and revisions continue from where they were.
#[tokio::test]
async fn persistent_store_survives_reopen() {
    let dir = temp_dir("persist");
    let url = format!("embedded://{}?prefix=/app", dir.join("data.gz").display());
    let store = valkeyrie::open(&url).await.unwrap();
    store.put("a", b"1", None).await.unwrap();
    let b = store.put("dir/b", b"2", None).await.unwrap();
    store.put("gone", b"x", None).await.unwrap();
    store.delete("gone").await.unwrap();
    assert!(dir.join("data.gz").exists(), "a write is on disk before it is acknowledged");
    store.close().await.unwrap();

    let store = valkeyrie::open(&url).await.unwrap();
    assert_eq!(store.get("a", None).await.unwrap().value, b"1");
    assert_eq!(store.list("dir", None).await.unwrap()[0].last_index, b.last_index);
    assert!(matches!(store.get("gone", None).await, Err(Error::KeyNotFound { .. })));
    let next = store.put("c", b"3", None).await.unwrap();
    assert!(next.last_index > b.last_index, "revisions continue");
    store.close().await.unwrap();
}

/// The durable mode (`embedded:///dir`): a crash (no close) loses nothing acknowledged, and leases with
/// their keys survive the restart.
#[tokio::test]
async fn durable_store_survives_a_crash() {
    let dir = temp_dir("durable");
    let url = format!("embedded://{}", dir.join("store").display());
    let store = valkeyrie::open(&url).await.unwrap();
    let mut last = 0;
    for i in 0..200 {
        last = store.put(&format!("k{}", i % 20), i.to_string().as_bytes(), None).await.unwrap().last_index;
    }
    let lease = store.grant_lease(std::time::Duration::from_secs(60)).await.unwrap();
    store.put("leased", b"x", Some(valkeyrie::WriteOptions::new().with_lease(lease.id()))).await.unwrap();
    std::mem::forget(lease); // a crash does not revoke it
    drop(store); // no close: as if the process died
    assert!(dir.join("store").is_dir(), "a directory of log segments");

    let store = valkeyrie::open(&url).await.unwrap();
    assert_eq!(store.get("k19", None).await.unwrap().value, b"199");
    let leased = store.get("leased", None).await.unwrap();
    assert!(leased.lease.is_some(), "the key is still attached to its lease");
    assert!(store.put("next", b"x", None).await.unwrap().last_index > last);
    store.close().await.unwrap();
}

/// A store that listens serves the antietcd API: a client of the server sees its writes and watches them,
/// and the embedding application sees the client's.
#[tokio::test]
async fn listening_store_serves_clients() {
    let port = free_port();
    let embedded = valkeyrie::open(&format!("embedded://?listen=127.0.0.1:{port}")).await.unwrap();
    let client = valkeyrie::open(&format!("antietcd://127.0.0.1:{port}")).await.unwrap();
    let mut w = client.watch("shared/key", None).await.unwrap();
    assert_eq!(w.next().await.unwrap().unwrap().kind, EventKind::Delete);
    embedded.put("shared/key", b"from the app", None).await.unwrap();
    let ev = w.next().await.unwrap().unwrap();
    assert_eq!((ev.kind, ev.pair.value.as_slice()), (EventKind::Put, &b"from the app"[..]));
    client.put("shared/other", b"from a client", None).await.unwrap();
    assert_eq!(embedded.get("shared/other", None).await.unwrap().value, b"from a client");
    // A lock taken in the app excludes the remote client.
    let lock = embedded.new_lock("shared/lock", None).await.unwrap();
    lock.lock().await.unwrap();
    let theirs = client.new_lock("shared/lock", None).await.unwrap();
    assert!(tokio::time::timeout(std::time::Duration::from_millis(500), theirs.lock()).await.is_err());
    lock.unlock().await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), theirs.lock()).await.unwrap().unwrap();
    embedded.close().await.unwrap();
    // The server went with the store that owned it.
    let err = client.get("shared/key", None).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

/// A data file that cannot be written: the write is refused with an error, never acknowledged, and so is
/// every later write; reads still work.
#[tokio::test]
async fn unwritable_disk_refuses_writes() {
    let dir = temp_dir("nodisk");
    let url = format!("embedded://{}", dir.join("missing-subdir/data.gz").display());
    let store = valkeyrie::open(&url).await.unwrap();
    let err = store.put("k", b"v", None).await.unwrap_err();
    assert!(matches!(err, Error::Backend { backend: "embedded", .. }), "{err:?}");
    let err = store.put("k2", b"v", None).await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(store.list("", None).await.is_ok(), "reads still work");
    store.close().await.unwrap();
}
