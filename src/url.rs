//! Store URLs: `scheme://endpoints/path?parameters`, parsed into a [`StoreUrl`] and opened by [`open`].
//!
//! | URL | backend |
//! |---|---|
//! | `embedded://` | an in-memory antietcd engine inside this process |
//! | `embedded:///path/file.gz` | the same, persisted; `?listen=ip:port` also serves antietcd's API |
//! | `embedded://?node_id=n1&cluster=n1=http://h1:p1,n2=…&cluster_key=K` | a cluster member, its node in-process |
//! | `etcd://host:port[,host:port…]`, `etcds://…` | etcd over its v3 JSON API (HTTP / HTTPS) |
//! | `antietcd://host:port[,host:port…]`, `antietcds://…` | an antietcd server (ours or Node's) |
//!
//! Parameters every backend takes: `prefix=/app` (every key of the store lives under `/app/`).
//! The embedded backend also takes `compact_revisions=N` (history kept for watches) and
//! `watch_capacity=N` (batches a watch consumer may fall behind before it gets `Lagged`), and, for a
//! cluster member, the cluster parameters described at [`open`].

use crate::error::{Error, Result};
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;

/// The backend a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scheme {
    /// `embedded://`
    Embedded,
    /// `etcd://`
    Etcd,
    /// `etcds://` (TLS)
    Etcds,
    /// `antietcd://`
    Antietcd,
    /// `antietcds://` (TLS)
    Antietcds,
}

const SUPPORTED: &str = "embedded, etcd, etcds, antietcd, antietcds";

impl Scheme {
    fn parse(s: &str) -> Option<Scheme> {
        Some(match s {
            "embedded" => Scheme::Embedded,
            "etcd" => Scheme::Etcd,
            "etcds" => Scheme::Etcds,
            "antietcd" => Scheme::Antietcd,
            "antietcds" => Scheme::Antietcds,
            _ => return None,
        })
    }

    /// The scheme as written in URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Embedded => "embedded",
            Scheme::Etcd => "etcd",
            Scheme::Etcds => "etcds",
            Scheme::Antietcd => "antietcd",
            Scheme::Antietcds => "antietcds",
        }
    }
}

/// A parsed store URL.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreUrl {
    /// The backend.
    pub scheme: Scheme,
    /// `host:port` endpoints, in the order given.
    pub endpoints: Vec<String>,
    /// The path after the endpoints (`""` if none), percent-decoded.
    pub path: String,
    /// Query parameters in order, percent-decoded; each name at most once.
    pub params: Vec<(String, String)>,
}

impl StoreUrl {
    /// Parses `url`. Checks the syntax, the scheme and the endpoints; parameters are checked by the backend.
    pub fn parse(url: &str) -> Result<StoreUrl> {
        let bad = |reason: &str| Error::InvalidUrl { url: url.to_owned(), reason: reason.to_owned() };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("expected scheme://..."))?;
        let scheme_lc = scheme.to_ascii_lowercase();
        let scheme = Scheme::parse(&scheme_lc)
            .ok_or(Error::UnknownScheme { scheme: scheme_lc.clone(), supported: SUPPORTED })?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        if rest.contains('#') || query.is_some_and(|q| q.contains('#')) {
            return Err(bad("fragments (#) are not allowed"));
        }
        let (authority, path) = match (scheme, rest.find('/')) {
            // `embedded://file.gz`, `embedded://dir/file.gz`, `embedded:///abs/file.gz`: all path.
            (Scheme::Embedded, _) => ("", rest),
            (_, Some(i)) => (&rest[..i], &rest[i..]),
            (_, None) => (rest, ""),
        };
        let mut endpoints = Vec::new();
        for ep in authority.split(',').filter(|e| !e.is_empty()) {
            let (host, port) =
                ep.rsplit_once(':').ok_or_else(|| bad(&format!("endpoint {ep:?} needs host:port")))?;
            if host.is_empty() || host.contains(['@', ' ']) {
                return Err(bad(&format!("endpoint {ep:?} has an invalid host")));
            }
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(bad(&format!("endpoint {ep:?} has an invalid port")));
            }
            endpoints.push(ep.to_owned());
        }
        let path = percent_decode(path).map_err(|r| bad(&r))?;
        let mut params: Vec<(String, String)> = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = percent_decode(name).map_err(|r| bad(&r))?;
            let value = percent_decode(value).map_err(|r| bad(&r))?;
            if params.iter().any(|(n, _)| *n == name) {
                return Err(bad(&format!("parameter {name:?} given twice")));
            }
            params.push((name, value));
        }
        Ok(StoreUrl { scheme, endpoints, path, params })
    }

    /// The value of parameter `name`, if given.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Fails on the first parameter not in `known`.
    fn check_params(&self, backend: &'static str, known: &[&str]) -> Result<()> {
        match self.params.iter().find(|(n, _)| !known.contains(&n.as_str())) {
            Some((name, _)) => Err(Error::UnknownParameter { name: name.clone(), backend }),
            None => Ok(()),
        }
    }

    /// Parameter `name` parsed as a number in `range`, or `default`.
    fn number<T>(&self, name: &str, default: T, range: std::ops::RangeInclusive<T>) -> Result<T>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(v) = self.param(name) else { return Ok(default) };
        match v.parse::<T>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(Error::InvalidParameter {
                name: name.to_owned(),
                value: v.to_owned(),
                reason: format!("expected a whole number from {} to {}", range.start(), range.end()),
            }),
        }
    }
}

