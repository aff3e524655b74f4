//! Placement: weighted rendezvous hashing over a bounded window of the ring.
//!
//! Every unit has a point on the ring (the first 8 bytes of its [`UnitId`], already a BLAKE3
//! hash). Its *candidates* are the `window` peers that follow that point on the ring of the
//! current view; they are ranked by weighted rendezvous hashing — each draws an exponential
//! race time `-ln(u) / weight` from a hash of (unit, peer), lowest first — so a peer with twice
//! the spare cores wins about twice as often. The top `quorum` run the unit; the rest are
//! standbys, next in line when a lease lapses or replicas disagree.
//!
//! When the whole network fits in the window this is plain weighted rendezvous hashing. The
//! window is what lets a peer find *its* units without ranking every unit against every peer:
//! it only looks at units whose points fall in the `window` ring arcs before its own point
//! ([`region`]). Divergent views change a few rankings, which can cost duplicate work but
//! never loses a unit, because whoever ranks a unit high in its own view runs or watches it.

use ova_jobs::UnitId;

use crate::membership::Member;
use crate::types::{ArchClass, PeerId};
use crate::util::mix64;

/// The ring point of a unit.
pub fn unit_point(id: &UnitId) -> u64 {
    u64::from_le_bytes(id.0[..8].try_into().unwrap_or([0; 8]))
}

/// A peer's rendezvous race time for the unit with ring point `key`: lower wins.
pub fn score(key: u64, member_point: u64, weight: u16) -> f64 {
    if weight == 0 {
        return f64::INFINITY;
    }
    let h = mix64(key ^ mix64(member_point));
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -u.ln() / weight as f64
}

/// Index of the first member at or after `point` (wrapping).
fn successor(ring: &[Member], point: u64) -> usize {
    let i = ring.partition_point(|m| m.point < point);
    if i == ring.len() { 0 } else { i }
}

/// Ranks the candidates for a unit with ring point `key`: the `window` ring successors of
/// `key`, best first, leaving out peers with no spare cores. Writes into `out` (cleared).
pub fn rank(ring: &[Member], key: u64, window: usize, out: &mut Vec<(f64, PeerId)>) {
    let start = if ring.is_empty() { 0 } else { successor(ring, key) };
    rank_from(ring, start, key, window, out);
}

/// [`rank`], with `start` the index of `key`'s ring successor (see
/// [`View::successor`](crate::membership::View::successor), which finds it without touching
/// the members).
pub fn rank_from(
    ring: &[Member],
    start: usize,
    key: u64,
    window: usize,
    out: &mut Vec<(f64, PeerId)>,
) {
    out.clear();
    if ring.is_empty() {
        return;
    }
    let n = window.min(ring.len());
    // Sort small (score, index) pairs, not (score, peer id): ranking runs on most messages.
    let mut tmp = [(0f64, 0usize); 64];
    if n > tmp.len() {
        for k in 0..n {
            let m = &ring[(start + k) % ring.len()];
            if m.weight > 0 {
                out.push((score(key, m.point, m.weight), m.peer));
            }
        }
        out.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        return;
    }
    let mut len = 0;
    for k in 0..n {
        let i = (start + k) % ring.len();
        let m = &ring[i];
        if m.weight > 0 {
            tmp[len] = (score(key, m.point, m.weight), i);
            len += 1;
        }
    }
    let tmp = &mut tmp[..len];
    tmp.sort_unstable_by(|a, b| {
        a.0.total_cmp(&b.0).then_with(|| ring[a.1].peer.cmp(&ring[b.1].peer))
    });
    out.extend(tmp.iter().map(|&(s, i)| (s, ring[i].peer)));
}

/// Whether the member at index `me` of `ring` ranks among the first `top` candidates for the
/// unit with ring point `key`: the answer of `position(rank(..), me) < top`, without ranking
/// everyone. Counts the candidates ranked ahead (lower race time; ties by peer id, as in
/// [`rank`]) and stops at `top`. A region scan asks this of every unit in the region, and
/// most are not ours.
/// `start` is the index of `key`'s ring successor (see [`rank_from`]).
pub fn ranks_within(
    ring: &[Member],
    start: usize,
    me: usize,
    key: u64,
    window: usize,
    top: usize,
) -> bool {
    if top == 0 || me >= ring.len() {
        return false;
    }
    let n = window.min(ring.len());
    if (me + ring.len() - start) % ring.len() >= n || ring[me].weight == 0 {
        return false;
    }
    let m = &ring[me];
    let mine = score(key, m.point, m.weight);
    let mut ahead = 0;
    for k in 0..n {
        let i = (start + k) % ring.len();
        let o = &ring[i];
        if i == me || o.weight == 0 {
            continue;
        }
        let s = score(key, o.point, o.weight);
        if s.total_cmp(&mine).then_with(|| o.peer.cmp(&m.peer)).is_lt() {
            ahead += 1;
            if ahead >= top {
                return false;
            }
        }
    }
    true
}

