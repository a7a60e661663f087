//! What the cases run against: a backend's server (shared by the handles of one test) and the handles.

#![allow(clippy::unwrap_used)]

use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use valkeyrie::Store;

/// What a backend can do beyond the common contract; each `false` is a line in compat.md.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// The watch buffer size, when a case can make a consumer lag on purpose.
    pub lag_after: Option<usize>,
    /// Values are arbitrary bytes (Node antietcd keeps values as UTF-8 strings).
    pub binary_values: bool,
    /// A put of the value a key already has is a change with its own event (Node antietcd skips it).
    pub identical_put_is_change: bool,
    /// `a/` and `a` are different keys (Node antietcd normalises `a/` to `a`).
    pub trailing_slash_keys: bool,
}

impl Caps {
    /// Everything the contract promises.
    pub const FULL: Caps = Caps {
        lag_after: None,
        binary_values: true,
        identical_put_is_change: true,
        trailing_slash_keys: true,
    };
}

/// A running backend that hands out store handles.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// A new handle (its own leases and watches) on the shared server, with every key under `prefix`.
    async fn connect(&self, prefix: &str) -> Arc<dyn Store>;
    /// The backend's capabilities.
    fn caps(&self) -> Caps;
}

/// What a case gets: a store, a second handle on the same server and namespace, and the capabilities.
pub struct Env {
    pub store: Arc<dyn Store>,
    pub other: Arc<dyn Store>,
    pub caps: Caps,
    pub ns: String,
    harness: Arc<dyn Harness>,
}

impl Env {
    /// A new handle on the same server with another prefix (`""` for none).
    pub async fn connect(&self, prefix: &str) -> Arc<dyn Store> {
        self.harness.connect(prefix).await
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Runs `case` against `harness` under a namespace no other test uses.
pub async fn run<F>(harness: Arc<dyn Harness>, name: &str, case: F)
where
    F: for<'a> FnOnce(&'a Env) -> futures::future::BoxFuture<'a, ()>,
{
    let ns = format!("/vk/{}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), name);
    let env = Env {
        store: harness.connect(&ns).await,
        other: harness.connect(&ns).await,
        caps: harness.caps(),
        ns,
        harness,
    };
    case(&env).await;
    let _ = env.store.close().await;
    let _ = env.other.close().await;
}

/// The embedded backend: a fresh in-process engine per test.
pub struct Embedded {
    engine: valkeyrie::embedded::Engine,
}

impl Embedded {
    pub const WATCH_CAPACITY: usize = 64;

    pub fn start() -> Arc<dyn Harness> {
        let config = valkeyrie::embedded::Config::default().with_watch_capacity(Self::WATCH_CAPACITY);
        Arc::new(Embedded { engine: valkeyrie::embedded::Engine::new(config).unwrap() })
    }
}

#[async_trait]
impl Harness for Embedded {
    async fn connect(&self, prefix: &str) -> Arc<dyn Store> {
        valkeyrie::embedded::connect(&self.engine, prefix)
    }

    fn caps(&self) -> Caps {
        Caps { lag_after: Some(Self::WATCH_CAPACITY), ..Caps::FULL }
    }
}

/// A remote server (a child process, killed when the harness drops) reached through a store URL.
#[cfg(feature = "etcd")]
pub struct Remote {
    base: String,
    caps: Caps,
    _server: Box<dyn std::any::Any + Send + Sync>,
}

#[cfg(feature = "etcd")]
impl Remote {
    /// A throwaway etcd 3.4 (Debian's `etcd-server`; the test fails with the install command if missing).
    pub fn etcd() -> Arc<dyn Harness> {
        let server = etcd_json::testing::EtcdServer::start();
        let base = format!("etcd://{}", server.addr());
        Arc::new(Remote { base, caps: Caps::FULL, _server: Box::new(server) })
    }

    /// A throwaway Node antietcd 1.3.1 (npm; the test fails with the install command if missing).
    pub fn node_antietcd() -> Arc<dyn Harness> {
        let server = etcd_json::testing::NodeAntietcd::start();
        let base = format!("antietcd://{}", server.addr());
        let caps = Caps {
            binary_values: false,
            identical_put_is_change: false,
            trailing_slash_keys: false,
            ..Caps::FULL
        };
        Arc::new(Remote { base, caps, _server: Box::new(server) })
    }
}

#[cfg(feature = "etcd")]
#[async_trait]
impl Harness for Remote {
    async fn connect(&self, prefix: &str) -> Arc<dyn Store> {
        let url =
            if prefix.is_empty() { self.base.clone() } else { format!("{}?prefix={prefix}", self.base) };
        valkeyrie::open(&url).await.unwrap_or_else(|e| panic!("open {url}: {e}"))
    }

    fn caps(&self) -> Caps {
        self.caps
    }
}

/// Our antietcd server, in this process on a port-0 listener, reached over HTTP and websockets.
#[cfg(feature = "etcd")]
pub struct OurServer {
    base: String,
    _node: antietcd::Node,
}

#[cfg(feature = "etcd")]
impl OurServer {
    pub async fn start() -> Arc<dyn Harness> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node = antietcd::Node::with_listener(antietcd::ServerConfig::default(), listener).await.unwrap();
        let base = format!("antietcd://{}", node.local_addr().unwrap());
        Arc::new(OurServer { base, _node: node })
    }
}

#[cfg(feature = "etcd")]
#[async_trait]
impl Harness for OurServer {
    async fn connect(&self, prefix: &str) -> Arc<dyn Store> {
        let url =
            if prefix.is_empty() { self.base.clone() } else { format!("{}?prefix={prefix}", self.base) };
        valkeyrie::open(&url).await.unwrap_or_else(|e| panic!("open {url}: {e}"))
    }

