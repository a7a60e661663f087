//! One engine driven by hand with the messages a Node TinyRaft 1.0.1 peer sends (no `pre_vote`, no
//! `round`), checking the answers Node expects; and hostile or malformed input, which must be ignored
//! or answered, never panic.

use std::time::Duration;

use tinyraft::{Action, Config, Engine, Message, RandomSource, Role, SplitMix64, Timer};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn engine(id: &str, prio: Option<u64>) -> Engine {
    let mut c = Config::new(id, ["n1", "n2", "n3"]);
    c.leader_priority = prio;
    Engine::new(c, 0, SplitMix64::new(9)).expect("valid")
}

fn sent(actions: &[Action]) -> Vec<(String, Message)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to, message } => Some((to.clone(), message.clone())),
            _ => None,
        })
        .collect()
}

fn vote(term: u64, leader: &str) -> Message {
    Message::Vote { term, leader: Some(leader.into()), priority: None, pre_vote: false }
}

fn vote_request(term: u64, leader: &str, priority: Option<u64>) -> Message {
    Message::VoteRequest { term, leader: Some(leader.into()), priority, pre_vote: false }
}

fn ping(term: u64) -> Message {
    Message::Ping { term, priority: None, round: None }
}

/// n1 follows a Node leader n2 at `term` (pinged at `now`).
fn follower_of_n2(term: u64, now: Duration) -> Engine {
    let mut e = engine("n1", None);
    e.start(Duration::ZERO);
    let out = e.handle_message("n2", ping(term), now);
    assert_eq!(e.status().role, Role::Follower);
    assert_eq!(sent(&out), [("n2".into(), Message::Pong { term, leader: Some("n2".into()), round: None })]);
    e
}

/// n1 made leader by Node voters at term 1.
fn leader_n1() -> (Engine, Duration) {
    let mut e = engine("n1", None);
    let mut now = Duration::ZERO;
    for a in e.start(now) {
        if let Action::SetTimer { timer: Timer::Election, at } = a {
            now = at;
        }
    }
    let out = e.handle_timeout(Timer::Election, now);
    // A pre-vote request; Node peers take it as a real request and vote.
    let requests = sent(&out);
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|(_, m)| matches!(m, Message::VoteRequest { term: 1, pre_vote: true, .. })));
    let out = e.handle_message("n2", vote(1, "n1"), now + ms(1));
    assert_eq!(e.role(), Role::Leader, "a Node vote counts as grant and vote");
    assert_eq!(e.term(), 1);
    assert!(out
        .iter()
        .any(|a| matches!(a, Action::FollowersChanged { term: 1, followers } if followers.len() == 2)));
    (e, now + ms(1))
}

#[test]
fn follows_a_node_leader_and_answers_its_pings() {
    let mut e = follower_of_n2(5, ms(10));
    assert_eq!(e.leader(), Some("n2"));
    assert_eq!(e.term(), 5);
    // Node does not check a ping's term; neither do we refuse a same-term ping without a round.
    let out = e.handle_message("n2", ping(5), ms(1000));
    assert_eq!(
        sent(&out),
        [("n2".into(), Message::Pong { term: 5, leader: Some("n2".into()), round: None })]
    );
}

#[test]
fn votes_for_a_node_candidate_when_leaderless() {
    let mut e = engine("n1", None);
    e.start(Duration::ZERO);
    let out = e.handle_message("n3", vote_request(4, "n3", None), ms(5));
    // Node's reply: vote{term, leader} without priority (the leader is not us).
    assert_eq!(sent(&out), [("n3".into(), vote(4, "n3"))]);
    assert_eq!(e.status().role, Role::Candidate);
    assert_eq!(e.leader(), Some("n3"));
    assert_eq!(e.term(), 4);
    // Its ping makes us a follower.
    e.handle_message("n3", ping(4), ms(20));
    assert_eq!(e.role(), Role::Follower);
}

#[test]
fn a_stale_node_candidate_is_told_the_current_term_and_leader() {
    let mut e = follower_of_n2(5, ms(10));
    let out = e.handle_message("n3", vote_request(3, "n3", None), ms(20));
    // Node's candidate adopts term 5 and joins n2 on this answer.
    assert_eq!(sent(&out), [("n3".into(), vote(5, "n2"))]);
    assert_eq!(e.term(), 5);
}

