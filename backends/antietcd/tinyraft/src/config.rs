//! Engine configuration with antietcd's defaults, and its validation against the timing invariants.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::NodeId;

/// The configuration of one node's engine.
///
/// Field names follow antietcd's options (`election_timeout`, `heartbeat_timeout`,
/// `leadership_timeout`, `leader_priority`, the keys of `cluster`). Build it with [`Config::new`],
/// adjust fields, then check it with [`Config::validate`] ([`crate::Engine::new`] validates too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This node's id; must be one of `nodes`.
    pub node_id: NodeId,
    /// Every member of the cluster, this node included (static membership; see
    /// [`crate::Engine::set_nodes`]).
    pub nodes: Vec<NodeId>,
    /// E: how long a follower waits without hearing its leader before it considers the leader gone
    /// (plus a random delay below `heartbeat_timeout`), and how long after hearing a leader it refuses
    /// to vote for anyone else. antietcd's default is 5000 ms.
    pub election_timeout: Duration,
    /// H: the leader's ping period. antietcd's default is 1000 ms.
    pub heartbeat_timeout: Duration,
    /// L: the leader's lease. A leader stays leader (and is "confirmed") only while a quorum,
    /// itself included, acknowledged one of its pings sent less than L ago. Must satisfy
    /// H < L < E. antietcd's default is 3000 ms.
    pub leadership_timeout: Duration,
    /// A leader priority: a node with a higher priority takes the leadership over from a live
    /// leader with a lower one. `None` (or `Some(0)`) means no priority, as a falsy value in Node.
    pub leader_priority: Option<u64>,
}

impl Config {
    /// antietcd's default election timeout (5000 ms).
    pub const DEFAULT_ELECTION_TIMEOUT: Duration = Duration::from_millis(5000);
    /// antietcd's default heartbeat timeout (1000 ms).
    pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(1000);
    /// antietcd's default leadership timeout ((1000 + 5000) / 2 = 3000 ms).
    pub const DEFAULT_LEADERSHIP_TIMEOUT: Duration = Duration::from_millis(3000);