/// A duration parameter: `500ms`, `5s`, `2m`, or a bare number of seconds.
impl StoreUrl {
    fn duration(&self, name: &str, default: Duration) -> Result<Duration> {
        let Some(v) = self.param(name) else { return Ok(default) };
        let (digits, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
        let n: Option<u64> = digits.parse().ok();
        let d = match (n, unit) {
            (Some(n), "ms") => Some(Duration::from_millis(n)),
            (Some(n), "s" | "") => Some(Duration::from_secs(n)),
            (Some(n), "m") => n.checked_mul(60).map(Duration::from_secs),
            _ => None,
        };
        match d {
            Some(d) if !d.is_zero() => Ok(d),
            _ => Err(Error::InvalidParameter {
                name: name.to_owned(),
                value: v.to_owned(),
                reason: "expected a positive duration such as 500ms, 5s or 2m".to_owned(),
            }),
        }
    }
}

impl StoreUrl {
    /// A duration parameter with its unit (`500ms`, `2s`, `1m`), in whole milliseconds, or `None` if absent.
    /// A bare number is refused: antietcd's flags count milliseconds where the other URL parameters count
    /// seconds, and guessing wrong would be off by a thousand.
    fn millis(&self, name: &str) -> Result<Option<u64>> {
        let Some(v) = self.param(name) else { return Ok(None) };
        if v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::InvalidParameter {
                name: name.to_owned(),
                value: v.to_owned(),
                reason: "give a unit: 500ms, 2s or 1m".to_owned(),
            });
        }
        let d = self.duration(name, Duration::ZERO)?;
        Ok(Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }
}

fn percent_decode(s: &str) -> std::result::Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or("bad percent-encoding")?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoding is not UTF-8".to_owned())
}

