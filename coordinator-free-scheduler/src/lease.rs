//! Claims as leases: a peer that starts a unit claims it until `until`; if no commit from it
//! arrives by then, the lease has lapsed and the next-ranked peer takes over.
//!
//! A lapse alone is weak evidence under churn: the holder may just be slow or still have the
//! unit queued. So a watcher *extends* a lapsed lease briefly, a bounded number of times, while
//! the holder is still in its membership view, and asks the holder ([`Leases::extend_lapsed`]):
//! a holder that still has the unit answers with a fresh lease, one that finished answers with
//! its commit, and silence means take-over. It re-places the unit
//! at once when the holder is known gone ([`Leases::holder_gone`]). Implicit leases (handed by
//! a watcher to a peer that has not claimed yet) are extended once, to ask their holder;
//! handed-over and given-up claims are never extended.
//!
//! A give-up is kept apart from the leases when the table is full: the leases and the
//! give-ups are each bounded ([`MAX_LEASES_PER_UNIT`], [`MAX_GIVE_UPS_PER_UNIT`]) and a new
//! entry only ever replaces one of its own kind. A give-up ends when it is made, so under one
//! shared bound it was the first entry a full table dropped; the holder's old lease (a long
//! reservation, still circulating in probe replies and steal grants from peers that never
//! heard the give-up) was then accepted again as a live replica, and the unit waited for it.

use serde::{Deserialize, Serialize};

use crate::types::{Millis, PeerId};

/// Most leases remembered per unit, give-ups aside; when full, the earliest-expiring one is
/// replaced (never a give-up).
pub const MAX_LEASES_PER_UNIT: usize = 8;

/// Most give-ups remembered per unit, beside the leases; when full, the oldest is dropped (and
/// its holder's old lease may then be accepted again, as before: a bound has to give somewhere,
/// and in the `allow-lists` scenario sixteen did no better than eight).
pub const MAX_GIVE_UPS_PER_UNIT: usize = 8;

/// Most times a lapsed lease is extended while its holder is still alive in the view.
pub const MAX_EXTENSIONS: u8 = 2;

/// Flag value: the lease may never be extended (holder gone).
const FINAL: u8 = u8::MAX;
/// Flag value of an implicit lease: one extension left (its holder is asked once).
const IMPLICIT: u8 = MAX_EXTENSIONS - 1;
/// Flag value: the holder handed the unit over; later claims from it are stale (a claim sent
/// just before the hand-over can arrive after it) and are ignored.
const HANDED: u8 = u8::MAX - 1;
/// Flag value: the holder gave the unit up (it could not run it). It never runs this unit
/// again, so a claim from it that arrives later was sent before the give-up and is stale.
const GAVE: u8 = u8::MAX - 2;

/// One claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Who claimed the unit.
    pub holder: PeerId,
    /// When the claim lapses.
    pub until: Millis,
}

/// The leases known for one unit.
#[derive(Clone, Debug, Default)]
pub struct Leases {
    v: Vec<(Lease, u8)>,
}

impl Leases {
    fn put(&mut self, holder: PeerId, until: Millis, flag: u8) {
        if let Some((l, f)) = self.v.iter_mut().find(|(l, _)| l.holder == holder) {
            if *f == HANDED || *f == GAVE {
                return;
            }
            if until > l.until {
                l.until = until;
                // A real claim turns an implicit lease into an extendable one.
                if flag != FINAL {
                    *f = flag;
                }
            }
            return;
        }
        // A full table replaces its earliest-ending lease, never a give-up (see the module
        // docs).
        if self.v.len() >= MAX_LEASES_PER_UNIT
            && self.v.iter().filter(|(_, f)| *f != GAVE).count() >= MAX_LEASES_PER_UNIT
            && let Some(i) = (0..self.v.len())
                .filter(|&i| self.v[i].1 != GAVE)
                .min_by_key(|&i| self.v[i].0.until)
        {
            self.v.swap_remove(i);
        }
        // Near-exact growth: a unit has a handful of leases, and millions of units are tracked
        // network-wide, so the default doubling (4 slots at once) would double their memory;
        // room for two at the first (two replicas claim most units).
        self.v.reserve_exact(if self.v.is_empty() { 2 } else { 1 });
        self.v.push((Lease { holder, until }, flag));
    }

    /// When `holder`'s lease ends, if one is recorded.
    pub fn until_of(&self, holder: &PeerId) -> Option<Millis> {
        self.v.iter().find(|(l, _)| l.holder == *holder).map(|(l, _)| l.until)
    }

