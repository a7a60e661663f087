//! `antietcds://` end to end: our server with TLS and client-certificate authentication, opened through a
//! URL carrying `ca`, `cert` and `key`; without a client certificate the store cannot be opened.

#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used)]

use futures::StreamExt;
use valkeyrie::EventKind;

#[tokio::test]
async fn mutual_tls_store() {
    let dir = std::env::temp_dir().join(format!("valkeyrie-tls-{}", std::process::id()));
    let files = etcd_json::testing::TlsFiles::generate(&dir);
    let path = |p: &std::path::Path| p.display().to_string();
    let config = antietcd::ServerConfig {
        cert: Some(path(&files.server_cert)),
        key: Some(path(&files.server_key)),
        ca: Some(path(&files.ca)),
        client_cert_auth: true,
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = antietcd::Node::with_listener(config, listener).await.unwrap();
    let addr = node.local_addr().unwrap();
    let url = format!(
        "antietcds://{addr}?ca={}&cert={}&key={}",
        path(&files.ca),
        path(&files.client_cert),
        path(&files.client_key)
    );
    let store = valkeyrie::open(&url).await.unwrap();
    let mut w = store.watch("secure", None).await.unwrap(); // the websocket is TLS too
    assert_eq!(w.next().await.unwrap().unwrap().kind, EventKind::Delete);
    store.put("secure", b"v", None).await.unwrap();
    assert_eq!(w.next().await.unwrap().unwrap().pair.value, b"v");
    let without_client_cert = valkeyrie::open(&format!("antietcds://{addr}?ca={}", path(&files.ca))).await;
    assert!(without_client_cert.is_err(), "the server requires a client certificate");
    let plain = valkeyrie::open(&format!("antietcd://{addr}?connect_timeout=500ms&timeout=1s")).await;
    assert!(plain.is_err(), "plain HTTP to a TLS server fails");
    store.close().await.unwrap();
    node.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
