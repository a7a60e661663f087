//! # valkeyrie
//!
//! One async [`Store`] trait for coordination data — leader election, service discovery, live
//! configuration — over interchangeable backends picked by a URL at run time:
//!
//! | URL | backend |
//! |---|---|
//! | `embedded://` | the antietcd engine inside this process: nothing to install |
//! | `embedded:///path/dir` | the same, durable: a write-ahead log (a write returns once it is on disk) |
//! | `embedded:///path/file.gz` | the same, in antietcd's gzip-JSON file format (compatibility) |
//! | `embedded://?listen=127.0.0.1:2379` | the same, also serving antietcd's API to other processes |
//! | `embedded://?node_id=n1&cluster=n1=http://…,n2=…&cluster_key=K` | a cluster member, its node in-process |
//! | `etcd://host:port[,…]`, `etcds://…` | etcd (>= 3.4) over its v3 JSON API |
//! | `antietcd://host:port[,…]`, `antietcds://…` | an antietcd server (this project's or Node's) |
//!
//! ```
//! use futures::StreamExt;
//! use valkeyrie::{open, EventKind, LockOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> valkeyrie::Result<()> {
//! let store = open("embedded://").await?;
//! let mut changes = store.watch("config/level", None).await?;     // works before the key exists
//! assert_eq!(changes.next().await.unwrap()?.kind, EventKind::Delete); // first: the current state
//! store.put("config/level", b"debug", None).await?;
//! assert_eq!(changes.next().await.unwrap()?.pair.value, b"debug");
//!
//! let lock = store.new_lock("leader", Some(LockOptions::new().with_value("me"))).await?;
//! let held = lock.lock().await?;              // waits until acquired; renewed in the background
//! assert!(held.fencing_token() > 0);
//! lock.unlock().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`Store`] (`store.rs`): the trait and its contract; [`KVPair`], [`Event`], [`TreeBatch`] (`kv.rs`);
//!   options (`options.rs`); the one [`Error`] enum (`error.rs`); [`open`] and [`StoreUrl`] (`url.rs`).
//! - `backend/`: the valkeyrie semantics written once over an etcd-shaped internal trait, and thin
//!   adapters mapping each backend's native types and errors onto it.
//! - [`recipes`]: coordination recipes over any `Store`: [`Lock`], [`Election`], [`register`] and
//!   [`discover`] for service discovery.
//! - [`embedded`]: extra handles on an in-process engine.

mod backend;
mod error;
mod kv;
mod lease;
mod options;
pub mod recipes;
mod store;
mod url;

pub use error::{BoxError, Error, Result};
pub use kv::{Event, EventKind, KVPair, LeaseId, TreeBatch};
pub use lease::{Lease, Lost};
pub use options::{LockOptions, ReadOptions, WriteOptions};
pub use recipes::discovery::{discover, register, Instances, Registration};
pub use recipes::election::{Election, Leadership};
pub use recipes::lock::{Lock, LockHeld};
pub use store::{KeyWatch, Store, TreeWatch};
pub use url::{open, Scheme, StoreUrl};

/// The embedded backend: more store handles on one in-process engine.
pub mod embedded {
    pub use crate::backend::embedded::connect;
    pub use antietcd::{Config, Engine};
}
