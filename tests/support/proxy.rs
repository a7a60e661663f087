//! A loopback TCP proxy for fault tests: forwards to a target until cut.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A loopback TCP proxy that can be cut: while cut, live connections are dropped and new ones are
/// accepted but never answered (a blackhole, as a partition looks to a client).
pub(crate) struct Proxy {
    /// Where clients connect.
    pub(crate) addr: SocketAddr,
    cut: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards connections to `target`.
    pub(crate) async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = watch::channel(false);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    if *cut_rx.borrow() {
                        // Blackhole: hold the connection silently until healed, then drop it.
                        let _ = cut_rx.wait_for(|c| !*c).await;
                        return;
                    }
                    let Ok(mut upstream) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
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