    /// Records or extends a claim (a lease never shrinks).
    pub fn claim(&mut self, holder: PeerId, until: Millis) {
        self.put(holder, until, 0);
    }

    /// Records a lease we only heard about from a third peer (a probe reply). Hearsay never
    /// revives a lease that ended because its holder left: the replier may not have seen it go,
    /// and a departed holder's reservation would otherwise circulate until it runs out. Nor one
    /// whose holder gave the unit up (as any claim from it, see [`Leases::give_up`]).
    pub fn claim_hearsay(&mut self, holder: PeerId, until: Millis) {
        if self.v.iter().any(|(l, f)| l.holder == holder && *f == FINAL) {
            return;
        }
        self.put(holder, until, 0);
    }

    /// Applies a claim from the holder itself. The holder is authoritative about its own
    /// intent: a claim that ends *earlier* than its live lease is a hand-over (it gave the
    /// unit to someone else) and shortens the lease, which is then never extended.
    pub fn claim_from_holder(&mut self, holder: PeerId, until: Millis, now: Millis) {
        if let Some((l, f)) = self.v.iter_mut().find(|(l, _)| l.holder == holder && l.until > now)
            && until < l.until
            && *f != GAVE
        {
            l.until = until;
            *f = HANDED;
            return;
        }
        self.put(holder, until, 0);
    }

    /// Shortens every live, extendable lease ending after `max_until` to end then (a
    /// reservation we will no longer wait out unasked: see `Peer::on_commit`). Returns the
    /// earliest end it set, if any.
    pub fn cap(&mut self, max_until: Millis) -> Option<Millis> {
        let mut capped = None;
        for (l, f) in &mut self.v {
            if l.until > max_until && *f != HANDED && *f != GAVE && *f != FINAL {
                l.until = max_until;
                capped = Some(max_until);
            }
        }
        capped
    }

    /// Records an implicit lease: `holder` is expected to run the unit but has not claimed it.
    /// When it lapses it is extended once, while the holder is asked about the unit (it may
    /// have finished it long ago, before we knew the unit). A lease the holder claimed itself
    /// keeps its kind; only its end may move later.
    pub fn claim_implicit(&mut self, holder: PeerId, until: Millis) {
        if let Some((l, f)) = self.v.iter_mut().find(|(l, _)| l.holder == holder) {
            if *f != HANDED && *f != GAVE && until > l.until {
                l.until = until;
            }
            return;
        }
        self.put(holder, until, IMPLICIT);
    }

    /// Records that we handed the unit over (see [`Leases::claim_from_holder`]).
    pub fn hand_over(&mut self, holder: PeerId, until: Millis) {
        self.release(&holder);
        self.put(holder, until, HANDED);
    }

    /// `holder` gave the unit up: its lease ends at `now`, is never extended, and later claims
    /// from it (sent before the give-up, arriving after it) and leases of it heard from others
    /// are ignored. Give-ups are bounded apart from the leases: past
    /// [`MAX_GIVE_UPS_PER_UNIT`] the oldest give-up is dropped, never a lease.
    pub fn give_up(&mut self, holder: &PeerId, now: Millis) {
        self.release(holder);
        let gave = self.v.iter().filter(|(_, f)| *f == GAVE).count();
        if gave >= MAX_GIVE_UPS_PER_UNIT
            && let Some(i) = (0..self.v.len())
                .filter(|&i| self.v[i].1 == GAVE)
                .min_by_key(|&i| self.v[i].0.until)
        {
            self.v.remove(i);
        }
        self.v.reserve_exact(1);
        self.v.push((Lease { holder: *holder, until: now }, GAVE));
    }

    /// Ends every live lease held by `holder` at `now` (it left the network). Returns whether
    /// there was one.
    pub fn holder_gone(&mut self, holder: &PeerId, now: Millis) -> bool {
        let mut hit = false;
        for (l, f) in &mut self.v {
            if l.holder == *holder && l.until > now {
                l.until = now;
                *f = FINAL;
                hit = true;
            }
        }
        hit
    }

