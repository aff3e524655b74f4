//! Liveness: finding peers that are gone (silent members are pinged, and dropped without an
//! answer), ending their leases so their units are placed again, and the liveness sweep that
//! drives pending units nobody holds.

use super::state::{Mine, UKey, UnitState};
use super::{Action, Peer, TimerKind};
use crate::message::Message;
use crate::types::{Millis, PeerId, UnitRef};
use crate::util::FxHashMap;

/// Most lease holders whose liveness we follow (see [`Holder`]). When full, the one whose
/// leases end first is forgotten (its silence is left to the advert-based check, or to its
/// lease lapsing).
pub(super) const MAX_HOLDERS: usize = 256;

/// Most [`Peer::heard_from`] calls logged before they are applied.
pub(super) const MAX_HEARD_LOG: usize = 256;

/// Claims remembered per holder. A new claim replaces one whose unit no longer waits on the
/// holder, or the oldest when all still do (then any of the others justifies a ping).
const HOLDER_CLAIMS: usize = 8;

/// A peer that claimed a unit we watch (in our view or not: a thief far along the ring is
/// not), followed so that its silence is noticed while a unit waits on it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Holder {
    /// When we last received a claim, commit, release, grant or answer from it.
    heard: Millis,
    /// The latest end of the leases it claimed from us.
    until: Millis,
    /// Its claims (oldest first) on units that may still wait on it; one that does is worth
    /// a ping.
    claims: [UKey; HOLDER_CLAIMS],
    n_claims: u8,
}

/// A ping we sent to a silent peer: what we knew of it then. Its advert expiry and the time
/// we last heard from it unchanged after `probe_wait_ms` mean no answer came.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pinged {
    peer: PeerId,
    expires: Option<Millis>,
    heard: Option<Millis>,
    sent: Millis,
    /// 1 for the first ping, 2 for the repeat.
    tries: u8,
}

/// Whether unit `key` is pending here and waits on `holder`: its lease is live and its
/// commit has not come.
fn waits_on(units: &FxHashMap<UKey, UnitState>, key: &UKey, holder: &PeerId, now: Millis) -> bool {
    units.get(key).is_some_and(|u| {
        u.outcome.is_none() && u.leases.is_live(holder, now) && !u.tally.has(holder)
    })
}

/// The index of the first of a full claim list's units that does not wait on `holder` (see
/// [`waits_on`]): the same answer as trying them one by one, but each step looks at all of
/// them at once. The units' entries, lease lists and tallies are cold in the cache, and the
/// lookups do not depend on each other, so the loads of all the claims are in flight together
/// instead of one cache miss after another (most claims of a full list still wait, so the
/// one-by-one search read all of them anyway; this was 6 % of the 10,000-peer bench's CPU).
fn first_not_waiting(
    units: &FxHashMap<UKey, UnitState>,
    claims: &[UKey; HOLDER_CLAIMS],
    holder: &PeerId,
    now: Millis,
) -> Option<usize> {
    let found: [Option<&UnitState>; HOLDER_CLAIMS] = std::array::from_fn(|i| units.get(&claims[i]));
    let live: [bool; HOLDER_CLAIMS] = std::array::from_fn(|i| {
        found[i].is_some_and(|u| u.outcome.is_none() && u.leases.is_live(holder, now))
    });
    let waits: [bool; HOLDER_CLAIMS] =
        std::array::from_fn(|i| live[i] && found[i].is_some_and(|u| !u.tally.has(holder)));
    waits.iter().position(|w| !w)
}

impl Peer {
    /// A message came from `from`: if it holds leases we follow, it is alive now. Logged, and
    /// applied to [`Holder::heard`] before anything reads it ([`Peer::apply_heard`]): a
    /// lookup in the holder table on every claim and commit missed the cache.
    pub(super) fn heard_from(&mut self, from: &PeerId) {
        if self.holders.is_empty() {
            return;
        }
        if self.heard_log.len() >= MAX_HEARD_LOG {
            self.apply_heard();
        }
        self.heard_log.push((*from, self.now));
    }

    /// Applies the logged [`Peer::heard_from`] calls, in order: the same `heard` times as
    /// setting them at once. (An entry created after a logged message has a later `heard`
    /// already, so the maximum leaves it; times only grow.)
    fn apply_heard(&mut self) {
        for (p, t) in self.heard_log.drain(..) {
            if let Some(h) = self.holders.get_mut(&p) {
                h.heard = h.heard.max(t);
            }
        }
    }

    /// `from` claimed the unit `key` until `until` (a live claim we recorded); `known` says
    /// whether `holders` has an entry for it (the caller looked it up early, see
    /// [`Peer::on_claim`]).
    pub(super) fn note_holder(&mut self, from: PeerId, until: Millis, key: UKey, known: bool) {
        if !known && self.holders.len() >= MAX_HOLDERS {
            let Some((&evict, h)) = self.holders.iter().min_by_key(|(p, h)| (h.until, **p)) else {
                return;
            };
            if h.until >= until {
                return;
            }
            self.holders.remove(&evict);
        }
        let now = self.now;
        let h = self.holders.entry(from).or_insert(Holder {
            heard: now,
            until: 0,
            claims: [(0, 0); HOLDER_CLAIMS],
            n_claims: 0,
        });
        h.heard = now;
        h.until = h.until.max(until);
        self.holders_until = self.holders_until.min(h.until);
        let n = usize::from(h.n_claims);
        if h.claims[..n].contains(&key) {
            return;
        }
        if n < HOLDER_CLAIMS {
            h.claims[n] = key;
            h.n_claims += 1;
            return;
        }
        let drop = first_not_waiting(&self.units, &h.claims, &from, now).unwrap_or(0);
        h.claims.copy_within(drop + 1.., drop);
        h.claims[HOLDER_CLAIMS - 1] = key;
    }

