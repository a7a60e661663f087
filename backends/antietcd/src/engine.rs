//! The revisioned key-value state machine: keys, revisions, transactions, leases and compaction.
//!
//! All state sits behind one `std::sync::Mutex`: every operation is a short, synchronous critical section
//! (no `.await` while holding it), which is both simpler and faster than finer locking at the sizes an
//! etcd-like store sees. Writes go through [`Writer`], which stamps every change with the next revision and
//! keeps an undo log, so a transaction that fails half-way (an unknown lease in its third put, say) is
//! rolled back completely and never becomes visible: antietcd 1.3.1 left such a transaction half-applied.
//!
//! Every committed revision becomes one [`WatchBatch`]: kept in the history (for watches that start in the
//! past) until compaction, and handed to the watch hub ([`crate::watch`]).

use crate::error::Error;
use crate::types::*;
use crate::watch::{Hub, Watch};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

/// The longest lease TTL accepted, in seconds (etcd's limit too).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// The most operations one transaction may hold, counting nested ones.
pub const MAX_TXN_OPS: usize = 100_000;
/// How deeply transactions may nest.
pub const MAX_TXN_DEPTH: usize = 16;

/// Receives every change of an engine, in commit order, while the engine's lock is held: a write-ahead log
/// queues them (see [`crate::durable`]). Keep `record` cheap and non-blocking.
///
/// A journal that refuses a record (returns `Err`) makes the write fail with [`Error::Journal`] and undoes
/// it: a change that cannot be logged is never applied.
pub trait Journal: Send + Sync + std::fmt::Debug + 'static {
    /// Logs one change.
    fn record(&self, record: &JournalRecord<'_>) -> Result<(), String>;

    /// Notes that a cluster committed everything up to `revision` (a cluster member publishes its held
    /// changes). Not a change of state: a journal may keep it so that, after a restart, the changes after
    /// it are known to be uncommitted and can be undone (see [`crate::durable::RecoveryInfo::committed`]).
    /// A lost note only makes more of the log look uncommitted. The default ignores it.
    fn committed(&self, _revision: Revision) {}
}

/// One journaled change. Replaying them in order with [`Engine::replay`], on top of the state they started
/// from, rebuilds the engine (lease expiry times restart from the replay: leases get their full TTL, as etcd
/// does after a restart).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JournalRecord<'a> {
    /// The events of one revision (previous values are not kept).
    Commit {
        /// The revision.
        revision: Revision,
        /// Its events, in order.
        events: std::borrow::Cow<'a, [Event]>,
    },
    /// A lease was granted.
    LeaseGrant {
        /// Its id.
        id: LeaseId,
        /// Its TTL in seconds.
        ttl: i64,
    },
    /// A lease was revoked or expired (its keys' deletion is the `Commit` before this record).
    LeaseRevoke {
        /// Its id.
        id: LeaseId,
    },
    /// History before `revision` was compacted explicitly (automatic compaction replays by itself).
    Compact {
        /// The new compact revision.
        revision: Revision,
    },
}

/// Tuning of an [`Engine`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// How many revisions of history to keep for watches that start in the past. When the history grows to
    /// twice this, the older half is compacted (antietcd's `compact_revisions`). 0 keeps everything.
    pub compact_revisions: i64,
    /// How many undelivered batches a watcher may have queued before it is cancelled as lagging.
    pub watch_capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { compact_revisions: 1000, watch_capacity: 4096 }
    }
}

impl Config {
    /// Sets [`Config::compact_revisions`].
    pub fn with_compact_revisions(mut self, n: i64) -> Self {
        self.compact_revisions = n;
        self
    }

    /// Sets [`Config::watch_capacity`].
    pub fn with_watch_capacity(mut self, n: usize) -> Self {
        self.watch_capacity = n.max(1);
        self
    }
}

/// A handle to one in-memory store. Cheap to clone; every clone is the same store.
///
/// Creating one spawns a small task that expires leases; it ends when the last handle is dropped or
/// [`Engine::close`] is called.
#[derive(Clone, Debug)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    state: Mutex<State>,
    /// Wakes the lease-expiry task when the earliest expiry moves closer, or on close.
    lease_timer: Arc<Notify>,
    config: Config,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The expiry task only holds a `Weak`; wake it so it notices and exits.
        self.lease_timer.notify_one();
    }
}

/// One stored key (the map's key is the key itself).
#[derive(Clone, Debug)]
struct Entry {
    value: Bytes,
    create_revision: Revision,
    mod_revision: Revision,
    version: i64,
    lease: Option<LeaseId>,
}

impl Entry {
    fn to_kv(&self, key: &Bytes) -> KeyValue {
        KeyValue {
            key: key.clone(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

#[derive(Debug)]
struct Lease {
    ttl: i64,
    expires: Instant,
    keys: BTreeSet<Bytes>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    kv: BTreeMap<Bytes, Entry>,
    revision: Revision,
    compact_revision: Revision,
    leases: HashMap<LeaseId, Lease>,
    /// Leases ordered by expiry, for the expiry task.
    expiry: BTreeSet<(Instant, LeaseId)>,
    /// Committed batches with `revision >= compact_revision`, oldest first.
    history: VecDeque<Arc<WatchBatch>>,
    pub(crate) hub: Hub,
    /// Cluster mode: committed-here-but-not-yet-replicated batches are held back from watchers (and from
    /// the history) until [`Engine::release`] says the cluster committed them.
    hold: bool,
    /// The held batches, oldest first (consecutive revisions ending at `revision`).
    held: VecDeque<Arc<WatchBatch>>,
    /// Cluster mode: leases expire only when the leader revokes them (see [`Engine::expired_leases`]).
    expiry_paused: bool,
    closed: bool,
    /// Where changes are logged before they are applied, if anywhere.
    journal: Option<Arc<dyn Journal>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the state half-written in a way we could detect better
    // than by carrying on: every mutation is completed or undone before returning.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Engine {
    /// Creates an empty store. Must be called inside a tokio runtime.
    pub fn new(config: Config) -> Result<Engine, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            lease_timer: Arc::new(Notify::new()),
            config,
        });
        runtime.spawn(expire_leases(Arc::downgrade(&inner), inner.lease_timer.clone()));
        Ok(Engine { inner })
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        self.state().revision
    }

    /// A summary of the store.
    pub fn status(&self) -> Status {
        let st = self.state();
        Status {
            revision: st.revision,
            compact_revision: st.compact_revision,
            keys: st.kv.len(),
            leases: st.leases.len(),
            watchers: st.hub.len(),
        }
    }

    /// Reads one key: the current revision and the key, if present. The fast path of [`Engine::range`].
    pub fn get(&self, key: &[u8]) -> Result<(Revision, Option<KeyValue>), Error> {
        let st = self.state();
        st.check_open()?;
        let kv = st.kv.get_key_value(key).map(|(k, e)| e.to_kv(k));
        Ok((st.revision, kv))
    }

    /// Reads a key or a range.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, Error> {
        let st = self.state();
        st.check_open()?;
        st.range(req)
    }

