//! The region scan: walking the units whose ring points lie in our region (where our view
//! ranks correctly), queueing those we rank among the top `quorum` for, and probing first
//! those in arcs we gained when neighbours left.

use super::state::{Mine, UnitState};
use super::{Action, Peer, RunCause, TimerKind};
use crate::message::Message;
use crate::placement::ranks_within;
use crate::types::{ArchClass, UnitRef};

/// Which units of a (re)started scan are probed before they run.
#[derive(Clone, Copy, Debug)]
pub(super) enum ScanProbe {
    /// None: our view of them is current.
    None,
    /// All (a job learned late: we saw none of its claims).
    All,
    /// Those in the ring arc `(start, end]`.
    Arc(u64, u64),
}

/// Most probe arcs kept per job; more (many departures before a scan ends) probe everything.
const MAX_PROBE_ARCS: usize = 8;

/// Whether ring point `p` lies in the arc `(a, b]` (wrapping; `a == b` is the whole ring).
pub(super) fn in_arc(p: u64, a: u64, b: u64) -> bool {
    p.wrapping_sub(a).wrapping_sub(1) < b.wrapping_sub(a)
}

impl Peer {
    /// Our ring regions (own class, all classes; see [`region`]), to compare across a change.
    pub(super) fn regions(&self) -> [Option<(u64, u64)>; 2] {
        let w = self.cfg.window;
        [self.view.region(false, w), self.view.region(true, w)]
    }

    /// Neighbours within a window of us left: every unit whose window held them has its
    /// ranking moved up by one, so units we skipped may now be ours, and our region grew by
    /// the arc between its old and new start. The region is rescanned; only units in the
    /// gained arc are probed first. A unit we already ranked at most third for was one whose
    /// claims and commits reached us as a watcher, so what we know of it is current; units
    /// newly in our region were not, and may have run long ago.
    pub(super) fn rescan_after_leave(&mut self, before: [Option<(u64, u64)>; 2]) {
        let after = self.regions();
        for s in 0..self.jobs.len() {
            let i = usize::from(self.jobs[s].info.strict());
            let probe = match (before[i], after[i]) {
                (Some((old, _)), Some((new, _))) if old != new => ScanProbe::Arc(new, old),
                (Some(_), None) => ScanProbe::All,
                _ => ScanProbe::None,
            };
            self.start_scan(s as u32, probe);
        }
    }

    /// A member near us (at ring `point`) now offers fewer cores: in every unit whose window
    /// holds it, it races slower, and we may move up several places at once, into the first
    /// `quorum` of units whose claims and commits only went to the peers ranked above us (a
    /// unit's watchers are its first few). Those units are probed before they run; the
    /// others of our region are rescanned as they are.
    pub(super) fn rescan_lighter(&mut self, point: u64) {
        for s in 0..self.jobs.len() {
            let strict = self.jobs[s].info.strict();
            let probe = match self.view.region_at(point, strict, self.cfg.window) {
                Some((a, b)) => ScanProbe::Arc(a, b),
                None => ScanProbe::None,
            };
            self.start_scan(s as u32, probe);
        }
    }

    /// Rescans every job's region (our rankings changed), probing as `probe` says.
    pub(super) fn rescan_all(&mut self, probe: ScanProbe) {
        for s in 0..self.jobs.len() {
            self.start_scan(s as u32, probe);
        }
    }

