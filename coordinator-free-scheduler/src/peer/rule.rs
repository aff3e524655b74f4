//! The one placement rule ([`Peer::evaluate`]): whether we run a unit now, given its commits,
//! its leases and our ranking; the memoised ranking it uses; and who hears about a unit
//! (its watchers and other replicas).

use super::state::{Mine, UKey};
use super::{Action, Peer, RunCause, TimerKind};
use crate::commit::CommitBody;
use crate::message::Message;
use crate::placement::rank_from;
use crate::quorum::Verdict;
use crate::types::{PeerId, UnitRef};

/// Most peers one commit is sent to (watchers plus the unit's other executors).
pub(super) const MAX_WATCHERS: usize = 16;

impl Peer {
    /// The one placement rule: should we run this unit now?
    pub(super) fn evaluate(&mut self, key: UKey) {
        if !self.lent.is_empty() {
            self.check_lent(key);
        }
        let Some(u) = self.units.get(&key) else { return };
        if u.outcome.is_some() || u.mine != Mine::None {
            return;
        }
        let j = &self.jobs[key.0 as usize];
        let rep = j.info.manifest.replication;
        let same_arch = !j.info.strict();
        if same_arch && u.class != self.arch {
            return;
        }
        let need = match u.tally.verdict(rep.quorum, rep.max_replicas, same_arch) {
            Verdict::Pending { need } => need as usize,
            _ => return,
        };
        let point = j.d.points[key.1 as usize];
        let strict = j.info.strict();
        let now = self.now;
        let lease_len = self.lease_len(key.0);
        // A lapsed lease whose holder has not left our view is most likely a slow or busy
        // peer, not a lost one: extend it (a bounded number of times) rather than run the
        // unit a second time.
        let me = self.id;
        let u = self.units.get_mut(&key).expect("tracked");
        if u.leases.any_lapsed(now) {
            // Not a blind extension: a short grace while we ask the holder. If it still has
            // the unit (slow, or queued behind others) it answers with a fresh lease; if it
            // finished, with its commit; silence after the last grace means take-over.
            let tally = &u.tally;
            let grace = 2 * self.cfg.probe_wait_ms.max(1);
            let unit = UnitRef { job: j.info.job_id, index: key.1 };
            let out = &mut self.out;
            let ext = u.leases.extend_lapsed(
                now,
                grace.min(lease_len),
                |p| *p != me && !tally.has(p),
                |p| out.push(Action::Send { to: *p, msg: Message::Probe(unit) }),
            );
            if let Some(t) = ext {
                self.stats.lease_extensions += 1;
                self.add_timer(t, TimerKind::Unit(key.0, key.1));
            }
        }
        let u = &self.units[&key];
        // Our own lease never counts as a live replica here: `mine` is None, so we are not
        // running the unit. It is an implicit lease others gave us, or the short reservation
        // we kept after handing the unit to a thief — and if that thief hands it back (an
        // allow-list declined it), waiting for it to lapse would stall the unit.
        let live = u.leases.live(now).filter(|l| l.holder != me && !u.tally.has(&l.holder)).count();
        let used = u.tally.commits().len() + live;
        let room = (rep.max_replicas as usize).saturating_sub(used);
        let shortfall = need.saturating_sub(live).min(room);
        if let Some(t) = u.leases.next_expiry(now) {
            self.add_timer(t, TimerKind::Unit(key.0, key.1));
        }
        if shortfall == 0 {
            return;
        }
        // Our view is a ring neighbourhood: it ranks correctly only units whose window holds
        // us. For any other unit we only observe.
        if let Some((a, b)) = self.view.region(strict, self.cfg.window)
            && point.wrapping_sub(a).wrapping_sub(1) >= b.wrapping_sub(a)
        {
            return;
        }
        self.rank_unit(point, strict);
        let u = self.units.get_mut(&key).expect("tracked");
        // We handed the unit to a thief to shed load: while another replica holds it and the
        // thief has not handed it back, the next peer in line runs it, not us again. Holding
        // means a claim: an implicit lease we handed out ourselves does not count. (It did:
        // the peer next in line, seeing us ranked ahead, gave us an implicit lease and waited
        // for our claim while we waited for its own, and the unit sat for a minute, every peer
        // idle, in the P4 benchmark.)
        let claimed = u
            .leases
            .live_claimed(now)
            .filter(|l| l.holder != me && !u.tally.has(&l.holder))
            .count();
        let step_aside = u.leases.handed(&self.id) && claimed > 0 && !u.leases.any_gave_up();
        let mut idx = 0;
        let mut run = false;
        let mut expected = [PeerId([0; 32]); 4];
        let mut n_expected = 0;
        for (_, p) in &self.scratch {
            // Our own lease here is hearsay (an implicit lease others gave us): we are not
            // running the unit (`mine` is None), so it never rules us out.
            if u.tally.has(p)
                || (*p != self.id && (u.leases.is_live(p, now) || u.leases.lapsed(p, now)))
            {
                continue;
            }
            if *p == self.id {
                if step_aside {
                    continue;
                }
                run = idx < shortfall;
                break;
            }
            if n_expected < expected.len() {
                expected[n_expected] = *p;
                n_expected += 1;
            }
            idx += 1;
            if idx >= shortfall {
                break;
            }
        }
        if run {
            let cause = if u.cause == RunCause::Probe {
                RunCause::Probe
            } else if u
                .tally
                .leader(same_arch)
                .is_some_and(|(_, n)| (n as usize) < u.tally.commits().len())
            {
                RunCause::Extra
            } else if u.leases.any_lapsed(now) {
                RunCause::Lapse
            } else {
                RunCause::Rule
            };
            self.stats.queued_rule += 1;
            self.enqueue(key, cause);
        } else if n_expected > 0 {
            // The peers ahead of us may not know they are needed (they missed a commit, or
            // they are gone but still in our view): give them an implicit lease, and take over
            // if it lapses without a claim or commit from them.
            let until = now + self.cfg.claim_grace_ms;
            for p in &expected[..n_expected] {
                u.leases.claim_implicit(*p, until);
            }
            self.add_timer(until, TimerKind::Unit(key.0, key.1));
        }
    }