    /// Writes one key.
    pub fn put(&self, req: PutRequest) -> Result<PutResponse, Error> {
        let (mut resp, revision) = self.write(|w| w.put(req))?;
        resp.revision = revision;
        Ok(resp)
    }

    /// Deletes a key or a range.
    pub fn delete_range(&self, req: &DeleteRequest) -> Result<DeleteResponse, Error> {
        let (mut resp, revision) = self.write(|w| w.delete(req))?;
        resp.revision = revision;
        Ok(resp)
    }

    /// Runs a transaction, all or nothing.
    pub fn txn(&self, req: &TxnRequest) -> Result<TxnResponse, Error> {
        check_txn_size(req)?;
        let (mut resp, revision) = self.write(|w| w.txn(req))?;
        set_txn_revision(&mut resp, revision);
        Ok(resp)
    }

    /// Runs `f` as one write: its changes get the next revision and are committed together, or, if it
    /// fails, undone. Returns `f`'s result and the revision after the write.
    fn write<R>(&self, f: impl FnOnce(&mut Writer<'_>) -> Result<R, Error>) -> Result<(R, Revision), Error> {
        let mut st = self.state();
        st.check_open()?;
        let next = st.revision + 1;
        let mut w =
            Writer { st: &mut st, revision: next, events: Vec::new(), undo: Vec::new(), revoked: Vec::new() };
        match f(&mut w) {
            Ok(r) => {
                let events = std::mem::take(&mut w.events);
                let revoked = std::mem::take(&mut w.revoked);
                // Log first: what cannot be logged is undone, never applied.
                if let Some(journal) = w.st.journal.clone() {
                    let mut records = Vec::with_capacity(1 + revoked.len());
                    if !events.is_empty() {
                        records
                            .push(JournalRecord::Commit { revision: next, events: events.as_slice().into() });
                    }
                    records.extend(revoked.iter().map(|id| JournalRecord::LeaseRevoke { id: *id }));
                    if let Err(e) = records.iter().try_for_each(|r| journal.record(r)) {
                        w.rollback();
                        return Err(Error::Journal(e));
                    }
                }
                drop(w);
                for id in revoked {
                    if let Some(lease) = st.leases.remove(&id) {
                        st.expiry.remove(&(lease.expires, id));
                    }
                }
                st.commit(events, &self.inner.config);
                Ok((r, st.revision))
            }
            Err(e) => {
                w.rollback();
                Err(e)
            }
        }
    }

    /// Grants a lease of `ttl` seconds, with the given id or a random one.
    pub fn lease_grant(&self, ttl: i64, id: Option<LeaseId>) -> Result<LeaseGrant, Error> {
        if !(1..=MAX_LEASE_TTL).contains(&ttl) {
            return Err(Error::InvalidTtl(ttl));
        }
        let mut st = self.state();
        st.check_open()?;
        let id = match id {
            Some(id) if id.0 > 0 => {
                if st.leases.contains_key(&id) {
                    return Err(Error::LeaseExists(id));
                }
                id
            }
            _ => loop {
                let candidate = LeaseId(rand::random::<i64>() & i64::MAX);
                if candidate.0 != 0 && !st.leases.contains_key(&candidate) {
                    break candidate;
                }
            },
        };
        if let Some(journal) = &st.journal {
            journal.record(&JournalRecord::LeaseGrant { id, ttl }).map_err(Error::Journal)?;
        }
        let expires = Instant::now() + Duration::from_secs(ttl as u64);
        st.leases.insert(id, Lease { ttl, expires, keys: BTreeSet::new() });
        let earliest = st.expiry.first().is_none_or(|(t, _)| expires < *t);
        st.expiry.insert((expires, id));
        drop(st);
        if earliest {
            self.inner.lease_timer.notify_one();
        }
        Ok(LeaseGrant { id, ttl })
    }

    /// Renews a lease for its full TTL; returns the TTL.
    pub fn lease_keep_alive(&self, id: LeaseId) -> Result<i64, Error> {
        let mut st = self.state();
        st.check_open()?;
        let st = &mut *st;
        let lease = st.leases.get_mut(&id).ok_or(Error::LeaseNotFound(id))?;
        st.expiry.remove(&(lease.expires, id));
        lease.expires = Instant::now() + Duration::from_secs(lease.ttl as u64);
        st.expiry.insert((lease.expires, id));
        Ok(lease.ttl)
    }

    /// Revokes a lease, deleting every key attached to it. Returns the revision after.
    pub fn lease_revoke(&self, id: LeaseId) -> Result<Revision, Error> {
        let ((), revision) = self.write(|w| w.revoke(id))?;
        Ok(revision)
    }

    /// Tells about a lease.
    pub fn lease_time_to_live(&self, id: LeaseId, keys: bool) -> Result<LeaseInfo, Error> {
        let st = self.state();
        st.check_open()?;
        let lease = st.leases.get(&id).ok_or(Error::LeaseNotFound(id))?;
        let left = lease.expires.saturating_duration_since(Instant::now());
        Ok(LeaseInfo {
            id,
            granted_ttl: lease.ttl,
            ttl: left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0),
            keys: if keys { lease.keys.iter().cloned().collect() } else { Vec::new() },
        })
    }

    /// The ids of every live lease.
    pub fn leases(&self) -> Vec<LeaseId> {
        let mut ids: Vec<LeaseId> = self.state().leases.keys().copied().collect();
        ids.sort();
        ids
    }

    /// Drops the history before `revision`: watches can no longer start earlier.
    pub fn compact(&self, revision: Revision) -> Result<(), Error> {
        let mut st = self.state();
        st.check_open()?;
        if revision > st.revision {
            return Err(Error::FutureRevision { requested: revision, current: st.revision });
        }
        if revision <= st.compact_revision {
            return Err(Error::Compacted { requested: revision, compact_revision: st.compact_revision });
        }
        if let Some(journal) = &st.journal {
            journal.record(&JournalRecord::Compact { revision }).map_err(Error::Journal)?;
        }
        st.compact(revision);
        Ok(())
    }

