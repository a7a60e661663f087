//! A Rust antietcd: an embeddable, etcd-compatible key-value store for coordination data.
//!
//! This crate is the server side of [valkeyrie](https://example.invalid/valkeyrie)'s default backend, and a
//! standalone library. Its core is the [`Engine`]: a revisioned, ordered key-value map with etcd's data
//! model (global revisions; per key create/mod revision, version and lease), all-or-nothing transactions
//! with compares on version, create/mod revision, value and lease, leases with expiry, compaction, and a
//! watch hub that streams ordered per-revision batches, replaying retained history on request.
//!
//! ```text
//!   embedder / REST layer ──► Engine ──► State (BTreeMap<key, entry>, leases, history)
//!                                │            │ commit: one WatchBatch per revision
//!                                │            ▼
//!                                └──────►  Hub ──bounded channel──► Watch (futures::Stream)
//! ```
//!
//! Keys are arbitrary bytes kept in one ordered map, so every range works and results come sorted: the
//! differences from antietcd 1.3.1 (which keeps a `/`-split tree) are listed in the workspace's
//! `compat.md`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), antietcd::Error> {
//! use antietcd::{Engine, Config, PutRequest, RangeRequest, KeyRange};
//! let engine = Engine::new(Config::default())?;
//! engine.put(PutRequest::new("/config/a", "1"))?;
//! let resp = engine.range(&RangeRequest::new(KeyRange::prefix("/config/")))?;
//! assert_eq!(resp.kvs[0].value, "1");
//! # Ok(()) }
//! ```

//! # Server
//!
//! The same crate serves antietcd 1.3.1's REST and websocket API (wire-compatible: any antietcd client works
//! unchanged; the differences are in `COMPAT-server.md`), persists to antietcd's gzip-JSON file, and ships
//! the `antietcd` and `anticli` binaries. Embedders use [`Node`]:
//!
//! ```no_run
//! # async fn example() -> Result<(), antietcd::ServerError> {
//! use antietcd::{Node, PutRequest, ServerConfig};
//! // Persisted, not listening (`embedded:///path/file`):
//! let node = Node::start(ServerConfig { listen: false, data: Some("/var/lib/app/kv.gz".into()), ..Default::default() }).await?;
//! let rev = node.engine().put(PutRequest::new("/a", "1"))?.revision;
//! node.sync(rev).await?; // durable
//! node.shutdown().await?;
//! // Serving on a port chosen by the OS (tests):
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| antietcd::ServerError::Bind { addr: ([127, 0, 0, 1], 0).into(), source: e })?;
//! let node = Node::with_listener(ServerConfig::default(), listener).await?;
//! println!("http://{}", node.local_addr().expect("listening"));
//! node.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Layout: `engine`/`types`/`watch` (the store), `wire` (JSON ⇄ engine types), `http` (REST pipeline),
//! `ws` (websocket watches), `persist` (file format, durability barrier), `server` ([`Node`], [`serve`],
//! accept loop, shutdown), `tls`, `config` ([`ServerConfig`]), [`cluster`] (peer transport and TinyRaft
//! election; `COMPAT-cluster.md`), `bin/` (antietcd, anticli).

pub mod cluster;
mod codec;
mod config;
pub mod durable;
mod engine;
mod error;
mod http;
mod keepalive;
pub mod persist;
mod server;
pub mod tls;
mod types;
pub mod wal;
mod watch;
mod wire;
mod ws;

pub use cluster::{ClusterConfig, ClusterConfigError, ClusterStatus};
pub use config::{parse_bool, ConfigError, ServerConfig};
pub use engine::{Config, Engine, Journal, JournalRecord, MAX_LEASE_TTL, MAX_TXN_DEPTH, MAX_TXN_OPS};
pub use error::Error;
pub use persist::{PersistError, PersistFilter};
pub use server::{serve, Node, ServerError};
pub use tinyraft::Role as RaftRole;
pub use types::*;
pub use watch::{Watch, WatchError};
