//! A write-ahead log: checksummed records appended with group commit, snapshot checkpoints, and crash
//! recovery.
//!
//! # Files
//!
//! A log lives in one directory:
//! - `wal-<first seq>.log` segments of frames `magic u32 | seq u64 | len u32 | crc32 u32 | payload`
//!   (little-endian; the CRC covers `seq`, `len` and the payload). Sequence numbers start at 1 and grow by
//!   one per record, across segments.
//! - `snap-<seq>.bin` checkpoints `magic u32 | seq u64 | len u64 | crc32 u32 | payload`: the caller's state
//!   including every record up to `seq`. A checkpoint is written to a `.tmp` file, synced, renamed, and
//!   the directory synced; then the log starts a new segment and older segments and checkpoints go.
//!
//! # Durability and group commit
//!
//! [`Wal::append`] only queues a record (it is cheap and keeps the caller's order); one writer thread
//! writes everything queued meanwhile with one `write` and one `fdatasync`, then publishes the highest
//! durable sequence number. [`Wal::sync`] waits for it. So one sync covers every write that arrived
//! while the previous one was in progress, and the cost of a write does not depend on the size of the
//! data. If a write or sync fails, the log refuses everything from then on: nothing is acknowledged that
//! is not on disk.
//!
//! # Recovery
//!
//! [`Wal::open`] loads the newest checkpoint and every later record. A crash in the middle of an append
//! leaves a torn tail: an incomplete or mismatching frame at the end of the last segment, with no valid
//! frame after it. It is cut off (the file is truncated there) and reported in [`Recovered::truncated`].
//! Anything else that does not check out (a bad frame followed by good ones, a bad frame in an earlier
//! segment, a gap in sequence numbers, a damaged checkpoint) stops the open with
//! [`WalError::Corrupt`], naming the file and offset: never a silent partial load.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use tokio::sync::{oneshot, watch};

const FRAME_MAGIC: u32 = 0x5657_4b31; // "1KWV" little-endian on disk: b"1KWV"
const SNAP_MAGIC: u32 = 0x5653_4e31;
const FRAME_HEADER: usize = 4 + 8 + 4 + 4;
const SNAP_HEADER: usize = 4 + 8 + 8 + 4;
/// The largest record accepted (a frame claiming more is damage, not data).
pub const MAX_RECORD_BYTES: usize = 256 << 20;

/// Where a [`FaultHook`] is consulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultPoint {
    /// Before writing frames to a segment.
    Write,
    /// Before syncing a segment.
    Sync,
    /// Before writing a checkpoint.
    Checkpoint,
}

/// A test hook that can make a disk operation fail (simulating a full or failing disk).
pub type FaultHook = Arc<dyn Fn(FaultPoint) -> io::Result<()> + Send + Sync>;

/// Tuning of a [`Wal`].
#[derive(Clone)]
#[non_exhaustive]
pub struct WalOptions {
    /// Start a new segment once the current one is this large.
    pub segment_bytes: u64,
    /// Consulted before each disk operation; an error is treated as that operation failing.
    pub fault_hook: Option<FaultHook>,
}

impl std::fmt::Debug for WalOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalOptions")
            .field("segment_bytes", &self.segment_bytes)
            .field("fault_hook", &self.fault_hook.is_some())
            .finish()
    }
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions { segment_bytes: 64 << 20, fault_hook: None }
    }
}

impl WalOptions {
    /// Sets [`WalOptions::segment_bytes`].
    pub fn with_segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes.max(1);
        self
    }

    /// Sets [`WalOptions::fault_hook`].
    pub fn with_fault_hook(mut self, hook: FaultHook) -> Self {
        self.fault_hook = Some(hook);
        self
    }
}

/// What can go wrong with a log.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// A file operation failed.
    #[error("{op} {path}: {message}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// The log does not check out: it was damaged, not merely cut short by a crash.
    #[error("corrupt write-ahead log {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where in the file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An earlier write or sync failed; the log refuses everything since (restart to recover).
    #[error("the write-ahead log failed earlier and refuses writes: {0}")]
    Failed(String),
    /// The log was closed.
    #[error("the write-ahead log is closed")]
    Closed,
    /// A record is larger than [`MAX_RECORD_BYTES`].
    #[error("record of {0} bytes is larger than the limit")]
    TooLarge(usize),
}

fn io_err(op: &'static str, path: &Path, e: io::Error) -> WalError {
    WalError::Io { op, path: path.to_owned(), message: e.to_string() }
}