    fn caps(&self) -> Caps {
        Caps::FULL
    }
}

/// Three of our `antietcd` binaries forming a cluster on loopback (`--stale_read 0`: linearizable reads on
/// every node), reached through `antietcd://n1,n2,n3`; the processes are killed when the harness drops.
#[cfg(feature = "etcd")]
pub struct AntietcdCluster {
    base: String,
    children: Vec<std::process::Child>,
    /// Each node's output, removed when the harness drops.
    logs: Vec<std::path::PathBuf>,
}

#[cfg(feature = "etcd")]
impl AntietcdCluster {
    /// The `antietcd` binary: `$ANTIETCD_BIN`, else the one cargo built next to this test binary
    /// (`cargo test --workspace` builds it; alone: `cargo build -p antietcd --bin antietcd`).
    fn binary() -> std::path::PathBuf {
        if let Some(bin) = std::env::var_os("ANTIETCD_BIN") {
            return bin.into();
        }
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/deps/conformance-<hash> → target/<profile>/antietcd
        let bin = exe.parent().and_then(|deps| deps.parent()).unwrap().join("antietcd");
        assert!(
            bin.is_file(),
            "our antietcd binary is missing ({} not found): build it with `cargo build -p antietcd --bin \
             antietcd` (cargo test --workspace does), or set ANTIETCD_BIN",
            bin.display()
        );
        bin
    }

