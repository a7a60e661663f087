//! [`Node`]: an engine, its optional persistence and its optional HTTP(S)/websocket listener; [`serve`].
//!
//! Shutdown follows mini-redis: a [`CancellationToken`] tells every task to stop (the accept loop stops
//! accepting, idle HTTP connections close, in-flight requests finish, websockets get a close frame), and a
//! [`TaskTracker`] is awaited until every connection, websocket and timer task has ended; then the state is
//! persisted a last time and the engine closed.

use crate::config::{Logs, ServerConfig};
use crate::http::Api;
use crate::persist::{PersistError, Persister};
use crate::wire::Codec;
use crate::{Engine, Revision};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Everything that can stop a [`Node`] from starting or finishing cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The TLS material could not be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Binding the listener failed.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// Reading or writing the data file failed.
    #[error(transparent)]
    Persist(#[from] PersistError),
    /// The write-ahead log of `--data-dir` failed or does not check out.
    #[error(transparent)]
    Durable(#[from] crate::durable::DurableError),
    /// The engine refused.
    #[error(transparent)]
    Engine(#[from] crate::Error),
    /// The cluster runtime could not start.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// Server counters for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) requests: [AtomicU64; Api::ALL.len()],
    /// Responses by status class 1xx..5xx.
    pub(crate) http_responses: [AtomicU64; 5],
    pub(crate) http_connections: AtomicU64,
    pub(crate) ws_connections: AtomicU64,
    pub(crate) watches: AtomicU64,
}

/// State shared by every connection of one node.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) engine: Engine,
    pub(crate) persister: Option<Arc<Persister>>,
    /// The write-ahead log of `--data-dir`, if any.
    pub(crate) durable: Option<Arc<crate::durable::Durable>>,
    /// Whether writes are acknowledged before they are on disk (`persist_interval` set).
    pub(crate) persist_interval: bool,
    pub(crate) codec: Codec,
    pub(crate) merge_watches: bool,
    pub(crate) ws_keepalive: Duration,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_ws_message_bytes: usize,
    pub(crate) logs: Logs,
    pub(crate) metrics: Metrics,
    /// Cancelled when the node shuts down.
    pub(crate) stopping: CancellationToken,
    /// Every task of the node (connections, websockets, timers).
    pub(crate) tracker: TaskTracker,
    /// Permits for connections (HTTP and websocket).
    pub(crate) connections: Arc<Semaphore>,
    /// The cluster runtime when `--cluster` is set.
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Shared {
    pub(crate) fn approx_db_size(&self) -> u64 {
        // A cheap figure in the spirit of antietcd's heapUsed: the bytes of keys and values.
        self.engine
            .range(&crate::RangeRequest::new(crate::KeyRange::all()))
            .map(|r| r.kvs.iter().map(|kv| (kv.key.len() + kv.value.len() + 48) as u64).sum())
            .unwrap_or(0)
    }
}

/// The Prometheus text of `/metrics`.
pub(crate) fn metrics_text(shared: &Shared) -> String {
    /// One sample of a metric without labels, with its TYPE line.
    fn metric(out: &mut String, kind: &str, name: &str, value: impl std::fmt::Display) {
        let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {value}");
    }
    let st = shared.engine.status();
    let m = &shared.metrics;
    let mut out = String::new();
    metric(&mut out, "gauge", "antietcd_revision", st.revision);
    metric(&mut out, "gauge", "antietcd_compact_revision", st.compact_revision);
    metric(&mut out, "gauge", "antietcd_keys", st.keys);
    metric(&mut out, "gauge", "antietcd_leases", st.leases);
    metric(&mut out, "gauge", "antietcd_watchers", st.watchers);
    let _ = writeln!(out, "# TYPE antietcd_requests_total counter");
    for api in Api::ALL {
        let n = m.requests[api as usize].load(Ordering::Relaxed);
        let _ = writeln!(out, "antietcd_requests_total{{api=\"{}\"}} {n}", api.name());
    }
    let _ = writeln!(out, "# TYPE antietcd_http_responses_total counter");
    for (i, c) in m.http_responses.iter().enumerate() {
        let _ = writeln!(
            out,
            "antietcd_http_responses_total{{code=\"{}xx\"}} {}",
            i + 1,
            c.load(Ordering::Relaxed)
        );
    }
    metric(&mut out, "gauge", "antietcd_http_connections", m.http_connections.load(Ordering::Relaxed));
    metric(&mut out, "gauge", "antietcd_websocket_connections", m.ws_connections.load(Ordering::Relaxed));
    metric(&mut out, "gauge", "antietcd_websocket_watches", m.watches.load(Ordering::Relaxed));
    if let Some(p) = &shared.persister {
        metric(&mut out, "counter", "antietcd_persist_writes_total", p.writes.load(Ordering::Relaxed));
        metric(&mut out, "gauge", "antietcd_persist_durable_revision", p.durable());
        metric(&mut out, "gauge", "antietcd_persist_failed", i32::from(p.check().is_err()));
    }
    if let Some(c) = &shared.cluster {
        let r = &c.repl.stats;
        metric(
            &mut out,
            "counter",
            "antietcd_cluster_full_loads_total",
            r.full_loads.load(Ordering::Relaxed),
        );
        metric(&mut out, "counter", "antietcd_cluster_catch_ups_total", r.catch_ups.load(Ordering::Relaxed));
        metric(
            &mut out,
            "counter",
            "antietcd_cluster_undone_tails_total",
            r.undone_tails.load(Ordering::Relaxed),
        );
    }
    if let Some(d) = &shared.durable {
        let w = d.wal_stats();
        metric(&mut out, "counter", "antietcd_wal_records_total", w.records);
        metric(&mut out, "counter", "antietcd_wal_syncs_total", w.syncs);
        metric(&mut out, "counter", "antietcd_wal_checkpoints_total", w.checkpoints);
    }
    out
}

/// One antietcd node: an [`Engine`], its data file if configured, and its listener if configured.
///
/// ```no_run
/// # async fn example() -> Result<(), antietcd::ServerError> {
/// use antietcd::{Node, ServerConfig};
/// let config = ServerConfig { port: 0, data: Some("/tmp/antietcd.gz".into()), ..Default::default() };
/// let node = Node::start(config).await?;
/// println!("listening on {:?}", node.local_addr());
/// let rev = node.engine().put(antietcd::PutRequest::new("/a", "1"))?.revision;
/// node.sync(rev).await?; // on disk
/// node.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Node {
    shared: Arc<Shared>,
    local_addr: Option<SocketAddr>,
    accept: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Starts a node: loads `config.data` if set, and binds `config.ip:config.port` if `config.listen`.
    pub async fn start(config: ServerConfig) -> Result<Node, ServerError> {
        let config = config.validate()?;
        let listener = if config.listen {
            let ip = config.ip.unwrap_or(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
            let addr = SocketAddr::new(ip, config.port);
            let bind = |addr: SocketAddr| -> std::io::Result<TcpListener> {
                let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                socket.set_reuseaddr(true)?;
                socket.bind(addr)?;
                socket.listen(config.backlog)
            };
            let listener = match bind(addr) {
                // No IPv6 on this host: fall back to every IPv4 interface.
                Err(_) if config.ip.is_none() => {
                    let v4 =
                        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), config.port);
                    bind(v4).map_err(|source| ServerError::Bind { addr: v4, source })?
                }
                r => r.map_err(|source| ServerError::Bind { addr, source })?,
            };
            Some(listener)
        } else {
            None
        };
        Node::build(config, listener).await
    }

    /// Starts a node serving on `listener` (bound by the caller, e.g. to port 0 in tests); `config.listen`,
    /// `port`, `ip` and `backlog` are ignored.
    pub async fn with_listener(config: ServerConfig, listener: TcpListener) -> Result<Node, ServerError> {
        let config = config.validate()?;
        Node::build(config, Some(listener)).await
    }

    async fn build(config: ServerConfig, listener: Option<TcpListener>) -> Result<Node, ServerError> {
        let logs = config.parsed_logs()?;
        let tls = crate::tls::node_server_config(&config)?;
        let (engine, durable) = match &config.data_dir {
            Some(dir) => {
                // Cluster members keep their log tail at close: replayed at the next start, it rebuilds the
                // watch history, so watchers resume across a restart.
                let options = crate::durable::DurableOptions::default()
                    .with_checkpoint_on_close(config.cluster.is_none());
                let (engine, durable) =
                    crate::durable::Durable::open(dir, config.engine_config(), options).await?;
                (engine, Some(Arc::new(durable)))
            }
            None => (Engine::new(config.engine_config())?, None),
        };
        let persister = match &config.data {
            Some(path) => {
                let path = path.clone();
                let read_path = path.clone();
                let state = tokio::task::spawn_blocking(move || crate::persist::read_file(&read_path))
                    .await
                    .map_err(|e| PersistError::Failed(format!("loading task failed: {e}")))??;
                let (term, durable) = match state {
                    Some(s) => {
                        let term = s.term;
                        engine.restore(s.revision, s.kvs)?;
                        (term, engine.revision())
                    }
                    None => (0, 0),
                };
                Some(Arc::new(Persister::new(
                    engine.clone(),
                    path,
                    config.persist_filter.clone(),
                    term,
                    durable,
                )))
            }
            None => None,
        };
        let tracker = TaskTracker::new();
        let stopping = CancellationToken::new();
        let cluster = match crate::cluster::ClusterConfig::from_server(&config)
            .map_err(crate::config::ConfigError::from)?
        {
            Some(c) => Some(crate::cluster::Cluster::start(
                c,
                Duration::from_millis(config.ws_keepalive_interval),
                &tracker,
                stopping.clone(),
            )?),
            None => None,
        };
        let shared = Arc::new(Shared {
            engine,
            persister,
            durable,
            persist_interval: config.persist_interval > 0,
            codec: Codec { base64: config.use_base64 },
            merge_watches: config.merge_watches,
            ws_keepalive: Duration::from_millis(config.ws_keepalive_interval),
            max_body_bytes: config.max_body_bytes,
            max_ws_message_bytes: config.max_ws_message_bytes,
            logs,
            metrics: Metrics::default(),
            stopping,
            tracker,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            cluster,
        });
        if let Some(cluster) = &shared.cluster {
            crate::cluster::replica::attach(cluster, &shared);
        }
        if let (Some(p), true) = (&shared.persister, config.persist_interval > 0) {
            let p = p.clone();
            let engine = shared.engine.clone();
            let stopping = shared.stopping.clone();
            let every = Duration::from_millis(config.persist_interval);
            shared.tracker.spawn(async move {
                let mut ticker = tokio::time::interval(every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = ticker.tick() => {}
                        _ = stopping.cancelled() => return,
                    }
                    if engine.revision() > p.durable() && p.persist().await.is_err() {
                        // Reported by the persister; writes are now refused.
                        return;
                    }
                }
            });
        }
        let mut local_addr = None;
        let mut accept = None;
        if let Some(listener) = listener {
            local_addr = listener.local_addr().ok();
            let shared2 = shared.clone();
            accept = Some(tokio::spawn(accept_loop(listener, shared2, tls)));
        }
        Ok(Node { shared, local_addr, accept })
    }

    /// The engine: use it directly for in-process reads and writes.
    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// The cluster status (role, term, leader, followers), updated by the election driver; `None` without
    /// `--cluster`.
    pub fn cluster_status(&self) -> Option<tokio::sync::watch::Receiver<crate::cluster::ClusterStatus>> {
        self.shared.cluster.as_ref().map(|c| c.status())
    }

    /// The cluster runtime, if any (peer requests of the replication slice, unit tests).
    #[allow(dead_code)]
    pub(crate) fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.shared.cluster.as_ref()
    }

    /// The address the node listens on, if it listens.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The durability barrier: returns once `revision` is on disk (no-op without a data file). Concurrent
    /// calls share one write. Fails if a write failed (and every later write is refused).
    pub async fn sync(&self, revision: Revision) -> Result<(), ServerError> {
        if let Some(d) = &self.shared.durable {
            d.sync().await?;
        }
        match &self.shared.persister {
            Some(p) => Ok(p.sync(revision).await?),
            None => Ok(()),
        }
    }

    /// Stops accepting, closes connections and websockets, waits for every task, persists a last time and
    /// closes the engine.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.shared.stopping.cancel();
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
        let result = match &self.shared.persister {
            Some(p) if self.shared.engine.revision() > p.durable() || p.durable() == 0 => p.persist().await,
            Some(p) => p.check(),
            None => Ok(()),
        };
        let durable = match &self.shared.durable {
            Some(d) => d.close().await,
            None => Ok(()),
        };
        self.shared.engine.close();
        result?;
        Ok(durable?)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A node dropped without shutdown still stops its tasks.
        self.shared.stopping.cancel();
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
    }
}