    /// Pings the peers that may be gone: view members near us on the ring (within
    /// [`Config::view_side`](super::Config::view_side) positions) whose adverts stopped for
    /// [`Config::silence_probe_ms`](super::Config::silence_probe_ms), and lease holders that
    /// sent us no claim, commit or answer for
    /// [`Config::holder_silence_ms`](super::Config::holder_silence_ms)
    /// while a unit they claimed is still pending here (a crashed holder holds up its units
    /// until someone notices). Each peer has at most one ping outstanding.
    pub(super) fn check_silent(&mut self) {
        self.check_pinged();
        let now = self.now;
        let ttl = self.cfg.advert_ttl_ms as Millis;
        let mut ping: Vec<PeerId> = Vec::new();
        if self.cfg.silence_probe_ms < ttl {
            let silent_before = now.saturating_add(ttl).saturating_sub(self.cfg.silence_probe_ms);
            // Only members placement uses: those within `view_side` ring positions of us.
            // The view also keeps farther ones (spares for when a neighbour leaves); their
            // silence changes nothing here, and they expire with their TTL. A member that
            // drifted out of the peers its adverts reach (joins in between) was otherwise
            // pinged every `silence_probe_ms` for as long as its pongs kept it in the view:
            // four in five pings of the simulator's 2,000-peer bench, nearly all answered.
            let side = self.cfg.view_side();
            let silent = self.view.expiring(now, silent_before);
            let view = &self.view;
            ping.extend(silent.into_iter().filter(|p| view.is_near(p, side)));
        }
        if self.holders_until <= now {
            let mut earliest = Millis::MAX;
            self.holders.retain(|_, h| {
                let keep = h.until > now;
                if keep {
                    earliest = earliest.min(h.until);
                }
                keep
            });
            self.holders_until = earliest;
        }
        // Only while we have a free run slot and nothing queued: a crashed holder's unit is
        // then one we could run at once. A busy peer would only queue it behind its own work,
        // and live holders that are quiet toward us (their queues' other units have other
        // watchers) would be pinged for nothing; their silence is left to the advert check.
        let idle = self.ready.is_empty() && self.running < self.run_slots();
        if idle && let Some(quiet_since) = now.checked_sub(self.cfg.holder_silence_ms) {
            let (units, view) = (&self.units, &self.view);
            for (p, h) in &self.holders {
                // A member's adverts count too (when it last advertised, from its expiry).
                if h.heard > quiet_since
                    || view.get(p).is_some_and(|m| m.expires.saturating_sub(ttl) > quiet_since)
                {
                    continue;
                }
                let waiting =
                    h.claims[..usize::from(h.n_claims)].iter().any(|k| waits_on(units, k, p, now));
                if waiting {
                    ping.push(*p);
                }
            }
        }
        ping.sort_unstable();
        ping.dedup();
        for p in ping {
            if !self.pinged.iter().any(|q| q.peer == p) {
                self.ping(p, 1);
            }
        }
    }

    fn ping(&mut self, peer: PeerId, tries: u8) {
        let expires = self.view.get(&peer).map(|m| m.expires);
        let heard = self.holders.get(&peer).map(|h| h.heard);
        if expires.is_none() && heard.is_none() {
            return;
        }
        self.pinged.push(Pinged { peer, expires, heard, sent: self.now, tries });
        self.out.push(Action::Send { to: peer, msg: Message::Ping });
        self.add_timer(self.now + self.cfg.probe_wait_ms, TimerKind::Pinged);
    }

    /// Pings that went `probe_wait_ms` without any message from the peer: a first one is
    /// repeated (the ping or its answer may have been lost), after a second the peer is taken
    /// as gone — it leaves our view, its leases end and its units are placed again.
    pub(super) fn check_pinged(&mut self) {
        self.apply_heard();
        let now = self.now;
        let wait = self.cfg.probe_wait_ms;
        let (mut gone, mut again) = (Vec::new(), Vec::new());
        let (view, holders) = (&self.view, &self.holders);
        self.pinged.retain(|q| {
            if q.sent + wait > now {
                return true;
            }
            let expires = view.get(&q.peer).map(|m| m.expires);
            let heard = holders.get(&q.peer).map(|h| h.heard);
            let silent = (expires.is_some() || heard.is_some())
                && expires == q.expires
                && expires.is_none_or(|e| e > now)
                && heard == q.heard;
            if silent {
                if q.tries >= 2 { gone.push(q.peer) } else { again.push(q.peer) }
            }
            false
        });
        for p in again {
            self.ping(p, 2);
        }
        if gone.is_empty() {
            return;
        }
        gone.sort_unstable();
        self.stats.silent_dropped += gone.len() as u64;
        let before = self.regions();
        let mut left_view = false;
        for p in &gone {
            left_view |= self.view.remove(p);
            self.holders.remove(p);
        }
        if left_view {
            self.rescan_after_leave(before);
        }
        self.holders_gone(&gone);
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
        for p in gone {
            self.holders.remove(p);
        }
        self.forget_early_from(gone);
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
                for to in self.watchers_for_extras(key) {
                    self.out.push(Action::Send { to, msg: Message::Claim { unit, until: 0 } });
                }
                continue;
            }
            let Some(c) = u.tally.commits().iter().find(|c| c.body.executor == self.id).cloned()
            else {
                continue;
            };
            for to in self.watchers(key) {
                self.stats.commits_resent += 1;
                self.out.push(Action::Send { to, msg: Message::Commit(Box::new(c.clone())) });
            }
        }
    }
}
