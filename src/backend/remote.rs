//! The remote backends: etcd (>= 3.4) and antietcd servers, through the `etcd-json` client.
//!
//! Both speak etcd's v3 JSON API; the client detects which server it talks to and adapts (antietcd's lease
//! id format, its websocket watches, its directory-only ranges), so one adapter serves `etcd://` and
//! `antietcd://`. The scheme only names the backend in errors and picks defaults.

use super::{Backend, Cmp, Op, OpResult, Range, RawBatch, RawEvent, RawKv, RawWatch, TxnResult};
use crate::error::{Error, Result};
use crate::kv::{EventKind, LeaseId};
use async_trait::async_trait;
use bytes::Bytes;
use etcd_json::{
    Client, Compare, CompareOp, DeleteOptions, EventType, KeyValue, PutOptions, RangeOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use futures::StreamExt;

/// A store backend over an `etcd-json` client.
#[derive(Debug)]
pub(crate) struct Remote {
    client: Client,
    name: &'static str,
    /// How long a watch tries to resume where it was; after that the facade resynchronises it.
    watch_reconnect: std::time::Duration,
}

impl Remote {
    pub(crate) fn new(client: Client, name: &'static str, watch_reconnect: std::time::Duration) -> Self {
        Remote { client, name, watch_reconnect }
    }

    fn err(&self, e: etcd_json::Error) -> Error {
        map_err(self.name, e)
    }
}

/// Maps the client's errors onto the facade's meanings.
pub(crate) fn map_err(backend: &'static str, e: etcd_json::Error) -> Error {
    use etcd_json::Error as E;
    match e {
        E::LeaseNotFound { .. } => Error::LeaseNotFound,
        E::Compacted { requested, compact_revision } => Error::Compacted {
            requested: requested.max(0) as u64,
            compact_revision: compact_revision.max(0) as u64,
        },
        e @ (E::NotReachable { .. } | E::Timeout { .. } | E::Unavailable { .. }) => {
            Error::NotReachable { backend, source: Box::new(e) }
        }
        e => Error::backend(backend, e),
    }
}

fn raw(kv: KeyValue) -> RawKv {
    let lease = (!kv.lease.is_none()).then(|| LeaseId(kv.lease.get()));
    RawKv { key: Bytes::from(kv.key), value: Bytes::from(kv.value), mod_revision: kv.mod_revision, lease }
}

fn range_options(r: &Range) -> (Vec<u8>, Option<RangeOptions>) {
    match r {
        Range::Key(k) => (k.to_vec(), None),
        Range::Dir(d) => (d.to_vec(), Some(RangeOptions::new().with_prefix())),
        Range::All => (vec![0], Some(RangeOptions::new().with_all_keys())),
    }
}

fn delete_options(r: &Range) -> (Vec<u8>, Option<DeleteOptions>) {
    match r {
        Range::Key(k) => (k.to_vec(), None),
        Range::Dir(d) => (d.to_vec(), Some(DeleteOptions::new().with_prefix())),
        Range::All => (vec![0], Some(DeleteOptions::new().with_all_keys())),
    }
}

fn op(op: Op) -> TxnOp {
    match op {
        Op::Put { key, value, lease } => {
            let options = lease.map(|l| PutOptions::new().with_lease(etcd_json::LeaseId(l.0)));
            TxnOp::put(key.to_vec(), value.to_vec(), options)
        }
        Op::Delete(r) => {
            let (key, options) = delete_options(&r);
            TxnOp::delete(key, options)
        }
        Op::Get(r) => {
            let (key, options) = range_options(&r);
            TxnOp::range(key, options)
        }
    }
}

#[async_trait]
impl Backend for Remote {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn get(&self, key: Bytes, consistent: bool) -> Result<(i64, Option<RawKv>)> {
        let options = (!consistent).then(|| RangeOptions::new().with_serializable());
        let mut resp = self.client.range(key.to_vec(), options).await.map_err(|e| self.err(e))?;
        let revision = resp.header.revision;
        // A single-key range returns that key only. (antietcd stores `a/` as `a`: the key it returns may be
        // spelled differently from the one asked for; the facade reports the caller's spelling.)
        let kv = resp.take_kvs().into_iter().next();
        Ok((revision, kv.map(raw)))
    }

    async fn put(&self, key: Bytes, value: Bytes, lease: Option<LeaseId>) -> Result<i64> {
        let options = lease.map(|l| PutOptions::new().with_lease(etcd_json::LeaseId(l.0)));
        let resp = self.client.put(key.to_vec(), value.to_vec(), options).await.map_err(|e| self.err(e))?;
        Ok(resp.header.revision)
    }

    async fn txn(&self, compare: Vec<Cmp>, success: Vec<Op>, failure: Vec<Op>) -> Result<TxnResult> {
        let compare = compare.into_iter().map(|c| match c {
            Cmp::Mod(key, r) => Compare::mod_revision(key.to_vec(), CompareOp::Equal, r),
            Cmp::Create(key, r) => Compare::create_revision(key.to_vec(), CompareOp::Equal, r),
        });
        let txn = Txn::new()
            .when(compare)
            .and_then(success.into_iter().map(op))
            .or_else(failure.into_iter().map(op));
        let resp = self.client.txn(txn).await.map_err(|e| self.err(e))?;
        let results = resp
            .responses
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Range(mut r) => OpResult::Get(r.take_kvs().into_iter().map(raw).collect()),
                TxnOpResponse::Delete(d) => OpResult::Delete(d.deleted.max(0) as u64),
                _ => OpResult::Put,
            })
            .collect();
        Ok(TxnResult { revision: resp.header.revision, succeeded: resp.succeeded, results })
    }

    async fn grant(&self, ttl: i64) -> Result<LeaseId> {
        let resp = self.client.lease_grant(ttl, None).await.map_err(|e| self.err(e))?;
        Ok(LeaseId(resp.id.get()))
    }

    async fn keep_alive(&self, id: LeaseId) -> Result<()> {
        self.client.lease_keep_alive_once(etcd_json::LeaseId(id.0)).await.map(drop).map_err(|e| self.err(e))
    }

    async fn revoke(&self, id: LeaseId) -> Result<()> {
        self.client.lease_revoke(etcd_json::LeaseId(id.0)).await.map(drop).map_err(|e| self.err(e))
    }

    async fn watch(&self, r: Range, start_revision: i64) -> Result<RawWatch> {
        let (key, options) = match &r {
            Range::Key(k) => (k.to_vec(), WatchOptions::new()),
            Range::Dir(d) => (d.to_vec(), WatchOptions::new().with_prefix()),
            Range::All => (vec![0], WatchOptions::new().with_all_keys()),
        };
        let options =
            options.with_start_revision(start_revision).with_reconnect_timeout(self.watch_reconnect);
        let stream = self.client.watch(key, Some(options)).await.map_err(|e| self.err(e))?;
        let name = self.name;
        Ok(stream
            .flat_map(move |item| {
                let batches: Vec<Result<RawBatch>> = match item {
                    Ok(resp) => split_by_revision(resp.events).into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(map_err(name, e))],
                };
                futures::stream::iter(batches)
            })
            .boxed())
    }

    async fn close(&self) {}
}

/// One batch per revision: a server message may carry several revisions' events.
fn split_by_revision(events: Vec<etcd_json::Event>) -> Vec<RawBatch> {
    let mut batches: Vec<RawBatch> = Vec::new();
    for e in events {
        let kind = if e.event_type == EventType::Delete { EventKind::Delete } else { EventKind::Put };
        let ev = RawEvent { kind, kv: raw(e.kv) };
        match batches.last_mut() {
            Some(b) if b.revision == ev.kv.mod_revision => b.events.push(ev),
            _ => batches.push(RawBatch { revision: ev.kv.mod_revision, events: vec![ev] }),
        }
    }
    batches
}
