#![allow(clippy::unwrap_used)]
//! Peer TLS (antietcd's `--peer_ca`, `--peer_cert`, `--peer_key`): a cluster of three HTTPS nodes whose
//! peers must present a client certificate from the peers' CA elects one leader; a peer whose certificate
//! comes from another CA, and a plain-HTTP node, know the cluster key but are refused at `identify` and
//! never counted as followers; bad option combinations are start errors naming the options. Certificates
//! are generated with the `openssl` command; nodes run in-process on port-0 listeners.

use antietcd::{ClusterStatus, Node, RaftRole, ServerConfig};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "secret";

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// PEM files: `peer-ca` signs n1..n3 (the legitimate peers), `other-ca` signs `rogue` (trusted by the
/// nodes' `--ca` for clients, so its TLS handshake succeeds, but not a peer), `unknown-ca` signs
/// `stranger` (trusted by nothing). Every leaf is valid for 127.0.0.1 as server and client.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn generate(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("antietcd-cluster-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let script = r#"set -e
ca() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $1.key -out $1.crt -days 2 -subj /CN=$1 2>/dev/null; }
leaf() {
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $1.key -out $1.csr -subj /CN=$1 2>/dev/null
  openssl x509 -req -in $1.csr -CA $2.crt -CAkey $2.key -CAcreateserial -out $1.crt -days 2 -extfile leaf.ext 2>/dev/null
}
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' > leaf.ext
ca peer-ca; ca other-ca; ca unknown-ca
leaf n1 peer-ca; leaf n2 peer-ca; leaf n3 peer-ca
leaf rogue other-ca
leaf stranger unknown-ca
"#;
        let output = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run sh: {e}"));
        assert!(
            output.status.success(),
            "generating certificates failed (is openssl installed? apt-get install openssl):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Pki { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    fn cert(&self, name: &str) -> String {
        self.path(&format!("{name}.crt"))
    }

    fn key(&self, name: &str) -> String {
        self.path(&format!("{name}.key"))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three listeners on 127.0.0.1:0 and the `--cluster` string naming them n1..n3 as `https://`.
async fn listeners() -> (Vec<TcpListener>, String, Vec<String>) {
    let mut ls = Vec::new();
    let mut urls = Vec::new();
    for _ in 0..3 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("https://{}", l.local_addr().unwrap()));
        ls.push(l);
    }
    let spec = urls.iter().enumerate().map(|(i, u)| format!("n{}={u}", i + 1)).collect::<Vec<_>>().join(",");
    (ls, spec, urls)
}

/// Node `id` of `spec` with fast election timings and no TLS.
fn plain(id: &str, spec: &str) -> ServerConfig {
    ServerConfig {
        cluster: Some(spec.to_owned()),
        node_id: Some(id.to_owned()),
        cluster_key: Some(KEY.to_owned()),
        election_timeout: 1000,
        heartbeat_timeout: 200,
        leadership_timeout: Some(600),
        reconnect_interval: 100,
        ..Default::default()
    }
}

/// Node `id` serving HTTPS with its own certificate, trusting `other-ca` for clients and `peer-ca` for
/// peers.
fn secure(pki: &Pki, id: &str, spec: &str) -> ServerConfig {
    ServerConfig {
        cert: Some(pki.cert(id)),
        key: Some(pki.key(id)),
        ca: Some(pki.cert("other-ca")),
        peer_ca: Some(pki.cert("peer-ca")),
        ..plain(id, spec)
    }
}

fn snapshot(rxs: &[watch::Receiver<ClusterStatus>]) -> Vec<ClusterStatus> {
    rxs.iter().map(|r| r.borrow().clone()).collect()
}

