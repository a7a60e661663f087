//! TinyRaft: leader election without a log, as a pure state machine.
//!
//! This is the election engine of antietcd's clustering, wire-compatible with Node TinyRaft 1.0.1 as
//! antietcd 1.3.1 uses it (the `vote_request`, `vote`, `ping` and `pong` messages), with the faults of
//! that implementation fixed: the leader counts itself in its quorum, elections go through a pre-vote
//! so a node that rejoins or restarts does not depose a healthy leader, followers that hear from a
//! leader refuse other candidates for an election timeout ("stickiness"), and a leader holds a lease
//! that ends strictly before any other node can be elected, so [`Engine::is_confirmed_leader`] can
//! gate linearizable reads.
//!
//! The engine does no I/O and reads no clock, in the style of openraft's engine and raft-rs's
//! `RawNode`:
//!
//! ```text
//!                     runtime                      Engine
//!  peer socket  ----> handle_message(from, msg, now) --+
//!  timer fired  ----> handle_timeout(timer, now) ------+--> Vec<Action>
//!  peer connect ----> peer_connected(peer, now) -------+      Send { to, message }       -> socket
//!  write failed ----> campaign(now) -------------------+      SetTimer / CancelTimer      -> timers
//!                                                             StateChanged / FollowersChanged
//! ```
//!
//! `now` is a monotonic instant expressed as a [`Duration`](std::time::Duration) since an origin the
//! runtime chooses; randomness comes from an injected [`RandomSource`], so a simulation is fully
//! deterministic. See the crate's README for the algorithm, the timing invariants and a sketch of a
//! tokio driver loop.
//!
//! ```
//! use std::time::Duration;
//! use tinyraft::{Action, Config, Engine, SplitMix64};
//!
//! // A single-node cluster elects itself at its first timer.
//! let config = Config::new("n1", ["n1"]);
//! let mut engine = Engine::new(config, 0, SplitMix64::new(7)).expect("valid config");
//! let mut at = None;
//! for action in engine.start(Duration::ZERO) {
//!     if let Action::SetTimer { timer, at: when } = action {
//!         at = Some((timer, when));
//!     }
//! }
//! let (timer, when) = at.expect("an election timer is armed");
//! engine.handle_timeout(timer, when);
//! assert!(engine.is_confirmed_leader(when));
//! ```

mod config;
mod engine;
mod message;
mod rng;

pub use config::{Config, ConfigError};
pub use engine::{Action, Engine, Role, Status, Timer};
pub use message::Message;
pub use rng::{RandomSource, SplitMix64};

/// A node's identifier: the keys of antietcd's `cluster` option (strings on the wire).
pub type NodeId = String;

/// A TinyRaft term: elections happen in strictly increasing terms and at most one leader is elected
/// per term.
pub type Term = u64;