/// Opens the store `url` names.
///
/// | URL | backend |
/// |---|---|
/// | `embedded://` | an in-memory antietcd engine inside this process |
/// | `embedded:///path/dir` | the same, durable: a write-ahead log with group commit in `dir` |
/// | `embedded:///path/file.gz` | the same, persisted in antietcd's gzip-JSON format (compatibility) |
/// | `embedded://?listen=ip:port` | the same, also serving antietcd's REST + websocket API |
/// | `embedded://[path]?node_id=n1&cluster=n1=http://ip:port,…&cluster_key=K` | a cluster member (below) |
/// | `etcd://host:port[,host:port…]`, `etcds://…` | etcd over its v3 JSON API (HTTP / HTTPS) |
/// | `antietcd://host:port[,host:port…]`, `antietcds://…` | an antietcd server (ours or Node's) |
///
/// Every backend takes `prefix=/app` (all keys of the store live under `/app/`). The embedded backend
/// also takes `compact_revisions=N` (revisions of history kept for watches, default 1000),
/// `watch_capacity=N` (batches a watch consumer may fall behind before it gets [`Error::Lagged`],
/// default 4096), `listen=ip:port` and, with a file, `persist_interval=ms` (antietcd's relaxed mode:
/// persist at most that often, acknowledging writes before they are on disk). The remote backends take
/// `timeout`, `connect_timeout`, `watch_reconnect_timeout` (how long a watch tries to resume where it was
/// before it resynchronises from a fresh snapshot, default 60s), `username` and `password`, `ca`, `cert`
/// and `key`. Unknown parameters and bad values are typed errors.
///
/// **Cluster members.** `embedded://?node_id=n1&cluster=n1=http://10.0.0.1:2379,n2=http://10.0.0.2:2379,
/// n3=http://10.0.0.3:2379&cluster_key=secret` runs antietcd node `n1` of that cluster inside this
/// process (with a path, durable as above): it listens on its own URL's port (`listen=ip:port` picks the
/// interface; it is required when the node's URL names a host rather than an address, and must use the
/// same port), connects to the other members, and takes part in the election of the cluster's leader.
/// The store talks to this node first through the antietcd client and fails over to the other members;
/// the node forwards writes to the leader. Also: `election_timeout`, `heartbeat_timeout`,
/// `leadership_timeout` (with a unit: `500ms`, `5s`; antietcd's defaults 5s, 1s and their mean) and
/// `stale_read` (default `false`: every member serves linearizable reads; `true`: followers answer reads
/// from their own copy, which may be behind). Members talk plain HTTP. Closing or dropping the store
/// shuts the node down. While no leader is known (the cluster starting, an election) a member holds a call
/// for up to 2 s and then refuses it, and the client tries the next member; when none can serve it, the
/// call fails with [`Error::NotReachable`] (transient): retry it. Needs the `etcd` feature (the client).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> valkeyrie::Result<()> {
/// let store = valkeyrie::open("embedded://?prefix=/myapp").await?;
/// store.put("greeting", b"hello", None).await?;
/// assert_eq!(store.get("greeting", None).await?.value, b"hello");
/// # Ok(()) }
/// ```
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    let u = StoreUrl::parse(url)?;
    let prefix = u.param("prefix").unwrap_or("").to_owned();
    match u.scheme {
        Scheme::Embedded => open_embedded(&u, &prefix).await,
        #[cfg(feature = "etcd")]
        Scheme::Etcd | Scheme::Etcds | Scheme::Antietcd | Scheme::Antietcds => {
            open_remote(url, &u, &prefix).await
        }
        #[cfg(not(feature = "etcd"))]
        s => Err(Error::FeatureNotEnabled { scheme: s.as_str(), feature: "etcd" }),
    }
}

/// The parameters of `embedded://` that only a cluster member takes.
const CLUSTER_PARAMS: &[&str] =
    &["node_id", "cluster_key", "election_timeout", "heartbeat_timeout", "leadership_timeout", "stale_read"];

/// `embedded://`: an engine, a node (persistent or listening), or a cluster member.
async fn open_embedded(u: &StoreUrl, prefix: &str) -> Result<Arc<dyn Store>> {
    let mut known =
        vec!["prefix", "compact_revisions", "watch_capacity", "listen", "persist_interval", "cluster"];
    known.extend_from_slice(CLUSTER_PARAMS);
    u.check_params("embedded", &known)?;
    let compact_revisions = u.number("compact_revisions", 1000, 0..=i64::MAX)?;
    let watch_capacity = u.number("watch_capacity", 4096, 1..=1 << 24)?;
    let data = (!u.path.is_empty() && u.path != "/").then(|| std::path::PathBuf::from(&u.path));
    let listen = match u.param("listen") {
        None => None,
        Some(v) => Some(v.parse::<std::net::SocketAddr>().map_err(|_| Error::InvalidParameter {
            name: "listen".into(),
            value: v.into(),
            reason: "expected ip:port, such as 127.0.0.1:2379".into(),
        })?),
    };
    let persist_interval = u.number("persist_interval", 0, 0..=u64::MAX)?;
    let cluster = match u.param("cluster") {
        Some(spec) => Some(ClusterMember::parse(u, spec, listen)?),
        None => {
            if let Some(name) = CLUSTER_PARAMS.iter().find(|n| u.param(n).is_some()) {
                return Err(Error::InvalidParameter {
                    name: (*name).into(),
                    value: u.param(name).unwrap_or("").into(),
                    reason: "only meaningful for a cluster member (with cluster=id=url,...)".into(),
                });
            }
            None
        }
    };
    if data.is_none() && listen.is_none() && cluster.is_none() {
        if u.param("persist_interval").is_some() {
            return Err(Error::InvalidParameter {
                name: "persist_interval".into(),
                value: persist_interval.to_string(),
                reason: "only meaningful with a data file (embedded:///path/to/file)".into(),
            });
        }
        let config = antietcd::Config::default()
            .with_compact_revisions(compact_revisions)
            .with_watch_capacity(watch_capacity);
        return crate::backend::embedded::open(config, prefix);
    }
    // A `.gz` file is antietcd's gzip-JSON format (compatibility, import/export); anything else is a
    // directory holding a write-ahead log, whose cost per write does not grow with the store.
    let (data, data_dir) = match data {
        Some(p) if p.extension().is_some_and(|e| e == "gz") => (Some(p), None),
        other => (None, other),
    };
    let listen = cluster.as_ref().map(|c| c.listen).or(listen);
    let config = antietcd::ServerConfig {
        listen: listen.is_some(),
        ip: listen.map(|a| a.ip()),
        port: listen.map_or(0, |a| a.port()),
        data,
        data_dir,
        persist_interval,
        compact_revisions,
        watch_capacity,
        ..Default::default()
    };
    match cluster {
        None => crate::backend::embedded::open_node(config, prefix).await,
        Some(member) => {
            let config = member.server_config(config)?;
            open_member(config, member.endpoints, prefix).await
        }
    }
}

