//! The four TinyRaft peer messages, in Node TinyRaft 1.0.1's JSON shape.
//!
//! antietcd wraps them as `{"raft": <message>}` on its peer websocket. With the default `serde`
//! feature a [`Message`] serializes to exactly what Node sends, e.g.
//! `{"type":"vote_request","term":3,"leader":"n1","priority":5}`, with `priority` (and `leader`)
//! omitted when absent. Two optional fields are ours, and Node ignores them:
//!
//! - `pre_vote: true` on `vote_request` / `vote` marks a pre-vote round (a Node node takes such a
//!   request as an ordinary vote request, which is harmless: it would have voted anyway);
//! - `round` on `ping` / `pong` numbers the leader's ping rounds so a late `pong` is credited to the
//!   round it answers, which keeps the leader's lease sound when messages are delayed. A Node
//!   follower does not echo it; its pongs are credited to the current round.

use crate::{NodeId, Term};

#[cfg(feature = "serde")]
fn is_false(b: &bool) -> bool {
    !*b
}

/// A TinyRaft peer message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "type", rename_all = "snake_case"))]
pub enum Message {
    /// A candidate asks for votes in `term` (or, with `pre_vote`, asks whether it would get them).
    VoteRequest {
        /// The term the candidate runs in.
        term: Term,
        /// The candidate (Node ignores requests without one).
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
        leader: Option<NodeId>,
        /// The candidate's leader priority, if it has one.
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
        priority: Option<u64>,
        /// A pre-vote: the receiver answers without changing its state (our extension).
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "is_false"))]
        pre_vote: bool,
    },
    /// "In `term` I vote for (or follow) `leader`": the answer to a vote request, or an unsolicited
    /// join sent to a leader learnt from a higher term.
    Vote {
        /// The sender's term.
        term: Term,
        /// Whom the sender votes for or follows in `term`, if anyone.
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
        leader: Option<NodeId>,
        /// That node's priority, when known (Node sets it when the sender votes for itself).
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
        priority: Option<u64>,
        /// A pre-vote grant for `leader` in `term` (our extension).
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "is_false"))]
        pre_vote: bool,
    },
    /// The leader's heartbeat.
    Ping {
        /// The leader's term.
        term: Term,
        /// The leader's priority, if it has one.
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
        priority: Option<u64>,
        /// The ping round (our extension).
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
        round: Option<u64>,
    },
    /// The answer to a ping: the sender's term and leader.
    Pong {
        /// The sender's term.
        term: Term,
        /// The node the sender follows, if any.
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
        leader: Option<NodeId>,
        /// The round of the ping answered (our extension).
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
        round: Option<u64>,
    },
}

impl Message {
    /// The term the message carries.
    pub fn term(&self) -> Term {
        match self {
            Message::VoteRequest { term, .. }
            | Message::Vote { term, .. }
            | Message::Ping { term, .. }
            | Message::Pong { term, .. } => *term,
        }
    }
}

#[cfg(all(test, feature = "serde"))]
mod tests {
    use super::*;

    fn json(m: &Message) -> String {
        serde_json::to_string(m).expect("serializes")
    }

    fn parse(s: &str) -> Message {
        serde_json::from_str(s).expect("parses")
    }

    #[test]
    fn node_shapes_round_trip() {
        let cases = [
            (
                r#"{"type":"vote_request","term":3,"leader":"n1","priority":5}"#,
                Message::VoteRequest {
                    term: 3,
                    leader: Some("n1".into()),
                    priority: Some(5),
                    pre_vote: false,
                },
            ),
            (
                r#"{"type":"vote_request","term":3,"leader":"n1"}"#,
                Message::VoteRequest { term: 3, leader: Some("n1".into()), priority: None, pre_vote: false },
            ),
            (
                r#"{"type":"vote","term":4,"leader":"n2"}"#,
                Message::Vote { term: 4, leader: Some("n2".into()), priority: None, pre_vote: false },
            ),
            (r#"{"type":"ping","term":4}"#, Message::Ping { term: 4, priority: None, round: None }),
            (
                r#"{"type":"ping","term":4,"priority":2}"#,
                Message::Ping { term: 4, priority: Some(2), round: None },
            ),
            (
                r#"{"type":"pong","term":4,"leader":"n2"}"#,
                Message::Pong { term: 4, leader: Some("n2".into()), round: None },
            ),
        ];
        for (text, msg) in cases {
            assert_eq!(json(&msg), text);
            assert_eq!(parse(text), msg);
        }
    }

    #[test]
    fn node_nulls_and_extra_fields_parse() {
        // Node sends `leader: null` when it has no leader, and may add fields we do not know.
        assert_eq!(
            parse(r#"{"type":"vote","term":1,"leader":null,"priority":null,"x":1}"#),
            Message::Vote { term: 1, leader: None, priority: None, pre_vote: false }
        );
        assert_eq!(
            parse(r#"{"type":"pong","term":0,"leader":null}"#),
            Message::Pong { term: 0, leader: None, round: None }
        );
    }

    #[test]
    fn extensions_are_optional_fields() {
        let m = Message::VoteRequest { term: 2, leader: Some("a".into()), priority: None, pre_vote: true };
        assert_eq!(json(&m), r#"{"type":"vote_request","term":2,"leader":"a","pre_vote":true}"#);
        let m = Message::Ping { term: 2, priority: None, round: Some(9) };
        assert_eq!(json(&m), r#"{"type":"ping","term":2,"round":9}"#);
        assert_eq!(parse(&json(&m)), m);
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bad in [
            r#"{"type":"VOTE","term":1}"#,
            r#"{"type":"vote","term":-1}"#,
            r#"{"type":"vote","term":1.5}"#,
            r#"{"type":"ping"}"#,
            r#"{"term":1}"#,
            r#"[]"#,
            r#"{"type":"pong","term":1,"leader":5}"#,
        ] {
            assert!(serde_json::from_str::<Message>(bad).is_err(), "{bad}");
        }
    }
}