    /// Starts watching a key or range. See [`Watch`] for what the stream yields.
    pub fn watch(&self, req: WatchRequest) -> Result<Watch, Error> {
        let mut st = self.state();
        st.check_open()?;
        let start = req.start_revision;
        if start > 0 && start < st.compact_revision {
            return Err(Error::Compacted { requested: start, compact_revision: st.compact_revision });
        }
        let visible = st.visible_revision();
        let replay: VecDeque<Arc<WatchBatch>> = if start > 0 && start <= visible {
            // History is ordered by revision: skip what is older than `start`.
            let skip = st.history.partition_point(|b| b.revision < start);
            st.history.iter().skip(skip).filter(|b| touches(&req.range, b)).cloned().collect()
        } else {
            VecDeque::new()
        };
        // Batches held back for the cluster are delivered live when released, after this revision.
        let revision = visible;
        let capacity = self.inner.config.watch_capacity;
        Ok(st.hub.register(req, revision, replay, capacity, Arc::downgrade(&self.inner)))
    }

    /// A consistent copy of every key and lease, taken under one lock (cheap: keys and values are shared,
    /// not copied).
    pub fn snapshot(&self) -> Result<Snapshot, Error> {
        self.snapshot_with(|| ()).map(|(snapshot, ())| snapshot)
    }

    /// Replaces every key with `kvs` (their leases are ignored: leases are not restored) and sets the
    /// revision to `revision` (at least the highest mod revision of `kvs`). Meant for loading a persisted
    /// state before serving: no events are emitted, and the history starts empty, so the compact revision
    /// becomes the restored revision + 1 (a watch can start after the restored revision). Existing leases stay, detached
    /// from the replaced keys.
    pub fn restore(&self, revision: Revision, kvs: Vec<KeyValue>) -> Result<(), Error> {
        let mut st = self.state();
        st.check_open()?;
        let st = &mut *st;
        for lease in st.leases.values_mut() {
            lease.keys.clear();
        }
        st.kv.clear();
        let mut max_rev = revision.max(0);
        for kv in kvs {
            if kv.key.is_empty() {
                continue;
            }
            max_rev = max_rev.max(kv.mod_revision);
            let entry = Entry {
                value: kv.value,
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                version: kv.version.max(1),
                lease: None,
            };
            st.kv.insert(kv.key, entry);
        }
        st.revision = max_rev;
        // The events of the restored revision itself are not kept either: history starts after it, so a
        // watch that starts at it is told so (Compacted) instead of silently missing them.
        st.compact_revision = max_rev + 1;
        st.history.clear();
        Ok(())
    }

    /// The journal changes are logged to, if any.
    pub(crate) fn journal(&self) -> Option<Arc<dyn Journal>> {
        self.state().journal.clone()
    }

    /// Logs every later change to `journal` (or stops logging, with `None`).
    pub fn set_journal(&self, journal: Option<Arc<dyn Journal>>) {
        self.state().journal = journal;
    }

    /// A consistent copy of every key and lease, together with `f()` evaluated under the same lock: with a
    /// journal, `f` can read the journal's position, which then matches the copy exactly.
    pub fn snapshot_with<T>(&self, f: impl FnOnce() -> T) -> Result<(Snapshot, T), Error> {
        let st = self.state();
        st.check_open()?;
        let now = Instant::now();
        let kvs = st.kv.iter().map(|(k, e)| e.to_kv(k)).collect();
        let mut leases: Vec<LeaseSnapshot> = st
            .leases
            .iter()
            .map(|(id, l)| LeaseSnapshot {
                id: *id,
                ttl: l.ttl,
                remaining: l.expires.saturating_duration_since(now),
            })
            .collect();
        leases.sort_by_key(|l| l.id);
        let snapshot = Snapshot { revision: st.revision, compact_revision: st.compact_revision, kvs, leases };
        Ok((snapshot, f()))
    }

    /// Replaces the whole state with `snapshot`, keys with their leases, for recovery before serving. Leases
    /// get their full TTL from now. History starts empty: watches can start after the snapshot's revision.
    pub fn load(&self, snapshot: &Snapshot) -> Result<(), Error> {
        let mut guard = self.state();
        guard.check_open()?;
        let st = &mut *guard;
        st.kv.clear();
        st.leases.clear();
        st.expiry.clear();
        st.history.clear();
        let now = Instant::now();
        for l in &snapshot.leases {
            let expires = now + Duration::from_secs(l.ttl.max(1) as u64);
            st.leases.insert(l.id, Lease { ttl: l.ttl.max(1), expires, keys: BTreeSet::new() });
            st.expiry.insert((expires, l.id));
        }
        for kv in &snapshot.kvs {
            if kv.key.is_empty() {
                continue;
            }
            let lease = kv.lease.filter(|id| st.leases.contains_key(id));
            let entry = Entry {
                value: kv.value.clone(),
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                version: kv.version.max(1),
                lease,
            };
            st.set_entry(&kv.key, Some(entry));
        }
        st.revision = snapshot.revision.max(0);
        // The batch of the snapshot's own revision is not kept: history starts after it.
        st.compact_revision = st.revision + 1;
        drop(guard);
        self.inner.lease_timer.notify_one();
        Ok(())
    }

    /// Re-applies a journaled change during recovery (not journaled again). Commits must come in revision
    /// order; watchers and history see them like any change.
    pub fn replay(&self, record: &JournalRecord<'_>) -> Result<(), Error> {
        let mut st = self.state();
        st.check_open()?;
        match record {
            JournalRecord::Commit { revision, events } => {
                if *revision <= st.revision {
                    return Ok(()); // Already in the state it replays onto.
                }
                // The log keeps no previous values; the state it replays onto has them, and the history
                // needs them (watchers asking for prev_kv, and undoing an uncommitted tail in a cluster).
                let mut replayed = Vec::with_capacity(events.len());
                for e in events.iter() {
                    let entry = match e.kind {
                        EventKind::Put => Some(Entry {
                            value: e.kv.value.clone(),
                            create_revision: e.kv.create_revision,
                            mod_revision: e.kv.mod_revision,
                            version: e.kv.version,
                            lease: e.kv.lease.filter(|id| st.leases.contains_key(id)),
                        }),
                        EventKind::Delete => None,
                    };
                    let old = st.set_entry(&e.kv.key, entry);
                    replayed.push(Event {
                        kind: e.kind,
                        kv: e.kv.clone(),
                        prev_kv: old.map(|o| o.to_kv(&e.kv.key)),
                    });
                }
                st.revision = revision - 1;
                st.commit(replayed, &self.inner.config);
            }
            // A grant of a lease that exists renews it, keeping its keys (a follower logs renewals so).
            JournalRecord::LeaseGrant { id, ttl } => {
                st.upsert_lease(*id, (*ttl).max(1), Instant::now());
            }
            JournalRecord::LeaseRevoke { id } => st.drop_lease(*id),
            JournalRecord::Compact { revision } => {
                if *revision > st.compact_revision && *revision <= st.revision {
                    st.compact(*revision);
                }
            }
        }
        drop(st);
        self.inner.lease_timer.notify_one();
        Ok(())
    }

