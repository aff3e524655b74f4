//! Commits and verdicts: checking an incoming commit, tallying it, the quorum verdict (and
//! what follows: cancel, fetch the result, notify), retiring resolved units, and telling a
//! late executor the verdict.

use super::state::{Mine, Outcome, UKey};
use super::{Action, Peer, TimerKind};
use crate::commit::{self, CommitError, SignedCommit};
use crate::commit_batch::CommitBatch;
use crate::lease::Leases;
use crate::message::{MAX_BATCH, Message};
use crate::quorum::{Added, Verdict};
use crate::types::{PeerId, UnitRef};

impl Peer {
    /// Whether a commit's signature checks out; counts the ones that do not.
    pub(super) fn signature_checks(&mut self, c: &SignedCommit) -> bool {
        match commit::verify(&*self.verifier, c) {
            Ok(()) => true,
            Err(CommitError::BadSignature) => {
                self.stats.bad_signature += 1;
                false
            }
            Err(CommitError::UnknownSigner) => {
                self.stats.unknown_signer += 1;
                false
            }
        }
    }

    /// A commit received: taken in if its signature checks out.
    pub(super) fn on_commit(&mut self, c: SignedCommit) {
        self.take_commit(c, false);
    }

    /// A commit this peer has just signed itself ([`Peer::sign_finished`]): taken in without
    /// checking the signature it made (a verification per commit, the batch's Merkle path
    /// hashed again, for nothing).
    pub(super) fn on_own_commit(&mut self, c: SignedCommit) {
        self.take_commit(c, true);
    }

    /// A batch of commits received ([`Message::Commits`]): opened with one signature check
    /// for all of them, then each taken in as a checked commit. A batch that fails the check
    /// is dropped whole, every commit of it counted as rejected.
    pub(super) fn on_commit_batch(&mut self, from: PeerId, batch: CommitBatch) {
        let n = batch.len().max(1) as u64;
        let commits = match batch.open(&*self.verifier) {
            Ok(commits) => commits,
            Err(CommitError::BadSignature) => {
                self.stats.bad_signature += n;
                return;
            }
            Err(CommitError::UnknownSigner) => {
                self.stats.unknown_signer += n;
                return;
            }
        };
        self.take_batch(from, commits);
    }

    /// The commits of a batch from `from` that passed [`CommitBatch::open`].
    pub(super) fn take_batch(&mut self, from: PeerId, commits: Vec<SignedCommit>) {
        for c in commits {
            if self.slot(&c.body.unit.job).is_none() {
                self.hold_early(from, c.body.unit.job, Message::Commit(Box::new(c)));
                continue;
            }
            if c.body.executor == from {
                self.answer_late_commit(from, &c);
            }
            self.take_commit(c, true);
        }
    }

