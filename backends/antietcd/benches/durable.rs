//! Durable write throughput, measured in one run against the peers: 32 keep-alive HTTP/1.1 connections
//! doing `/v3/kv/put` (each put a new value) against
//! - our `antietcd --data_dir` (write-ahead log, group commit),
//! - etcd 3.4 (Debian's `etcd-server`, its own WAL with fsync),
//! - Node antietcd 1.3.1 with `--data` (rewrites the whole gzip-JSON file per write),
//!
//! at 1,000 keys, then ours at 1,000,000 keys, and the restart time of ours with 1,000,000 keys.
//!
//! Run: `cargo bench -p antietcd --bench durable` (`-- --quick` for short runs). Needs etcd and Node
//! antietcd installed (`bash .ci/install-peers`).

#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use base64::Engine as _;
use common::{antietcd_binary, free_port};
use serde_json::json;
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const CONNECTIONS: usize = 32;

fn ours(dir: &Path, port: u16) -> Child {
    antietcd_binary(port, &["--data_dir", &dir.display().to_string()])
}

async fn wait_ready(http: &reqwest::Client, base: &str) -> Duration {
    let started = Instant::now();
    loop {
        let probe =
            http.post(format!("{base}/v3/kv/range")).json(&json!({"key": B64.encode("x")})).send().await;
        if probe.is_ok_and(|r| r.status().is_success()) {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{base} did not come up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Puts/s with `CONNECTIONS` concurrent writers over `keys` keys for `secs`.
async fn put_rate(base: &str, keys: u64, secs: f64) -> f64 {
    let http = reqwest::Client::builder().pool_max_idle_per_host(CONNECTIONS).build().unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for t in 0..CONNECTIONS as u64 {
        let (http, base, done) = (http.clone(), base.to_owned(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while Instant::now() < stop {
                let key = format!("/bench/key{:07}", (i * 7919) % keys);
                let body = json!({"key": B64.encode(key), "value": B64.encode(format!("{i:020}"))});
                let r = http.post(format!("{base}/v3/kv/put")).json(&body).send().await.unwrap();
                assert!(r.status().is_success(), "{}", r.status());
                done.fetch_add(1, Ordering::Relaxed);
                i += CONNECTIONS as u64;
            }
        }));
    }
    let started = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Loads `n` keys quickly: transactions of 100 puts (etcd allows at most 128 operations per transaction).
async fn preload(base: &str, n: u64) {
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for chunk in 0..n.div_ceil(100) {
        let (http, base) = (http.clone(), base.to_owned());
        tasks.push(tokio::spawn(async move {
            let ops: Vec<_> = (chunk * 100..((chunk + 1) * 100).min(n))
                .map(|i| json!({"request_put": {"key": B64.encode(format!("/bench/key{i:07}")), "value": B64.encode("initial-value-012345")}}))
                .collect();
            let r = http.post(format!("{base}/v3/kv/txn")).json(&json!({"success": ops})).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }));
        if tasks.len() >= 16 {
            for t in tasks.drain(..) {
                t.await.unwrap();
            }
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let secs = if quick { 1.5 } else { 5.0 };
    let big: u64 = if quick { 200_000 } else { 1_000_000 };
    let http = reqwest::Client::new();
    let tmp = std::env::temp_dir().join(format!("antietcd-bench-durable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();

    // Ours, 1k keys.
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = ours(&tmp.join("ours"), port);
    wait_ready(&http, &base).await;
    preload(&base, 1000).await;
    let ours_1k = put_rate(&base, 1000, secs).await;

    // Ours, big store.
    preload(&base, big).await;
    let ours_big = put_rate(&base, big, secs).await;
    server.kill().unwrap(); // SIGKILL: recovery replays the log since the last checkpoint
    let _ = server.wait();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = ours(&tmp.join("ours"), port);
    let restart = wait_ready(&http, &base).await;
    server.kill().unwrap();
    let _ = server.wait();

    // etcd 3.4.
    let etcd = etcd_json::testing::EtcdServer::start();
    let etcd_base = etcd.endpoint();
    preload(&etcd_base, 1000).await;
    let etcd_1k = put_rate(&etcd_base, 1000, secs).await;
    drop(etcd);

    // Node antietcd with --data.
    let node_file = tmp.join("node.json.gz");
    let node =
        etcd_json::testing::NodeAntietcd::start_with_args(&["--data", &node_file.display().to_string()]);
    let node_base = node.endpoint();
    preload(&node_base, 1000).await;
    let node_1k = put_rate(&node_base, 1000, secs.min(3.0)).await;
    drop(node);

    println!("\ndurable puts, {CONNECTIONS} keep-alive connections, each put a new 20-byte value ({secs} s per run)");
    println!("{:<44} {:>12} {:>22}", "server", "puts/s", "ratio");
    println!("{:<44} {:>12.0} {:>22}", "antietcd (ours) --data_dir, 1k keys", ours_1k, "");
    println!(
        "{:<44} {:>12.0} {:>22}",
        "etcd 3.4, 1k keys",
        etcd_1k,
        format!("ours/etcd = {:.2}x (>= 2)", ours_1k / etcd_1k)
    );
    println!(
        "{:<44} {:>12.0} {:>22}",
        "Node antietcd 1.3.1 --data, 1k keys",
        node_1k,
        format!("ours/node = {:.0}x (>= 50)", ours_1k / node_1k)
    );
    println!(
        "{:<44} {:>12.0} {:>22}",
        format!("antietcd (ours) --data_dir, {big} keys"),
        ours_big,
        format!("big/1k = {:.2} (>= 0.8)", ours_big / ours_1k)
    );
    println!(
        "restart of ours with {big} keys (SIGKILL, then until it serves): {:.2} s",
        restart.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
