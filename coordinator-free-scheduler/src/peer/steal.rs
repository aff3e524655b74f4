//! Stealing: an idle peer asks the busiest peer it knows for queued units; a victim grants
//! from its ready queue or its scan backlog, or forwards the request; a thief takes what it
//! was granted.

use ova_jobs::JobId;

use super::rule::MAX_WATCHERS;
use super::scan::in_arc;
use super::state::{Mine, UKey, UnitState};
use super::{Action, Peer, RunCause, TimerKind};
use crate::message::{Grant, MAX_ANNOUNCE_LIST, MAX_BATCH, MAX_STEAL_SKIP, Message};
use crate::placement::position;
use crate::types::{ArchClass, Millis, PeerId, UnitRef};

/// A stolen unit: its victim (told directly if we cannot run it) and its watchers.
#[derive(Debug)]
pub(super) struct Stolen {
    pub(super) victim: PeerId,
    pub(super) watchers: Vec<PeerId>,
}

/// How many times a steal request is forwarded at most (each hop moves about `view_side`
/// ring positions, or straight to the busiest peer the forwarder knows).
const STEAL_HOPS: u8 = 6;

/// Most doublings of the steal cooldown after requests that brought nothing.
const MAX_STEAL_BACKOFF: u32 = 4;

impl Peer {
    pub(super) fn try_steal(&mut self) {
        if self.scanning > 0 {
            return;
        }
        // Requests that brought nothing double the wait before the next (the network is
        // running dry); a grant resets it.
        let wait = self.cfg.steal_cooldown_ms << self.steal_misses.min(MAX_STEAL_BACKOFF);
        if self.last_steal.is_some_and(|t| self.now < t + wait) {
            return;
        }
        // One request per cooldown, answered or not: an idle peer is handed every advert and
        // message, and looking for a victim on each would dominate its CPU.
        self.last_steal = Some(self.now);
        self.steal_misses += 1;
        let toward_cw = self.rng.chance(0.5);
        let Some(v) = self.steal_target(&[], toward_cw) else { return };
        // Enough to fill our run slots and keep as many queued behind them.
        let max = (self.run_slots() - self.running.min(self.run_slots())) + self.run_slots();
        // Jobs we decline: asking for their units would only bring them here to be handed
        // back (a peer whose allow-list excludes a submitter is idle, and so kept stealing
        // them: in the allow-lists scenario a unit collected a dozen such give-ups).
        let skip = self
            .jobs
            .iter()
            .filter(|j| j.declined)
            .map(|j| j.info.job_id)
            .take(MAX_STEAL_SKIP)
            .collect();
        let msg =
            Message::StealRequest { max, thief: self.id, arch: self.arch, hops: STEAL_HOPS, skip };
        self.out.push(Action::Send { to: v, msg });
    }

    /// Hands units from our scan backlog straight to a thief (up to `want` granted in all):
    /// units we rank among the top `quorum` for but have not queued, so never reserved. A busy
    /// region's backlog sits mostly in its scans, where a ready-queue steal cannot reach it.
    /// These are lent like units taken from our queue: the watchers must hear that we stepped
    /// aside, not only the thief's claim. (They did not: the unit's other primary took the
    /// thief's replica for an extra one and waited for ours, while we waited for its — each
    /// gave the other an implicit lease, and the unit sat for a minute.)
    pub(super) fn grant_from_scan(
        &mut self,
        thief: PeerId,
        thief_arch: ArchClass,
        want: usize,
        skip: &[JobId],
        granted: &mut Vec<UKey>,
    ) {
        // Units looked at: most in a region are not ours (or are known already).
        let mut budget = 8 * want + 64;
        for s in 0..self.jobs.len() {
            let j = &self.jobs[s];
            if self.now < j.scan_after
                || (!j.info.strict() && thief_arch != self.arch)
                || skip.contains(&j.info.job_id)
            {
                continue;
            }
            while granted.len() < want && budget > 0 {
                let Some((idx, point, class)) = self.next_scan_index(s) else { break };
                budget -= 1;
                let key = (s as u32, idx);
                if self.units.contains_key(&key) || self.done.contains(&key) {
                    continue;
                }
                let j = &self.jobs[s];
                let strict = j.info.strict();
                if !strict && class != self.arch {
                    continue;
                }
                let q = j.info.manifest.replication.quorum as usize;
                let probe = j.probe_all || j.probe_arcs.iter().any(|&(a, b)| in_arc(point, a, b));
                self.rank_unit(point, strict);
                if position(&self.scratch, &self.id).is_none_or(|p| p >= q) {
                    continue;
                }
                if probe || position(&self.scratch, &thief).is_some_and(|p| p < q) {
                    // Not one to hand out unseen (it may have run already, or the thief runs
                    // it anyway): ours as usual.
                    self.scan_unit(s as u32, idx, point, class);
                    continue;
                }
                if self.units.len() >= self.cfg.max_tracked_units {
                    self.stats.table_full += 1;
                    return;
                }
                let lease = self.lease_len(s as u32);
                let until = self.unconfirmed_grant_until(lease);
                let mut u = UnitState::new(class);
                u.leases.claim(thief, until);
                // We step aside for it (see `evaluate`) as for a unit taken from our queue.
                let handover = self.now + self.handover_grace().min(lease);
                u.leases.hand_over(self.id, handover);
                self.units.insert(key, u);
                self.add_timer(until, TimerKind::Unit(s as u32, idx));
                self.lent.insert(key, thief);
                granted.push(key);
            }
        }
    }