    /// Closes the store: every later call fails with [`Error::Closed`], watch streams end, the lease task
    /// stops. Idempotent.
    pub fn close(&self) {
        let mut st = self.state();
        st.closed = true;
        st.hub.clear();
        drop(st);
        self.inner.lease_timer.notify_one();
    }

    /// Whether [`Engine::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.state().closed
    }
}

/// A change a follower receives from its cluster leader (antietcd's `replicate` payload, spec section
/// 3.10), applied with [`Engine::apply_replicated`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReplicatedChange {
    /// The leader's revision after the change.
    pub(crate) revision: Revision,
    /// Lease grants and renewals (with their TTL) and revocations (`None`), applied first.
    pub(crate) leases: Vec<(LeaseId, Option<i64>)>,
    /// Key changes in order.
    pub(crate) events: Vec<ReplicatedEvent>,
}

/// One key change of a [`ReplicatedChange`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReplicatedEvent {
    pub(crate) key: Bytes,
    /// The new value; `None` deletes the key.
    pub(crate) value: Option<Bytes>,
    pub(crate) lease: Option<LeaseId>,
    /// Sent by our leaders, so followers keep the exact counters; antietcd sends only the value, and the
    /// follower derives them.
    pub(crate) create_revision: Option<Revision>,
    pub(crate) version: Option<i64>,
}

/// Replication support: what the cluster runtime ([`crate::cluster`]) needs from the state machine.
///
/// In a cluster, a change is applied on the leader (and on followers) before the cluster has committed
/// it. So that nobody sees an uncommitted change, the engine *holds* batches back from watchers and the
/// history until [`Engine::release`]; readers are kept out by the cluster's read gate. Leases never expire
/// by themselves there: the leader revokes them through replication.
impl Engine {
    /// Turns holding on or off (off releases everything held).
    pub(crate) fn set_hold(&self, hold: bool) {
        let mut st = self.state();
        st.hold = hold;
        if !hold {
            let st = &mut *st;
            while let Some(b) = st.held.pop_front() {
                st.publish(b, &self.inner.config);
            }
        }
    }

    /// Publishes the held batches up to `upto`: the cluster committed them. The journal is told (see
    /// [`Journal::committed`]).
    pub(crate) fn release(&self, upto: Revision) {
        let mut st = self.state();
        let st = &mut *st;
        let mut published = false;
        while st.held.front().is_some_and(|b| b.revision <= upto) {
            if let Some(b) = st.held.pop_front() {
                st.publish(b, &self.inner.config);
                published = true;
            }
        }
        if let (true, Some(journal)) = (published, &st.journal) {
            journal.committed(st.visible_revision());
        }
    }

    /// Holds again the published batches after `revision`: on a restarted cluster member, the log's tail
    /// after the last revision it knew committed, so that it can be undone ([`Engine::rollback_held`]) if
    /// the cluster's leader does not have it. Only before anyone watches. Returns `false`, changing
    /// nothing, if the history does not reach back to `revision` (a checkpoint after it, say).
    pub(crate) fn hold_after(&self, revision: Revision) -> bool {
        let mut st = self.state();
        let st = &mut *st;
        if revision > st.revision || revision + 1 < st.compact_revision || !st.held.is_empty() {
            return false;
        }
        let keep = st.history.partition_point(|b| b.revision <= revision);
        let tail = st.history.split_off(keep);
        st.held.extend(tail);
        true
    }

    /// Whether some applied batch is still held (not known to be committed).
    pub(crate) fn has_held(&self) -> bool {
        !self.state().held.is_empty()
    }

    /// The revision watchers have seen: [`Engine::revision`] minus the held batches.
    pub(crate) fn visible_revision(&self) -> Revision {
        self.state().visible_revision()
    }

    /// Stops (or restarts) the lease-expiry task; in a cluster the leader revokes expired leases itself.
    pub(crate) fn pause_lease_expiry(&self, paused: bool) {
        self.state().expiry_paused = paused;
        self.inner.lease_timer.notify_one();
    }

    /// The leases whose time has come, earliest first.
    pub(crate) fn expired_leases(&self) -> Vec<LeaseId> {
        let now = Instant::now();
        self.state().expiry.iter().take_while(|(t, _)| *t <= now).map(|(_, id)| *id).collect()
    }

    /// Gives every lease at least its full TTL from now: a new leader cannot know when the last keepalive
    /// reached the old one (etcd does the same on a leader change).
    pub(crate) fn refresh_leases(&self) {
        let mut st = self.state();
        let st = &mut *st;
        let now = Instant::now();
        st.expiry.clear();
        for (id, l) in st.leases.iter_mut() {
            l.expires = l.expires.max(now + Duration::from_secs(l.ttl as u64));
            st.expiry.insert((l.expires, *id));
        }
    }

    /// The committed and held batches after `revision`, for a follower at `revision` to catch up from;
    /// `None` if history no longer reaches back there (or `revision` is ahead of this node).
    pub(crate) fn batches_after(&self, revision: Revision) -> Option<Vec<Arc<WatchBatch>>> {
        let st = self.state();
        if revision > st.revision || (revision < st.revision && revision + 1 < st.compact_revision) {
            return None;
        }
        Some(st.history.iter().chain(st.held.iter()).filter(|b| b.revision > revision).cloned().collect())
    }

