//! Persistence in antietcd's file format, and the durability barrier.
//!
//! The file is gzip of stable-stringified JSON (object keys sorted by UTF-16 code units, no whitespace):
//! `{"compact_revision":C,"mod_revision":R,"state":TREE,"term":T}`, where `TREE` is antietcd's key tree:
//! keys split on `/`, each part a child name (`/a/b` is `children[""].children["a"].children["b"]`), a key's
//! node holding `value`, `create_revision`, `mod_revision` and `version`. As in antietcd, keys attached to
//! a lease are not persisted (nor are leases), and a [`PersistFilter`] may rewrite or drop values.
//!
//! Our keys are raw bytes and antietcd's are normalised strings. Splitting on `/` and joining back is exact
//! for every string, so every UTF-8 key round-trips through the tree (`/a//b`, `a/` and `a` stay distinct
//! here, though antietcd, which normalises on lookup, would merge them). Keys or values that are not valid
//! UTF-8 cannot be JSON strings: they are written to an extra top-level `x_binary` list (base64), which
//! our loader reads and antietcd ignores. A value at antietcd's root node (the key `""`, which we do not
//! allow) is skipped on load.
//!
//! Writes go to `<file>.tmp`, are fsynced, renamed over the file, and the directory is fsynced.
//! [`Persister::sync`] is the durability barrier behind write acknowledgements: a group commit, where a
//! caller whose revision is already covered by a finished or running persist joins it instead of writing
//! again. A failed write is remembered: every later write is refused with the error.

use crate::types::{KeyValue, LeaseId, Revision, Snapshot};
use crate::Engine;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A function applied to every key before it is persisted: returns the value to write (the same, or a
/// rewritten one), or `None` to leave the key out of the file. antietcd's `persist_filter`.
pub type PersistFilter = Arc<dyn Fn(&[u8], &[u8]) -> Option<Bytes> + Send + Sync>;

/// What went wrong reading or writing the data file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersistError {
    /// An I/O error on the file (or its directory).
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not antietcd's gzip-JSON format.
    #[error("{path} is not an antietcd data file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An earlier write failed; writes are refused until restart.
    #[error("Error persisting data to disk: {0}; writes are refused")]
    Failed(String),
    /// The engine is closed.
    #[error("the engine is closed")]
    Closed,
}

/// The content of a data file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileState {
    /// The store revision.
    pub revision: Revision,
    /// The compact revision.
    pub compact_revision: Revision,
    /// antietcd's raft term (0 on a single node); kept as read.
    pub term: i64,
    /// The keys.
    pub kvs: Vec<KeyValue>,
}

#[derive(Default)]
struct TreeNode<'a> {
    kv: Option<&'a KeyValue>,
    value: Option<Bytes>,
    children: BTreeMap<&'a str, TreeNode<'a>>,
}

/// Writes `s` as a JSON string (JSON.stringify's escaping).
fn json_str(out: &mut String, s: &str) {
    // serde_json's string escaping matches JSON.stringify for valid Unicode.
    out.push_str(&Value::String(s.to_owned()).to_string());
}

fn write_node(out: &mut String, node: &TreeNode<'_>, with_lease: bool) {
    // Keys in UTF-16 order: children, create_revision, lease, mod_revision, value, version.
    out.push('{');
    let mut first = true;
    let mut sep = |out: &mut String| {
        if !first {
            out.push(',');
        }
        first = false;
    };
    if !node.children.is_empty() {
        sep(out);
        out.push_str("\"children\":{");
        let mut names: Vec<&&str> = node.children.keys().collect();
        names.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
        for (i, name) in names.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_str(out, name);
            out.push(':');
            if let Some(child) = node.children.get(*name) {
                write_node(out, child, with_lease);
            }
        }
        out.push('}');
    }
    if let (Some(kv), Some(value)) = (node.kv, &node.value) {
        sep(out);
        out.push_str(&format!("\"create_revision\":{}", kv.create_revision));
        if with_lease {
            if let Some(l) = kv.lease {
                out.push_str(&format!(",\"lease\":\"{l}\""));
            }
        }
        out.push_str(&format!(",\"mod_revision\":{},\"value\":", kv.mod_revision));
        json_str(out, std::str::from_utf8(value).unwrap_or_default());
        out.push_str(&format!(",\"version\":{}", kv.version));
    }
    out.push('}');
}

