//! Crash detection: a peer holding a lease on a unit we watch is pinged once it has been
//! silent for `holder_silence_ms`, long before its adverts would be missed, and taken as gone
//! (its lease ends) when two pings go unanswered.

use std::sync::Arc;

use ova_jobs::BlobId;
use ova_scheduler::{
    Action, Advert, ArchClass, Config, Event, Message, Peer, PeerId, SimKeys, SimSigner, UnitRef,
};

mod support;
use support::manifest;

const ME: PeerId = PeerId([1; 32]);
const HOLDER: PeerId = PeerId([2; 32]);

/// A watcher (the job's submitter) that got a claim from `HOLDER` for unit 0 at 2 s; when
/// `in_view`, `HOLDER` advertised first; when `idle`, the watcher ran its own units (it has
/// nothing queued), else it leaves them running. Returns the peer and the unit.
fn watcher(in_view: bool, idle: bool) -> (Peer, UnitRef) {
    let mut keys = SimKeys::default();
    keys.register(ME);
    keys.register(HOLDER);
    let mut p = Peer::new(
        Config::default(),
        ArchClass::X86_64,
        2,
        Box::new(SimSigner(ME)),
        Arc::new(keys),
        7,
    );
    let _ = p.handle(Event::Online, 0).count();
    if in_view {
        let ad = Advert {
            peer: HOLDER,
            arch: ArchClass::X86_64,
            spare_cores: 2,
            queue_len: 0,
            seq: 1,
            // Ours: the advert silence check takes members to advertise with our TTL.
            ttl_ms: Config::default().advert_ttl_ms,
            jobs: Arc::from([]),
        };
        let _ = p.handle(Event::Message { from: HOLDER, msg: Message::Advert(ad) }, 500).count();
    }
    let m = manifest(4);
    let unit = UnitRef { job: m.job_id(), index: 0 };
    let starts = |acts: Vec<Action>| -> Vec<UnitRef> {
        acts.into_iter()
            .filter_map(|a| match a {
                Action::StartUnit { unit, .. } => Some(unit),
                _ => None,
            })
            .collect()
    };
    let mut started = starts(p.handle(Event::Submit(Box::new(m)), 1_000).collect());
    // We run our share at once and commit (a watcher with work queued would not ping).
    while idle && let Some(u) = started.pop() {
        let result = Ok(BlobId([u.index as u8 + 1; 32]));
        let acts = p.handle(Event::UnitFinished { unit: u, result }, 1_000).collect();
        started.extend(starts(acts));
    }
    let claim = Message::Claim { unit, until: 600_000 };
    let _ = p.handle(Event::Message { from: HOLDER, msg: claim }, 2_000).count();
    (p, unit)
}

/// Drives timers every 500 ms from `from` to `to`; returns the times pings went to `HOLDER`.
/// `answer` makes the holder answer each ping at once.
fn run(p: &mut Peer, from: u64, to: u64, answer: bool) -> Vec<u64> {
    let mut pings = Vec::new();
    let mut t = from;
    while t <= to {
        let acts: Vec<Action> = p.handle(Event::Timer, t).collect();
        for a in acts {
            if let Action::Send { to, msg: Message::Ping } = a
                && to == HOLDER
            {
                pings.push(t);
                if answer {
                    let _ =
                        p.handle(Event::Message { from: HOLDER, msg: Message::Pong }, t).count();
                }
            }
        }
        t += 500;
    }
    pings
}

#[test]
fn a_silent_lease_holder_is_pinged_and_dropped() {
    let cfg = Config::default();
    // Well within the advert heartbeat (a quarter TTL) and the advert silence check: only the
    // holder check can ping this early.
    assert!(cfg.holder_silence_ms + 2 * cfg.advert_interval_ms < cfg.silence_probe_ms);
    for in_view in [true, false] {
        let (mut p, unit) = watcher(in_view, true);
        let before = p.describe_unit(&unit).expect("tracked");
        assert!(before.contains(&format!("{HOLDER:?}")), "{before}");
        let pings = run(&mut p, 2_500, 2_000 + cfg.holder_silence_ms + 25_000, false);
        assert_eq!(pings.len(), 2, "in_view={in_view}: pings at {pings:?}");
        let first = pings[0];
        assert!(first >= 2_000 + cfg.holder_silence_ms, "pinged before it was silent: {first}");
        assert!(first <= 2_000 + cfg.holder_silence_ms + cfg.advert_interval_ms);
        assert_eq!(pings[1] - first, cfg.probe_wait_ms, "the repeat follows one probe wait");
        assert_eq!(p.stats().silent_dropped, 1, "in_view={in_view}");
        // The lease ended when the second ping went unanswered (it was good until 600 s).
        let dropped_at = pings[1] + cfg.probe_wait_ms;
        let after = p.describe_unit(&unit).expect("still tracked");
        let ended = format!("holder: {HOLDER:?}, until: {dropped_at} }}");
        assert!(after.contains(&ended), "in_view={in_view}: lease not ended: {after}");
        if in_view {
            assert!(p.view().get(&HOLDER).is_none(), "still in the view");
        }
    }
}

