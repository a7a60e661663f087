//! Three `antietcd` processes on 127.0.0.x, durable (`--data_dir` under a per-test directory), with a
//! cuttable proxy on every directed peer link: node i reaches node j through `links[i][j]`, so cutting
//! both directions of a pair partitions it while clients still reach every node directly.
//!
//! Each node's output goes to `<dir>/n<i>.log` (appended across restarts, `--logs cluster`); the directory
//! is kept when a test fails, and its path is in every failure message.

use crate::proxy::Proxy;
use serde_json::Value;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;
use tokio::time::Instant;

/// The timing every scenario runs with: elections within about a second.
pub(crate) const ELECTION_MS: u64 = 1000;

pub(crate) struct Cluster {
    pub(crate) name: String,
    /// Client URLs, straight to each node.
    pub(crate) urls: Vec<String>,
    addrs: Vec<SocketAddr>,
    pub(crate) dir: PathBuf,
    procs: Vec<Option<Child>>,
    /// `links[i][j]`: the proxy node i dials node j through (`None` on the diagonal).
    links: Vec<Vec<Option<Proxy>>>,
    /// Cleared by `finish`: a cluster dropped without it (a failed test) keeps its directory.
    keep_dir: bool,
}

/// A node's view, from `/v3/maintenance/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeStatus {
    pub(crate) state: String,
    pub(crate) leader: Option<String>,
    pub(crate) term: u64,
    pub(crate) revision: i64,
}

