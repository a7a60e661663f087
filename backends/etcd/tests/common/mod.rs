//! Helpers shared by the integration tests: a throwaway server plus a connected client.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::future::Future;
use std::time::Duration;

use etcd_json::testing::{EtcdServer, NodeAntietcd};
use etcd_json::{Client, ClientOptions};

/// A fresh etcd and a client connected to it.
pub async fn etcd() -> (EtcdServer, Client) {
    let server = EtcdServer::start();
    let client = Client::connect([server.endpoint()], ClientOptions::new()).await.unwrap();
    (server, client)
}

/// A fresh Node antietcd and a client connected to it.
pub async fn antietcd() -> (NodeAntietcd, Client) {
    let server = NodeAntietcd::start();
    let client = Client::connect([server.endpoint()], ClientOptions::new()).await.unwrap();
    (server, client)
}

/// Waits (polling) until `check` holds, failing the test after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a future with a deadline, failing the test when it is exceeded.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not complete within {limit:?}"),
    }
}
