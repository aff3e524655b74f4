//! Jobs: submitting one, learning one from its announcement (or asking for it), keeping its
//! bundle, and the submitter's side of results — syncing the commits it missed.

use std::sync::Arc;

use ova_jobs::{JobId, Manifest, UnitId};

use super::scan::ScanProbe;
use super::state::{JobState, Mine, Outcome};
use super::{Action, FetchPurpose, Peer, TimerKind};
use crate::message::{JobInfo, MAX_BATCH, Message};
use crate::placement::{capacity_by_class, rank, unit_point};
use crate::types::{ArchClass, PeerId, UnitRef};

/// Most jobs whose early messages are held at once (see [`Peer::hold_early`]).
pub(super) const MAX_EARLY_JOBS: usize = 8;

/// Most early messages held per job: a burst of claims and commits for the units of one job
/// while its announcement is on its way.
pub(super) const MAX_EARLY_MESSAGES: usize = 4096;

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
            return;
        };
        if self.jobs.len() >= self.cfg.max_jobs {
            self.stats.table_full += 1;
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
        });
        self.job_ids.push(info.job_id);
        self.job_order.push(slot);
        let jobs = &self.jobs;
        self.job_order.sort_by_key(|&s| std::cmp::Reverse(jobs[s as usize].info.manifest.priority));
        if late && self.now < self.online_at + self.cfg.warmup_ms {
            self.add_timer(self.online_at + self.cfg.warmup_ms, TimerKind::Scan);
        }
        if hold {
            self.out.push(Action::FetchBlob {
                blob: info.manifest.module,
                from: vec![info.submitter],
                purpose: FetchPurpose::Bundle(info.job_id),
            });
        }
        self.start_scan(slot, if late { ScanProbe::All } else { ScanProbe::None });
        // What arrived about the job before its announcement, in the order it arrived.
        if let Some(i) = self.early.iter().position(|(j, _)| *j == info.job_id) {
            let (_, held) = self.early.remove(i);
            for (from, msg) in held {
                self.dispatch(from, msg);
            }
        }
    }

    /// Holds a message about a unit of `job`, which we do not know yet, and asks the sender
    /// for the job. The announcement travels by gossip while claims, releases and commits go
    /// straight to their watchers, so they can arrive first; dropped, a victim's release of a
    /// unit it handed to a thief was lost, and this peer and the victim each waited for the
    /// other to run the unit until an implicit lease lapsed (a minute, every peer idle, in
    /// the P4 benchmark). Bounded: at most [`MAX_EARLY_JOBS`] jobs (the oldest is dropped for
    /// a new one) of at most [`MAX_EARLY_MESSAGES`] messages each.
    pub(super) fn hold_early(&mut self, from: PeerId, job: JobId, msg: Message) {
        self.ask_if_unknown(from, job);
        let i = match self.early.iter().position(|(j, _)| *j == job) {
            Some(i) => i,
            None => {
                if self.early.len() >= MAX_EARLY_JOBS {
                    let (_, dropped) = self.early.remove(0);
                    self.stats.early_dropped += dropped.len() as u64;
                }
                self.early.push((job, Vec::new()));
                self.early.len() - 1
            }
        };
        let held = &mut self.early[i].1;
        if held.len() >= MAX_EARLY_MESSAGES {
            self.stats.early_dropped += 1;
            return;
        }
        held.push((from, msg));
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
            // The asker may have dropped our hand-backs because they arrived before it knew
            // the job (and its holding space was full): repeat them, after the announcement.
            let mut gave: Vec<u32> = self
                .units
                .iter()
                .filter(|(k, u)| {
                    k.0 == s && matches!(u.mine, Mine::Gave | Mine::Declined) && u.outcome.is_none()
                })
                .map(|(k, _)| k.1)
                .collect();
            gave.sort_unstable();
            for index in gave {
                let unit = UnitRef { job, index };
                self.out.push(Action::Send { to: from, msg: Message::Claim { unit, until: 0 } });
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
