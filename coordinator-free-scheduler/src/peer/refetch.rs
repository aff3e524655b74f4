//! Result and bundle-copy fetches, followed until the bytes arrive: a failed one is tried
//! again later.
//!
//! A verified result is fetched by the submitter and by the peers ranked to keep copies of it
//! ([`FetchPurpose::Result`]). A fetch can fail for reasons that pass: the signers are down for
//! a while, or a peer that has just restarted does not know their addresses yet. Before, a
//! failed fetch was never tried again, so a submitter that came back to its job could see
//! every unit verified yet never hold some results (until it restarted once more).
//!
//! Each result fetch is now an entry with a due time: while in flight, the time by which the
//! shell must have answered ([`FETCH_ANSWER_MS`]: a peer that goes offline drops its fetches'
//! answers); after a failure, the time of the next attempt, with a doubling pause. A retry asks
//! the signers again and also the peers ranked to hold copies now (our view may have grown).
//! The submitter tries [`OWN_ATTEMPTS`] times (about a quarter of an hour), a copy holder
//! [`HOLDER_ATTEMPTS`] times; then the entry is dropped and counted in
//! [`Stats::result_fetches_abandoned`](super::Stats::result_fetches_abandoned). A submitter that
//! restarts verifies its units again from its stored commits and fetches what it still lacks.
//!
//! Bounded by [`Config::max_result_fetches`](super::Config::max_result_fetches): when full, a
//! fetch still goes out but is not followed (counted in
//! [`Stats::table_full`](super::Stats::table_full)).
//!
//! A peer chosen at announcement to keep a copy of a job's bundle ([`FetchPurpose::Bundle`]:
//! the module and every input, so the job goes on while its submitter is away) follows that
//! fetch the same way, one entry per job ([`BundleFetch`]). It first asks the submitter; a
//! retry asks the peers that said they hold the bundle and the other chosen holders first,
//! the submitter last, [`OWN_ATTEMPTS`] times in all. Before, a failed copy fetch (the
//! submitter left right after announcing, or the fetch timed out) was never tried again, and
//! the job had one copy fewer for the rest of its life.

use ova_jobs::BlobId;

use super::timers::TimerKind;
use super::{Action, FetchPurpose, Peer};
use crate::message::Message;
use crate::types::{Millis, PeerId, UnitRef};

/// How long the shell has to report a fetch before it counts as failed.
pub(super) const FETCH_ANSWER_MS: Millis = 120_000;
/// Pause before the first retry; it doubles with each failure, up to [`MAX_PAUSE_MS`].
const FIRST_PAUSE_MS: Millis = 2_000;
/// Longest pause between two attempts.
const MAX_PAUSE_MS: Millis = 60_000;
/// Attempts at a result of one of our own jobs, or at a bundle copy we were chosen to keep,
/// before giving up (2 + 4 + … + 60 s: about 16 minutes of trying).
pub(super) const OWN_ATTEMPTS: u8 = 20;
/// Attempts at a result we were only ranked to keep a copy of.
pub(super) const HOLDER_ATTEMPTS: u8 = 4;
/// Most retries started by one wake-up (the rest follow a second later), so a returning
/// submitter with thousands of missing results does not ask for them all in one burst.
const RETRIES_PER_WAKE: usize = 256;

/// A result fetch in flight or waiting for its next attempt.
#[derive(Debug)]
pub(super) struct ResultFetch {
    blob: BlobId,
    signers: Vec<PeerId>,
    /// Attempts made so far (the one in flight included).
    attempts: u8,
    /// Whether the unit is of our own job (more attempts).
    own: bool,
    /// The entry's key in [`Peer::result_due`].
    due: Millis,
    /// Whether an attempt is in flight (else `due` is the next attempt's time).
    in_flight: bool,
}

/// The fetch of a bundle copy we keep, in flight or waiting for its next attempt (in its
/// job's state: one per job).
#[derive(Debug)]
pub(super) struct BundleFetch {
    /// Attempts made so far (the one in flight included).
    attempts: u8,
    /// When the attempt in flight counts as failed, or when the next one starts.
    due: Millis,
    /// Whether an attempt is in flight.
    in_flight: bool,
}

