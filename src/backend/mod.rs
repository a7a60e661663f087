//! The semantics of [`Store`], written once over a small etcd-shaped [`Backend`] trait.
//!
//! Every backend valkeyrie supports has etcd's data model (revisions, transactions, leases, watches from a
//! revision), so the valkeyrie rules (directories, CAS tokens, the watch snapshot-then-changes contract,
//! resynchronisation, TTL leases, close) live here in [`Client`], and an adapter only maps its native
//! requests, responses and errors onto [`Backend`].
//!
//! ```text
//!   Store (trait) ◄── Client<B> ──► B: Backend ──► antietcd::Engine | etcd_json::Client | ...
//!                       │ key prefix, directory rules, CAS, watch resync, leases, close
//! ```

pub(crate) mod embedded;
#[cfg(feature = "etcd")]
pub(crate) mod remote;

use crate::error::{Error, Result};
use crate::kv::{Event, EventKind, KVPair, LeaseId, TreeBatch};
use crate::lease::{revoke_all, Lease, LeaseOps, LeaseSet};
use crate::options::{ttl_secs, LockOptions, ReadOptions, WriteOptions};
use crate::recipes::lock::Lock;
use crate::store::{KeyWatch, Store, TreeWatch};
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A key as the backend returns it.
#[derive(Clone, Debug, Default)]
pub(crate) struct RawKv {
    pub(crate) key: Bytes,
    pub(crate) value: Bytes,
    pub(crate) mod_revision: i64,
    pub(crate) lease: Option<LeaseId>,
}

/// Which keys an operation covers.
#[derive(Clone, Debug)]
pub(crate) enum Range {
    /// One key.
    Key(Bytes),
    /// Every key starting with this non-empty prefix, which ends with `/`.
    Dir(Bytes),
    /// Every key.
    All,
}

/// A transaction condition: equality of a key's mod or create revision (0 = absent).
#[derive(Clone, Debug)]
pub(crate) enum Cmp {
    Mod(Bytes, i64),
    Create(Bytes, i64),
}

/// A transaction operation.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Put { key: Bytes, value: Bytes, lease: Option<LeaseId> },
    Delete(Range),
    Get(Range),
}

/// The result of an [`Op`].
#[derive(Clone, Debug)]
pub(crate) enum OpResult {
    Put,
    Delete(u64),
    Get(Vec<RawKv>),
}

/// The result of a transaction.
#[derive(Clone, Debug)]
pub(crate) struct TxnResult {
    pub(crate) revision: i64,
    pub(crate) succeeded: bool,
    pub(crate) results: Vec<OpResult>,
}

/// One watched change; a delete carries the key and the delete's revision.
#[derive(Clone, Debug)]
pub(crate) struct RawEvent {
    pub(crate) kind: EventKind,
    pub(crate) kv: RawKv,
}

/// The changes of one revision.
#[derive(Clone, Debug)]
pub(crate) struct RawBatch {
    pub(crate) revision: i64,
    pub(crate) events: Vec<RawEvent>,
}

/// A backend's raw watch: `Err(Lagged)` or `Err(Compacted)` mean the stream cannot go on without a gap.
pub(crate) type RawWatch = BoxStream<'static, Result<RawBatch>>;

/// The etcd-shaped operations an adapter provides. Errors are already mapped to [`Error`].
#[async_trait]
pub(crate) trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// The backend's name.
    fn name(&self) -> &'static str;
    /// Reads one key: the revision of the read and the key if present.
    async fn get(&self, key: Bytes, consistent: bool) -> Result<(i64, Option<RawKv>)>;
    /// Writes one key; returns the revision of the write.
    async fn put(&self, key: Bytes, value: Bytes, lease: Option<LeaseId>) -> Result<i64>;
    /// Runs a transaction.
    async fn txn(&self, compare: Vec<Cmp>, success: Vec<Op>, failure: Vec<Op>) -> Result<TxnResult>;
    /// Grants a lease of `ttl` seconds.
    async fn grant(&self, ttl: i64) -> Result<LeaseId>;
    /// Renews a lease once.
    async fn keep_alive(&self, id: LeaseId) -> Result<()>;
    /// Revokes a lease.
    async fn revoke(&self, id: LeaseId) -> Result<()>;
    /// Watches `range` from `start_revision` on.
    async fn watch(&self, range: Range, start_revision: i64) -> Result<RawWatch>;
    /// Releases the backend's resources.
    async fn close(&self);
}

#[async_trait]
impl<B: Backend> LeaseOps for B {
    async fn keep_alive_once(&self, id: LeaseId) -> Result<()> {
        self.keep_alive(id).await
    }
    async fn revoke_lease(&self, id: LeaseId) -> Result<()> {
        self.revoke(id).await
    }
}