    /// Where a steal request goes next: the member of our own-class ring with the longest
    /// advertised queue, or, when none has one, the member farthest along the ring in the
    /// given direction (the walk goes on from there). Never a peer in `skip`.
    pub(super) fn steal_target(&self, skip: &[PeerId], toward_cw: bool) -> Option<PeerId> {
        let ring = self.view.ring(false);
        let mut busiest: Option<(u32, PeerId)> = None;
        // The ring's entries carry current queue lengths (see `View::ring`).
        for m in ring {
            if m.peer == self.id || skip.contains(&m.peer) {
                continue;
            }
            if m.queue_len > 1 && busiest.is_none_or(|v| (m.queue_len, m.peer) > v) {
                busiest = Some((m.queue_len, m.peer));
            }
        }
        if let Some((_, p)) = busiest {
            return Some(p);
        }
        let n = ring.len();
        let me = ring.iter().position(|m| m.peer == self.id)?;
        let reach = (n / 2).min(self.cfg.view_side());
        (1..=reach)
            .rev()
            .map(|d| if toward_cw { (me + d) % n } else { (me + n - d) % n })
            .map(|i| ring[i].peer)
            .find(|p| *p != self.id && !skip.contains(p))
    }

    /// A steal request, from the thief or forwarded for it by `from`. Any peer of the right
    /// class may take our queued units, wherever it is on the ring: the grant names the
    /// unit's watchers. With nothing to give, the request goes on (see [`Peer::steal_target`]).
    pub(super) fn on_steal_request(
        &mut self,
        from: PeerId,
        thief: PeerId,
        arch: ArchClass,
        max: u32,
        hops: u8,
        skip: Vec<JobId>,
    ) {
        if thief == self.id {
            return;
        }
        // A thief we know must advertise the class it claims.
        let thief_arch = match self.view.get(&thief) {
            Some(m) if m.arch != arch => return,
            _ => arch,
        };
        let want = (max as usize).min(MAX_BATCH);
        // Up to half our ready queue, newest first (the longest wait)...
        let give = want.min(self.ready.len() / 2);
        let mut granted = Vec::new();
        let mut known = Vec::new();
        let grace = self.handover_grace();
        let mut i = self.ready.len();
        while i > 0 && granted.len() < give {
            i -= 1;
            let key = self.ready[i];
            let j = &self.jobs[key.0 as usize];
            // A unit of the thief's class, of a job it does not decline.
            let may_grant =
                (j.info.strict() || thief_arch == self.arch) && !skip.contains(&j.info.job_id);
            let lease = j.info.manifest.limits.deadline_ms + self.cfg.lease_slack_ms;
            let q = j.info.manifest.replication.quorum as usize;
            let point = j.d.points[key.1 as usize];
            let strict = j.info.strict();
            self.rank_unit(point, strict);
            // Not a unit the thief runs anyway (one of its primaries).
            let thief_ok = position(&self.scratch, &thief).is_none_or(|p| p >= q);
            // Resolved while queued (retired): drop it from the queue.
            let Some(u) = self.units.get_mut(&key) else {
                self.ready.remove(i);
                continue;
            };
            if may_grant
                && thief_ok
                && u.mine == Mine::Queued
                && u.cause != RunCause::Steal
                && u.outcome.is_none()
                && !u.tally.has(&thief)
                && !u.leases.is_live(&thief, self.now)
                // A thief that already gave this unit up (declined it, or let its lease
                // lapse) does not get it again: it would only hand it back.
                && !u.leases.lapsed(&thief, self.now)
            {
                u.mine = Mine::None;
                let until = self.unconfirmed_grant_until(lease);
                let u = self.units.get_mut(&key).expect("tracked");
                u.leases.claim(thief, until);
                // We step aside (see `evaluate`); the watchers hear it once the thief's claim
                // confirms the grant (see `confirm_grant`). Our own record of it is a short
                // hand-over grace, never extended.
                let handover = self.now + grace.min(lease);
                u.leases.hand_over(self.id, handover);
                // Commits already in for the unit go along: the thief ranks outside the
                // unit's watchers, so nobody else would send them, and it needs them for its
                // verdict.
                known.extend(u.tally.commits().iter().cloned());
                self.add_timer(until, TimerKind::Unit(key.0, key.1));
                self.ready.remove(i);
                self.lent.insert(key, thief);
                granted.push(key);
            }
        }
        // ...then units of our region scan not queued yet.
        if granted.len() < want && self.scanning > 0 {
            self.grant_from_scan(thief, thief_arch, want, &skip, &mut granted);
        }
        if granted.is_empty() {
            if hops > 0 {
                // Go on away from where the request came from.
                let ring = self.view.ring(false);
                let me = ring.iter().position(|m| m.peer == self.id);
                let came_cw = match (me, ring.iter().position(|m| m.peer == from)) {
                    (Some(i), Some(k)) => (k + ring.len() - i) % ring.len() <= ring.len() / 2,
                    _ => false,
                };
                if let Some(next) = self.steal_target(&[from, thief], !came_cw) {
                    let msg = Message::StealRequest { max, thief, arch, hops: hops - 1, skip };
                    self.out.push(Action::Send { to: next, msg });
                }
            }
            return;
        }
        let mut grants = Vec::with_capacity(granted.len());
        for key in granted {
            let unit = UnitRef { job: self.jobs[key.0 as usize].info.job_id, index: key.1 };
            let mut watchers = vec![self.id];
            watchers.extend(self.watchers(key).into_iter().filter(|p| *p != thief));
            watchers.truncate(MAX_ANNOUNCE_LIST);
            let (me, now) = (self.id, self.now);
            let leases = self.units.get(&key).map_or_else(Vec::new, |u| {
                // Claims only (see `Leases::relayable`).
                let others =
                    u.leases.relayable(now).filter(|l| l.holder != me && l.holder != thief);
                others.take(MAX_ANNOUNCE_LIST).copied().collect()
            });
            grants.push(Grant { unit, watchers, leases });
        }
        self.out.push(Action::Send { to: thief, msg: Message::StealGrant(grants) });
        for c in known {
            self.out.push(Action::Send { to: thief, msg: Message::Commit(Box::new(c)) });
        }
    }

