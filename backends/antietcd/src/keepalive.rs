//! The keepalive rule of every websocket the server holds (client watch sockets and peer links), as in
//! antietcd: each interval, a socket that sent nothing since the previous ping is closed, otherwise it is
//! pinged again.

use std::time::Duration;
use tokio::time::{Interval, MissedTickBehavior};

/// Keepalive state of one socket.
#[derive(Debug)]
pub(crate) struct Keepalive {
    /// `None` when keepalive is off (interval 0).
    ticker: Option<Interval>,
    heard: bool,
}

/// What to do when the interval elapses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// The peer was heard from: ping it again.
    Ping,
    /// Nothing since the last ping: the socket is dead, close it.
    Dead,
}

impl Keepalive {
    /// Starts the interval (the first ping goes out one interval from now).
    pub(crate) fn new(interval: Duration) -> Keepalive {
        let ticker = (!interval.is_zero()).then(|| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        Keepalive { ticker, heard: true }
    }

    /// Something (a message, a ping or a pong) arrived from the peer.
    pub(crate) fn heard(&mut self) {
        self.heard = true;
    }

    /// Waits for the next interval; never completes when keepalive is off.
    pub(crate) async fn due(&mut self) -> Due {
        match &mut self.ticker {
            None => std::future::pending().await,
            Some(t) => {
                t.tick().await;
                if std::mem::replace(&mut self.heard, false) {
                    Due::Ping
                } else {
                    Due::Dead
                }
            }
        }
    }
}