/// Starts a cluster member's node and its store.
#[cfg(feature = "etcd")]
async fn open_member(
    config: antietcd::ServerConfig,
    endpoints: Vec<String>,
    prefix: &str,
) -> Result<Arc<dyn Store>> {
    crate::backend::embedded::open_member(config, endpoints, prefix).await
}

/// A member serves the store through the antietcd client, which the `etcd` feature brings.
#[cfg(not(feature = "etcd"))]
async fn open_member(_: antietcd::ServerConfig, _: Vec<String>, _: &str) -> Result<Arc<dyn Store>> {
    Err(Error::FeatureNotEnabled { scheme: "embedded", feature: "etcd" })
}

/// How long a member's node holds a call while it knows no synced leader (antietcd's `wait_quorum_timeout`,
/// 30 s by default), in milliseconds.
const MEMBER_WAIT_QUORUM_MS: u64 = 2000;

/// The cluster parameters of `embedded://…?cluster=…`, checked.
#[derive(Debug)]
struct ClusterMember {
    /// `cluster` as given: `id=url,id=url,...`.
    spec: String,
    node_id: String,
    key: String,
    /// Where this node listens (its own URL's port).
    listen: std::net::SocketAddr,
    /// `http://host:port` of every member, this node's first: the store's client tries them in order.
    endpoints: Vec<String>,
    /// TinyRaft timeouts in milliseconds (`None`: antietcd's default).
    election: Option<u64>,
    heartbeat: Option<u64>,
    leadership: Option<u64>,
    stale_read: bool,
}