    /// `thief` confirmed a unit we lent it (its claim, its lease in a probe reply, or its
    /// commit): we tell the unit's watchers that we stepped aside (see [`Peer::release_lent`]).
    /// They hold the thief's claim by now (it went to them and to us at once), so they count
    /// the thief's replica and not our reservation.
    ///
    /// The release used to go out with the grant, and ended a hand-over grace (two probe
    /// waits) later. A watcher that heard the thief's claim before the release counted both
    /// the release and the claim as live replicas of one unit and waited for the release to
    /// end (and its lease timer to fire), every peer idle: at quorum 2, about one run in
    /// seventeen of the P3 benchmark (with a 100 ms steal cooldown) ended with a unit stalled
    /// for 1.5 s.
    pub(super) fn confirm_grant(&mut self, key: UKey, thief: PeerId) {
        if self.lent.get(&key) == Some(&thief) {
            self.release_lent(key, thief);
        }
    }

    /// A unit we lent whose thief has not confirmed it within the hand-over grace (the grant
    /// or the claim was lost, or the thief is slow to hear of the job): we step aside all the
    /// same, as if the grant had been confirmed, so the watchers do not wait for our
    /// reservation; the unit is then placed as a lapse (we probe the thief, see `evaluate`).
    pub(super) fn check_lent(&mut self, key: UKey) {
        let Some(&thief) = self.lent.get(&key) else { return };
        match self.units.get(&key) {
            Some(u) if u.mine == Mine::None && u.outcome.is_none() => {
                if !u.leases.is_live(&thief, self.now) {
                    self.release_lent(key, thief);
                }
            }
            _ => {
                self.lent.remove(&key);
            }
        }
    }

    /// Tells the peers that may hold our reservation of a unit we lent to `thief` (those our
    /// claims go to) that we stepped aside, with a release that has already ended (its `until`
    /// is 0: a later one in our clock could still be running in theirs).
    pub(super) fn release_lent(&mut self, key: UKey, thief: PeerId) {
        self.lent.remove(&key);
        let (me, now) = (self.id, self.now);
        if let Some(u) = self.units.get_mut(&key) {
            u.leases.hand_over(me, now);
        }
        let unit = UnitRef { job: self.jobs[key.0 as usize].info.job_id, index: key.1 };
        for to in self.replica_peers(key) {
            if to != thief {
                self.out.push(Action::Send { to, msg: Message::Release { unit, until: 0 } });
            }
        }
    }