#[test]
fn a_holder_that_answers_is_kept() {
    let cfg = Config::default();
    let (mut p, unit) = watcher(true, true);
    let pings = run(&mut p, 2_500, 2_000 + 3 * cfg.holder_silence_ms, true);
    assert!(!pings.is_empty(), "never pinged");
    assert_eq!(p.stats().silent_dropped, 0);
    // Its lease stands: the claim's end (600 s), as cut by our own commit to two runs from
    // the claim (a verdict waiting on a reservation asks its holder after that).
    let lease_len = ova_jobs::Limits::default().deadline_ms + cfg.lease_slack_ms;
    let until = 600_000.min(2_000 + 2 * lease_len);
    let after = p.describe_unit(&unit).expect("tracked");
    assert!(after.contains(&format!("holder: {HOLDER:?}, until: {until} }}")), "{after}");
}

#[test]
fn a_holder_that_keeps_talking_is_not_pinged() {
    let cfg = Config::default();
    let (mut p, unit) = watcher(true, true);
    let mut t = 2_500;
    let mut pings = 0;
    while t <= 2_000 + 3 * cfg.holder_silence_ms {
        // Claims, commits and answers count: here it claims another unit it queued.
        if t % 10_000 == 0 {
            let claim = Message::Claim { unit: UnitRef { index: 1, ..unit }, until: t + 300_000 };
            let _ = p.handle(Event::Message { from: HOLDER, msg: claim }, t).count();
        }
        let acts: Vec<Action> = p.handle(Event::Timer, t).collect();
        pings += acts
            .iter()
            .filter(|a| matches!(a, Action::Send { to, msg: Message::Ping } if *to == HOLDER))
            .count();
        t += 500;
    }
    assert_eq!(pings, 0);
}

#[test]
fn a_busy_watcher_leaves_quiet_holders_to_the_advert_check() {
    let cfg = Config::default();
    let (mut p, _) = watcher(true, false);
    let pings = run(&mut p, 2_500, 2_000 + 2 * cfg.holder_silence_ms, false);
    assert!(pings.is_empty(), "pinged at {pings:?}");
    assert_eq!(p.stats().silent_dropped, 0);
}

#[test]
fn only_members_near_us_on_the_ring_are_pinged_for_silence() {
    let cfg = Config::default();
    let mut keys = SimKeys::default();
    keys.register(ME);
    let mut p =
        Peer::new(cfg.clone(), ArchClass::X86_64, 2, Box::new(SimSigner(ME)), Arc::new(keys), 7);
    let _ = p.handle(Event::Online, 0).count();
    // 44 members of our class advertise once: the view keeps `view_side` on each side of us
    // (near), and those already kept that newcomers pushed farther round the ring.
    let members: Vec<PeerId> = (2..46u8).map(|k| PeerId([k; 32])).collect();
    for (seq, m) in members.iter().enumerate() {
        let ad = Advert {
            peer: *m,
            arch: ArchClass::X86_64,
            spare_cores: 2,
            queue_len: 0,
            seq: seq as u64 + 1,
            ttl_ms: cfg.advert_ttl_ms,
            jobs: Arc::from([]),
        };
        let _ = p.handle(Event::Message { from: *m, msg: Message::Advert(ad) }, 500).count();
    }
    let side = cfg.view_side();
    let kept: Vec<PeerId> = members.iter().copied().filter(|m| p.view().get(m).is_some()).collect();
    let near: Vec<PeerId> = kept.iter().copied().filter(|m| p.view().is_near(m, side)).collect();
    assert_eq!(near.len(), 2 * side, "view_side on each side");
    assert!(kept.len() > near.len() + 5, "few far members kept: {} of {}", kept.len(), near.len());
    // None advertises again: past the silence probe (and a tick), each silent member placement
    // uses has been pinged once (answered, so none is dropped), and no farther one.
    let mut pinged = Vec::new();
    let mut t = 1_000;
    while t <= 500 + cfg.silence_probe_ms + cfg.advert_interval_ms {
        let acts: Vec<Action> = p.handle(Event::Timer, t).collect();
        for a in acts {
            if let Action::Send { to, msg: Message::Ping } = a {
                pinged.push(to);
                let _ = p.handle(Event::Message { from: to, msg: Message::Pong }, t).count();
            }
        }
        t += 500;
    }
    pinged.sort_unstable();
    let mut want = near.clone();
    want.sort_unstable();
    assert_eq!(pinged, want, "pinged {} of {} members", pinged.len(), members.len());
    assert_eq!(p.stats().silent_dropped, 0);
}