impl ClusterMember {
    fn parse(u: &StoreUrl, spec: &str, listen: Option<std::net::SocketAddr>) -> Result<ClusterMember> {
        let invalid = |name: &str, value: &str, reason: String| Error::InvalidParameter {
            name: name.to_owned(),
            value: value.to_owned(),
            reason,
        };
        let nodes = antietcd::cluster::parse_cluster(spec).map_err(|e| {
            use antietcd::ClusterConfigError as E;
            let reason = match e {
                E::BadEntry(entry) => format!("entry {entry:?} is not id=url"),
                E::Duplicate(id) => format!("node {id:?} is listed twice"),
                E::BadUrl { node, url } => {
                    format!("the URL {url:?} of node {node:?} is not http://host:port")
                }
                other => other.to_string(),
            };
            invalid("cluster", spec, reason)
        })?;
        if nodes.is_empty() {
            return Err(invalid(
                "cluster",
                spec,
                "expected id=http://host:port,... listing every node".into(),
            ));
        }
        // Every member's client address: `http://host:port`, nothing else.
        let mut addrs = std::collections::BTreeMap::new();
        for (id, url) in &nodes {
            let lower = url.to_ascii_lowercase();
            let rest = match ["http://", "ws://"].iter().find(|s| lower.starts_with(*s)) {
                Some(scheme) => &url[scheme.len()..],
                None => {
                    return Err(invalid(
                        "cluster",
                        spec,
                        format!(
                        "the URL {url:?} of node {id:?}: embedded members speak plain http:// (no TLS yet)"
                    ),
                    ))
                }
            };
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            let port =
                rest.rsplit_once(':').and_then(|(h, p)| (!h.is_empty() && !h.contains('/')).then_some(p));
            match port.and_then(|p| p.parse::<u16>().ok()) {
                Some(p) if p != 0 => {}
                _ => {
                    return Err(invalid(
                        "cluster",
                        spec,
                        format!(
                        "the URL {url:?} of node {id:?} should be http://host:port (a fixed port, no path)"
                    ),
                    ))
                }
            }
            addrs.insert(id.clone(), rest.to_owned());
        }
        let node_id = match u.param("node_id") {
            None | Some("") => {
                return Err(invalid(
                    "node_id",
                    "",
                    "a cluster member needs node_id=<its id in cluster>".into(),
                ))
            }
            Some(id) => id.to_owned(),
        };
        let Some(own) = addrs.get(&node_id).cloned() else {
            let ids: Vec<&str> = addrs.keys().map(String::as_str).collect();
            return Err(invalid(
                "node_id",
                &node_id,
                format!(
                    "not listed in cluster (which names {}); list every node, this one included",
                    ids.join(", ")
                ),
            ));
        };
        let key = match u.param("cluster_key") {
            None | Some("") => {
                return Err(invalid(
                    "cluster_key",
                    "",
                    "a cluster member needs cluster_key=<shared secret>".into(),
                ))
            }
            Some(k) => k.to_owned(),
        };
        // The node listens where the others reach it: its own URL's port.
        let (own_host, own_port) = own.rsplit_once(':').unwrap_or((own.as_str(), ""));
        let own_ip = own_host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().ok();
        let own_port: u16 = own_port.parse().unwrap_or(0);
        let listen = match (listen, own_ip) {
            (Some(l), _) if l.port() != own_port => {
                return Err(invalid(
                    "listen",
                    &l.to_string(),
                    format!("node {node_id} is reached at {own} (in cluster): listen on port {own_port}"),
                ))
            }
            (Some(l), Some(ip)) if !l.ip().is_unspecified() && l.ip() != ip => {
                return Err(invalid(
                    "listen",
                    &l.to_string(),
                    format!(
                        "node {node_id} is reached at {own} (in cluster): listen on {ip} or every interface"
                    ),
                ))
            }
            (Some(l), _) => l,
            (None, Some(ip)) => std::net::SocketAddr::new(ip, own_port),
            (None, None) => {
                return Err(invalid(
                    "listen",
                    "",
                    format!("node {node_id} is reached at {own}, a host name: give listen=ip:{own_port}"),
                ))
            }
        };
        let mut endpoints = vec![format!("http://{own}")];
        endpoints.extend(addrs.iter().filter(|(id, _)| **id != node_id).map(|(_, a)| format!("http://{a}")));
        let stale_read = match u.param("stale_read") {
            None => false,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => return Err(invalid("stale_read", v, "expected true or false (1 or 0)".into())),
            },
        };
        Ok(ClusterMember {
            spec: spec.to_owned(),
            node_id,
            key,
            listen,
            endpoints,
            election: u.millis("election_timeout")?,
            heartbeat: u.millis("heartbeat_timeout")?,
            leadership: u.millis("leadership_timeout")?,
            stale_read,
        })
    }

    /// `config` with this member's cluster options, checked as the node will check them.
    fn server_config(&self, config: antietcd::ServerConfig) -> Result<antietcd::ServerConfig> {
        let defaults = antietcd::ServerConfig::default();
        let config = antietcd::ServerConfig {
            cluster: Some(self.spec.clone()),
            node_id: Some(self.node_id.clone()),
            cluster_key: Some(self.key.clone()),
            election_timeout: self.election.unwrap_or(defaults.election_timeout),
            heartbeat_timeout: self.heartbeat.unwrap_or(defaults.heartbeat_timeout),
            leadership_timeout: self.leadership,
            stale_read: self.stale_read,
            // While the node knows no synced leader it holds a call at most this long, then answers 503: well
            // within the client's 5 s request timeout, so that the client moves on to another member instead
            // of timing out on this one (a timeout is not failed over).
            wait_quorum_timeout: MEMBER_WAIT_QUORUM_MS,
            ..config
        };
        if let Err(e) = antietcd::ClusterConfig::from_server(&config) {
            let ms = |v: Option<u64>| v.map_or_else(|| "default".to_owned(), |v| format!("{v}ms"));
            let value = format!(
                "election_timeout={} heartbeat_timeout={} leadership_timeout={}",
                ms(self.election),
                ms(self.heartbeat),
                ms(self.leadership)
            );
            return Err(Error::InvalidParameter {
                name: "election_timeout".into(),
                value,
                reason: format!("{e} (defaults: election 5s, heartbeat 1s, leadership their mean)"),
            });
        }
        Ok(config)
    }
}

