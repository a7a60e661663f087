//! Throughput of the client against a throwaway etcd, compared with `wrk`.
//!
//! 32 concurrent tasks share one [`Client`] and issue `put`, then `range`, for a fixed
//! time each; when `wrk` is installed it sends the same JSON requests to the same etcd
//! with 32 connections, and the table shows the client's share of wrk's rate.
//!
//! ```text
//! cargo bench -p etcd-json --bench client            # 5 s per measurement
//! BENCH_SECS=10 cargo bench -p etcd-json --bench client
//! ```
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_json::testing::EtcdServer;
use etcd_json::{Client, ClientOptions};

const TASKS: usize = 32;
const KEY: &str = "bench/key";

/// Runs `op` on `TASKS` tasks for `secs` seconds; returns operations per second.
async fn measure<F, Fut>(client: &Client, secs: u64, op: F) -> f64
where
    F: Fn(Client) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (client, count, op) = (client.clone(), count.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                op(client.clone()).await;
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Runs wrk with 32 connections posting `body` to `url`; returns requests per second.
fn wrk(url: &str, body: &str, secs: u64) -> Option<f64> {
    let dir = std::env::temp_dir().join(format!("etcd-json-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{body}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
        ),
    )
    .ok()?;
    let output = std::process::Command::new("wrk")
        .args(["-t2", &format!("-c{TASKS}"), &format!("-d{secs}s"), "-s"])
        .arg(&script)
        .arg(url)
        .output()
        .ok()?;
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&output.stdout);
    if text.contains("Non-2xx") {
        eprintln!("wrk got errors:\n{text}");
    }
    text.lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn main() {
    let secs: u64 = std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let etcd = EtcdServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let value = "x".repeat(100);

    let (client_put, client_range) = runtime.block_on(async {
        let client = Client::connect([etcd.endpoint()], ClientOptions::new()).await.unwrap();
        client.put(KEY, value.clone(), None).await.unwrap();
        let v = value.clone();
        let put = measure(&client, secs, move |c| {
            let v = v.clone();
            async move {
                c.put(KEY, v, None).await.unwrap();
            }
        })
        .await;
        let range = measure(&client, secs, |c| async move {
            let r = c.range(KEY, None).await.unwrap();
            assert_eq!(r.kvs.len(), 1);
        })
        .await;
        (put, range)
    });

    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let put_body = format!(r#"{{"key":"{}","value":"{}"}}"#, b64(KEY), b64(&value));
    let range_body = format!(r#"{{"key":"{}"}}"#, b64(KEY));
    let endpoint = etcd.endpoint();
    let wrk_put = wrk(&format!("{endpoint}/v3/kv/put"), &put_body, secs);
    let wrk_range = wrk(&format!("{endpoint}/v3/kv/range"), &range_body, secs);

    println!(
        "etcd-json client vs wrk, {TASKS} concurrent tasks/connections, {secs} s each, etcd on loopback"
    );
    println!("| op    | client ops/s | wrk req/s | client / wrk |");
    println!("|-------|-------------:|----------:|-------------:|");
    for (name, ours, theirs) in [("put", client_put, wrk_put), ("range", client_range, wrk_range)] {
        match theirs {
            Some(w) => println!("| {name:<5} | {ours:>12.0} | {w:>9.0} | {:>11.0}% |", 100.0 * ours / w),
            None => println!("| {name:<5} | {ours:>12.0} | {:>9} | {:>12} |", "n/a", "n/a"),
        }
    }
    if wrk_put.is_none() {
        println!("(wrk not found: apt-get install -y wrk)");
    }
}
