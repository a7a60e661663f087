//! No task outlives its owner: everything a store starts (the engine's lease task, lease keepers, lock
//! monitors, watch streams) ends when the store is closed or dropped.

#![allow(clippy::unwrap_used)]

use futures::StreamExt;
use std::time::Duration;
use valkeyrie::{LockOptions, WriteOptions};

async fn alive() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

/// Waits (on paused time, so instantly) until the number of live tasks drops back to `baseline`.
async fn settles_to(baseline: usize, what: &str) {
    for _ in 0..200 {
        if alive().await == baseline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: {} tasks still alive, expected {baseline}", alive().await);
}

async fn busy_store(
    url: &str,
) -> (std::sync::Arc<dyn valkeyrie::Store>, valkeyrie::KeyWatch, valkeyrie::Lock) {
    let store = valkeyrie::open(url).await.unwrap();
    let opts = Some(WriteOptions::new().with_ttl(Duration::from_secs(2)).with_keep_alive(true));
    store.put("alive", b"x", opts).await.unwrap();
    let mut w = store.watch("alive", None).await.unwrap();
    w.next().await.unwrap().unwrap();
    let lock = store.new_lock("l", Some(LockOptions::new().with_ttl(Duration::from_secs(2)))).await.unwrap();
    lock.lock().await.unwrap();
    (store, w, lock)
}

/// close() stops every task the store started, even while the caller still holds its stream and lock.
#[tokio::test(start_paused = true)]
async fn close_stops_every_task() {
    let baseline = alive().await;
    let (store, mut w, lock) = busy_store("embedded://").await;
    assert!(alive().await > baseline, "the store runs background tasks");
    store.close().await.unwrap();
    assert!(w.next().await.is_none(), "the watch ended");
    settles_to(baseline, "after close").await;
    drop((lock, w, store));
    settles_to(baseline, "after drop").await;
}

/// Dropping every handle without close() also stops everything.
#[tokio::test(start_paused = true)]
async fn drop_stops_every_task() {
    let baseline = alive().await;
    let (store, w, lock) = busy_store("embedded://").await;
    drop(lock);
    drop(w);
    drop(store);
    settles_to(baseline, "after drop").await;
}
