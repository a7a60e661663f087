#![allow(clippy::unwrap_used)]
//! Persistence: antietcd's gzip-JSON file both ways with the real Node antietcd 1.3.1, the durability
//! barrier (a write is on disk when acknowledged; concurrent writes share fsyncs), write failures (503 and
//! refused writes, the server still reading), the persist filter, persist_interval, and keys that antietcd
//! cannot represent.

mod common;

use antietcd::persist::read_file;
use antietcd::{KeyRange, Node, PutRequest, RangeRequest, ServerConfig};
use bytes::Bytes;
use common::*;
use serde_json::json;
use std::sync::Arc;

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("antietcd-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn data_config(path: &std::path::Path) -> ServerConfig {
    ServerConfig { data: Some(path.to_owned()), ..Default::default() }
}

fn value_of(node: &Node, key: &[u8]) -> Option<Bytes> {
    node.engine().get(key).unwrap().1.map(|kv| kv.value)
}

/// A file written by Node antietcd loads in ours: keys, values, revisions.
#[tokio::test]
async fn node_file_loads_in_ours() {
    let dir = tmpdir("node-to-ours");
    let file = dir.join("data.gz");
    let nodejs = NodeServer::start(&["--data", file.to_str().unwrap()]).await;
    call(&nodejs.url, "/v3/kv/put", json!({"key": b64("/cfg/a"), "value": b64("alpha")})).await;
    call(&nodejs.url, "/v3/kv/put", json!({"key": b64("/cfg/b/c"), "value": b64("ünïcode \"quoted\"\n")}))
        .await;
    call(&nodejs.url, "/v3/kv/put", json!({"key": b64("plain"), "value": b64("")})).await;
    call(&nodejs.url, "/v3/kv/put", json!({"key": b64("/cfg/a"), "value": b64("alpha2")})).await;
    nodejs.stop();
    assert!(file.exists(), "Node wrote its data file");
    let node = Node::start(ServerConfig { listen: false, ..data_config(&file) }).await.unwrap();
    assert_eq!(value_of(&node, b"/cfg/a").unwrap(), "alpha2");
    assert_eq!(value_of(&node, b"/cfg/b/c").unwrap(), "ünïcode \"quoted\"\n");
    assert_eq!(value_of(&node, b"plain").unwrap(), "");
    let kv = node.engine().get(b"/cfg/a").unwrap().1.unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (1, 4, 2));
    assert_eq!(node.engine().revision(), 4);
    node.shutdown().await.unwrap();
}

/// A file written by ours loads in Node antietcd (leased keys are not persisted, as in antietcd).
#[tokio::test]
async fn our_file_loads_in_node() {
    let dir = tmpdir("ours-to-node");
    let file = dir.join("data.gz");
    let (node, url) = ours(data_config(&file)).await;
    call(&url, "/v3/kv/put", json!({"key": b64("/cfg/a"), "value": b64("alpha")})).await;
    call(&url, "/v3/kv/put", json!({"key": b64("/cfg/b/c"), "value": b64("ünïcode \"q\"")})).await;
    call(&url, "/v3/kv/put", json!({"key": b64("/cfg/a"), "value": b64("alpha2")})).await;
    let g = call(&url, "/v3/lease/grant", json!({"TTL": 60})).await;
    call(&url, "/v3/kv/put", json!({"key": b64("/cfg/leased"), "value": b64("x"), "lease": g["ID"]})).await;
    node.shutdown().await.unwrap();
    let nodejs = NodeServer::start(&["--data", file.to_str().unwrap()]).await;
    let r = call(&nodejs.url, "/v3/kv/range", json!({"key": b64("/cfg/"), "range_end": b64("/cfg0")})).await;
    let mut got: Vec<(String, String)> =
        r["kvs"].as_array().unwrap().iter().map(|kv| (unb64(&kv["key"]), unb64(&kv["value"]))).collect();
    got.sort();
    assert_eq!(
        got,
        [("/cfg/a".to_owned(), "alpha2".to_owned()), ("/cfg/b/c".to_owned(), "ünïcode \"q\"".to_owned())]
    );
    let r = call(&nodejs.url, "/v3/kv/range", json!({"key": b64("/cfg/a")})).await;
    assert_eq!(r["kvs"][0]["mod_revision"], 3);
    assert_eq!(r["header"]["revision"], 4);
}

/// Every acknowledged write is already in the file; concurrent writes share fsyncs (group commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_are_on_disk() {
    let dir = tmpdir("durable");
    let file = dir.join("data.gz");
    let (node, url) = ours(data_config(&file)).await;
    call(&url, "/v3/kv/put", json!({"key": b64("/d/first"), "value": b64("1")})).await;
    let state = read_file(&file).unwrap().unwrap();
    assert!(state.kvs.iter().any(|kv| kv.key == "/d/first"), "acknowledged before it was on disk");
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                call(&url, "/v3/kv/put", json!({"key": b64(&format!("/d/{i}")), "value": b64("v")})).await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let state = read_file(&file).unwrap().unwrap();
    assert_eq!(state.kvs.len(), 41, "every acknowledged put is in the file");
    let metrics = client().get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    let writes: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("antietcd_persist_writes_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(writes < 41, "40 concurrent puts were coalesced into fewer writes ({writes})");
    node.shutdown().await.unwrap();
}

