//! HTTPS against a real etcd that requires client certificates: the client trusts a CA
//! file, presents its certificate, and watches over HTTPS and WSS.
#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::time::Duration;

use etcd_json::testing::{EtcdServer, TlsFiles};
use etcd_json::{Client, ClientOptions, Error, WatchOptions, WatchTransport};
use futures::StreamExt;

/// Mutual TLS works for unary calls and both watch transports; missing or untrusted
/// certificates and unreadable files fail with typed errors.
#[tokio::test]
async fn https_with_client_certificate() {
    let dir = std::env::temp_dir().join(format!("etcd-json-tls-{}", std::process::id()));
    let files = TlsFiles::generate(&dir);
    let etcd = EtcdServer::start_tls(&files);
    assert!(etcd.endpoint().starts_with("https://"));

    let options =
        ClientOptions::new().with_ca_file(&files.ca).with_client_cert(&files.client_cert, &files.client_key);
    // The port opens slightly before etcd serves: wait for a working connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let client = loop {
        match Client::connect([etcd.endpoint()], options.clone()).await {
            Ok(c) => break c,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot connect over TLS: {e:?}"),
        }
    };
    client.put("/tls", "1", None).await.unwrap();
    assert_eq!(client.get("/tls").await.unwrap().as_deref(), Some(&b"1"[..]));

    for transport in [WatchTransport::HttpStream, WatchTransport::WebSocket] {
        let mut watch =
            client.watch("/tls", Some(WatchOptions::new().with_transport(transport))).await.unwrap();
        client.put("/tls", format!("{transport:?}"), None).await.unwrap();
        let msg = common::within(Duration::from_secs(10), "event", watch.next()).await.unwrap().unwrap();
        assert_eq!(msg.events[0].kv.value_str().unwrap(), format!("{transport:?}"));
    }

    // Without a client certificate the server refuses the handshake.
    let err =
        Client::connect([etcd.endpoint()], ClientOptions::new().with_ca_file(&files.ca)).await.unwrap_err();
    assert!(err.is_retryable() || matches!(err, Error::Unavailable { .. }), "{err:?}");
    // Without trusting the CA, the client refuses the server.
    let err = Client::connect(
        [etcd.endpoint()],
        ClientOptions::new().with_client_cert(&files.client_cert, &files.client_key),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::NotReachable { .. }), "{err:?}");
    // Unreadable files are configuration errors.
    let err = Client::connect([etcd.endpoint()], ClientOptions::new().with_ca_file(dir.join("missing.pem")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