    /// Undoes every held (uncommitted) batch, newest first, from the previous values its events carry:
    /// the state goes back to the visible revision. Returns whether anything was undone. Not journaled:
    /// the caller checkpoints.
    pub(crate) fn rollback_held(&self) -> Result<bool, Error> {
        let mut guard = self.state();
        guard.check_open()?;
        let st = &mut *guard;
        let Some(first) = st.held.front().map(|b| b.revision) else { return Ok(false) };
        while let Some(batch) = st.held.pop_back() {
            for e in batch.events.iter().rev() {
                let entry = e.prev_kv.as_ref().map(|p| Entry {
                    value: p.value.clone(),
                    create_revision: p.create_revision,
                    mod_revision: p.mod_revision,
                    version: p.version,
                    lease: p.lease,
                });
                st.set_entry(&e.kv.key, entry);
            }
        }
        st.revision = first - 1;
        Ok(true)
    }

    /// The newest published batch: its revision and a digest of its events (a follower's claim to be on
    /// the leader's line, checked with [`Engine::batch_digest`]).
    pub(crate) fn last_batch(&self) -> Option<(Revision, u64)> {
        self.state().history.back().map(|b| (b.revision, digest(b)))
    }

    /// The digest of the published batch at `revision`, if the history holds it.
    pub(crate) fn batch_digest(&self, revision: Revision) -> Option<u64> {
        let st = self.state();
        let i = st.history.partition_point(|b| b.revision < revision);
        st.history.get(i).filter(|b| b.revision == revision).map(|b| digest(b))
    }

    /// Every lease and its TTL, by id.
    pub(crate) fn lease_table(&self) -> Vec<(LeaseId, i64)> {
        let st = self.state();
        let mut t: Vec<(LeaseId, i64)> = st.leases.iter().map(|(id, l)| (*id, l.ttl)).collect();
        t.sort();
        t
    }

    /// Makes the lease table exactly `table` (a follower catching up): leases missing from it are dropped
    /// (their keys stay, detached), the others get their TTL afresh. Journaled.
    pub(crate) fn set_lease_table(&self, table: &[(LeaseId, i64)]) -> Result<(), Error> {
        let mut guard = self.state();
        guard.check_open()?;
        let st = &mut *guard;
        let wanted: HashMap<LeaseId, i64> =
            table.iter().map(|(id, ttl)| (*id, (*ttl).clamp(1, MAX_LEASE_TTL))).collect();
        let gone: Vec<LeaseId> = st.leases.keys().filter(|id| !wanted.contains_key(id)).copied().collect();
        for id in gone {
            if let Some(j) = &st.journal {
                j.record(&JournalRecord::LeaseRevoke { id }).map_err(Error::Journal)?;
            }
            st.drop_lease(id);
        }
        let now = Instant::now();
        for (id, ttl) in wanted {
            if let Some(j) = &st.journal {
                j.record(&JournalRecord::LeaseGrant { id, ttl }).map_err(Error::Journal)?;
            }
            if st.upsert_lease(id, ttl, now) {
                // Keys may name it already (restored by a rollback while the lease was gone).
                let keys: BTreeSet<Bytes> =
                    st.kv.iter().filter(|(_, e)| e.lease == Some(id)).map(|(k, _)| k.clone()).collect();
                if let Some(l) = st.leases.get_mut(&id) {
                    l.keys = keys;
                }
            }
        }
        // Keys naming a lease that does not exist here lose it (it was revoked meanwhile).
        for e in st.kv.values_mut() {
            if e.lease.is_some_and(|id| !st.leases.contains_key(&id)) {
                e.lease = None;
            }
        }
        Ok(())
    }

    /// Applies a change replicated by the leader: logged (journal) first, then applied; watchers see it
    /// per the hold setting. The change's revision must be after this node's (a gap means the leader's
    /// revisions skip, as antietcd's lease grants make them; a repeat or a step back is refused).
    pub(crate) fn apply_replicated(&self, change: &ReplicatedChange) -> Result<(), Error> {
        let mut guard = self.state();
        guard.check_open()?;
        let st = &mut *guard;
        if !change.events.is_empty() && change.revision <= st.revision {
            return Err(Error::Replication(format!(
                "a change at revision {} is not after this node's revision {}",
                change.revision, st.revision
            )));
        }
        for (id, ttl) in &change.leases {
            match ttl {
                Some(ttl) => {
                    let ttl = (*ttl).clamp(1, MAX_LEASE_TTL);
                    if let Some(j) = &st.journal {
                        j.record(&JournalRecord::LeaseGrant { id: *id, ttl }).map_err(Error::Journal)?;
                    }
                    st.upsert_lease(*id, ttl, Instant::now());
                }
                None => {
                    if !st.leases.contains_key(id) {
                        continue; // Already gone here (antietcd would stop replying: a needless failure).
                    }
                    if let Some(j) = &st.journal {
                        j.record(&JournalRecord::LeaseRevoke { id: *id }).map_err(Error::Journal)?;
                    }
                    st.drop_lease(*id);
                }
            }
        }
        if change.events.is_empty() {
            return Ok(());
        }
        let rev = change.revision;
        let mut events = Vec::with_capacity(change.events.len());
        let mut undo: Vec<(Bytes, Option<Entry>)> = Vec::with_capacity(change.events.len());
        for e in &change.events {
            let old = st.kv.get(&e.key[..]).cloned();
            let entry = match &e.value {
                Some(value) => {
                    let entry = Entry {
                        value: value.clone(),
                        create_revision: e
                            .create_revision
                            .unwrap_or_else(|| old.as_ref().map_or(rev, |o| o.create_revision)),
                        mod_revision: rev,
                        version: e.version.unwrap_or_else(|| old.as_ref().map_or(0, |o| o.version) + 1),
                        lease: e.lease.filter(|id| st.leases.contains_key(id)),
                    };
                    events.push(Event {
                        kind: EventKind::Put,
                        kv: entry.to_kv(&e.key),
                        prev_kv: old.as_ref().map(|o| o.to_kv(&e.key)),
                    });
                    Some(entry)
                }
                None => {
                    let Some(o) = &old else { continue };
                    events.push(Event {
                        kind: EventKind::Delete,
                        kv: KeyValue {
                            key: e.key.clone(),
                            value: Bytes::new(),
                            create_revision: 0,
                            mod_revision: rev,
                            version: 0,
                            lease: None,
                        },
                        prev_kv: Some(o.to_kv(&e.key)),
                    });
                    None
                }
            };
            st.set_entry(&e.key, entry);
            undo.push((e.key.clone(), old));
        }
        if events.is_empty() {
            st.revision = rev;
            return Ok(());
        }
        if let Some(j) = st.journal.clone() {
            if let Err(e) =
                j.record(&JournalRecord::Commit { revision: rev, events: events.as_slice().into() })
            {
                while let Some((key, old)) = undo.pop() {
                    st.set_entry(&key, old);
                }
                return Err(Error::Journal(e));
            }
        }
        st.revision = rev - 1;
        st.commit(events, &self.inner.config);
        Ok(())
    }

