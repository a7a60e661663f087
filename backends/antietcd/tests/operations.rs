//! Operational behaviour of the server: the binary's graceful shutdown on SIGTERM, the connection limit,
//! websocket keepalive, and access logs.

#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use common::{antietcd_binary, free_port, ours};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

async fn wait_up(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http.get(format!("{base}/health")).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SIGTERM: the binary stops serving, writes a last checkpoint and exits 0; a restart has the data.
#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    let dir = std::env::temp_dir().join(format!("antietcd-sigterm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let http = reqwest::Client::new();
    let run = |port: u16| antietcd_binary(port, &["--data_dir", &dir.display().to_string()]);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = run(port);
    wait_up(&http, &base).await;
    let put = json!({"key": B64.encode("k"), "value": B64.encode("kept")});
    assert!(http.post(format!("{base}/v3/kv/put")).json(&put).send().await.unwrap().status().is_success());
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit:?}");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = run(port);
    wait_up(&http, &base).await;
    let got: serde_json::Value = http
        .post(format!("{base}/v3/kv/range"))
        .json(&json!({"key": B64.encode("k")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["kvs"][0]["value"], B64.encode("kept"));
    child.kill().unwrap();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `max_connections` reached, a new connection waits (in the backlog) until one closes.
#[tokio::test]
async fn connection_limit_queues_new_connections() {
    let (_node, url) = ours(antietcd::ServerConfig { max_connections: 1, ..Default::default() }).await;
    let status = json!({});
    let first = reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(60)).build().unwrap();
    assert!(first
        .post(format!("{url}/v3/maintenance/status"))
        .json(&status)
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    // `first` keeps its keep-alive connection open: the only one allowed.
    let second = reqwest::Client::new();
    let waiting = second.post(format!("{url}/v3/maintenance/status")).json(&status).send();
    tokio::pin!(waiting);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting).await.is_err(),
        "served past the limit"
    );
    drop(first); // closes its connection
    let r =
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("not served after a slot freed");
    assert!(r.unwrap().status().is_success());
}

/// Websocket keepalive: a client that answers pings stays connected; one that does not is closed after
/// two intervals.
#[tokio::test]
async fn websocket_keepalive_closes_silent_clients() {
    let (_node, url) =
        ours(antietcd::ServerConfig { ws_keepalive_interval: 100, ..Default::default() }).await;
    let ws_url = url.replace("http://", "ws://") + "/watch";
    // Answers pings (tungstenite replies while we read).
    let (mut alive, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let reader = tokio::spawn(async move {
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(600) {
            if let Ok(msg) = tokio::time::timeout(Duration::from_millis(50), alive.next()).await {
                match msg {
                    Some(Ok(Message::Ping(_))) | Some(Ok(Message::Text(_))) => {}
                    other => panic!("an answering client was dropped: {other:?}"),
                }
            }
        }
        alive.send(Message::Text(r#"{"progress_request":{}}"#.into())).await.unwrap();
        loop {
            match alive.next().await {
                Some(Ok(Message::Text(t))) => return t.to_string(),
                Some(Ok(_)) => continue,
                other => panic!("{other:?}"),
            }
        }
    });
    // Never reads, so never answers.
    let (mut silent, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match silent.next().await {
                Some(Ok(Message::Ping(_))) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "a silent client was kept");
    let reply = reader.await.unwrap();
    assert!(reply.contains("revision"), "{reply}");
}

/// `--logs access` writes one line per request with method, path and status.
#[tokio::test]
async fn access_log_lines() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_antietcd"))
        .args(["--port", &port.to_string(), "--ip", "127.0.0.1", "--logs", "access"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    wait_up(&http, &base).await;
    let put = json!({"key": B64.encode("logged"), "value": B64.encode("v")});
    http.post(format!("{base}/v3/kv/put")).json(&put).send().await.unwrap();
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let logs = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(logs.lines().any(|l| l.contains("POST /v3/kv/put 200")), "no access line in:\n{logs}");
}

/// With `--data_dir`, `/metrics` reports the write-ahead log: records written and the syncs that covered them.
#[tokio::test]
async fn wal_metrics() {
    let dir = std::env::temp_dir().join(format!("antietcd-walmetrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (node, url) =
        ours(antietcd::ServerConfig { data_dir: Some(dir.clone()), ..Default::default() }).await;
    let http = reqwest::Client::new();
    for i in 0..3 {
        let put = json!({"key": B64.encode(format!("k{i}")), "value": B64.encode("v")});
        assert!(http.post(format!("{url}/v3/kv/put")).json(&put).send().await.unwrap().status().is_success());
    }
    let text = http.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |name: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("antietcd_wal_records_total"), 3);
    let syncs = value("antietcd_wal_syncs_total");
    assert!((1..=3).contains(&syncs), "{syncs}");
    node.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
