//! Durable storage for an [`Engine`]: every change journaled to a write-ahead log ([`crate::wal`]) with
//! group commit, periodic checkpoints, and recovery by checkpoint + replay.
//!
//! A write costs one record appended to the log and a share of one `fdatasync`, whatever the size of the
//! store (antietcd 1.3.1 rewrote and gzipped the whole database on every write). Recovery loads the newest
//! checkpoint and replays the records after it, so leases, leased keys and the history of recent revisions
//! (for watches with a `start_revision`) survive a restart; a watch that starts before the replayed history
//! gets [`Error::Compacted`](crate::Error::Compacted).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use antietcd::durable::{Durable, DurableOptions};
//! use antietcd::{Config, PutRequest};
//! let dir = std::env::temp_dir().join(format!("antietcd-doc-{}", std::process::id()));
//! let (engine, durable) = Durable::open(&dir, Config::default(), DurableOptions::default()).await?;
//! engine.put(PutRequest::new("k", "v"))?;
//! durable.sync().await?; // on disk: acknowledge now
//! durable.close().await?;
//! let (engine, durable) = Durable::open(&dir, Config::default(), DurableOptions::default()).await?;
//! assert_eq!(engine.get(b"k")?.1.unwrap().value, "v");
//! # durable.close().await?; std::fs::remove_dir_all(&dir)?; Ok(()) }
//! ```

use crate::codec::{put_i64, put_kv, Reader};
use crate::engine::{Config, Engine, Journal, JournalRecord};
use crate::types::*;
use crate::wal::{Checkpoint, Wal, WalError, WalOptions};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Tuning of [`Durable`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DurableOptions {
    /// Write a checkpoint (and drop the log before it) after at least this many records, and never before
    /// the log since the last checkpoint holds as many records as the store holds keys: a checkpoint costs
    /// O(store), so spacing them by the store's size keeps the cost per write constant. 0: only on close.
    pub checkpoint_every: u64,
    /// The log's own options.
    pub wal: WalOptions,
    /// Whether [`Durable::close`] writes a last checkpoint (a faster next start). Without it the next
    /// start replays the log since the last checkpoint, which rebuilds the watch history of those
    /// revisions: cluster members keep it, so that watchers resume across a restart.
    pub checkpoint_on_close: bool,
}

impl Default for DurableOptions {
    fn default() -> Self {
        DurableOptions { checkpoint_every: 100_000, wal: WalOptions::default(), checkpoint_on_close: true }
    }
}

impl DurableOptions {
    /// Sets [`DurableOptions::checkpoint_every`].
    pub fn with_checkpoint_every(mut self, records: u64) -> Self {
        self.checkpoint_every = records;
        self
    }

    /// Sets [`DurableOptions::checkpoint_on_close`].
    pub fn with_checkpoint_on_close(mut self, on: bool) -> Self {
        self.checkpoint_on_close = on;
        self
    }

    /// Sets [`DurableOptions::wal`].
    pub fn with_wal(mut self, wal: WalOptions) -> Self {
        self.wal = wal;
        self
    }
}

/// What can go wrong with durable storage.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// The log failed or does not check out.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// A record or checkpoint checks out but cannot be decoded: written by something else, or a bug.
    #[error("{path}: record {seq} cannot be decoded: {reason}")]
    Decode {
        /// The log directory.
        path: PathBuf,
        /// The record's sequence number (the checkpoint's, for a checkpoint).
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// The engine refused (e.g. it is closed).
    #[error(transparent)]
    Engine(#[from] crate::Error),
}

/// What recovery found, for logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryInfo {
    /// The checkpoint's revision, if there was one.
    pub checkpoint_revision: Option<Revision>,
    /// Records replayed after it.
    pub replayed: usize,
    /// A torn tail cut off: the segment and the offset it was truncated to.
    pub truncated: Option<(PathBuf, u64)>,
    /// The revision after recovery.
    pub revision: Revision,
    /// The highest revision the log says a cluster committed ([`Journal::committed`]) since the
    /// checkpoint: the changes after it may be uncommitted. `None` outside a cluster, or if no note came
    /// after the checkpoint.
    pub committed: Option<Revision>,
    /// How long recovery took.
    pub duration: Duration,
}

/// The durable storage of one engine. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Durable {
    engine: Engine,
    wal: Arc<Wal>,
    journal: Arc<WalJournal>,
    dir: PathBuf,
    recovery: RecoveryInfo,
    wake: Arc<Notify>,
    checkpointer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    checkpoint_on_close: bool,
}