    /// Takes in a commit; `checked`: its signature was checked already (we signed it, or it
    /// came out of an opened [`CommitBatch`]).
    fn take_commit(&mut self, c: SignedCommit, checked: bool) {
        // The executor's class as our view has it, looked up first: this lookup and the
        // unit's below miss the cache and do not depend on each other, so they overlap.
        let member_arch = self.view.get(&c.body.executor).map(|m| m.arch);
        // The very same signed commit again (a re-send, or one relayed in a probe or sync
        // reply): it was verified when it arrived first, so skip the signature check (an
        // ed25519 verification in production).
        let mut vetted = false;
        if let Some(s) = self.slot(&c.body.unit.job)
            && let Some(u) = self.units.get(&(s, c.body.unit.index))
        {
            if u.tally.commits().contains(&c) {
                return;
            }
            // A commit in the tally passed the unit-id check below for this very unit: the
            // same id needs no second look into the job's (large) table of unit ids.
            vetted = u.tally.commits().first().is_some_and(|o| o.body.unit_id == c.body.unit_id);
        }
        if !checked && !self.signature_checks(&c) {
            return;
        }
        let Some(key) = self.resolve(&c.body.unit, false) else { return };
        let j = &self.jobs[key.0 as usize];
        if !vetted && j.d.unit_ids[key.1 as usize] != c.body.unit_id {
            self.stats.bad_unit += 1;
            return;
        }
        if !j.info.strict()
            && let Some(arch) = member_arch
            && arch != c.body.arch
        {
            self.stats.bad_unit += 1;
            return;
        }
        let Some(key) = self.resolve(&c.body.unit, true) else { return };
        let u = self.units.get_mut(&key).expect("resolved");
        let executor = c.body.executor;
        match u.tally.add(c) {
            Added::Duplicate => return,
            Added::Equivocation => {
                self.stats.equivocations += 1;
                return;
            }
            Added::New => {}
        }
        u.leases.release(&executor);
        if u.outcome.is_some() {
            return;
        }
        // A replica finished: the verdict now waits on the others' reservations, which may be
        // long (a queue's wait) and stale (the holder handed the unit on and its word did not
        // reach us). They are cut to two runs from now; a holder still at it renews its
        // lease when the lapse makes us ask it (see `claims::on_probe`).
        let cap = self.now + self.asked_lease_max(key.0);
        let u = self.units.get_mut(&key).expect("resolved");
        if let Some(at) = u.leases.cap(cap) {
            self.add_timer(at, TimerKind::Unit(key.0, key.1));
        }
        // A thief we lent the unit to ran it (its claim to us was lost).
        self.confirm_grant(key, executor);
        self.check_verdict(key);
    }

    /// A commit straight from its executor for a unit already resolved here: the executor
    /// ran it late (a lapse, a steal, a replica added after a mismatch) and nobody it sent its
    /// commit to tells it the verdict, so it would keep re-sending. Answer with the tally if we
    /// kept it (the executor checks the verdict itself), else say "resolved" (hearsay: it takes
    /// two such answers to stop the executor's re-sends).
    pub(super) fn answer_late_commit(&mut self, from: PeerId, c: &SignedCommit) {
        let Some(s) = self.slot(&c.body.unit.job) else { return };
        let key = (s, c.body.unit.index);
        let unit = c.body.unit;
        let commits = match self.units.get(&key) {
            Some(u) if u.outcome.is_some() && !u.tally.commits().is_empty() => {
                if u.tally.commits().iter().all(|o| o.body.executor == from) {
                    return;
                }
                u.tally.commits().iter().take(MAX_BATCH).cloned().collect()
            }
            Some(_) => return,
            None if self.done.contains(&key) => Vec::new(),
            None => return,
        };
        let done = commits.is_empty();
        self.out.push(Action::Send {
            to: from,
            msg: Message::ProbeReply { unit, commits, leases: Vec::new(), done },
        });
    }

    /// The unit was resolved while we ran it: a run in progress is cancelled (its slot freed);
    /// one that ran and is not signed yet is never committed (its slot is free already).
    fn end_own_run(&mut self, key: UKey, unit: UnitRef) {
        let Some(u) = self.units.get_mut(&key) else { return };
        match u.mine {
            Mine::Running => {
                self.out.push(Action::CancelUnit(unit));
                self.running = self.running.saturating_sub(1);
                u.mine = Mine::Gave;
            }
            Mine::Ran => u.mine = Mine::Gave,
            _ => {}
        }
    }