/// Serves `config` on `listener` until `shutdown` completes, then shuts down gracefully (persisting and
/// closing watches). The entry point of the `antietcd` binary: pass `tokio::signal::ctrl_c()` or any
/// future.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let node = Node::with_listener(config, listener).await?;
    shutdown.await;
    node.shutdown().await
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tls: Option<Arc<rustls::ServerConfig>>) {
    let router = axum::Router::new().fallback(crate::http::handle).with_state(shared.clone());
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            p = shared.connections.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shared.stopping.cancelled() => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shared.stopping.cancelled() => return,
        };
        let (stream, _peer) = match accepted {
            Ok(s) => {
                backoff = Duration::from_millis(5);
                s
            }
            Err(e) => {
                // Out of file descriptors and the like: wait and retry, never exit.
                tracing::warn!("accept failed: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shared.stopping.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let router = router.clone();
        let acceptor = acceptor.clone();
        shared.clone().tracker.spawn(async move {
            let _permit = permit;
            shared.metrics.http_connections.fetch_add(1, Ordering::Relaxed);
            match acceptor {
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    let tls = tokio::select! {
                        r = handshake => r,
                        _ = shared.stopping.cancelled() => Ok(Err(std::io::Error::other("stopping"))),
                    };
                    if let Ok(Ok(tls)) = tls {
                        // The client's certificates reach the websocket upgrade (cluster `identify`, --peer_ca).
                        let router = match crate::tls::ClientCertificates::of(tls.get_ref().1) {
                            Some(certs) => router.layer(axum::Extension(certs)),
                            None => router,
                        };
                        serve_connection(tls, router, &shared).await;
                    }
                }
                None => serve_connection(stream, router, &shared).await,
            }
            shared.metrics.http_connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn serve_connection<I>(io: I, router: axum::Router, shared: &Shared)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(router);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shared.stopping.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
        }
    }
}