/// Polls until `f` holds for the statuses, or panics after `within`.
async fn wait_until<T>(
    rxs: &[watch::Receiver<ClusterStatus>],
    within: Duration,
    what: &str,
    f: impl Fn(&[ClusterStatus]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let s = snapshot(rxs);
        if let Some(t) = f(&s) {
            return t;
        }
        assert!(Instant::now() < deadline, "{what} not reached within {within:?}: {s:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The nodes agree on one leader at one term; returns the leader's status.
fn agreed(statuses: &[ClusterStatus]) -> Option<ClusterStatus> {
    let leaders: Vec<&ClusterStatus> = statuses.iter().filter(|s| s.role == RaftRole::Leader).collect();
    let [leader] = leaders[..] else { return None };
    let ok = statuses.iter().all(|s| s.term == leader.term && s.leader.as_deref() == Some(&leader.node_id));
    ok.then(|| leader.clone())
}

fn ids(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// For `for_ms`, no leader among `rxs` counts a node of `outsiders` as follower.
async fn never_followed_by(rxs: &[watch::Receiver<ClusterStatus>], outsiders: &[&str], for_ms: u64) {
    let end = Instant::now() + Duration::from_millis(for_ms);
    while Instant::now() < end {
        for s in snapshot(rxs) {
            if let Some(f) = &s.followers {
                for o in outsiders {
                    assert!(!f.contains(*o), "{o} was counted as a follower of {}: {s:#?}", s.node_id);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Three HTTPS nodes with `--peer_ca` connect over `wss://`, authenticate each other by certificate and
/// cluster key, elect one leader followed by all three, and replicate a write made through a follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tls_nodes_elect_one_leader() {
    let pki = Pki::generate("three");
    let (ls, spec, urls) = listeners().await;
    let mut nodes = Vec::new();
    for (i, l) in ls.into_iter().enumerate() {
        nodes.push(Node::with_listener(secure(&pki, &format!("n{}", i + 1), &spec), l).await.unwrap());
    }
    let rxs: Vec<_> = nodes.iter().map(|n| n.cluster_status().unwrap()).collect();
    let leader = wait_until(&rxs, Duration::from_secs(15), "one leader followed by all three", |s| {
        agreed(s).filter(|l| l.followers.as_ref() == Some(&ids(&["n1", "n2", "n3"])))
    })
    .await;
    // Every node has a link to both peers.
    wait_until(&rxs, Duration::from_secs(5), "full mesh", |s| {
        s.iter().all(|x| x.connected.len() == 2).then_some(())
    })
    .await;
    // Replication travels over the wss:// links: a write through a follower (HTTPS, no client certificate)
    // is forwarded to the leader and reaches every node.
    let tls = antietcd::tls::client_config(Some(&pki.cert("peer-ca")), None).unwrap();
    let http = reqwest::Client::builder().use_preconfigured_tls((*tls).clone()).build().unwrap();
    let l = leader.node_id.trim_start_matches('n').parse::<usize>().unwrap() - 1;
    let put = json!({"key": b64("/tls"), "value": b64("v")}).to_string();
    let r = http.post(format!("{}/v3/kv/put", urls[(l + 1) % 3])).body(put).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    for url in &urls {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let body = json!({"key": b64("/tls")}).to_string();
            let r: Value = http
                .post(format!("{url}/v3/kv/range"))
                .body(body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if r["kvs"][0]["value"] == b64("v") {
                break;
            }
            assert!(Instant::now() < deadline, "{url} does not have the write: {r}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The leader stays: no re-election over a few election timeouts.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let again = agreed(&snapshot(&rxs)).expect("still one leader");
    assert_eq!((again.node_id, again.term), (leader.node_id, leader.term));
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// A websocket to `url` over TLS trusting `peer-ca`, presenting `client` (a certificate name) if given.
async fn wss(
    pki: &Pki,
    url: &str,
    client: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    String,
> {
    let (cert, key) = (client.map(|c| pki.cert(c)), client.map(|c| pki.key(c)));
    let tls = antietcd::tls::client_config(Some(&pki.cert("peer-ca")), cert.as_deref().zip(key.as_deref()))
        .unwrap();
    let url = url.replacen("https://", "wss://", 1);
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        url.as_str(),
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(tls)),
    );
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timeout".into()),
    }
}

/// The next text message within `ms`, `None` if there is none (the socket may also have been closed).
async fn next_text(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    ms: u64,
) -> Option<Value> {
    let end = Instant::now() + Duration::from_millis(ms);
    loop {
        match tokio::time::timeout_at(end, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// `identify` with the right cluster key is honoured only from a connection whose client certificate
/// chains to `--peer_ca`: one from a CA the listener trusts for ordinary clients (`--ca`) or no
/// certificate at all gets antietcd's `peer authentication error`, and the connection stays unidentified
/// (peer messages on it are refused). A certificate from a CA the node does not trust at all fails the
/// TLS handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_needs_a_client_certificate_from_peer_ca() {
    let pki = Pki::generate("identify");
    let (ls, spec, urls) = listeners().await;
    let mut nodes = Vec::new();
    for (i, l) in ls.into_iter().enumerate() {
        nodes.push(Node::with_listener(secure(&pki, &format!("n{}", i + 1), &spec), l).await.unwrap());
    }
    let identify = json!({"identify": {"key": KEY, "node_id": "n3"}}).to_string();
    let check_leader = json!({"check_leader": true, "term": 0, "request_id": 7}).to_string();

    // A legitimate peer certificate: identified (no reply), then peer messages are honoured.
    let mut ws = wss(&pki, &urls[0], Some("n3")).await.unwrap();
    ws.send(Message::text(identify.clone())).await.unwrap();
    assert_eq!(next_text(&mut ws, 300).await, None, "a successful identify has no reply");
    ws.send(Message::text(check_leader.clone())).await.unwrap();
    assert_eq!(
        next_text(&mut ws, 5000).await,
        Some(json!({"request_id": 7, "reply": {"error": "raft leader/term mismatch"}})),
        "an identified connection's check_leader is answered"
    );

    // A certificate the listener accepts for clients (--ca) but not from --peer_ca, and no certificate.
    for client in [Some("rogue"), None] {
        let mut ws = wss(&pki, &urls[0], client).await.unwrap();
        ws.send(Message::text(identify.clone())).await.unwrap();
        assert_eq!(
            next_text(&mut ws, 5000).await,
            Some(json!({"reply": {"error": "peer authentication error"}})),
            "client certificate {client:?}"
        );
        ws.send(Message::text(check_leader.clone())).await.unwrap();
        assert_eq!(
            next_text(&mut ws, 5000).await,
            Some(
                json!({"request_id": 7, "reply": {"error": "check_leader refused: identify with the cluster key first"}})
            ),
            "client certificate {client:?}: the connection stays unidentified"
        );
        // The socket stays usable for watches.
        ws.send(Message::text(json!({"progress_request": {}}).to_string())).await.unwrap();
        let progress = next_text(&mut ws, 5000).await.unwrap();
        assert!(progress["result"]["header"]["revision"].is_number(), "{progress}");
    }

    // A certificate from a CA trusted by neither --ca nor --peer_ca: no connection at all.
    match wss(&pki, &urls[0], Some("stranger")).await {
        Err(_) => {}
        Ok(mut ws) => {
            let _ = ws.send(Message::text(identify.clone())).await;
            assert_eq!(next_text(&mut ws, 2000).await, None, "an untrusted client certificate is refused");
        }
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// A third node that knows the cluster key and has a valid server certificate, but presents a client
/// certificate from another CA when it dials, is refused at `identify` by both others: they elect a leader
/// between themselves and never count it as a follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_certificate_from_another_ca_is_never_counted() {
    let pki = Pki::generate("rogue");
    let (ls, spec, _) = listeners().await;
    let mut nodes = Vec::new();
    for (i, l) in ls.into_iter().enumerate() {
        let id = format!("n{}", i + 1);
        let mut config = secure(&pki, &id, &spec);
        if i == 2 {
            config.peer_cert = Some(pki.cert("rogue"));
            config.peer_key = Some(pki.key("rogue"));
        }
        nodes.push(Node::with_listener(config, l).await.unwrap());
    }
    let rxs: Vec<_> = nodes.iter().map(|n| n.cluster_status().unwrap()).collect();
    let good = &rxs[..2];
    let leader = wait_until(good, Duration::from_secs(15), "n1 and n2 agree on a leader", |s| {
        agreed(s).filter(|l| l.followers.as_ref() == Some(&ids(&["n1", "n2"])))
    })
    .await;
    // n3's own links are open (TLS succeeded; the refusal is identify's).
    wait_until(&rxs[2..], Duration::from_secs(5), "n3 dialed both", |s| {
        (s[0].connected == ids(&["n1", "n2"])).then_some(())
    })
    .await;
    never_followed_by(good, &["n3"], 3000).await;
    let again = agreed(&snapshot(good)).expect("n1 and n2 still agree");
    assert_eq!((again.node_id, again.term), (leader.node_id, leader.term), "no re-election");
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// A node without TLS (no certificate of its own) in a cluster of HTTPS nodes with `--peer_ca`: it can dial
/// them (it trusts their CA) and knows the key, but presents no client certificate, so its `identify` is
/// refused; the TLS nodes cannot dial it at all. It is never counted as a follower. (Since they cannot
/// reach it, it could not follow even if identified: the refusal itself is checked by a probe socket here
/// and in `identify_needs_a_client_certificate_from_peer_ca`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_peer_in_a_tls_cluster_is_refused() {
    let pki = Pki::generate("plain");
    let (ls, spec, urls) = listeners().await;
    let mut nodes = Vec::new();
    for (i, l) in ls.into_iter().enumerate() {
        let id = format!("n{}", i + 1);
        let config = if i == 2 {
            // Plain HTTP listener; dials the others over wss:// trusting peer-ca, no client certificate.
            ServerConfig { ca: Some(pki.cert("peer-ca")), ..plain(&id, &spec) }
        } else {
            secure(&pki, &id, &spec)
        };
        nodes.push(Node::with_listener(config, l).await.unwrap());
    }
    let rxs: Vec<_> = nodes.iter().map(|n| n.cluster_status().unwrap()).collect();
    let good = &rxs[..2];
    wait_until(good, Duration::from_secs(15), "n1 and n2 agree on a leader", |s| {
        agreed(s).filter(|l| l.followers.as_ref() == Some(&ids(&["n1", "n2"])))
    })
    .await;
    wait_until(&rxs[2..], Duration::from_secs(5), "n3 dialed both", |s| {
        (s[0].connected == ids(&["n1", "n2"])).then_some(())
    })
    .await;
    never_followed_by(good, &["n3"], 3000).await;
    for s in snapshot(good) {
        assert!(!s.connected.contains("n3"), "{} cannot dial the plain node over TLS: {s:#?}", s.node_id);
    }
    // What n3's links get, seen from a socket like theirs (TLS without a client certificate).
    let mut ws = wss(&pki, &urls[0], None).await.unwrap();
    ws.send(Message::text(json!({"identify": {"key": KEY, "node_id": "n3"}}).to_string())).await.unwrap();
    assert_eq!(
        next_text(&mut ws, 5000).await,
        Some(json!({"reply": {"error": "peer authentication error"}}))
    );
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// Start errors of `config`, as text.
async fn start_error(config: ServerConfig) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    match Node::with_listener(config, listener).await {
        Ok(_) => panic!("the node started"),
        Err(e) => e.to_string(),
    }
}

/// Bad peer TLS options are start errors that name the options (and the file or node at fault), in the
/// library and in the binary.
#[tokio::test]
async fn peer_tls_options_are_validated_at_start() {
    let pki = Pki::generate("options");
    let spec = "n1=https://127.0.0.1:1,n2=https://127.0.0.1:2,n3=https://127.0.0.1:3";
    let cases: Vec<(ServerConfig, &str)> = vec![
        (
            ServerConfig { peer_ca: Some(pki.cert("peer-ca")), ..plain("n1", spec) },
            "--peer_ca needs --cert and --key",
        ),
        (
            ServerConfig { peer_cert: Some(pki.cert("n1")), ..secure(&pki, "n1", spec) },
            "--peer_cert needs --peer_key",
        ),
        (
            ServerConfig { peer_key: Some(pki.key("n1")), ..secure(&pki, "n1", spec) },
            "--peer_key needs --peer_cert",
        ),
        (
            ServerConfig { cluster: None, node_id: None, cluster_key: None, ..secure(&pki, "n1", spec) },
            "they need --cluster",
        ),
        (
            secure(&pki, "n1", "n1=https://127.0.0.1:1,n2=http://127.0.0.1:2,n3=https://127.0.0.1:3"),
            "--peer_ca is set but the URL \"http://127.0.0.1:2\" of node \"n2\" is not https://",
        ),
        (
            ServerConfig { peer_ca: Some("/nonexistent/peer-ca.crt".into()), ..secure(&pki, "n1", spec) },
            "reading peer_ca /nonexistent/peer-ca.crt",
        ),
        (
            ServerConfig { peer_ca: Some(pki.key("peer-ca")), ..secure(&pki, "n1", spec) },
            "peer_ca holds no PEM certificate",
        ),
        (
            ServerConfig {
                peer_cert: Some(pki.cert("n1")),
                peer_key: Some(pki.key("n2")),
                ..secure(&pki, "n1", spec)
            },
            "--peer_cert / --peer_key",
        ),
        (
            ServerConfig {
                peer_cert: Some(pki.cert("n1")),
                peer_key: Some("/nonexistent/n1.key".into()),
                ..secure(&pki, "n1", spec)
            },
            "reading peer_key /nonexistent/n1.key",
        ),
    ];
    for (config, expected) in cases {
        let err = start_error(config).await;
        assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    }
    // A valid configuration starts (peer_cert/peer_key given explicitly, dashed spellings in the binary).
    let ok = ServerConfig {
        peer_cert: Some(pki.cert("n1")),
        peer_key: Some(pki.key("n1")),
        ..secure(&pki, "n1", spec)
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Node::with_listener(ok, listener).await.unwrap().shutdown().await.unwrap();

    let output = Command::new(env!("CARGO_BIN_EXE_antietcd"))
        .args([
            "--port",
            "0",
            "--ip",
            "127.0.0.1",
            "--cluster",
            spec,
            "--node_id",
            "n1",
            "--cluster_key",
            KEY,
        ])
        .args(["--peer-ca", &pki.cert("peer-ca")])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--peer_ca needs --cert and --key"), "{stderr}");
}