    /// Extends by `by` every lapsed, extendable lease whose holder `alive` says is still
    /// around, at most [`MAX_EXTENSIONS`] times each, and calls `extended` with each such
    /// holder (the watcher asks it whether it still holds the unit). Returns the earliest new
    /// expiry.
    pub fn extend_lapsed(
        &mut self,
        now: Millis,
        by: Millis,
        mut alive: impl FnMut(&PeerId) -> bool,
        mut extended: impl FnMut(&PeerId),
    ) -> Option<Millis> {
        let mut next: Option<Millis> = None;
        for (l, f) in &mut self.v {
            if l.until <= now && *f < MAX_EXTENSIONS && alive(&l.holder) {
                *f += 1;
                l.until = now + by;
                extended(&l.holder);
                next = Some(next.map_or(l.until, |n: Millis| n.min(l.until)));
            }
        }
        next
    }

    /// Drops `holder`'s claim (it committed, or gave the unit away).
    pub fn release(&mut self, holder: &PeerId) {
        self.v.retain(|(l, _)| l.holder != *holder);
    }

    /// Whether `holder` holds a live lease at `now`.
    pub fn is_live(&self, holder: &PeerId, now: Millis) -> bool {
        self.v.iter().any(|(l, _)| l.holder == *holder && l.until > now)
    }

    /// Whether `holder` held a lease that lapsed.
    pub fn lapsed(&self, holder: &PeerId, now: Millis) -> bool {
        self.v.iter().any(|(l, _)| l.holder == *holder && l.until <= now)
    }

    /// Whether `holder` gave the unit up.
    pub fn gave_up(&self, holder: &PeerId) -> bool {
        self.v.iter().any(|(l, f)| l.holder == *holder && *f == GAVE)
    }

    /// Whether `holder` handed the unit over (a steal, or a shortened claim).
    pub fn handed(&self, holder: &PeerId) -> bool {
        self.v.iter().any(|(l, f)| l.holder == *holder && *f == HANDED)
    }

    /// Whether some holder gave the unit up.
    pub fn any_gave_up(&self) -> bool {
        self.v.iter().any(|(_, f)| *f == GAVE)
    }

    /// Whether any lease has lapsed (or was given up) at `now`.
    pub fn any_lapsed(&self, now: Millis) -> bool {
        self.v.iter().any(|(l, _)| l.until <= now)
    }

    /// Live leases at `now`.
    pub fn live(&self, now: Millis) -> impl Iterator<Item = &Lease> {
        self.v.iter().map(|(l, _)| l).filter(move |l| l.until > now)
    }

    /// Live leases that stand for a claim (the holder's own, or heard of), not implicit ones a
    /// watcher handed out while waiting for a claim. (A real claim extended once after lapsing
    /// carries the implicit flag too and is left out: a rare case, and the caller only steps
    /// aside less.)
    pub fn live_claimed(&self, now: Millis) -> impl Iterator<Item = &Lease> {
        self.v.iter().filter(move |(l, f)| l.until > now && *f != IMPLICIT).map(|(l, _)| l)
    }

    /// Live leases fit to pass on to other peers (probe replies, steal grants): claims as
    /// their holders made them (or handed over), not implicit leases (our guess that a peer
    /// ranked ahead will claim) nor leases we extended while asking a holder after a lapse.
    /// Passed on, those would read as the holder's claim at the receiver and restart its
    /// extensions: peers probing each other kept such leases alive among themselves for good.
    pub fn relayable(&self, now: Millis) -> impl Iterator<Item = &Lease> {
        self.v
            .iter()
            .filter(move |(l, f)| l.until > now && (*f == 0 || *f == HANDED))
            .map(|(l, _)| l)
    }

    /// The next moment a live lease lapses.
    pub fn next_expiry(&self, now: Millis) -> Option<Millis> {
        self.live(now).map(|l| l.until).min()
    }

    /// All leases.
    pub fn all(&self) -> Vec<Lease> {
        self.v.iter().map(|(l, _)| *l).collect()
    }