/// A checkpoint as loaded by [`Wal::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last record the checkpoint includes.
    pub seq: u64,
    /// The caller's bytes.
    pub payload: Vec<u8>,
}

/// What [`Wal::open`] found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The newest checkpoint, if any.
    pub checkpoint: Option<Checkpoint>,
    /// Every record after the checkpoint, in order: `(seq, payload)`.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Where a torn tail was cut off: the segment and the offset it was truncated to.
    pub truncated: Option<(PathBuf, u64)>,
}

/// Counters, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Records appended.
    pub records: u64,
    /// `fdatasync` calls on segments: with group commit, far fewer than records under load.
    pub syncs: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
}

#[derive(Debug, Clone, Default)]
struct Durable {
    seq: u64,
    failed: Option<String>,
}

enum Cmd {
    Append(u64, Vec<u8>),
    Checkpoint(u64, Vec<u8>, oneshot::Sender<Result<(), WalError>>),
}

/// An open write-ahead log. See the [module docs](self).
#[derive(Debug)]
pub struct Wal {
    /// Sequence assignment and queueing happen together, so queue order is sequence order.
    queue: Mutex<Queue>,
    durable: watch::Receiver<Durable>,
    stats: Arc<Mutex<WalStats>>,
    writer: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Queue {
    next_seq: u64,
    tx: Option<mpsc::Sender<Cmd>>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cmd::Append(seq, p) => write!(f, "Append({seq}, {} bytes)", p.len()),
            Cmd::Checkpoint(seq, p, _) => write!(f, "Checkpoint({seq}, {} bytes)", p.len()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn segment_name(first_seq: u64) -> String {
    format!("wal-{first_seq:020}.log")
}

fn snapshot_name(seq: u64) -> String {
    format!("snap-{seq:020}.bin")
}

fn parse_name(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok()
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err("syncing directory", dir, e))
}

fn crc(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

fn encode_frame(buf: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    let seq_b = seq.to_le_bytes();
    let len_b = (payload.len() as u32).to_le_bytes();
    buf.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    buf.extend_from_slice(&seq_b);
    buf.extend_from_slice(&len_b);
    buf.extend_from_slice(&crc(&[&seq_b, &len_b, payload]).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// A frame at `data[at..]`: `Some((seq, payload range, end))` if it is whole and checks out.
fn decode_frame(data: &[u8], at: usize) -> Option<(u64, std::ops::Range<usize>, usize)> {
    let header = data.get(at..at + FRAME_HEADER)?;
    let word = |i: usize| header.get(i..i + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    if word(0)? != FRAME_MAGIC {
        return None;
    }
    let seq = u64::from_le_bytes(header.get(4..12)?.try_into().ok()?);
    let len = word(12)? as usize;
    let sum = word(16)?;
    if len > MAX_RECORD_BYTES {
        return None;
    }
    let start = at + FRAME_HEADER;
    let payload = data.get(start..start + len)?;
    (crc(&[&header[4..12], &header[12..16], payload]) == sum).then_some((
        seq,
        start..start + len,
        start + len,
    ))
}

fn read_file(path: &Path) -> Result<Vec<u8>, WalError> {
    let mut data = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut data)).map_err(|e| io_err("reading", path, e))?;
    Ok(data)
}

fn read_checkpoint(path: &Path) -> Result<Checkpoint, WalError> {
    let data = read_file(path)?;
    let corrupt =
        |reason: &str| WalError::Corrupt { path: path.to_owned(), offset: 0, reason: reason.to_owned() };
    let header = data.get(..SNAP_HEADER).ok_or_else(|| corrupt("checkpoint shorter than its header"))?;
    let magic = u32::from_le_bytes(header[0..4].try_into().map_err(|_| corrupt("header"))?);
    let seq_b = &header[4..12];
    let len_b = &header[12..20];
    let sum = u32::from_le_bytes(header[20..24].try_into().map_err(|_| corrupt("header"))?);
    if magic != SNAP_MAGIC {
        return Err(corrupt("not a checkpoint (bad magic)"));
    }
    let len = u64::from_le_bytes(len_b.try_into().map_err(|_| corrupt("header"))?);
    let payload =
        data.get(SNAP_HEADER..).filter(|p| p.len() as u64 == len).ok_or_else(|| corrupt("wrong length"))?;
    if crc(&[seq_b, len_b, payload]) != sum {
        return Err(corrupt("checksum mismatch"));
    }
    let seq = u64::from_le_bytes(seq_b.try_into().map_err(|_| corrupt("header"))?);
    Ok(Checkpoint { seq, payload: payload.to_vec() })
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`, recovering what it holds.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Recovered), WalError> {
        fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
        let mut segments = Vec::new();
        let mut snapshots = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| io_err("listing", dir, e))? {
            let entry = entry.map_err(|e| io_err("listing", dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // A checkpoint that never got renamed: never part of the log.
                let _ = fs::remove_file(entry.path());
            } else if let Some(seq) = parse_name(&name, "wal-", ".log") {
                segments.push((seq, entry.path()));
            } else if let Some(seq) = parse_name(&name, "snap-", ".bin") {
                snapshots.push((seq, entry.path()));
            }
        }
        segments.sort();
        snapshots.sort();
        let mut recovered = Recovered::default();
        if let Some((_, path)) = snapshots.last() {
            recovered.checkpoint = Some(read_checkpoint(path)?);
        }
        let base = recovered.checkpoint.as_ref().map_or(0, |c| c.seq);
        let mut last_seq = base;
        let count = segments.len();
        for (i, (first, path)) in segments.iter().enumerate() {
            let data = read_file(path)?;
            let is_last = i + 1 == count;
            let mut at = 0;
            while at < data.len() {
                match decode_frame(&data, at) {
                    Some((seq, payload, end)) => {
                        let corrupt = |reason: String| WalError::Corrupt {
                            path: path.clone(),
                            offset: at as u64,
                            reason,
                        };
                        if at == 0 && seq != *first {
                            return Err(corrupt(format!("segment named {first} starts at record {seq}")));
                        }
                        if seq > base {
                            if seq != last_seq + 1 {
                                return Err(corrupt(format!("record {seq} follows record {last_seq}")));
                            }
                            recovered.records.push((seq, data[payload].to_vec()));
                            last_seq = seq;
                        }
                        at = end;
                    }
                    None => {
                        // Torn tail or damage? A torn tail is at the end of the last segment, with nothing
                        // valid after it.
                        let later_frame = (at + 1..data.len()).any(|p| decode_frame(&data, p).is_some());
                        if !is_last || later_frame {
                            return Err(WalError::Corrupt {
                                path: path.clone(),
                                offset: at as u64,
                                reason: if later_frame {
                                    "a damaged record is followed by valid ones".to_owned()
                                } else {
                                    "a damaged record ends a segment that is not the last".to_owned()
                                },
                            });
                        }
                        let f = OpenOptions::new()
                            .write(true)
                            .open(path)
                            .map_err(|e| io_err("opening", path, e))?;
                        f.set_len(at as u64)
                            .and_then(|()| f.sync_all())
                            .map_err(|e| io_err("truncating", path, e))?;
                        tracing::warn!(file = %path.display(), offset = at, "cut off a torn write at the end of the log");
                        recovered.truncated = Some((path.clone(), at as u64));
                        break;
                    }
                }
            }
        }
        if last_seq == base && !segments.is_empty() {
            // Every segment predates the checkpoint (a crash between checkpoint and clean-up).
            if let Some((first, path)) = segments.last() {
                if *first > base + 1 {
                    return Err(WalError::Corrupt {
                        path: path.clone(),
                        offset: 0,
                        reason: format!("records {} to {} are missing", base + 1, first - 1),
                    });
                }
            }
        }
        // Append to the last segment, or start one.
        let (seg_path, seg_size) = match segments.last() {
            Some((_, path)) => {
                let size = fs::metadata(path).map_err(|e| io_err("reading", path, e))?.len();
                (path.clone(), size)
            }
            None => (dir.join(segment_name(last_seq + 1)), 0),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&seg_path)
            .map_err(|e| io_err("opening", &seg_path, e))?;
        if seg_size == 0 {
            sync_dir(dir)?;
        }
        let (durable_tx, durable_rx) = watch::channel(Durable { seq: last_seq, failed: None });
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Mutex::new(WalStats::default()));
        let writer = Writer {
            dir: dir.to_owned(),
            file,
            path: seg_path,
            size: seg_size,
            options,
            durable: durable_tx,
            stats: stats.clone(),
            failed: None,
            last_seq,
        };
        let writer = std::thread::Builder::new()
            .name("antietcd-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| io_err("starting the writer thread for", dir, e))?;
        let wal = Wal {
            queue: Mutex::new(Queue { next_seq: last_seq + 1, tx: Some(tx) }),
            durable: durable_rx,
            stats,
            writer: Some(writer),
        };
        Ok((wal, recovered))
    }

    /// Queues a record; returns its sequence number. Records are written in the order of the calls.
    pub fn append(&self, payload: Vec<u8>) -> Result<u64, WalError> {
        if payload.len() > MAX_RECORD_BYTES {
            return Err(WalError::TooLarge(payload.len()));
        }
        if let Some(failed) = &self.durable.borrow().failed {
            return Err(WalError::Failed(failed.clone()));
        }
        let mut q = lock(&self.queue);
        let seq = q.next_seq;
        let tx = q.tx.as_ref().ok_or(WalError::Closed)?;
        tx.send(Cmd::Append(seq, payload)).map_err(|_| WalError::Closed)?;
        q.next_seq += 1;
        Ok(seq)
    }

    /// The sequence number of the last record queued (0 if none).
    pub fn last_seq(&self) -> u64 {
        lock(&self.queue).next_seq - 1
    }

    /// Waits until record `seq` (and every one before it) is on disk.
    pub async fn sync(&self, seq: u64) -> Result<(), WalError> {
        let mut durable = self.durable.clone();
        let state = durable
            .wait_for(|d| d.seq >= seq || d.failed.is_some())
            .await
            .map_err(|_| WalError::Closed)?
            .clone();
        match state.failed {
            Some(_) if state.seq < seq => Err(WalError::Failed(state.failed.unwrap_or_default())),
            _ => Ok(()),
        }
    }

    /// The highest record on disk.
    pub fn durable_seq(&self) -> u64 {
        self.durable.borrow().seq
    }

    /// Writes a checkpoint of the caller's state including every record queued so far. Call it where no
    /// record can be queued concurrently (e.g. under the lock that orders appends), or use
    /// [`Wal::checkpoint_at`]. Returns once the checkpoint is on disk.
    pub fn checkpoint(&self, payload: Vec<u8>) -> impl std::future::Future<Output = Result<(), WalError>> {
        let seq = self.last_seq();
        self.checkpoint_at(seq, payload)
    }

    /// Writes a checkpoint of the caller's state including exactly the records up to `seq` (read with
    /// [`Wal::last_seq`] at the moment the state was copied; records queued since stay in the log). Older
    /// segments and checkpoints are then removed. Returns once the checkpoint is on disk.
    pub fn checkpoint_at(
        &self,
        seq: u64,
        payload: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(), WalError>> {
        let (done_tx, done_rx) = oneshot::channel();
        let queued = {
            let q = lock(&self.queue);
            match q.tx.as_ref() {
                Some(_) if seq >= q.next_seq => Err(WalError::Failed(format!(
                    "checkpoint at record {seq}, but only {} records were written",
                    q.next_seq - 1
                ))),
                Some(tx) => tx.send(Cmd::Checkpoint(seq, payload, done_tx)).map_err(|_| WalError::Closed),
                None => Err(WalError::Closed),
            }
        };
        async move {
            queued?;
            done_rx.await.map_err(|_| WalError::Closed)?
        }
    }

    /// Counters.
    pub fn stats(&self) -> WalStats {
        *lock(&self.stats)
    }

    /// Writes what is queued, then stops the writer. Dropping the log does the same.
    pub fn close(mut self) -> Result<(), WalError> {
        self.stop();
        match &self.durable.borrow().failed {
            Some(f) => Err(WalError::Failed(f.clone())),
            None => Ok(()),
        }
    }

    fn stop(&mut self) {
        lock(&self.queue).tx = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    size: u64,
    options: WalOptions,
    durable: watch::Sender<Durable>,
    stats: Arc<Mutex<WalStats>>,
    failed: Option<String>,
    last_seq: u64,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let mut buf = Vec::with_capacity(1 << 16);
        while let Ok(first) = rx.recv() {
            // Everything queued meanwhile goes into this one write and sync.
            let mut cmds = vec![first];
            cmds.extend(rx.try_iter());
            let mut appended = 0u64;
            for cmd in cmds {
                match cmd {
                    Cmd::Append(seq, payload) => {
                        if self.failed.is_none() {
                            if self.size + buf.len() as u64 >= self.options.segment_bytes {
                                // The segment is full: what it has is written and synced before moving on.
                                self.guard(|w| w.flush(&mut buf));
                                self.guard(|w| w.rotate(seq));
                            }
                            encode_frame(&mut buf, seq, &payload);
                            self.last_seq = seq;
                            appended += 1;
                        }
                    }
                    Cmd::Checkpoint(seq, payload, done) => {
                        self.guard(|w| w.flush(&mut buf));
                        let result = match &self.failed {
                            Some(f) => Err(WalError::Failed(f.clone())),
                            None => self.write_checkpoint(seq, &payload),
                        };
                        if let Err(e) = &result {
                            self.fail(e.to_string());
                        }
                        let _ = done.send(result);
                    }
                }
            }
            // Counted before the flush announces them durable: a writer that saw its write acknowledged
            // sees it in the counters too.
            lock(&self.stats).records += appended;
            self.guard(|w| w.flush(&mut buf));
            buf.clear();
        }
    }

    /// Runs a disk step unless the log has failed; a failure marks it failed.
    fn guard(&mut self, step: impl FnOnce(&mut Self) -> Result<(), WalError>) {
        if self.failed.is_some() {
            return;
        }
        if let Err(e) = step(self) {
            self.fail(e.to_string());
        }
    }

    fn fail(&mut self, message: String) {
        tracing::error!(error = %message, "write-ahead log failed; refusing writes");
        self.failed = Some(message.clone());
        self.durable.send_modify(|d| d.failed = Some(message));
    }

    fn fault(&self, point: FaultPoint) -> io::Result<()> {
        match &self.options.fault_hook {
            Some(hook) => hook(point),
            None => Ok(()),
        }
    }

    fn flush(&mut self, buf: &mut Vec<u8>) -> Result<(), WalError> {
        if buf.is_empty() {
            return Ok(());
        }
        self.fault(FaultPoint::Write)
            .and_then(|()| self.file.write_all(buf))
            .map_err(|e| io_err("writing", &self.path, e))?;
        self.size += buf.len() as u64;
        buf.clear();
        self.fault(FaultPoint::Sync)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io_err("syncing", &self.path, e))?;
        lock(&self.stats).syncs += 1;
        let seq = self.last_seq;
        self.durable.send_modify(|d| d.seq = d.seq.max(seq));
        Ok(())
    }

    /// Starts a new segment whose first record is `first_seq`.
    fn rotate(&mut self, first_seq: u64) -> Result<(), WalError> {
        let path = self.dir.join(segment_name(first_seq));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err("creating", &path, e))?;
        sync_dir(&self.dir)?;
        self.file = file;
        self.path = path;
        self.size = 0;
        Ok(())
    }

    fn write_checkpoint(&mut self, seq: u64, payload: &[u8]) -> Result<(), WalError> {
        let name = snapshot_name(seq);
        let final_path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let seq_b = seq.to_le_bytes();
        let len_b = (payload.len() as u64).to_le_bytes();
        let mut header = Vec::with_capacity(SNAP_HEADER);
        header.extend_from_slice(&SNAP_MAGIC.to_le_bytes());
        header.extend_from_slice(&seq_b);
        header.extend_from_slice(&len_b);
        header.extend_from_slice(&crc(&[&seq_b, &len_b, payload]).to_le_bytes());
        self.fault(FaultPoint::Checkpoint)
            .and_then(|()| {
                let mut f = File::create(&tmp)?;
                f.write_all(&header)?;
                f.write_all(payload)?;
                f.sync_all()
            })
            .map_err(|e| io_err("writing checkpoint", &tmp, e))?;
        fs::rename(&tmp, &final_path).map_err(|e| io_err("renaming", &tmp, e))?;
        sync_dir(&self.dir)?;
        // Later records go to a fresh segment, so that every older one is either wholly covered by the
        // checkpoint or still needed.
        if self.size > 0 {
            self.rotate(self.last_seq + 1)?;
        }
        let mut segments: Vec<(u64, PathBuf)> = Vec::new();
        let mut stale = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| io_err("listing", &self.dir, e))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(first) = parse_name(&name, "wal-", ".log") {
                segments.push((first, entry.path()));
            } else if parse_name(&name, "snap-", ".bin").is_some_and(|s| s < seq) {
                stale.push(entry.path());
            }
        }
        segments.sort();
        // A segment is covered when the next one starts at or before the first record after the checkpoint.
        for pair in segments.windows(2) {
            if pair[1].0 <= seq + 1 && pair[0].1 != self.path {
                stale.push(pair[0].1.clone());
            }
        }
        for path in stale {
            let _ = fs::remove_file(path);
        }
        sync_dir(&self.dir)?;
        lock(&self.stats).checkpoints += 1;
        Ok(())
    }
}
