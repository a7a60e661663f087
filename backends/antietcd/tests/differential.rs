#![allow(clippy::unwrap_used)]
//! Differential tests: the same request sequences sent to Node antietcd 1.3.1 and to our server, the
//! responses compared after normalising only the documented differences (COMPAT-server.md): our additive
//! fields (`create_revision`, `version`, `count`, `more`, `watch_id` on events, revisions in keys_only kvs),
//! key order (Node returns JS object order, we sort), lease ids (random) and, in lease sequences, header
//! revisions (Node bumps the revision on lease grant/keepalive/revoke).

mod common;

use antietcd::ServerConfig;
use common::*;
use serde_json::{json, Value};

fn normalise(v: &mut Value, lease_ids: &[String], drop_revisions: bool) {
    match v {
        Value::Object(m) => {
            // keys_only: Node sends the key alone; we add revisions and the lease. (A delete event's kv has
            // no create_revision, so it is not touched.)
            if m.contains_key("key") && !m.contains_key("value") && m.contains_key("create_revision") {
                m.retain(|k, _| k == "key");
            }
            for k in ["create_revision", "version", "count", "more", "watch_ids"] {
                m.remove(k);
            }
            if drop_revisions {
                if let Some(Value::Object(h)) = m.get_mut("header") {
                    h.remove("revision");
                }
                m.remove("mod_revision");
            }
            for (_, x) in m.iter_mut() {
                normalise(x, lease_ids, drop_revisions);
            }
            if let Some(Value::Array(kvs)) = m.get_mut("kvs") {
                kvs.sort_by_key(|kv| kv["key"].as_str().unwrap_or("").to_owned());
            }
            if let Some(Value::Array(evs)) = m.get_mut("events") {
                evs.sort_by_key(|e| e["kv"]["key"].as_str().unwrap_or("").to_owned());
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| normalise(x, lease_ids, drop_revisions)),
        Value::String(s) => {
            if let Some(i) = lease_ids.iter().position(|id| id == s) {
                *s = format!("<lease {i}>");
            }
        }
        _ => {}
    }
}

/// Sends each (path, body) to both servers and compares status and normalised bodies.
async fn compare(node: &str, ours: &str, steps: &[(&str, Value)], drop_revisions: bool) {
    let mut node_leases = Vec::new();
    let mut our_leases = Vec::new();
    for (path, body) in steps {
        let body = substitute(body, &node_leases);
        let (ns, nb) = post(node, path, &body.to_string()).await;
        let body = substitute(&substitute_back(&body, &node_leases), &our_leases);
        let (os, ob) = post(ours, path, &body.to_string()).await;
        assert_eq!(ns, os, "{path} {body}: status differs: Node {ns} {nb:?}, ours {os} {ob:?}");
        if ns != 200 {
            assert_eq!(nb, ob, "{path} {body}: error text differs");
            continue;
        }
        let mut nv: Value = serde_json::from_str(&nb).unwrap();
        let mut ov: Value = serde_json::from_str(&ob).unwrap();
        if *path == "/v3/lease/grant" {
            node_leases.push(nv["ID"].as_str().unwrap().to_owned());
            our_leases.push(ov["ID"].as_str().unwrap().to_owned());
        }
        normalise(&mut nv, &node_leases, drop_revisions);
        normalise(&mut ov, &our_leases, drop_revisions);
        assert_eq!(nv, ov, "{path} {body}: responses differ\nNode: {nb}\nours: {ob}");
    }
}

/// `"<lease N>"` placeholders in a request become the server's lease ids.
fn substitute(body: &Value, ids: &[String]) -> Value {
    match body {
        Value::String(s) => match s.strip_prefix("<lease ").and_then(|r| r.strip_suffix('>')) {
            Some(n) => ids
                .get(n.parse::<usize>().unwrap())
                .map(|id| Value::String(id.clone()))
                .unwrap_or(body.clone()),
            None => body.clone(),
        },
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), substitute(v, ids))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(|v| substitute(v, ids)).collect()),
        other => other.clone(),
    }
}

