//! Run slots: a peer may keep more units in flight than it has cores (so a shell can overlap
//! input fetches and commits with execution) without advertising more capacity.

use std::sync::Arc;

use ova_jobs::{Manifest, Replication};
use ova_scheduler::{Action, ArchClass, Config, Event, Peer, PeerId, SimKeys, SimSigner};

mod support;

fn job(units: usize) -> Manifest {
    Manifest {
        name: "slots".into(),
        replication: Replication { quorum: 1, max_replicas: 2, result_copies: 0 },
        ..support::manifest(units)
    }
}

/// A lone one-core peer submits a 64-unit job to itself; returns how many units it started.
fn started_at_once(slots: Option<u32>) -> usize {
    let id = PeerId([7; 32]);
    let mut keys = SimKeys::default();
    keys.register(id);
    let mut p = Peer::new(
        Config::default(),
        ArchClass::X86_64,
        1,
        Box::new(SimSigner(id)),
        Arc::new(keys),
        1,
    );
    if let Some(n) = slots {
        p.set_run_slots_per_core(n);
    }
    let mut started = 0;
    for (t, ev) in
        [Event::Online, Event::Submit(Box::new(job(64))), Event::Timer].into_iter().enumerate()
    {
        // Later events give the core a chance to start more (it never should beyond the slots).
        started += p
            .handle(ev, 1_000 * (t as u64 + 1))
            .filter(|a| matches!(a, Action::StartUnit { .. }))
            .count();
    }
    started
}

#[test]
fn a_core_runs_one_unit_at_a_time_by_default() {
    assert_eq!(started_at_once(None), 1);
}

#[test]
fn run_slots_keep_several_units_in_flight_per_core() {
    assert_eq!(started_at_once(Some(4)), 4);
    assert_eq!(started_at_once(Some(0)), 1, "zero slots means one");
}
