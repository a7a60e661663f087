//! Service discovery: instances register with a lease kept alive while they run; a client streams the
//! current set of instances as they join, change and leave.
//!
//! ```text
//! cargo run --example service_discovery                              # embedded
//! cargo run --example service_discovery -- antietcd://127.0.0.1:2379 # any store URL
//! ```

use futures::StreamExt;
use std::time::Duration;
use valkeyrie::{discover, register};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "embedded://".to_owned());
    let store = valkeyrie::open(&url).await?;
    let ttl = Duration::from_secs(5);

    let mut instances = discover(&*store, "examples/services/api").await?;
    let client = tokio::spawn(async move {
        for _ in 0..6 {
            match instances.next().await {
                Some(Ok(set)) => {
                    let view: Vec<String> = set
                        .iter()
                        .map(|(name, addr)| format!("{name}={}", String::from_utf8_lossy(addr)))
                        .collect();
                    println!("client: {} instance(s): {}", set.len(), view.join(", "));
                }
                Some(Err(e)) => println!("client: error {e}"),
                None => break,
            }
        }
    });

    let a = register(store.clone(), "examples/services/api", "api-1", "10.0.0.1:8080", ttl).await?;
    println!("api-1 registered");
    let b = register(store.clone(), "examples/services/api", "api-2", "10.0.0.2:8080", ttl).await?;
    println!("api-2 registered");
    b.update("10.0.0.2:9090").await?;
    println!("api-2 moved to port 9090");
    a.deregister().await?;
    println!("api-1 shut down cleanly");
    drop(b);
    println!("api-2 dropped its registration");

    tokio::time::timeout(Duration::from_secs(5), client).await??;
    store.close().await?;
    Ok(())
}