/// Feeds the engine's changes into the log.
#[derive(Debug)]
struct WalJournal {
    wal: Arc<Wal>,
    since_checkpoint: AtomicU64,
    /// Records between checkpoints: `checkpoint_every`, or the store's size at the last checkpoint if larger.
    every: Arc<AtomicU64>,
    wake: Arc<Notify>,
    /// The newest [`Journal::committed`] revision not yet logged (0: none). It is logged just before the
    /// next change, in the same group commit, rather than on its own (which would cost a sync per batch).
    /// So the log's last note can only miss the changes after it: a note lost with the process leaves its
    /// batch looking uncommitted, which costs a restarted member an undo and a catch-up, nothing more.
    note: AtomicI64,
}

impl WalJournal {
    fn write_note(&self) -> Result<(), WalError> {
        let note = self.note.swap(0, Ordering::AcqRel);
        if note > 0 {
            self.wal.append(encode_committed(note))?;
        }
        Ok(())
    }
}

impl Journal for WalJournal {
    fn record(&self, record: &JournalRecord<'_>) -> Result<(), String> {
        self.write_note().map_err(|e| e.to_string())?;
        self.wal.append(encode_record(record)).map_err(|e| e.to_string())?;
        let every = self.every.load(Ordering::Relaxed);
        if every > 0 && self.since_checkpoint.fetch_add(1, Ordering::Relaxed) + 1 >= every {
            self.since_checkpoint.store(0, Ordering::Relaxed);
            self.wake.notify_one();
        }
        Ok(())
    }

    fn committed(&self, revision: Revision) {
        self.note.fetch_max(revision, Ordering::AcqRel);
    }
}

impl Durable {
    /// Opens (or creates) the store in `dir`: recovers the engine from its checkpoint and log, then
    /// journals every later change. Must be called inside a tokio runtime.
    pub async fn open(
        dir: &Path,
        config: Config,
        options: DurableOptions,
    ) -> Result<(Engine, Durable), DurableError> {
        let started = std::time::Instant::now();
        let engine = Engine::new(config)?;
        let (wal_dir, wal_options) = (dir.to_owned(), options.wal.clone());
        let (wal, recovered) = tokio::task::spawn_blocking(move || Wal::open(&wal_dir, wal_options))
            .await
            .map_err(|e| WalError::Failed(format!("recovery task failed: {e}")))??;
        let decode_err =
            |seq: u64, reason: String| DurableError::Decode { path: dir.to_owned(), seq, reason };
        let mut info = RecoveryInfo { truncated: recovered.truncated.clone(), ..Default::default() };
        if let Some(Checkpoint { seq, payload }) = &recovered.checkpoint {
            let snapshot = decode_snapshot(payload).map_err(|r| decode_err(*seq, r))?;
            info.checkpoint_revision = Some(snapshot.revision);
            engine.load(&snapshot)?;
        }
        for (seq, payload) in &recovered.records {
            if payload.first() == Some(&RECORD_COMMITTED) {
                let revision = decode_committed(payload).map_err(|r| decode_err(*seq, r))?;
                info.committed = info.committed.max(Some(revision));
                continue;
            }
            let record = decode_record(payload).map_err(|r| decode_err(*seq, r))?;
            engine.replay(&record)?;
        }
        info.replayed = recovered.records.len();
        info.revision = engine.revision();
        let wal = Arc::new(wal);
        let wake = Arc::new(Notify::new());
        let base_every = options.checkpoint_every;
        let every =
            Arc::new(AtomicU64::new(base_every.max(engine.status().keys as u64 * u64::from(base_every > 0))));
        let journal = Arc::new(WalJournal {
            wal: wal.clone(),
            since_checkpoint: AtomicU64::new(recovered.records.len() as u64),
            every: every.clone(),
            wake: wake.clone(),
            note: AtomicI64::new(0),
        });
        engine.set_journal(Some(journal.clone()));
        let checkpointer = (base_every > 0).then(|| {
            let (engine, wal, wake) = (engine.clone(), wal.clone(), wake.clone());
            tokio::spawn(async move {
                loop {
                    wake.notified().await;
                    if engine.is_closed() {
                        return;
                    }
                    // Not yet as many records as keys (the store grew since the last checkpoint): wait for
                    // that many more, so that checkpoints stay amortised.
                    let keys = engine.status().keys as u64;
                    if keys > every.load(Ordering::Relaxed) {
                        every.store(keys, Ordering::Relaxed);
                        continue;
                    }
                    match checkpoint(&engine, &wal).await {
                        Ok(keys) => every.store(base_every.max(keys), Ordering::Relaxed),
                        Err(e) => tracing::error!(error = %e, "checkpoint failed"),
                    }
                }
            })
        });
        info.duration = started.elapsed();
        tracing::info!(?info, "recovered durable store");
        let checkpointer = std::sync::Mutex::new(checkpointer);
        let durable = Durable {
            engine: engine.clone(),
            wal,
            journal,
            dir: dir.to_owned(),
            recovery: info,
            wake,
            checkpointer,
            checkpoint_on_close: options.checkpoint_on_close,
        };
        if durable.recovery.replayed as u64 >= options.checkpoint_every.max(1) && options.checkpoint_every > 0
        {
            durable.wake.notify_one();
        }
        Ok((engine, durable))
    }

