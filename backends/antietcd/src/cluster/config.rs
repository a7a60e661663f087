//! The cluster options of antietcd (`--cluster id=url,...`, `--node_id`, `--cluster_key`, the TinyRaft
//! timeouts, the peer request timeouts and the peer TLS options `--peer_ca`, `--peer_cert`, `--peer_key`),
//! parsed and checked once at start into a [`ClusterConfig`].

use crate::config::ServerConfig;
use crate::tls::PeerTls;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tinyraft::NodeId;

/// Why the cluster options cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterConfigError {
    /// `--cluster` without `--node_id`.
    #[error("--cluster needs --node_id")]
    MissingNodeId,
    /// `--cluster` without a non-empty `--cluster_key`.
    #[error("--cluster needs a non-empty --cluster_key")]
    MissingKey,
    /// An entry of `--cluster` is not `id=url`.
    #[error("--cluster entry {0:?} is not of the form id=url")]
    BadEntry(String),
    /// A node is listed twice in `--cluster`.
    #[error("node {0:?} is listed twice in --cluster")]
    Duplicate(String),
    /// A URL of `--cluster` is not `http(s)://host:port` (or `ws(s)://`).
    #[error("the URL {url:?} of node {node:?} should start with http://, https://, ws:// or wss://")]
    BadUrl {
        /// The node.
        node: String,
        /// Its URL.
        url: String,
    },
    /// `--node_id` is not a key of `--cluster` (antietcd's `--cluster` lists every node, this one included).
    #[error("--node_id {0:?} is not listed in --cluster (list every node, this one included)")]
    NotListed(String),
    /// `--peer_ca` is set but a node's URL is plain `http://` (or `ws://`): peers must connect over TLS to
    /// present their certificates.
    #[error("--peer_ca is set but the URL {url:?} of node {node:?} is not https:// (or wss://): with --peer_ca every node must be reached over TLS")]
    PlainUrlWithPeerCa {
        /// The node.
        node: String,
        /// Its URL.
        url: String,
    },
    /// The peer TLS material (`--peer_ca`, `--peer_cert`, `--peer_key`, or `--ca`, `--cert`, `--key` used for
    /// the peer links) cannot be used.
    #[error("peer links: {0}")]
    Tls(String),
    /// A timeout of 0 where a delay is needed.
    #[error("--{0} must be at least 1 ms")]
    ZeroTimeout(&'static str),
    /// The TinyRaft membership or timing invariants (`0 < heartbeat < leadership < election`) do not hold.
    #[error(transparent)]
    Raft(#[from] tinyraft::ConfigError),
}

/// The timeouts of the peer requests (section 5.2), for the replication slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerTimeouts {
    /// `dump` during resync.
    pub dump: Duration,
    /// `load` during resync.
    pub load: Duration,
    /// A request forwarded to the leader, and `check_leader`.
    pub forward: Duration,
    /// `replicate` and `unlock`.
    pub replication: Duration,
    /// `compact`.
    pub compact: Duration,
    /// How long an API call waits for the node to be synced.
    pub wait_quorum: Duration,
}

/// A checked cluster configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// The shared secret sent in `identify`.
    pub key: String,
    /// Every node (this one included) and its URL as given in `--cluster`.
    pub nodes: BTreeMap<NodeId, String>,
    /// The election engine's configuration (validated).
    pub raft: tinyraft::Config,
    /// The delay before re-dialing a lost peer.
    pub reconnect_interval: Duration,
    /// The peer request timeouts.
    pub timeouts: PeerTimeouts,
    /// Whether followers serve reads locally.
    pub stale_read: bool,
    /// Where the TinyRaft term is persisted (`<data_dir>/raft_term` or `<data>.raft_term`); `None`: memory.
    pub term_file: Option<PathBuf>,
    /// The TLS of the peer links: what the dialer trusts and presents, and the `--peer_ca` check of
    /// incoming `identify` messages.
    pub tls: PeerTls,
}

fn ms(value: u64, name: &'static str) -> Result<Duration, ClusterConfigError> {
    if value == 0 {
        return Err(ClusterConfigError::ZeroTimeout(name));
    }
    Ok(Duration::from_millis(value))
}

/// Parses antietcd's `--cluster`: `id=url` entries separated by commas, whitespace around `,` and `=`
/// allowed; empty entries are skipped.
pub fn parse_cluster(spec: &str) -> Result<BTreeMap<NodeId, String>, ClusterConfigError> {
    let mut nodes = BTreeMap::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((id, url)) = entry.split_once('=') else {
            return Err(ClusterConfigError::BadEntry(entry.to_owned()));
        };
        let (id, url) = (id.trim(), url.trim());
        if id.is_empty() || url.is_empty() {
            return Err(ClusterConfigError::BadEntry(entry.to_owned()));
        }
        if peer_ws_url(url).is_none() {
            return Err(ClusterConfigError::BadUrl { node: id.to_owned(), url: url.to_owned() });
        }
        if nodes.insert(id.to_owned(), url.to_owned()).is_some() {
            return Err(ClusterConfigError::Duplicate(id.to_owned()));
        }
    }
    Ok(nodes)
}

