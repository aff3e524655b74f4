//! The executor side: our ready queue, reserving and starting units, and what a finished
//! unit becomes (a signed commit, or a hand-back).

use ova_jobs::BlobId;

use super::state::{Mine, UKey};
use super::{Action, LocalFailure, MAX_HELD_CLAIMS, Peer, RunCause, TimerKind};
use crate::commit::{self, CommitBody, SignedCommit};
use crate::commit_batch::CommitBatch;
use crate::message::Message;
use crate::types::{Millis, PeerId, UnitRef};

impl Peer {
    /// Units this peer runs at once: its cores times the run slots per core.
    pub(super) fn run_slots(&self) -> u32 {
        u32::from(self.cores) * self.slots_per_core
    }

    /// Queues a unit and reserves it: the claim goes out now (not at start), so peers
    /// watching the unit know we will run it even while it waits in our queue.
    pub(super) fn enqueue(&mut self, key: UKey, cause: RunCause) {
        let until = self.now + self.reservation(key.0);
        let Some(u) = self.units.get_mut(&key) else { return };
        // Lent to a thief that never confirmed it (the grant was lost): ours again.
        self.lent.remove(&key);
        u.mine = Mine::Queued;
        u.cause = cause;
        u.leases.claim(self.id, until);
        self.ready.push_back(key);
        self.send_claim(key, until, cause);
    }

    /// Tells the unit's replica peers that we hold it until `until`: now, or once
    /// [`Config::claim_hold_ms`](super::Config::claim_hold_ms) has passed if it still needs
    /// saying then.
    ///
    /// Only a unit placed in the ordinary way (by the scan or the placement rule) waits: the
    /// peers ranked after us give it an implicit lease. A unit we took up because something
    /// went wrong (an extra replica after a mismatch, a lapsed lease, a probe, a steal) is
    /// claimed at once, for the peers looking for a replica right then.
    fn send_claim(&mut self, key: UKey, until: Millis, cause: RunCause) {
        let hold = self.cfg.claim_hold_ms;
        let ordinary = matches!(cause, RunCause::Scan | RunCause::Rule);
        if hold > 0 && ordinary && self.held_claims.len() < MAX_HELD_CLAIMS {
            let due = self.now + hold;
            if self.held_claims.is_empty() {
                self.add_timer(due, TimerKind::HeldClaims);
            }
            self.held_claims.push_back((due, key));
            return;
        }
        self.claim_to_replicas(key, until);
    }

    /// Sends our claim of a unit, until `until`, to its replica peers.
    fn claim_to_replicas(&mut self, key: UKey, until: Millis) {
        let unit = UnitRef { job: self.jobs[key.0 as usize].info.job_id, index: key.1 };
        for to in self.replica_peers(key) {
            self.out.push(Action::Send { to, msg: Message::Claim { unit, until } });
        }
    }

    /// Sends the held claims that are due, for the units still queued or running here; the
    /// others need none. A unit that ran has sent its commit to the same peers; one handed
    /// back (or on) was announced as such, and one resolved meanwhile needs no replica.
    pub(super) fn send_due_claims(&mut self) {
        while let Some(&(due, key)) = self.held_claims.front() {
            if due > self.now {
                self.add_timer(due, TimerKind::HeldClaims);
                break;
            }
            self.held_claims.pop_front();
            let Some(u) = self.units.get(&key) else { continue };
            if !matches!(u.mine, Mine::Queued | Mine::Running) || u.outcome.is_some() {
                self.stats.claims_left_out += 1;
                continue;
            }
            // Our lease as it stands: the reservation, or the lease the start renewed it to
            // (a unit queued and then started while its claim waited is listed twice, and
            // the second claim repeats the first, which receivers take as no change).
            let until = u.leases.until_of(&self.id).unwrap_or(self.now + self.lease_len(key.0));
            self.claim_to_replicas(key, until);
        }
    }

