//! Locks under faults: tasks on several store handles contend for one lock while holders are cut off from
//! the server (their handle's network is blackholed through a proxy) in the middle of their critical
//! section. A checker verifies that fencing tokens strictly increase and that whenever a holder enters,
//! every earlier holder still inside has already been told it lost the lock: never two holders.
//!
//! CI runs a short version; the long one is `cargo test --test lock_faults -- --ignored` (120 s per
//! backend, or `LOCK_FAULT_SECS=N`).

#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used)]

mod support;

use rand::Rng;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::proxy::Proxy;
use tokio::time::{timeout, Instant};
use valkeyrie::{LockOptions, Lost, Store};

#[derive(Default)]
struct Checker {
    state: Mutex<CheckerState>,
}

#[derive(Default)]
struct CheckerState {
    last_token: u64,
    /// Holders inside their critical section: (task, handle, token, lost signal, long hold).
    inside: Vec<(usize, usize, u64, Lost, bool)>,
    acquisitions: u64,
    losses: u64,
    violations: Vec<String>,
}

impl Checker {
    fn enter(&self, task: usize, handle: usize, token: u64, lost: Lost, long: bool) {
        let mut st = self.state.lock().unwrap();
        if token <= st.last_token {
            let last = st.last_token;
            st.violations.push(format!("task {task}: token {token} not above {last}"));
        }
        st.last_token = st.last_token.max(token);
        let overlapping: Vec<String> = st
            .inside
            .iter()
            .filter(|(other, _, _, lost, _)| *other != task && !lost.is_lost())
            .map(|(other, _, t, _, _)| {
                format!("task {task} (token {token}) entered while task {other} (token {t}) still held")
            })
            .collect();
        st.violations.extend(overlapping);
        st.inside.retain(|h| h.0 != task);
        st.inside.push((task, handle, token, lost, long));
        st.acquisitions += 1;
    }

    fn exit(&self, task: usize, lost: bool) {
        let mut st = self.state.lock().unwrap();
        st.inside.retain(|h| h.0 != task);
        if lost {
            st.losses += 1;
        }
    }

    /// The handle of a holder in a long critical section, if any.
    fn long_holder(&self) -> Option<usize> {
        let st = self.state.lock().unwrap();
        st.inside.iter().find(|h| h.4 && !h.3.is_lost()).map(|h| h.1)
    }
}

async fn run(target: SocketAddr, scheme: &str, secs: u64) {
    const HANDLES: usize = 3;
    const TASKS_PER_HANDLE: usize = 2;
    let ttl = Duration::from_secs(2);
    let mut proxies = Vec::new();
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for _ in 0..HANDLES {
        let proxy = Proxy::start(target).await;
        let url = format!("{scheme}://{}?timeout=1s&connect_timeout=300ms&prefix=/lock-faults", proxy.addr);
        stores.push(valkeyrie::open(&url).await.unwrap());
        proxies.push(proxy);
    }
    let checker = Arc::new(Checker::default());
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for task in 0..HANDLES * TASKS_PER_HANDLE {
        let handle = task % HANDLES;
        let store = stores[handle].clone();
        let checker = checker.clone();
        tasks.push(tokio::spawn(async move {
            let lock = store.new_lock("resource", Some(LockOptions::new().with_ttl(ttl))).await.unwrap();
            let mut n = 0u64;
            while Instant::now() < end {
                let held = match timeout(Duration::from_secs(5), lock.lock()).await {
                    Ok(Ok(held)) => held,
                    // Cut off while waiting, or gave up: try again.
                    Ok(Err(_)) | Err(_) => {
                        let _ = lock.unlock().await;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                n += 1;
                // One acquisition in four holds longer than the TTL: the chaos task cuts those holders off.
                let long = n % 4 == 0;
                let hold =
                    if long { ttl * 2 } else { Duration::from_millis(rand::rng().random_range(10..80)) };
                checker.enter(task, handle, held.fencing_token(), held.lost(), long);
                let mut lost = held.lost();
                let was_lost = tokio::select! {
                    _ = tokio::time::sleep(hold) => false,
                    _ = lost.wait() => true,
                };
                checker.exit(task, was_lost);
                let _ = lock.unlock().await;
            }
        }));
    }
    // Chaos: whenever someone is in a long critical section, cut its handle off for longer than the TTL.
    let mut cuts = 0;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(handle) = checker.long_holder() {
            proxies[handle].set_cut(true);
            tokio::time::sleep(ttl + Duration::from_secs(1)).await;
            proxies[handle].set_cut(false);
            cuts += 1;
        }
    }
    for t in tasks {
        timeout(Duration::from_secs(30), t).await.expect("a task hung").unwrap();
    }
    let st = checker.state.lock().unwrap();
    println!(
        "{scheme}: {secs} s, {} acquisitions, {cuts} cuts, {} holders told they lost the lock, {} violations",
        st.acquisitions,
        st.losses,
        st.violations.len()
    );
    assert!(st.violations.is_empty(), "{:#?}", st.violations);
    assert!(st.acquisitions >= 10, "too few acquisitions to mean anything: {}", st.acquisitions);
    assert!(cuts >= 1 && st.losses >= 1, "the faults were not exercised: {cuts} cuts, {} losses", st.losses);
}

fn secs(default: u64) -> u64 {
    std::env::var("LOCK_FAULT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_holders_cut_off() {
    let etcd = etcd_json::testing::EtcdServer::start();
    run(etcd.addr(), "etcd", secs(12)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_antietcd_holders_cut_off() {
    let node = etcd_json::testing::NodeAntietcd::start();
    run(node.addr(), "antietcd", secs(12)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long soak: cargo test --test lock_faults -- --ignored"]
async fn long_etcd_holders_cut_off() {
    let etcd = etcd_json::testing::EtcdServer::start();
    run(etcd.addr(), "etcd", secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long soak: cargo test --test lock_faults -- --ignored"]
async fn long_node_antietcd_holders_cut_off() {
    let node = etcd_json::testing::NodeAntietcd::start();
    run(node.addr(), "antietcd", secs(120)).await;
}
