//! Randomized fault schedules over many seeds (bounded, deterministic): partitions, cuts, kills,
//! restarts with old terms, lossy and slow links. The router asserts after every event that at most
//! one node is a confirmed leader and that no term has two leaders; after the faults end and the
//! network heals, the cluster must converge on one leader followed by every node.

mod common;

use common::{ms, names, secs, Sim};
use tinyraft::{Config, RandomSource, SplitMix64};

fn pick<'a>(rng: &mut SplitMix64, items: &'a [String]) -> &'a String {
    let i = usize::try_from(rng.next_u64() % items.len() as u64).unwrap_or(0);
    &items[i]
}

/// One leader followed by every node, and no node with a higher priority left to take over.
fn settled(sim: &Sim) -> bool {
    let Some((leader, _)) = sim.converged() else { return false };
    let prio = |id: &str| sim.engine(id).config().leader_priority.unwrap_or(0);
    sim.up().iter().all(|id| prio(id) <= prio(&leader))
}

fn run_schedule(seed: u64) -> (u64, u64) {
    let mut rng = SplitMix64::new(seed);
    let n = if rng.next_u64() % 2 == 0 { 3 } else { 5 };
    let all = names(n);
    // A third of the schedules give some nodes leader priorities (takeovers under faults).
    let configs = all
        .iter()
        .map(|id| {
            let mut c = Config::new(id.clone(), all.clone());
            if seed % 3 == 0 {
                c.leader_priority = Some(rng.next_u64() % 3).filter(|p| *p > 0);
            }
            c
        })
        .collect();
    let mut sim = Sim::with_configs(configs, seed);
    sim.drop_per_mille = rng.next_u64() % 150;
    sim.delay = (ms(1), ms(1 + rng.next_u64() % 2000));
    let mut last_terms = std::collections::BTreeMap::new();
    for _ in 0..40 {
        match rng.next_u64() % 8 {
            0 => sim.isolate(pick(&mut rng, &all)),
            1 => {
                let a = pick(&mut rng, &all).clone();
                let b = pick(&mut rng, &all).clone();
                if a != b {
                    sim.cut(&a, &b);
                }
            }
            2 | 3 => sim.heal(),
            4 => {
                // Kill at most a minority so the survivors can elect.
                let id = pick(&mut rng, &all).clone();
                let down = all.iter().filter(|i| !sim.is_up(i)).count();
                if sim.is_up(&id) && down < (n - 1) / 2 {
                    last_terms.insert(id.clone(), sim.term(&id));
                    sim.kill(&id);
                }
            }
            5 => {
                let id = pick(&mut rng, &all).clone();
                if !sim.is_up(&id) {
                    // Restart with the term it had: the runtime persists every term it adopts
                    // before sending (a node restarted below a term it voted in could vote twice in
                    // that term; stale restarts are covered, fault-free, in faults.rs).
                    let t = last_terms.get(&id).copied().unwrap_or(0);
                    sim.restart(&id, t);
                }
            }
            6 => {
                let id = pick(&mut rng, &all).clone();
                if sim.is_up(&id) {
                    sim.with_engine(&id, |e, now| e.campaign(now));
                }
            }
            _ => {}
        }
        sim.run_for(ms(500 + rng.next_u64() % 5000));
    }
    // Faults end: heal, restart everything, clean links.
    sim.heal();
    for id in &all {
        if !sim.is_up(id) {
            let t = last_terms.get(id).copied().unwrap_or(0);
            sim.restart(id, t);
        }
    }
    sim.drop_per_mille = 0;
    sim.delay = (ms(1), ms(5));
    let healed = sim.now();
    // Leases granted before the heal may still lapse (a leader cut off until now has not renewed
    // its lease yet): let one leadership timeout and heartbeat pass before demanding stability.
    sim.run_for(secs(4));
    let at =
        sim.run_until(secs(60), settled).unwrap_or_else(|| panic!("seed {seed}: no convergence after heal"));
    let (leader, term) = sim.converged().expect("converged");
    // And it stays put.
    let conv_at = sim.now();
    sim.sample(secs(30), ms(200), |s| {
        if s.converged() != Some((leader.clone(), term)) && std::env::var("SEED").is_ok() {
            eprintln!("converged {leader} {term} at {conv_at:?}");
            for c in s.changes.iter().rev().take(14) {
                eprintln!("{c:?}");
            }
        }
        assert_eq!(s.converged(), Some((leader.clone(), term)), "seed {seed}")
    });
    let took = at - healed;
    assert!(took <= secs(15), "seed {seed}: convergence after heal took {took:?}");
    (sim.delivered, sim.elections() as u64)
}

#[test]
fn random_fault_schedules_keep_one_confirmed_leader_and_recover() {
    let mut delivered = 0;
    let mut elections = 0;
    // TINYRAFT_SEEDS=20000 for a longer soak (20000 seeds pass in about 20 s in release).
    let seeds = std::env::var("TINYRAFT_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    for seed in 0..seeds {
        let (d, e) = run_schedule(seed);
        delivered += d;
        elections += e;
    }
    // The schedules really exercised elections and traffic.
    assert!(elections > 120, "only {elections} elections over all seeds");
    assert!(delivered > 10_000, "only {delivered} messages delivered");
}

/// Replays one schedule: `SEED=n TINYRAFT_TRACE=1 cargo test -p tinyraft --test random replay -- --ignored --nocapture`.
#[test]
#[ignore]
fn replay_one_seed() {
    let seed: u64 = std::env::var("SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(26);
    run_schedule(seed);
}
