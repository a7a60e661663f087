//! Live configuration: a service keeps its settings in a directory and reacts to every change, starting
//! from the current settings; an operator changes them meanwhile.
//!
//! ```text
//! cargo run --example config_watch                         # embedded
//! cargo run --example config_watch -- etcd://127.0.0.1:2379 # any store URL
//! ```

use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;
use valkeyrie::EventKind;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "embedded://".to_owned());
    let store = valkeyrie::open(&url).await?;
    store.put("examples/config/log_level", b"info", None).await?;
    store.put("examples/config/workers", b"4", None).await?;

    let mut changes = store.watch_tree("examples/config", None).await?;
    let service = tokio::spawn(async move {
        let mut settings: BTreeMap<String, String> = BTreeMap::new();
        let mut applied = 0;
        while let Some(batch) = changes.next().await {
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    println!("service: {e} (a fresh snapshot follows)");
                    continue;
                }
            };
            if batch.snapshot {
                settings.clear();
            }
            for ev in batch.events {
                let name = ev.pair.key.trim_start_matches("examples/config/").to_owned();
                match ev.kind {
                    EventKind::Put => {
                        settings.insert(name, String::from_utf8_lossy(&ev.pair.value).into_owned())
                    }
                    _ => settings.remove(&name),
                };
            }
            println!(
                "service: revision {:>3} {}: {settings:?}",
                batch.revision,
                if batch.snapshot { "loaded " } else { "changed" }
            );
            applied += 1;
            if applied == 4 {
                break;
            }
        }
    });

    // The operator's changes.
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.put("examples/config/log_level", b"debug", None).await?;
    store.put("examples/config/feature_x", b"on", None).await?;
    store.delete("examples/config/workers").await?;

    tokio::time::timeout(Duration::from_secs(5), service).await??;
    store.delete_tree("examples/config").await?;
    store.close().await?;
    Ok(())
}