    /// What recovery found.
    pub fn recovery(&self) -> &RecoveryInfo {
        &self.recovery
    }

    /// The log's counters (records, syncs, checkpoints).
    pub fn wal_stats(&self) -> crate::wal::WalStats {
        self.wal.stats()
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Returns once every change made so far is on disk: the barrier before acknowledging a write.
    pub async fn sync(&self) -> Result<(), DurableError> {
        Ok(self.wal.sync(self.wal.last_seq()).await?)
    }

    /// Writes a checkpoint now (and drops the log it covers).
    pub async fn checkpoint(&self) -> Result<(), DurableError> {
        // A cluster member checkpoints after its state was replaced or undone: a commit note taken before
        // may not describe the new state.
        self.journal.note.store(0, Ordering::Release);
        checkpoint(&self.engine, &self.wal).await.map(drop)
    }

    /// Writes what is pending, a last checkpoint if configured (so the next start replays nothing), and stops journaling.
    /// The engine is left open for the caller to close. Idempotent.
    pub async fn close(&self) -> Result<(), DurableError> {
        self.stop_checkpointer();
        self.journal.write_note()?;
        self.sync().await?;
        if self.checkpoint_on_close && !self.engine.is_closed() {
            checkpoint(&self.engine, &self.wal).await?;
        }
        self.engine.set_journal(None);
        Ok(())
    }
}

impl Durable {
    fn stop_checkpointer(&self) {
        let task = self.checkpointer.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(task) = task {
            task.abort();
        }
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        self.stop_checkpointer();
    }
}

/// Copies the engine and the log position under the engine's lock, then writes the copy as a checkpoint.
/// Returns the number of keys checkpointed.
async fn checkpoint(engine: &Engine, wal: &Arc<Wal>) -> Result<u64, DurableError> {
    let (snapshot, seq) = engine.snapshot_with(|| wal.last_seq())?;
    let keys = snapshot.kvs.len() as u64;
    let payload = tokio::task::spawn_blocking(move || encode_snapshot(&snapshot))
        .await
        .map_err(|e| WalError::Failed(format!("checkpoint task failed: {e}")))?;
    wal.checkpoint_at(seq, payload).await?;
    Ok(keys)
}

// ---- Encoding ----------------------------------------------------------------------------------------
//
// Little-endian, length-prefixed, versioned by a leading byte: compact and fast, and every read is
// bounds-checked so a damaged record is an error, never a panic.

const RECORD_COMMIT: u8 = 1;
const RECORD_LEASE_GRANT: u8 = 2;
const RECORD_LEASE_REVOKE: u8 = 3;
const RECORD_COMPACT: u8 = 4;
/// Not a change: [`Journal::committed`]'s note.
const RECORD_COMMITTED: u8 = 5;
const SNAPSHOT_V1: u8 = 1;

fn encode_record(record: &JournalRecord<'_>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    match record {
        JournalRecord::Commit { revision, events } => {
            buf.push(RECORD_COMMIT);
            put_i64(&mut buf, *revision);
            buf.extend_from_slice(&(events.len() as u32).to_le_bytes());
            for e in events.iter() {
                buf.push(match e.kind {
                    EventKind::Put => 0,
                    EventKind::Delete => 1,
                });
                put_kv(&mut buf, &e.kv);
            }
        }
        JournalRecord::LeaseGrant { id, ttl } => {
            buf.push(RECORD_LEASE_GRANT);
            put_i64(&mut buf, id.0);
            put_i64(&mut buf, *ttl);
        }
        JournalRecord::LeaseRevoke { id } => {
            buf.push(RECORD_LEASE_REVOKE);
            put_i64(&mut buf, id.0);
        }
        JournalRecord::Compact { revision } => {
            buf.push(RECORD_COMPACT);
            put_i64(&mut buf, *revision);
        }
    }
    buf
}

