//! [`ServerConfig`]: every single-node option of antietcd 1.3.1, with its flag names, plus limits.
//!
//! The same struct is the embedder's configuration (`ServerConfig { data: Some(..), ..Default::default() }`)
//! and, through clap's derive, the `antietcd` binary's command line: `--persist_interval` and
//! `--persist-interval` are both accepted, as antietcd turns dashes into underscores. Boolean options take a
//! value as in antietcd (`--use_base64 0`, `--merge_watches false`) or none (`--client_cert_auth`).

use crate::persist::PersistFilter;
use std::net::IpAddr;
use std::path::PathBuf;

/// The options of a [`Node`](crate::Node): antietcd's single-node options plus limits.
#[derive(Clone, clap::Parser)]
#[command(
    name = "antietcd",
    version,
    about = "antietcd server (Rust): an etcd-subset REST + websocket API, wire-compatible with antietcd 1.3.1",
    rename_all = "snake_case"
)]
pub struct ServerConfig {
    /// Listen port for HTTP(S) and websockets (0: any free port).
    #[arg(long, default_value_t = 2379)]
    pub port: u16,
    /// Listen address (default: every interface).
    #[arg(long)]
    pub ip: Option<IpAddr>,
    /// Whether to listen at all. Embedders that only want the engine and persistence set it to false; the
    /// binary always listens.
    #[arg(skip = true)]
    pub listen: bool,
    /// Persist the store to this file (gzip-JSON, antietcd's format). Without it the store is in memory only.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Keep the store durable in this directory: a write-ahead log with group commit and checkpoints
    /// (cost per write independent of the store's size). Exclusive with `--data`, which keeps antietcd's
    /// gzip-JSON file format (rewritten whole on every write) for compatibility and import/export.
    #[arg(long, visible_alias = "data-dir")]
    pub data_dir: Option<PathBuf>,
    /// Persist at most once per this many milliseconds and acknowledge writes before they are on disk.
    /// 0: every write is on disk before it is acknowledged (group commit).
    #[arg(long, visible_alias = "persist-interval", default_value_t = 0)]
    pub persist_interval: u64,
    /// Server certificate (PEM file path, or inline PEM starting with `-----`). Switches to HTTPS/WSS.
    #[arg(long)]
    pub cert: Option<String>,
    /// Server private key (PEM file path or inline PEM).
    #[arg(long)]
    pub key: Option<String>,
    /// CA certificate(s) for client certificates (PEM file path or inline PEM).
    #[arg(long)]
    pub ca: Option<String>,
    /// Require client certificates signed by `--ca` (or `--peer_ca`).
    #[arg(long, visible_alias = "client-cert-auth", num_args = 0..=1, default_missing_value = "1",
          value_parser = parse_bool, default_value = "0")]
    pub client_cert_auth: bool,
    /// How many revisions of history to keep for watches (compaction keeps between N and 2N). 0: keep all.
    #[arg(long, visible_alias = "compact-revisions", default_value_t = 1000)]
    pub compact_revisions: i64,
    /// Websocket ping period in milliseconds; a socket that did not answer the previous ping is closed.
    /// 0: no pings.
    #[arg(long, visible_alias = "ws-keepalive-interval", default_value_t = 30000)]
    pub ws_keepalive_interval: u64,
    /// Keys, values and range ends are base64 on the wire (antietcd's default). Off: raw strings.
    #[arg(long, visible_alias = "use-base64", num_args = 0..=1, default_missing_value = "1",
          value_parser = parse_bool, default_value = "1")]
    pub use_base64: bool,
    /// Send all the events of one revision for all the watches of one websocket as one message.
    #[arg(long, visible_alias = "merge-watches", num_args = 0..=1, default_missing_value = "1",
          value_parser = parse_bool, default_value = "1")]
    pub merge_watches: bool,
    /// Logs to write: a comma list of `access` (every request and websocket message) and `watch` (every
    /// outgoing watch message). Logged through `tracing` at info level.
    #[arg(long, default_value = "")]
    pub logs: String,
    /// Largest accepted request body in bytes; larger bodies get 413.
    #[arg(long, visible_alias = "max-body-bytes", default_value_t = 8 << 20)]
    pub max_body_bytes: usize,
    /// Largest accepted websocket message (and frame) in bytes; a larger one closes the socket.
    #[arg(long, visible_alias = "max-ws-message-bytes", default_value_t = 1 << 20)]
    pub max_ws_message_bytes: usize,
    /// Most simultaneous connections (HTTP and websocket); more wait in the listen backlog.
    #[arg(long, visible_alias = "max-connections", default_value_t = 16384)]
    pub max_connections: usize,
    /// Listen backlog (at least 1024).
    #[arg(long, default_value_t = 4096)]
    pub backlog: u32,
    /// How many undelivered revisions a watch may have queued before it is cancelled as lagging.
    #[arg(long, visible_alias = "watch-capacity", default_value_t = 4096)]
    pub watch_capacity: usize,
    /// Embedders only: a function applied to every key before it is persisted (see [`PersistFilter`]).
    #[arg(skip)]
    pub persist_filter: Option<PersistFilter>,
    /// The cluster: `id=url,id=url,...` listing every node, this one included (antietcd's `--cluster`). Peers
    /// are dialed at their URL with `http` turned into `ws`. See [`crate::cluster`].
    #[arg(long)]
    pub cluster: Option<String>,
    /// This node's id in `--cluster` (required with it); also reported as `member_id`.
    #[arg(long, visible_alias = "node-id")]
    pub node_id: Option<String>,
    /// The cluster's shared secret, sent in `identify` to every peer (required with `--cluster`).
    #[arg(long, visible_alias = "cluster-key")]
    pub cluster_key: Option<String>,
    /// CA certificate(s) identifying legitimate cluster peers (PEM file path or inline PEM): an incoming
    /// peer's `identify` is honoured only if the client certificate it presented on that connection chains
    /// to it; dialed peers' server certificates must chain to it too. The listener then requests a client
    /// certificate from every client (required only with `--client_cert_auth`). Needs `--cert`, `--key`,
    /// `--cluster` and `https://` URLs for every node.
    #[arg(long, visible_alias = "peer-ca")]
    pub peer_ca: Option<String>,
    /// The client certificate this node presents when dialing peers (PEM file path or inline PEM; default:
    /// `--cert`). Needs `--peer_key` and `--cluster`.
    #[arg(long, visible_alias = "peer-cert")]
    pub peer_cert: Option<String>,
    /// The private key of `--peer_cert` (default: `--key`).
    #[arg(long, visible_alias = "peer-key")]
    pub peer_key: Option<String>,
    /// TinyRaft election timeout in milliseconds.
    #[arg(long, visible_alias = "election-timeout", default_value_t = 5000)]
    pub election_timeout: u64,
    /// TinyRaft heartbeat period in milliseconds.
    #[arg(long, visible_alias = "heartbeat-timeout", default_value_t = 1000)]
    pub heartbeat_timeout: u64,
    /// TinyRaft leader lease in milliseconds (default: (heartbeat_timeout + election_timeout) / 2).
    #[arg(long, visible_alias = "leadership-timeout")]
    pub leadership_timeout: Option<u64>,
    /// Leader priority: a node with a higher priority takes the leadership over (0: none).
    #[arg(long, visible_alias = "leader-priority")]
    pub leader_priority: Option<u64>,
    /// Followers serve reads locally without asking the leader (antietcd's binary default: on).
    #[arg(long, visible_alias = "stale-read", num_args = 0..=1, default_missing_value = "1",
          value_parser = parse_bool, default_value = "1")]
    pub stale_read: bool,
    /// Delay in milliseconds before re-dialing a lost peer.
    #[arg(long, visible_alias = "reconnect-interval", default_value_t = 1000)]
    pub reconnect_interval: u64,
    /// Timeout of the `dump` peer request during resync, in milliseconds.
    #[arg(long, visible_alias = "dump-timeout", default_value_t = 5000)]
    pub dump_timeout: u64,
    /// Timeout of the `load` peer request during resync, in milliseconds.
    #[arg(long, visible_alias = "load-timeout", default_value_t = 5000)]
    pub load_timeout: u64,
    /// Timeout of a request forwarded to the leader and of `check_leader`, in milliseconds.
    #[arg(long, visible_alias = "forward-timeout", default_value_t = 1000)]
    pub forward_timeout: u64,
    /// Timeout of the `replicate` and `unlock` peer requests, in milliseconds.
    #[arg(long, visible_alias = "replication-timeout", default_value_t = 1000)]
    pub replication_timeout: u64,
    /// Timeout of the `compact` peer request, in milliseconds.
    #[arg(long, visible_alias = "compact-timeout", default_value_t = 1000)]
    pub compact_timeout: u64,
    /// How long an API call waits for the node to be synced with a leader, in milliseconds.
    #[arg(long, visible_alias = "wait-quorum-timeout", default_value_t = 30000)]
    pub wait_quorum_timeout: u64,
    /// antietcd's etcd proxy mode: refused.
    #[arg(long, hide = true)]
    pub etcd_proxy: Option<String>,
    /// antietcd's auth filter module: refused (use the Rust API).
    #[arg(long, hide = true)]
    pub auth_filter: Option<String>,
    /// Meaningless on one node; accepted and ignored.
    #[arg(long, hide = true)]
    pub use_locks: Option<String>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("port", &self.port)
            .field("ip", &self.ip)
            .field("listen", &self.listen)
            .field("data", &self.data)
            .field("persist_interval", &self.persist_interval)
            .field("tls", &self.cert.is_some())
            .field("client_cert_auth", &self.client_cert_auth)
            .field("compact_revisions", &self.compact_revisions)
            .field("ws_keepalive_interval", &self.ws_keepalive_interval)
            .field("use_base64", &self.use_base64)
            .field("merge_watches", &self.merge_watches)
            .field("logs", &self.logs)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_ws_message_bytes", &self.max_ws_message_bytes)
            .field("max_connections", &self.max_connections)
            .field("backlog", &self.backlog)
            .field("watch_capacity", &self.watch_capacity)
            .field("persist_filter", &self.persist_filter.is_some())
            .field("cluster", &self.cluster)
            .field("node_id", &self.node_id)
            .field("cluster_key", &self.cluster_key.as_ref().map(|_| "<secret>"))
            .field("peer_ca", &self.peer_ca.is_some())
            .field("peer_cert", &self.peer_cert.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            port: 2379,
            ip: None,
            listen: true,
            data: None,
            data_dir: None,
            persist_interval: 0,
            cert: None,
            key: None,
            ca: None,
            client_cert_auth: false,
            compact_revisions: 1000,
            ws_keepalive_interval: 30000,
            use_base64: true,
            merge_watches: true,
            logs: String::new(),
            max_body_bytes: 8 << 20,
            max_ws_message_bytes: 1 << 20,
            max_connections: 16384,
            backlog: 4096,
            watch_capacity: 4096,
            persist_filter: None,
            cluster: None,
            node_id: None,
            cluster_key: None,
            peer_ca: None,
            peer_cert: None,
            peer_key: None,
            election_timeout: 5000,
            heartbeat_timeout: 1000,
            leadership_timeout: None,
            leader_priority: None,
            stale_read: true,
            reconnect_interval: 1000,
            dump_timeout: 5000,
            load_timeout: 5000,
            forward_timeout: 1000,
            replication_timeout: 1000,
            compact_timeout: 1000,
            wait_quorum_timeout: 30000,
            etcd_proxy: None,
            auth_filter: None,
            use_locks: None,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An antietcd option this server does not implement (yet).
    #[error("option --{0} is not supported")]
    Unsupported(&'static str),
    /// `key` without `cert` or the other way round, or `client_cert_auth` without TLS.
    #[error("TLS options are incomplete: {0}")]
    Tls(&'static str),
    /// A limit or interval out of range.
    #[error("invalid value for --{name}: {reason}")]
    Invalid {
        /// The option.
        name: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The cluster options (`--cluster`, `--node_id`, `--cluster_key`, timeouts) cannot work.
    #[error("invalid cluster configuration: {0}")]
    Cluster(#[from] crate::cluster::ClusterConfigError),
    /// An unknown name in `--logs`.
    #[error("unknown log kind {0:?} in --logs (known: access, watch, cluster)")]
    UnknownLog(String),
}

/// Which logs `--logs` turned on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Logs {
    pub(crate) access: bool,
    pub(crate) watch: bool,
}

impl ServerConfig {
    /// Checks the options; returns the config unchanged if they can work.
    pub fn validate(self) -> Result<ServerConfig, ConfigError> {
        for (set, name) in
            [(self.etcd_proxy.is_some(), "etcd_proxy"), (self.auth_filter.is_some(), "auth_filter")]
        {
            if set {
                return Err(ConfigError::Unsupported(name));
            }
        }
        match (&self.cert, &self.key) {
            (Some(_), None) => return Err(ConfigError::Tls("--cert needs --key")),
            (None, Some(_)) => return Err(ConfigError::Tls("--key needs --cert")),
            _ => {}
        }
        if self.client_cert_auth && self.cert.is_none() {
            return Err(ConfigError::Tls("--client_cert_auth needs --cert and --key"));
        }
        match (&self.peer_cert, &self.peer_key) {
            (Some(_), None) => return Err(ConfigError::Tls("--peer_cert needs --peer_key")),
            (None, Some(_)) => return Err(ConfigError::Tls("--peer_key needs --peer_cert")),
            _ => {}
        }
        if (self.peer_ca.is_some() || self.peer_cert.is_some()) && self.cluster.is_none() {
            return Err(ConfigError::Tls(
                "--peer_ca, --peer_cert and --peer_key are cluster options: they need --cluster",
            ));
        }
        if self.peer_ca.is_some() && self.cert.is_none() {
            return Err(ConfigError::Tls(
                "--peer_ca needs --cert and --key: peers present their client certificates to this node's HTTPS listener",
            ));
        }
        if self.data.is_some() && self.data_dir.is_some() {
            return Err(ConfigError::Invalid {
                name: "data_dir",
                reason:
                    "--data (antietcd's gzip-JSON file) and --data_dir (write-ahead log) exclude each other",
            });
        }
        if self.compact_revisions < 0 {
            return Err(ConfigError::Invalid { name: "compact_revisions", reason: "must be >= 0" });
        }
        if self.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid { name: "max_body_bytes", reason: "must be >= 1024" });
        }
        if self.max_ws_message_bytes < 1024 {
            return Err(ConfigError::Invalid { name: "max_ws_message_bytes", reason: "must be >= 1024" });
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid { name: "max_connections", reason: "must be >= 1" });
        }
        if self.backlog < 1024 {
            return Err(ConfigError::Invalid { name: "backlog", reason: "must be >= 1024" });
        }
        if self.watch_capacity == 0 {
            return Err(ConfigError::Invalid { name: "watch_capacity", reason: "must be >= 1" });
        }
        self.parsed_logs()?;
        crate::cluster::ClusterConfig::from_server(&self)?;
        Ok(self)
    }

    pub(crate) fn parsed_logs(&self) -> Result<Logs, ConfigError> {
        let mut logs = Logs::default();
        for part in self.logs.split([',', ' ']).map(str::trim).filter(|s| !s.is_empty()) {
            match part {
                "access" => logs.access = true,
                "watch" => logs.watch = true,
                "cluster" => {}
                other => return Err(ConfigError::UnknownLog(other.to_owned())),
            }
        }
        Ok(logs)
    }

    /// The engine configuration these options imply.
    pub fn engine_config(&self) -> crate::Config {
        crate::Config::default()
            .with_compact_revisions(self.compact_revisions)
            .with_watch_capacity(self.watch_capacity)
    }
}

/// antietcd's `is_true`: `1`, `true`, `yes`, `on` are true, everything else false.
pub fn parse_bool(s: &str) -> Result<bool, std::convert::Infallible> {
    Ok(matches!(s.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}
