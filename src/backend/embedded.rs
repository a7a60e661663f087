//! The embedded backend: the antietcd [`Engine`] running inside the application, called directly.

use super::{Backend, Client, Cmp, Op, OpResult, Range, RawBatch, RawEvent, RawKv, RawWatch, TxnResult};
use crate::error::{Error, Result};
use crate::kv::{EventKind, LeaseId};
use crate::store::Store;
use antietcd::{
    Compare, CompareResult, CompareTarget, DeleteRequest, Engine, KeyRange, KeyValue, PutRequest,
    RangeRequest, TxnOp, TxnOpResponse, TxnRequest, WatchError, WatchRequest,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use std::sync::Arc;

const NAME: &str = "embedded";

/// The embedded backend over one engine. `owner` handles close the engine when they close.
#[derive(Debug)]
pub(crate) struct Embedded {
    engine: Engine,
    owner: bool,
}

/// A store over an engine that this store owns: closing the store closes the engine.
pub(crate) fn open(config: antietcd::Config, prefix: &str) -> Result<Arc<dyn Store>> {
    let engine = Engine::new(config).map_err(map_err)?;
    Ok(Arc::new(Client::new(Embedded { engine, owner: true }, prefix)))
}

/// Another store handle on an existing engine, with its own leases and watches. Closing it leaves the
/// engine running for its other users.
pub fn connect(engine: &Engine, prefix: &str) -> Arc<dyn Store> {
    Arc::new(Client::new(Embedded { engine: engine.clone(), owner: false }, prefix))
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
        Ok(self.engine.put(req).map_err(map_err)?.revision)
    }

    async fn txn(&self, cmp: Vec<Cmp>, success: Vec<Op>, failure: Vec<Op>) -> Result<TxnResult> {
        let req = TxnRequest {
            compare: cmp.into_iter().map(compare).collect(),
            success: success.into_iter().map(op).collect(),
            failure: failure.into_iter().map(op).collect(),
        };
        let resp = self.engine.txn(&req).map_err(map_err)?;
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
        self.engine.lease_revoke(antietcd::LeaseId(id.0)).map_err(map_err).map(drop)
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
        if self.owner {
            self.engine.close();
        }
    }
}
