//! Liveness: finding peers that are gone (silent members are pinged, and dropped without an
//! answer), ending their leases so their units are placed again, and the liveness sweep that
//! drives pending units nobody holds.

use super::state::{Mine, UKey};
use super::{Action, Peer};
use crate::message::Message;
use crate::types::{Millis, PeerId, UnitRef};

impl Peer {
    /// Members we pinged last tick that stayed silent are taken as gone; members silent for
    /// [`Config::silence_probe_ms`] are pinged.
    pub(super) fn check_silent(&mut self) {
        let now = self.now;
        let ttl = self.cfg.advert_ttl_ms as Millis;
        let mut gone = Vec::new();
        for (p, was) in std::mem::take(&mut self.pinged) {
            if self.view.get(&p).is_some_and(|m| m.expires == was && m.expires > now) {
                gone.push(p);
            }
        }
        if !gone.is_empty() {
            gone.sort_unstable();
            self.stats.silent_dropped += gone.len() as u64;
            let before = self.regions();
            for p in &gone {
                self.view.remove(p);
            }
            self.rescan_after_leave(before);
            self.holders_gone(&gone);
        }
        if self.cfg.silence_probe_ms >= ttl {
            return;
        }
        let silent_before = now.saturating_add(ttl).saturating_sub(self.cfg.silence_probe_ms);
        let mut ping: Vec<(PeerId, Millis)> = self
            .view
            .members()
            .filter(|m| m.expires <= silent_before && m.expires > now)
            .map(|m| (m.peer, m.expires))
            .collect();
        ping.sort_unstable();
        for &(to, _) in &ping {
            self.out.push(Action::Send { to, msg: Message::Ping });
        }
        self.pinged = ping;
    }

    /// A member answered our ping: its advert counts as fresh for another TTL.
    pub(super) fn on_pong(&mut self, from: PeerId) {
        let until = self.now + self.cfg.advert_ttl_ms as Millis;
        self.view.touch(&from, until);
    }

    /// Peers in `gone` left (graceful leave, or their adverts expired): their live leases end
    /// now and the units they held are re-placed at once instead of waiting for a lapse.
    pub(super) fn holders_gone(&mut self, gone: &[PeerId]) {
        if gone.is_empty() {
            return;
        }
        let now = self.now;
        let mut hit = Vec::new();
        for (k, u) in self.units.iter_mut() {
            if u.outcome.is_some() || u.leases.is_empty() {
                continue;
            }
            let mut any = false;
            for p in gone {
                any |= !u.tally.has(p) && u.leases.holder_gone(p, now);
            }
            if any {
                hit.push(*k);
            }
        }
        hit.sort_unstable();
        self.stats.leases_gone += hit.len() as u64;
        for k in hit {
            self.evaluate(k);
        }
    }

    /// Units with a lapsed lease that no timer watches (their lease check was further away
    /// than a sweep, see [`Peer::add_timer`]) while another lease is still live: the sweep
    /// only drives units that nobody holds, so these are re-evaluated here.
    pub(super) fn recheck_lapsed(&mut self) {
        let now = self.now;
        let mut lapsed: Vec<UKey> = self
            .units
            .iter()
            .filter(|(_, u)| {
                u.outcome.is_none()
                    && u.mine == Mine::None
                    && u.leases.any_lapsed(now)
                    && u.leases.next_expiry(now).is_some()
            })
            .map(|(k, _)| *k)
            .collect();
        lapsed.sort_unstable();
        for key in lapsed {
            self.evaluate(key);
        }
    }

    /// Liveness backstop (every fourth expiry tick): a pending unit that nobody holds a live
    /// lease on is driven again — re-evaluated; if we already committed to it, our commit is
    /// re-sent to its current ranking so the peers now responsible take it up; if we handed it
    /// back, the hand-back is repeated (it may have been lost). Re-sends back off
    /// exponentially per unit (sweeps 1, 2, 4, 8, ...): a unit that stays pending here is
    /// usually one whose verdict never reached us, and re-sending every sweep was most of the
    /// simulator's commit traffic.
    pub(super) fn sweep(&mut self) {
        self.resync_stalled_jobs();
        let now = self.now;
        let mut stuck: Vec<UKey> = self
            .units
            .iter()
            .filter(|(_, u)| {
                u.outcome.is_none()
                    && matches!(u.mine, Mine::None | Mine::Committed | Mine::Gave | Mine::Declined)
                    && u.leases.next_expiry(now).is_none()
            })
            .map(|(k, _)| *k)
            .collect();
        stuck.sort_unstable();
        self.stats.swept += stuck.len() as u64;
        for key in stuck {
            let Some(u) = self.units.get(&key) else { continue };
            if u.mine == Mine::None {
                self.evaluate(key);
                continue;
            }
            let Some(u) = self.units.get_mut(&key) else { continue };
            u.swept = u.swept.saturating_add(1);
            if !u.swept.is_power_of_two() {
                continue;
            }
            let u = &self.units[&key];
            if u.mine == Mine::Gave {
                // What stopped us was transient (inputs unreachable at the time, a shrinking
                // pool), and nobody holds the unit now: take part again. If we rank among the
                // peers still needed, we queue it and claim it; if the cause persists we hand
                // it back again, and the sweep backoff spaces the attempts.
                self.stats.retried_after_giving_up += 1;
                let me = self.id;
                let u = self.units.get_mut(&key).expect("tracked");
                u.mine = Mine::None;
                u.leases.release(&me);
                self.evaluate(key);
                continue;
            }
            if u.mine == Mine::Declined {
                let unit = UnitRef { job: self.jobs[key.0 as usize].info.job_id, index: key.1 };
                for to in self.watchers(key) {
                    self.out.push(Action::Send { to, msg: Message::Claim { unit, until: 0 } });
                }
                continue;
            }
            let Some(c) = u.tally.commits().iter().find(|c| c.body.executor == self.id).copied()
            else {
                continue;
            };
            for to in self.watchers(key) {
                self.stats.commits_resent += 1;
                self.out.push(Action::Send { to, msg: Message::Commit(c) });
            }
        }
    }
}