/// A peer's websocket URL: its `--cluster` URL with `http` turned into `ws` (same host, port and path).
pub fn peer_ws_url(url: &str) -> Option<String> {
    let lower = url.to_ascii_lowercase();
    for (from, to) in [("https://", "wss://"), ("http://", "ws://"), ("wss://", "wss://"), ("ws://", "ws://")]
    {
        if lower.starts_with(from) && url.len() > from.len() {
            return Some(format!("{to}{}", &url[from.len()..]));
        }
    }
    None
}

impl ClusterConfig {
    /// The cluster configuration of `config`, or `None` when `--cluster` is not set (a single node).
    pub fn from_server(config: &ServerConfig) -> Result<Option<ClusterConfig>, ClusterConfigError> {
        let Some(spec) = &config.cluster else { return Ok(None) };
        let node_id =
            config.node_id.clone().filter(|s| !s.is_empty()).ok_or(ClusterConfigError::MissingNodeId)?;
        let key =
            config.cluster_key.clone().filter(|s| !s.is_empty()).ok_or(ClusterConfigError::MissingKey)?;
        let nodes = parse_cluster(spec)?;
        if !nodes.contains_key(&node_id) {
            return Err(ClusterConfigError::NotListed(node_id));
        }
        if config.peer_ca.is_some() {
            let plain =
                nodes.iter().find(|(_, url)| !peer_ws_url(url).is_some_and(|u| u.starts_with("wss://")));
            if let Some((node, url)) = plain {
                return Err(ClusterConfigError::PlainUrlWithPeerCa { node: node.clone(), url: url.clone() });
            }
        }
        let tls = PeerTls::from_server(config).map_err(|e| ClusterConfigError::Tls(e.0))?;
        let election = ms(config.election_timeout, "election_timeout")?;
        let heartbeat = ms(config.heartbeat_timeout, "heartbeat_timeout")?;
        let leadership = match config.leadership_timeout {
            Some(l) => ms(l, "leadership_timeout")?,
            // antietcd's default, computed on numbers (Node concatenates strings here).
            None => (election + heartbeat) / 2,
        };
        let mut raft = tinyraft::Config::new(node_id.clone(), nodes.keys().cloned());
        raft.election_timeout = election;
        raft.heartbeat_timeout = heartbeat;
        raft.leadership_timeout = leadership;
        raft.leader_priority = config.leader_priority.filter(|p| *p > 0);
        let raft = raft.validate()?;
        let timeouts = PeerTimeouts {
            dump: ms(config.dump_timeout, "dump_timeout")?,
            load: ms(config.load_timeout, "load_timeout")?,
            forward: ms(config.forward_timeout, "forward_timeout")?,
            replication: ms(config.replication_timeout, "replication_timeout")?,
            compact: ms(config.compact_timeout, "compact_timeout")?,
            wait_quorum: ms(config.wait_quorum_timeout, "wait_quorum_timeout")?,
        };
        let term_file = match (&config.data_dir, &config.data) {
            (Some(dir), _) => Some(dir.join("raft_term")),
            (None, Some(file)) => {
                let mut name = file.file_name().map(|n| n.to_os_string()).unwrap_or_default();
                name.push(".raft_term");
                Some(file.with_file_name(name))
            }
            (None, None) => None,
        };
        Ok(Some(ClusterConfig {
            node_id,
            key,
            nodes,
            raft,
            reconnect_interval: ms(config.reconnect_interval, "reconnect_interval")?,
            timeouts,
            stale_read: config.stale_read,
            term_file,
            tls,
        }))
    }

    /// The other nodes and their websocket URLs.
    pub fn peers(&self) -> impl Iterator<Item = (&NodeId, String)> + '_ {
        self.nodes
            .iter()
            .filter(|(id, _)| **id != self.node_id)
            .filter_map(|(id, url)| peer_ws_url(url).map(|u| (id, u)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_antietcd_cluster_lists() {
        let n = parse_cluster(" n1 = http://127.0.0.1:1 ,n2=https://h:2/x,, n3=ws://h:3").unwrap();
        assert_eq!(n.len(), 3);
        assert_eq!(n["n1"], "http://127.0.0.1:1");
        assert_eq!(peer_ws_url(&n["n2"]).unwrap(), "wss://h:2/x");
        assert_eq!(peer_ws_url("HTTP://h:1").unwrap(), "ws://h:1");
        assert!(matches!(parse_cluster("n1"), Err(ClusterConfigError::BadEntry(_))));
        assert!(matches!(parse_cluster("n1=ftp://x"), Err(ClusterConfigError::BadUrl { .. })));
        assert!(matches!(parse_cluster("n1=http://a,n1=http://b"), Err(ClusterConfigError::Duplicate(_))));
    }
}
