//! Jobs: submitting one, learning one from its announcement (or asking for it), keeping its
//! bundle, and the submitter's side of results — syncing the commits it missed.

use std::sync::Arc;

use ova_jobs::{JobId, Manifest, UnitId};

use super::scan::ScanProbe;
use super::state::{JobState, Mine, Outcome};
use super::{Action, Peer, TimerKind};
use crate::message::{JobInfo, MAX_ANNOUNCE_LIST, MAX_BATCH, Message};
use crate::placement::{capacity_by_class, rank, unit_point};
use crate::types::{ArchClass, Millis, PeerId, UnitRef};

/// Most jobs whose early messages are held at once (see [`Peer::hold_early`]).
pub(super) const MAX_EARLY_JOBS: usize = 8;

/// Most of those jobs whose first held message came from one sender.
pub(super) const MAX_EARLY_JOBS_PER_SENDER: usize = 2;

/// Most early messages held per job: a burst of claims and commits for the units of one job
/// while its announcement is on its way.
pub(super) const MAX_EARLY_MESSAGES: usize = 4096;

/// Most bytes (estimated, see [`held_size`]) of early messages held in all.
pub(super) const MAX_EARLY_BYTES: usize = 4 << 20;

/// Messages held for one job we do not know yet (see [`Peer::hold_early`]).
pub(super) struct EarlyJob {
    job: JobId,
    /// Who sent the first of them.
    opened_by: PeerId,
    /// Their estimated size.
    bytes: usize,
    held: Vec<(PeerId, Message)>,
}

/// A held message's size in memory, roughly (an estimate is enough for a bound).
fn held_size(msg: &Message) -> usize {
    match msg {
        Message::Commit(c) => 256 + c.batch.as_ref().map_or(0, |b| 32 * b.path.len()),
        Message::StealGrant(grants) => {
            grants.iter().map(|g| 64 + 32 * g.watchers.len() + 48 * g.leases.len()).sum()
        }
        _ => 64,
    }
}

impl Peer {
    pub(super) fn on_submit(&mut self, m: Manifest) {
        if m.validate().is_err() {
            self.stats.bad_announce += 1;
            return;
        }
        // Same-arch units are split across classes in proportion to these weights, so they
        // should be the network's capacity per class: the shell's census if it gave one (our
        // ring neighbourhood is a few dozen peers, far too few to estimate a class's share).
        let mut classes: Vec<(ArchClass, u32)> = self.census.clone();
        if classes.iter().all(|(_, w)| *w == 0) {
            let ring = self.view.ring(true).iter();
            classes = capacity_by_class(ring.map(|m| (m.arch, u32::from(m.weight))));
        }
        classes.sort();
        classes.truncate(crate::message::MAX_ANNOUNCE_LIST);
        let job_key = unit_point(&UnitId(m.job_id().0));
        rank(self.view.ring(true), job_key, usize::MAX, &mut self.scratch);
        self.ranked = None;
        let mut holders = vec![self.id];
        holders.extend(
            self.scratch
                .iter()
                .map(|(_, p)| *p)
                .filter(|p| *p != self.id)
                .take(self.cfg.bundle_copies),
        );
        let info = Arc::new(JobInfo::new(m, self.id, self.now, classes, holders));
        self.out.push(Action::Broadcast(Message::Announce(info.clone())));
        self.on_announce(info);
    }

    pub(super) fn on_announce(&mut self, info: Arc<JobInfo>) {
        if self.slot(&info.job_id).is_some() {
            return;
        }
        let Some(d) = info.derived().cloned() else {
            self.stats.bad_announce += 1;
            self.take_early(&info.job_id);
            return;
        };
        if self.jobs.len() >= self.cfg.max_jobs {
            self.stats.table_full += 1;
            self.take_early(&info.job_id);
            return;
        }
        let late = self.requested.contains(&info.job_id);
        let slot = self.jobs.len() as u32;
        let mut sources = vec![info.submitter];
        let hold = info.holders.contains(&self.id) && info.submitter != self.id;
        self.jobs.push(JobState {
            mine: info.submitter == self.id,
            info: info.clone(),
            d,
            scan: Vec::new(),
            probe_all: late,
            probe_arcs: Vec::new(),
            scan_after: if late { self.online_at + self.cfg.warmup_ms } else { 0 },
            sources: {
                sources.retain(|p| *p != self.id);
                sources
            },
            verified: 0,
            failed: 0,
            settled_at_sweep: 0,
            still_sweeps: 0,
            copy_fetch: None,
            declined: false,
        });
        self.job_ids.push(info.job_id);
        self.job_order.push(slot);
        let jobs = &self.jobs;
        self.job_order.sort_by_key(|&s| std::cmp::Reverse(jobs[s as usize].info.manifest.priority));
        if late && self.now < self.online_at + self.cfg.warmup_ms {
            self.add_timer(self.online_at + self.cfg.warmup_ms, TimerKind::Scan);
        }
        if hold {
            self.fetch_bundle(slot);
        }
        self.start_scan(slot, if late { ScanProbe::All } else { ScanProbe::None });
        // What arrived about the job before its announcement, in the order it arrived. A
        // claim that lapsed meanwhile is left out: replayed, it would read as a hand-back
        // (final), and its holder renews it or commits anyway.
        for (from, msg) in self.take_early(&info.job_id) {
            if matches!(msg, Message::Claim { until, .. } if until != 0 && until <= self.now) {
                continue;
            }
            self.dispatch(from, msg);
        }
    }

