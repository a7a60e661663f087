//! KV, transactions and transport behaviour against a real etcd (and a few fake servers
//! for failure cases: a silent one and one answering garbage).
#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::time::{Duration, Instant};

use etcd_json::testing::{free_port, EtcdServer};
use etcd_json::{
    Client, ClientOptions, Compare, CompareOp, DeleteOptions, Error, PutOptions, RangeOptions, ServerFlavour,
    SortOrder, SortTarget, Txn, TxnOp,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Put, range and delete honour their options, with binary keys and values.
#[tokio::test]
async fn kv_options() {
    let (_etcd, client) = common::etcd().await;
    assert!(matches!(client.flavour(), ServerFlavour::Etcd { .. }));

    let first = client.put("/p/a", "1", None).await.unwrap();
    let r_a = first.header.revision;
    client.put("/p/b", "2", None).await.unwrap();
    client.put("/p/c", "3", None).await.unwrap();
    client.put("/q", "outside", None).await.unwrap();
    // Binary key and value, including bytes that are not UTF-8.
    client.put(vec![b'/', b'p', b'/', 0xfb, 0xff], vec![0u8, 0xff, 7], None).await.unwrap();

    // prev_kv returns the old pair.
    let put = client.put("/p/a", "1b", Some(PutOptions::new().with_prev_kv())).await.unwrap();
    let prev = put.prev_kv.unwrap();
    assert_eq!(prev.value_str().unwrap(), "1");
    assert_eq!(prev.version, 1);
    assert_eq!(prev.mod_revision, r_a);

    // ignore_value keeps the value but bumps the version.
    client.put("/p/a", "", Some(PutOptions::new().with_ignore_value())).await.unwrap();
    let a = client.range("/p/a", None).await.unwrap();
    assert_eq!(a.kvs[0].value_str().unwrap(), "1b");
    assert_eq!(a.kvs[0].version, 3);
    assert_eq!(a.kvs[0].create_revision, r_a);
    // ... and needs an existing key.
    let err = client.put("/nokey", "", Some(PutOptions::new().with_ignore_value())).await.unwrap_err();
    assert!(matches!(err, Error::KeyNotFound { .. }), "{err:?}");

    // Prefix with limit: more + count ignore the limit.
    let r = client.range("/p/", Some(RangeOptions::new().with_prefix().with_limit(2))).await.unwrap();
    assert_eq!(r.kvs.len(), 2);
    assert!(r.more);
    assert_eq!(r.count, 4);
    assert_eq!(r.kvs[0].key_str().unwrap(), "/p/a");

    // count_only and keys_only.
    let r = client.range("/p/", Some(RangeOptions::new().with_prefix().with_count_only())).await.unwrap();
    assert!(r.kvs.is_empty());
    assert_eq!(r.count, 4);
    let r = client.range("/p/", Some(RangeOptions::new().with_prefix().with_keys_only())).await.unwrap();
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
    // Binary key sorts last and round-trips.
    assert_eq!(r.kvs[3].key, vec![b'/', b'p', b'/', 0xfb, 0xff]);
    let bin = client.get(vec![b'/', b'p', b'/', 0xfb, 0xff]).await.unwrap().unwrap();
    assert_eq!(bin, vec![0u8, 0xff, 7]);

    // Sort by mod revision, descending: /p/a was written last.
    let r = client
        .range("/p/", Some(RangeOptions::new().with_prefix().with_sort(SortTarget::Mod, SortOrder::Descend)))
        .await
        .unwrap();
    assert_eq!(r.kvs[0].key_str().unwrap(), "/p/a");

    // Historical read at the first revision.
    let r = client.range("/p/a", Some(RangeOptions::new().with_revision(r_a))).await.unwrap();
    assert_eq!(r.kvs[0].value_str().unwrap(), "1");

    // A future revision is out of range.
    let err = client.range("/p/a", Some(RangeOptions::new().with_revision(1_000_000))).await.unwrap_err();
    assert!(matches!(err, Error::OutOfRange { .. }), "{err:?}");

    // Serializable read with mod/create revision filters.
    let r = client
        .range(
            "/p/",
            Some(
                RangeOptions::new()
                    .with_prefix()
                    .with_serializable()
                    .with_min_mod_revision(r_a + 1)
                    .with_max_create_revision(r_a + 1),
            ),
        )
        .await
        .unwrap();
    let keys: Vec<_> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![b"/p/a".to_vec(), b"/p/b".to_vec()]);
    assert!(r.kvs.iter().all(|kv| kv.mod_revision > r_a));

    // from_key and all keys.
    let r = client.range("/p/c", Some(RangeOptions::new().with_from_key().with_keys_only())).await.unwrap();
    assert_eq!(r.count, 3); // /p/c, /p/\xfb\xff, /q
    let r = client.range("", Some(RangeOptions::new().with_all_keys().with_count_only())).await.unwrap();
    assert_eq!(r.count, 5);

    // A miss is not an error.
    assert_eq!(client.get("/missing").await.unwrap(), None);

    // Delete with prefix and prev_kv.
    let d =
        client.delete_range("/p/", Some(DeleteOptions::new().with_prefix().with_prev_kv())).await.unwrap();
    assert_eq!(d.deleted, 4);
    assert_eq!(d.prev_kvs.len(), 4);
    let d = client.delete_range("/p/a", None).await.unwrap();
    assert_eq!(d.deleted, 0);
    assert_eq!(client.get("/q").await.unwrap().as_deref(), Some(&b"outside"[..]));
}

