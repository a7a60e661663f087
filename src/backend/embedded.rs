//! The embedded backend: the antietcd [`Engine`] running inside the application, called directly.

use super::{Backend, Client, Cmp, Op, OpResult, Range, RawBatch, RawEvent, RawKv, RawWatch, TxnResult};
use crate::error::{Error, Result};
use crate::kv::{EventKind, LeaseId};
use crate::store::Store;
use antietcd::{
    Compare, CompareResult, CompareTarget, DeleteRequest, Engine, KeyRange, KeyValue, Node, PutRequest,
    RangeRequest, ServerConfig, ServerError, TxnOp, TxnOpResponse, TxnRequest, WatchError, WatchRequest,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use std::sync::{Arc, Weak};

const NAME: &str = "embedded";

/// The embedded backend over one engine.
#[derive(Debug)]
pub(crate) struct Embedded {
    engine: Engine,
    /// What closing this handle closes: nothing (another handle owns the engine), the engine, or the node
    /// around it (persistence, listener).
    owned: Owned,
    /// The durability barrier of a persistent node: writes are acknowledged once on disk. Weak, so that
    /// close can take the node back from `owned` to shut it down.
    durable: Option<Weak<Node>>,
}

#[derive(Debug)]
enum Owned {
    Nothing,
    Engine,
    Node(tokio::sync::Mutex<Option<Arc<Node>>>),
}

/// A store over an in-memory engine that this store owns: closing the store closes the engine.
pub(crate) fn open(config: antietcd::Config, prefix: &str) -> Result<Arc<dyn Store>> {
    let engine = Engine::new(config).map_err(map_err)?;
    Ok(Arc::new(Client::new(Embedded { engine, owned: Owned::Engine, durable: None }, prefix)))
}

/// A store over an antietcd node (persistent, serving, or both) that this store owns: closing the store
/// shuts the node down (a last persist, listener and websockets closed).
pub(crate) async fn open_node(config: ServerConfig, prefix: &str) -> Result<Arc<dyn Store>> {
    let persistent = (config.data.is_some() || config.data_dir.is_some()) && config.persist_interval == 0;
    let node = Arc::new(Node::start(config).await.map_err(node_err)?);
    let engine = node.engine().clone();
    let durable = persistent.then(|| Arc::downgrade(&node));
    let owned = Owned::Node(tokio::sync::Mutex::new(Some(node)));
    Ok(Arc::new(Client::new(Embedded { engine, owned, durable }, prefix)))
}

/// Another store handle on an existing engine, with its own leases and watches. Closing it leaves the
/// engine running for its other users.
pub fn connect(engine: &Engine, prefix: &str) -> Arc<dyn Store> {
    Arc::new(Client::new(Embedded { engine: engine.clone(), owned: Owned::Nothing, durable: None }, prefix))
}

fn node_err(e: ServerError) -> Error {
    match e {
        ServerError::Engine(e) => map_err(e),
        e => Error::backend(NAME, e),
    }
}

fn map_err(e: antietcd::Error) -> Error {
    match e {
        antietcd::Error::Closed => Error::Closed,
        antietcd::Error::LeaseNotFound(_) => Error::LeaseNotFound,
        antietcd::Error::Compacted { requested, compact_revision } => Error::Compacted {
            requested: requested.max(0) as u64,
            compact_revision: compact_revision.max(0) as u64,
        },
        other => Error::backend(NAME, other),
    }
}

fn range(r: Range) -> KeyRange {
    match r {
        Range::Key(k) => KeyRange::key(k),
        Range::Dir(d) => KeyRange::prefix(d),
        Range::All => KeyRange::all(),
    }
}

fn raw(kv: KeyValue) -> RawKv {
    RawKv {
        key: kv.key,
        value: kv.value,
        mod_revision: kv.mod_revision,
        lease: kv.lease.map(|l| LeaseId(l.0)),
    }
}

fn op(op: Op) -> TxnOp {
    match op {
        Op::Put { key, value, lease } => TxnOp::Put(PutRequest {
            key,
            value,
            lease: lease.map(|l| antietcd::LeaseId(l.0)),
            ..Default::default()
        }),
        Op::Delete(r) => TxnOp::Delete(DeleteRequest { range: range(r), prev_kv: false }),
        Op::Get(r) => TxnOp::Range(RangeRequest::new(range(r))),
    }
}

fn compare(c: Cmp) -> Compare {
    match c {
        Cmp::Mod(key, r) => Compare::new(key, CompareResult::Equal, CompareTarget::Mod(r)),
        Cmp::Create(key, r) => Compare::new(key, CompareResult::Equal, CompareTarget::Create(r)),
    }
}

impl Embedded {
    /// Waits until `revision` is on disk, for a persistent node.
    async fn sync(&self, revision: i64) -> Result<()> {
        let Some(node) = &self.durable else { return Ok(()) };
        match node.upgrade() {
            Some(node) => node.sync(revision).await.map_err(node_err),
            None => Err(Error::Closed),
        }
    }
}

#[async_trait]
impl Backend for Embedded {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn get(&self, key: Bytes, _consistent: bool) -> Result<(i64, Option<RawKv>)> {
        let (revision, kv) = self.engine.get(&key).map_err(map_err)?;
        Ok((revision, kv.map(raw)))
    }

    async fn put(&self, key: Bytes, value: Bytes, lease: Option<LeaseId>) -> Result<i64> {
        let mut req = PutRequest::new(key, value);
        req.lease = lease.map(|l| antietcd::LeaseId(l.0));
        let revision = self.engine.put(req).map_err(map_err)?.revision;
        self.sync(revision).await?;
        Ok(revision)
    }

    async fn txn(&self, cmp: Vec<Cmp>, success: Vec<Op>, failure: Vec<Op>) -> Result<TxnResult> {
        let writes = |ops: &[Op]| ops.iter().any(|op| !matches!(op, Op::Get(_)));
        let (success_writes, failure_writes) = (writes(&success), writes(&failure));
        let req = TxnRequest {
            compare: cmp.into_iter().map(compare).collect(),
            success: success.into_iter().map(op).collect(),
            failure: failure.into_iter().map(op).collect(),
        };
        let resp = self.engine.txn(&req).map_err(map_err)?;
        // Reads need no durability barrier (and must keep working when the disk does not).
        if if resp.succeeded { success_writes } else { failure_writes } {
            self.sync(resp.revision).await?;
        }
        let results = resp
            .responses
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Range(r) => OpResult::Get(r.kvs.into_iter().map(raw).collect()),
                TxnOpResponse::Put(_) => OpResult::Put,
                TxnOpResponse::Delete(d) => OpResult::Delete(d.deleted as u64),
                TxnOpResponse::Txn(_) => OpResult::Put,
            })
            .collect();
        Ok(TxnResult { revision: resp.revision, succeeded: resp.succeeded, results })
    }

    async fn grant(&self, ttl: i64) -> Result<LeaseId> {
        Ok(LeaseId(self.engine.lease_grant(ttl, None).map_err(map_err)?.id.0))
    }

    async fn keep_alive(&self, id: LeaseId) -> Result<()> {
        self.engine.lease_keep_alive(antietcd::LeaseId(id.0)).map_err(map_err).map(drop)
    }

    async fn revoke(&self, id: LeaseId) -> Result<()> {
        let revision = self.engine.lease_revoke(antietcd::LeaseId(id.0)).map_err(map_err)?;
        self.sync(revision).await
    }

    async fn watch(&self, r: Range, start_revision: i64) -> Result<RawWatch> {
        let w = self
            .engine
            .watch(WatchRequest { range: range(r), start_revision, ..Default::default() })
            .map_err(map_err)?;
        Ok(w.map(|item| match item {
            Ok(b) => Ok(RawBatch {
                revision: b.revision,
                events: b
                    .events
                    .into_iter()
                    .map(|e| RawEvent {
                        kind: match e.kind {
                            antietcd::EventKind::Put => EventKind::Put,
                            antietcd::EventKind::Delete => EventKind::Delete,
                        },
                        kv: raw(e.kv),
                    })
                    .collect(),
            }),
            Err(WatchError::Lagged) => Err(Error::Lagged),
            Err(e) => Err(Error::backend(NAME, e)),
        })
        .boxed())
    }

    async fn close(&self) {
        match &self.owned {
            Owned::Nothing => {}
            Owned::Engine => self.engine.close(),
            Owned::Node(slot) => {
                let Some(mut node) = slot.lock().await.take() else { return };
                // Writes still waiting on the barrier hold the node for a moment: let them finish.
                for _ in 0..500 {
                    match Arc::try_unwrap(node) {
                        Ok(node) => {
                            if let Err(e) = node.shutdown().await {
                                tracing::error!(error = %e, "embedded node did not shut down cleanly");
                            }
                            return;
                        }
                        Err(shared) => node = shared,
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                tracing::error!("embedded node still busy after 5 s; closing without a final persist");
                self.engine.close();
            }
        }
    }
}

/// A cluster member: an antietcd node of a cluster running inside the application, and the store served
/// through the antietcd client, which talks to this node first and fails over to the other members. The
/// node forwards writes to the leader; reads follow `stale_read`. Closing (or dropping) the store shuts
/// the node down.
#[cfg(feature = "etcd")]
#[derive(Debug)]
pub(crate) struct Member {
    remote: super::remote::Remote,
    node: tokio::sync::Mutex<Option<Node>>,
}

/// Starts a cluster node with `config` (its listener included) and a store over it: `endpoints` are the
/// members' client addresses, this node's first.
#[cfg(feature = "etcd")]
pub(crate) async fn open_member(
    config: ServerConfig,
    endpoints: Vec<String>,
    prefix: &str,
) -> Result<Arc<dyn Store>> {
    let node = Node::start(config).await.map_err(node_err)?;
    // The nodes answer 503 while no leader is known: the client then tries the next member.
    let options = etcd_json::ClientOptions::new();
    let client = match etcd_json::Client::connect(endpoints, options).await {
        Ok(client) => client,
        Err(e) => {
            if let Err(e) = node.shutdown().await {
                tracing::error!(error = %e, "embedded node did not shut down cleanly");
            }
            return Err(super::remote::map_err(NAME, e));
        }
    };
    let remote = super::remote::Remote::new(client, NAME, std::time::Duration::from_secs(60));
    let member = Member { remote, node: tokio::sync::Mutex::new(Some(node)) };
    Ok(Arc::new(Client::new(member, prefix)))
}

#[cfg(feature = "etcd")]
#[async_trait]
impl Backend for Member {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn get(&self, key: Bytes, consistent: bool) -> Result<(i64, Option<RawKv>)> {
        self.remote.get(key, consistent).await
    }

    async fn put(&self, key: Bytes, value: Bytes, lease: Option<LeaseId>) -> Result<i64> {
        self.remote.put(key, value, lease).await
    }

    async fn txn(&self, cmp: Vec<Cmp>, success: Vec<Op>, failure: Vec<Op>) -> Result<TxnResult> {
        self.remote.txn(cmp, success, failure).await
    }

    async fn grant(&self, ttl: i64) -> Result<LeaseId> {
        self.remote.grant(ttl).await
    }

    async fn keep_alive(&self, id: LeaseId) -> Result<()> {
        self.remote.keep_alive(id).await
    }

    async fn revoke(&self, id: LeaseId) -> Result<()> {
        self.remote.revoke(id).await
    }

    async fn watch(&self, r: Range, start_revision: i64) -> Result<RawWatch> {
        self.remote.watch(r, start_revision).await
    }

    async fn close(&self) {
        self.remote.close().await;
        let Some(node) = self.node.lock().await.take() else { return };
        if let Err(e) = node.shutdown().await {
            tracing::error!(error = %e, "embedded cluster node did not shut down cleanly");
        }
    }
}
