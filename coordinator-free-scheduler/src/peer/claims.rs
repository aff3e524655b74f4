//! Leases as a watcher sees them: claims (reservations and hand-backs), releases after a
//! steal, probes of a unit's holders and their replies, and how long a lease may be.

use super::state::{Mine, Outcome, UKey};
use super::{Action, Peer, TimerKind};
use crate::commit::SignedCommit;
use crate::lease::Lease;
use crate::message::{MAX_BATCH, Message};
use crate::types::{Millis, PeerId, UnitRef};

/// Most unit deadlines a queued unit's reservation may cover (see [`Peer::reservation`]).
/// A reservation is a promise watchers keep without asking: if its holder hands the unit on
/// and its word misses a watcher (views change under churn), the unit waits it out. At 32
/// deadlines (69 minutes at the default 2-minute deadline), volunteers whose owners take their
/// cores back and give them again left units waiting past an hour (`ova-sim bench --peers 2000
/// --units 100000 --owners 0.5`); at 8 a longer queue's watchers ask it again every 17 minutes.
const MAX_RESERVE_WAITS: Millis = 8;

impl Peer {
    /// A claim (a lease until `until`; 0 hands the unit back).
    pub(super) fn on_claim(&mut self, from: PeerId, unit: UnitRef, until: Millis) {
        // Looked up before the unit, not after: the three lookups (the claimant in the view
        // and in the holder table, the unit) miss the cache and do not depend on each other,
        // so the misses overlap.
        let in_view = self.view.get(&from).is_some();
        let known_holder = self.holders.contains_key(&from);
        // (A claim for a job we do not know never gets here: `dispatch` holds it.)
        let Some(key) = self.resolve(&unit, true) else { return };
        let lease_max = self.reserve_max(key.0);
        let u = self.units.get_mut(&key).expect("resolved");
        // A claim for a unit we committed to: the claimant runs it too and needs our
        // commit for its verdict, but we sent it only to the peers we knew of then (a
        // thief, or a replica that queued it later, was not among them). Without this
        // it would never hear the verdict and keep re-sending its own commit.
        if until > self.now && u.mine == Mine::Committed && !u.tally.has(&from) {
            let me = self.id;
            if let Some(c) = u.tally.commits().iter().find(|c| c.body.executor == me) {
                self.out.push(Action::Send { to: from, msg: Message::Commit(Box::new(c.clone())) });
            }
            if u.outcome.is_some() {
                return;
            }
        }
        // A thief handing back a unit we lent it (it had it already, or cannot run it).
        let handed_back = until <= self.now && self.lent.get(&key) == Some(&from);
        if until <= self.now {
            u.leases.give_up(&from, self.now);
            if handed_back {
                self.lent.remove(&key);
            }
        } else {
            // A claimant outside our view (a thief far along the ring) cannot be
            // watched through its adverts: if it crashed, nothing would end a long
            // reservation. Its lease is kept short; when it lapses we ask it, and a
            // live holder renews it in its reply.
            // Likewise a reservation of a unit another replica already finished: the verdict
            // waits on it, and if its holder handed the unit on without our hearing, nothing
            // else would end it (a reservation covers a long queue: up to an hour).
            let short = !in_view || !u.tally.commits().is_empty();
            let lease_max =
                if short { lease_max.min(self.asked_lease_max(key.0)) } else { lease_max };
            let until = until.min(self.now + lease_max);
            let u = self.units.get_mut(&key).expect("resolved");
            u.leases.claim_from_holder(from, until, self.now);
            self.note_holder(from, until, key, known_holder);
            self.add_timer(until, TimerKind::Unit(key.0, key.1));
            self.confirm_grant(key, from);
        }
        self.evaluate(key);
        // If we took it up again, our claim stands at the watchers (we never released it);
        // if not, they must hear that we stepped aside.
        if handed_back && self.units.get(&key).is_some_and(|u| u.mine == Mine::None) {
            self.release_lent(key, from);
        }
    }

    /// A victim released its reservation of a unit it handed to a thief.
    pub(super) fn on_release(&mut self, from: PeerId, unit: UnitRef, until: Millis) {
        let Some(key) = self.resolve(&unit, true) else { return };
        // (One that ended already, as a victim sends them, is recorded as ending now: a full
        // lease table drops its earliest-ending lease first.)
        let until = until.clamp(self.now, self.now + self.cfg.claim_grace_ms);
        let u = self.units.get_mut(&key).expect("resolved");
        u.leases.hand_over(from, until);
        self.add_timer(until, TimerKind::Unit(key.0, key.1));
        self.evaluate(key);
    }