    /// Replaces the whole state with `snap` (a resync `load` from the leader). If any key changed (or this
    /// node held uncommitted batches) every watcher is cancelled as lagging: it resumes and learns that
    /// history before the new revision is gone. An identical state changes nothing. Returns whether anything changed. Not journaled: the caller
    /// checkpoints.
    pub(crate) fn load_replicated(&self, snap: &Snapshot) -> Result<bool, Error> {
        let mut guard = self.state();
        guard.check_open()?;
        let st = &mut *guard;
        let dirty = !st.held.is_empty();
        let leases: HashMap<LeaseId, i64> = snap.leases.iter().map(|l| (l.id, l.ttl.max(1))).collect();
        let mut new: Vec<KeyValue> = snap.kvs.iter().filter(|kv| !kv.key.is_empty()).cloned().collect();
        new.sort_by(|a, b| a.key.cmp(&b.key));
        new.dedup_by(|a, b| a.key == b.key);
        for kv in &mut new {
            kv.lease = kv.lease.filter(|id| leases.contains_key(id));
            kv.version = kv.version.max(1);
        }
        // Merge-join the current and the new key sets into the events that turn one into the other.
        let mut events = Vec::new();
        {
            let mut old = st.kv.iter().peekable();
            let mut next = new.iter().peekable();
            loop {
                match (old.peek(), next.peek()) {
                    (None, None) => break,
                    (Some((k, e)), n) if n.is_none_or(|n| k[..] < n.key[..]) => {
                        events.push(Event {
                            kind: EventKind::Delete,
                            kv: KeyValue {
                                key: (*k).clone(),
                                value: Bytes::new(),
                                create_revision: 0,
                                mod_revision: snap.revision,
                                version: 0,
                                lease: None,
                            },
                            prev_kv: Some(e.to_kv(k)),
                        });
                        old.next();
                    }
                    (Some((k, e)), Some(n)) if k[..] == n.key[..] => {
                        let before = e.to_kv(k);
                        if before != **n {
                            events.push(Event {
                                kind: EventKind::Put,
                                kv: (*n).clone(),
                                prev_kv: Some(before),
                            });
                        }
                        old.next();
                        next.next();
                    }
                    (_, Some(n)) => {
                        events.push(Event { kind: EventKind::Put, kv: (*n).clone(), prev_kv: None });
                        next.next();
                    }
                    (Some(_), None) => unreachable!("covered by the delete arm"),
                }
            }
        }
        let leases_same =
            st.leases.len() == leases.len() && st.leases.iter().all(|(id, l)| leases.get(id) == Some(&l.ttl));
        if !dirty && events.is_empty() && snap.revision == st.revision && leases_same {
            return Ok(false);
        }
        st.held.clear();
        // Leases: those of the snapshot, each given its full TTL (expiry is the leader's business).
        let now = Instant::now();
        st.leases.clear();
        st.expiry.clear();
        for (id, ttl) in &leases {
            let expires = now + Duration::from_secs(*ttl as u64);
            st.leases.insert(*id, Lease { ttl: *ttl, expires, keys: BTreeSet::new() });
            st.expiry.insert((expires, *id));
        }
        st.kv.clear();
        for kv in new {
            let entry = Entry {
                value: kv.value,
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                version: kv.version,
                lease: kv.lease,
            };
            st.set_entry(&kv.key, Some(entry));
        }
        st.revision = snap.revision.max(0);
        st.history.clear();
        st.compact_revision = st.revision + 1;
        // Watchers cannot be given the missing revisions one by one (a load has only the end state), and
        // one combined batch would break the revision order they rely on: they are cancelled as lagging
        // and resume, learning of the compaction. (A follower that can catch up revision by revision is
        // not loaded: see the cluster's `resume`.)
        if dirty || !events.is_empty() {
            st.hub.lag_all();
        }
        drop(guard);
        self.inner.lease_timer.notify_one();
        Ok(true)
    }
}

impl Inner {
    pub(crate) fn unregister_watch(&self, id: u64) {
        lock(&self.state).hub.remove(id);
    }
}

/// A digest of a batch's events (FNV-1a over kind, key, value and counters): equal batches, equal digests,
/// on every node running this code.
fn digest(batch: &WatchBatch) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(&batch.revision.to_le_bytes());
    for e in batch.events.iter() {
        eat(&[e.kind as u8]);
        eat(&(e.kv.key.len() as u64).to_le_bytes());
        eat(&e.kv.key);
        eat(&(e.kv.value.len() as u64).to_le_bytes());
        eat(&e.kv.value);
        eat(&e.kv.create_revision.to_le_bytes());
        eat(&e.kv.version.to_le_bytes());
    }
    h
}

/// The revision of the newest batch of `history` (0 if empty).
fn batch_revision(history: &VecDeque<Arc<WatchBatch>>) -> Revision {
    history.back().map_or(0, |b| b.revision)
}

/// Whether any event of `batch` is in `range`.
pub(crate) fn touches(range: &KeyRange, batch: &WatchBatch) -> bool {
    batch.events.iter().any(|e| range.contains(&e.kv.key))
}

fn check_txn_size(req: &TxnRequest) -> Result<(), Error> {
    fn walk(req: &TxnRequest, depth: usize, ops: &mut usize) -> Result<(), Error> {
        if depth > MAX_TXN_DEPTH {
            return Err(Error::TxnTooLarge("nested too deeply"));
        }
        for op in req.success.iter().chain(&req.failure) {
            *ops += 1;
            if let TxnOp::Txn(t) = op {
                walk(t, depth + 1, ops)?;
            }
        }
        if *ops + req.compare.len() > MAX_TXN_OPS {
            return Err(Error::TxnTooLarge("too many operations"));
        }
        Ok(())
    }
    walk(req, 1, &mut 0)
}