/// `etcd://`, `etcds://`, `antietcd://`, `antietcds://`.
#[cfg(feature = "etcd")]
async fn open_remote(url: &str, u: &StoreUrl, prefix: &str) -> Result<Arc<dyn Store>> {
    let (name, tls) = match u.scheme {
        Scheme::Etcd => ("etcd", false),
        Scheme::Etcds => ("etcd", true),
        Scheme::Antietcd => ("antietcd", false),
        _ => ("antietcd", true),
    };
    u.check_params(
        name,
        &[
            "prefix",
            "timeout",
            "connect_timeout",
            "watch_reconnect_timeout",
            "username",
            "password",
            "ca",
            "cert",
            "key",
        ],
    )?;
    let watch_reconnect = u.duration("watch_reconnect_timeout", Duration::from_secs(60))?;
    if u.endpoints.is_empty() {
        return Err(Error::InvalidUrl {
            url: url.to_owned(),
            reason: format!("{name} needs host:port endpoints"),
        });
    }
    if !u.path.is_empty() && u.path != "/" {
        return Err(Error::InvalidUrl {
            url: url.to_owned(),
            reason: "a remote store URL takes no path".to_owned(),
        });
    }
    let mut options = etcd_json::ClientOptions::new()
        .with_request_timeout(u.duration("timeout", Duration::from_secs(5))?)
        .with_connect_timeout(u.duration("connect_timeout", Duration::from_secs(3))?);
    match (u.param("username"), u.param("password")) {
        (Some(user), Some(password)) => options = options.with_user(user, password),
        (None, None) => {}
        _ => {
            return Err(Error::InvalidParameter {
                name: "username".into(),
                value: u.param("username").unwrap_or("").into(),
                reason: "username and password go together".into(),
            })
        }
    }
    if let Some(ca) = u.param("ca") {
        options = options.with_ca_file(ca);
    }
    match (u.param("cert"), u.param("key")) {
        (Some(cert), Some(key)) => options = options.with_client_cert(cert, key),
        (None, None) => {}
        _ => {
            return Err(Error::InvalidParameter {
                name: "cert".into(),
                value: u.param("cert").unwrap_or("").into(),
                reason: "cert and key go together".into(),
            })
        }
    }
    let scheme = if tls { "https" } else { "http" };
    let endpoints: Vec<String> = u.endpoints.iter().map(|e| format!("{scheme}://{e}")).collect();
    let client = etcd_json::Client::connect(endpoints, options)
        .await
        .map_err(|e| crate::backend::remote::map_err(name, e))?;
    let remote = crate::backend::remote::Remote::new(client, name, watch_reconnect);
    Ok(Arc::new(crate::backend::Client::new(remote, prefix)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// url, scheme, endpoints, path, params
    type Case = (
        &'static str,
        Scheme,
        &'static [&'static str],
        &'static str,
        &'static [(&'static str, &'static str)],
    );

    /// Parsing of every URL shape, good and bad.
    #[test]
    fn parse_table() {
        let ok: &[Case] = &[
            ("embedded://", Scheme::Embedded, &[], "", &[]),
            ("EMBEDDED://", Scheme::Embedded, &[], "", &[]),
            ("embedded:///var/lib/app.db", Scheme::Embedded, &[], "/var/lib/app.db", &[]),
            ("embedded://data/app.db.gz", Scheme::Embedded, &[], "data/app.db.gz", &[]),
            ("embedded://?prefix=/myapp", Scheme::Embedded, &[], "", &[("prefix", "/myapp")]),
            ("embedded://?prefix=%2Fa%20b&x", Scheme::Embedded, &[], "", &[("prefix", "/a b"), ("x", "")]),
            ("etcd://127.0.0.1:2379", Scheme::Etcd, &["127.0.0.1:2379"], "", &[]),
            ("etcd://a:1,b:2/", Scheme::Etcd, &["a:1", "b:2"], "/", &[]),
            ("etcds://h:2379?timeout=5s", Scheme::Etcds, &["h:2379"], "", &[("timeout", "5s")]),
            ("antietcd://[::1]:2379", Scheme::Antietcd, &["[::1]:2379"], "", &[]),
            ("antietcds://n1:1,n2:2,n3:3", Scheme::Antietcds, &["n1:1", "n2:2", "n3:3"], "", &[]),
        ];
        for (url, scheme, endpoints, path, params) in ok {
            let u = StoreUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(u.scheme, *scheme, "{url}");
            assert_eq!(u.endpoints, *endpoints, "{url}");
            assert_eq!(u.path, *path, "{url}");
            let params: Vec<(String, String)> =
                params.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
            assert_eq!(u.params, params, "{url}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "InvalidUrl"),
            ("embedded", "InvalidUrl"),
            ("consul://h:1", "UnknownScheme"),
            ("etcd://host", "InvalidUrl"),
            ("etcd://host:99999", "InvalidUrl"),
            ("etcd://host:0", "InvalidUrl"),
            ("etcd://:2379", "InvalidUrl"),
            ("etcd://user@h:1", "InvalidUrl"),
            ("etcd://h:1?a=1&a=2", "InvalidUrl"),
            ("etcd://h:1?a=%zz", "InvalidUrl"),
            ("etcd://h:1?a=%ff", "InvalidUrl"),
            ("etcd://h:1#frag", "InvalidUrl"),
        ];
        for (url, kind) in bad {
            let e = StoreUrl::parse(url).expect_err(url);
            assert!(format!("{e:?}").starts_with(kind), "{url}: {e:?}");
        }
    }

    /// Arbitrary strings never panic the parser (they parse or are a typed error).
    #[test]
    fn random_urls_do_not_panic() {
        use rand::{Rng, SeedableRng};
        let alphabet: Vec<char> = "embdtcanis:/?&=%,.[]@#0123456789 éü\u{0}".chars().collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let len = rng.random_range(0..40);
            let mut url: String = (0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect();
            if rng.random_bool(0.5) {
                url.insert_str(
                    0,
                    ["embedded://", "etcd://", "antietcd://h:1", "etcds://a:2,"][rng.random_range(0..4)],
                );
            }
            let _ = StoreUrl::parse(&url);
            if let Ok(u) = StoreUrl::parse(&url) {
                let _ = u.duration("timeout", Duration::from_secs(1));
                let _ = u.number("n", 0u64, 0..=10);
            }
        }
    }

    /// Duration parameters: units, bare seconds, and the refusals.
    #[test]
    fn durations() {
        let u = StoreUrl::parse("etcd://h:1?a=500ms&b=5s&c=2m&d=7&e=0s&f=1h&g=-1s&h=").unwrap();
        let d = |name| u.duration(name, Duration::from_secs(99));
        assert_eq!(d("a").unwrap(), Duration::from_millis(500));
        assert_eq!(d("b").unwrap(), Duration::from_secs(5));
        assert_eq!(d("c").unwrap(), Duration::from_secs(120));
        assert_eq!(d("d").unwrap(), Duration::from_secs(7));
        assert_eq!(d("missing").unwrap(), Duration::from_secs(99));
        for bad in ["e", "f", "g", "h"] {
            assert!(matches!(d(bad), Err(Error::InvalidParameter { .. })), "{bad}");
        }
    }

    /// What `open` refuses, with the typed error naming the problem.
    #[tokio::test]
    async fn open_errors() {
        let cases: &[(&str, &str)] = &[
            ("embedded://?bogus=1", "UnknownParameter"),
            ("embedded://?compact_revisions=-1", "InvalidParameter"),
            ("embedded://?watch_capacity=0", "InvalidParameter"),
            ("embedded://?watch_capacity=lots", "InvalidParameter"),
            ("embedded://?listen=nowhere", "InvalidParameter"),
            ("embedded://?persist_interval=100", "InvalidParameter"),
            ("redis://h:1", "UnknownScheme"),
            #[cfg(not(feature = "etcd"))]
            ("etcd://h:1", "FeatureNotEnabled"),
            #[cfg(feature = "etcd")]
            ("etcd://", "InvalidUrl"),
            #[cfg(feature = "etcd")]
            ("etcd://h:1/path", "InvalidUrl"),
            #[cfg(feature = "etcd")]
            ("etcd://h:1?bogus=1", "UnknownParameter"),
            #[cfg(feature = "etcd")]
            ("etcd://h:1?timeout=0", "InvalidParameter"),
            #[cfg(feature = "etcd")]
            ("etcd://h:1?timeout=fast", "InvalidParameter"),
            #[cfg(feature = "etcd")]
            ("etcd://h:1?username=u", "InvalidParameter"),
            #[cfg(feature = "etcd")]
            ("antietcd://h:1?cert=c.pem", "InvalidParameter"),
            #[cfg(feature = "etcd")]
            ("antietcd://127.0.0.1:1?connect_timeout=200ms&timeout=300ms", "NotReachable"),
        ];
        for (url, kind) in cases {
            let e = open(url).await.expect_err(url);
            assert!(format!("{e:?}").starts_with(kind), "{url}: {e:?}");
        }
        let store = open("embedded://?prefix=/x&compact_revisions=10&watch_capacity=8").await.unwrap();
        assert_eq!(store.backend(), "embedded");
    }

    /// A cluster member's parameters: each mistake is an error naming the parameter, found before anything
    /// is started.
    #[tokio::test]
    async fn cluster_member_errors() {
        let three = "n1=http://127.0.0.1:7001,n2=http://127.0.0.1:7002,n3=http://127.0.0.1:7003";
        let ok = format!("node_id=n1&cluster={three}&cluster_key=k");
        let cases: Vec<(String, &str)> = vec![
            (format!("cluster={three}&cluster_key=k"), "node_id"),
            (format!("node_id=&cluster={three}&cluster_key=k"), "node_id"),
            (format!("node_id=n9&cluster={three}&cluster_key=k"), "node_id"),
            (format!("node_id=n1&cluster={three}"), "cluster_key"),
            (format!("node_id=n1&cluster={three}&cluster_key="), "cluster_key"),
            (format!("{ok}&listen=127.0.0.1:7002"), "listen"),
            (format!("{ok}&listen=127.0.0.2:7001"), "listen"),
            ("node_id=n1&cluster=n1=http://db1:7001&cluster_key=k".into(), "listen"),
            ("node_id=n1&cluster=n1=https://127.0.0.1:7001&cluster_key=k".into(), "cluster"),
            ("node_id=n1&cluster=n1=http://127.0.0.1:7001/x&cluster_key=k".into(), "cluster"),
            ("node_id=n1&cluster=n1=http://127.0.0.1:0&cluster_key=k".into(), "cluster"),
            ("node_id=n1&cluster=n1=http://127.0.0.1&cluster_key=k".into(), "cluster"),
            ("node_id=n1&cluster=n1&cluster_key=k".into(), "cluster"),
            ("node_id=n1&cluster=n1=http://a:1,n1=http://b:2&cluster_key=k".into(), "cluster"),
            ("node_id=n1&cluster=&cluster_key=k".into(), "cluster"),
            (format!("{ok}&election_timeout=5000"), "election_timeout"),
            (format!("{ok}&heartbeat_timeout=0ms"), "heartbeat_timeout"),
            (format!("{ok}&election_timeout=500ms"), "election_timeout"),
            (
                format!("{ok}&election_timeout=2s&heartbeat_timeout=200ms&leadership_timeout=3s"),
                "election_timeout",
            ),
            (format!("{ok}&stale_read=maybe"), "stale_read"),
            ("node_id=n1".into(), "node_id"),
            ("cluster_key=k".into(), "cluster_key"),
            ("stale_read=1".into(), "stale_read"),
        ];
        for (query, param) in cases {
            let url = format!("embedded://?{query}");
            match open(&url).await {
                Err(Error::InvalidParameter { name, .. }) if name == param => {}
                other => panic!("{url}: expected InvalidParameter {{ name: {param:?} }}, got {other:?}"),
            }
        }
        let e = open(&format!("embedded://?{ok}&peer_ca=x")).await.expect_err("unknown parameter");
        assert!(matches!(e, Error::UnknownParameter { ref name, .. } if name == "peer_ca"), "{e:?}");
        #[cfg(not(feature = "etcd"))]
        assert!(matches!(open(&format!("embedded://?{ok}")).await, Err(Error::FeatureNotEnabled { .. })));
    }
}