    /// Whether no lease is known.
    pub fn is_empty(&self) -> bool {
        self.v.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only claims (and hand-overs) are passed on: an implicit lease, or one a watcher
    /// extended while it asked the holder, would read as the holder's own claim at the
    /// receiver and restart its extensions there (a circle of peers kept such leases alive).
    #[test]
    fn only_claims_are_relayed() {
        let (a, b, c, d) = (PeerId([1; 32]), PeerId([2; 32]), PeerId([3; 32]), PeerId([4; 32]));
        let mut l = Leases::default();
        l.claim(a, 100);
        l.claim_implicit(b, 100);
        l.claim(c, 50);
        l.hand_over(d, 100);
        // c lapses and is extended once while we ask it.
        assert_eq!(l.extend_lapsed(50, 20, |_| true, |_| {}), Some(70));
        let relayed: Vec<PeerId> = l.relayable(60).map(|x| x.holder).collect();
        assert_eq!(relayed, vec![a, d]);
        // Heard from its holder again, c's claim is a claim once more.
        l.claim(c, 200);
        assert!(l.relayable(60).any(|x| x.holder == c));
        // Nothing lapsed is relayed.
        assert_eq!(l.relayable(100).count(), 1);
    }

    #[test]
    fn lapse_and_bound() {
        let mut l = Leases::default();
        let a = PeerId([1; 32]);
        l.claim(a, 100);
        assert!(l.is_live(&a, 99));
        assert!(!l.is_live(&a, 100));
        assert!(l.lapsed(&a, 100));
        assert_eq!(l.next_expiry(0), Some(100));
        for i in 0..20u8 {
            l.claim(PeerId([i + 10; 32]), 200 + i as u64);
        }
        assert_eq!(l.all().len(), MAX_LEASES_PER_UNIT);
        l.release(&PeerId([29; 32]));
        assert_eq!(l.all().len(), MAX_LEASES_PER_UNIT - 1);
    }

    #[test]
    fn extensions_are_bounded_implicit_once_and_gone_never() {
        let mut l = Leases::default();
        let (a, b, c) = (PeerId([1; 32]), PeerId([2; 32]), PeerId([3; 32]));
        l.claim(a, 100);
        l.claim_implicit(b, 100);
        l.claim(c, 100);
        assert!(l.holder_gone(&c, 50));
        assert_eq!(l.extend_lapsed(100, 50, |_| true, |_| {}), Some(150));
        assert!(l.is_live(&a, 120) && l.is_live(&b, 120) && !l.is_live(&c, 120));
        let mut asked = Vec::new();
        assert_eq!(l.extend_lapsed(150, 50, |_| true, |p| asked.push(*p)), Some(200));
        assert_eq!(asked, vec![a], "an implicit lease is extended once");
        assert_eq!(l.extend_lapsed(200, 50, |_| true, |_| {}), None, "bounded");
        // A real claim after an implicit lease makes it a normal lease.
        l.claim(b, 300);
        assert_eq!(l.extend_lapsed(300, 10, |p| *p == b, |_| {}), Some(310));
        // Hearsay does not bring back a holder that left; its own claim does.
        l.claim_hearsay(c, 900);
        assert!(!l.is_live(&c, 400));
        l.claim_from_holder(c, 900, 400);
        assert!(l.is_live(&c, 400));
    }

    #[test]
    fn a_give_up_is_final_even_against_an_older_claim_arriving_late() {
        let mut l = Leases::default();
        let a = PeerId([1; 32]);
        l.claim(a, 500);
        l.give_up(&a, 100);
        assert!(l.gave_up(&a) && !l.is_live(&a, 100));
        l.claim_from_holder(a, 500, 110);
        l.claim(a, 600);
        assert!(!l.is_live(&a, 120), "a stale claim does not revive a given-up lease");
        assert_eq!(l.extend_lapsed(200, 50, |_| true, |_| {}), None);
    }

    #[test]
    fn a_full_table_keeps_its_give_ups_and_hearsay_does_not_revive_them() {
        let mut l = Leases::default();
        let p = |i: u8| PeerId([i; 32]);
        // The first decliner's give-up ends earliest of all: one shared bound dropped it.
        l.claim(p(1), 900);
        l.give_up(&p(1), 10);
        for i in 2..8u8 {
            l.give_up(&p(i), 10 + i as u64);
        }
        for i in 20..40u8 {
            l.claim(p(i), 100 + i as u64);
            l.hand_over(p(i + 50), 50);
        }
        assert!((1..8u8).all(|i| l.gave_up(&p(i))), "{:?}", l.all());
        l.claim_hearsay(p(1), 900);
        l.claim(p(1), 900);
        assert!(!l.is_live(&p(1), 100), "{:?}", l.all());
        // Both kinds stay bounded; past its bound the oldest give-up goes, not a lease.
        assert_eq!(l.all().len(), 7 + MAX_LEASES_PER_UNIT);
        for i in 8..20u8 {
            l.give_up(&p(i), 10 + i as u64);
        }
        assert_eq!(l.all().len(), MAX_GIVE_UPS_PER_UNIT + MAX_LEASES_PER_UNIT);
        assert!(!l.gave_up(&p(1)) && l.gave_up(&p(19)));
        // (The eighth lease is the last hand-over.)
        assert_eq!(l.live(100).count(), MAX_LEASES_PER_UNIT - 1, "{:?}", l.all());
    }
}
