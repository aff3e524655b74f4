//! Membership: capacity adverts and each peer's bounded, TTL-expiring view of the others.
//!
//! A peer keeps only a *neighbourhood* of the placement ring: the `side` nearest peers on each
//! side of its own ring point, once among peers of its own architecture class (for
//! same-architecture jobs) and once among all peers (for strict jobs). Placement only ever asks
//! about units whose candidate window contains this peer, and those windows lie inside that
//! neighbourhood, so a 10,000-peer network costs each peer a few dozen entries, not 10,000.
//!
//! Bounds: at most `4 * side` members are kept. When a new advert would exceed that, the
//! member farthest from us on the ring (in both rings) is evicted. Members expire when their
//! advert's TTL passes without a fresher advert.

use std::sync::Arc;

use ova_jobs::JobId;
use serde::{Deserialize, Serialize};

use crate::types::{ArchClass, Millis, PeerId};
use crate::util::FxHashMap;

/// Most job ids one advert may list.
pub const MAX_ADVERT_JOBS: usize = 8;

/// A peer's capacity advert, gossiped periodically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advert {
    /// Who is advertising.
    pub peer: PeerId,
    /// Its architecture class.
    pub arch: ArchClass,
    /// Cores it offers to Ova right now (the placement weight).
    pub spare_cores: u16,
    /// Units queued but not yet started.
    pub queue_len: u32,
    /// Increases with every advert from this peer; older adverts are ignored.
    pub seq: u64,
    /// How long the advert stays valid after it is received.
    pub ttl_ms: u32,
    /// Jobs the peer is working on (at most [`MAX_ADVERT_JOBS`]), so late joiners learn them.
    /// Shared: a broadcast hands the same list to every receiver.
    pub jobs: Arc<[JobId]>,
}

/// One known peer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Member {
    /// Its id.
    pub peer: PeerId,
    /// Its ring point ([`PeerId::ring_point`]).
    pub point: u64,
    /// Its architecture class.
    pub arch: ArchClass,
    /// Advertised spare cores.
    pub weight: u16,
    /// Advertised queue length.
    pub queue_len: u32,
    /// Advert sequence number.
    pub seq: u64,
    /// When the entry expires.
    pub expires: Millis,
}

/// What an advert did to the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdvertEffect {
    /// A stale or ignored advert.
    Ignored,
    /// A known member refreshed its entry (weight may have changed).
    Refreshed,
    /// The member is new (the ring neighbourhood changed).
    Joined,
}

/// A peer's view of the network.
#[derive(Clone, Debug)]
pub struct View {
    me: Member,
    side: usize,
    members: FxHashMap<PeerId, Member>,
    own: Vec<Member>,
    any: Vec<Member>,
    /// The ring points of `own` and `any`, in the same order: the binary searches by point
    /// (placement, adverts) read these few cache lines, not the members'.
    own_pts: Vec<u64>,
    any_pts: Vec<u64>,
    /// Our index in `own` and in `any`.
    me_own: usize,
    me_any: usize,
    /// Bumped whenever ring membership changes; placement caches key on it.
    pub epoch: u64,
    /// No member expires before this (a lower bound, made exact by every full scan): the
    /// periodic expiry and silence checks skip scanning every member when nobody is due.
    earliest: Millis,
}

fn cw(from: u64, to: u64) -> u64 {
    to.wrapping_sub(from)
}

impl View {
    /// A view holding only ourselves.
    pub fn new(me: PeerId, arch: ArchClass, cores: u16, side: usize) -> Self {
        let m = Member {
            peer: me,
            point: me.ring_point(),
            arch,
            weight: cores,
            queue_len: 0,
            seq: 0,
            expires: Millis::MAX,
        };
        let mut v = Self {
            me: m,
            side: side.max(1),
            members: FxHashMap::default(),
            own: Vec::new(),
            any: Vec::new(),
            own_pts: Vec::new(),
            any_pts: Vec::new(),
            me_own: 0,
            me_any: 0,
            epoch: 0,
            earliest: Millis::MAX,
        };
        v.rebuild();
        v
    }

    /// Ourselves.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// Updates our own advertised capacity.
    pub fn set_my_capacity(&mut self, cores: u16, queue_len: u32) {
        let changed = self.me.weight != cores;
        self.me.weight = cores;
        self.me.queue_len = queue_len;
        if changed {
            self.reweight((self.me.point, self.me.peer), cores);
        }
    }

    /// Most members kept.
    pub fn capacity(&self) -> usize {
        4 * self.side
    }