/// The tree of `kvs` (antietcd's `state`), plus the entries that cannot be in it (not UTF-8).
fn encode_state(kvs: &[(&KeyValue, Bytes)], with_lease: bool) -> (String, Vec<Value>) {
    let mut root = TreeNode::default();
    let mut binary = Vec::new();
    let b64 = base64::engine::general_purpose::STANDARD;
    for (kv, value) in kvs {
        match (std::str::from_utf8(&kv.key), std::str::from_utf8(value)) {
            (Ok(key), Ok(_)) if !key.is_empty() => {
                let mut node = &mut root;
                for part in key.split('/') {
                    node = node.children.entry(part).or_default();
                }
                node.kv = Some(kv);
                node.value = Some(value.clone());
            }
            _ => {
                let mut m = Map::new();
                m.insert("create_revision".into(), kv.create_revision.into());
                m.insert("key".into(), b64.encode(&kv.key).into());
                if let (true, Some(l)) = (with_lease, kv.lease) {
                    m.insert("lease".into(), l.to_string().into());
                }
                m.insert("mod_revision".into(), kv.mod_revision.into());
                m.insert("value".into(), b64.encode(value).into());
                m.insert("version".into(), kv.version.into());
                binary.push(Value::Object(m));
            }
        }
    }
    let mut out = String::new();
    write_node(&mut out, &root, with_lease);
    (out, binary)
}

/// The persisted JSON of `snap` (before gzip): antietcd's `dump(true, filter)`.
pub fn encode_file(snap: &Snapshot, filter: Option<&PersistFilter>, term: i64) -> String {
    let kvs: Vec<(&KeyValue, Bytes)> = snap
        .kvs
        .iter()
        .filter(|kv| kv.lease.is_none())
        .filter_map(|kv| match filter {
            Some(f) => f(&kv.key, &kv.value).map(|v| (kv, v)),
            None => Some((kv, kv.value.clone())),
        })
        .collect();
    let (state, binary) = encode_state(&kvs, false);
    let mut out = format!(
        "{{\"compact_revision\":{},\"mod_revision\":{},\"state\":",
        // After a restore the engine's history starts past its revision; antietcd expects C <= R.
        snap.compact_revision.min(snap.revision),
        snap.revision
    );
    out.push_str(&state);
    out.push_str(&format!(",\"term\":{term}"));
    if !binary.is_empty() {
        out.push_str(",\"x_binary\":");
        out.push_str(&Value::Array(binary).to_string());
    }
    out.push('}');
    out
}

/// antietcd's network `/dump`: the tree with leased keys (and their `lease`), the leases, raw values, and
/// `term` (the term of the node's last cluster sync; 0 on a single node).
pub fn encode_dump(snap: &Snapshot, term: u64) -> String {
    let kvs: Vec<(&KeyValue, Bytes)> = snap.kvs.iter().map(|kv| (kv, kv.value.clone())).collect();
    let (state, binary) = encode_state(&kvs, true);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut leases = Map::new();
    for l in &snap.leases {
        let mut m = Map::new();
        m.insert("ttl".into(), l.ttl.into());
        m.insert("expires".into(), (now_ms + l.remaining.as_millis() as i64).into());
        leases.insert(l.id.to_string(), Value::Object(m));
    }
    let mut out = format!(
        "{{\"state\":{state},\"mod_revision\":{},\"compact_revision\":{},\"leases\":",
        snap.revision,
        snap.compact_revision.min(snap.revision)
    );
    out.push_str(&Value::Object(leases).to_string());
    out.push_str(&format!(",\"term\":{term}"));
    if !binary.is_empty() {
        out.push_str(",\"x_binary\":");
        out.push_str(&Value::Array(binary).to_string());
    }
    out.push('}');
    out
}

fn num(v: Option<&Value>) -> i64 {
    v.and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))).unwrap_or(0)
}

/// A lease id as antietcd writes it (16 hex digits); anything else means no lease.
fn lease_of(v: Option<&Value>) -> Option<LeaseId> {
    let s = v?.as_str()?;
    i64::from_str_radix(s, 16)
        .ok()
        .or_else(|| u64::from_str_radix(s, 16).ok().map(|n| n as i64))
        .filter(|n| *n != 0)
        .map(LeaseId)
}

