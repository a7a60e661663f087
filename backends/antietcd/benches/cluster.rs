//! Cluster benchmark, ratios measured in one run on one machine (issue 5's performance targets):
//! - write throughput of a 3-node cluster of our `antietcd` binary relative to one node: keep-alive HTTP/1.1
//!   clients doing `/v3/kv/put` (1,000 keys, 20-byte values, each put a new value), spread over the three
//!   nodes (followers forward to the leader) and all on the leader; in memory and with `--data_dir`. Every
//!   row is measured at two loads, 32 and 128 clients ([`LOADS`]); the target (3 nodes >= 40% of one node)
//!   is judged on peak throughput, the best of the two loads of each configuration, and the ratios at each
//!   load are printed beside it. The same for Node antietcd 1.3.1 side by side (with `--data` for its
//!   persistence, the only mode it has);
//! - failover: the time from SIGKILL of the leader to the first successful put through a surviving node,
//!   for ours and for Node's (target for ours: <= election_timeout + 1 s; the election timeout used is
//!   printed).
//!
//! Run: `cargo bench -p antietcd --bench cluster` (`-- --quick` for short runs, `-- --election_timeout MS`
//! for other timings: heartbeat is a fifth of it, leadership the mean of the two). Every server is its own
//! process (ours: the `antietcd` binary; Node: `.cache/node/node_modules/.bin/antietcd`, installed by
//! `bash .ci/install-peers`; without it the Node column is skipped); the load generator runs here. On a
//! 2-core machine the three nodes and the load generator share the CPUs, so the ratios say how much the
//! cluster costs per write on the same hardware, not how it scales across machines. The single node and the
//! cluster of one implementation run side by side and are measured in turns (3 rounds of 2 s per load), so
//! that other load on the machine weighs on both alike; the load average is printed before and after. The
//! last column is the servers' CPU time per successful put (user + system; for 3 nodes `all/leader`, every
//! process together and the leader's part; ours|Node): what a write costs whatever else the machine was
//! doing, and, through the leader's part, about what one leader could sustain on a core of its own.

#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use base64::Engine as _;
use common::free_port;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The put loads, in concurrent clients: each row is measured at each. A fixed load measures how many puts
/// that many clients get through, which for a pipeline as long as a cluster's is partly its latency; the
/// larger one is near where both one node and the cluster stop gaining (32, 64, 128 and 256 clients were
/// tried on 2026-12-04), so the best of the two is the throughput the target is judged on.
const LOADS: [usize; 2] = [32, 128];
const KEYS: usize = 1000;
/// How long one request may take before the client counts an error and reconnects.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Which server implementation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Impl {
    Ours,
    Node,
}

impl Impl {
    fn binary(self) -> Option<PathBuf> {
        match self {
            // ANTIETCD_BIN: another build of ours (A/B comparisons).
            Impl::Ours => Some(
                std::env::var_os("ANTIETCD_BIN")
                    .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_antietcd")), PathBuf::from),
            ),
            Impl::Node => {
                let bin = common::node_dir().join("node_modules/.bin/antietcd");
                bin.exists().then_some(bin)
            }
        }
    }

    /// The persistence flag and its value for a node whose state lives under `dir`.
    fn data_args(self, dir: &Path) -> [String; 2] {
        match self {
            Impl::Ours => ["--data_dir".into(), dir.display().to_string()],
            Impl::Node => ["--data".into(), dir.join("data.json.gz").display().to_string()],
        }
    }
}

/// The cluster timings (milliseconds), the same for both implementations.
#[derive(Clone, Copy)]
struct Timings {
    election: u64,
    heartbeat: u64,
    leadership: u64,
}

impl Timings {
    fn new(election: u64) -> Timings {
        let heartbeat = (election / 5).max(1);
        Timings { election, heartbeat, leadership: (election + heartbeat) / 2 }
    }
}

