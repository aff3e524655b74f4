//! Capacity adverts: coming online, sending ours (on change, and as a rare heartbeat), and
//! applying the ones we receive to the membership [`View`](crate::membership::View).

use super::scan::ScanProbe;
use super::{Action, Peer, TimerKind};
use crate::membership::{Advert, AdvertEffect, MAX_ADVERT_JOBS};
use crate::message::Message;
use crate::types::{Millis, PeerId};

impl Peer {
    pub(super) fn on_online(&mut self) {
        self.wake = None;
        self.online_at = self.now;
        self.timers.retain(|(_, k)| *k != TimerKind::Tick);
        self.first_timer = self.timers.first().map(|t| t.0);
        // Peers that start together still tick (and advertise) at different moments.
        let jitter = self.rng.below(self.tick_interval());
        self.advertise();
        self.add_timer(self.now + jitter + 1, TimerKind::Tick);
        for j in &self.jobs {
            if j.mine && j.verified + j.failed < j.d.unit_ids.len() as u32 {
                self.out.push(Action::Broadcast(Message::SyncRequest(j.info.job_id)));
            }
        }
    }

    /// Advertises when the last advert is a quarter of its TTL old (the heartbeat), or, at
    /// most once an advert interval, when what it says changed: spare cores, or whether we
    /// have units to spare for thieves.
    pub(super) fn advertise_if_due(&mut self) {
        let (at, cores, spare) = self.advertised;
        let heartbeat = (self.cfg.advert_ttl_ms as Millis / 4).max(1);
        let due = self.now + self.tick_interval() / 2 >= at + heartbeat;
        let changed = cores != self.cores || spare != self.has_spare_units();
        if due || (changed && self.now >= at + self.cfg.advert_interval_ms) {
            self.advertise();
        }
    }

    /// Whether a thief may get something from us (what adverts tell it: queue length), with
    /// hysteresis so a queue hovering around the threshold does not make us re-advertise.
    pub(super) fn has_spare_units(&self) -> bool {
        self.scanning > 0 || self.ready.len() >= if self.advertised.2 { 2 } else { 4 }
    }

    /// About how many units our unfinished region scans still hold for us (a thief may be
    /// handed them): the units left in the scans times our share of a window's runs.
    pub(super) fn scan_backlog(&self) -> usize {
        let left: usize = (self.jobs.iter())
            .map(|j| {
                let n: usize = j.scan.iter().map(|r| r.1.saturating_sub(r.0)).sum();
                n * j.info.manifest.replication.quorum as usize
            })
            .sum();
        left / self.cfg.window.max(1)
    }

    pub(super) fn advertise(&mut self) {
        self.advert_seq += 1;
        self.advertised = (self.now, self.cores, self.has_spare_units());
        let ad = self.my_advert();
        self.view.set_my_capacity(self.cores, self.ready.len() as u32);
        self.out.push(Action::Broadcast(Message::Advert(ad)));
    }

    /// Our advert at the current sequence number (a repeat is ignored by those who have it).
    pub(super) fn my_advert(&self) -> Advert {
        Advert {
            peer: self.id,
            arch: self.arch,
            spare_cores: self.cores,
            queue_len: (self.ready.len() + self.scan_backlog()) as u32,
            seq: self.advert_seq,
            ttl_ms: self.cfg.advert_ttl_ms,
            jobs: self.job_ids.iter().rev().take(MAX_ADVERT_JOBS).copied().collect(),
        }
    }

    /// An advert: update the view, answer a newcomer, ask for jobs we do not know.
    pub(super) fn on_advert(&mut self, from: PeerId, ad: Advert) {
        if ad.peer != from {
            self.stats.malformed += 1;
            return;
        }
        let old_weight = self.view.get(&ad.peer).map(|m| m.weight);
        let effect = self.view.apply(&ad, self.now);
        if effect == AdvertEffect::Joined && self.advert_seq > 0 {
            // Tell the newcomer about us right away (at our current sequence number,
            // so peers that already know us ignore it and the exchange stops): a
            // joining peer's view fills in one round trip, not one advert interval.
            let mine = self.my_advert();
            self.out.push(Action::Send { to: from, msg: Message::Advert(mine) });
        }
        // A unit's candidates are its `window` ring successors. A newcomer among them pushes
        // the farthest out of the window, and a member whose weight drops races slower: a
        // unit we skipped because that member ranked ahead of us may now be ours. (Left
        // unscanned, such a unit could have no candidate that tracks it, and wait forever.)
        // Our region only shrinks, so nothing is probed: we ranked among the unit's first few
        // before, and a claim for it would have reached us (we would track it).
        let lighter =
            effect == AdvertEffect::Refreshed && old_weight.is_some_and(|w| ad.spare_cores < w);
        if (effect == AdvertEffect::Joined || lighter)
            && self.view.is_near(&ad.peer, self.cfg.window)
        {
            if lighter {
                self.rescan_lighter(ad.peer.ring_point());
            } else {
                self.rescan_all(ScanProbe::None);
            }
        }
        for job in ad.jobs.iter().take(MAX_ADVERT_JOBS) {
            if self.slot(job).is_none()
                && self.requested.len() < self.cfg.max_jobs * 4
                && self.requested.insert(*job)
            {
                self.out.push(Action::Send { to: from, msg: Message::GetJob(*job) });
            }
        }
    }
}
