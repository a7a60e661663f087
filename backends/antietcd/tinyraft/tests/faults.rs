//! Elections under faults: leader killed, one node of three down for a long time (no flapping),
//! isolated leader, partitioned or restarted follower rejoining (pre-vote), asymmetric cut, 1/2
//! split and heal, lossy and slow links. The router checks after every event that at most one node
//! believes it is a confirmed leader and that each term has at most one leader.

mod common;

use common::{ms, names, secs, Sim};
use tinyraft::Role;

fn converge(sim: &mut Sim) -> (String, u64) {
    sim.run_until(secs(20), |s| s.converged().is_some()).expect("cluster converges");
    sim.converged().expect("converged")
}

fn a_follower(sim: &Sim, leader: &str) -> String {
    sim.up().into_iter().find(|n| n != leader).expect("a follower")
}

#[test]
fn leader_killed_new_leader_within_election_bounds() {
    for seed in 0..20 {
        let mut sim = Sim::new(3, seed);
        let (old, term) = converge(&mut sim);
        sim.run_for(ms(seed * 37 % 1000));
        let killed_at = sim.now();
        sim.kill(&old);
        let at = sim
            .run_until(secs(30), |s| s.converged().is_some())
            .unwrap_or_else(|| panic!("seed {seed}: no new leader"));
        let (new, new_term) = sim.converged().expect("converged");
        assert_ne!(new, old);
        assert!(new_term > term);
        // Followers give up on the leader E (5 s) after its last ping, plus < H of randomness, then
        // one pre-vote and one vote round; a retry costs at most 2 H more.
        let took = at - killed_at;
        assert!(
            took >= secs(4),
            "seed {seed}: elected after {took:?}, before the leader could be presumed gone"
        );
        assert!(took <= secs(8), "seed {seed}: failover took {took:?}");
    }
}

#[test]
fn one_of_three_down_for_ten_minutes_keeps_term_and_leader() {
    let mut sim = Sim::new(3, 11);
    let (leader, term) = converge(&mut sim);
    let follower = a_follower(&sim, &leader);
    sim.kill(&follower);
    let killed = sim.now();
    sim.sample(secs(600), ms(100), |s| {
        assert_eq!(s.leader().as_ref(), Some(&leader), "leader lost its confirmation at {:?}", s.now());
    });
    assert_eq!(sim.term(&leader), term, "no re-election with one node down (Node flaps every 3-8 s)");
    for id in sim.up() {
        assert!(sim.changes_since(&id, killed).is_empty(), "{id} changed state");
    }
    // The dead follower was dropped from the followers (antietcd stops replicating to it) once.
    let dropped: Vec<_> = sim.followers_changes.iter().filter(|c| c.0 > killed).collect();
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert!(!dropped[0].3.contains(&follower));
}

#[test]
fn one_of_three_down_from_the_start_elects_and_never_flaps() {
    let mut sim = Sim::with_down(3, 12, &["n3"]);
    let (leader, term) = converge(&mut sim);
    assert_eq!(sim.engine(&leader).followers().map(|f| f.len()), Some(2));
    sim.sample(secs(600), ms(100), |s| assert_eq!(s.leader().as_ref(), Some(&leader)));
    assert_eq!(sim.term(&leader), term);
    assert_eq!(sim.elections(), 1);
}

#[test]
fn two_node_cluster_is_stable_while_both_run() {
    let mut sim = Sim::new(2, 13);
    let (leader, term) = converge(&mut sim);
    sim.sample(secs(300), ms(100), |s| assert_eq!(s.leader().as_ref(), Some(&leader)));
    assert_eq!(sim.term(&leader), term);
}

