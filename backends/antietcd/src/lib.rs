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

mod config;
pub mod durable;
mod engine;
mod error;
mod http;
pub mod persist;
mod server;
pub mod tls;
mod types;
pub mod wal;
mod watch;
mod wire;
mod ws;

pub use config::{parse_bool, ConfigError, ServerConfig};
pub use engine::{Config, Engine, Journal, JournalRecord, MAX_LEASE_TTL, MAX_TXN_DEPTH, MAX_TXN_OPS};
pub use error::Error;
pub use persist::{PersistError, PersistFilter};
pub use server::{serve, Node, ServerError};
pub use types::*;
pub use watch::{Watch, WatchError};
