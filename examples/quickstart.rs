//! valkeyrie in one minute: put, get, list, watch a key and a directory, take a lock.
//!
//! Runs on the embedded backend by default (nothing to install); pass any store URL to run it elsewhere:
//!
//! ```text
//! cargo run --example quickstart
//! cargo run --example quickstart -- etcd://127.0.0.1:2379
//! ```

use futures::StreamExt;
use std::time::Duration;
use valkeyrie::{EventKind, LockOptions, WriteOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "embedded://?prefix=/quickstart".to_owned());
    let store = valkeyrie::open(&url).await?;
    println!("opened {url} ({} backend)", store.backend());

    // Plain keys: every write gets a revision, the CAS token of atomic operations.
    let pair = store.put("config/log_level", b"info", None).await?;
    println!("put    config/log_level = info          (index {})", pair.last_index);
    let pair = store.get("config/log_level", None).await?;
    println!(
        "get    config/log_level = {}          (index {})",
        pair.value_str().unwrap_or("?"),
        pair.last_index
    );

    // Watch a key: the current value comes first, then every change, typed.
    let mut level = store.watch("config/log_level", None).await?;
    if let Some(ev) = level.next().await {
        let ev = ev?;
        println!("watch  now: {:?} {}", ev.kind, ev.pair.value_str().unwrap_or("?"));
    }
    let updated = store.atomic_put("config/log_level", b"debug", Some(&pair), None).await?;
    println!("cas    config/log_level = debug         (index {})", updated.last_index);
    if let Some(ev) = level.next().await {
        let ev = ev?;
        println!("watch  change: {:?} {}", ev.kind, ev.pair.value_str().unwrap_or("?"));
    }

    // Service discovery: instances register with a TTL kept alive while this store is open.
    let mut services = store.watch_tree("services/web", None).await?;
    let alive = Some(WriteOptions::new().with_ttl(Duration::from_secs(5)).with_keep_alive(true));
    store.put("services/web/10.0.0.1", b"up", alive.clone()).await?;
    store.put("services/web/10.0.0.2", b"up", alive).await?;
    store.delete("services/web/10.0.0.1").await?;
    // The snapshot (empty: nothing was registered yet), then one batch per change.
    for _ in 0..4 {
        let Some(batch) = services.next().await else { break };
        let batch = batch?;
        let what: Vec<String> = batch
            .events
            .iter()
            .map(|e| format!("{}{}", if e.kind == EventKind::Put { "+" } else { "-" }, e.pair.key))
            .collect();
        println!("tree   {} {}", if batch.snapshot { "snapshot" } else { "change  " }, what.join(" "));
    }
    println!(
        "list   services/web -> {:?}",
        store.list("services/web", None).await?.iter().map(|p| &p.key).collect::<Vec<_>>()
    );

    // Leader election with a lock: waits until acquired, renews in the background.
    let lock = store.new_lock("leader", Some(LockOptions::new().with_value("quickstart"))).await?;
    let held = lock.lock().await?;
    println!(
        "lock   acquired leader (fencing token {}, lost: {})",
        held.fencing_token(),
        held.lost().is_lost()
    );
    println!("get    leader = {}", store.get("leader", None).await?.value_str().unwrap_or("?"));
    lock.unlock().await?;
    println!("lock   released");

    store.close().await?;
    println!("closed");
    Ok(())
}