    /// Starts the cluster and waits until it has a leader followed by all three nodes. Ports are picked
    /// free and then released, so another process may take one before its node binds it: a node that exits
    /// while starting makes the whole cluster start again on other ports (at most three times).
    pub async fn start() -> Arc<dyn Harness> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match Self::try_start().await {
                Ok(harness) => return Arc::new(harness),
                Err(why) if attempts < 3 => {
                    eprintln!("antietcd cluster: {why}; starting again on other ports")
                }
                Err(why) => panic!("the antietcd cluster did not start ({attempts} attempts): {why}"),
            }
        }
    }

    async fn try_start() -> Result<AntietcdCluster, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let ports: Vec<u16> = (0..3).map(|_| etcd_json::testing::free_port()).collect();
        let cluster: Vec<String> =
            ports.iter().enumerate().map(|(i, p)| format!("n{}=http://127.0.0.1:{p}", i + 1)).collect();
        let cluster = cluster.join(",");
        let bin = Self::binary();
        let run = NEXT.fetch_add(1, Ordering::Relaxed);
        // A key of its own: a node of another cluster that reaches one of these ports (ports are reused
        // quickly) is refused instead of joining as the node whose id it shares.
        let key = format!("conformance-{}-{run}", std::process::id());
        let mut harness = AntietcdCluster {
            base: format!(
                "antietcd://{}",
                ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
            ),
            children: Vec::new(),
            logs: Vec::new(),
        };
        for (i, port) in ports.iter().enumerate() {
            let log = std::env::temp_dir().join(format!(
                "valkeyrie-conformance-{}-{run}-n{}.log",
                std::process::id(),
                i + 1
            ));
            let file = std::fs::File::create(&log).unwrap();
            let child = std::process::Command::new(&bin)
                .args(["--ip", "127.0.0.1", "--port", &port.to_string(), "--node_id", &format!("n{}", i + 1)])
                .args(["--cluster", &cluster, "--cluster_key", &key, "--stale_read", "0"])
                .args([
                    "--election_timeout",
                    "1000",
                    "--heartbeat_timeout",
                    "200",
                    "--leadership_timeout",
                    "600",
                ])
                .args(["--reconnect_interval", "100"])
                .stdin(std::process::Stdio::null())
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            harness.children.push(child);
            harness.logs.push(log);
        }
        // Ready once every node names the same leader and that leader counts all three as followers.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            for (i, child) in harness.children.iter_mut().enumerate() {
                if let Ok(Some(exit)) = child.try_wait() {
                    let log = std::fs::read_to_string(&harness.logs[i]).unwrap_or_default();
                    return Err(format!("node n{} exited with {exit}: {}", i + 1, log.trim()));
                }
            }
            let mut statuses = Vec::new();
            for port in &ports {
                statuses.push(status(*port).await.unwrap_or_default());
            }
            let leader = statuses.iter().position(|s| s.contains(r#""raftState":"leader""#));
            if let Some(l) = leader {
                let named = format!(r#""leader":"n{}""#, l + 1);
                let all = statuses[l].contains(r#""followers":["n1","n2","n3"]"#);
                if all && statuses.iter().all(|s| s.contains(&named)) {
                    return Ok(harness);
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("no leader followed by all three within 30 s: {statuses:#?}"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// `/v3/maintenance/status` of the server on loopback `port` as text, if it answers 200.
#[cfg(feature = "etcd")]
async fn status(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
    let mut s = tokio::time::timeout(std::time::Duration::from_secs(1), connect).await.ok()?.ok()?;
    let req = "POST /v3/maintenance/status HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\n\
               Content-Length: 2\r\n\r\n{}";
    s.write_all(req.as_bytes()).await.ok()?;
    let mut reply = String::new();
    tokio::time::timeout(std::time::Duration::from_secs(2), s.read_to_string(&mut reply)).await.ok()?.ok()?;
    reply.contains(" 200 ").then_some(reply)
}

#[cfg(feature = "etcd")]
impl Drop for AntietcdCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for log in &self.logs {
            let _ = std::fs::remove_file(log);
        }
    }
}

#[cfg(feature = "etcd")]
#[async_trait]
impl Harness for AntietcdCluster {
    async fn connect(&self, prefix: &str) -> Arc<dyn Store> {
        let url =
            if prefix.is_empty() { self.base.clone() } else { format!("{}?prefix={prefix}", self.base) };
        valkeyrie::open(&url).await.unwrap_or_else(|e| panic!("open {url}: {e}"))
    }

    fn caps(&self) -> Caps {
        Caps::FULL
    }
}