fn encode_committed(revision: Revision) -> Vec<u8> {
    let mut buf = Vec::with_capacity(9);
    buf.push(RECORD_COMMITTED);
    put_i64(&mut buf, revision);
    buf
}

fn decode_committed(data: &[u8]) -> Result<Revision, String> {
    let mut r = Reader::new(data);
    r.u8()?;
    let revision = r.i64()?;
    r.end()?;
    Ok(revision)
}

fn encode_snapshot(s: &Snapshot) -> Vec<u8> {
    let mut buf =
        Vec::with_capacity(64 + s.kvs.iter().map(|kv| kv.key.len() + kv.value.len() + 40).sum::<usize>());
    buf.push(SNAPSHOT_V1);
    put_i64(&mut buf, s.revision);
    put_i64(&mut buf, s.compact_revision);
    put_i64(&mut buf, s.kvs.len() as i64);
    for kv in &s.kvs {
        put_kv(&mut buf, kv);
    }
    put_i64(&mut buf, s.leases.len() as i64);
    for l in &s.leases {
        put_i64(&mut buf, l.id.0);
        put_i64(&mut buf, l.ttl);
    }
    buf
}

fn decode_record(data: &[u8]) -> Result<JournalRecord<'static>, String> {
    let mut r = Reader::new(data);
    let record = match r.u8()? {
        RECORD_COMMIT => {
            let revision = r.i64()?;
            let n = r.u32()?;
            if n > data.len() {
                return Err(format!("bad event count {n}"));
            }
            let mut events = Vec::with_capacity(n);
            for _ in 0..n {
                let kind = match r.u8()? {
                    0 => EventKind::Put,
                    1 => EventKind::Delete,
                    k => return Err(format!("bad event kind {k}")),
                };
                events.push(Event { kind, kv: r.kv()?, prev_kv: None });
            }
            JournalRecord::Commit { revision, events: Cow::Owned(events) }
        }
        RECORD_LEASE_GRANT => JournalRecord::LeaseGrant { id: LeaseId(r.i64()?), ttl: r.i64()? },
        RECORD_LEASE_REVOKE => JournalRecord::LeaseRevoke { id: LeaseId(r.i64()?) },
        RECORD_COMPACT => JournalRecord::Compact { revision: r.i64()? },
        tag => return Err(format!("unknown record type {tag}")),
    };
    r.end()?;
    Ok(record)
}

