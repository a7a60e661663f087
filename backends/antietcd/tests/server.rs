#![allow(clippy::unwrap_used)]
//! Our server over HTTP and websockets: the REST shapes, watches, the bad-input corpus (every malformed
//! request gets a 4xx with a message, every bad frame an error message, and the server keeps serving),
//! limits, `/health` and `/metrics`, and graceful shutdown.

mod common;

use antietcd::ServerConfig;
use common::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Puts, ranges, txn, deleterange and leases answer with antietcd's shapes.
#[tokio::test]
async fn rest_shapes() {
    let (node, url) = ours(ServerConfig::default()).await;
    let r = call(&url, "/v3/kv/put", json!({"key": b64("/a/x"), "value": b64("1")})).await;
    assert_eq!(r["header"]["revision"], 1);
    let r = call(&url, "/v3/kv/range", json!({"key": b64("/a/x")})).await;
    assert_eq!(r["kvs"][0]["value"], b64("1"));
    assert_eq!(r["kvs"][0]["mod_revision"], 1);
    let r = call(&url, "/v3/kv/range", json!({"key": b64("/none")})).await;
    assert_eq!(r["kvs"], json!([]), "kvs is always present");
    let g = call(&url, "/v3/lease/grant", json!({"TTL": 30})).await;
    let id = g["ID"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 16);
    assert_eq!(g["TTL"], 30);
    let g2 = call(&url, "/v3/lease/grant", json!({"TTL": "30"})).await;
    assert_eq!(g2["TTL"], "30", "TTL echoed as sent");
    let k = call(&url, "/v3/lease/keepalive", json!({"ID": id})).await;
    assert_eq!(k["result"]["TTL"], "30");
    assert_eq!(k["result"]["ID"], id.as_str());
    call(&url, "/v3/kv/put", json!({"key": b64("/a/l"), "value": b64("v"), "lease": id})).await;
    let r = call(&url, "/v3/kv/range", json!({"key": b64("/a/"), "range_end": b64("/a0")})).await;
    assert_eq!(r["kvs"].as_array().unwrap().len(), 2);
    assert_eq!(r["kvs"][0]["lease"], id.as_str());
    let t = call(
        &url,
        "/v3/kv/txn",
        json!({
            "compare": [{"key": b64("/a/x"), "target": "VALUE", "result": "EQUAL", "value": b64("1")}],
            "success": [{"request_put": {"key": b64("/a/y"), "value": b64("2")}},
                        {"requestRange": {"key": b64("/a/y")}},
                        {"request_delete_range": {"key": b64("/a/x")}}],
        }),
    )
    .await;
    assert_eq!(t["succeeded"], true);
    assert_eq!(t["responses"][0], json!({"response_put": {}}));
    assert_eq!(t["responses"][1]["response_range"]["kvs"][0]["value"], b64("2"));
    assert_eq!(t["responses"][2]["response_delete_range"]["deleted"], 1);
    // etcd's spellings: numeric enums and int64 as strings.
    let t = call(
        &url,
        "/v3/kv/txn",
        json!({"compare": [{"key": b64("/a/y"), "target": 2, "result": 2, "mod_revision": "1000"}], "failure": []}),
    )
    .await;
    assert_eq!(t["succeeded"], true);
    let rv = call(&url, "/v3/kv/lease/revoke", json!({"ID": id})).await;
    assert!(rv["header"]["revision"].as_i64().unwrap() > 0);
    let r = call(&url, "/v3/kv/range", json!({"key": b64("/a/l")})).await;
    assert_eq!(r["kvs"], json!([]), "the leased key went with the lease");
    let d = call(&url, "/v3/kv/deleterange", json!({"key": b64("/a/"), "range_end": b64("/a0")})).await;
    assert_eq!(d["deleted"], 1);
    let s = call(&url, "/v3/maintenance/status", json!({})).await;
    assert_eq!(s["version"], "antietcd 1.3.1");
    let (status, dump) = post(&url, "/dump", "").await;
    assert_eq!(status, 200);
    let dump: Value = serde_json::from_str(&dump).unwrap();
    assert!(dump["mod_revision"].as_i64().unwrap() > 0);
    node.shutdown().await.unwrap();
}

