//! An antietcd cluster embedded in the application: every member is an `embedded://…?cluster=…` store
//! that runs an antietcd node inside its process. The members elect a raft leader among themselves; on
//! top of that, the candidates take turns through the `Election` recipe, and what each leader writes is
//! read back through every member.
//!
//! ```text
//! cargo run --example embedded_cluster            # three members inside this one process
//!
//! cargo run --example embedded_cluster -- n1      # or one member per process: run these three
//! cargo run --example embedded_cluster -- n2      #   in three terminals (127.0.0.1:23791..23793);
//! cargo run --example embedded_cluster -- n3      #   each exits once all three have led
//! ```

use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use valkeyrie::{Election, Store};

/// The members' ids.
const IDS: [&str; 3] = ["n1", "n2", "n3"];
/// The ports of the three-process mode.
const FIXED_PORTS: [u16; 3] = [23791, 23792, 23793];

/// The store URL of member `id` in a cluster on `ports` whose members share `key`.
fn member_url(id: &str, ports: &[u16; 3], key: &str) -> String {
    let cluster: Vec<String> =
        IDS.iter().zip(ports).map(|(id, port)| format!("{id}=http://127.0.0.1:{port}")).collect();
    let index = IDS.iter().position(|i| *i == id).unwrap_or(0);
    format!(
        "embedded://?node_id={id}&cluster={}&cluster_key={key}&listen=127.0.0.1:{}\
         &election_timeout=1s&heartbeat_timeout=200ms&leadership_timeout=600ms",
        cluster.join(","),
        ports[index],
    )
}

/// Waits until the cluster accepts writes (its members have elected a raft leader).
async fn ready(id: &str, store: &dyn Store) -> Result<(), valkeyrie::Error> {
    let start = Instant::now();
    loop {
        match store.put(&format!("examples/cluster/members/{id}"), b"up", None).await {
            Ok(_) => {
                println!("{id}: the cluster accepts writes ({} ms after start)", start.elapsed().as_millis());
                return Ok(());
            }
            // No raft leader yet (or no quorum yet: the other members are still starting).
            Err(e) if e.is_transient() && start.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => return Err(e),
        }
    }
}

/// One member's part: campaign, lead once (write through this member), resign, then wait until every
/// member has led, reading their writes through this member.
async fn take_a_turn(id: &str, store: Arc<dyn Store>) -> Result<(), valkeyrie::Error> {
    let election = Election::new(store.clone(), "examples/cluster/leader").with_ttl(Duration::from_secs(5));
    let leadership = election.campaign(id).await?;
    println!("{id}: elected through the Election recipe (fencing token {})", leadership.fencing_token());
    store.put("examples/cluster/config", format!("written by {id}").as_bytes(), None).await?;
    leadership.proclaim(format!("{id}, config written")).await?;
    store.put(&format!("examples/cluster/led/{id}"), b"yes", None).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("{id}: resigning");
    leadership.resign().await?;

    let mut led = store.watch_tree("examples/cluster/led", None).await?;
    while let Some(batch) = led.next().await {
        let batch = batch?;
        let seen = store.list("examples/cluster/led", None).await?;
        if !batch.snapshot || seen.len() == IDS.len() {
            let names: Vec<&str> =
                seen.iter().map(|p| p.key.rsplit('/').next().unwrap_or(p.key.as_str())).collect();
            println!("{id}: reads through its own member that {} led", names.join(", "));
        }
        if seen.len() == IDS.len() {
            break;
        }
    }
    Ok(())
}

/// Prints every change of leader as seen through `store`, and the configuration each leader wrote, read
/// through `store` too; returns after `leaders` leaders wrote it.
async fn observe(id: String, store: Arc<dyn Store>, leaders: usize) -> Result<(), valkeyrie::Error> {
    let election = Election::new(store.clone(), "examples/cluster/leader");
    let mut changes = election.observe().await?;
    let mut seen = 0;
    while let Some(leader) = changes.next().await {
        let Some(pair) = leader? else {
            println!("{id} (observer): no leader");
            continue;
        };
        let value = pair.value_str().unwrap_or("?").to_owned();
        let Some(leader) = value.strip_suffix(", config written") else {
            println!("{id} (observer): leader is {value}");
            continue;
        };
        let config = store.get("examples/cluster/config", None).await?;
        let config = String::from_utf8_lossy(&config.value).into_owned();
        println!("{id} (observer): {leader} proclaims it wrote the config; read through {id}: {config:?}");
        seen += 1;
        if seen == leaders {
            return Ok(());
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::args().nth(1) {
        None => in_one_process().await,
        Some(id) if IDS.contains(&id.as_str()) => one_of_three_processes(&id).await,
        Some(other) => Err(format!("unknown member {other:?}: give n1, n2 or n3 (or nothing)").into()),
    }
}

/// Three members inside this process, on free loopback ports.
async fn in_one_process() -> Result<(), Box<dyn std::error::Error>> {
    let mut ports = [0u16; 3];
    for port in &mut ports {
        *port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    }
    // A key of this run's own: no other cluster's node can join, even on reused ports.
    let key = format!("example-{}", std::process::id());
    let mut stores = Vec::new();
    for (id, port) in IDS.iter().zip(ports) {
        println!("{id}: starting a member on 127.0.0.1:{port}");
        stores.push(valkeyrie::open(&member_url(id, &ports, &key)).await?);
    }
    ready("n1", &*stores[0]).await?;
    // The third member watches the election; each member takes a turn as leader.
    let observer = tokio::spawn(observe("n3".to_owned(), stores[2].clone(), IDS.len()));
    let mut turns = Vec::new();
    for (id, store) in IDS.iter().zip(&stores) {
        turns.push(tokio::spawn(take_a_turn(id, store.clone())));
        tokio::time::sleep(Duration::from_millis(50)).await; // campaign in a known order
    }
    for turn in turns {
        turn.await??;
    }
    tokio::time::timeout(Duration::from_secs(10), observer).await???;
    for (id, store) in IDS.iter().zip(&stores) {
        store.close().await?;
        println!("{id}: closed (its node is shut down)");
    }
    Ok(())
}

/// Member `id` of a cluster of three processes on 127.0.0.1:23791..23793.
async fn one_of_three_processes(id: &str) -> Result<(), Box<dyn std::error::Error>> {
    println!("{id}: starting a member; start the two others with the other ids");
    let store = valkeyrie::open(&member_url(id, &FIXED_PORTS, "example-secret")).await?;
    ready(id, &*store).await?;
    let observer = tokio::spawn(observe(id.to_owned(), store.clone(), IDS.len()));
    take_a_turn(id, store.clone()).await?;
    observer.abort();
    // Stay a member a little longer, so that the others can finish reading with a quorum.
    tokio::time::sleep(Duration::from_secs(2)).await;
    store.close().await?;
    println!("{id}: closed");
    Ok(())
}