/// One server process on 127.0.0.1, killed (SIGKILL) on drop.
struct Proc {
    child: Child,
    port: u16,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(bin: &Path, port: u16, args: &[String]) -> Proc {
    let child = Command::new(bin)
        .args(["--port", &port.to_string(), "--ip", "127.0.0.1"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    Proc { child, port }
}

/// The CPU seconds (user + system) `procs` have used so far, from `/proc/<pid>/stat` (0 where unreadable).
fn cpu_secs(procs: &[Proc]) -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().ok();
        out.and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).unwrap_or(100.0)
    });
    procs
        .iter()
        .map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.child.id())).unwrap_or_default();
            // Fields after the command name (which is in parentheses): state is field 3, utime 14, stime 15.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (field(14) + field(15)) / ticks
        })
        .sum()
}

/// A fresh, empty directory for one configuration's data.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("antietcd-bench-cluster-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A single node of `imp`, persisted under `data` if given.
fn single(imp: Impl, data: Option<&Path>) -> Proc {
    let mut args = Vec::new();
    if imp == Impl::Ours {
        args.extend(["--max_connections".to_owned(), "100000".to_owned()]);
    }
    if let Some(d) = data {
        std::fs::create_dir_all(d).unwrap();
        args.extend(imp.data_args(d));
    }
    spawn(&imp.binary().unwrap(), free_port(), &args)
}

/// Three nodes of `imp` on 127.0.0.1 (n1..n3), each persisted under `data/nI` if given.
fn cluster(imp: Impl, data: Option<&Path>, t: Timings) -> Vec<Proc> {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let spec = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("n{}=http://127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    (0..3)
        .map(|i| {
            let mut args: Vec<String> = vec![
                "--node_id".into(),
                format!("n{}", i + 1),
                "--cluster".into(),
                spec.clone(),
                "--cluster_key".into(),
                "bench".into(),
                "--election_timeout".into(),
                t.election.to_string(),
                "--heartbeat_timeout".into(),
                t.heartbeat.to_string(),
                // Always explicit: Node computes the default by concatenating strings.
                "--leadership_timeout".into(),
                t.leadership.to_string(),
                "--reconnect_interval".into(),
                "100".into(),
            ];
            if imp == Impl::Ours {
                args.extend(["--max_connections".to_owned(), "100000".to_owned()]);
            }
            if let Some(d) = data {
                let dir = d.join(format!("n{}", i + 1));
                std::fs::create_dir_all(&dir).unwrap();
                args.extend(imp.data_args(&dir));
            }
            spawn(&imp.binary().unwrap(), ports[i], &args)
        })
        .collect()
}

/// A minimal keep-alive HTTP/1.1 client: one request at a time, reads the response by Content-Length.
struct Conn {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    buf: Vec<u8>,
}

impl Conn {
    async fn new(port: u16) -> std::io::Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Conn { reader: BufReader::new(r), writer: w, buf: Vec::new() })
    }

    /// POSTs `body`; the status and the response body.
    async fn post(&mut self, path: &str, body: &str) -> std::io::Result<(u16, &[u8])> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.writer.write_all(req.as_bytes()).await?;
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut len = 0usize;
        loop {
            line.clear();
            if self.reader.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        self.buf.resize(len, 0);
        self.reader.read_exact(&mut self.buf).await?;
        Ok((status, &self.buf))
    }

    /// A put of `value` at key number `key`, within [`REQUEST_TIMEOUT`]; the status (0: failed).
    async fn put(&mut self, key: usize, value: u64) -> u16 {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            b64(format!("/bench/key{key:04}").as_bytes()),
            b64(format!("{value:020}").as_bytes())
        );
        match tokio::time::timeout(REQUEST_TIMEOUT, self.post("/v3/kv/put", &body)).await {
            Ok(Ok((status, _))) => status,
            _ => 0,
        }
    }
}

/// One POST on a fresh connection: the status and the body (as JSON, or a JSON string of its text);
/// `None` on any failure.
async fn post_once(port: u16, path: &str, body: &str) -> Option<(u16, Value)> {
    let attempt = async {
        let mut c = Conn::new(port).await.ok()?;
        let (status, text) = c.post(path, body).await.ok()?;
        let body = serde_json::from_slice(text)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(text).trim().to_owned()));
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt).await.ok().flatten()
}