    /// Number of other members known.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when we know nobody else.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// A member by id.
    pub fn get(&self, peer: &PeerId) -> Option<&Member> {
        if *peer == self.me.peer { Some(&self.me) } else { self.members.get(peer) }
    }

    /// All known members (not ourselves), in no particular order.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// The ring used for a job: our own class's peers (same-arch) or everyone (strict),
    /// sorted by ring point, ourselves included. Its entries carry the current placement
    /// fields (peer, point, arch, weight), and the own-class ring also the current advertised
    /// queue length; for the latest sequence and expiry use [`View::members`] or
    /// [`View::get`].
    pub fn ring(&self, strict: bool) -> &[Member] {
        if strict { &self.any } else { &self.own }
    }

    /// Index in [`View::ring`]`(strict)` of the first member at or after ring `point`
    /// (wrapping), as [`crate::placement::rank`] starts from.
    pub fn successor(&self, strict: bool, point: u64) -> usize {
        let pts = if strict { &self.any_pts } else { &self.own_pts };
        let i = pts.partition_point(|&p| p < point);
        if i == pts.len() { 0 } else { i }
    }

    /// Our own index in [`View::ring`]`(strict)`.
    pub fn my_index(&self, strict: bool) -> usize {
        if strict { self.me_any } else { self.me_own }
    }

    /// The ring arc `(start, end]` holding every unit point whose `window` contains us, in the
    /// ring for `strict` jobs, or `None` when that ring is no larger than the window (see
    /// [`crate::placement::region`]; this one is O(1), and reads the few lines of ring points
    /// rather than two members' 64-byte entries, which the placement rule's every evaluation
    /// found cold).
    pub fn region(&self, strict: bool, window: usize) -> Option<(u64, u64)> {
        let (pts, i) =
            if strict { (&self.any_pts, self.me_any) } else { (&self.own_pts, self.me_own) };
        if pts.len() <= window {
            return None;
        }
        Some((pts[(i + pts.len() - window) % pts.len()], pts[i]))
    }

    /// Applies an advert received at `now`.
    pub fn apply(&mut self, ad: &Advert, now: Millis) -> AdvertEffect {
        if ad.peer == self.me.peer {
            return AdvertEffect::Ignored;
        }
        let expires = now.saturating_add(ad.ttl_ms as Millis);
        if let Some(m) = self.members.get_mut(&ad.peer) {
            if ad.seq <= m.seq {
                return AdvertEffect::Ignored;
            }
            let reweight = m.weight != ad.spare_cores;
            let moved = m.arch != ad.arch;
            // The own-class ring's copy of the queue length (only members of our class are in
            // it, and it equals the member's until this advert).
            let requeue = m.queue_len != ad.queue_len && ad.arch == self.me.arch && !moved;
            m.seq = ad.seq;
            m.weight = ad.spare_cores;
            m.queue_len = ad.queue_len;
            m.expires = expires;
            self.earliest = self.earliest.min(expires);
            m.arch = ad.arch;
            let key = (m.point, m.peer);
            if requeue && let Some(i) = find(&self.own, &self.own_pts, key) {
                self.own[i].queue_len = ad.queue_len;
            }
            if moved {
                self.rebuild();
            } else if reweight {
                self.reweight(key, ad.spare_cores);
            }
            return AdvertEffect::Refreshed;
        }
        let point = ad.peer.ring_point();
        if self.members.len() >= 2 * self.side && !self.would_keep(point, ad.arch) {
            return AdvertEffect::Ignored;
        }
        let m = Member {
            peer: ad.peer,
            point,
            arch: ad.arch,
            weight: ad.spare_cores,
            queue_len: ad.queue_len,
            seq: ad.seq,
            expires,
        };
        self.members.insert(ad.peer, m);
        self.earliest = self.earliest.min(expires);
        if self.members.len() <= 2 * self.side {
            // Everyone fits in both rings (see `nearest`): the newcomer only takes its place.
            self.insert_in_rings(m);
        } else {
            self.rebuild();
        }
        if self.members.contains_key(&ad.peer) {
            AdvertEffect::Joined
        } else {
            AdvertEffect::Ignored
        }
    }

    /// Whether a newcomer at `point` would be among the `side` nearest on either side of us in
    /// either ring (cheap pre-check, so far-away adverts cost no rebuild). Each ring already
    /// holds the `side` nearest members each way, so counting its entries between us and the
    /// newcomer (two binary searches) answers it.
    fn would_keep(&self, point: u64, arch: ArchClass) -> bool {
        // `i`: our index in the ring (kept alongside it).
        let near = |pts: &[u64], i: usize| {
            let n = pts.len();
            let k = pts.partition_point(|&p| p < point);
            let closer_cw = (k + n - i - 1) % n;
            let closer_ccw = (n - 1) - closer_cw;
            closer_cw < self.side || closer_ccw < self.side
        };
        near(&self.any_pts, self.me_any)
            || (arch == self.me.arch && near(&self.own_pts, self.me_own))
    }