impl Peer {
    /// Asks the shell for a copy of the bundle of the job in `slot` from its submitter, and
    /// follows the fetch.
    pub(super) fn fetch_bundle(&mut self, slot: u32) {
        let due = self.now + FETCH_ANSWER_MS;
        let j = &mut self.jobs[slot as usize];
        j.copy_fetch = Some(BundleFetch { attempts: 1, due, in_flight: true });
        let (blob, job, from) = (j.info.manifest.module, j.info.job_id, vec![j.info.submitter]);
        self.arm_refetch(due);
        self.out.push(Action::FetchBlob { blob, from, purpose: FetchPurpose::Bundle(job) });
    }

    /// The shell reported a bundle-copy fetch: we hold the copy (and say so), or try again
    /// later.
    pub(super) fn on_bundle_fetched(&mut self, job: ova_jobs::JobId, ok: bool) {
        if ok {
            self.out.push(Action::Broadcast(Message::HaveBundle(job)));
        }
        let Some(slot) = self.slot(&job) else { return };
        let j = &mut self.jobs[slot as usize];
        if !j.copy_fetch.as_ref().is_some_and(|f| f.in_flight) {
            return;
        }
        if ok {
            j.copy_fetch = None;
        } else {
            self.bundle_fetch_failed(slot);
        }
    }

    /// A bundle-copy attempt failed: schedule the next one, or give up.
    fn bundle_fetch_failed(&mut self, slot: u32) {
        let now = self.now;
        let j = &mut self.jobs[slot as usize];
        let Some(f) = j.copy_fetch.as_mut() else { return };
        if f.attempts >= OWN_ATTEMPTS {
            j.copy_fetch = None;
            self.stats.bundle_fetches_abandoned += 1;
            return;
        }
        f.due = now + (FIRST_PAUSE_MS << (f.attempts - 1).min(16)).min(MAX_PAUSE_MS);
        f.in_flight = false;
        let due = f.due;
        self.arm_refetch(due);
    }

    /// Bundle-copy fetches due: unanswered ones count as failed, retries go out.
    fn retry_bundle_fetches(&mut self) {
        for slot in 0..self.jobs.len() as u32 {
            let j = &self.jobs[slot as usize];
            let Some(f) = &j.copy_fetch else { continue };
            if f.due > self.now {
                continue;
            }
            if f.in_flight {
                self.bundle_fetch_failed(slot);
                continue;
            }
            // Peers that said they hold it and the other chosen holders first: the submitter
            // already failed us once (it may have left).
            let info = &j.info;
            let mut from: Vec<PeerId> = Vec::new();
            for p in j.sources.iter().chain(&info.holders) {
                if *p != self.id && *p != info.submitter && !from.contains(p) {
                    from.push(*p);
                }
            }
            from.push(info.submitter);
            let (blob, job) = (info.manifest.module, info.job_id);
            let due = self.now + FETCH_ANSWER_MS;
            let f = self.jobs[slot as usize].copy_fetch.as_mut().expect("present");
            f.attempts += 1;
            f.in_flight = true;
            f.due = due;
            self.arm_refetch(due);
            self.stats.bundle_fetch_retries += 1;
            self.out.push(Action::FetchBlob { blob, from, purpose: FetchPurpose::Bundle(job) });
        }
    }

    /// Asks the shell for a verified result's bytes from its signers, and follows the fetch.
    pub(super) fn fetch_result(&mut self, unit: UnitRef, blob: BlobId, signers: Vec<PeerId>) {
        let own = self.slot(&unit.job).is_some_and(|s| self.jobs[s as usize].mine);
        if let Some(old) = self.result_fetches.remove(&unit) {
            self.result_due.remove(&(old.due, unit));
        }
        if self.result_fetches.len() < self.cfg.max_result_fetches {
            let due = self.now + FETCH_ANSWER_MS;
            let entry = ResultFetch {
                blob,
                signers: signers.clone(),
                attempts: 1,
                own,
                due,
                in_flight: true,
            };
            self.result_fetches.insert(unit, entry);
            self.result_due.insert((due, unit));
            self.arm_refetch(due);
        } else {
            self.stats.table_full += 1;
        }
        self.out.push(Action::FetchBlob {
            blob,
            from: signers,
            purpose: FetchPurpose::Result(unit),
        });
    }

    /// The shell reported a result fetch: done, or to be tried again later.
    pub(super) fn on_result_fetched(&mut self, unit: UnitRef, blob: BlobId, ok: bool) {
        let Some(f) = self.result_fetches.get(&unit) else { return };
        if f.blob != blob || !f.in_flight {
            return;
        }
        if ok {
            let f = self.result_fetches.remove(&unit).expect("present");
            self.result_due.remove(&(f.due, unit));
            return;
        }
        self.fetch_failed(unit);
    }