    /// Ranks the candidates of the unit at ring `point` into `scratch` (see [`rank`]), unless
    /// `scratch` already holds that ranking for the current view.
    pub(super) fn rank_unit(&mut self, point: u64, strict: bool) {
        let key = (point, strict, self.view.epoch);
        if self.ranked != Some(key) {
            let start = self.view.successor(strict, point);
            rank_from(self.view.ring(strict), start, point, self.cfg.window, &mut self.scratch);
            self.ranked = Some(key);
        }
    }

    /// The peers told about a unit's claims, commits and hand-backs: the best-ranked in our
    /// view, leaving out ourselves and peers that gave the unit up (so a hand-back reaches
    /// further down the ranking, to a peer that can run it). While the unit's commits agree,
    /// `quorum + 1` of them: the other primaries and the peers next in line (two at quorum
    /// 2), who take the unit over if a primary's lease lapses. Once they disagree,
    /// `max_replicas + 1`: every peer that may be asked for an extra replica hears the tally.
    /// (It was always `max_replicas + 1`; at quorum 2 of 4, that sent each claim and commit to
    /// five peers instead of three, and they were over half of a large network's messages and
    /// of its peers' CPU; see the crate README, round 12.)
    pub(super) fn watchers(&mut self, key: UKey) -> Vec<PeerId> {
        let j = &self.jobs[key.0 as usize];
        let rep = j.info.manifest.replication;
        let disagree = self.units.get(&key).is_some_and(|u| {
            let agreed = u.tally.leader(!j.info.strict()).map_or(0, |(_, n)| n as usize);
            agreed < u.tally.commits().len()
        });
        let n = if disagree { rep.max_replicas } else { rep.quorum };
        self.best_ranked(key, usize::from(n) + 1)
    }

    /// The best-ranked `max_replicas + 1`: every peer that may be asked for a replica of the
    /// unit. A probe goes to them (it is rare, and looks for whatever anyone knows), and so
    /// does our commit when it contradicts one we hold.
    pub(super) fn watchers_for_extras(&mut self, key: UKey) -> Vec<PeerId> {
        let n = self.jobs[key.0 as usize].info.manifest.replication.max_replicas;
        self.best_ranked(key, usize::from(n) + 1)
    }

    /// Our [replica peers](Peer::replica_peers), then every peer that may be asked for a
    /// replica ([`Peer::watchers_for_extras`]) not among them, at most [`MAX_WATCHERS`] in all:
    /// who hears a hand-back, or a commit that contradicts one we hold.
    pub(super) fn replica_peers_and_extras(&mut self, key: UKey) -> Vec<PeerId> {
        let mut to = self.replica_peers(key);
        for p in self.watchers_for_extras(key) {
            if !to.contains(&p) && to.len() < MAX_WATCHERS {
                to.push(p);
            }
        }
        to
    }

    /// Whether our result `body` for a unit disagrees with a commit we hold for it (within its
    /// architecture class, for a same-arch job): then extra replicas will be needed.
    pub(super) fn contradicts(&self, key: UKey, body: &CommitBody) -> bool {
        let strict = self.jobs[key.0 as usize].info.strict();
        self.units.get(&key).is_some_and(|u| {
            (u.tally.commits().iter())
                .any(|c| c.body.result != body.result && (strict || c.body.arch == body.arch))
        })
    }

    /// The `n` best-ranked peers for a unit in our view (the victim's list for a unit we
    /// stole), leaving out ourselves and peers that gave the unit up.
    fn best_ranked(&mut self, key: UKey, n: usize) -> Vec<PeerId> {
        if let Some(s) = self.stolen.get(&key) {
            let leases = self.units.get(&key).map(|u| &u.leases);
            return s
                .watchers
                .iter()
                .filter(|p| !leases.is_some_and(|l| l.gave_up(p)))
                .copied()
                .collect();
        }
        let j = &self.jobs[key.0 as usize];
        let n = n.min(self.cfg.window);
        let point = j.d.points[key.1 as usize];
        let strict = j.info.strict();
        self.rank_unit(point, strict);
        let leases = self.units.get(&key).map(|u| &u.leases);
        self.scratch
            .iter()
            .map(|(_, p)| *p)
            .filter(|p| *p != self.id && !leases.is_some_and(|l| l.gave_up(p)))
            .take(n)
            .collect()
    }

    /// Where our claims and commit for a unit go: its watchers, and the other replicas we know
    /// of (executors that committed, holders of live leases) even when our view ranks them
    /// outside the watchers — a thief, or a replica far from us on the ring, needs to know
    /// about us for its verdict, and without our lease it would take the unit for stuck.
    pub(super) fn replica_peers(&mut self, key: UKey) -> Vec<PeerId> {
        let mut to = self.watchers(key);
        let (me, now) = (self.id, self.now);
        if let Some(u) = self.units.get(&key) {
            let others = u.tally.commits().iter().map(|c| c.body.executor);
            for p in others.chain(u.leases.live(now).map(|l| l.holder)) {
                if p != me && !to.contains(&p) && to.len() < MAX_WATCHERS {
                    to.push(p);
                }
            }
        }
        to
    }
}