#[test]
fn a_follower_of_a_live_leader_refuses_a_higher_term_candidate() {
    let mut e = follower_of_n2(5, ms(10));
    let out = e.handle_message("n3", vote_request(6, "n3", None), ms(100));
    assert_eq!(sent(&out), [("n3".into(), vote(5, "n2"))], "sticky: answers its current choice");
    assert_eq!((e.term(), e.leader()), (5, Some("n2")));
    // Once the leader is silent for the election timeout, the same request is granted.
    let out = e.handle_message("n3", vote_request(7, "n3", None), ms(10) + ms(5000));
    assert_eq!(sent(&out), [("n3".into(), vote(7, "n3"))]);
    assert_eq!((e.term(), e.leader()), (7, Some("n3")));
}

#[test]
fn joins_the_leader_of_a_higher_term_when_leaderless() {
    let mut e = engine("n1", None);
    e.start(Duration::ZERO);
    // Node's answer to our request: a higher term and its leader: we join it (vote sent to n3).
    let out = e.handle_message("n2", vote(7, "n3"), ms(5));
    assert_eq!(sent(&out), [("n3".into(), vote(7, "n3"))]);
    assert_eq!((e.term(), e.leader()), (7, Some("n3")));
}

#[test]
fn node_pongs_without_round_confirm_our_leadership() {
    let (mut e, now) = leader_n1();
    assert!(!e.is_confirmed_leader(now), "not confirmed before a ping round is acknowledged");
    e.handle_message("n2", Message::Pong { term: 1, leader: Some("n1".into()), round: None }, now + ms(3));
    assert!(e.is_confirmed_leader(now + ms(3)));
    assert_eq!(e.lease_end(), Some(now + ms(3000)), "lease runs from the round's start, not the pong");
    assert!(!e.is_confirmed_leader(now + ms(3000)));
    // A late Node voter joins: it becomes a follower and is pinged.
    let out = e.handle_message("n3", vote(1, "n1"), now + ms(10));
    assert!(out
        .iter()
        .any(|a| matches!(a, Action::FollowersChanged { followers, .. } if followers.len() == 3)));
    assert!(sent(&out).iter().any(|(to, m)| to == "n3" && matches!(m, Message::Ping { term: 1, .. })));
}

#[test]
fn leader_without_acknowledgements_steps_down_after_the_leadership_timeout() {
    let (mut e, now) = leader_n1();
    e.handle_message("n2", Message::Pong { term: 1, leader: Some("n1".into()), round: Some(1) }, now + ms(2));
    // Heartbeats go out but nobody answers.
    for t in [1000, 2000] {
        let out = e.handle_timeout(Timer::Heartbeat, now + ms(t));
        assert_eq!(sent(&out).len(), 2, "a ping to each peer at {t}");
    }
    e.handle_message("n3", ping(0), now + ms(2999));
    assert_eq!(e.role(), Role::Leader);
    assert!(e.is_confirmed_leader(now + ms(2999)));
    e.handle_message("n3", ping(0), now + ms(3000));
    assert_ne!(e.role(), Role::Leader, "the lease ended at the round start + 3000 ms");
    assert_eq!(e.term(), 1, "stepping down does not bump the term");
}

#[test]
fn priority_node_runs_instead_of_voting_for_a_lower_priority_candidate() {
    let mut e = engine("n1", Some(5));
    e.start(Duration::ZERO);
    let out = e.handle_message("n2", vote_request(3, "n2", Some(1)), ms(5));
    // Node: term = 3, then start() at 4; the answer carries our term, ourselves and our priority.
    assert_eq!((e.term(), e.role(), e.leader()), (4, Role::Candidate, Some("n1")));
    let to_n2: Vec<_> = sent(&out).into_iter().filter(|(to, _)| to == "n2").map(|(_, m)| m).collect();
    assert!(to_n2.contains(&Message::Vote {
        term: 4,
        leader: Some("n1".into()),
        priority: Some(5),
        pre_vote: false
    }));
    assert!(to_n2.contains(&vote_request(4, "n1", Some(5))));
}

#[test]
fn our_leader_abdicates_to_a_higher_priority_node_and_redirects_its_followers() {
    let (mut e, now) = leader_n1();
    let out = e.handle_message("n3", vote_request(2, "n3", Some(9)), now + ms(5));
    assert!(!e.is_confirmed_leader(now + ms(5)));
    assert_eq!((e.term(), e.leader()), (2, Some("n3")));
    let msgs = sent(&out);
    assert!(msgs.contains(&("n3".into(), vote(2, "n3"))));
    assert!(msgs.contains(&(
        "n2".into(),
        Message::Vote { term: 2, leader: Some("n3".into()), priority: Some(9), pre_vote: false }
    )));
}

