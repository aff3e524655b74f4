//! The state machine driven by hand: abuse handling and the basic unit lifecycle.

use std::sync::Arc;

use ova_jobs::{BlobId, Limits, MANIFEST_VERSION, Manifest, Replication, UnitSpec};
use ova_scheduler::commit::{CommitBody, sign};
use ova_scheduler::{
    Action, Advert, ArchClass, Config, Event, Message, Peer, PeerId, SimKeys, SimSigner, UnitRef,
};

fn manifest(units: usize) -> Manifest {
    Manifest {
        version: MANIFEST_VERSION,
        name: "t".into(),
        module: BlobId::of(b"m"),
        units: (0..units)
            .map(|i| UnitSpec { input: BlobId::of(&(i as u32).to_le_bytes()), args: vec![] })
            .collect(),
        replication: Replication { quorum: 2, max_replicas: 3, result_copies: 1 },
        limits: Limits::default(),
        determinism: ova_jobs::Determinism::SameArch,
        priority: 0,
    }
}

fn peers(n: u8) -> (Vec<Peer>, Arc<SimKeys>) {
    let mut keys = SimKeys::default();
    for i in 0..n {
        keys.register(PeerId([i + 1; 32]));
    }
    let keys = Arc::new(keys);
    let ps = (0..n)
        .map(|i| {
            Peer::new(
                Config::default(),
                ArchClass::X86_64,
                2,
                Box::new(SimSigner(PeerId([i + 1; 32]))),
                keys.clone(),
                i as u64,
            )
        })
        .collect();
    (ps, keys)
}

/// Delivers every message until quiet; runs units instantly with result = f(unit index).
fn settle(ps: &mut [Peer], mut inbox: Vec<(usize, Event)>, now: u64) -> Vec<(usize, Action)> {
    let mut seen = Vec::new();
    let idx = |ps: &[Peer], id: PeerId| ps.iter().position(|p| p.id() == id);
    let mut steps = 0;
    while let Some((i, ev)) = inbox.pop() {
        steps += 1;
        assert!(steps < 100_000, "no quiescence");
        let from = ps[i].id();
        let acts: Vec<Action> = ps[i].handle(ev, now).collect();
        for a in acts {
            match &a {
                Action::Send { to, msg } => {
                    if let Some(j) = idx(ps, *to) {
                        inbox.insert(0, (j, Event::Message { from, msg: msg.clone() }));
                    }
                }
                Action::Broadcast(msg) => {
                    for j in 0..ps.len() {
                        if j != i {
                            inbox.insert(0, (j, Event::Message { from, msg: msg.clone() }));
                        }
                    }
                }
                Action::StartUnit { unit, .. } => {
                    let result = Ok(BlobId([unit.index as u8; 32]));
                    inbox.insert(0, (i, Event::UnitFinished { unit: *unit, result }));
                }
                _ => {}
            }
            seen.push((i, a));
        }
    }
    seen
}

#[test]
fn small_network_verifies_every_unit_once_per_quorum() {
    let (mut ps, _) = peers(5);
    let online: Vec<(usize, Event)> = (0..5).map(|i| (i, Event::Online)).collect();
    settle(&mut ps, online, 0);
    let acts = settle(&mut ps, vec![(0, Event::Submit(Box::new(manifest(40))))], 1000);
    let mut verified = std::collections::BTreeSet::new();
    let mut starts = 0;
    for (_, a) in &acts {
        match a {
            Action::UnitVerified { unit, result, signers } => {
                assert_eq!(*result, BlobId([unit.index as u8; 32]));
                assert!(signers.len() >= 2);
                verified.insert(unit.index);
            }
            Action::StartUnit { .. } => starts += 1,
            Action::UnitFailed { .. } => panic!("no unit may fail"),
            _ => {}
        }
    }
    assert_eq!(verified.len(), 40);
    assert_eq!(starts, 80, "exactly quorum replicas with consistent views and honest peers");
    let job = manifest(40).job_id();
    assert_eq!(ps[0].job_progress(&job), Some((40, 40, 0)));
}

#[test]
fn malformed_frames_and_forged_commits_are_dropped_and_counted() {
    let (mut ps, _) = peers(3);
    settle(&mut ps, (0..3).map(|i| (i, Event::Online)).collect(), 0);
    let m = manifest(4);
    let job = m.job_id();
    settle(&mut ps, vec![(0, Event::Submit(Box::new(m.clone())))], 10);
    let from = ps[1].id();
    let p = &mut ps[2];
    // Garbage, an unsupported version, an oversized frame.
    let _ = p.handle(Event::Frame { from, bytes: vec![] }, 20).count();
    let _ = p.handle(Event::Frame { from, bytes: vec![9, 1, 2] }, 20).count();
    let _ = p.handle(Event::Frame { from, bytes: vec![1; 20 << 20] }, 20).count();
    assert_eq!(p.stats().malformed, 3);
    // A commit signed by someone else, one from an unknown peer, one for a unit that does not exist.
    let unit = UnitRef { job, index: 0 };
    let unit_id = ova_jobs::UnitId::derive(&m.module, &m.units[0].input, &[]);
    let body = CommitBody {
        unit,
        unit_id,
        result: BlobId([0; 32]),
        executor: from,
        arch: ArchClass::X86_64,
    };
    let forged = sign(&SimSigner(PeerId([3; 32])), body);
    let frame = Message::Commit(forged).encode();
    let _ = p.handle(Event::Frame { from, bytes: frame }, 20).count();
    assert_eq!(p.stats().bad_signature, 1);
    let stranger = PeerId([99; 32]);
    let unknown = sign(&SimSigner(stranger), CommitBody { executor: stranger, ..body });
    let _ = p.handle(Event::Message { from, msg: Message::Commit(unknown) }, 20).count();
    assert_eq!(p.stats().unknown_signer, 1);
    let bad_index =
        sign(&SimSigner(from), CommitBody { unit: UnitRef { job, index: 999 }, ..body });
    let _ = p.handle(Event::Message { from, msg: Message::Commit(bad_index) }, 20).count();
    assert_eq!(p.stats().bad_unit, 1);
    // An advert relayed under someone else's name.
    let ad = Advert {
        peer: stranger,
        arch: ArchClass::X86_64,
        spare_cores: 4,
        queue_len: 0,
        seq: 1,
        ttl_ms: 1000,
        jobs: vec![],
    };
    let _ = p.handle(Event::Message { from, msg: Message::Advert(ad) }, 20).count();
    assert_eq!(p.stats().malformed, 4);
}

#[test]
fn messages_round_trip_through_the_wire_envelope() {
    let m = manifest(3);
    let info = Arc::new(ova_scheduler::JobInfo::new(m, PeerId([1; 32]), 5, vec![], vec![]));
    let msgs = vec![
        Message::Announce(info),
        Message::Claim { unit: UnitRef { job: ova_jobs::JobId([2; 32]), index: 1 }, until: 77 },
        Message::StealRequest { max: 3 },
    ];
    for msg in msgs {
        let f = msg.encode();
        let back = Message::decode(&f).expect("decodes");
        assert_eq!(back.encode(), f);
        assert_eq!(back.kind(), msg.kind());
    }
}
