//! Crash loop: the `antietcd` binary with `--data_dir` serves transactional writes from concurrent clients
//! and is SIGKILLed at random moments, again and again. After every restart, every acknowledged write is
//! there, and no transaction is visible half-done (each writes two keys with the same value).
//!
//! CI runs 25 kills; the long run is `cargo test -p antietcd --test crash -- --ignored` (150 kills, or
//! `CRASH_LOOPS=N`).

#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use common::{antietcd_binary, free_port};
use rand::Rng;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENTS: usize = 8;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn start(dir: &Path, port: u16) -> Child {
    antietcd_binary(port, &["--data_dir", &dir.display().to_string()])
}

async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{base}/health")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every key and value in the store.
async fn read_all(http: &reqwest::Client, base: &str) -> HashMap<String, u64> {
    let body = json!({"key": B64.encode("\0"), "range_end": B64.encode("\0")});
    let resp: Value =
        http.post(format!("{base}/v3/kv/range")).json(&body).send().await.unwrap().json().await.unwrap();
    let mut out = HashMap::new();
    for kv in resp["kvs"].as_array().cloned().unwrap_or_default() {
        let key = String::from_utf8(B64.decode(kv["key"].as_str().unwrap()).unwrap()).unwrap();
        let value = String::from_utf8(B64.decode(kv["value"].as_str().unwrap_or("")).unwrap()).unwrap();
        out.insert(key, value.parse().unwrap());
    }
    out
}

/// One client: writes `c<i>/a` and `c<i>/b` together with a growing counter, recording what was
/// acknowledged, until told to stop or the server goes away.
async fn client(http: reqwest::Client, base: String, i: usize, acked: Arc<Mutex<Vec<u64>>>, mut n: u64) {
    loop {
        n += 1;
        let put = |k: &str| json!({"request_put": {"key": B64.encode(format!("c{i}/{k}")), "value": B64.encode(n.to_string())}});
        let body = json!({"success": [put("a"), put("b")]});
        match http.post(format!("{base}/v3/kv/txn")).json(&body).send().await {
            Ok(r) if r.status().is_success() => acked.lock().unwrap()[i] = n,
            _ => return, // the server died (or refused): this write was not acknowledged
        }
    }
}

async fn crash_loop(loops: usize) {
    let dir: PathBuf = std::env::temp_dir().join(format!("antietcd-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let acked = Arc::new(Mutex::new(vec![0u64; CLIENTS]));
    let mut total_acked = 0u64;
    let mut rng = rand::rng();
    for round in 0..=loops {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut child = start(&dir, port);
        wait_ready(&http, &base).await;
        // Check what the previous rounds left.
        let stored = read_all(&http, &base).await;
        let acked_now = acked.lock().unwrap().clone();
        for (i, &n) in acked_now.iter().enumerate() {
            let a = stored.get(&format!("c{i}/a")).copied().unwrap_or(0);
            let b = stored.get(&format!("c{i}/b")).copied().unwrap_or(0);
            assert_eq!(a, b, "round {round}: client {i}'s transaction is half-done ({a} vs {b})");
            assert!(a >= n, "round {round}: client {i} lost acknowledged write {n} (store has {a})");
        }
        if round == loops {
            child.kill().unwrap();
            let _ = child.wait();
            break;
        }
        // Write, then kill at a random moment.
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let start_at = stored.get(&format!("c{i}/a")).copied().unwrap_or(0);
                tokio::spawn(client(http.clone(), base.clone(), i, acked.clone(), start_at))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..150))).await;
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        for t in tasks {
            t.await.unwrap();
        }
        let sum: u64 = acked.lock().unwrap().iter().sum();
        total_acked = sum;
    }
    println!("{loops} kills, {total_acked} acknowledged transactions, none lost, none half-done");
    assert!(total_acked > loops as u64, "the clients barely wrote anything: {total_acked}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn loops(default: usize) -> usize {
    std::env::var("CRASH_LOOPS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_write() {
    crash_loop(loops(25)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long crash loop: cargo test -p antietcd --test crash -- --ignored"]
async fn long_sigkill_loop() {
    crash_loop(loops(150)).await;
}
