//! The timer table: lease checks, probe waits, the warm-up end and the periodic tick. The
//! shell is asked for one wake-up at a time ([`Action::SetTimer`]); the tick expires members,
//! pings silent ones, advertises when due and runs the liveness sweep every fourth time.

use super::state::Mine;
use super::{Action, Peer};
use crate::types::Millis;

/// What a timer is for (ordered, so the timer table is a set of `(at, kind)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TimerKind {
    /// Every half advert interval: expire members, advertise if due, sweep every fourth.
    Tick,
    /// Re-evaluate a unit (a lease may have lapsed): its key.
    Unit(u32, u32),
    /// Probe replies for a unit are due: decide without the missing ones.
    Probe(u32, u32),
    /// A late-learned job's warm-up ended: wake up to scan it.
    Scan,
    /// A ping's answer is due (see [`Peer::check_pinged`]).
    Pinged,
    /// A result or bundle-copy fetch's answer or next attempt is due (see
    /// [`super::refetch`]).
    Refetch,
    /// The first held claim is due (see [`super::Config::claim_hold_ms`]).
    HeldClaims,
}

/// Granularity of lease-check timers.
const TIMER_TICK_MS: Millis = 1_000;

impl Peer {
    /// Sets a timer; returns whether it is set (a full table refuses all but the tick, and
    /// a unit timer past the next sweep is left to the sweep).
    pub(super) fn add_timer(&mut self, at: Millis, k: TimerKind) -> bool {
        if self.timers.len() >= self.cfg.max_timers && k != TimerKind::Tick {
            self.stats.table_full += 1;
            return false;
        }
        // A lease check further away than the next liveness sweep is left to the sweep (it
        // re-evaluates units with a lapsed lease): most such leases end in a commit long
        // before, and their timers were most of the wake-ups and of the timer table.
        if matches!(k, TimerKind::Unit(..)) && at > self.now + self.sweep_interval() {
            return false;
        }
        // Unit timers (lease checks) are rounded up to a coarse tick, so the many leases that
        // end close together cost one wake-up, not one each.
        let at = match k {
            TimerKind::Unit(..) => at.div_ceil(TIMER_TICK_MS) * TIMER_TICK_MS,
            _ => at,
        };
        self.timers.insert((at, k));
        if self.first_timer.is_none_or(|t| at < t) {
            self.first_timer = Some(at);
        }
        true
    }

    pub(super) fn arm(&mut self) {
        if let Some(at) = self.first_timer {
            let at = at.max(self.now);
            if self.wake.is_none_or(|w| at < w || w < self.now) {
                self.wake = Some(at);
                self.out.push(Action::SetTimer(at));
            }
        }
    }

    pub(super) fn on_timer(&mut self) {
        self.wake = None;
        while let Some(&(at, k)) = self.timers.first() {
            if at > self.now {
                break;
            }
            self.timers.pop_first();
            self.first_timer = self.timers.first().map(|t| t.0);
            match k {
                TimerKind::Tick => {
                    // (Due claims whose timer a full timer table refused.)
                    self.send_due_claims();
                    self.check_silent();
                    let before = self.regions();
                    let (near, gone) = self.view.expire_gone(self.now, self.cfg.window);
                    if near {
                        self.rescan_after_leave(before);
                    }
                    self.holders_gone(&gone);
                    self.advertise_if_due();
                    self.sweeps += 1;
                    if self.sweeps.is_multiple_of(4) {
                        self.recheck_lapsed();
                        self.sweep();
                    }
                    self.add_timer(self.now + self.tick_interval(), TimerKind::Tick);
                }
                TimerKind::Unit(s, i) => self.evaluate((s, i)),
                TimerKind::Scan => {}
                TimerKind::Pinged => self.check_pinged(),
                TimerKind::Refetch => self.retry_fetches(),
                TimerKind::HeldClaims => self.send_due_claims(),
                TimerKind::Probe(s, i) => {
                    if let Some(u) = self.units.get_mut(&(s, i))
                        && u.mine == Mine::Probing
                    {
                        u.mine = Mine::None;
                        self.evaluate((s, i));
                    }
                }
            }
        }
    }

    /// The period of [`TimerKind::Tick`]: half the advert interval.
    pub(super) fn tick_interval(&self) -> Millis {
        (self.cfg.advert_interval_ms / 2).max(1)
    }

    /// The period of the liveness sweep: every fourth tick.
    pub(super) fn sweep_interval(&self) -> Millis {
        4 * self.tick_interval()
    }
}