/// Every malformed request gets a 4xx with a text message, and the server keeps serving.
#[tokio::test]
async fn bad_input_corpus() {
    let config = ServerConfig { max_body_bytes: 4096, ..Default::default() };
    let (node, url) = ours(config).await;
    let corpus: &[(&str, &str, u16, &str)] = &[
        ("/v3/kv/put", "{", 400, "valid JSON"),
        ("/v3/kv/put", "[1,2]", 400, "JSON object"),
        ("/v3/kv/put", "null", 400, "JSON object"),
        ("/v3/kv/put", "42", 400, "JSON object"),
        ("/v3/kv/put", "{}", 400, "key is not provided"),
        ("/v3/kv/put", r#"{"key":5}"#, 400, "key should be a string"),
        ("/v3/kv/put", r#"{"key":{"a":1}}"#, 400, "key should be a string"),
        ("/v3/kv/put", r#"{"key":"%%%"}"#, 400, "base64"),
        ("/v3/kv/put", r#"{"key":"YQ==","value":[1]}"#, 400, "value should be a string"),
        ("/v3/kv/put", r#"{"key":"YQ==","value":"YQ==","lease":"zzz"}"#, 400, "bad lease"),
        ("/v3/kv/put", r#"{"key":"YQ==","value":"YQ==","lease":"00000000000000ab"}"#, 400, "unknown lease"),
        ("/v3/kv/put", r#"{"key":"YQ==","value":"YQ==","lease":true}"#, 400, "lease"),
        ("/v3/kv/range", r#"{"key":"YQ==","limit":"abc"}"#, 400, "limit"),
        ("/v3/kv/range", r#"{"key":"YQ==","limit":[]}"#, 400, "limit"),
        ("/v3/kv/range", r#"{"key":"YQ==","sort_order":"SIDEWAYS"}"#, 400, "sort_order"),
        ("/v3/kv/range", r#"{"key":"YQ==","revision":99}"#, 400, "future revision"),
        ("/v3/kv/range", r#"{"key":"YQ==","range_end":7}"#, 400, "range_end"),
        ("/v3/kv/deleterange", "{}", 400, "key is not provided"),
        ("/v3/kv/txn", r#"{"compare":{}}"#, 400, "compare should be an array"),
        ("/v3/kv/txn", r#"{"compare":[1]}"#, 400, "JSON object"),
        (
            "/v3/kv/txn",
            r#"{"compare":[{"key":"YQ==","target":"NOPE"}]}"#,
            501,
            "Unsupported comparison target",
        ),
        (
            "/v3/kv/txn",
            r#"{"compare":[{"key":"YQ==","target":"MOD","result":"ABOUT"}]}"#,
            501,
            "Unsupported comparison result",
        ),
        (
            "/v3/kv/txn",
            r#"{"compare":[{"key":"YQ==","target":"MOD","mod_revision":"x"}]}"#,
            400,
            "mod_revision",
        ),
        ("/v3/kv/txn", r#"{"success":[{"request_nothing":{}}]}"#, 400, "txn operation"),
        ("/v3/kv/txn", r#"{"success":[{"request_put":"x"}]}"#, 400, "request_put"),
        (
            "/v3/kv/txn",
            r#"{"success":[{"request_put":{"key":"YQ==","lease":"00000000000000ab"}}]}"#,
            400,
            "unknown lease",
        ),
        ("/v3/lease/grant", "{}", 400, "TTL"),
        ("/v3/lease/grant", r#"{"TTL":-5}"#, 400, "TTL"),
        ("/v3/lease/grant", r#"{"TTL":"soon"}"#, 400, "TTL"),
        ("/v3/lease/keepalive", r#"{"ID":"00000000000000ab"}"#, 400, "unknown lease"),
        ("/v3/lease/keepalive", "{}", 400, "unknown lease"),
        ("/v3/lease/revoke", r#"{"ID":"00000000000000ab"}"#, 400, "unknown lease"),
        ("/v3/kv/lease/revoke", r#"{"ID":[]}"#, 400, "ID"),
        ("/v3/kv/nothing", "{}", 404, "Supported APIs"),
        ("/v2/keys", "{}", 404, "Supported APIs"),
        ("/", "{}", 404, "Supported APIs"),
    ];
    for (path, body, code, needle) in corpus {
        let (status, text) = post(&url, path, body).await;
        assert_eq!(status, *code, "{path} {body} -> {status} {text}");
        assert!(text.contains(needle), "{path} {body} -> {text:?} lacks {needle:?}");
        assert!(text.ends_with('\n'), "text bodies end with a newline");
    }
    let c = client();
    // Wrong method, wrong content type, oversized body.
    let r = c.get(format!("{url}/v3/kv/range")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.text().await.unwrap(), "Please use POST method\n");
    let r = c
        .post(format!("{url}/v3/kv/range"))
        .header("content-type", "text/xml")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("content-type"));
    let r = c
        .post(format!("{url}/v3/kv/range"))
        .header("content-type", "application/json; charset=utf-8")
        .body(format!(r#"{{"key":"{}"}}"#, b64("a")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "parameters on application/json are accepted");
    let big = format!(r#"{{"key":"YQ==","value":"{}"}}"#, "A".repeat(8000));
    let r = c
        .post(format!("{url}/v3/kv/put"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // Still serving.
    let r = call(&url, "/v3/kv/put", json!({"key": b64("alive"), "value": b64("yes")})).await;
    assert!(r["header"]["revision"].as_i64().unwrap() >= 1);
    node.shutdown().await.unwrap();
}

/// Watches: created reply, history filtered to the range, live events with watch_id, merging, cancel,
/// progress, and the compacted-start cancel.
#[tokio::test]
async fn websocket_watches() {
    let (node, url) = ours(ServerConfig { compact_revisions: 2, ..Default::default() }).await;
    call(&url, "/v3/kv/put", json!({"key": b64("/w/a"), "value": b64("1")})).await;
    call(&url, "/v3/kv/put", json!({"key": b64("/other"), "value": b64("x")})).await;
    let mut ws = Ws::connect(&url, "/watch").await;
    ws.send(&json!({"create_request": {"key": b64("/w/"), "range_end": b64("/w0"), "start_revision": 1, "watch_id": 7}}))
        .await;
    let created = ws.recv().await;
    assert_eq!(created["result"]["created"], true);
    assert_eq!(created["result"]["watch_id"], 7);
    let events = created["result"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "history is filtered to the range: {created}");
    assert_eq!(unb64(&events[0]["kv"]["key"]), "/w/a");
    // A second watch on the same socket, an exact key.
    ws.send(&json!({"create_request": {"key": b64("/w/b"), "watch_id": "k"}})).await;
    let created = ws.recv().await;
    assert_eq!(created["result"]["watch_id"], "k");
    assert!(created["result"].get("events").is_none(), "no events without start_revision");
    call(&url, "/v3/kv/put", json!({"key": b64("/w/b"), "value": b64("2")})).await;
    let ev = ws.recv().await;
    assert_eq!(ev["result"]["events"].as_array().unwrap().len(), 1, "merged and de-duplicated: {ev}");
    assert_eq!(ev["result"]["events"][0]["type"], "PUT");
    assert_eq!(
        ev["result"]["watch_ids"],
        json!([7, "k"]).as_array().map(|_| ev["result"]["watch_ids"].clone()).unwrap()
    );
    call(&url, "/v3/kv/deleterange", json!({"key": b64("/w/a")})).await;
    let ev = ws.recv().await;
    assert_eq!(ev["result"]["watch_id"], 7);
    assert_eq!(ev["result"]["events"][0]["type"], "DELETE");
    assert!(ev["result"]["events"][0]["kv"]["mod_revision"].as_i64().unwrap() > 0);
    // Duplicate id, progress, cancel.
    ws.send(&json!({"create_request": {"key": b64("/z"), "watch_id": 7}})).await;
    assert!(ws.recv().await["error"].as_str().unwrap().contains("already in use"));
    ws.send(&json!({"progress_request": {}})).await;
    let p = ws.recv().await;
    assert!(p["result"]["header"]["revision"].as_i64().unwrap() >= 4);
    ws.send(&json!({"cancel_request": {"watch_id": 7}})).await;
    let c = ws.recv().await;
    assert_eq!(c["result"]["canceled"], true);
    assert_eq!(c["result"]["watch_id"], 7);
    // Compaction: push history past the start, then ask for it.
    for i in 0..8 {
        call(&url, "/v3/kv/put", json!({"key": b64("/c"), "value": b64(&i.to_string())})).await;
    }
    ws.send(&json!({"create_request": {"key": b64("/c"), "start_revision": 2, "watch_id": 9}})).await;
    let c = ws.recv().await;
    assert_eq!(c["result"]["canceled"], true, "{c}");
    assert_eq!(c["result"]["watch_id"], 9);
    let compact = c["result"]["compact_revision"].as_i64().unwrap();
    assert!(compact > 2);
    assert_eq!(c["result"]["cancel_reason"], format!("Revisions up to {compact} are compacted"));
    node.shutdown().await.unwrap();
}

/// With merge_watches off, one message per watch, each with its watch_id.
#[tokio::test]
async fn unmerged_watches() {
    let (node, url) = ours(ServerConfig { merge_watches: false, ..Default::default() }).await;
    let mut ws = Ws::connect(&url, "/").await;
    ws.send(&json!({"create_request": {"key": b64("/m/"), "range_end": b64("/m0"), "watch_id": 1}})).await;
    ws.recv().await;
    ws.send(&json!({"create_request": {"key": b64("/m/k"), "watch_id": 2}})).await;
    ws.recv().await;
    call(&url, "/v3/kv/put", json!({"key": b64("/m/k"), "value": b64("v")})).await;
    let a = ws.recv().await;
    let b = ws.recv().await;
    let mut ids = vec![a["result"]["watch_id"].as_i64().unwrap(), b["result"]["watch_id"].as_i64().unwrap()];
    ids.sort();
    assert_eq!(ids, [1, 2]);
    assert_eq!(a["result"]["header"]["revision"], b["result"]["header"]["revision"]);
    node.shutdown().await.unwrap();
}

/// Bad websocket frames get error replies; the inputs that crash Node antietcd (a non-directory watch range,
/// a non-string key) are answered; oversized frames close only that socket.
#[tokio::test]
async fn bad_websocket_frames() {
    let (node, url) = ours(ServerConfig { max_ws_message_bytes: 2048, ..Default::default() }).await;
    let mut ws = Ws::connect(&url, "/v3/watch").await;
    let cases: &[(&str, &str)] = &[
        ("{", "bad-json"),
        ("null", "empty-message"),
        ("0", "empty-message"),
        ("\"\"", "empty-message"),
        ("[1]", "JSON object"),
        ("{\"hello\":1}", "unknown message"),
        ("{\"create_request\":5}", "JSON object"),
        ("{\"create_request\":{}}", "key is not provided"),
        ("{\"create_request\":{\"key\":5}}", "key should be a string"),
        ("{\"create_request\":{\"key\":\"YQ==\",\"range_end\":{}}}", "range_end should be a string"),
        ("{\"create_request\":{\"key\":\"***\"}}", "base64"),
        ("{\"create_request\":{\"key\":\"YQ==\",\"start_revision\":\"x\"}}", "start_revision"),
        ("{\"cancel_request\":{}}", "watch_id"),
        ("{\"cancel_request\":{\"watch_id\":12345}}", "unknown watch_id"),
    ];
    for (frame, needle) in cases {
        ws.send_raw(Message::Text((*frame).into())).await;
        let reply = ws.recv().await;
        let err = reply["error"].as_str().unwrap_or_else(|| panic!("{frame} -> {reply}"));
        assert!(err.contains(needle), "{frame} -> {err:?} lacks {needle:?}");
    }
    // A non-directory range (which crashes Node antietcd) is a working watch here.
    ws.send(&json!({"create_request": {"key": b64("/a"), "range_end": b64("/b"), "watch_id": 3}})).await;
    assert_eq!(ws.recv().await["result"]["created"], true);
    call(&url, "/v3/kv/put", json!({"key": b64("/a-1"), "value": b64("v")})).await;
    assert_eq!(unb64(&ws.recv().await["result"]["events"][0]["kv"]["key"]), "/a-1");
    // Binary frames are read as text.
    ws.send_raw(Message::Binary(b"{\"progress_request\":{}}".to_vec().into())).await;
    assert!(ws.recv().await["result"]["header"].is_object());
    // Oversized: that socket closes, the server lives.
    ws.send_raw(Message::Text("x".repeat(5000).into())).await;
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        use futures::StreamExt;
        loop {
            match ws.stream.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                _ => continue,
            }
        }
    })
    .await
    .unwrap();
    assert!(closed);
    let mut ws2 = Ws::connect(&url, "/").await;
    ws2.send(&json!({"progress_request": {}})).await;
    assert!(ws2.recv().await["result"]["header"]["revision"].as_i64().unwrap() >= 1);
    node.shutdown().await.unwrap();
}

/// `/health` and `/metrics` are served (additive endpoints).
#[tokio::test]
async fn health_and_metrics() {
    let (node, url) = ours(ServerConfig::default()).await;
    call(&url, "/v3/kv/put", json!({"key": b64("m"), "value": b64("1")})).await;
    let c = client();
    let h = c.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(h.status().as_u16(), 200);
    assert_eq!(h.text().await.unwrap(), "{\"health\":\"true\"}");
    let m = c.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("antietcd_revision 1"), "{m}");
    assert!(m.contains("antietcd_requests_total{api=\"kv_put\"} 1"), "{m}");
    node.shutdown().await.unwrap();
}

/// Shutdown closes websockets and connections and leaves no task of the node running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_every_task() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let (node, url) = ours(ServerConfig::default()).await;
    let mut ws = Ws::connect(&url, "/watch").await;
    ws.send(&json!({"create_request": {"key": b64("/s"), "watch_id": 1}})).await;
    ws.recv().await;
    // A keep-alive HTTP connection left idle.
    let c = client();
    let r = c
        .post(format!("{url}/v3/kv/range"))
        .body(format!(r#"{{"key":"{}"}}"#, b64("/s")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(metrics.num_alive_tasks() > before);
    node.shutdown().await.unwrap();
    // The websocket got a close.
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        use futures::StreamExt;
        loop {
            match ws.stream.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                _ => continue,
            }
        }
    })
    .await
    .unwrap();
    assert!(closed);
    drop(ws);
    drop(c);
    // Tasks finish by the time shutdown returns; the runtime drops them promptly after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while metrics.num_alive_tasks() > before {
        assert!(
            std::time::Instant::now() < deadline,
            "{} tasks still alive",
            metrics.num_alive_tasks() - before
        );
        tokio::task::yield_now().await;
    }
}