fn substitute_back(body: &Value, ids: &[String]) -> Value {
    match body {
        Value::String(s) => match ids.iter().position(|id| id == s) {
            Some(i) => Value::String(format!("<lease {i}>")),
            None => body.clone(),
        },
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), substitute_back(v, ids))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(|v| substitute_back(v, ids)).collect()),
        other => other.clone(),
    }
}

fn put(k: &str, v: &str) -> (&'static str, Value) {
    ("/v3/kv/put", json!({"key": b64(k), "value": b64(v)}))
}

fn prefix(p: &str) -> Value {
    json!({"key": b64(&format!("{p}/")), "range_end": b64(&format!("{p}0"))})
}

/// KV and txn: puts, single and prefix ranges, keys_only, compares on MOD/VERSION/CREATE, both branches,
/// prefix deletes: identical answers, revisions included.
#[tokio::test]
async fn kv_and_txn() {
    let nodejs = NodeServer::start(&[]).await;
    let (node, url) = ours(ServerConfig::default()).await;
    let steps = vec![
        put("/d/a", "1"),
        put("/d/b", "2"),
        put("/e", "3"),
        put("/d/a", "4"),
        ("/v3/kv/range", json!({"key": b64("/d/a")})),
        ("/v3/kv/range", json!({"key": b64("/d/zz")})),
        ("/v3/kv/range", prefix("/d")),
        ("/v3/kv/range", {
            let mut p = prefix("/d");
            p["keys_only"] = true.into();
            p
        }),
        (
            "/v3/kv/txn",
            json!({
                "compare": [{"key": b64("/d/a"), "target": "MOD", "result": "LESS", "mod_revision": 10},
                            {"key": b64("/d/b"), "target": "VERSION", "version": 1},
                            {"key": b64("/d/b"), "target": "CREATE", "create_revision": 2}],
                "success": [{"request_put": {"key": b64("/d/c"), "value": b64("5")}},
                            {"request_range": prefix("/d")},
                            {"request_delete_range": {"key": b64("/e")}}],
                "failure": [{"request_range": {"key": b64("/e")}}],
            }),
        ),
        (
            "/v3/kv/txn",
            json!({
                "compare": [{"key": b64("/d/a"), "target": "MOD", "mod_revision": 1}],
                "success": [{"request_put": {"key": b64("/never"), "value": b64("x")}}],
                "failure": [{"request_range": {"key": b64("/d/a")}}],
            }),
        ),
        ("/v3/kv/txn", json!({"success": [{"requestPut": {"key": b64("/f"), "value": b64("6")}}]})),
        ("/v3/kv/deleterange", prefix("/d")),
        ("/v3/kv/deleterange", json!({"key": b64("/missing")})),
        ("/v3/kv/range", prefix("/d")),
        put("/d/a", "7"),
        ("/v3/kv/range", json!({"key": b64("/d/a")})),
        // Errors with the same code and text.
        ("/v3/kv/nothing", json!({})),
        ("/v3/kv/txn", json!({"compare": [{"key": b64("/d/a"), "target": "NOPE"}]})),
    ];
    compare(&nodejs.url, &url, &steps, false).await;
    node.shutdown().await.unwrap();
}

/// Leases: grant (TTL echoed as sent), keepalive (TTL as a string), a leased put and range, revoke
/// deleting the key, unknown-lease errors word for word.
#[tokio::test]
async fn leases() {
    let nodejs = NodeServer::start(&[]).await;
    let (node, url) = ours(ServerConfig::default()).await;
    let steps = vec![
        ("/v3/lease/grant", json!({"TTL": 30})),
        ("/v3/lease/grant", json!({"TTL": "20"})),
        ("/v3/kv/put", json!({"key": b64("/l/a"), "value": b64("1"), "lease": "<lease 0>"})),
        ("/v3/kv/range", prefix("/l")),
        ("/v3/lease/keepalive", json!({"ID": "<lease 0>"})),
        ("/v3/lease/keepalive", json!({"ID": "<lease 1>"})),
        ("/v3/lease/revoke", json!({"ID": "<lease 0>"})),
        ("/v3/kv/range", prefix("/l")),
        ("/v3/kv/lease/revoke", json!({"ID": "<lease 1>"})),
        ("/v3/lease/keepalive", json!({"ID": "00000000000000ab"})),
        ("/v3/lease/revoke", json!({"ID": "00000000000000ab"})),
        ("/v3/kv/put", json!({"key": b64("/l/b"), "value": b64("1"), "lease": "00000000000000ab"})),
    ];
    compare(&nodejs.url, &url, &steps, true).await;
    node.shutdown().await.unwrap();
}