    pub(super) fn check_verdict(&mut self, key: UKey) {
        let j = &self.jobs[key.0 as usize];
        let rep = j.info.manifest.replication;
        let same_arch = !j.info.strict();
        let module = j.info.manifest.module;
        let unit = UnitRef { job: j.info.job_id, index: key.1 };
        let u = self.units.get_mut(&key).expect("tracked");
        match u.tally.verdict(rep.quorum, rep.max_replicas, same_arch) {
            Verdict::Pending { .. } => self.evaluate(key),
            Verdict::Verified { result, arch } => {
                u.outcome = Some(Outcome::Verified);
                // A commit on the agreed result (and class, when replicas must share one).
                let agrees = move |c: &SignedCommit| {
                    c.body.result == result && (!same_arch || Some(c.body.arch) == arch)
                };
                let signers: Vec<PeerId> = u
                    .tally
                    .commits()
                    .iter()
                    .filter(|c| agrees(c))
                    .map(|c| c.body.executor)
                    .collect();
                for c in u.tally.commits() {
                    self.dissent.record(c.body.executor, module, agrees(c));
                }
                let me_signed = signers.contains(&self.id);
                self.stats.verified += 1;
                self.end_own_run(key, unit);
                // A signer keeps its own result: no fetch, and no ranking to rule on it.
                let keep = !me_signed
                    && (self.jobs[key.0 as usize].mine || self.is_result_holder(key, &signers));
                let j = &mut self.jobs[key.0 as usize];
                if j.mine {
                    j.verified += 1;
                }
                let proof = match self.units.get(&key) {
                    Some(u) if me_signed || keep => {
                        u.tally.commits().iter().filter(|c| agrees(c)).cloned().collect()
                    }
                    _ => Vec::new(),
                };
                if keep {
                    self.fetch_result(unit, result, signers.clone());
                }
                self.out.push(Action::UnitVerified { unit, result, signers, proof });
                self.retire(key);
            }
            Verdict::Failed(reason) => {
                u.outcome = Some(Outcome::Failed);
                self.end_own_run(key, unit);
                self.stats.failed += 1;
                let j = &mut self.jobs[key.0 as usize];
                if j.mine {
                    j.failed += 1;
                }
                self.out.push(Action::UnitFailed { unit, reason });
                self.retire(key);
            }
        }
    }

    /// A resolved unit: executors keep their tally (to answer probes and sync requests), with
    /// the leases dropped. Everyone else keeps the tally of its `kept_verdicts` most recent
    /// verdicts (an executor that crashed while sending its commit may have reached only us),
    /// and only the key of older ones.
    pub(super) fn retire(&mut self, key: UKey) {
        self.stolen.remove(&key);
        self.lent.remove(&key);
        let Some(u) = self.units.get_mut(&key) else { return };
        match u.mine {
            Mine::Committed => u.leases = Leases::default(),
            Mine::Running | Mine::Ran => {}
            _ if self.cfg.kept_verdicts > 0 && !u.tally.commits().is_empty() => {
                u.leases = Leases::default();
                self.kept.push_back(key);
                while self.kept.len() > self.cfg.kept_verdicts {
                    let old = self.kept.pop_front().expect("non-empty");
                    if self.units.get(&old).is_some_and(|u| u.mine != Mine::Committed) {
                        self.forget(old);
                    }
                }
            }
            _ => self.forget(key),
        }
    }

    /// Keeps only the key of a resolved unit.
    fn forget(&mut self, key: UKey) {
        self.units.remove(&key);
        if self.done.len() < self.cfg.max_tracked_units {
            self.done.insert(key);
        } else {
            self.stats.table_full += 1;
        }
    }

    /// Whether we are one of the `result_copies` best-ranked non-signers for the unit.
    pub(super) fn is_result_holder(&mut self, key: UKey, signers: &[PeerId]) -> bool {
        let r = self.rank_for_copies(key);
        self.scratch
            .iter()
            .filter(|(_, p)| !signers.contains(p))
            .take(r)
            .any(|(_, p)| *p == self.id)
    }

    /// Ranks the unit's candidates into `scratch` and returns how many result copies its
    /// job asks for: the copy holders are the first that many non-signers.
    pub(super) fn rank_for_copies(&mut self, key: UKey) -> usize {
        let j = &self.jobs[key.0 as usize];
        let r = j.info.manifest.replication.result_copies as usize;
        let point = j.d.points[key.1 as usize];
        let strict = j.info.strict();
        self.rank_unit(point, strict);
        r
    }
}
