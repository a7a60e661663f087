//! Test helpers: start our server in-process on port 0, start Node antietcd 1.3.1 on a free loopback port,
//! and talk to either over HTTP and websockets.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use antietcd::{Node, ServerConfig};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// The folder holding `node_modules` with antietcd 1.3.1: `$ANTIETCD_NODE_DIR`, else `<workspace>/.cache/node`.
pub fn node_dir() -> PathBuf {
    match std::env::var_os("ANTIETCD_NODE_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/node"),
    }
}

/// A script of the Node package (`antietcd`, `anticli`); fails the test if the package is missing.
pub fn node_bin(name: &str) -> PathBuf {
    let dir = node_dir();
    let bin = dir.join("node_modules/.bin").join(name);
    assert!(
        bin.exists(),
        "Node antietcd 1.3.1 is missing ({} not found): install it with `npm install --prefix {} antietcd@1.3.1`",
        bin.display(),
        dir.display()
    );
    bin
}

pub use etcd_json::testing::free_port;

/// Our `antietcd` binary on 127.0.0.1:`port` with extra `args`, output discarded; kill it when done.
pub fn antietcd_binary(port: u16, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_antietcd"))
        .args(["--port", &port.to_string(), "--ip", "127.0.0.1"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Our server, in-process on 127.0.0.1:0.
pub async fn ours(config: ServerConfig) -> (Node, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = Node::with_listener(config, listener).await.unwrap();
    let url = format!("http://{}", node.local_addr().unwrap());
    (node, url)
}

/// A running Node antietcd server, killed on drop.
pub struct NodeServer {
    pub child: Child,
    pub url: String,
    pub port: u16,
}

impl NodeServer {
    /// Starts `antietcd --port P --ip 127.0.0.1 <args>` and waits until it answers.
    pub async fn start(args: &[&str]) -> NodeServer {
        let bin = node_bin("antietcd");
        let port = free_port();
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--ip", "127.0.0.1"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = NodeServer { child, url: format!("http://127.0.0.1:{port}"), port };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = try_post(&server.url, "/v3/maintenance/status", "{}").await {
                return server;
            }
            assert!(tokio::time::Instant::now() < deadline, "Node antietcd did not start on port {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops it with SIGTERM (it persists on stop) and waits for it to exit.
    pub fn stop(mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

async fn try_post(base: &str, path: &str, body: &str) -> Result<(u16, String), reqwest::Error> {
    let r = client()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await?;
    Ok((r.status().as_u16(), r.text().await?))
}

/// POSTs `body` as JSON; returns the status and body text.
pub async fn post(base: &str, path: &str, body: &str) -> (u16, String) {
    try_post(base, path, body).await.unwrap()
}

/// POSTs and parses a 200 JSON answer.
pub async fn call(base: &str, path: &str, body: Value) -> Value {
    let (status, text) = post(base, path, &body.to_string()).await;
    assert_eq!(status, 200, "{path} {body} -> {status} {text}");
    serde_json::from_str(&text).unwrap()
}

/// The value of the unlabelled sample `name` in our server's `/metrics` (None if unreachable or absent).
pub async fn metric(base: &str, name: &str) -> Option<u64> {
    let text = client().get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

pub fn unb64(v: &Value) -> String {
    use base64::Engine as _;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap()).unwrap()
}

/// A websocket client.
pub struct Ws {
    pub stream: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

impl Ws {
    pub async fn connect(base: &str, path: &str) -> Ws {
        let url = format!("{}{path}", base.replacen("http", "ws", 1));
        let (stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Ws { stream }
    }

    pub async fn send(&mut self, v: &Value) {
        self.stream.send(Message::Text(v.to_string().into())).await.unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.stream.send(m).await.unwrap();
    }

    /// The next JSON text message (pings skipped), waiting at most 5 s.
    pub async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), self.stream.next())
                .await
                .expect("no websocket message within 5 s")
                .expect("websocket closed")
                .unwrap();
            match m {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected websocket message {other:?}"),
            }
        }
    }

    /// Whether a message arrives within `ms` (to check that nothing is sent).
    pub async fn quiet_for(&mut self, ms: u64) -> bool {
        loop {
            match tokio::time::timeout(Duration::from_millis(ms), self.stream.next()).await {
                Err(_) => return true,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(_) => return false,
            }
        }
    }
}