/// Waits until `/v3/maintenance/status` answers on every port.
async fn wait_up(procs: &[Proc]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for p in procs {
        while post_once(p.port, "/v3/maintenance/status", "{}").await.is_none() {
            assert!(Instant::now() < deadline, "the server on port {} did not start", p.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until the live nodes agree on one leader (`raftState`, `leader`, `raftTerm` of the status);
/// returns its index in `procs`.
async fn wait_leader(procs: &[Proc], live: &[usize], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let mut statuses = Vec::new();
        for &i in live {
            if let Some((200, v)) = post_once(procs[i].port, "/v3/maintenance/status", "{}").await {
                statuses.push((i, v));
            }
        }
        if statuses.len() == live.len() {
            let leaders: Vec<_> = statuses.iter().filter(|(_, s)| s["raftState"] == "leader").collect();
            if let [(l, ls)] = leaders[..] {
                let id = &ls["header"]["member_id"];
                if statuses.iter().all(|(_, s)| s["leader"] == *id && s["raftTerm"] == ls["raftTerm"]) {
                    return *l;
                }
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a put through each of `ports` succeeds; the last failure otherwise (the measurement then
/// runs anyway and counts errors).
async fn wait_writable(ports: &[u16], within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    for &port in ports {
        loop {
            let body = format!(r#"{{"key":"{}","value":"{}"}}"#, b64(b"/bench/ready"), b64(b"1"));
            match post_once(port, "/v3/kv/put", &body).await {
                Some((200, _)) => break,
                other if Instant::now() >= deadline => {
                    let why = other.map_or_else(|| "no answer".to_owned(), |(s, b)| format!("{s} {b}"));
                    return Some(format!("port {port} was not writable within {within:?}: {why}"));
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    None
}

/// Fills the key space once through `port`, so every measured put overwrites a key.
async fn fill(port: u16) {
    let Ok(mut c) = Conn::new(port).await else { return };
    for i in 0..KEYS {
        c.put(i, i as u64).await;
    }
}

/// Successful puts, failed puts and the seconds measured, with `clients` clients, client `c` on
/// `ports[c % ports.len()]`, for `secs`.
async fn put_rate(ports: &[u16], clients: usize, secs: f64) -> (u64, u64, f64) {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (ok, errors, next) = (ok.clone(), errors.clone(), next.clone());
            let port = ports[c % ports.len()];
            tokio::spawn(async move {
                let mut conn = None;
                let mut i = c * 7919;
                while Instant::now() < deadline {
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => match Conn::new(port).await {
                            Ok(c) => conn.insert(c),
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        },
                    };
                    i = i.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    match c.put(i % KEYS, next.fetch_add(1, Ordering::Relaxed)).await {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        0 => {
                            conn = None;
                            errors.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (ok.load(Ordering::Relaxed), errors.load(Ordering::Relaxed), start.elapsed().as_secs_f64())
}

/// One throughput figure: successful and failed puts over the measured time, and a note if the servers
/// were not writable before the measurement.
#[derive(Clone, Debug, Default)]
struct Rate {
    ok: u64,
    errors: u64,
    secs: f64,
    /// CPU seconds (user + system) the server processes used while measured.
    cpu: f64,
    /// The part of `cpu` the leader used (the single node: all of it).
    cpu_leader: f64,
    note: Option<String>,
}

impl Rate {
    fn missing() -> Rate {
        Rate::default()
    }

    /// Successful puts per second (NaN if nothing was measured).
    fn per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.ok as f64 / self.secs
        } else {
            f64::NAN
        }
    }

    /// Adds one measurement of [`put_rate`].
    fn add(&mut self, (ok, errors, secs): (u64, u64, f64), cpu: f64, cpu_leader: f64) {
        self.ok += ok;
        self.errors += errors;
        self.secs += secs;
        self.cpu += cpu;
        self.cpu_leader += cpu_leader;
    }

    /// Server CPU microseconds per successful put: every process of the configuration together, and the
    /// leader's part (`total/leader`; a single node: its total).
    fn cpu_per_put(&self) -> String {
        if self.ok == 0 {
            return "-".into();
        }
        let per = |cpu: f64| cpu * 1e6 / self.ok as f64;
        if (self.cpu - self.cpu_leader).abs() < f64::EPSILON {
            format!("{:.0}", per(self.cpu))
        } else {
            format!("{:.0}/{:.0}", per(self.cpu), per(self.cpu_leader))
        }
    }

    fn cell(&self, single: Option<&Rate>) -> String {
        if self.per_sec().is_nan() {
            return "-".into();
        }
        let mut s = format!("{:.0}", self.per_sec());
        if let Some(single) = single.filter(|r| r.per_sec() > 0.0) {
            s += &format!(" ({:.0}%)", 100.0 * self.per_sec() / single.per_sec());
        }
        if self.errors > 0 {
            s += &format!(" [{} failed]", self.errors);
        }
        s
    }
}

/// Throughput of `imp` on one node, on three with the clients spread over all of them (followers forward to
/// the leader) and on three with every client on the leader, in memory or persisted. The single node and
/// the cluster run side by side (idle while not measured) and the three configurations are measured in
/// turns, `rounds` times `secs` each, so that load from elsewhere on the machine weighs on all three alike.
/// One `[single, spread, leader]` per load of [`LOADS`].
async fn rates(imp: Impl, durable: bool, t: Timings, secs: f64, rounds: usize) -> Vec<[Rate; 3]> {
    let mut out = vec![[Rate::missing(), Rate::missing(), Rate::missing()]; LOADS.len()];
    if imp.binary().is_none() {
        return out;
    }
    let dir = durable.then(|| scratch(&format!("{imp:?}")));
    let one = single(imp, dir.as_ref().map(|d| d.join("single")).as_deref());
    let three = cluster(imp, dir.as_ref().map(|d| d.join("cluster")).as_deref(), t);
    wait_up(std::slice::from_ref(&one)).await;
    wait_up(&three).await;
    let leader = wait_leader(&three, &[0, 1, 2], Duration::from_secs(30)).await;
    let all: Vec<u16> = three.iter().map(|p| p.port).collect();
    out[0][0].note = wait_writable(&[one.port], Duration::from_secs(20)).await;
    out[0][1].note = wait_writable(&all, Duration::from_secs(20)).await;
    fill(one.port).await;
    fill(three[leader].port).await;
    for _ in 0..rounds {
        for (load, &clients) in out.iter_mut().zip(&LOADS) {
            let cpu = cpu_secs(std::slice::from_ref(&one));
            let r = put_rate(&[one.port], clients, secs).await;
            let used = cpu_secs(std::slice::from_ref(&one)) - cpu;
            load[0].add(r, used, used);
            for (row, ports) in [(1, None), (2, Some(()))] {
                let leader = wait_leader(&three, &[0, 1, 2], Duration::from_secs(30)).await;
                let ports = match ports {
                    None => all.clone(),
                    Some(()) => vec![three[leader].port],
                };
                if let Some(note) = wait_writable(&ports, Duration::from_secs(20)).await {
                    load[row].note = Some(note);
                }
                let lead = std::slice::from_ref(&three[leader]);
                let (cpu, cpu_leader) = (cpu_secs(&three), cpu_secs(lead));
                let r = put_rate(&ports, clients, secs).await;
                load[row].add(r, cpu_secs(&three) - cpu, cpu_secs(lead) - cpu_leader);
            }
        }
    }
    drop(one);
    drop(three);
    if let Some(d) = dir {
        let _ = std::fs::remove_dir_all(d);
    }
    out
}

/// SIGKILL the leader of a fresh 3-node cluster of `imp` (in memory) and time the first successful put
/// through either survivor (both are tried continuously, each on its own connection).
async fn failover(imp: Impl, t: Timings) -> Option<Duration> {
    imp.binary()?;
    let mut procs = cluster(imp, None, t);
    wait_up(&procs).await;
    let leader = wait_leader(&procs, &[0, 1, 2], Duration::from_secs(30)).await;
    if let Some(note) = wait_writable(&[procs[leader].port], Duration::from_secs(20)).await {
        eprintln!("failover {imp:?}: {note}");
    }
    // Let the cluster settle (followers synced, connections warm) before the fault.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let survivors: Vec<u16> = (0..3).filter(|&i| i != leader).map(|i| procs[i].port).collect();
    let _ = procs[leader].child.kill(); // SIGKILL
    let killed = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Instant>(2);
    let deadline = killed + Duration::from_secs(30);
    let tasks: Vec<_> = survivors
        .into_iter()
        .map(|port| {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut conn = None;
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => match Conn::new(port).await {
                            Ok(c) => conn.insert(c),
                            Err(_) => {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        },
                    };
                    n += 1;
                    match c.put(0, n).await {
                        200 => {
                            let _ = tx.send(Instant::now()).await;
                            return;
                        }
                        0 => conn = None,
                        _ => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            })
        })
        .collect();
    drop(tx);
    let first = rx.recv().await;
    for task in tasks {
        task.abort();
    }
    drop(procs);
    first.map(|at| at - killed)
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "none within 30 s".to_owned(), |d| format!("{} ms", d.as_millis()))
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    v.get(v.len() / 2).copied()
}

/// `-- --profile memory|durable all|leader|single SECS [CLIENTS]`: one 3-node cluster of ours (or a single
/// node) under the put load of CLIENTS clients (default: the first of [`LOADS`]) for SECS,
/// for profilers to attach to: prints the servers' pids (leader first), waits a second, loads, and prints
/// puts/s and each server's CPU µs per put. Used to find where a replicated put's CPU goes.
fn profile(args: &[String]) {
    let durable = args.first().is_some_and(|a| a == "durable");
    let spread = args.get(1).is_none_or(|a| a == "all");
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let clients: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(LOADS[0]);
    let _ = rlimit::increase_nofile_limit(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let dir = durable.then(|| scratch("profile"));
        let three = if args.get(1).is_some_and(|a| a == "single") {
            vec![single(Impl::Ours, dir.as_deref())]
        } else {
            cluster(Impl::Ours, dir.as_deref(), Timings::new(1000))
        };
        wait_up(&three).await;
        let leader =
            if three.len() == 1 { 0 } else { wait_leader(&three, &[0, 1, 2], Duration::from_secs(30)).await };
        let all: Vec<u16> = three.iter().map(|p| p.port).collect();
        let ports = if spread { all.clone() } else { vec![three[leader].port] };
        if let Some(note) = wait_writable(&all, Duration::from_secs(20)).await {
            println!("# note: {note}");
        }
        fill(three[leader].port).await;
        let order: Vec<usize> =
            std::iter::once(leader).chain((0..three.len()).filter(|&i| i != leader)).collect();
        let pids: Vec<String> = order.iter().map(|&i| three[i].child.id().to_string()).collect();
        println!("pids {}", pids.join(" "));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before: Vec<f64> = order.iter().map(|&i| cpu_secs(std::slice::from_ref(&three[i]))).collect();
        let (ok, errors, secs) = put_rate(&ports, clients, secs).await;
        let used: Vec<String> = order
            .iter()
            .zip(before)
            .map(|(&i, b)| {
                format!("{:.1}", (cpu_secs(std::slice::from_ref(&three[i])) - b) * 1e6 / ok as f64)
            })
            .collect();
        println!(
            "puts/s {:.0} ({errors} failed); CPU µs per put leader, followers: {}",
            ok as f64 / secs,
            used.join(" ")
        );
        drop(three);
        if let Some(d) = dir {
            let _ = std::fs::remove_dir_all(d);
        }
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--profile") {
        return profile(&args[i + 1..]);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let election = args
        .iter()
        .position(|a| a == "--election_timeout" || a == "--election-timeout")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse::<u64>().expect("--election_timeout takes milliseconds"))
        .unwrap_or(1000);
    let t = Timings::new(election);
    let (secs, rounds) = if quick { (1.0, 1) } else { (2.0, 3) };
    let trials = if quick { 1 } else { 3 };
    let _ = rlimit::increase_nofile_limit(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let node_present = Impl::Node.binary().is_some();
        let loadavg = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned();
        println!(
            "# antietcd cluster benchmark ({}): {LOADS:?} keep-alive HTTP/1.1 clients doing /v3/kv/put, {KEYS} keys, 20-byte values, {rounds} x {secs} s per row and load, rows measured in turns",
            if quick { "quick" } else { "full" }
        );
        println!(
            "# cluster timings (ours and Node): election_timeout {} ms, heartbeat_timeout {} ms, leadership_timeout {} ms",
            t.election, t.heartbeat, t.leadership
        );
        println!("# load average before: {}", loadavg());
        if !node_present {
            println!(
                "# Node antietcd 1.3.1 missing (bash .ci/install-peers, or npm install --prefix {} antietcd@1.3.1): its column is skipped",
                common::node_dir().display()
            );
        }
        println!(
            "{:<72} {:>16} {:>22} {:>20}",
            "write throughput, puts/s (% of one node)", "ours", "Node 1.3.1", "CPU µs/put ours|Node"
        );
        let mut notes = Vec::new();
        let mut verdicts = Vec::new();
        for durable in [false, true] {
            let storage = if durable { "durable (--data_dir; Node: --data)" } else { "memory" };
            let ours = rates(Impl::Ours, durable, t, secs, rounds).await;
            let node = rates(Impl::Node, durable, t, secs, rounds).await;
            for ((o, n), clients) in ours.iter().zip(&node).zip(LOADS) {
                let names = ["1 node", "3 nodes, clients on all 3", "3 nodes, clients on the leader"];
                for (row, name) in names.iter().enumerate() {
                    println!(
                        "{:<72} {:>16} {:>22} {:>20}",
                        format!("{name}, {storage}, {clients} clients"),
                        o[row].cell((row > 0).then_some(&o[0])),
                        n[row].cell((row > 0).then_some(&n[0])),
                        format!("{}|{}", o[row].cpu_per_put(), n[row].cpu_per_put())
                    );
                    for (who, r) in [("ours", &o[row]), ("Node", &n[row])] {
                        if let Some(note) = &r.note {
                            notes.push(format!("{who} {name}, {storage}, {clients} clients: {note}"));
                        }
                    }
                }
            }
            // Throughput is the most a configuration gets through at any of the loads.
            let peak = |row: usize| ours.iter().map(|l| l[row].per_sec()).fold(0.0, f64::max);
            for (row, what) in [(1, "clients on all 3"), (2, "clients on the leader")] {
                let at: Vec<String> = ours
                    .iter()
                    .zip(LOADS)
                    .map(|(l, c)| format!("{:.0}% at {c}", 100.0 * l[row].per_sec() / l[0].per_sec()))
                    .collect();
                verdicts.push((format!("{storage}, {what}"), peak(row) / peak(0), at.join(", ")));
            }
        }
        for n in &notes {
            println!("# note: {n}");
        }
        for (what, r, at) in &verdicts {
            let verdict = if *r >= 0.4 { "met" } else { "NOT met" };
            println!(
                "target ours 3 nodes >= 40% of 1 node, peak throughput ({what}): {:.0}% {verdict} (same load: {at} clients)",
                100.0 * r
            );
        }
        println!(
            "failover: SIGKILL of the leader -> first successful put through a survivor (election_timeout {} ms; target for ours <= {} ms)",
            t.election,
            t.election + 1000
        );
        for imp in [Impl::Ours, Impl::Node] {
            if imp.binary().is_none() {
                continue;
            }
            let mut times = Vec::new();
            let mut cells = Vec::new();
            for _ in 0..trials {
                let d = failover(imp, t).await;
                cells.push(ms(d));
                times.extend(d);
            }
            let med = if times.len() == trials { median(times) } else { None };
            let verdict = match (imp, med) {
                (Impl::Ours, Some(m)) if m <= Duration::from_millis(t.election + 1000) => " (target met)",
                (Impl::Ours, _) => " (target NOT met)",
                _ => "",
            };
            println!("{:<6} {} | median {}{verdict}", format!("{imp:?}"), cells.join(", "), ms(med));
        }
        println!("# load average after: {}", loadavg());
    });
}
