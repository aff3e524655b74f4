//! Named scenarios for the simulator.

use ova_jobs::Replication;

use super::SimConfig;

/// A named scenario.
pub struct Scenario {
    /// Name, for `--scenario`.
    pub name: &'static str,
    /// What it shows.
    pub about: &'static str,
    /// Its configuration for a seed.
    pub config: fn(u64) -> SimConfig,
}

const MIN: u64 = 60_000;

fn base(seed: u64) -> SimConfig {
    SimConfig { seed, ..SimConfig::default() }
}

/// All scenarios.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "basic",
        about: "150 peers, 3000 units, no faults",
        config: |s| SimConfig { peers: 150, units: 3000, ..base(s) },
    },
    Scenario {
        name: "churn",
        about: "200 peers, 4000 units, 60 leave/crash+join events, 1% loss",
        config: |s| SimConfig {
            peers: 200,
            units: 4000,
            churn_events: 60,
            churn_window: (45_000, 15 * MIN),
            loss: 0.01,
            ..base(s)
        },
    },
    Scenario {
        name: "partition",
        about: "200 peers, 4000 units, a 30% partition for 10 minutes, then healed",
        config: |s| SimConfig {
            peers: 200,
            units: 4000,
            partition: Some((2 * MIN, 12 * MIN, 0.3)),
            ..base(s)
        },
    },
    Scenario {
        name: "faults",
        about: "crash-stop 10%, slow 20% (4x slower), 5% random liars",
        config: |s| SimConfig {
            peers: 200,
            units: 4000,
            crash_stop: 0.1,
            slow_fraction: 0.2,
            liars: 0.05,
            ..base(s)
        },
    },
    Scenario {
        name: "liars",
        about: "20% random liars, quorum 2 (max 6 replicas), 10,000 units",
        config: |s| SimConfig {
            peers: 120,
            units: 10_000,
            liars: 0.2,
            replication: Replication { quorum: 2, max_replicas: 6, result_copies: 1 },
            unit_cost_ms: (2_000, 6_000),
            ..base(s)
        },
    },
    // The report's `colluders:` line gives their share of the peers and of the cores, and the
    // wrong-accept rate theory predicts from the core share (see `CollusionTheory`): placement
    // is weighted by spare cores, so the rate follows the colluders' cores, which vary with
    // the seed (1-8 cores per peer), not their 10 % of the peers.
    Scenario {
        name: "colluders",
        about: "10% colluding liars (same wrong answer), quorum 2, max 3 replicas; rate vs theory",
        config: |s| SimConfig {
            peers: 120,
            units: 10_000,
            colluders: 0.1,
            replication: Replication { quorum: 2, max_replicas: 3, result_copies: 1 },
            unit_cost_ms: (2_000, 6_000),
            ..base(s)
        },
    },
    Scenario {
        name: "mixed-arch",
        about: "50/50 x86-64/aarch64, 40% float units, same-arch and strict jobs",
        config: |s| SimConfig {
            peers: 200,
            units: 4000,
            jobs: 2,
            strict_jobs: true,
            arm_fraction: 0.5,
            float_units: 0.4,
            ..base(s)
        },
    },
    Scenario {
        name: "submitter-offline",
        about: "the submitter leaves once its bundle is replicated and returns later",
        config: |s| SimConfig {
            peers: 150,
            units: 3000,
            submitter_offline: Some((50_000, 100_000)),
            ..base(s)
        },
    },
    Scenario {
        name: "allow-lists",
        about: "a quarter of the peers decline every unit (allow-lists without the submitter)",
        config: |s| SimConfig { peers: 150, units: 3000, decliners: 0.25, ..base(s) },
    },
    Scenario {
        name: "owners",
        about: "200 peers, 4000 units, half of them switching between all, half or none of their cores every ~2 min",
        config: |s| SimConfig { peers: 200, units: 4000, owners: Some((0.5, 2 * MIN)), ..base(s) },
    },
    Scenario {
        name: "bench",
        about: "P5: 10,000 peers, 1,000,000 units (4 jobs), churn",
        config: |s| SimConfig {
            peers: 10_000,
            units: 1_000_000,
            jobs: 4,
            churn_events: 300,
            churn_window: (45_000, 10 * MIN),
            unit_cost_ms: (20_000, 60_000),
            ..base(s)
        },
    },
];

/// Names of all scenarios.
pub fn scenario_names() -> Vec<&'static str> {
    SCENARIOS.iter().map(|s| s.name).collect()
}

/// A scenario by name.
pub fn scenario(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}