#[test]
fn isolated_leader_steps_down_before_the_majority_elects() {
    for seed in 0..20 {
        let mut sim = Sim::new(3, 100 + seed);
        let (old, term) = converge(&mut sim);
        sim.run_for(ms(seed * 53 % 1000));
        let cut_at = sim.now();
        sim.isolate(&old);
        // The old leader loses its confirmation within L (3 s) of its last confirmed round...
        let lost = sim
            .run_until(secs(10), |s| !s.engine(&old).is_confirmed_leader(s.now()))
            .expect("isolated leader loses confirmation");
        assert!(lost - cut_at <= ms(3000), "seed {seed}: confirmed for {:?} after isolation", lost - cut_at);
        // ...and the majority elects someone else only later.
        let elected = sim
            .run_until(secs(20), |s| s.leader().is_some_and(|l| l != old))
            .unwrap_or_else(|| panic!("seed {seed}: majority did not elect"));
        assert!(elected > lost, "seed {seed}: new leader at {elected:?} before old stepped down at {lost:?}");
        assert_ne!(sim.status(&old).role, Role::Leader, "seed {seed}: old leader still in Leader role");
        let new = sim.leader().expect("new leader");
        assert!(sim.term(&new) > term);
        // The isolated node did not inflate its term while cut off (pre-vote only).
        assert_eq!(sim.term(&old), term, "seed {seed}");
        // Heal: the old leader follows the new one; nobody is disturbed.
        let new_term = sim.term(&new);
        sim.heal();
        sim.run_until(secs(5), |s| s.converged().is_some()).expect("converges after heal");
        assert_eq!(sim.converged(), Some((new.clone(), new_term)), "seed {seed}");
        assert_eq!(sim.status(&old).leader.as_ref(), Some(&new));
    }
}

#[test]
fn partitioned_follower_rejoins_without_disturbing_the_leader() {
    for n in [3, 5] {
        let mut sim = Sim::new(n, 200 + n as u64);
        let (leader, term) = converge(&mut sim);
        let follower = a_follower(&sim, &leader);
        sim.isolate(&follower);
        sim.sample(secs(120), ms(100), |s| assert_eq!(s.leader().as_ref(), Some(&leader)));
        assert_eq!(sim.status(&follower).role, Role::Candidate, "the isolated node looks for a quorum");
        assert_eq!(sim.term(&follower), term, "pre-vote: no term inflation while partitioned");
        sim.heal();
        let healed = sim.now();
        let at = sim.run_until(secs(10), |s| s.converged().is_some()).expect("rejoins");
        assert!(at - healed <= secs(2), "rejoined after {:?}", at - healed);
        assert_eq!(sim.converged(), Some((leader.clone(), term)), "same leader, same term");
        assert!(sim.changes_since(&leader, healed).is_empty(), "the leader was not disturbed");
        sim.run_for(ms(50)); // its pong reaches the leader
        let followers = sim.engine(&leader).followers().cloned().expect("followers");
        assert!(followers.contains(&follower), "the rejoined node is a follower again (resync trigger)");
    }
}

#[test]
fn restarted_node_with_stale_or_current_term_does_not_disturb() {
    for persisted in [0, 1, 2] {
        let mut sim = Sim::new(3, 300 + persisted);
        let (leader, term) = converge(&mut sim);
        // Push the cluster a few terms up so that `persisted` is stale, current or equal.
        for _ in 0..2 {
            sim.with_engine(&leader, |e, now| e.campaign(now));
            sim.run_until(secs(5), |s| s.converged().is_some_and(|(_, t)| t > s.term(&leader) - 1))
                .expect("re-elected");
            sim.run_for(secs(1));
        }
        let (leader, term) = sim.converged().map_or((leader, term), |c| c);
        let follower = a_follower(&sim, &leader);
        sim.kill(&follower);
        sim.run_for(secs(10));
        let restart_at = sim.now();
        sim.restart(&follower, persisted.min(term));
        let at = sim.run_until(secs(10), |s| s.converged().is_some()).expect("rejoins");
        assert!(at - restart_at <= secs(2), "rejoined after {:?}", at - restart_at);
        assert_eq!(sim.converged(), Some((leader.clone(), term)), "persisted {persisted}");
        sim.sample(secs(30), ms(100), |s| assert_eq!(s.leader().as_ref(), Some(&leader)));
        assert!(sim.changes_since(&leader, restart_at).is_empty(), "the leader was not disturbed");
    }
}

