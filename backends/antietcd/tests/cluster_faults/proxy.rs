//! A loopback TCP proxy that can be cut, put on each directed peer link of the cluster so that the test
//! can partition nodes from each other while clients still reach every node directly. Adapted from the
//! workspace's `tests/support/proxy.rs`.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards connections to a target until cut. While cut, live connections are frozen and new ones are
/// accepted but never answered (a blackhole: what a partition looks like to both ends, which have to find
/// out through their own timeouts and keepalives); on heal the frozen ones are closed.
pub(crate) struct Proxy {
    /// Where the dialing node connects.
    pub(crate) addr: SocketAddr,
    cut: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards to `target` (which may be down: the connection is then closed,
    /// as a refused connection would be).
    pub(crate) async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = watch::channel(false);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    if *cut_rx.borrow() {
                        // Held silently until healed, then dropped.
                        let _ = cut_rx.wait_for(|c| !*c).await;
                        return;
                    }
                    let Ok(mut upstream) = TcpStream::connect(target).await else { return };
                    let frozen = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => false,
                        r = cut_rx.wait_for(|c| *c) => r.is_ok(),
                    };
                    if frozen {
                        // Frozen, not closed: no FIN, no RST, as in a real partition. Dropped on heal.
                        let _ = cut_rx.wait_for(|c| !*c).await;
                    }
                    drop((client, upstream));
                });
            }
        });
        Proxy { addr, cut, accept }
    }

    /// Cuts (true) or heals (false) the link.
    pub(crate) fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