    /// An attempt failed (reported so, or not reported in time): schedule the next one, or
    /// give up.
    fn fetch_failed(&mut self, unit: UnitRef) {
        let Some(f) = self.result_fetches.get_mut(&unit) else { return };
        self.result_due.remove(&(f.due, unit));
        let limit = if f.own { OWN_ATTEMPTS } else { HOLDER_ATTEMPTS };
        if f.attempts >= limit {
            self.result_fetches.remove(&unit);
            self.stats.result_fetches_abandoned += 1;
            return;
        }
        let pause = (FIRST_PAUSE_MS << (f.attempts - 1).min(16)).min(MAX_PAUSE_MS);
        f.due = self.now + pause;
        f.in_flight = false;
        let due = f.due;
        self.result_due.insert((due, unit));
        self.arm_refetch(due);
    }

    /// Wakes us at `due` for the fetches then due, unless a wake-up for them is set at or
    /// before it: that one sets the next (see [`Peer::retry_fetches`]). One wake-up per
    /// fetch, at the time its answer was due, woke every result holder once per verified
    /// unit it fetched, about two minutes after the answer had come: at 10,000 peers these
    /// were a third of all timer wake-ups.
    fn arm_refetch(&mut self, due: Millis) {
        if self.refetch_at.is_some_and(|t| t <= due) {
            return;
        }
        if self.add_timer(due, TimerKind::Refetch) {
            self.refetch_at = Some(due);
        }
    }

    /// A refetch wake-up came: fetches not answered in time count as failed, due retries go
    /// out (at most [`RETRIES_PER_WAKE`] result fetches; the rest a second later), and then
    /// one wake-up is set, for the first fetch still followed.
    pub(super) fn retry_fetches(&mut self) {
        // (Every wake-up due by now comes in this call's timer loop; a later one stays.)
        let later = self.refetch_at.filter(|&t| t > self.now);
        // Nothing is armed while the entries move: the one wake-up is set below.
        self.refetch_at = Some(0);
        self.retry_bundle_fetches();
        let cut = self.retry_result_fetches();
        self.refetch_at = later;
        let next = if cut {
            Some(self.now + 1_000)
        } else {
            let bundles = self.jobs.iter().filter_map(|j| j.copy_fetch.as_ref().map(|f| f.due));
            bundles.chain(self.result_due.first().map(|d| d.0)).min()
        };
        if let Some(next) = next {
            self.arm_refetch(next);
        }
    }

    /// Returns whether it stopped at [`RETRIES_PER_WAKE`] with retries still due.
    fn retry_result_fetches(&mut self) -> bool {
        let mut started = 0;
        while let Some(&(due, unit)) = self.result_due.first() {
            if due > self.now {
                break;
            }
            if started == RETRIES_PER_WAKE {
                return true;
            }
            let in_flight = self.result_fetches.get(&unit).is_some_and(|f| f.in_flight);
            if in_flight {
                // Not answered in time: count it failed (this moves or drops its entry).
                self.fetch_failed(unit);
                continue;
            }
            self.result_due.pop_first();
            let Some(slot) = self.slot(&unit.job) else {
                self.result_fetches.remove(&unit);
                continue;
            };
            let Some(f) = self.result_fetches.get(&unit) else { continue };
            let (blob, signers) = (f.blob, f.signers.clone());
            let from = self.result_sources((slot, unit.index), &signers);
            let f = self.result_fetches.get_mut(&unit).expect("present");
            f.attempts += 1;
            f.in_flight = true;
            f.due = self.now + FETCH_ANSWER_MS;
            let due = f.due;
            self.result_due.insert((due, unit));
            self.arm_refetch(due);
            self.stats.result_fetch_retries += 1;
            self.out.push(Action::FetchBlob { blob, from, purpose: FetchPurpose::Result(unit) });
            started += 1;
        }
        false
    }

    /// Where a retry looks for a result: its signers, then the peers ranked (in our view as it
    /// is now) to hold copies of it, ourselves left out.
    fn result_sources(&mut self, key: (u32, u32), signers: &[PeerId]) -> Vec<PeerId> {
        let r = self.rank_for_copies(key);
        let mut from = signers.to_vec();
        from.extend(self.scratch.iter().map(|(_, p)| *p).filter(|p| !signers.contains(p)).take(r));
        from.retain(|p| *p != self.id);
        from
    }
}