    /// A configuration with antietcd's default timeouts and no priority.
    pub fn new<I, S>(node_id: impl Into<NodeId>, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<NodeId>,
    {
        Self {
            node_id: node_id.into(),
            nodes: nodes.into_iter().map(Into::into).collect(),
            election_timeout: Self::DEFAULT_ELECTION_TIMEOUT,
            heartbeat_timeout: Self::DEFAULT_HEARTBEAT_TIMEOUT,
            leadership_timeout: Self::DEFAULT_LEADERSHIP_TIMEOUT,
            leader_priority: None,
        }
    }

    /// Checks the membership and the timing invariants, returning the configuration unchanged when
    /// they hold.
    ///
    /// The invariants are `0 < heartbeat_timeout < leadership_timeout < election_timeout`:
    /// the lease must be renewable by at least one ping round before it ends, and it must end
    /// before any follower that acknowledged it may vote for another node (a follower refuses other
    /// candidates for `election_timeout` after a ping), which is what makes a deposed or partitioned
    /// leader step down before a new one can be elected.
    pub fn validate(self) -> Result<Config, ConfigError> {
        if self.node_id.is_empty() {
            return Err(ConfigError::EmptyNodeId);
        }
        let mut seen = BTreeSet::new();
        for node in &self.nodes {
            if node.is_empty() {
                return Err(ConfigError::EmptyNodeId);
            }
            if !seen.insert(node.as_str()) {
                return Err(ConfigError::DuplicateNode { node: node.clone() });
            }
        }
        if !seen.contains(self.node_id.as_str()) {
            return Err(ConfigError::NotAMember { node_id: self.node_id.clone() });
        }
        if self.heartbeat_timeout.is_zero() || self.heartbeat_timeout.as_millis() == 0 {
            return Err(ConfigError::ZeroHeartbeat);
        }
        if self.leadership_timeout <= self.heartbeat_timeout {
            return Err(ConfigError::LeadershipNotAboveHeartbeat {
                leadership_ms: self.leadership_timeout.as_millis(),
                heartbeat_ms: self.heartbeat_timeout.as_millis(),
            });
        }
        if self.election_timeout <= self.leadership_timeout {
            return Err(ConfigError::ElectionNotAboveLeadership {
                election_ms: self.election_timeout.as_millis(),
                leadership_ms: self.leadership_timeout.as_millis(),
            });
        }
        Ok(self)
    }

    /// The number of votes (or acknowledgements, the sender included) that make a majority.
    pub fn quorum(&self) -> usize {
        self.nodes.len() / 2 + 1
    }
}

/// Why a [`Config`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The node id, or one of the members, is the empty string.
    #[error("node ids must not be empty")]
    EmptyNodeId,
    /// A member is listed twice.
    #[error("node {node:?} is listed twice in the cluster")]
    DuplicateNode {
        /// The repeated id.
        node: NodeId,
    },
    /// `node_id` is not one of `nodes` (antietcd's `cluster` must list every node, this one included).
    #[error("node {node_id:?} is not a member of the cluster")]
    NotAMember {
        /// This node's id.
        node_id: NodeId,
    },
    /// The heartbeat period is zero (below one millisecond).
    #[error("heartbeat_timeout must be at least 1 ms")]
    ZeroHeartbeat,
    /// The lease could not be renewed by a ping round before it ends.
    #[error(
        "leadership_timeout ({leadership_ms} ms) must be greater than heartbeat_timeout ({heartbeat_ms} ms)"
    )]
    LeadershipNotAboveHeartbeat {
        /// The configured leadership timeout in milliseconds.
        leadership_ms: u128,
        /// The configured heartbeat timeout in milliseconds.
        heartbeat_ms: u128,
    },
    /// A deposed leader could still believe it leads when the others elect a new leader.
    #[error("leadership_timeout ({leadership_ms} ms) must be smaller than election_timeout ({election_ms} ms), so a leader's lease ends before followers may elect another leader")]
    ElectionNotAboveLeadership {
        /// The configured election timeout in milliseconds.
        election_ms: u128,
        /// The configured leadership timeout in milliseconds.
        leadership_ms: u128,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn defaults_are_antietcd_and_valid() {
        let c = Config::new("a", ["a", "b", "c"]).validate().expect("defaults are valid");
        assert_eq!(c.election_timeout, ms(5000));
        assert_eq!(c.heartbeat_timeout, ms(1000));
        assert_eq!(c.leadership_timeout, ms(3000));
        assert_eq!(c.leader_priority, None);
        assert_eq!(c.quorum(), 2);
        assert_eq!(Config::new("a", ["a"]).quorum(), 1);
        assert_eq!(Config::new("a", ["a", "b"]).quorum(), 2);
        assert_eq!(Config::new("a", ["a", "b", "c", "d", "e"]).quorum(), 3);
    }

    #[test]
    fn membership_errors() {
        assert_eq!(Config::new("", ["a"]).validate(), Err(ConfigError::EmptyNodeId));
        assert_eq!(Config::new("a", ["a", ""]).validate(), Err(ConfigError::EmptyNodeId));
        assert_eq!(
            Config::new("a", ["a", "b", "a"]).validate(),
            Err(ConfigError::DuplicateNode { node: "a".into() })
        );
        assert_eq!(
            Config::new("x", ["a", "b"]).validate(),
            Err(ConfigError::NotAMember { node_id: "x".into() })
        );
    }

    #[test]
    fn timing_errors() {
        let base = Config::new("a", ["a", "b", "c"]);
        let mut c = base.clone();
        c.heartbeat_timeout = Duration::ZERO;
        assert_eq!(c.validate(), Err(ConfigError::ZeroHeartbeat));
        let mut c = base.clone();
        c.heartbeat_timeout = Duration::from_micros(300);
        assert_eq!(c.validate(), Err(ConfigError::ZeroHeartbeat));
        let mut c = base.clone();
        c.leadership_timeout = ms(1000);
        assert!(matches!(c.validate(), Err(ConfigError::LeadershipNotAboveHeartbeat { .. })));
        // Node's own default relation: L = (H + E) / 2 is valid, L = E is not (the overlap window).
        let mut c = base.clone();
        c.leadership_timeout = ms(5000);
        assert!(matches!(c.validate(), Err(ConfigError::ElectionNotAboveLeadership { .. })));
        let mut c = base;
        c.election_timeout = ms(500);
        c.heartbeat_timeout = ms(100);
        c.leadership_timeout = ms(300);
        assert!(c.validate().is_ok());
    }
}