fn decode_node(node: &Map<String, Value>, path: &mut Vec<String>, out: &mut Vec<KeyValue>) {
    if let Some(value) = node.get("value").filter(|v| !v.is_null()) {
        if !path.is_empty() {
            let value = match value {
                Value::String(s) => Bytes::from(s.clone().into_bytes()),
                // antietcd's embedded API can store any JSON value: keep its JSON text.
                other => Bytes::from(other.to_string().into_bytes()),
            };
            let mod_revision = num(node.get("mod_revision"));
            out.push(KeyValue {
                key: Bytes::from(path.join("/").into_bytes()),
                value,
                create_revision: num(node.get("create_revision")).max(0),
                mod_revision,
                version: num(node.get("version")).max(1),
                lease: lease_of(node.get("lease")),
            });
        }
    }
    if let Some(Value::Object(children)) = node.get("children") {
        for (name, child) in children {
            if let Value::Object(child) = child {
                path.push(name.clone());
                decode_node(child, path, out);
                path.pop();
            }
        }
    }
}

/// Parses a data file's JSON (after gunzip).
pub fn decode_file(json: &[u8]) -> Result<FileState, String> {
    let v: Value = serde_json::from_slice(json).map_err(|e| format!("bad JSON: {e}"))?;
    decode_value(&v)
}

/// [`decode_file`] on parsed JSON.
fn decode_value(v: &Value) -> Result<FileState, String> {
    let obj = v.as_object().ok_or("not a JSON object")?;
    let mut kvs = Vec::new();
    if let Some(Value::Object(state)) = obj.get("state") {
        decode_node(state, &mut Vec::new(), &mut kvs);
    }
    if let Some(Value::Array(binary)) = obj.get("x_binary") {
        let b64 = base64::engine::general_purpose::STANDARD;
        for item in binary {
            let field = |name: &str| item.get(name).and_then(Value::as_str).and_then(|s| b64.decode(s).ok());
            if let (Some(key), Some(value)) = (field("key"), field("value")) {
                kvs.push(KeyValue {
                    key: key.into(),
                    value: value.into(),
                    create_revision: num(item.get("create_revision")),
                    mod_revision: num(item.get("mod_revision")),
                    version: num(item.get("version")).max(1),
                    lease: lease_of(item.get("lease")),
                });
            }
        }
    }
    kvs.sort_by(|a, b| a.key.cmp(&b.key));
    kvs.dedup_by(|a, b| a.key == b.key);
    Ok(FileState {
        revision: num(obj.get("mod_revision")),
        compact_revision: num(obj.get("compact_revision")),
        term: num(obj.get("term")),
        kvs,
    })
}

/// Parses a network dump (antietcd's `dump()`, as sent in the `load` peer message or answered to `dump`)
/// into a snapshot and the sender's term. Lease expiry times are turned into time left from now.
pub(crate) fn decode_dump(dump: &Value) -> Result<(Snapshot, u64), String> {
    let obj = dump.as_object().ok_or("a dump should be a JSON object")?;
    let file = decode_value(dump)?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut leases = Vec::new();
    if let Some(Value::Object(map)) = obj.get("leases") {
        for (id, lease) in map {
            let id =
                lease_of(Some(&Value::String(id.clone()))).ok_or_else(|| format!("bad lease id {id:?}"))?;
            let ttl = num(lease.get("ttl")).max(1);
            let left = (num(lease.get("expires")) - now_ms).clamp(0, ttl * 1000);
            leases.push(crate::types::LeaseSnapshot {
                id,
                ttl,
                remaining: std::time::Duration::from_millis(left as u64),
            });
        }
    }
    leases.sort_by_key(|l| l.id);
    let term = obj.get("term").and_then(Value::as_u64).unwrap_or(0);
    Ok((
        Snapshot { revision: file.revision, compact_revision: file.compact_revision, kvs: file.kvs, leases },
        term,
    ))
}

/// Reads a data file: `Ok(None)` if it does not exist.
pub fn read_file(path: &Path) -> Result<Option<FileState>, PersistError> {
    let raw = match std::fs::read(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PersistError::Io { action: "reading", path: path.to_owned(), source }),
    };
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(&raw[..])
        .read_to_end(&mut json)
        .map_err(|e| PersistError::Format { path: path.to_owned(), reason: format!("bad gzip: {e}") })?;
    decode_file(&json).map(Some).map_err(|reason| PersistError::Format { path: path.to_owned(), reason })
}

