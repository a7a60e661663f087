//! Server benchmark, ratios measured in one run on one machine:
//! - put and range throughput (32 keep-alive HTTP/1.1 connections, 1,000 keys, 20-byte values, every put
//!   a new value) of our server vs Node antietcd 1.3.1 (memory mode) vs a trivial axum JSON endpoint,
//!   measured in turns (4 x 1 s each);
//! - websocket fan-out on one prefix: latency of a put reaching 1,000 and 10,000 watchers, vs a trivial
//!   websocket broadcast server; RSS per idle watcher. Watchers keep their sockets until every one has the
//!   last put, so that no socket's teardown weighs on the latency of the others.
//!
//! `cargo bench -p antietcd --bench server [-- --quick]` (`-- --only put|range|fan-out` for one row, to
//! profile it; `ANTIETCD_BIN=<binary>` measures another build of ours). Every server runs as its own process
//! (ours is the `antietcd` binary; the trivial servers are this binary re-executed); the load generator
//! runs here.
#![allow(clippy::unwrap_used, missing_docs)]

use base64::Engine as _;
use etcd_json::testing::free_port;
use futures::{SinkExt, StreamExt};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const CONNECTIONS: usize = 32;
const KEYS: usize = 1000;

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn spawn(mut cmd: Command, port: u16) -> Server {
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "server on port {port} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child, port }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

fn ours() -> Server {
    let port = free_port();
    // ANTIETCD_BIN: another build of ours (A/B comparisons).
    let bin = std::env::var_os("ANTIETCD_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_antietcd").into());
    let mut cmd = Command::new(bin);
    cmd.args(["--port", &port.to_string(), "--ip", "127.0.0.1", "--max_connections", "100000"]);
    Server::spawn(cmd, port)
}

fn node() -> Option<Server> {
    let dir = std::env::var_os("ANTIETCD_NODE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/node"));
    let bin = dir.join("node_modules/.bin/antietcd");
    if !bin.exists() {
        eprintln!("Node antietcd missing: npm install --prefix {} antietcd@1.3.1", dir.display());
        return None;
    }
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args(["--port", &port.to_string(), "--ip", "127.0.0.1"]);
    Some(Server::spawn(cmd, port))
}

fn trivial(kind: &str) -> Server {
    let port = free_port();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([kind, &port.to_string()]);
    Server::spawn(cmd, port)
}

/// A minimal keep-alive HTTP/1.1 client: one request at a time, reads the response by Content-Length.
struct Conn {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    buf: Vec<u8>,
}

impl Conn {
    async fn new(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.set_nodelay(true).unwrap();
        let (r, w) = s.into_split();
        Conn { reader: BufReader::new(r), writer: w, buf: Vec::new() }
    }

    async fn post(&mut self, path: &str, body: &str) -> u16 {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.writer.write_all(req.as_bytes()).await.unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).await.unwrap();
        let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut len = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line).await.unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        self.buf.resize(len, 0);
        self.reader.read_exact(&mut self.buf).await.unwrap();
        status
    }
}