    pub(super) fn pump(&mut self) {
        self.fill();
        while self.running < self.run_slots() {
            let Some(key) = self.ready.pop_front() else { break };
            let Some(u) = self.units.get_mut(&key) else { continue };
            if u.mine != Mine::Queued || u.outcome.is_some() {
                if u.mine == Mine::Queued {
                    u.mine = Mine::None;
                }
                continue;
            }
            u.mine = Mine::Running;
            let until = self.now + self.lease_len(key.0);
            let u = self.units.get_mut(&key).expect("tracked");
            let renew = !u.leases.is_live(&self.id, until);
            u.leases.claim(self.id, until);
            self.running += 1;
            self.had_work = true;
            self.stats.started += 1;
            match u.cause {
                RunCause::Scan => self.stats.started_scan += 1,
                RunCause::Probe => self.stats.started_probe += 1,
                RunCause::Lapse => self.stats.started_lapse += 1,
                RunCause::Extra => self.stats.started_extra += 1,
                RunCause::Rule => self.stats.started_rule += 1,
                RunCause::Steal => self.stats.started_steal += 1,
            }
            if renew {
                let cause = u.cause;
                self.send_claim(key, until, cause);
            }
            let j = &self.jobs[key.0 as usize];
            let unit = UnitRef { job: j.info.job_id, index: key.1 };
            let unit_id = j.d.unit_ids[key.1 as usize];
            let job = j.info.clone();
            let sources = j.sources.clone();
            self.out.push(Action::StartUnit { unit, unit_id, job, sources });
            if self.ready.len() < self.run_slots() as usize {
                self.fill();
            }
        }
        if self.running < self.run_slots() && self.ready.is_empty() {
            if self.running == 0 && std::mem::take(&mut self.had_work) {
                // Just ran dry: ask at once, with the back-off of requests made while we
                // were busy forgotten. (They brought nothing because every peer had work, not
                // because the network is dry; waiting them out, the first workers done with a
                // job's units sat idle through its tail while another still had units queued.)
                self.steal_misses = 0;
                self.last_steal = None;
            }
            self.try_steal();
        }
    }

    pub(super) fn on_finished(&mut self, unit: UnitRef, result: Result<BlobId, LocalFailure>) {
        let Some(key) = self.ended(&unit) else { return };
        match result {
            Err(why) => self.hand_back(key, why),
            Ok(result) => self.queue_commit(key, unit, result),
        }
    }

    /// A unit ended whose commit waits for [`Event::SignFinished`](super::Event::SignFinished).
    pub(super) fn on_ran(&mut self, unit: UnitRef, result: Result<BlobId, LocalFailure>) {
        let Some(key) = self.ended(&unit) else { return };
        match result {
            Err(why) => self.hand_back(key, why),
            Ok(result) => {
                if let Some(u) = self.units.get_mut(&key) {
                    u.mine = Mine::Ran;
                }
                self.ran.push((unit, result));
            }
        }
    }

    /// Signs what ran since the last signing (units resolved meanwhile are left out: their
    /// verdict gave them up).
    pub(super) fn sign_ran(&mut self) {
        let mut ran = std::mem::take(&mut self.ran);
        for (unit, result) in ran.drain(..) {
            let Some(s) = self.slot(&unit.job) else { continue };
            let key = (s, unit.index);
            if self.units.get(&key).is_some_and(|u| u.mine == Mine::Ran) {
                self.queue_commit(key, unit, result);
            }
        }
        self.ran = ran;
        self.sign_finished();
    }

    /// The key of a running unit that ended, its run slot freed; `None` if it is not running
    /// here (resolved or given up meanwhile).
    fn ended(&mut self, unit: &UnitRef) -> Option<UKey> {
        let key = (self.slot(&unit.job)?, unit.index);
        if self.units.get(&key)?.mine != Mine::Running {
            return None;
        }
        self.running = self.running.saturating_sub(1);
        Some(key)
    }

    /// Our result for a unit, to be signed at the end of this event.
    fn queue_commit(&mut self, key: UKey, unit: UnitRef, result: BlobId) {
        if let Some(u) = self.units.get_mut(&key) {
            u.mine = Mine::Committed;
        }
        let j = &self.jobs[key.0 as usize];
        self.to_sign.push(CommitBody {
            unit,
            unit_id: j.d.unit_ids[unit.index as usize],
            result,
            executor: self.id,
            arch: self.arch,
        });
    }