    /// Removes and returns what is held for `job` (see [`Peer::hold_early`]).
    fn take_early(&mut self, job: &JobId) -> Vec<(PeerId, Message)> {
        match self.early.iter().position(|e| e.job == *job) {
            Some(i) => {
                let e = self.early.remove(i);
                self.early_bytes -= e.bytes;
                e.held
            }
            None => Vec::new(),
        }
    }

    /// Drops held claims, releases and grants from peers that left (replayed, they would
    /// stand as live leases of a departed holder); their signed commits still count.
    pub(super) fn forget_early_from(&mut self, gone: &[PeerId]) {
        for e in &mut self.early {
            e.held.retain(|(from, msg)| matches!(msg, Message::Commit(_)) || !gone.contains(from));
            let bytes = e.held.iter().map(|(_, m)| held_size(m)).sum();
            self.early_bytes -= e.bytes - bytes;
            e.bytes = bytes;
        }
    }

    /// Holds a message about a unit of `job`, which we do not know yet, and asks the sender
    /// for the job. The announcement travels by gossip while claims, releases, commits and
    /// steal grants go straight to their peers, so they can arrive first; dropped, a victim's
    /// release of a unit it handed to a thief was lost, and this peer and the victim each
    /// waited for the other to run the unit until an implicit lease lapsed (a minute, every
    /// peer idle, in the P4 benchmark).
    ///
    /// Bounded in jobs ([`MAX_EARLY_JOBS`], the oldest dropped for a new one; at most
    /// [`MAX_EARLY_JOBS_PER_SENDER`] opened by one sender, so one peer naming made-up jobs
    /// cannot push out the others'), in messages per job ([`MAX_EARLY_MESSAGES`]) and in bytes
    /// ([`MAX_EARLY_BYTES`]). What could never be used is not held: commits whose signature
    /// does not check, and anything while our jobs table is full.
    pub(super) fn hold_early(&mut self, from: PeerId, job: JobId, mut msg: Message) {
        if self.jobs.len() >= self.cfg.max_jobs {
            self.stats.table_full += 1;
            return;
        }
        match &mut msg {
            Message::Commit(c) if !self.signature_checks(c) => return,
            Message::StealGrant(grants) => {
                for g in grants.iter_mut() {
                    g.watchers.truncate(MAX_ANNOUNCE_LIST);
                    g.leases.truncate(MAX_ANNOUNCE_LIST);
                }
            }
            _ => {}
        }
        self.ask_if_unknown(from, job);
        let size = held_size(&msg);
        let i = match self.early.iter().position(|e| e.job == job) {
            Some(i) => i,
            None => {
                if self.early.iter().filter(|e| e.opened_by == from).count()
                    >= MAX_EARLY_JOBS_PER_SENDER
                {
                    self.stats.early_dropped += 1;
                    return;
                }
                if self.early.len() >= MAX_EARLY_JOBS {
                    let e = self.early.remove(0);
                    self.early_bytes -= e.bytes;
                    self.stats.early_dropped += e.held.len() as u64;
                }
                self.early.push(EarlyJob { job, opened_by: from, bytes: 0, held: Vec::new() });
                self.early.len() - 1
            }
        };
        let e = &mut self.early[i];
        if e.held.len() >= MAX_EARLY_MESSAGES || self.early_bytes + size > MAX_EARLY_BYTES {
            self.stats.early_dropped += 1;
            return;
        }
        e.held.push((from, msg));
        e.bytes += size;
        self.early_bytes += size;
        self.stats.held_early += 1;
    }