/// Requests per second of `op` ("put" or "range") against `port` for `secs`.
async fn throughput(port: u16, op: &'static str, secs: f64) -> f64 {
    let counter = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let counter = counter.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut conn = Conn::new(port).await;
                let mut i = c * 7919;
                while Instant::now() < deadline {
                    i = i.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    let key = b64(format!("/bench/key{:04}", i % KEYS).as_bytes());
                    let (path, body) = if op == "put" {
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        let value = b64(format!("{n:020}").as_bytes());
                        ("/v3/kv/put", format!(r#"{{"key":"{key}","value":"{value}"}}"#))
                    } else {
                        ("/v3/kv/range", format!(r#"{{"key":"{key}"}}"#))
                    };
                    let status = conn.post(path, &body).await;
                    assert_eq!(status, 200, "{path} failed");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let start = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

async fn fill(port: u16) {
    let mut conn = Conn::new(port).await;
    for i in 0..KEYS {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            b64(format!("/bench/key{i:04}").as_bytes()),
            b64(format!("{i:020}").as_bytes())
        );
        conn.post("/v3/kv/put", &body).await;
    }
}

/// Connects `n` watchers on the prefix `/fan/`, then does `puts` puts; returns (p50, p99, max) of the
/// time from a put's send to each watcher's receipt, in ms, and the RSS growth per idle watcher in bytes.
async fn fan_out(server: &Server, n: usize, puts: usize) -> (f64, f64, f64, f64) {
    let port = server.port;
    let rss_before = server.rss_kib();
    let epoch = Instant::now();
    let sent_at = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n * puts)));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(n);
    // Every watcher keeps its socket until all have had the last put: a socket closing (on either side)
    // would otherwise weigh on the latency of the others still receiving it.
    let finished = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let ready = ready_tx.clone();
        let sent_at = sent_at.clone();
        let received = received.clone();
        let latencies = latencies.clone();
        let finished = finished.clone();
        tasks.push(tokio::spawn(async move {
            let url = format!("ws://127.0.0.1:{port}/watch");
            let (mut ws, _) = loop {
                match tokio_tungstenite::connect_async(url.as_str()).await {
                    Ok(c) => break c,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            };
            let req = format!(
                r#"{{"create_request":{{"key":"{}","range_end":"{}","watch_id":{}}}}}"#,
                b64(b"/fan/"),
                b64(b"/fan0"),
                i + 1
            );
            ws.send(tokio_tungstenite::tungstenite::Message::Text(req.into())).await.unwrap();
            let _created = ws.next().await;
            ready.send(()).await.unwrap();
            drop(ready);
            let mut mine = Vec::with_capacity(puts);
            while let Some(Ok(m)) = ws.next().await {
                if let tokio_tungstenite::tungstenite::Message::Text(_) = m {
                    let now = epoch.elapsed().as_nanos() as u64;
                    mine.push((now - sent_at.load(Ordering::Acquire)) as f64 / 1e6);
                    received.fetch_add(1, Ordering::AcqRel);
                    if mine.len() == puts {
                        break;
                    }
                }
            }
            latencies.lock().unwrap().extend(mine);
            finished.wait().await;
            drop(ws);
        }));
    }
    drop(ready_tx);
    for _ in 0..n {
        ready_rx.recv().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_per_watcher = (server.rss_kib().saturating_sub(rss_before)) as f64 * 1024.0 / n as f64;
    let mut conn = Conn::new(port).await;
    for p in 0..puts {
        let target = (p + 1) * n;
        sent_at.store(epoch.elapsed().as_nanos() as u64, Ordering::Release);
        let body =
            format!(r#"{{"key":"{}","value":"{}"}}"#, b64(b"/fan/k"), b64(format!("{p:020}").as_bytes()));
        conn.post("/v3/kv/put", &body).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while received.load(Ordering::Acquire) < target {
            assert!(Instant::now() < deadline, "fan-out stalled");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut l = latencies.lock().unwrap().clone();
    l.sort_by(|a, b| a.total_cmp(b));
    let pct = |q: f64| l[((l.len() as f64 * q) as usize).min(l.len() - 1)];
    (pct(0.5), pct(0.99), *l.last().unwrap(), rss_per_watcher)
}

fn trivial_http(port: u16) {
    use axum::routing::post;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let app = axum::Router::new().fallback(post(|body: axum::body::Bytes| async move {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let _ = v;
            ([("content-type", "application/json")], r#"{"header":{"revision":1}}"#)
        }));
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        serve_plain(l, app).await;
    });
}

async fn serve_plain(l: tokio::net::TcpListener, app: axum::Router) {
    loop {
        let (s, _) = l.accept().await.unwrap();
        let _ = s.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .with_upgrades()
                .await;
        });
    }
}

fn trivial_ws(port: u16) {
    use axum::extract::ws::{Message, WebSocketUpgrade};
    use axum::routing::post;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let (tx, _) = tokio::sync::broadcast::channel::<String>(1024);
        let tx2 = tx.clone();
        let put = move |body: axum::body::Bytes| {
            let tx = tx2.clone();
            async move {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let msg = serde_json::json!({"result":{"header":{"revision":1},"events":[{"type":"PUT","kv":{"key":v["key"],"value":v["value"]}}]}});
                let _ = tx.send(msg.to_string());
                ([("content-type", "application/json")], r#"{"header":{"revision":1}}"#)
            }
        };
        let watch = move |ws: WebSocketUpgrade| {
            let tx = tx.clone();
            async move {
                ws.read_buffer_size(4096).write_buffer_size(0).on_upgrade(move |mut socket| async move {
                    let mut rx = tx.subscribe();
                    loop {
                        tokio::select! {
                            m = socket.recv() => match m {
                                Some(Ok(Message::Text(_))) => {
                                    if socket.send(Message::Text(r#"{"result":{"created":true}}"#.into())).await.is_err() { return; }
                                }
                                Some(Ok(_)) => {}
                                _ => return,
                            },
                            b = rx.recv() => match b {
                                Ok(t) => if socket.send(Message::Text(t.into())).await.is_err() { return; },
                                Err(_) => return,
                            },
                        }
                    }
                })
            }
        };
        let app = axum::Router::new().route("/v3/kv/put", post(put)).fallback(watch);
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        serve_plain(l, app).await;
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--trivial-http") => return trivial_http(args[2].parse().unwrap()),
        Some("--trivial-ws") => return trivial_ws(args[2].parse().unwrap()),
        _ => {}
    }
    let quick = args.iter().any(|a| a == "--quick");
    let _ = rlimit::increase_nofile_limit(200_000);
    // Each server is measured `rounds` times `secs`, the three in turns, so that the machine's drift
    // (other load, the host's steal time) weighs on all three alike.
    let (secs, rounds) = if quick { (1.0, 1) } else { (1.0, 4) };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        println!("# antietcd server benchmark ({}), {CONNECTIONS} connections, {KEYS} keys", if quick { "quick" } else { "full" });
        let mut rows = Vec::new();
        let our = ours();
        fill(our.port).await;
        let nodejs = node();
        if let Some(n) = &nodejs {
            fill(n.port).await;
        }
        let triv = trivial("--trivial-http");
        // `-- --only put|range|fan-out`: that row alone (for profiling one path).
        let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).map(String::as_str);
        for op in ["put", "range"].into_iter().filter(|op| only.is_none_or(|o| o == *op)) {
            let (mut o, mut n, mut t) = (0.0, 0.0, 0.0);
            for _ in 0..rounds {
                o += throughput(our.port, op, secs).await / rounds as f64;
                n += match &nodejs {
                    Some(node) => throughput(node.port, op, secs).await / rounds as f64,
                    None => f64::NAN,
                };
                t += throughput(triv.port, op, secs).await / rounds as f64;
            }
            println!("{op:6} ours {o:9.0} req/s | Node {n:9.0} req/s | trivial axum {t:9.0} req/s | ours/Node {:.2}x | ours/axum {:.0}%", o / n, 100.0 * o / t);
            rows.push((op, o, n, t));
        }
        drop(triv);
        drop(nodejs);
        let sizes: &[usize] = match only {
            Some(o) if o != "fan-out" => &[],
            _ if quick => &[1000, 2000],
            _ => &[1000, 10000],
        };
        for &n in sizes {
            let puts = if quick { 10 } else { 30 };
            let server = ours();
            let (p50, p99, max, rss) = fan_out(&server, n, puts).await;
            drop(server);
            let triv = trivial("--trivial-ws");
            let (tp50, tp99, tmax, trss) = fan_out(&triv, n, puts).await;
            drop(triv);
            println!(
                "fan-out {n:5} watchers: ours p50 {p50:.1} ms p99 {p99:.1} ms max {max:.1} ms, {rss:.0} B RSS/watcher | trivial p50 {tp50:.1} p99 {tp99:.1} max {tmax:.1} ms, {trss:.0} B/socket | p99 ratio {:.2}",
                p99 / tp99
            );
        }
    });
}