/// Writes `json` gzipped to `path` atomically: `<path>.tmp`, fsync, rename, directory fsync.
pub fn write_file(path: &Path, json: &[u8]) -> Result<(), PersistError> {
    let io = |action: &'static str, p: &Path| {
        let p = p.to_owned();
        move |source| PersistError::Io { action, path: p, source }
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let file = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    let mut gz = flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::default());
    gz.write_all(json).map_err(io("writing", &tmp))?;
    let file = gz.finish().map_err(io("writing", &tmp))?.into_inner().map_err(|e| PersistError::Io {
        action: "writing",
        path: tmp.clone(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io("syncing", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io("renaming to", path))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("syncing directory", dir))?;
    Ok(())
}

/// Writes the engine's state to its data file, and tells writers when their revision is on disk.
pub struct Persister {
    engine: Engine,
    path: PathBuf,
    filter: Option<PersistFilter>,
    term: i64,
    /// The highest revision known to be on disk.
    durable: AtomicI64,
    /// Serialises persists; whoever holds it writes the current state for everyone waiting.
    writing: tokio::sync::Mutex<()>,
    /// The first write error, after which writes are refused.
    failed: Mutex<Option<String>>,
    /// Number of files written.
    pub(crate) writes: AtomicU64,
}

impl std::fmt::Debug for Persister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persister")
            .field("path", &self.path)
            .field("durable", &self.durable)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Persister {
    /// A persister of `engine` to `path`, whose state up to `durable` is already on disk.
    pub fn new(
        engine: Engine,
        path: PathBuf,
        filter: Option<PersistFilter>,
        term: i64,
        durable: Revision,
    ) -> Self {
        Persister {
            engine,
            path,
            filter,
            term,
            durable: AtomicI64::new(durable),
            writing: tokio::sync::Mutex::new(()),
            failed: Mutex::new(None),
            writes: AtomicU64::new(0),
        }
    }

    /// The data file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The highest revision on disk.
    pub fn durable(&self) -> Revision {
        self.durable.load(Ordering::Acquire)
    }

    /// `Err` once a write has failed.
    pub fn check(&self) -> Result<(), PersistError> {
        match &*self.failed.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(msg) => Err(PersistError::Failed(msg.clone())),
            None => Ok(()),
        }
    }

    /// Waits until `revision` is on disk, writing the current state if no finished or running write covers
    /// it (group commit: concurrent callers share one write).
    pub async fn sync(self: &Arc<Self>, revision: Revision) -> Result<(), PersistError> {
        loop {
            self.check()?;
            if self.durable() >= revision {
                return Ok(());
            }
            // The write runs in its own task so that a caller giving up (a client disconnecting) does not
            // abandon a write others are waiting for.
            let this = self.clone();
            let task = tokio::spawn(async move { this.persist_if_behind(revision).await });
            match task.await {
                Ok(r) => r?,
                Err(e) => return Err(PersistError::Failed(format!("persist task failed: {e}"))),
            }
        }
    }

    /// Writes the current state unless `revision` is already on disk.
    async fn persist_if_behind(self: Arc<Self>, revision: Revision) -> Result<(), PersistError> {
        let _guard = self.writing.lock().await;
        self.check()?;
        if self.durable() >= revision {
            return Ok(());
        }
        self.persist_locked().await
    }

    /// Writes the current state now (used on shutdown and by the interval timer).
    pub async fn persist(self: &Arc<Self>) -> Result<(), PersistError> {
        let _guard = self.writing.lock().await;
        self.check()?;
        self.persist_locked().await
    }

    async fn persist_locked(self: &Arc<Self>) -> Result<(), PersistError> {
        let snap = match self.engine.snapshot() {
            Ok(s) => s,
            Err(_) => return Err(PersistError::Closed),
        };
        let this = self.clone();
        let revision = snap.revision;
        let result = tokio::task::spawn_blocking(move || {
            let json = encode_file(&snap, this.filter.as_ref(), this.term);
            write_file(&this.path, json.as_bytes())
        })
        .await
        .unwrap_or_else(|e| Err(PersistError::Failed(format!("persist task failed: {e}"))));
        match result {
            Ok(()) => {
                self.durable.fetch_max(revision, Ordering::AcqRel);
                self.writes.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                tracing::error!("Error persisting data to disk: {e}");
                let msg = e.to_string();
                *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg.clone());
                Err(PersistError::Failed(msg))
            }
        }
    }
}