    pub(super) fn start_scan(&mut self, slot: u32, probe: ScanProbe) {
        let j = &mut self.jobs[slot as usize];
        let n = j.d.by_point.len();
        if j.scan.is_empty() {
            self.scanning += 1;
        }
        j.scan.clear();
        match self.view.region(j.info.strict(), self.cfg.window) {
            None => j.scan.push((0, n)),
            Some((a, b)) => {
                let lo = j.d.by_point.partition_point(|&(p, ..)| p <= a);
                let hi = j.d.by_point.partition_point(|&(p, ..)| p <= b);
                if a < b {
                    j.scan.push((lo, hi));
                } else {
                    j.scan.push((lo, n));
                    j.scan.push((0, hi));
                }
            }
        }
        match probe {
            ScanProbe::None => {}
            ScanProbe::All => j.probe_all = true,
            ScanProbe::Arc(a, b) if j.probe_arcs.contains(&(a, b)) => {}
            ScanProbe::Arc(a, b) if j.probe_arcs.len() < MAX_PROBE_ARCS => {
                j.probe_arcs.push((a, b))
            }
            ScanProbe::Arc(..) => j.probe_all = true,
        }
        self.stats.rescans += 1;
    }

    /// Advances the region scans until the ready queue is full.
    pub(super) fn fill(&mut self) {
        let want = self.run_slots() as usize * self.cfg.queue_per_core;
        if self.ready.len() >= want || self.scanning == 0 {
            return;
        }
        for k in 0..self.job_order.len() {
            let s = self.job_order[k] as usize;
            if self.now < self.jobs[s].scan_after {
                continue;
            }
            while self.ready.len() < want {
                let Some((idx, point, class)) = self.next_scan_index(s) else { break };
                self.scan_unit(s as u32, idx, point, class);
            }
        }
    }

    /// Advances job `s`'s scan: the next unit index in our region, its ring point and its
    /// class (same-arch jobs), or `None` when done.
    pub(super) fn next_scan_index(&mut self, s: usize) -> Option<(u32, u64, ArchClass)> {
        let j = &mut self.jobs[s];
        loop {
            let r = j.scan.first_mut()?;
            if r.0 < r.1 {
                let (point, idx, class) = j.d.by_point[r.0];
                r.0 += 1;
                return Some((idx, point, class));
            }
            j.scan.remove(0);
            if j.scan.is_empty() {
                j.probe_all = false;
                j.probe_arcs.clear();
                self.scanning -= 1;
                return None;
            }
        }
    }

    /// Queues (or first probes) the unit `idx` at ring `point` of job `slot` if we rank among
    /// its first `quorum` and do not know it yet.
    pub(super) fn scan_unit(&mut self, slot: u32, idx: u32, point: u64, class: ArchClass) {
        let key = (slot, idx);
        let j = &self.jobs[slot as usize];
        let strict = j.info.strict();
        if !strict && class != self.arch {
            return;
        }
        let q = j.info.manifest.replication.quorum as usize;
        // Most units of the region are not ours: that is decided on the (cache-warm) ring
        // first, before the table lookups.
        let (ring, me) = (self.view.ring(strict), self.view.my_index(strict));
        let start = self.view.successor(strict, point);
        if !ranks_within(ring, start, me, point, self.cfg.window, q) {
            return;
        }
        // Tracked units re-evaluate on their own (claims, commits, lease timers); a rescan
        // only looks for units we do not know yet.
        if self.done.contains(&key) || self.units.contains_key(&key) {
            return;
        }
        let probe = j.probe_all || j.probe_arcs.iter().any(|&(a, b)| in_arc(point, a, b));
        let unit = UnitRef { job: j.info.job_id, index: idx };
        if self.units.len() >= self.cfg.max_tracked_units {
            self.stats.table_full += 1;
            return;
        }
        let mut u = UnitState::new(class);
        if probe {
            u.mine = Mine::Probing;
            u.cause = RunCause::Probe;
            self.units.insert(key, u);
            self.stats.probes += 1;
            for to in self.watchers_for_extras(key) {
                self.out.push(Action::Send { to, msg: Message::Probe(unit) });
            }
            self.add_timer(self.now + self.cfg.probe_wait_ms, TimerKind::Probe(slot, idx));
        } else {
            self.units.insert(key, u);
            self.stats.queued_scan += 1;
            self.enqueue(key, RunCause::Scan);
        }
    }
}
