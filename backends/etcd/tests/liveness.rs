//! A watch whose connection goes silently dead (no RST, no FIN: a lost NAT entry, a frozen middlebox) is
//! noticed by the client's idle check, reconnected and resumed, so the change made meanwhile arrives.

#![allow(clippy::unwrap_used, unreachable_pub)]

use etcd_json::testing::NodeAntietcd;
use etcd_json::{Client, ClientOptions, WatchOptions};
use futures::StreamExt;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards connections to `target`; `freeze()` makes every connection open at that moment go silent
/// forever (kept open, nothing forwarded), while later connections work.
struct FreezingProxy {
    addr: SocketAddr,
    epoch: watch::Sender<u64>,
}

impl FreezingProxy {
    async fn start(target: SocketAddr) -> FreezingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (epoch, epoch_rx) = watch::channel(0u64);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut epoch_rx = epoch_rx.clone();
                let born = *epoch_rx.borrow();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(target).await else { return };
                    let frozen = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => false,
                        r = epoch_rx.wait_for(|e| *e > born) => r.is_ok(),
                    };
                    if frozen {
                        // Hold both sockets open and silent.
                        std::future::pending::<()>().await;
                    }
                });
            }
        });
        FreezingProxy { addr, epoch }
    }

    fn freeze(&self) {
        self.epoch.send_modify(|e| *e += 1);
    }
}

#[tokio::test]
async fn silent_websocket_is_detected_and_resumed() {
    let node = NodeAntietcd::start();
    let proxy = FreezingProxy::start(node.addr()).await;
    let options = ClientOptions::new().with_ws_idle_timeout(Duration::from_secs(1));
    let client = Client::connect([format!("http://{}", proxy.addr)], options).await.unwrap();
    let direct = Client::connect([node.endpoint()], ClientOptions::new()).await.unwrap();
    let mut w = client.watch("/live/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    direct.put("/live/a", "1", None).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), w.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.events[0].kv.key, b"/live/a");
    proxy.freeze();
    direct.put("/live/b", "2", None).await.unwrap();
    let keys = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match w.next().await {
                Some(Ok(r)) if !r.events.is_empty() => break r.events[0].kv.key.clone(),
                Some(_) => continue,
                None => panic!("the watch ended"),
            }
        }
    })
    .await
    .expect("a silently dead connection was never noticed");
    assert_eq!(keys, b"/live/b");
}