    /// How many ring positions separate `peer` from us (the nearer way), in the ring that
    /// matters for `strict` jobs; `None` if unknown.
    pub fn distance(&self, peer: &PeerId, strict: bool) -> Option<usize> {
        let ring = self.ring(strict);
        let i = ring.iter().position(|m| m.peer == *peer)?;
        let me = ring.iter().position(|m| m.peer == self.me.peer)?;
        let d = i.abs_diff(me);
        Some(d.min(ring.len() - d))
    }

    /// The ring arc `(start, end]` holding every unit point whose `window` contains the member
    /// at ring `point`, in the ring for `strict` jobs; `None` if no member of that ring sits
    /// there or the ring is no larger than the window (as [`View::region`] for us).
    pub fn region_at(&self, point: u64, strict: bool, window: usize) -> Option<(u64, u64)> {
        let pts = if strict { &self.any_pts } else { &self.own_pts };
        let i = pts.partition_point(|&p| p < point);
        if pts.len() <= window || pts.get(i) != Some(&point) {
            return None;
        }
        Some((pts[(i + pts.len() - window) % pts.len()], pts[i]))
    }

    /// Whether `peer` is at most `near` ring positions from us in either ring (then, with
    /// `near` the placement window, it is a candidate for some unit of our region).
    pub fn is_near(&self, peer: &PeerId, near: usize) -> bool {
        self.distance(peer, false).is_some_and(|d| d <= near)
            || self.distance(peer, true).is_some_and(|d| d <= near)
    }

    /// The members whose entries expire in `(after, by]`, in no particular order. Scans the
    /// members only when one may be due (see `earliest`).
    pub fn expiring(&mut self, after: Millis, by: Millis) -> Vec<PeerId> {
        self.due(by, |e| e > after)
    }

    /// The members whose entries expire by `by` and pass `keep` (given the expiry).
    fn due(&mut self, by: Millis, keep: impl Fn(Millis) -> bool) -> Vec<PeerId> {
        if self.earliest > by {
            return Vec::new();
        }
        let mut earliest = Millis::MAX;
        let mut out = Vec::new();
        for m in self.members.values() {
            earliest = earliest.min(m.expires);
            if m.expires <= by && keep(m.expires) {
                out.push(m.peer);
            }
        }
        self.earliest = earliest;
        out
    }

    /// Keeps a member at least until `until` (it answered us directly: it is alive).
    pub fn touch(&mut self, peer: &PeerId, until: Millis) {
        if let Some(m) = self.members.get_mut(peer) {
            m.expires = m.expires.max(until);
        }
    }

    /// Removes a member (it left, or the shell saw it go). Returns whether it was known.
    pub fn remove(&mut self, peer: &PeerId) -> bool {
        let known = self.members.remove(peer).is_some();
        if known {
            self.rebuild();
        }
        known
    }

    /// Drops members whose adverts expired by `now`. Returns whether one of them was within
    /// `near` ring positions of us (so rankings in our region may have changed).
    pub fn expire(&mut self, now: Millis, near: usize) -> bool {
        self.expire_gone(now, near).0
    }

    /// Like [`View::expire`], and also returns the members that expired (sorted).
    pub fn expire_gone(&mut self, now: Millis, near: usize) -> (bool, Vec<PeerId>) {
        let mut gone = self.due(now, |_| true);
        if gone.is_empty() {
            return (false, gone);
        }
        gone.sort_unstable();
        let close = gone.iter().any(|p| self.is_near(p, near));
        for p in &gone {
            self.members.remove(p);
        }
        self.rebuild();
        (close, gone)
    }

    /// A member's (or our) weight changed, nothing else that places it: the same members
    /// stay in the same ring positions (neighbourhoods go by ring point), so only the ring
    /// entries' weights change — what a [`View::rebuild`] would give, without re-sorting.
    fn reweight(&mut self, key: (u64, PeerId), weight: u16) {
        for (ring, pts) in [(&mut self.any, &self.any_pts), (&mut self.own, &self.own_pts)] {
            if let Some(i) = find(ring, pts, key) {
                ring[i].weight = weight;
            }
        }
        self.epoch += 1;
    }

