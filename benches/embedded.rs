//! Throughput of the embedded store through the `Store` trait, from one task: get, put, atomic_put,
//! list of 1,000 keys and watch delivery. Prints ops/s against the targets of issue #2.
//!
//! Run: `cargo bench --bench embedded` (add `-- --quick` for a short run).

#![allow(clippy::unwrap_used)]

use futures::StreamExt;
use std::time::{Duration, Instant};

struct Row {
    name: &'static str,
    ops: u64,
    elapsed: Duration,
    target: Option<f64>,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let rows = rt.block_on(run(scale));
    println!(
        "\nembedded Store, one task, current-thread runtime ({} run)",
        if quick { "quick" } else { "full" }
    );
    println!("{:<28} {:>12} {:>14} {:>10}", "operation", "ops", "ops/s", "target");
    for r in rows {
        let rate = r.ops as f64 / r.elapsed.as_secs_f64();
        let target = match r.target {
            Some(t) => format!("{:.0}k {}", t / 1e3, if rate >= t { "met" } else { "MISSED" }),
            None => "-".into(),
        };
        println!("{:<28} {:>12} {:>14.0} {:>10}", r.name, r.ops, rate, target);
    }
}

async fn run(scale: u64) -> Vec<Row> {
    let store = valkeyrie::open("embedded://?compact_revisions=1000&watch_capacity=1000000").await.unwrap();
    let keys: Vec<String> = (0..1000).map(|i| format!("bench/key{i:04}")).collect();
    for k in &keys {
        store.put(k, b"01234567890123456789", None).await.unwrap();
    }
    let mut rows = Vec::new();

    let n = 2_000_000 / scale;
    let t = Instant::now();
    for i in 0..n {
        let pair = store.get(&keys[(i % 1000) as usize], None).await.unwrap();
        std::hint::black_box(pair);
    }
    rows.push(Row { name: "get", ops: n, elapsed: t.elapsed(), target: Some(1e6) });

    let n = 1_000_000 / scale;
    let t = Instant::now();
    for i in 0..n {
        // Every put changes the value (a fixed-width counter), as a real workload would.
        store.put(&keys[(i % 1000) as usize], format!("{i:020}").as_bytes(), None).await.unwrap();
    }
    rows.push(Row { name: "put (20-byte values)", ops: n, elapsed: t.elapsed(), target: Some(3e5) });

    let n = 500_000 / scale;
    let mut current: Vec<_> = Vec::with_capacity(1000);
    for k in &keys {
        current.push(store.get(k, None).await.unwrap());
    }
    let t = Instant::now();
    for i in 0..n {
        let slot = (i % 1000) as usize;
        current[slot] =
            store.atomic_put(&keys[slot], b"cas-value-0123456789", Some(&current[slot]), None).await.unwrap();
    }
    rows.push(Row { name: "atomic_put (CAS)", ops: n, elapsed: t.elapsed(), target: None });

    let n = 2_000 / scale;
    let t = Instant::now();
    for _ in 0..n {
        let all = store.list("bench", None).await.unwrap();
        assert_eq!(all.len(), 1000);
    }
    rows.push(Row { name: "list of 1,000 keys", ops: n, elapsed: t.elapsed(), target: None });

    let n = 200_000 / scale;
    let mut w = store.watch_tree("watched", None).await.unwrap();
    assert!(w.next().await.unwrap().unwrap().snapshot);
    let writer = store.clone();
    let t = Instant::now();
    let producer = tokio::spawn(async move {
        for i in 0..n {
            writer.put(&format!("watched/k{}", i % 100), b"v", None).await.unwrap();
            if i % 1024 == 0 {
                tokio::task::yield_now().await; // let the consumer keep up within its buffer
            }
        }
    });
    let mut received = 0;
    while received < n {
        received += w.next().await.unwrap().unwrap().events.len() as u64;
    }
    producer.await.unwrap();
    rows.push(Row { name: "watch: put -> event", ops: n, elapsed: t.elapsed(), target: None });
    store.close().await.unwrap();
    rows
}