    /// How long a victim waits for the thief's claim to confirm a grant before it steps aside
    /// all the same (see [`Peer::check_lent`]), and how long its own record of the hand-over
    /// lasts: two probe waits. (Watchers used to count the victim's reservation for this long
    /// after the grant, `claim_grace_ms` (a minute) before that: when the thief had already
    /// committed and the victim stepped aside, the remaining replica waited out the whole
    /// hand-over, seen as one-minute stalls of the P4 benchmark, every peer idle.)
    pub(super) fn handover_grace(&self) -> Millis {
        (2 * self.cfg.probe_wait_ms).max(1)
    }

    /// Until when a victim counts a thief's lease on a unit it granted, before the thief's
    /// own claim confirms it (which then sets the lease): a hand-over grace, not the unit's
    /// lease. A grant can be lost (a shell drops messages it cannot queue); with the whole
    /// lease recorded at once, nobody ran the unit until it lapsed — a minute with every peer
    /// idle in the P3 benchmark. A lapsed, unconfirmed grant is extended briefly while the
    /// thief is probed (as any lapsed lease), then the unit is placed again.
    fn unconfirmed_grant_until(&self, lease: Millis) -> Millis {
        self.now + self.handover_grace().min(lease)
    }

    /// Units granted to us by a victim.
    pub(super) fn on_steal_grant(&mut self, from: PeerId, grants: Vec<Grant>) {
        if !grants.is_empty() {
            self.steal_misses = 0;
        }
        // Grants of a job whose announcement has not reached us yet (a thief with no work
        // asks at once, and a victim grants units of a job just announced) are held until it
        // arrives, like the claims and releases about it (see `hold_early`); dropped, each cost
        // its unit a lapsed hand-over and a probe.
        let (grants, mut early): (Vec<Grant>, Vec<Grant>) =
            grants.into_iter().take(MAX_BATCH).partition(|g| self.slot(&g.unit.job).is_some());
        while let Some(job) = early.first().map(|g| g.unit.job) {
            let (this, rest): (Vec<Grant>, Vec<Grant>) =
                early.into_iter().partition(|g| g.unit.job == job);
            self.hold_early(from, job, Message::StealGrant(this));
            early = rest;
        }
        for Grant { unit, watchers, leases } in grants {
            let done = self.slot(&unit.job).is_some_and(|s| self.done.contains(&(s, unit.index)));
            let key = if done { None } else { self.resolve(&unit, true) };
            let Some(key) = key else {
                if done {
                    self.out
                        .push(Action::Send { to: from, msg: Message::Claim { unit, until: 0 } });
                }
                continue;
            };
            let lease_max = self.reserve_max(key.0);
            // (A unit of a job we decline, from a victim that had not heard: handed back.)
            let declined = self.jobs[key.0 as usize].declined;
            // Our owner took our cores back after we asked: we could not run it for a while.
            let no_cores = self.run_slots() == 0;
            // The victim we took this unit from (a grant it sent again).
            let same_victim = self.stolen.get(&key).is_some_and(|s| s.victim == from);
            let u = self.units.get_mut(&key).expect("resolved");
            if u.mine == Mine::None
                && u.outcome.is_none()
                && !u.tally.has(&self.id)
                && !declined
                && !no_cores
            {
                let me = self.id;
                let mut watchers: Vec<PeerId> =
                    watchers.into_iter().filter(|p| *p != me).take(MAX_WATCHERS).collect();
                if !watchers.contains(&from) {
                    watchers.insert(0, from);
                }
                for l in leases.into_iter().take(MAX_WATCHERS) {
                    if l.holder != me && l.until > self.now {
                        u.leases.claim_hearsay(l.holder, l.until.min(self.now + lease_max));
                    }
                }
                self.stolen.insert(key, Stolen { victim: from, watchers });
                self.enqueue(key, RunCause::Steal);
                self.stats.stolen += 1;
                self.stats.queued_steal += 1;
            } else {
                // Already ours or done: hand it straight back. The victim we stole it from
                // (its grant again) gets our own lease: we run it for that victim. Any other
                // victim gets a hand-back (until 0) and keeps its replica: it granted the unit
                // for us to run *instead of* itself, and our run is another replica already
                // (stolen from another victim, ours by rank, or committed). Answered with our
                // lease, it took that for the confirmation of its grant and stepped aside too:
                // both replicas of a quorum-2 unit had been handed to one thief, nobody ran
                // the second, and the P4 benchmark sat idle for 40 s until leases lapsed.
                let until = if same_victim && u.mine.holds() {
                    let me = self.id;
                    u.leases.live(self.now).filter(|l| l.holder == me).map(|l| l.until).max()
                } else {
                    None
                };
                let until = until.unwrap_or(0);
                self.out.push(Action::Send { to: from, msg: Message::Claim { unit, until } });
            }
        }
    }
}