    /// Gives a unit we hold (running, or queued) back: our lease ends at once, and the
    /// unit's replica peers, every peer that may be asked for a replica (see
    /// [`Peer::watchers_for_extras`]) and the victim we stole it from hear it, so the next
    /// candidate takes it up without waiting for our lease to lapse. (Told only to the
    /// `quorum + 1` watchers, a hand-back from a peer whose owner took its cores back often
    /// reached only peers whose owners had too: `ova-sim bench --peers 2000 --units 100000
    /// --owners 0.5` took 1.86–1.91× the ideal instead of 1.67–1.76×.)
    fn hand_back(&mut self, key: UKey, why: LocalFailure) {
        let mut watchers = self.replica_peers_and_extras(key);
        let victim = self.stolen.get(&key).map(|s| s.victim);
        let Some(u) = self.units.get_mut(&key) else { return };
        u.mine = if why == LocalFailure::Declined { Mine::Declined } else { Mine::Gave };
        u.leases.give_up(&self.id, self.now);
        if why == LocalFailure::Declined {
            self.jobs[key.0 as usize].declined = true;
        }
        if let Some(v) = victim
            && !watchers.contains(&v)
        {
            watchers.push(v);
        }
        let unit = UnitRef { job: self.jobs[key.0 as usize].info.job_id, index: key.1 };
        for to in watchers {
            self.out.push(Action::Send { to, msg: Message::Claim { unit, until: 0 } });
        }
    }

    /// Our spare cores shrank (the owner is using the machine): units queued beyond what we
    /// now queue for our run slots are handed back, newest first, so other peers run them
    /// instead of their waiting for the owner to finish (with no cores, all of them).
    pub(super) fn shed_queue(&mut self) {
        let keep = self.run_slots() as usize * self.cfg.queue_per_core;
        while self.ready.len() > keep {
            let Some(key) = self.ready.pop_back() else { break };
            if self.units.get(&key).is_some_and(|u| u.mine == Mine::Queued && u.outcome.is_none()) {
                self.stats.shed += 1;
                self.hand_back(key, LocalFailure::Cancelled);
            }
        }
    }

    /// Signs the results finished in this event (one signature for all of them) and sends
    /// them to the units' watchers and submitters: one [`Message::Commits`] per receiver,
    /// holding that receiver's commits of the batch.
    pub(super) fn sign_finished(&mut self) {
        if self.to_sign.is_empty() {
            return;
        }
        let bodies = std::mem::take(&mut self.to_sign);
        // Receivers in the order first met (the simulator's runs stay reproducible).
        let mut to_send: Vec<(PeerId, Vec<SignedCommit>)> = Vec::new();
        for c in commit::sign_batch(&*self.signer, &bodies) {
            let Some(s) = self.slot(&c.body.unit.job) else { continue };
            let key = (s, c.body.unit.index);
            let submitter = self.jobs[s as usize].info.submitter;
            // A result that contradicts one we hold goes to every peer that may be asked for
            // an extra replica (the tally's other commits agreed, so it went to fewer).
            let watchers = if self.contradicts(key, &c.body) {
                self.replica_peers_and_extras(key)
            } else {
                self.replica_peers(key)
            };
            self.stats.committed += 1;
            self.out.push(Action::StoreBlob(c.body.result));
            let mut sent_submitter = submitter == self.id;
            for to in watchers {
                sent_submitter |= to == submitter;
                add_for(&mut to_send, to, &c);
            }
            if !sent_submitter {
                add_for(&mut to_send, submitter, &c);
            }
            self.on_own_commit(c);
        }
        for (to, commits) in to_send {
            for batch in CommitBatch::pack(commits) {
                self.out.push(Action::Send { to, msg: Message::Commits(Box::new(batch)) });
            }
        }
        self.to_sign = bodies;
        self.to_sign.clear();
    }
}

/// Adds commit `c` to those for `to`.
fn add_for(to_send: &mut Vec<(PeerId, Vec<SignedCommit>)>, to: PeerId, c: &SignedCommit) {
    match to_send.iter_mut().find(|(p, _)| *p == to) {
        Some((_, list)) => list.push(c.clone()),
        None => to_send.push((to, vec![c.clone()])),
    }
}