#[test]
fn hostile_and_malformed_input_is_ignored_or_answered() {
    let mut e = follower_of_n2(5, ms(10));
    let before = e.status();
    let t = ms(20);
    // Unknown sender, our own id, absurd terms, a request on behalf of someone else.
    assert!(e.handle_message("mallory", vote_request(99, "mallory", Some(100)), t).is_empty());
    assert!(e.handle_message("n1", ping(99), t).is_empty());
    assert!(e.handle_message("n3", ping(u64::MAX), t).is_empty());
    assert!(e.handle_message("n3", vote_request(u64::MAX - 1, "n3", None), t).is_empty());
    assert!(e.handle_message("n3", vote_request(99, "n2", None), t).is_empty());
    // A vote for an unknown node at a higher term does not make us follow it.
    e.handle_message("n3", vote(50, "mallory"), t);
    assert_eq!(e.status(), before);
    // Timers that are not due, or not armed, are ignored.
    assert!(e.handle_timeout(Timer::Heartbeat, t).is_empty());
    assert!(e.handle_timeout(Timer::Election, t).is_empty());
    // A query without a candidate is answered with our state.
    let out = e.handle_message(
        "n3",
        Message::VoteRequest { term: 0, leader: None, priority: None, pre_vote: false },
        t,
    );
    assert_eq!(sent(&out), [("n3".into(), vote(5, "n2"))]);
}

#[test]
fn random_message_storm_never_panics_and_terms_never_go_back() {
    let ids = ["n1", "n2", "n3", "x", ""];
    for seed in 0..50 {
        let mut rng = SplitMix64::new(seed);
        let mut e = engine("n1", if seed % 2 == 0 { Some(3) } else { None });
        let mut now = Duration::ZERO;
        e.start(now);
        let mut last_term = 0;
        for _ in 0..2000 {
            now += ms(rng.next_u64() % 700);
            let pick =
                |rng: &mut SplitMix64| ids[usize::try_from(rng.next_u64() % 5).unwrap_or(0)].to_owned();
            let term = match rng.next_u64() % 4 {
                0 => u64::MAX - rng.next_u64() % 3,
                _ => e.term().saturating_sub(1) + rng.next_u64() % 3,
            };
            let leader = (rng.next_u64() % 4 != 0).then(|| pick(&mut rng));
            let priority = (rng.next_u64() % 2 == 0).then(|| rng.next_u64() % 10);
            let flag = rng.next_u64() % 2 == 0;
            let round = (rng.next_u64() % 2 == 0).then(|| rng.next_u64() % 5);
            let msg = match rng.next_u64() % 4 {
                0 => Message::VoteRequest { term, leader, priority, pre_vote: flag },
                1 => Message::Vote { term, leader, priority, pre_vote: flag },
                2 => Message::Ping { term, priority, round },
                _ => Message::Pong { term, leader, round },
            };
            let from = pick(&mut rng);
            let out = if rng.next_u64() % 5 == 0 {
                let timer = if rng.next_u64() % 2 == 0 { Timer::Election } else { Timer::Heartbeat };
                e.handle_timeout(timer, now)
            } else {
                e.handle_message(&from, msg, now)
            };
            for a in &out {
                if let Action::Send { to, .. } = a {
                    assert!(["n2", "n3"].contains(&to.as_str()), "sent to {to:?}");
                }
            }
            assert!(e.term() >= last_term);
            assert!(e.term() < u64::MAX / 2 + 2);
            last_term = e.term();
        }
    }
}

#[test]
fn a_split_vote_is_detected_and_retried_within_a_heartbeat() {
    let mut e = engine("n1", None);
    let mut now = Duration::ZERO;
    for a in e.start(now) {
        if let Action::SetTimer { timer: Timer::Election, at } = a {
            now = at;
        }
    }
    e.handle_timeout(Timer::Election, now);
    let grant = Message::Vote { term: 1, leader: Some("n1".into()), priority: None, pre_vote: true };
    e.handle_message("n2", grant, now);
    assert_eq!((e.role(), e.term(), e.leader()), (Role::Candidate, 1, Some("n1")), "running at term 1");
    // n2 and n3 each voted for themselves: 1 + 1 + 1, nobody can reach 2.
    let out = e.handle_message("n2", vote(1, "n2"), now + ms(1));
    assert!(!out.iter().any(|a| matches!(a, Action::SetTimer { .. })), "n3 may still vote for n2");
    let out = e.handle_message("n3", vote(1, "n3"), now + ms(2));
    let retry = out.iter().find_map(|a| match a {
        Action::SetTimer { timer: Timer::Election, at } => Some(*at),
        _ => None,
    });
    let retry = retry.expect("voting failed: the election timer is re-armed");
    assert!(retry < now + ms(2) + ms(1000), "retry at {retry:?}");
}