fn set_txn_revision(resp: &mut TxnResponse, revision: Revision) {
    resp.revision = revision;
    for r in &mut resp.responses {
        match r {
            TxnOpResponse::Range(r) => r.revision = revision,
            TxnOpResponse::Put(r) => r.revision = revision,
            TxnOpResponse::Delete(r) => r.revision = revision,
            TxnOpResponse::Txn(t) => set_txn_revision(t, revision),
        }
    }
}

/// The keys of `range` in `map`, in order.
fn keys_in<'a>(
    map: &'a BTreeMap<Bytes, Entry>,
    range: &'a KeyRange,
) -> Box<dyn Iterator<Item = (&'a Bytes, &'a Entry)> + 'a> {
    if range.is_single() {
        return Box::new(map.get_key_value(&range.key[..]).into_iter());
    }
    let all = &range.range_end[..] == b"\0";
    let start: Bound<&[u8]> =
        if all && &range.key[..] == b"\0" { Bound::Unbounded } else { Bound::Included(&range.key[..]) };
    let end: Bound<&[u8]> = if all { Bound::Unbounded } else { Bound::Excluded(&range.range_end[..]) };
    if let (Bound::Included(s), Bound::Excluded(e)) = (start, end) {
        // BTreeMap::range panics on an inverted range; an inverted etcd range is simply empty.
        if s >= e {
            return Box::new(std::iter::empty());
        }
    }
    Box::new(map.range::<[u8], _>((start, end)))
}

impl State {
    fn check_open(&self) -> Result<(), Error> {
        if self.closed {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn check_read_revision(&self, revision: Revision) -> Result<(), Error> {
        if revision <= 0 || revision == self.revision {
            return Ok(());
        }
        if revision > self.revision {
            return Err(Error::FutureRevision { requested: revision, current: self.revision });
        }
        if revision < self.compact_revision {
            return Err(Error::Compacted { requested: revision, compact_revision: self.compact_revision });
        }
        Err(Error::HistoricalRead { requested: revision, current: self.revision })
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, Error> {
        self.check_read_revision(req.revision)?;
        let keep = |e: &Entry| {
            (req.min_mod_revision <= 0 || e.mod_revision >= req.min_mod_revision)
                && (req.max_mod_revision <= 0 || e.mod_revision <= req.max_mod_revision)
                && (req.min_create_revision <= 0 || e.create_revision >= req.min_create_revision)
                && (req.max_create_revision <= 0 || e.create_revision <= req.max_create_revision)
        };
        let mut matching = keys_in(&self.kv, &req.range).filter(|(_, e)| keep(e));
        let sorted = req.sort_order != SortOrder::None
            && !(req.sort_target == SortTarget::Key && req.sort_order == SortOrder::Ascend);
        let mut resp = RangeResponse { revision: self.revision, ..Default::default() };
        if req.count_only {
            resp.count = matching.count();
            return Ok(resp);
        }
        let limit = if req.limit == 0 { usize::MAX } else { req.limit };
        let to_kv = |(k, e): (&Bytes, &Entry)| {
            let mut kv = e.to_kv(k);
            if req.keys_only {
                kv.value = Bytes::new();
            }
            kv
        };
        if !sorted {
            // Key order is the map's order: stop copying at the limit, just count the rest.
            resp.kvs = matching.by_ref().take(limit).map(to_kv).collect();
            resp.count = resp.kvs.len() + matching.count();
        } else {
            let mut all: Vec<KeyValue> = matching.map(to_kv).collect();
            resp.count = all.len();
            sort_kvs(&mut all, req.sort_target, req.sort_order);
            all.truncate(limit);
            resp.kvs = all;
        }
        resp.more = resp.count > resp.kvs.len();
        Ok(resp)
    }

    fn compare(&self, c: &Compare) -> bool {
        let mut any = false;
        for (_, e) in keys_in(&self.kv, &c.range) {
            any = true;
            if !compare_entry(Some(e), c) {
                return false;
            }
        }
        any || compare_entry(None, c)
    }

    /// Grants lease `id` (ttl seconds from `now`), or renews it keeping its keys. True if it is new.
    fn upsert_lease(&mut self, id: LeaseId, ttl: i64, now: Instant) -> bool {
        let expires = now + Duration::from_secs(ttl as u64);
        let new = match self.leases.get_mut(&id) {
            Some(l) => {
                self.expiry.remove(&(l.expires, id));
                l.ttl = ttl;
                l.expires = expires;
                false
            }
            None => {
                self.leases.insert(id, Lease { ttl, expires, keys: BTreeSet::new() });
                true
            }
        };
        self.expiry.insert((expires, id));
        new
    }

    /// Removes lease `id`; its keys stay, without a lease (their deletion, if any, is a separate change).
    fn drop_lease(&mut self, id: LeaseId) {
        if let Some(l) = self.leases.remove(&id) {
            self.expiry.remove(&(l.expires, id));
            for key in l.keys {
                if let Some(e) = self.kv.get_mut(&key[..]) {
                    e.lease = None;
                }
            }
        }
    }

    /// Replaces the entry of `key`, keeping lease key sets in step; returns the old entry.
    fn set_entry(&mut self, key: &Bytes, entry: Option<Entry>) -> Option<Entry> {
        let new_lease = entry.as_ref().and_then(|e| e.lease);
        let old = match entry {
            Some(e) => self.kv.insert(key.clone(), e),
            None => self.kv.remove(&key[..]),
        };
        let old_lease = old.as_ref().and_then(|e| e.lease);
        if old_lease != new_lease {
            if let Some(l) = old_lease.and_then(|id| self.leases.get_mut(&id)) {
                l.keys.remove(&key[..]);
            }
            if let Some(l) = new_lease.and_then(|id| self.leases.get_mut(&id)) {
                l.keys.insert(key.clone());
            }
        }
        old
    }

    /// Makes `events` (all stamped `revision + 1`) the next revision, if there are any.
    fn commit(&mut self, events: Vec<Event>, config: &Config) {
        if events.is_empty() {
            return;
        }
        self.revision += 1;
        let batch = Arc::new(WatchBatch { revision: self.revision, events });
        if self.hold {
            self.held.push_back(batch);
            return;
        }
        self.publish(batch, config);
    }

    /// Hands a committed batch to watchers and the history; compacts automatically.
    fn publish(&mut self, batch: Arc<WatchBatch>, config: &Config) {
        self.hub.publish(&batch);
        self.history.push_back(batch);
        let n = config.compact_revisions;
        if n > 0 && batch_revision(&self.history) - self.compact_revision > 2 * n {
            self.compact(batch_revision(&self.history) - n);
        }
    }

    /// The revision watchers have seen: the current one minus what is held back.
    fn visible_revision(&self) -> Revision {
        self.held.front().map_or(self.revision, |b| b.revision - 1)
    }

    fn compact(&mut self, revision: Revision) {
        while self.history.front().is_some_and(|b| b.revision < revision) {
            self.history.pop_front();
        }
        self.compact_revision = revision;
    }
}

fn compare_entry(e: Option<&Entry>, c: &Compare) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match (&c.target, e) {
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Value(v), Some(e)) => e.value[..].cmp(&v[..]),
        (CompareTarget::Version(v), e) => e.map_or(0, |e| e.version).cmp(v),
        (CompareTarget::Create(v), e) => e.map_or(0, |e| e.create_revision).cmp(v),
        (CompareTarget::Mod(v), e) => e.map_or(0, |e| e.mod_revision).cmp(v),
        (CompareTarget::Lease(v), e) => e.and_then(|e| e.lease).map_or(0, |l| l.0).cmp(&v.map_or(0, |l| l.0)),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}

fn sort_kvs(kvs: &mut [KeyValue], target: SortTarget, order: SortOrder) {
    match target {
        SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
        SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
        SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
        SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
        SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
    }
    if order == SortOrder::Descend {
        kvs.reverse();
    }
}

/// One write in progress: applies changes at `revision` and remembers how to undo them.
struct Writer<'a> {
    st: &'a mut State,
    revision: Revision,
    events: Vec<Event>,
    undo: Vec<(Bytes, Option<Entry>)>,
    /// Leases revoked by this write, removed once it commits.
    revoked: Vec<LeaseId>,
}

impl Writer<'_> {
    fn set(&mut self, key: &Bytes, entry: Option<Entry>) -> Option<Entry> {
        let old = self.st.set_entry(key, entry);
        self.undo.push((key.clone(), old.clone()));
        old
    }