/// A [`Store`] over any [`Backend`]. Cheap to clone: clones share the handle (and its leases).
#[derive(Debug)]
pub(crate) struct Client<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for Client<B> {
    fn clone(&self) -> Self {
        Client { inner: self.inner.clone() }
    }
}

#[derive(Debug)]
struct Inner<B> {
    backend: Arc<B>,
    /// Namespace prepended to every key: empty, or a string ending with `/`.
    prefix: String,
    /// `true` once closed; watch streams and lease keepers listen to it.
    closed: watch::Sender<bool>,
    /// Every lease this handle keeps alive, revoked on close.
    owned: LeaseSet,
    /// Leases shared by keep-alive puts, by TTL in seconds.
    keep_alive: tokio::sync::Mutex<HashMap<i64, Lease>>,
}

/// The separator inside lock queue keys: `<lock key>___lock/<waiter>`.
pub(crate) const LOCK_SUFFIX: &str = "___lock";

impl<B: Backend> Client<B> {
    /// A store over `backend`, with every key under `prefix` (a directory; empty for none).
    pub(crate) fn new(backend: B, prefix: &str) -> Self {
        let prefix = prefix.trim_end_matches('/');
        let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        Client {
            inner: Arc::new(Inner {
                backend: Arc::new(backend),
                prefix,
                closed: watch::channel(false).0,
                owned: LeaseSet::default(),
                keep_alive: tokio::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    fn backend(&self) -> &B {
        &self.inner.backend
    }

    fn is_closed(&self) -> bool {
        *self.inner.closed.borrow()
    }

    fn check_open(&self) -> Result<()> {
        if *self.inner.closed.borrow() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// The stored key for the caller's `key`.
    fn full_key(&self, key: &str) -> Result<Bytes> {
        let prefix = &self.inner.prefix;
        let full = if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}{}", key.strip_prefix('/').unwrap_or(key))
        };
        if full.is_empty() {
            return Err(Error::InvalidKey { key: key.to_owned(), reason: "empty key" });
        }
        Ok(Bytes::from(full))
    }

    /// The stored directory prefix (ending with `/`) for `dir`, or `None` for the root.
    fn dir_prefix(&self, dir: &str) -> Option<String> {
        let prefix = &self.inner.prefix;
        let dir = dir.trim_end_matches('/');
        let dir = if prefix.is_empty() { dir } else { dir.strip_prefix('/').unwrap_or(dir) };
        let full = format!("{prefix}{dir}");
        let full = full.trim_end_matches('/');
        (!full.is_empty()).then(|| format!("{full}/"))
    }

    fn dir_range(dir: &Option<String>) -> Range {
        match dir {
            Some(d) => Range::Dir(Bytes::from(d.clone())),
            None => Range::All,
        }
    }

    /// The caller's key for a stored key.
    fn user_key(&self, key: &[u8]) -> String {
        let key = String::from_utf8_lossy(key);
        match key.strip_prefix(self.inner.prefix.as_str()) {
            Some(k) => k.to_owned(),
            None => key.into_owned(),
        }
    }

    fn pair(&self, kv: RawKv) -> KVPair {
        KVPair {
            key: self.user_key(&kv.key),
            value: kv.value.to_vec(),
            last_index: rev(kv.mod_revision),
            lease: kv.lease,
        }
    }

    /// Whether a stored key belongs to the directory listing of `dir` (see the trait's contract).
    fn in_listing(dir: &Option<String>, key: &[u8]) -> bool {
        let rel = match dir {
            Some(d) => match key.strip_prefix(d.as_bytes()) {
                Some(rel) => rel,
                None => return false,
            },
            None => key,
        };
        !rel.is_empty() && !contains(rel, b"___lock/")
    }

    /// The lease to attach for `options`.
    async fn lease_for(&self, options: &Option<WriteOptions>) -> Result<Option<LeaseId>> {
        let Some(o) = options else { return Ok(None) };
        if o.lease.is_some() {
            return Ok(o.lease);
        }
        let Some(ttl) = o.ttl else { return Ok(None) };
        let secs = ttl_secs(ttl);
        if !o.keep_alive {
            return self.backend().grant(secs).await.map(Some);
        }
        let mut shared = self.inner.keep_alive.lock().await;
        if let Some(lease) = shared.get(&secs) {
            if !lease.lost().is_lost() {
                return Ok(Some(lease.id()));
            }
        }
        let lease = self.new_lease(secs).await?;
        let id = lease.id();
        shared.insert(secs, lease);
        Ok(Some(id))
    }

    async fn new_lease(&self, secs: i64) -> Result<Lease> {
        let id = self.backend().grant(secs).await?;
        let ops: Arc<dyn LeaseOps> = self.inner.backend.clone();
        Ok(Lease::keep(
            id,
            Duration::from_secs(secs.unsigned_abs()),
            ops,
            self.inner.owned.clone(),
            self.inner.closed.subscribe(),
        ))
    }

    /// The directory's content now: the revision and the listed pairs, plus whether the directory key
    /// itself exists.
    async fn snapshot(&self, dir: &Option<String>, consistent: bool) -> Result<(i64, Vec<RawKv>, bool)> {
        let mut ops = vec![Op::Get(Self::dir_range(dir))];
        if let Some(d) = dir {
            ops.push(Op::Get(Range::Key(Bytes::from(d.trim_end_matches('/').to_owned()))));
        }
        let _ = consistent; // Transactions are always linearizable; a serializable list is not worth a path.
        let t = self.backend().txn(Vec::new(), ops, Vec::new()).await?;
        let mut results = t.results.into_iter();
        let mut children: Vec<RawKv> = match results.next() {
            Some(OpResult::Get(kvs)) => kvs.into_iter().filter(|kv| Self::in_listing(dir, &kv.key)).collect(),
            _ => Vec::new(),
        };
        // The contract promises key order; not every server sorts (Node antietcd uses insertion order).
        if !children.is_sorted_by(|a, b| a.key <= b.key) {
            children.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        }
        let dir_exists = matches!(results.next(), Some(OpResult::Get(kvs)) if !kvs.is_empty());
        Ok((t.revision, children, dir_exists))
    }

    /// A stream that ends when this handle closes.
    fn until_closed<T: Send + 'static>(&self, s: BoxStream<'static, T>) -> BoxStream<'static, T> {
        let mut closed = self.inner.closed.subscribe();
        s.take_until(async move {
            let _ = closed.wait_for(|c| *c).await;
        })
        .boxed()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A backend revision as a `last_index` (revisions are never negative).
fn rev(r: i64) -> u64 {
    r.max(0) as u64
}

/// What a watch stream is doing between items.
enum WatchPhase<T> {
    /// About to yield the current state, then follow the raw stream.
    Start(T, RawWatch),
    /// Following the raw stream.
    Live(RawWatch),
    /// The raw stream could not continue: take a fresh snapshot and start again (the number of failed
    /// attempts so far, for the backoff).
    Resync(u32),
}

/// How long to wait before resynchronisation attempt `n + 1`: 200 ms doubling to 5 s.
fn resync_backoff(n: u32) -> Duration {
    Duration::from_millis(200u64 << n.min(5)).min(Duration::from_secs(5))
}

/// The error a watch yields when its backend stream ended while the store is open: it then resynchronises.
fn interrupted(backend: &'static str) -> Error {
    Error::NotReachable {
        backend,
        source: "the watch connection ended; resynchronising from a fresh snapshot".into(),
    }
}

#[async_trait]
impl<B: Backend> Store for Client<B> {
    fn backend(&self) -> &'static str {
        self.inner.backend.name()
    }

    async fn put(&self, key: &str, value: &[u8], options: Option<WriteOptions>) -> Result<KVPair> {
        self.check_open()?;
        let full = self.full_key(key)?;
        let lease = self.lease_for(&options).await?;
        let revision = self.backend().put(full, Bytes::copy_from_slice(value), lease).await?;
        Ok(KVPair { key: key.to_owned(), value: value.to_vec(), last_index: rev(revision), lease })
    }

    async fn get(&self, key: &str, options: Option<ReadOptions>) -> Result<KVPair> {
        self.check_open()?;
        let consistent = options.unwrap_or_default().consistent;
        match self.backend().get(self.full_key(key)?, consistent).await? {
            (_, Some(kv)) => Ok(KVPair { key: key.to_owned(), ..self.pair(kv) }),
            (_, None) => Err(Error::not_found(key)),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.check_open()?;
        let t = self
            .backend()
            .txn(Vec::new(), vec![Op::Delete(Range::Key(self.full_key(key)?))], Vec::new())
            .await?;
        match t.results.first() {
            Some(OpResult::Delete(n)) if *n > 0 => Ok(()),
            _ => Err(Error::not_found(key)),
        }
    }

    async fn watch(&self, key: &str, options: Option<ReadOptions>) -> Result<KeyWatch> {
        self.check_open()?;
        let full = self.full_key(key)?;
        let consistent = options.unwrap_or_default().consistent;
        let this = self.clone();
        let key = key.to_owned();
        // The current state and the revision it was read at; the watch starts right after it.
        let current = move |this: Client<B>, full: Bytes, key: String| async move {
            let (revision, kv) = this.backend().get(full.clone(), consistent).await?;
            let event = match kv {
                Some(kv) => Event::new(EventKind::Put, KVPair { key, ..this.pair(kv) }),
                None => Event::new(EventKind::Delete, KVPair::new(key, Vec::new(), rev(revision))),
            };
            let raw = this.backend().watch(Range::Key(full), revision + 1).await?;
            Ok::<_, Error>((event, raw))
        };
        let (event, raw) = current(this.clone(), full.clone(), key.clone()).await?;
        let s = stream::unfold(WatchPhase::Start(event, raw), move |phase| {
            let (this, full, key) = (this.clone(), full.clone(), key.clone());
            async move {
                match phase {
                    WatchPhase::Start(event, raw) => Some((vec![Ok(event)], WatchPhase::Live(raw))),
                    WatchPhase::Live(mut raw) => match raw.next().await {
                        Some(Ok(batch)) => {
                            let events = batch
                                .events
                                .into_iter()
                                .map(|e| {
                                    Ok(Event::new(e.kind, KVPair { key: key.clone(), ..this.pair(e.kv) }))
                                })
                                .collect();
                            Some((events, WatchPhase::Live(raw)))
                        }
                        Some(Err(e @ (Error::Lagged | Error::Compacted { .. }))) => {
                            Some((vec![Err(e)], WatchPhase::Resync(0)))
                        }
                        Some(Err(Error::Closed)) | None if this.is_closed() => None,
                        Some(Err(Error::Closed)) | None => {
                            Some((vec![Err(interrupted(this.inner.backend.name()))], WatchPhase::Resync(0)))
                        }
                        Some(Err(e)) => Some((vec![Err(e)], WatchPhase::Live(raw))),
                    },
                    WatchPhase::Resync(n) => match current(this, full, key).await {
                        Ok((event, raw)) => Some((vec![Ok(event)], WatchPhase::Live(raw))),
                        Err(Error::Closed) => None,
                        Err(e) => {
                            tokio::time::sleep(resync_backoff(n)).await;
                            Some((vec![Err(e)], WatchPhase::Resync(n + 1)))
                        }
                    },
                }
            }
        })
        .flat_map(stream::iter)
        .boxed();
        Ok(self.until_closed(s))
    }

    async fn watch_tree(&self, dir: &str, options: Option<ReadOptions>) -> Result<TreeWatch> {
        self.check_open()?;
        let dir = self.dir_prefix(dir);
        let consistent = options.unwrap_or_default().consistent;
        let this = self.clone();
        let current = move |this: Client<B>, dir: Option<String>| async move {
            let (revision, kvs, _) = this.snapshot(&dir, consistent).await?;
            let events = kvs.into_iter().map(|kv| Event::new(EventKind::Put, this.pair(kv))).collect();
            let batch = TreeBatch { revision: rev(revision), snapshot: true, events };
            let raw = this.backend().watch(Self::dir_range(&dir), revision + 1).await?;
            Ok::<_, Error>((batch, raw))
        };
        let (batch, raw) = current(this.clone(), dir.clone()).await?;
        let s = stream::unfold(WatchPhase::Start(batch, raw), move |phase| {
            let (this, dir) = (this.clone(), dir.clone());
            async move {
                match phase {
                    WatchPhase::Start(batch, raw) => Some((Ok(batch), WatchPhase::Live(raw))),
                    WatchPhase::Live(mut raw) => loop {
                        match raw.next().await {
                            Some(Ok(batch)) => {
                                let events: Vec<Event> = batch
                                    .events
                                    .into_iter()
                                    .filter(|e| Self::in_listing(&dir, &e.kv.key))
                                    .map(|e| Event::new(e.kind, this.pair(e.kv)))
                                    .collect();
                                if events.is_empty() {
                                    // Only hidden keys changed (a lock queue): nothing to tell.
                                    continue;
                                }
                                let batch =
                                    TreeBatch { revision: rev(batch.revision), snapshot: false, events };
                                break Some((Ok(batch), WatchPhase::Live(raw)));
                            }
                            Some(Err(e @ (Error::Lagged | Error::Compacted { .. }))) => {
                                break Some((Err(e), WatchPhase::Resync(0)))
                            }
                            Some(Err(Error::Closed)) | None if this.is_closed() => break None,
                            Some(Err(Error::Closed)) | None => {
                                break Some((
                                    Err(interrupted(this.inner.backend.name())),
                                    WatchPhase::Resync(0),
                                ))
                            }
                            Some(Err(e)) => break Some((Err(e), WatchPhase::Live(raw))),
                        }
                    },
                    WatchPhase::Resync(n) => match current(this, dir).await {
                        Ok((batch, raw)) => Some((Ok(batch), WatchPhase::Live(raw))),
                        Err(Error::Closed) => None,
                        Err(e) => {
                            tokio::time::sleep(resync_backoff(n)).await;
                            Some((Err(e), WatchPhase::Resync(n + 1)))
                        }
                    },
                }
            }
        })
        .boxed();
        Ok(self.until_closed(s))
    }

    async fn new_lock(&self, key: &str, options: Option<LockOptions>) -> Result<Lock> {
        self.check_open()?;
        self.full_key(key)?;
        let store: Arc<dyn Store> = Arc::new(self.clone());
        Ok(Lock::new(store, key, options.unwrap_or_default()))
    }

    async fn list(&self, dir: &str, options: Option<ReadOptions>) -> Result<Vec<KVPair>> {
        self.check_open()?;
        let prefix = self.dir_prefix(dir);
        let consistent = options.unwrap_or_default().consistent;
        let (_, kvs, dir_exists) = self.snapshot(&prefix, consistent).await?;
        // The root of the store (or of its namespace) always exists.
        let root = dir.trim_matches('/').is_empty();
        if kvs.is_empty() && !dir_exists && !root {
            return Err(Error::not_found(dir));
        }
        Ok(kvs.into_iter().map(|kv| self.pair(kv)).collect())
    }

    async fn delete_tree(&self, dir: &str) -> Result<()> {
        self.check_open()?;
        let prefix = self.dir_prefix(dir);
        let mut ops = vec![Op::Delete(Self::dir_range(&prefix))];
        if let Some(d) = &prefix {
            ops.push(Op::Delete(Range::Key(Bytes::from(d.trim_end_matches('/').to_owned()))));
        }
        let t = self.backend().txn(Vec::new(), ops, Vec::new()).await?;
        let deleted: u64 = t.results.iter().map(|r| if let OpResult::Delete(n) = r { *n } else { 0 }).sum();
        if deleted == 0 {
            return Err(Error::not_found(dir));
        }
        Ok(())
    }

    async fn atomic_put(
        &self,
        key: &str,
        value: &[u8],
        previous: Option<&KVPair>,
        options: Option<WriteOptions>,
    ) -> Result<KVPair> {
        self.check_open()?;
        let full = self.full_key(key)?;
        let compare = match previous {
            None => Cmp::Create(full.clone(), 0),
            Some(p) if p.last_index == 0 => return Err(Error::PreviousNotSpecified),
            Some(p) => Cmp::Mod(full.clone(), i64::try_from(p.last_index).unwrap_or(i64::MAX)),
        };
        let lease = self.lease_for(&options).await?;
        let put = Op::Put { key: full, value: Bytes::copy_from_slice(value), lease };
        let t = self.backend().txn(vec![compare], vec![put], Vec::new()).await?;
        match (t.succeeded, previous) {
            (true, _) => {
                Ok(KVPair { key: key.to_owned(), value: value.to_vec(), last_index: rev(t.revision), lease })
            }
            (false, None) => Err(Error::exists(key)),
            (false, Some(_)) => Err(Error::modified(key)),
        }
    }

    async fn atomic_delete(&self, key: &str, previous: &KVPair) -> Result<()> {
        self.check_open()?;
        if previous.last_index == 0 {
            return Err(Error::PreviousNotSpecified);
        }
        let full = self.full_key(key)?;
        let compare = Cmp::Mod(full.clone(), i64::try_from(previous.last_index).unwrap_or(i64::MAX));
        let t = self
            .backend()
            .txn(vec![compare], vec![Op::Delete(Range::Key(full.clone()))], vec![Op::Get(Range::Key(full))])
            .await?;
        if t.succeeded {
            return Ok(());
        }
        match t.results.first() {
            Some(OpResult::Get(kvs)) if !kvs.is_empty() => Err(Error::modified(key)),
            _ => Err(Error::not_found(key)),
        }
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease> {
        self.check_open()?;
        self.new_lease(ttl_secs(ttl)).await
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.send_replace(true) {
            return Ok(());
        }
        let shared: Vec<Lease> = self.inner.keep_alive.lock().await.drain().map(|(_, l)| l).collect();
        for lease in shared {
            let _ = lease.revoke().await;
        }
        revoke_all(&self.inner.owned, &*self.inner.backend).await;
        self.inner.backend.close().await;
        Ok(())
    }
}
