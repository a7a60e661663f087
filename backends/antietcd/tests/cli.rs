#![allow(clippy::unwrap_used)]
//! anticli: Node's anticli against our server, our anticli against Node's server, and each against its
//! own, with the same output and exit codes (except that ours keeps the case of keys and values).

mod common;

use antietcd::ServerConfig;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

fn run(bin: &std::path::Path, url: &str, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(bin)
        .args(["-e", url])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// put/get/del/load with both clients against both servers: identical stdout and exit codes.
async fn session(cli: &std::path::Path, url: &str) -> Vec<(i32, String)> {
    let cases: Vec<(Vec<&str>, Option<&str>)> = vec![
        (vec!["put", "/cli/a", "one"], None),
        (vec!["put", "/cli/b"], Some("two from stdin")),
        (vec!["get", "/cli/a"], None),
        (vec!["get", "/cli", "-p"], None),
        (vec!["get", "/cli/", "--prefix", "-v"], None),
        (vec!["get", "/cli", "-p", "-k"], None),
        (vec!["get", "/cli/a", "--json"], None),
        (vec!["get", "/cli/missing"], None),
        (vec!["load"], Some(r#"{"kvs":[{"key":"L2NsaS9j","value":"dGhyZWU="}]}"#)),
        (vec!["load"], Some(r#"{"nothing":1}"#)),
        (vec!["get", "/cli/c"], None),
        (vec!["del", "/cli/a"], None),
        (vec!["del", "/cli", "-p"], None),
        (vec!["get", "/cli", "-p"], None),
        (vec!["frobnicate"], None),
        (vec!["get", "x", "-z"], None),
    ];
    let mut out = Vec::new();
    for (args, stdin) in cases {
        let (code, stdout, _) = run(cli, url, &args, stdin);
        out.push((code, stdout));
    }
    out
}

fn strip_additive(mut v: Vec<(i32, String)>) -> Vec<(i32, String)> {
    // `get --json` prints the response_range: ours carries count/create_revision/version too.
    for (_, s) in &mut v {
        if s.starts_with('{') {
            let mut j: serde_json::Value = serde_json::from_str(s).unwrap();
            if let Some(kvs) = j.get_mut("kvs").and_then(|k| k.as_array_mut()) {
                for kv in kvs {
                    let m = kv.as_object_mut().unwrap();
                    m.remove("create_revision");
                    m.remove("version");
                }
            }
            j.as_object_mut().unwrap().remove("count");
            *s = j.to_string();
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cross_servers() {
    let node_cli = node_bin("anticli");
    let our_cli = std::path::PathBuf::from(env!("CARGO_BIN_EXE_anticli"));
    let nodejs = NodeServer::start(&[]).await;
    let (node, url) = ours(ServerConfig::default()).await;
    let reference = strip_additive(session(&node_cli, &nodejs.url).await);
    assert_eq!(reference[3].1, "/cli/a\none\n/cli/b\ntwo from stdin\n");
    let node_cli_ours = strip_additive(session(&node_cli, &url).await);
    assert_eq!(reference, node_cli_ours, "Node's anticli against our server");
    let nodejs2 = NodeServer::start(&[]).await;
    let our_cli_node = strip_additive(session(&our_cli, &nodejs2.url).await);
    assert_eq!(reference, our_cli_node, "our anticli against Node's server");
    let (node2, url2) = ours(ServerConfig::default()).await;
    let ours_ours = strip_additive(session(&our_cli, &url2).await);
    assert_eq!(reference, ours_ours, "our anticli against our server");
    node.shutdown().await.unwrap();
    node2.shutdown().await.unwrap();
}

/// Our anticli keeps the case of keys and values (Node's lower-cases them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_is_kept() {
    let our_cli = std::path::PathBuf::from(env!("CARGO_BIN_EXE_anticli"));
    let (node, url) = ours(ServerConfig::default()).await;
    assert_eq!(run(&our_cli, &url, &["put", "/Foo/X", "BarValue"], None).1, "OK\n");
    assert_eq!(run(&our_cli, &url, &["get", "/Foo/X"], None).1, "/Foo/X\nBarValue\n");
    // A dead endpoint first: the next one is tried.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (code, out, err) = run(&our_cli, &format!("{dead},{url}"), &["get", "/Foo/X", "-v"], None);
    assert_eq!((code, out.as_str()), (0, "BarValue\n"), "{err}");
    let (code, _, err) = run(&our_cli, &dead, &["get", "/Foo/X"], None);
    assert_eq!(code, 1);
    assert!(err.contains(&dead), "{err}");
    node.shutdown().await.unwrap();
}

/// `watch` prints every message as a JSON line with decoded keys and values, against both servers, with
/// both clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_lines() {
    let node_cli = node_bin("anticli");
    let our_cli = std::path::PathBuf::from(env!("CARGO_BIN_EXE_anticli"));
    let nodejs = NodeServer::start(&[]).await;
    let (node, url) = ours(ServerConfig::default()).await;
    for (cli, server) in [(&node_cli, &url), (&our_cli, &nodejs.url), (&our_cli, &url)] {
        let mut child = Command::new(cli)
            .args(["-e", server, "watch", "/wl", "-p"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let created: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(created["result"]["created"], true);
        call(server, "/v3/kv/put", serde_json::json!({"key": b64("/wl/k"), "value": b64("Vv")})).await;
        let ev: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(ev["result"]["events"][0]["kv"]["key"], "/wl/k");
        assert_eq!(ev["result"]["events"][0]["kv"]["value"], "Vv");
        let _ = child.kill();
        let _ = child.wait();
    }
    node.shutdown().await.unwrap();
}