/// Request pipeline errors: bad JSON, non-objects, unknown APIs, wrong method: same code and text.
#[tokio::test]
async fn pipeline_errors() {
    let nodejs = NodeServer::start(&[]).await;
    let (node, url) = ours(ServerConfig::default()).await;
    for (path, body) in [
        ("/v3/kv/put", "{"),
        ("/v3/kv/put", "[1]"),
        ("/v3/kv/put", "null"),
        ("/v3/kv/nothing", "{}"),
        ("/v2/keys", "{}"),
        ("/v3/kv/txn", r#"{"compare":[{"key":"YQ==","target":"MOD","result":"GREATEST"}]}"#),
    ] {
        let n = post(&nodejs.url, path, body).await;
        let o = post(&url, path, body).await;
        assert_eq!(n, o, "{path} {body}");
    }
    let c = client();
    let n = c
        .get(format!("{}/v3/kv/range", nodejs.url))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    let o =
        c.get(format!("{url}/v3/kv/range")).header("content-type", "application/json").send().await.unwrap();
    assert_eq!(n.status(), o.status());
    assert_eq!(n.text().await.unwrap(), o.text().await.unwrap());
    node.shutdown().await.unwrap();
}

/// Watches: created replies, history from a start revision, live put and delete events, cancel and
/// progress: the same messages (events sorted by key, our additive watch_id dropped from events).
#[tokio::test]
async fn watches() {
    let nodejs = NodeServer::start(&[]).await;
    let (node, url) = ours(ServerConfig::default()).await;
    let mut results = Vec::new();
    for base in [&nodejs.url, &url] {
        let mut got = Vec::new();
        call(base, "/v3/kv/put", json!({"key": b64("/w/a"), "value": b64("1")})).await;
        call(base, "/v3/kv/put", json!({"key": b64("/w/b"), "value": b64("2")})).await;
        let mut ws = Ws::connect(base, "/watch").await;
        ws.send(&json!({"create_request": {"key": b64("/w/"), "range_end": b64("/w0"), "watch_id": 1, "start_revision": 1}}))
            .await;
        got.push(ws.recv().await);
        ws.send(&json!({"create_request": {"key": b64("/x"), "watch_id": 2}})).await;
        got.push(ws.recv().await);
        call(base, "/v3/kv/put", json!({"key": b64("/w/c"), "value": b64("3")})).await;
        got.push(ws.recv().await);
        call(base, "/v3/kv/put", json!({"key": b64("/x"), "value": b64("4")})).await;
        got.push(ws.recv().await);
        call(base, "/v3/kv/deleterange", json!({"key": b64("/w/a")})).await;
        got.push(ws.recv().await);
        ws.send(&json!({"progress_request": {}})).await;
        got.push(ws.recv().await);
        ws.send(&json!({"cancel_request": {"watch_id": 1}})).await;
        got.push(ws.recv().await);
        call(base, "/v3/kv/put", json!({"key": b64("/w/d"), "value": b64("5")})).await;
        call(base, "/v3/kv/put", json!({"key": b64("/x"), "value": b64("6")})).await;
        got.push(ws.recv().await);
        results.push(got);
    }
    let ours_msgs = results.pop().unwrap();
    let node_msgs = results.pop().unwrap();
    for (i, (mut n, mut o)) in node_msgs.into_iter().zip(ours_msgs).enumerate() {
        // Our event messages carry watch_id (additive); Node's created/cancel replies carry it too.
        if o["result"].get("events").is_some() && o["result"].get("created").is_none() {
            o["result"].as_object_mut().unwrap().remove("watch_id");
        }
        normalise(&mut n, &[], false);
        normalise(&mut o, &[], false);
        assert_eq!(n, o, "message {i} differs");
    }
    node.shutdown().await.unwrap();
}