    /// A message arrived about a job we do not know (its announcement is still on its way, or
    /// was lost): ask its sender for it, once. The message itself is held meanwhile (see
    /// [`Peer::hold_early`]); the reply also repeats the sender's hand-backs, in case the
    /// holding space was full.
    pub(super) fn ask_if_unknown(&mut self, from: PeerId, job: JobId) {
        if self.slot(&job).is_none()
            && !self.requested.contains(&job)
            && self.asked.len() < self.cfg.max_jobs * 4
            && self.asked.insert(job)
        {
            self.out.push(Action::Send { to: from, msg: Message::GetJob(job) });
        }
    }

    /// Someone asks for a job we know: the announcement, then our hand-backs of its units.
    pub(super) fn on_get_job(&mut self, from: PeerId, job: JobId) {
        if let Some(s) = self.slot(&job) {
            let info = self.jobs[s as usize].info.clone();
            self.out.push(Action::Send { to: from, msg: Message::Announce(info) });
            // The asker may have dropped our hand-backs and our releases of units handed to
            // a thief because they arrived before it knew the job (and its holding space was
            // full): repeat them, after the announcement. A lost release is a minute's stall
            // (see `hold_early`).
            // (A unit lent to a thief that has not confirmed it yet is not released: see
            // `confirm_grant`. A release we sent has ended already.)
            let (me, lent) = (self.id, &self.lent);
            let mut told: Vec<(u32, Millis)> = self
                .units
                .iter()
                .filter(|(k, u)| k.0 == s && u.outcome.is_none())
                .filter_map(|(k, u)| match u.mine {
                    Mine::Gave | Mine::Declined => Some((k.1, 0)),
                    Mine::None if u.leases.handed(&me) && !lent.contains_key(k) => Some((k.1, 1)),
                    _ => None,
                })
                .collect();
            told.sort_unstable();
            for (index, until) in told {
                let unit = UnitRef { job, index };
                let msg = if until == 0 {
                    Message::Claim { unit, until: 0 }
                } else {
                    Message::Release { unit, until }
                };
                self.out.push(Action::Send { to: from, msg });
            }
        }
    }

    /// A peer keeps a copy of a job's bundle: a source for executors.
    pub(super) fn on_have_bundle(&mut self, from: PeerId, job: JobId) {
        if let Some(s) = self.slot(&job) {
            let j = &mut self.jobs[s as usize];
            if !j.sources.contains(&from) && j.sources.len() < 8 {
                j.sources.push(from);
            }
        }
    }

    /// The submitter asks for the commits we hold for its job.
    pub(super) fn on_sync_request(&mut self, from: PeerId, job: JobId) {
        let Some(s) = self.slot(&job) else { return };
        if self.jobs[s as usize].info.submitter != from {
            return;
        }
        let mut batch = Vec::new();
        for (&(js, _), u) in &self.units {
            if js != s {
                continue;
            }
            // Executors answer for the units they ran: every commit they hold
            // (verified or not), so commits lost while the submitter was away return.
            // Others answer with the tallies of recent verdicts they keep: an executor that
            // crashed while sending its commit may have reached only them.
            let verified_here = matches!(u.outcome, Some(Outcome::Verified));
            if (u.tally.has(&self.id) && !matches!(u.outcome, Some(Outcome::Failed)))
                || verified_here
            {
                batch.extend(u.tally.commits().iter().take(8).cloned());
            }
            if batch.len() >= MAX_BATCH - 8 {
                self.out.push(Action::Send {
                    to: from,
                    msg: Message::SyncReply(std::mem::take(&mut batch)),
                });
            }
        }
        if !batch.is_empty() {
            self.out.push(Action::Send { to: from, msg: Message::SyncReply(batch) });
        }
    }

    /// Our own job made no progress for two sweeps in a row: commits meant for us may have
    /// been lost (a dropped message, a send queue that overflowed), and executors that saw
    /// their units verified among themselves never send them again — we may not even track
    /// those units. Ask every executor for the commits it holds for the job (as a restarted
    /// submitter does), again after 4, 8, 16, ... still sweeps.
    pub(super) fn resync_stalled_jobs(&mut self) {
        for j in &mut self.jobs {
            let settled = j.verified + j.failed;
            if !j.mine || settled >= j.d.unit_ids.len() as u32 {
                continue;
            }
            if settled != j.settled_at_sweep {
                j.settled_at_sweep = settled;
                j.still_sweeps = 0;
                continue;
            }
            j.still_sweeps = j.still_sweeps.saturating_add(1);
            if j.still_sweeps >= 2 && j.still_sweeps.is_power_of_two() {
                self.stats.resyncs += 1;
                self.out.push(Action::Broadcast(Message::SyncRequest(j.info.job_id)));
            }
        }
    }
}