impl Cluster {
    /// Starts three nodes on 127.0.0.`first_ip`.. and waits until they agree on a leader.
    pub(crate) async fn start(name: &str, first_ip: u8) -> Cluster {
        let dir = std::env::temp_dir().join(format!("antietcd-faults-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let addrs: Vec<SocketAddr> = (0..3)
            .map(|i| {
                let ip = format!("127.0.0.{}", first_ip + i);
                let port =
                    std::net::TcpListener::bind((ip.as_str(), 0)).unwrap().local_addr().unwrap().port();
                format!("{ip}:{port}").parse().unwrap()
            })
            .collect();
        let mut links = Vec::new();
        for i in 0..3 {
            let mut row = Vec::new();
            for (j, addr) in addrs.iter().enumerate() {
                row.push(if i == j { None } else { Some(Proxy::start(*addr).await) });
            }
            links.push(row);
        }
        let mut c = Cluster {
            name: name.to_owned(),
            urls: addrs.iter().map(|a| format!("http://{a}")).collect(),
            addrs,
            dir,
            procs: (0..3).map(|_| None).collect(),
            links,
            keep_dir: true,
        };
        for i in 0..3 {
            c.spawn(i);
        }
        c.agreed(&[0, 1, 2], 0, Duration::from_secs(15)).await;
        c
    }

    /// Node i's `--cluster`: itself at its own address, the others through its outgoing proxies.
    fn spec(&self, i: usize) -> String {
        (0..3)
            .map(|j| {
                let url = match &self.links[i][j] {
                    Some(p) => format!("http://{}", p.addr),
                    None => self.urls[j].clone(),
                };
                format!("n{}={url}", j + 1)
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts (or restarts) node i on its address and data directory.
    pub(crate) fn spawn(&mut self, i: usize) {
        assert!(self.procs[i].is_none(), "n{} is already running", i + 1);
        let log = OpenOptions::new().create(true).append(true).open(self.log_path(i)).unwrap();
        let addr = self.addrs[i];
        let child = Command::new(env!("CARGO_BIN_EXE_antietcd"))
            .args(["--ip", &addr.ip().to_string(), "--port", &addr.port().to_string()])
            .args([
                "--node_id",
                &format!("n{}", i + 1),
                "--cluster",
                &self.spec(i),
                "--cluster_key",
                "faults",
            ])
            .args(["--data_dir", &self.dir.join(format!("n{}", i + 1)).display().to_string()])
            .args(["--election_timeout", &ELECTION_MS.to_string(), "--heartbeat_timeout", "200"])
            .args(["--leadership_timeout", "600", "--reconnect_interval", "100", "--stale_read", "0"])
            // A request waiting for a leader gives up well within the clients' timeout.
            .args(["--wait_quorum_timeout", "1500"])
            // Watchers resuming after a fault must find the history they need (the runs write far less).
            .args(["--compact_revisions", "1000000"])
            .args(["--logs", "cluster"])
            .env("RUST_LOG", "antietcd=debug")
            .env("NO_COLOR", "1")
            // tracing writes to stdout, the binary's own messages to stderr: both to the log.
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs[i] = Some(child);
    }

    pub(crate) fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{}.log", i + 1))
    }

    /// Where to look when something fails.
    pub(crate) fn describe(&self) -> String {
        format!("cluster {} (node logs and data in {})", self.name, self.dir.display())
    }

    fn pid(&self, i: usize) -> u32 {
        self.procs[i].as_ref().unwrap_or_else(|| panic!("n{} is not running", i + 1)).id()
    }

    fn signal(&self, i: usize, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.pid(i).to_string()]).status().unwrap();
        assert!(ok.success(), "kill {sig} n{}", i + 1);
    }

    /// SIGKILL, and reap.
    pub(crate) fn kill(&mut self, i: usize) {
        self.signal(i, "-KILL");
        let mut child = self.procs[i].take().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM (graceful), waiting for the exit.
    pub(crate) async fn terminate(&mut self, i: usize) {
        self.signal(i, "-TERM");
        let mut child = self.procs[i].take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                assert!(st.success(), "n{} exited with {st:?} after SIGTERM; {}", i + 1, self.describe());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "n{} did not stop within 10 s of SIGTERM; {}",
                i + 1,
                self.describe()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    pub(crate) fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    /// Cuts (or heals) both directions between nodes i and j.
    pub(crate) fn cut(&self, i: usize, j: usize, cut: bool) {
        self.links[i][j].as_ref().unwrap().set_cut(cut);
        self.links[j][i].as_ref().unwrap().set_cut(cut);
    }

    /// Cuts (or heals) every link of node i.
    pub(crate) fn isolate(&self, i: usize, cut: bool) {
        for j in (0..3).filter(|&j| j != i) {
            self.cut(i, j, cut);
        }
    }

    pub(crate) async fn status(&self, i: usize) -> Option<NodeStatus> {
        let r = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap()
            .post(format!("{}/v3/maintenance/status", self.urls[i]))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .ok()?;
        let v: Value = r.json().await.ok()?;
        Some(NodeStatus {
            state: v["raftState"].as_str().unwrap_or("").to_owned(),
            leader: v["leader"].as_str().map(str::to_owned),
            term: v["raftTerm"].as_u64().unwrap_or(0),
            revision: v["header"]["revision"].as_i64().unwrap_or(-1),
        })
    }

    /// Polls until every node of `live` answers and they agree on one leader at a term above `above`;
    /// returns (leader index, term).
    pub(crate) async fn agreed(&self, live: &[usize], above: u64, within: Duration) -> (usize, u64) {
        let deadline = Instant::now() + within;
        loop {
            let mut seen = Vec::new();
            for &i in live {
                seen.push((i, self.status(i).await));
            }
            if let Some(found) = agreement(&seen, above) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no leader agreed by {live:?} above term {above} within {within:?}: {seen:#?}; {}",
                self.describe()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until all three nodes agree on a leader and hold the same revision, at least `revision`.
    pub(crate) async fn converged(&self, revision: i64, within: Duration) -> (usize, u64) {
        let deadline = Instant::now() + within;
        loop {
            let mut seen = Vec::new();
            for i in 0..3 {
                seen.push((i, self.status(i).await));
            }
            let revs: Vec<i64> = seen.iter().filter_map(|(_, s)| s.as_ref().map(|s| s.revision)).collect();
            if let Some(found) = agreement(&seen, 0) {
                if revs.len() == 3 && revs.iter().all(|&r| r == revs[0] && r >= revision) {
                    return found;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the nodes did not converge on one leader and revision >= {revision} within {within:?}: \
                 {seen:#?}; {}",
                self.describe()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops everything; the directory is removed (kept if the test failed before getting here).
    pub(crate) fn finish(mut self) {
        self.keep_dir = false;
    }
}

/// One leader agreed by all the answers (every node answered), at a term above `above`.
fn agreement(seen: &[(usize, Option<NodeStatus>)], above: u64) -> Option<(usize, u64)> {
    let all: Vec<&NodeStatus> = seen.iter().map(|(_, s)| s.as_ref()).collect::<Option<_>>()?;
    let leaders: Vec<usize> =
        seen.iter().filter(|(_, s)| s.as_ref().unwrap().state == "leader").map(|x| x.0).collect();
    let [l] = leaders[..] else { return None };
    let id = format!("n{}", l + 1);
    let term = seen.iter().find(|x| x.0 == l)?.1.as_ref()?.term;
    (term > above && all.iter().all(|s| s.term == term && s.leader.as_deref() == Some(id.as_str())))
        .then_some((l, term))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().flatten() {
            // A stopped process dies from SIGKILL too.
            let _ = p.kill();
            let _ = p.wait();
        }
        if self.keep_dir {
            eprintln!("{}: kept for inspection", self.describe());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
