//! The per-unit and per-job records a peer keeps, and the lookups from wire references
//! (`JobId`, [`UnitRef`]) to table keys (a job's slot, a unit's [`UKey`]).

use std::sync::Arc;

use ova_jobs::JobId;

use super::{Peer, RunCause};
use crate::lease::Leases;
use crate::message::{Derived, JobInfo};
use crate::quorum::Tally;
use crate::types::{ArchClass, Millis, PeerId, UnitRef};

/// A unit's key in our tables: (job slot, unit index).
pub(super) type UKey = (u32, u32);

/// Our own part in a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mine {
    /// Not involved.
    None,
    /// Waiting for probe replies.
    Probing,
    /// In the ready queue.
    Queued,
    /// Started.
    Running,
    /// Ran here (its run slot is free again); its commit is signed at the next
    /// [`super::Event::SignFinished`]. Held like a running unit until then.
    Ran,
    /// Committed a result.
    Committed,
    /// Could not run it for now (inputs unavailable, cancelled); handed back. Taken up again
    /// by the liveness sweep if the unit is still pending with nobody holding it.
    Gave,
    /// Will not run it (policy); handed back for good.
    Declined,
}

impl Mine {
    /// Whether we hold the unit: queued, running, or ran and not signed yet (our lease is a
    /// claim others may rely on).
    pub(super) fn holds(self) -> bool {
        matches!(self, Mine::Queued | Mine::Running | Mine::Ran)
    }
}

/// How a unit was resolved here.
#[derive(Debug)]
pub(super) enum Outcome {
    /// A result reached the quorum here.
    Verified,
    Failed,
    /// We committed, and two peers told us the unit was resolved without sending the tally
    /// (they keep only its key). Hearsay: it only stops our re-sends; our commit is kept for
    /// sync requests, and the peers that still track the unit place it again if it was a lie.
    Resolved,
}

/// What we know of one unit: our part in it, its commits and leases, its outcome.
#[derive(Debug)]
pub(super) struct UnitState {
    pub(super) mine: Mine,
    pub(super) cause: RunCause,
    /// Probe replies saying "resolved, commits not kept".
    pub(super) done_hints: u8,
    /// Liveness sweeps that found the unit pending with no live lease (re-sends back off).
    pub(super) swept: u8,
    pub(super) tally: Tally,
    pub(super) leases: Leases,
    pub(super) outcome: Option<Outcome>,
    /// The unit's class (`Derived::class_of`), kept here (in what was padding) because the
    /// placement rule checks it on every evaluation and the job's table of a million classes
    /// is cold in the cache.
    pub(super) class: ArchClass,
}

impl UnitState {
    pub(super) fn new(class: ArchClass) -> Self {
        Self {
            class,
            mine: Mine::None,
            cause: RunCause::Rule,
            done_hints: 0,
            swept: 0,
            tally: Tally::default(),
            leases: Leases::default(),
            outcome: None,
        }
    }
}

/// A job we know: its announcement, its derived unit table, our scan of it, its progress.
#[derive(Debug)]
pub(super) struct JobState {
    pub(super) info: Arc<JobInfo>,
    pub(super) d: Arc<Derived>,
    /// Index ranges of `d.by_point` still to scan.
    pub(super) scan: Vec<(usize, usize)>,
    /// Probe every unit of the scan before running it (a job learned late).
    pub(super) probe_all: bool,
    /// Probe the units whose points lie in these ring arcs `(start, end]`: arcs our region
    /// gained when neighbours left (we watched none of their units' claims).
    pub(super) probe_arcs: Vec<(u64, u64)>,
    /// Peers that serve the bundle.
    pub(super) sources: Vec<PeerId>,
    /// Do not scan before this time (warm-up after learning the job late).
    pub(super) scan_after: Millis,
    pub(super) mine: bool,
    pub(super) verified: u32,
    pub(super) failed: u32,
    /// For our own job: `verified + failed` at the last liveness sweep, and how many sweeps
    /// in a row found it unchanged.
    pub(super) settled_at_sweep: u32,
    pub(super) still_sweeps: u8,
    /// The fetch of the bundle copy we were chosen to keep, while it is followed (see
    /// `refetch`).
    pub(super) copy_fetch: Option<super::refetch::BundleFetch>,
    /// Our shell declined a unit of this job (a policy: its allow-list excludes the
    /// submitter), so it declines them all: our steal requests ask for none of its units.
    pub(super) declined: bool,
}

impl Peer {
    /// A job's slot, if we know the job.
    pub(super) fn slot(&self, job: &JobId) -> Option<u32> {
        // Job ids are hashes: their first word tells them apart almost always, and one word
        // compare per slot is cheaper than a 32-byte `memcmp` (this runs on most messages).
        let word = |j: &JobId| u64::from_le_bytes(j.0[..8].try_into().unwrap_or([0; 8]));
        let w = word(job);
        self.job_ids.iter().position(|j| word(j) == w && j == job).map(|s| s as u32)
    }

    /// Maps a unit reference to our key, checking the job and index; creates the unit's entry
    /// if `create` (and the table has room).
    pub(super) fn resolve(&mut self, unit: &UnitRef, create: bool) -> Option<UKey> {
        let Some(s) = self.slot(&unit.job) else {
            self.stats.unknown_job += 1;
            return None;
        };
        if unit.index as usize >= self.jobs[s as usize].d.unit_ids.len() {
            self.stats.bad_unit += 1;
            return None;
        }
        let key = (s, unit.index);
        if create && !self.units.contains_key(&key) {
            if self.done.contains(&key) {
                return None;
            }
            if self.units.len() >= self.cfg.max_tracked_units {
                self.stats.table_full += 1;
                return None;
            }
            let class = self.jobs[s as usize].d.class_of[unit.index as usize];
            self.units.insert(key, UnitState::new(class));
        }
        Some(key)
    }
}