#[test]
fn restarted_node_with_a_higher_term_is_absorbed_by_one_re_election() {
    let mut sim = Sim::new(3, 400);
    let (leader, term) = converge(&mut sim);
    let follower = a_follower(&sim, &leader);
    sim.kill(&follower);
    sim.run_for(secs(2));
    // As a Node node that ran elections on its own: its term is ahead of the cluster's.
    sim.restart(&follower, term + 10);
    sim.run_until(secs(10), |s| s.converged().is_some_and(|(_, t)| t > term + 10)).expect("absorbed");
    let (again, new_term) = sim.converged().expect("converged");
    assert_eq!(again, leader, "the healthy leader keeps the leadership");
    assert_eq!(new_term, term + 11);
}

#[test]
fn one_way_link_loss_between_leader_and_follower_does_not_flap() {
    let mut sim = Sim::new(3, 500);
    let (leader, term) = converge(&mut sim);
    let follower = a_follower(&sim, &leader);
    sim.cut(&leader, &follower);
    sim.sample(secs(300), ms(100), |s| assert_eq!(s.leader().as_ref(), Some(&leader)));
    assert_eq!(sim.term(&leader), term, "the cut-off follower cannot win a pre-vote against a live leader");
    assert_eq!(sim.term(&follower), term);
    sim.heal();
    sim.run_until(secs(5), |s| s.converged().is_some()).expect("converges");
    assert_eq!(sim.converged(), Some((leader, term)));
}

#[test]
fn split_one_two_and_heal() {
    for seed in 0..10 {
        let mut sim = Sim::new(3, 600 + seed);
        let (old, term) = converge(&mut sim);
        let majority: Vec<String> = names(3).into_iter().filter(|n| *n != old).collect();
        sim.split(&[old.as_str()]);
        sim.run_until(secs(20), |s| s.leader().is_some_and(|l| l != old)).expect("majority elects");
        let new = sim.leader().expect("leader");
        assert!(majority.contains(&new));
        sim.sample(secs(60), ms(100), |s| assert_eq!(s.leader().as_ref(), Some(&new)));
        let new_term = sim.term(&new);
        assert!(new_term > term);
        assert_eq!(sim.term(&old), term, "the minority does not inflate its term");
        sim.heal();
        sim.run_until(secs(5), |s| s.converged().is_some()).expect("heals");
        assert_eq!(sim.converged(), Some((new, new_term)), "seed {seed}: healing changes nothing");
    }
}

#[test]
fn five_nodes_two_down_keep_serving_three_down_stop() {
    let mut sim = Sim::new(5, 700);
    let (leader, term) = converge(&mut sim);
    let others: Vec<String> = names(5).into_iter().filter(|n| *n != leader).collect();
    sim.kill(&others[0]);
    sim.kill(&others[1]);
    sim.sample(secs(120), ms(100), |s| assert_eq!(s.leader().as_ref(), Some(&leader)));
    assert_eq!(sim.term(&leader), term);
    sim.kill(&others[2]);
    let t = sim.now();
    sim.run_for(secs(4));
    assert!(sim.confirmed_leaders().is_empty(), "a minority must not stay confirmed");
    assert_ne!(sim.status(&leader).role, Role::Leader);
    sim.run_for(secs(60));
    assert!(sim.role_leaders().is_empty(), "no leader without a quorum after {:?}", sim.now() - t);
}

#[test]
fn lossy_slow_links_still_elect_a_single_leader() {
    for seed in 0..10 {
        let mut sim = Sim::new(5, 800 + seed);
        sim.drop_per_mille = 200;
        sim.delay = (ms(1), ms(1500));
        // Late pongs are credited to the round they answer, so the invariants hold.
        sim.run_until(secs(120), |s| s.leader().is_some())
            .unwrap_or_else(|| panic!("seed {seed}: no leader"));
        sim.run_for(secs(120));
        sim.drop_per_mille = 0;
        sim.delay = (ms(1), ms(5));
        sim.run_until(secs(30), |s| s.converged().is_some())
            .unwrap_or_else(|| panic!("seed {seed}: no convergence"));
    }
}