fn decode_snapshot(data: &[u8]) -> Result<Snapshot, String> {
    let mut r = Reader::new(data);
    match r.u8()? {
        SNAPSHOT_V1 => {}
        v => return Err(format!("unknown checkpoint version {v}")),
    }
    let revision = r.i64()?;
    let compact_revision = r.i64()?;
    let n = r.count(8)?;
    let mut kvs = Vec::with_capacity(n);
    for _ in 0..n {
        kvs.push(r.kv()?);
    }
    let n = r.count(8)?;
    let mut leases = Vec::with_capacity(n);
    for _ in 0..n {
        leases.push(LeaseSnapshot { id: LeaseId(r.i64()?), ttl: r.i64()?, remaining: Duration::ZERO });
    }
    r.end()?;
    Ok(Snapshot { revision, compact_revision, kvs, leases })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// Records and snapshots round-trip; every truncation or trailing garbage is an error, not a panic.
    #[test]
    fn codec_round_trip_and_damage() {
        let kv = |k: &str, lease| KeyValue {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::from_static(b"\x00\xffvalue"),
            create_revision: 3,
            mod_revision: 7,
            version: 2,
            lease,
        };
        let records = [
            JournalRecord::Commit {
                revision: 7,
                events: Cow::Owned(vec![
                    Event { kind: EventKind::Put, kv: kv("a", Some(LeaseId(9))), prev_kv: None },
                    Event { kind: EventKind::Delete, kv: kv("b", None), prev_kv: None },
                ]),
            },
            JournalRecord::LeaseGrant { id: LeaseId(9), ttl: 30 },
            JournalRecord::LeaseRevoke { id: LeaseId(9) },
            JournalRecord::Compact { revision: 5 },
        ];
        for rec in &records {
            let bytes = encode_record(rec);
            assert_eq!(&decode_record(&bytes).unwrap(), rec);
            for cut in 0..bytes.len() {
                assert!(decode_record(&bytes[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode_record(&longer).is_err());
        }
        let snap = Snapshot {
            revision: 7,
            compact_revision: 2,
            kvs: vec![kv("a", Some(LeaseId(9))), kv("b", None)],
            leases: vec![LeaseSnapshot { id: LeaseId(9), ttl: 30, remaining: Duration::ZERO }],
        };
        let bytes = encode_snapshot(&snap);
        assert_eq!(decode_snapshot(&bytes).unwrap(), snap);
        for cut in 0..bytes.len() {
            assert!(decode_snapshot(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_record(&[99]).is_err());
        assert!(decode_snapshot(&[2]).is_err());
    }
}

#[cfg(test)]
mod cluster_tests {
    use super::*;
    use crate::PutRequest;

    /// A cluster member's log notes what was committed: after a restart, the tail after the note can be
    /// held again and undone from the previous values replay rebuilt, back to the exact committed state.
    #[tokio::test]
    async fn the_uncommitted_tail_of_a_restart_can_be_undone() {
        let dir = std::env::temp_dir().join(format!("antietcd-durable-undo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let options = DurableOptions::default().with_checkpoint_on_close(false);
        let (engine, durable) = Durable::open(&dir, Config::default(), options.clone()).await.unwrap();
        engine.set_hold(true);
        engine.put(PutRequest::new("a", "1")).unwrap();
        engine.put(PutRequest::new("b", "1")).unwrap();
        let seq = durable.wal.last_seq();
        engine.release(2);
        assert_eq!(durable.wal.last_seq(), seq, "the note waits for the next change (no sync of its own)");
        engine.put(PutRequest::new("a", "2")).unwrap();
        assert_eq!(durable.wal.last_seq(), seq + 2, "the note, then the change");
        engine
            .delete_range(&crate::DeleteRequest { range: crate::KeyRange::key("b"), prev_kv: false })
            .unwrap();
        engine.put(PutRequest::new("c", "3")).unwrap();
        durable.close().await.unwrap();
        engine.close();

        let (engine, durable) = Durable::open(&dir, Config::default(), options).await.unwrap();
        assert_eq!(durable.recovery().committed, Some(2));
        assert_eq!(decode_committed(&encode_committed(2)), Ok(2));
        assert!(decode_committed(&encode_committed(2)[..5]).is_err());
        assert_eq!(engine.revision(), 5);
        assert!(!engine.hold_after(6), "nothing after the newest revision");
        assert!(engine.hold_after(2));
        assert_eq!(engine.visible_revision(), 2);
        assert!(engine.rollback_held().unwrap());
        assert_eq!(engine.revision(), 2);
        let value = |k: &str| engine.get(k.as_bytes()).unwrap().1.map(|kv| kv.value);
        assert_eq!(value("a").as_deref(), Some(&b"1"[..]));
        assert_eq!(value("b").as_deref(), Some(&b"1"[..]));
        assert_eq!(value("c"), None);
        durable.close().await.unwrap();
        engine.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Without a note after the last checkpoint nothing is known committed, and a note older than the
    /// checkpoint cannot be honoured: the checkpoint holds the tail.
    #[tokio::test]
    async fn no_note_after_a_checkpoint_means_nothing_to_hold() {
        let dir = std::env::temp_dir().join(format!("antietcd-durable-nonote-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let options = DurableOptions::default().with_checkpoint_on_close(false);
        let (engine, durable) = Durable::open(&dir, Config::default(), options.clone()).await.unwrap();
        engine.set_hold(true);
        engine.put(PutRequest::new("a", "1")).unwrap();
        engine.release(1);
        engine.put(PutRequest::new("a", "2")).unwrap();
        durable.checkpoint().await.unwrap();
        durable.close().await.unwrap();
        engine.close();
        let (engine, durable) = Durable::open(&dir, Config::default(), options).await.unwrap();
        assert_eq!(durable.recovery().committed, None);
        assert!(!engine.hold_after(1), "the checkpoint at revision 2 holds what came after 1");
        durable.close().await.unwrap();
        engine.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
