//! Simulator scenarios as assertions.

use ova_scheduler::VIEW_MARGIN;
use ova_scheduler::sim::{Report, Sim, SimConfig, collusion_wrong_accept, scenario};

fn run(name: &str, seed: u64) -> Report {
    let s = scenario(name).expect("scenario exists");
    Sim::new((s.config)(seed)).run(name)
}

fn run_cfg(name: &str, cfg: SimConfig) -> Report {
    Sim::new(cfg).run(name)
}

fn all_verified(r: &Report) {
    assert_eq!(r.verified, r.units, "{}", r.render());
    assert_eq!(r.failed, 0, "{}", r.render());
    assert_eq!(r.wrong_accepted, 0, "{}", r.render());
}

#[test]
fn same_seed_same_run_byte_for_byte() {
    let cfg = |seed| SimConfig {
        peers: 60,
        units: 600,
        churn_events: 10,
        churn_window: (45_000, 200_000),
        loss: 0.02,
        liars: 0.1,
        seed,
        ..SimConfig::default()
    };
    let a = run_cfg("det", cfg(7)).render();
    let b = run_cfg("det", cfg(7)).render();
    let c = run_cfg("det", cfg(8)).render();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn threads_do_not_change_a_run() {
    // Every kind of event the simulator knows, so each path into a batch is taken: loss,
    // liars (results drawn from the random stream), decliners, churn, crashes, a partition,
    // owners taking their cores back, and a submitter that leaves and returns. Short units
    // and short links crowd many events into each millisecond, so batches are large; with
    // longer links (a longer lookahead window) a batch holds several calls of one peer, and
    // timers that the peer's earlier calls in it replaced.
    for latency_ms in [(2, 8), (20, 40)] {
        same_run_on_more_threads(latency_ms);
    }
}

fn same_run_on_more_threads(latency_ms: (u64, u64)) {
    let cfg = SimConfig {
        peers: 120,
        units: 2_000,
        unit_cost_ms: (20, 200),
        latency_ms,
        churn_events: 100,
        churn_window: (45_000, 200_000),
        loss: 0.02,
        liars: 0.1,
        decliners: 0.05,
        crash_stop: 0.2,
        partition: Some((60_000, 180_000, 0.3)),
        owners: Some((0.5, 5_000)),
        submitter_offline: Some((70_000, 150_000)),
        seed: 5,
        ..SimConfig::default()
    };
    let one = run_cfg("threads", cfg.clone());
    for threads in [2, 3] {
        let mut sim = Sim::new(cfg.clone());
        sim.threads = threads;
        let r = sim.run("threads");
        assert_eq!(r.render(), one.render(), "{threads} threads");
    }
    assert!(one.events > 10_000, "{}", one.render());
}

#[test]
fn all_units_verified_under_churn() {
    let r = run("churn", 1);
    all_verified(&r);
    assert!(r.peers_total > r.peers, "peers joined during the run");
}

/// A view that keeps only the placement window's neighbours on each side misses a live
/// candidate whenever a crashed or not yet heard neighbour holds a place in it, and under
/// churn the peers then disagreed about who runs the units at its edge: the `churn`
/// scenario wasted 0.27–0.55 runs per unit above the quorum instead of 0.01. A view keeps
/// [`VIEW_MARGIN`] more, whatever the configuration says.
#[test]
fn a_view_as_narrow_as_the_window_is_widened() {
    let mut cfg = (scenario("churn").expect("scenario exists").config)(1);
    cfg.peer.view_side = cfg.peer.window;
    assert_eq!(cfg.peer.view_side(), cfg.peer.window + VIEW_MARGIN);
    let r = run_cfg("narrow-view", cfg);
    all_verified(&r);
    assert!(r.waste < 0.05, "{}", r.render());
}

#[test]
fn all_units_verified_after_a_partition_heals() {
    all_verified(&run("partition", 2));
}

#[test]
fn crash_stop_and_slow_peers() {
    let r = run("faults", 3);
    assert_eq!(r.verified + r.failed, r.units, "{}", r.render());
    assert_eq!(r.wrong_accepted, 0);
}

#[test]
fn twenty_percent_liars_never_win_at_quorum_two() {
    let r = run("liars", 4);
    assert!(r.units >= 10_000);
    assert_eq!(r.wrong_accepted, 0, "{}", r.render());
    assert_eq!(r.unresolved, 0, "{}", r.render());
    assert_eq!(r.failed_without_reason, 0);
    // With max 6 replicas, failing needs ≥ 5 liars among 6 (or 4 + no honest pair): rare.
    assert!(r.failed * 100 <= r.units, "{}", r.render());
}

#[test]
fn collusion_theory_formula() {
    // Quorum 2, at most 3 replicas: both first replicas collude, or one does and so does the
    // tie-breaker.
    for c in [0.0, 0.05, 0.1, 0.3, 1.0] {
        let p = collusion_wrong_accept(c, 2, 3);
        assert!((p - (c * c + 2.0 * c * c * (1.0 - c))).abs() < 1e-12, "c={c}: {p}");
    }
    // No tie-breaker: both must collude. Quorum 1: any colluder wins.
    assert!((collusion_wrong_accept(0.1, 2, 2) - 0.01).abs() < 1e-12);
    assert!((collusion_wrong_accept(0.1, 1, 1) - 0.1).abs() < 1e-12);
    // Quorum 3 of 5: the colluders' third commit comes 3rd, 4th or 5th.
    let c: f64 = 0.2;
    let want = c.powi(3) * (1.0 + 3.0 * (1.0 - c) + 6.0 * (1.0 - c).powi(2));
    assert!((collusion_wrong_accept(c, 3, 5) - want).abs() < 1e-12);
    // More replicas allowed: colluders never gain (honest peers get more chances too).
    assert!(collusion_wrong_accept(0.1, 2, 4) >= collusion_wrong_accept(0.1, 2, 3));
}

#[test]
fn colluders_wrong_accept_rate_is_bounded_by_theory() {
    // Theory (see `CollusionTheory`): placement is weighted by spare cores, so a replica is a
    // colluder with probability `c` = the colluders' share of their class's cores, and at
    // quorum 2 with at most 3 replicas a wrong result wins with probability c² + 2c²(1-c).
    // The scenario makes 10 % of the peers colluders; their share of the cores varies with
    // the seed (cores per peer are 1-8), and so does the rate: it follows the cores, not the
    // peer count (seed 1: 12 % of the cores, 4.8 % wrongly accepted, against 2.8 % predicted
    // from the peer share).
    let mut wrong = 0usize;
    let mut verified = 0usize;
    let mut predicted = 0.0;
    for seed in 1..=5 {
        let r = run("colluders", seed);
        let t = r.collusion.expect("the scenario has colluders");
        assert_eq!(r.unresolved, 0, "{}", r.render());
        assert!((t.peer_share - 0.1).abs() < 0.01, "{}", r.render());
        let n = r.verified.max(1) as f64;
        let p = t.predicted_rate;
        let rate = r.wrong_accepted as f64 / n;
        // Per seed: three standard deviations of sampling (units are placed independently
        // given the peers), plus 25 % for how far one small network's placement strays from
        // exact core shares (a colluder's load also depends on its ring neighbours; seeds
        // 1-10 measured 0.43x to 1.25x the prediction).
        let sigma = (p * (1.0 - p) / n).sqrt();
        let bound = 1.25 * p + 3.0 * sigma;
        assert!(rate <= bound, "seed {seed}: rate {rate:.4} above {bound:.4}: {}", r.render());
        wrong += r.wrong_accepted;
        verified += r.verified;
        predicted += p * r.verified as f64;
    }
    // Over the seeds the placement errors average out: the pooled rate must stay within
    // three standard deviations of sampling of the pooled prediction (which is slightly high:
    // replicas of one unit are distinct peers, so two colluders on a unit are a little rarer
    // than independent draws make them). And the colluders must get through at about the
    // predicted rate: a bound that holds only because the attack never works proves nothing.
    let n = verified.max(1) as f64;
    let p = predicted / n;
    let rate = wrong as f64 / n;
    let sigma = (p * (1.0 - p) / n).sqrt();
    assert!(rate <= p + 3.0 * sigma, "pooled rate {rate:.4} above theory {p:.4} + 3σ");
    assert!(rate >= p / 2.0, "pooled rate {rate:.4} implausibly far below theory {p:.4}");
}

#[test]
fn mixed_architectures_compare_within_a_class() {
    all_verified(&run("mixed-arch", 6));
}

#[test]
fn job_survives_its_submitter_going_offline() {
    let r = run("submitter-offline", 7);
    all_verified(&r);
    assert_eq!(r.submitter_verified as usize, r.units, "the submitter caught up on return");
}

#[test]
fn failed_units_always_carry_a_reason() {
    // Half the peers lie and only 3 replicas are allowed: many units must fail.
    let r = run_cfg(
        "hostile",
        SimConfig {
            peers: 60,
            units: 800,
            liars: 0.5,
            replication: ova_jobs::Replication { quorum: 2, max_replicas: 3, result_copies: 1 },
            ..SimConfig::default()
        },
    );
    assert!(r.failed > 0, "{}", r.render());
    assert_eq!(r.failed_without_reason, 0);
    assert!(r.fail_reasons.iter().all(|s| s.contains("no quorum")));
    assert_eq!(r.wrong_accepted, 0);
    assert_eq!(r.unresolved, 0, "{}", r.render());
}

#[test]
fn units_declined_by_allow_lists_are_placed_elsewhere() {
    // A quarter of the peers decline every unit (their allow-lists exclude the submitter).
    // Every unit must still be verified, in a makespan close to a network without those
    // peers — not held up by lease lapses (the stall of issue #6 left units unresolved here),
    // nor by a decliner's old reservation heard again after a full lease table dropped its
    // give-up (3.18x here; 1.89x since give-ups are bounded apart from the leases, at most
    // 2.31x over seeds 1-40).
    let r = run("allow-lists", 8);
    all_verified(&r);
    let ratio = r.makespan_ms as f64 / r.ideal_ms.max(1) as f64;
    assert!(ratio < 2.6, "makespan {ratio:.2}x ideal: {}", r.render());
}

/// Volunteers' owners take their cores back and give them again (half the peers switch
/// between all, half or none of their cores every ~2 minutes): every unit is still verified,
/// and promptly. A peer whose cores shrink hands back the units queued beyond what it can
/// run, so they do not wait for its owner to finish: without that, seeds 1–3 took 2.8–3.0×
/// the ideal; with it 1.44–1.59× (the ideal counts every core all the time).
#[test]
fn owners_taking_their_cores_back_delay_no_unit_for_long() {
    for seed in 1..=3 {
        let r = run("owners", seed);
        all_verified(&r);
        let ratio = r.makespan_ms as f64 / r.ideal_ms.max(1) as f64;
        assert!(ratio < 2.0, "makespan {ratio:.2}x ideal: {}", r.render());
        assert!(r.waste < 0.05, "{}", r.render());
    }
}

/// Claims held for half a second (ova-net's setting, see `Config::claim_hold_ms`) lose no
/// unit, and cost no more waste or time than claims sent at once, under churn, and under loss
/// and a partition that heals. Compared over twelve seeds each: single runs of these scenarios
/// swing more than the difference (the partition's waste ranged 0.50–1.29 over eight seeds
/// either way; churn's makespans 132–168 s over twelve). Over four, held claims once came out
/// 11.6 % slower under churn (seeds 1–4, after a change elsewhere moved every run), and 4.6 %
/// over these twelve. These scenarios' units run 20–60 s, so nearly every held claim still goes
/// out, half a second late; the claims it saves are those of short units (see the peer tests).
#[test]
fn held_claims_lose_no_unit_under_churn_and_partitions() {
    for name in ["churn", "partition"] {
        let s = scenario(name).expect("scenario exists");
        let (mut at_once, mut held) = ((0.0, 0), (0.0, 0));
        for seed in 1..=12 {
            let a = Sim::new((s.config)(seed)).run(name);
            let mut cfg = (s.config)(seed);
            cfg.peer.claim_hold_ms = 500;
            let h = Sim::new(cfg).run(name);
            all_verified(&a);
            all_verified(&h);
            at_once = (at_once.0 + a.waste, at_once.1 + a.makespan_ms);
            held = (held.0 + h.waste, held.1 + h.makespan_ms);
        }
        let msg = format!("{name}: at once (waste, makespan) {at_once:?}, held {held:?}");
        assert!(held.0 <= at_once.0 * 1.2 + 0.02, "{msg}");
        assert!(held.1 * 10 <= at_once.1 * 11, "{msg}");
    }
}