/// Where `me` ranks for a unit (0 = best), if it is a candidate.
pub fn position(ranked: &[(f64, PeerId)], me: &PeerId) -> Option<usize> {
    ranked.iter().position(|(_, p)| p == me)
}

/// The ring arc `(start, end]` holding every unit point whose window contains `me`, or `None`
/// when the ring is no larger than the window (then every unit's window contains `me`).
pub fn region(ring: &[Member], me: &PeerId, window: usize) -> Option<(u64, u64)> {
    if ring.len() <= window {
        return None;
    }
    let i = ring.iter().position(|m| m.peer == *me)?;
    let pred = &ring[(i + ring.len() - window) % ring.len()];
    Some((pred.point, ring[i].point))
}

/// Capacity per architecture class: sums `(class, cores)` pairs, one entry per class, sorted
/// by class. (How a submitter weighs the classes of same-arch units; see [`pick_class`].)
pub fn capacity_by_class(members: impl Iterator<Item = (ArchClass, u32)>) -> Vec<(ArchClass, u32)> {
    let mut classes: Vec<(ArchClass, u32)> = Vec::new();
    for (arch, cores) in members {
        match classes.iter_mut().find(|(a, _)| *a == arch) {
            Some((_, n)) => *n += cores,
            None => classes.push((arch, cores)),
        }
    }
    classes.sort_unstable();
    classes
}

/// Chooses the architecture class that runs a same-arch unit: weighted rendezvous over the
/// classes the job's announcement lists (weight = the submitter's estimate of their capacity).
pub fn pick_class(key: u64, classes: &[(ArchClass, u32)]) -> Option<ArchClass> {
    classes
        .iter()
        .filter(|(_, w)| *w > 0)
        .map(|(c, w)| {
            let s = score(key, mix64(c.0 as u64 ^ 0xC1A55), (*w).min(u16::MAX as u32) as u16);
            (s, *c)
        })
        .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::Rng;

    fn ring(n: usize, rng: &mut Rng, weight: impl Fn(usize) -> u16) -> Vec<Member> {
        let mut v: Vec<Member> = (0..n)
            .map(|i| {
                let peer = PeerId(rng.bytes32());
                Member {
                    peer,
                    point: peer.ring_point(),
                    arch: ArchClass::X86_64,
                    weight: weight(i),
                    queue_len: 0,
                    seq: 0,
                    expires: u64::MAX,
                }
            })
            .collect();
        v.sort_by_key(|m| m.point);
        v
    }

    #[test]
    fn weight_shapes_share() {
        let mut rng = Rng::new(1);
        let r = ring(8, &mut rng, |i| if i % 2 == 0 { 1 } else { 4 });
        let mut wins = [0u32; 2];
        let mut out = Vec::new();
        for _ in 0..20_000 {
            rank(&r, rng.next_u64(), 16, &mut out);
            let w = r.iter().find(|m| m.peer == out[0].1).unwrap().weight;
            wins[(w == 4) as usize] += 1;
        }
        let ratio = wins[1] as f64 / wins[0] as f64;
        assert!((3.3..4.8).contains(&ratio), "heavy/light win ratio {ratio}");
    }

    #[test]
    fn region_matches_windows() {
        let mut rng = Rng::new(2);
        let r = ring(50, &mut rng, |_| 2);
        let me = r[17].peer;
        let (a, b) = region(&r, &me, 6).unwrap();
        let mut out = Vec::new();
        for _ in 0..5000 {
            let key = rng.next_u64();
            rank(&r, key, 6, &mut out);
            let inside = key.wrapping_sub(a).wrapping_sub(1) < b.wrapping_sub(a);
            assert_eq!(inside, position(&out, &me).is_some(), "key {key}");
        }
    }

    #[test]
    fn ranks_within_agrees_with_rank() {
        let mut rng = Rng::new(4);
        let r = ring(40, &mut rng, |i| (i % 5) as u16);
        let mut out = Vec::new();
        for _ in 0..3000 {
            let key = rng.next_u64();
            rank(&r, key, 10, &mut out);
            for (me, m) in r.iter().enumerate() {
                for top in 0..4 {
                    let want = position(&out, &m.peer).is_some_and(|p| p < top);
                    let start = successor(&r, key);
                    let got = ranks_within(&r, start, me, key, 10, top);
                    assert_eq!(got, want, "key {key} me {me}");
                }
            }
        }
    }

    #[test]
    fn zero_weight_never_ranked() {
        let mut rng = Rng::new(3);
        let r = ring(5, &mut rng, |i| if i == 0 { 0 } else { 1 });
        let mut out = Vec::new();
        rank(&r, 42, 10, &mut out);
        assert_eq!(out.len(), 4);
        assert!(out.iter().all(|(_, p)| *p != r[0].peer));
    }
}