/// Every compare target and result, both branches, nested transactions.
#[tokio::test]
async fn txn_compares() {
    let (_etcd, client) = common::etcd().await;
    let put = client.put("/t/k", "v2", None).await.unwrap();
    let rev = put.header.revision;
    let lease = client.lease_grant(30, None).await.unwrap().id;
    client.put("/t/leased", "x", Some(PutOptions::new().with_lease(lease))).await.unwrap();

    use CompareOp::*;
    let cases = [
        (Compare::mod_revision("/t/k", Equal, rev), true),
        (Compare::mod_revision("/t/k", Less, rev + 1), true),
        (Compare::mod_revision("/t/k", Greater, rev), false),
        (Compare::mod_revision("/t/k", NotEqual, rev), false),
        (Compare::create_revision("/t/k", Equal, rev), true),
        (Compare::create_revision("/t/absent", Equal, 0), true),
        (Compare::version("/t/k", Equal, 1), true),
        (Compare::version("/t/k", Greater, 1), false),
        (Compare::version("/t/k", NotEqual, 2), true),
        (Compare::value("/t/k", Equal, "v2"), true),
        (Compare::value("/t/k", Greater, "v1"), true),
        (Compare::value("/t/k", Less, "v1"), false),
        (Compare::value("/t/k", NotEqual, "v9"), true),
        (Compare::value("/t/absent", NotEqual, "v9"), false),
        (Compare::lease("/t/leased", Equal, lease), true),
        (Compare::lease("/t/k", Equal, etcd_json::LeaseId::NONE), true),
        (Compare::version("/t/", Greater, 0).with_prefix(), true),
    ];
    for (compare, expected) in cases {
        let txn = Txn::new()
            .when([compare.clone()])
            .and_then([TxnOp::range("/t/k", None)])
            .or_else([TxnOp::put("/t/else", "ran", None)]);
        let reply = client.txn(txn).await.unwrap();
        assert_eq!(reply.succeeded, expected, "{compare:?}");
        if expected {
            let range = reply.responses[0].as_range().unwrap();
            assert_eq!(range.kvs[0].value_str().unwrap(), "v2");
        } else {
            assert!(reply.responses[0].as_put().is_some());
        }
    }

    // Create-if-absent with a nested txn and a delete in the same branch.
    let txn = Txn::new().when([Compare::create_revision("/t/new", Equal, 0)]).and_then([
        TxnOp::put("/t/new", "n", Some(PutOptions::new().with_prev_kv())),
        TxnOp::delete("/t/else", Some(DeleteOptions::new().with_prev_kv())),
        TxnOp::txn(
            Txn::new()
                .when([Compare::value("/t/k", Equal, "v2")])
                .and_then([TxnOp::range("/t/", Some(RangeOptions::new().with_prefix()))]),
        ),
    ]);
    let reply = client.txn(txn.clone()).await.unwrap();
    assert!(reply.succeeded);
    assert_eq!(reply.responses[1].as_delete().unwrap().deleted, 1);
    let nested = reply.responses[2].as_txn().unwrap();
    assert!(nested.succeeded);
    assert_eq!(nested.responses[0].as_range().unwrap().kvs.len(), 3);
    // The second time the key exists: no branch op ran.
    let again = client.txn(txn).await.unwrap();
    assert!(!again.succeeded);
    assert!(again.responses.is_empty());

    // The same key twice is rejected by the server.
    let err = client
        .txn(Txn::new().and_then([TxnOp::put("/t/d", "1", None), TxnOp::put("/t/d", "2", None)]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
}

/// Reading a compacted revision is a typed error carrying the revision asked for.
#[tokio::test]
async fn compacted_range() {
    let (etcd, client) = common::etcd().await;
    let old = client.put("/c", "1", None).await.unwrap().header.revision;
    let new = client.put("/c", "2", None).await.unwrap().header.revision;
    client.compact(new, true).await.unwrap();
    let err = client.range("/c", Some(RangeOptions::new().with_revision(old))).await.unwrap_err();
    assert!(matches!(err, Error::Compacted { requested, .. } if requested == old), "{err:?}");
    let status = client.status().await.unwrap();
    assert!(status.version.starts_with("3."));
    assert!(status.db_size > 0);
    let members = client.member_list().await.unwrap();
    assert_eq!(members.members.len(), 1);
    assert_eq!(members.members[0].name, etcd.name());
}

/// With the first endpoint down, calls go to the next one; when every endpoint is down
/// the error is NotReachable, quickly.
#[tokio::test]
async fn failover_and_not_reachable() {
    let mut etcd = EtcdServer::start();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let client = Client::connect(
        [dead.clone(), etcd.endpoint()],
        ClientOptions::new().with_connect_timeout(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    client.put("/f", "1", None).await.unwrap();
    assert_eq!(client.get("/f").await.unwrap().as_deref(), Some(&b"1"[..]));

    etcd.kill();
    let started = Instant::now();
    let err = client.get("/f").await.unwrap_err();
    assert!(matches!(err, Error::NotReachable { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(3));

    let err = Client::connect([dead], ClientOptions::new()).await.unwrap_err();
    assert!(matches!(err, Error::NotReachable { .. }), "{err:?}");

    etcd.restart();
    common::wait_until(Duration::from_secs(10), "etcd back", || async { client.get("/f").await.is_ok() })
        .await;
}

/// A server that accepts connections but never answers: the configured timeout ends
/// the call with Timeout (never a hang).
#[tokio::test]
async fn silent_server_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _accept = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let client = Client::connect(
        [format!("http://{addr}")],
        ClientOptions::new()
            .with_request_timeout(Duration::from_millis(300))
            .with_server_flavour(ServerFlavour::Unknown),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let err = common::within(Duration::from_secs(5), "get", client.get("k")).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// Answers every request with this HTTP status and body.
async fn fake_server(status: &'static str, body: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = socket.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// Malformed or unexpected JSON from a server is a Decode error, never a panic.
#[tokio::test]
async fn malformed_replies_are_decode_errors() {
    let garbage = fake_server("200 OK", "{\"header\": {\"revision\": tru").await;
    let err = Client::connect([garbage], ClientOptions::new()).await.unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");

    let wrong_types = fake_server("200 OK", r#"{"kvs":"not a list","count":"x"}"#).await;
    let client =
        Client::connect([wrong_types], ClientOptions::new().with_server_flavour(ServerFlavour::Unknown))
            .await
            .unwrap();
    let err = client.range("k", None).await.unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    let err = client.lease_keep_alive_once(7.into()).await.unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");

    let bad_base64 = fake_server("200 OK", r#"{"kvs":[{"key":"!!!"}]}"#).await;
    let client =
        Client::connect([bad_base64], ClientOptions::new().with_server_flavour(ServerFlavour::Unknown))
            .await
            .unwrap();
    let err = client.range("k", None).await.unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");

    let html_error = fake_server("500 Internal Server Error", "<html>oops</html>").await;
    let client =
        Client::connect([html_error], ClientOptions::new().with_server_flavour(ServerFlavour::Unknown))
            .await
            .unwrap();
    let err = client.put("k", "v", None).await.unwrap_err();
    assert!(
        matches!(err, Error::Http { status: 500, ref message, .. } if message.contains("oops")),
        "{err:?}"
    );
}

/// Ports for child servers never come from the kernel's ephemeral range (where an in-process port-0 bind
/// could take one while the child boots), never repeat within a process, and are free when handed out.
#[test]
fn test_ports_avoid_the_ephemeral_range_and_never_repeat() {
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let held: Vec<std::net::TcpListener> = (0..200)
        .map(|_| {
            let port = free_port();
            assert!(port < ephemeral_low, "{port} is in the ephemeral range");
            // Port-0 binds in between cannot land on it.
            let _other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            bind_soon(port)
        })
        .collect();
    let mut ports: Vec<u16> = held.iter().map(|l| l.local_addr().unwrap().port()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 200);
}

/// Binds `port`, allowing a few milliseconds: a parallel test that forks a server process at the moment
/// `free_port` probed the port leaves the probe socket open in the child until it execs. Anything that
/// really holds the port still fails.
fn bind_soon(port: u16) -> std::net::TcpListener {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(listener) => return listener,
            Err(e) if Instant::now() < deadline && e.kind() == std::io::ErrorKind::AddrInUse => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("port {port} handed out but not free: {e}"),
        }
    }
}