/// A failed write is a 503 with the error, later writes are refused, reads still work.
#[tokio::test]
async fn write_error_refuses_writes() {
    let dir = tmpdir("failing");
    let file = dir.join("data.gz");
    // The temporary file's name is taken by a directory: creating it fails, even for root.
    std::fs::create_dir_all(dir.join("data.gz.tmp")).unwrap();
    let (node, url) = ours(data_config(&file)).await;
    let (status, text) =
        post(&url, "/v3/kv/put", &json!({"key": b64("a"), "value": b64("1")}).to_string()).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("Error persisting data to disk"), "{text}");
    let (status, text) =
        post(&url, "/v3/kv/put", &json!({"key": b64("b"), "value": b64("1")}).to_string()).await;
    assert_eq!(status, 503);
    assert!(text.contains("refused"), "{text}");
    let (status, _) = post(&url, "/v3/kv/range", &json!({"key": b64("a")}).to_string()).await;
    assert_eq!(status, 200, "reads still work");
    let health = client().get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 503);
    assert!(node.shutdown().await.is_err(), "the final persist fails too, and says so");
}

/// The persist filter rewrites or drops values; non-UTF-8 keys and antietcd-ambiguous keys round-trip.
#[tokio::test]
async fn filter_and_unrepresentable_keys() {
    let dir = tmpdir("filter");
    let file = dir.join("data.gz");
    let filter: antietcd::PersistFilter = Arc::new(|key: &[u8], value: &[u8]| {
        if key.starts_with(b"/tmp/") {
            None
        } else if key == b"/secret" {
            Some(Bytes::from_static(b"***"))
        } else {
            Some(Bytes::copy_from_slice(value))
        }
    });
    let config = ServerConfig { listen: false, persist_filter: Some(filter), ..data_config(&file) };
    let node = Node::start(config).await.unwrap();
    let e = node.engine();
    for (k, v) in [
        (&b"/tmp/x"[..], &b"gone"[..]),
        (b"/secret", b"pw"),
        (b"/a//b", b"double slash"),
        (b"/a/b", b"single"),
        (b"a/", b"trailing"),
        (b"a", b"bare"),
        (b"\xff\xfe", b"binary key"),
        (b"/bin", b"\x00\x9f"),
    ] {
        e.put(PutRequest::new(Bytes::copy_from_slice(k), Bytes::copy_from_slice(v))).unwrap();
    }
    node.sync(e.revision()).await.unwrap();
    node.shutdown().await.unwrap();
    let node = Node::start(ServerConfig { listen: false, ..data_config(&file) }).await.unwrap();
    let all = node.engine().range(&RangeRequest::new(KeyRange::all())).unwrap();
    let got: Vec<(Vec<u8>, Vec<u8>)> =
        all.kvs.iter().map(|kv| (kv.key.to_vec(), kv.value.to_vec())).collect();
    let want: Vec<(Vec<u8>, Vec<u8>)> = [
        (&b"/a//b"[..], &b"double slash"[..]),
        (b"/a/b", b"single"),
        (b"/bin", b"\x00\x9f"),
        (b"/secret", b"***"),
        (b"a", b"bare"),
        (b"a/", b"trailing"),
        (b"\xff\xfe", b"binary key"),
    ]
    .iter()
    .map(|(k, v)| (k.to_vec(), v.to_vec()))
    .collect();
    assert_eq!(got, want);
    node.shutdown().await.unwrap();
}

/// With persist_interval, writes are acknowledged at once and reach the file within the interval.
#[tokio::test]
async fn persist_interval_writes_later() {
    let dir = tmpdir("interval");
    let file = dir.join("data.gz");
    let (node, url) = ours(ServerConfig { persist_interval: 50, ..data_config(&file) }).await;
    call(&url, "/v3/kv/put", json!({"key": b64("/i"), "value": b64("1")})).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Ok(Some(s)) = read_file(&file) {
            if s.kvs.iter().any(|kv| kv.key == "/i") {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "the interval persist never wrote /i");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    node.shutdown().await.unwrap();
}

/// A data file that is not antietcd's format stops the start with a clear error.
#[tokio::test]
async fn corrupt_file_is_an_error() {
    let dir = tmpdir("corrupt");
    let file = dir.join("data.gz");
    std::fs::write(&file, b"not gzip").unwrap();
    let err = Node::start(ServerConfig { listen: false, ..data_config(&file) }).await.unwrap_err();
    assert!(err.to_string().contains("not an antietcd data file"), "{err}");
}