    fn rollback(mut self) {
        while let Some((key, old)) = self.undo.pop() {
            self.st.set_entry(&key, old);
        }
    }

    fn put(&mut self, req: PutRequest) -> Result<PutResponse, Error> {
        if req.key.is_empty() {
            return Err(Error::EmptyKey);
        }
        let old = self.st.kv.get(&req.key[..]);
        if (req.ignore_value || req.ignore_lease) && old.is_none() {
            return Err(Error::KeyNotFound);
        }
        let lease = match (req.ignore_lease, old) {
            (true, Some(old)) => old.lease,
            _ => req.lease,
        };
        if let Some(id) = lease {
            if !self.st.leases.contains_key(&id) {
                return Err(Error::LeaseNotFound(id));
            }
        }
        let value = match (req.ignore_value, old) {
            (true, Some(old)) => old.value.clone(),
            _ => req.value,
        };
        let entry = Entry {
            value,
            create_revision: old.map_or(self.revision, |o| o.create_revision),
            mod_revision: self.revision,
            version: old.map_or(0, |o| o.version) + 1,
            lease,
        };
        let kv = entry.to_kv(&req.key);
        let old = self.set(&req.key, Some(entry)).map(|o| o.to_kv(&req.key));
        self.events.push(Event { kind: EventKind::Put, kv, prev_kv: old.clone() });
        Ok(PutResponse { revision: 0, prev_kv: if req.prev_kv { old } else { None } })
    }

    fn delete(&mut self, req: &DeleteRequest) -> Result<DeleteResponse, Error> {
        let keys: Vec<Bytes> = keys_in(&self.st.kv, &req.range).map(|(k, _)| k.clone()).collect();
        let mut resp = DeleteResponse { deleted: keys.len(), ..Default::default() };
        for key in keys {
            self.delete_key(&key, req.prev_kv.then_some(&mut resp.prev_kvs));
        }
        Ok(resp)
    }

    fn delete_key(&mut self, key: &Bytes, prev: Option<&mut Vec<KeyValue>>) {
        if let Some(old) = self.set(key, None) {
            let old = old.to_kv(key);
            if let Some(prev) = prev {
                prev.push(old.clone());
            }
            let kv = KeyValue {
                key: key.clone(),
                value: Bytes::new(),
                create_revision: 0,
                mod_revision: self.revision,
                version: 0,
                lease: None,
            };
            self.events.push(Event { kind: EventKind::Delete, kv, prev_kv: Some(old) });
        }
    }

    fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, Error> {
        let succeeded = req.compare.iter().all(|c| self.st.compare(c));
        let ops = if succeeded { &req.success } else { &req.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                TxnOp::Range(r) => TxnOpResponse::Range(self.st.range(r)?),
                TxnOp::Put(p) => TxnOpResponse::Put(self.put(p.clone())?),
                TxnOp::Delete(d) => TxnOpResponse::Delete(self.delete(d)?),
                TxnOp::Txn(t) => TxnOpResponse::Txn(self.txn(t)?),
            });
        }
        Ok(TxnResponse { revision: 0, succeeded, responses })
    }

    fn revoke(&mut self, id: LeaseId) -> Result<(), Error> {
        let lease = self.st.leases.get(&id).ok_or(Error::LeaseNotFound(id))?;
        let keys: Vec<Bytes> = lease.keys.iter().cloned().collect();
        for key in &keys {
            self.delete_key(key, None);
        }
        // The lease itself goes when the write commits (after journaling), so a refused write keeps it.
        self.revoked.push(id);
        Ok(())
    }
}

/// The lease-expiry task: revokes leases as their time comes. Holds only a `Weak` to the engine.
async fn expire_leases(engine: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(inner) = engine.upgrade() else { return };
            let engine = Engine { inner };
            let now = Instant::now();
            let st = engine.state();
            if st.closed {
                return;
            }
            if st.expiry_paused {
                // In a cluster the leader revokes expired leases itself (replicated); wait to be woken.
                None
            } else {
                let due: Vec<LeaseId> =
                    st.expiry.iter().take_while(|(t, _)| *t <= now).map(|(_, id)| *id).collect();
                drop(st);
                for id in due {
                    // It may have been revoked or renewed meanwhile; either way there is nothing to do then.
                    let still_due = engine.state().leases.get(&id).is_some_and(|l| l.expires <= now);
                    if still_due {
                        let _ = engine.lease_revoke(id);
                    }
                }
                let next = engine.state().expiry.first().map(|(t, _)| *t);
                next
            }
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}
