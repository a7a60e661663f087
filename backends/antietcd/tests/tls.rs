#![allow(clippy::unwrap_used)]
//! TLS: HTTPS and WSS with certificates generated at test time (inline PEM and files), and client
//! certificate authentication (a client without a certificate signed by the CA is refused).

mod common;

use antietcd::{Node, ServerConfig};
use common::*;
use futures::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::json;

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client =
        CertificateParams::new(vec!["client".to_owned()]).unwrap().signed_by(&client_key, &issuer).unwrap();
    Pki {
        ca: ca_cert.pem(),
        server_cert: server.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

async fn start(config: ServerConfig) -> (Node, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = Node::with_listener(config, listener).await.unwrap();
    let url = format!("https://localhost:{}", node.local_addr().unwrap().port());
    (node, url)
}

/// HTTPS and WSS with inline PEM material.
#[tokio::test]
async fn https_and_wss() {
    let p = pki();
    let config = ServerConfig {
        cert: Some(p.server_cert.clone()),
        key: Some(p.server_key.clone()),
        ..Default::default()
    };
    let (node, url) = start(config).await;
    let tls = antietcd::tls::client_config(Some(&p.ca), None).unwrap();
    let http = reqwest::Client::builder().use_preconfigured_tls((*tls).clone()).build().unwrap();
    let r = http
        .post(format!("{url}/v3/kv/put"))
        .header("content-type", "application/json")
        .body(json!({"key": b64("/t"), "value": b64("1")}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let ws_url = format!("{}/watch", url.replacen("https", "wss", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        ws_url.as_str(),
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(tls.clone())),
    )
    .await
    .unwrap();
    let req = json!({"create_request": {"key": b64("/t"), "start_revision": 1}}).to_string();
    ws.send(tokio_tungstenite::tungstenite::Message::Text(req.into())).await.unwrap();
    let msg = ws.next().await.unwrap().unwrap().into_text().unwrap();
    let v: serde_json::Value = serde_json::from_str(&msg).unwrap();
    assert_eq!(v["result"]["events"][0]["kv"]["value"], b64("1"));
    // Plain HTTP to the TLS port fails.
    let plain = reqwest::Client::new()
        .post(url.replacen("https", "http", 1) + "/v3/kv/range")
        .body("{}")
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    node.shutdown().await.unwrap();
}

/// client_cert_auth with PEM files: a client with a CA-signed certificate gets in, one without is refused.
#[tokio::test]
async fn client_certificates() {
    let p = pki();
    let dir = std::env::temp_dir().join(format!("antietcd-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, content: &str| {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let config = ServerConfig {
        cert: Some(file("server.pem", &p.server_cert)),
        key: Some(file("server.key", &p.server_key)),
        ca: Some(file("ca.pem", &p.ca)),
        client_cert_auth: true,
        ..Default::default()
    };
    let (node, url) = start(config).await;
    let with_cert = antietcd::tls::client_config(Some(&p.ca), Some((&p.client_cert, &p.client_key))).unwrap();
    let http = reqwest::Client::builder().use_preconfigured_tls((*with_cert).clone()).build().unwrap();
    let r = http.post(format!("{url}/v3/maintenance/status")).body("{}").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let without = antietcd::tls::client_config(Some(&p.ca), None).unwrap();
    let http = reqwest::Client::builder().use_preconfigured_tls((*without).clone()).build().unwrap();
    let r = http.post(format!("{url}/v3/maintenance/status")).body("{}").send().await;
    assert!(r.is_err(), "a client without a certificate is refused");
    // Still serving the authenticated client.
    let http = reqwest::Client::builder().use_preconfigured_tls((*with_cert).clone()).build().unwrap();
    assert!(http
        .post(format!("{url}/v3/maintenance/status"))
        .body("{}")
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    node.shutdown().await.unwrap();
}

/// Bad TLS material is a clear start error.
#[tokio::test]
async fn bad_material() {
    let config = ServerConfig {
        cert: Some("-----BEGIN nonsense".into()),
        key: Some("/nonexistent.key".into()),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = Node::with_listener(config, listener).await.unwrap_err();
    assert!(err.to_string().starts_with("TLS:"), "{err}");
    let err = ServerConfig { client_cert_auth: true, ..Default::default() }.validate().unwrap_err();
    assert!(err.to_string().contains("client_cert_auth"), "{err}");
}