    /// Someone asks what we know of a unit: our commits, live leases, or "resolved".
    pub(super) fn on_probe(&mut self, from: PeerId, unit: UnitRef) {
        let Some(key) = self.resolve(&unit, false) else { return };
        self.renew_own_lease(key);
        let me = self.id;
        let (commits, leases) = match self.units.get(&key) {
            Some(u) => (
                u.tally.commits().iter().take(MAX_BATCH).cloned().collect(),
                // Claims only (see `Leases::relayable`), and ours only while we hold the unit.
                // Three peers whose views disagreed (weights changing as owners took their
                // cores back) each expected another to run a unit and, probing each other,
                // kept their implicit and extended leases alive: nobody ran it.
                u.leases
                    .relayable(self.now)
                    .filter(|l| l.holder != me || u.mine.holds())
                    .copied()
                    .collect(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        let done = self.done.contains(&key);
        self.out.push(Action::Send {
            to: from,
            msg: Message::ProbeReply { unit, commits, leases, done },
        });
    }

    /// The answer to our probe: hints that the unit is resolved, leases, commits.
    pub(super) fn on_probe_reply(
        &mut self,
        from: PeerId,
        unit: UnitRef,
        commits: Vec<SignedCommit>,
        leases: Vec<Lease>,
        done: bool,
    ) {
        let Some(key) = self.resolve(&unit, false) else { return };
        // The submitter needs the commits themselves: "resolved" from others never
        // settles a unit of its own job.
        let own_job = self.jobs[key.0 as usize].mine;
        let Some(u) = self.units.get_mut(&key) else { return };
        if done && !own_job && matches!(u.mine, Mine::Probing | Mine::None) && u.outcome.is_none() {
            u.done_hints = u.done_hints.saturating_add(1);
            if u.done_hints >= 2 {
                self.units.remove(&key);
                self.lent.remove(&key);
                if self.done.len() < self.cfg.max_tracked_units {
                    self.done.insert(key);
                }
                return;
            }
        }
        if done && u.mine == Mine::Committed && u.outcome.is_none() {
            u.done_hints = u.done_hints.saturating_add(1);
            if u.done_hints >= 2 {
                u.outcome = Some(Outcome::Resolved);
                self.retire(key);
                return;
            }
        }
        let mut lease_max = self.reserve_max(key.0);
        if self.units.get(&key).is_some_and(|u| !u.tally.commits().is_empty()) {
            // (As in `on_claim`: a finished replica's verdict waits on these.)
            lease_max = lease_max.min(self.asked_lease_max(key.0));
        }
        let thief = self.lent.get(&key).copied();
        for Lease { holder, until } in leases.into_iter().take(MAX_BATCH) {
            // A lease of a third peer outside our view is hearsay we cannot follow: if its
            // holder left, we never hear it go (it left before we knew the unit, or was never
            // our neighbour), and the replier's copy may be a dead peer's long reservation.
            // It is kept for a short grace only; when that lapses we ask the holder itself,
            // and a live holder answers with its own lease.
            let cap = if holder != from && self.view.get(&holder).is_none() {
                lease_max.min(2 * self.cfg.probe_wait_ms.max(1))
            } else {
                lease_max
            };
            if until > self.now
                && let Some(u) = self.units.get_mut(&key)
                && !u.tally.has(&holder)
            {
                let until = until.min(self.now + cap);
                u.leases.claim_hearsay(holder, until);
                self.add_timer(until, TimerKind::Unit(key.0, key.1));
                // The thief we lent the unit to holds it (its claim to us was lost).
                if thief == Some(holder) {
                    self.confirm_grant(key, holder);
                }
            }
        }
        for c in commits.into_iter().take(MAX_BATCH) {
            if c.body.unit == unit {
                self.on_commit(c);
            }
        }
    }

    /// Someone asks about a unit we have queued or running (a watcher saw our lease lapse):
    /// our lease is renewed to cover what is left, so the probe reply carries it and the
    /// watcher does not hand our unit to another peer. A heartbeat on demand.
    pub(super) fn renew_own_lease(&mut self, key: UKey) {
        let lease_len = self.lease_len(key.0);
        let reservation = self.reservation(key.0);
        let Some(u) = self.units.get_mut(&key) else { return };
        let until = match u.mine {
            Mine::Running | Mine::Ran => self.now + lease_len,
            Mine::Queued => self.now + reservation,
            _ => return,
        };
        u.leases.claim(self.id, until);
    }

    pub(super) fn lease_len(&self, slot: u32) -> Millis {
        self.jobs[slot as usize].info.manifest.limits.deadline_ms + self.cfg.lease_slack_ms
    }

    /// How long a unit queued now is reserved for: the wait behind what is already queued (at
    /// most one deadline per queued unit per core) plus our own run. Units queued by the
    /// placement rule are not bounded by the scan's `queue_per_core`, so a busy peer's queue
    /// can be long; a reservation shorter than the real wait makes every watcher see a lapse
    /// and probe us.
    pub(super) fn reservation(&self, slot: u32) -> Millis {
        let waits = 2 + (self.ready.len() / self.cores.max(1) as usize) as Millis;
        waits.min(MAX_RESERVE_WAITS) * self.lease_len(slot)
    }

    /// The longest lease we keep without asking its holder for a lease we cannot follow well
    /// (a claimant outside our view, a unit another replica already finished): two runs.
    pub(super) fn asked_lease_max(&self, slot: u32) -> Millis {
        2 * self.lease_len(slot)
    }

    /// The longest reservation a claim may carry (see [`Peer::reservation`]). Watchers cap
    /// received claims at this.
    pub(super) fn reserve_max(&self, slot: u32) -> Millis {
        self.lease_len(slot) * MAX_RESERVE_WAITS
    }
}
