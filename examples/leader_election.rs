//! Leader election: three candidates campaign for one role; each leads for a while, then resigns, and the
//! next one in line takes over. An observer prints every change of leader.
//!
//! ```text
//! cargo run --example leader_election                          # embedded
//! cargo run --example leader_election -- etcd://127.0.0.1:2379 # any store URL
//! ```

use futures::StreamExt;
use std::time::Duration;
use valkeyrie::Election;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "embedded://".to_owned());
    let store = valkeyrie::open(&url).await?;
    let election = Election::new(store.clone(), "examples/scheduler-leader").with_ttl(Duration::from_secs(5));

    let mut observer = election.observe().await?;
    let watcher = tokio::spawn(async move {
        let mut changes = 0;
        while let Some(leader) = observer.next().await {
            match leader {
                Ok(Some(pair)) => println!("observer: leader is now {:?}", pair.value_str().unwrap_or("?")),
                Ok(None) => println!("observer: no leader"),
                Err(e) => println!("observer: error {e}"),
            }
            changes += 1;
            if changes == 8 {
                break;
            }
        }
    });

    let mut candidates = Vec::new();
    for name in ["alpha", "bravo", "charlie"] {
        let election = election.clone();
        candidates.push(tokio::spawn(async move {
            let leadership = election.campaign(name).await?;
            println!("{name}: elected (fencing token {})", leadership.fencing_token());
            tokio::time::sleep(Duration::from_millis(200)).await;
            leadership.proclaim(format!("{name} (busy)")).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            println!("{name}: resigning");
            leadership.resign().await?;
            Ok::<_, valkeyrie::Error>(())
        }));
        // Campaign in a known order.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for c in candidates {
        c.await??;
    }
    tokio::time::timeout(Duration::from_secs(5), watcher).await??;
    store.close().await?;
    Ok(())
}