    /// Adds a newcomer to the rings while every member is kept (at most `2 * side`): what a
    /// [`View::rebuild`] would give, without collecting and re-sorting everyone.
    fn insert_in_rings(&mut self, m: Member) {
        let key = (m.point, m.peer);
        let me = (self.me.point, self.me.peer);
        let i = self.any.partition_point(|x| (x.point, x.peer) < key);
        self.any.insert(i, m);
        self.any_pts.insert(i, m.point);
        if key < me {
            self.me_any += 1;
        }
        if m.arch == self.me.arch {
            let i = self.own.partition_point(|x| (x.point, x.peer) < key);
            self.own.insert(i, m);
            self.own_pts.insert(i, m.point);
            if key < me {
                self.me_own += 1;
            }
        }
        self.epoch += 1;
    }

    /// Keeps the `side` nearest members each way in both rings; evicts the rest.
    fn rebuild(&mut self) {
        let me = self.me;
        let mut all: Vec<Member> = self.members.values().copied().collect();
        let keep_any = nearest(&mut all, me.point, self.side);
        let mut own: Vec<Member> = all.iter().filter(|m| m.arch == me.arch).copied().collect();
        let keep_own = nearest(&mut own, me.point, self.side);
        let mut keep: Vec<PeerId> =
            keep_any.iter().chain(keep_own.iter()).map(|m| m.peer).collect();
        keep.sort_unstable();
        if keep.len() < self.members.len() {
            self.members.retain(|p, _| keep.binary_search(p).is_ok());
        }
        let mut any = keep_any;
        any.push(me);
        any.sort_unstable_by_key(|m| (m.point, m.peer));
        let mut own = keep_own;
        own.push(me);
        own.sort_unstable_by_key(|m| (m.point, m.peer));
        let at = |ring: &[Member]| ring.iter().position(|m| m.peer == me.peer).unwrap_or(0);
        self.me_any = at(&any);
        self.me_own = at(&own);
        self.any_pts = any.iter().map(|m| m.point).collect();
        self.own_pts = own.iter().map(|m| m.point).collect();
        self.any = any;
        self.own = own;
        self.epoch += 1;
    }
}

/// The index of the member with ring `key` (point, peer) in `ring` (sorted by key; `pts` its
/// points), if it is there.
fn find(ring: &[Member], pts: &[u64], key: (u64, PeerId)) -> Option<usize> {
    let mut i = pts.partition_point(|&p| p < key.0);
    while i < pts.len() && pts[i] == key.0 {
        if ring[i].peer == key.1 {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The up-to-`side` nearest members clockwise and counter-clockwise of `point` (deduplicated):
/// the `side` nearest clockwise, then the `side` nearest counter-clockwise of the rest (in no
/// particular order). Selects rather than sorts, and needs no duplicate checks: this runs on
/// every membership change.
fn nearest(v: &mut [Member], point: u64, side: usize) -> Vec<Member> {
    if v.len() <= 2 * side {
        return v.to_vec();
    }
    if side == 0 {
        return Vec::new();
    }
    v.select_nth_unstable_by_key(side - 1, |m| (cw(point, m.point), m.peer));
    v[side..].select_nth_unstable_by_key(side - 1, |m| (cw(m.point, point), m.peer));
    v[..2 * side].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(i: u8) -> PeerId {
        PeerId([i; 32])
    }

    fn ad(i: u8, seq: u64) -> Advert {
        Advert {
            peer: pid(i),
            arch: if i.is_multiple_of(2) { ArchClass::X86_64 } else { ArchClass::AARCH64 },
            spare_cores: 2,
            queue_len: 0,
            seq,
            ttl_ms: 1000,
            jobs: Arc::from([]),
        }
    }

    #[test]
    fn adverts_expire_and_refresh() {
        let mut v = View::new(pid(0), ArchClass::X86_64, 4, 8);
        assert_eq!(v.apply(&ad(1, 1), 0), AdvertEffect::Joined);
        assert_eq!(v.apply(&ad(1, 1), 0), AdvertEffect::Ignored);
        assert_eq!(v.apply(&ad(1, 2), 500), AdvertEffect::Refreshed);
        assert!(!v.expire(1400, 4));
        assert!(v.expire(1500, 4));
        assert!(v.is_empty());
    }

    #[test]
    fn view_is_bounded_and_classes_split() {
        let mut v = View::new(pid(0), ArchClass::X86_64, 4, 3);
        for i in 1..200u8 {
            v.apply(&ad(i, 1), 0);
        }
        assert!(v.len() <= v.capacity());
        assert!(v.ring(false).iter().all(|m| m.arch == ArchClass::X86_64));
        assert_eq!(v.ring(false).len(), 7);
        assert_eq!(v.ring(true).len(), 7);
    }
}
