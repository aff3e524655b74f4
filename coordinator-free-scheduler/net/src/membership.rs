//! The peer table: who is out there and what they offer, built from signed adverts.
//!
//! Bounded and self-cleaning: at most `max_peers` entries; an entry lives for its advert's TTL
//! (clamped to `max_ttl`, counted from when *we* received it) unless a newer advert from the
//! same author refreshes it; a clean `Leave` removes it at once. When the table is full, a new
//! peer replaces the entry closest to expiry, and only if it would outlive it.
//!
//! A peer that expired or left leaves a *tombstone* (its last advert's order key) for
//! `max_ttl`, so a late or replayed copy of one of its old adverts — gossip may still deliver
//! cached messages after the author is gone — cannot bring it back; only a newer advert can.
//! Tombstones are bounded like entries. Pure logic with an explicit `now`, so it is tested
//! without a network or a clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use iroh::EndpointId;
use serde::{Deserialize, Serialize};

use crate::advert::{Advert, ArchClass, Capacity};

/// What applying an advert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A peer we did not know.
    Joined,
    /// A newer advert from a known peer.
    Updated,
    /// Not newer than what we have: ignored.
    Stale,
    /// The table is full of peers that outlive this one: ignored.
    Full,
}

#[derive(Debug, Clone)]
struct Entry {
    advert: Advert,
    received_at: Instant,
    expires_at: Instant,
}

/// One known peer, as shown by `ova peers` and given to drivers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Its node id.
    pub id: EndpointId,
    /// What it offers.
    pub capacity: Capacity,
    /// Cores on its machine.
    pub total_cores: u16,
    /// Its architecture class.
    pub arch: ArchClass,
    /// Milliseconds since we received its last advert.
    pub age_ms: u64,
    /// Milliseconds until it expires without a new advert.
    pub expires_in_ms: u64,
    /// Direct addresses it advertised.
    pub addrs: Vec<String>,
    /// Its home relay, if any.
    pub relay: Option<String>,
}

/// The bounded, TTL-expiring table of peers.
#[derive(Debug)]
pub struct PeerTable {
    entries: HashMap<EndpointId, Entry>,
    tombstones: HashMap<EndpointId, ((u64, u64), Instant)>,
    max_peers: usize,
    max_ttl: Duration,
}

impl PeerTable {
    /// An empty table holding at most `max_peers` peers, each for at most `max_ttl`.
    pub fn new(max_peers: usize, max_ttl: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            tombstones: HashMap::new(),
            max_peers: max_peers.max(1),
            max_ttl,
        }
    }

    /// Applies a verified, validated advert from `author` received at `now`.
    pub fn apply(&mut self, author: EndpointId, advert: Advert, now: Instant) -> Applied {
        let ttl = Duration::from_millis(u64::from(advert.ttl_ms)).min(self.max_ttl);
        let expires_at = now + ttl;
        if let Some(e) = self.entries.get_mut(&author) {
            if advert.order_key() <= e.advert.order_key() {
                return Applied::Stale;
            }
            *e = Entry { advert, received_at: now, expires_at };
            return Applied::Updated;
        }
        if let Some((key, until)) = self.tombstones.get(&author) {
            if *until > now && advert.order_key() <= *key {
                return Applied::Stale;
            }
            self.tombstones.remove(&author);
        }
        if self.entries.len() >= self.max_peers {
            let victim = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.expires_at)
                .map(|(id, e)| (*id, e.expires_at));
            match victim {
                Some((id, at)) if at < expires_at => {
                    self.entries.remove(&id);
                }
                _ => return Applied::Full,
            }
        }
        self.entries.insert(author, Entry { advert, received_at: now, expires_at });
        Applied::Joined
    }

    /// Removes `author` after a clean leave ordered after its last advert; whether it was
    /// removed.
    pub fn leave(&mut self, author: &EndpointId, order_key: (u64, u64)) -> bool {
        match self.entries.get(author) {
            Some(e) if e.advert.order_key() < order_key => {
                self.entries.remove(author);
                self.bury(*author, order_key, Instant::now());
                true
            }
            Some(_) => false,
            None => {
                let newer = self.tombstones.get(author).is_none_or(|(k, _)| *k < order_key);
                if newer {
                    self.bury(*author, order_key, Instant::now());
                }
                false
            }
        }
    }

    fn bury(&mut self, id: EndpointId, key: (u64, u64), now: Instant) {
        self.tombstones.retain(|_, (_, until)| *until > now);
        if self.tombstones.len() >= self.max_peers {
            let oldest =
                self.tombstones.iter().min_by_key(|(_, (_, until))| *until).map(|(id, _)| *id);
            if let Some(o) = oldest {
                self.tombstones.remove(&o);
            }
        }
        self.tombstones.insert(id, (key, now + self.max_ttl));
    }

    /// Removes and returns the peers whose adverts expired by `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<EndpointId> {
        let gone: Vec<EndpointId> =
            self.entries.iter().filter(|(_, e)| e.expires_at <= now).map(|(id, _)| *id).collect();
        for id in &gone {
            if let Some(e) = self.entries.remove(id) {
                self.bury(*id, e.advert.order_key(), now);
            }
        }
        gone
    }

    /// When the next entry expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.entries.values().map(|e| e.expires_at).min()
    }

    /// Whether `id` is in the table.
    pub fn contains(&self, id: &EndpointId) -> bool {
        self.entries.contains_key(id)
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The ids of all peers.
    pub fn ids(&self) -> Vec<EndpointId> {
        self.entries.keys().copied().collect()
    }

    /// The latest advert of `id`.
    pub fn advert(&self, id: &EndpointId) -> Option<&Advert> {
        self.entries.get(id).map(|e| &e.advert)
    }

    /// Every peer as seen at `now`, most spare cores first, then by id.
    pub fn peers(&self, now: Instant) -> Vec<PeerInfo> {
        let mut out: Vec<PeerInfo> = self
            .entries
            .iter()
            .map(|(id, e)| PeerInfo {
                id: *id,
                capacity: e.advert.capacity,
                total_cores: e.advert.total_cores,
                arch: e.advert.arch,
                age_ms: millis(now.saturating_duration_since(e.received_at)),
                expires_in_ms: millis(e.expires_at.saturating_duration_since(now)),
                addrs: e.advert.addrs.iter().map(|a| a.to_string()).collect(),
                relay: e.advert.relay.clone(),
            })
            .collect();
        out.sort_by(|a, b| {
            b.capacity.spare_cores.cmp(&a.capacity.spare_cores).then(a.id.cmp(&b.id))
        });
        out
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use iroh::SecretKey;

    use super::*;

    fn advert(seq: u64, ttl_ms: u32, spare: u16) -> Advert {
        Advert {
            capacity: Capacity { spare_cores: spare, busy_cores: 0, queue_len: 0 },
            total_cores: 8,
            arch: ArchClass::X86_64,
            sent_at_ms: 1000,
            seq,
            ttl_ms,
            addrs: vec![],
            relay: None,
        }
    }

    fn id() -> EndpointId {
        SecretKey::generate().public()
    }

    #[test]
    fn join_update_stale_and_expire() {
        let t0 = Instant::now();
        let mut t = PeerTable::new(10, Duration::from_secs(60));
        let a = id();
        assert_eq!(t.apply(a, advert(1, 1000, 2), t0), Applied::Joined);
        assert_eq!(t.apply(a, advert(1, 1000, 3), t0), Applied::Stale);
        assert_eq!(
            t.apply(a, advert(2, 1000, 3), t0 + Duration::from_millis(500)),
            Applied::Updated
        );
        assert_eq!(t.peers(t0 + Duration::from_millis(600))[0].capacity.spare_cores, 3);
        assert_eq!(t.peers(t0 + Duration::from_millis(600))[0].age_ms, 100);
        assert!(t.expire(t0 + Duration::from_millis(1400)).is_empty());
        assert_eq!(t.expire(t0 + Duration::from_millis(1500)), vec![a]);
        assert!(t.is_empty());
        // A late copy of an old advert does not resurrect it; a newer one does.
        let t1 = t0 + Duration::from_millis(1600);
        assert_eq!(t.apply(a, advert(2, 1000, 3), t1), Applied::Stale);
        assert_eq!(t.apply(a, advert(3, 1000, 3), t1), Applied::Joined);
    }

    #[test]
    fn ttl_is_clamped_to_the_maximum() {
        let t0 = Instant::now();
        let mut t = PeerTable::new(10, Duration::from_millis(100));
        let a = id();
        t.apply(a, advert(1, u32::MAX, 1), t0);
        assert_eq!(t.next_expiry(), Some(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn leave_removes_only_when_newer() {
        let t0 = Instant::now();
        let mut t = PeerTable::new(10, Duration::from_secs(60));
        let a = id();
        t.apply(a, advert(5, 1000, 1), t0);
        assert!(!t.leave(&a, (1000, 4)));
        assert!(t.leave(&a, (1000, 6)));
        assert!(!t.contains(&a));
    }

    #[test]
    fn full_table_evicts_soonest_expiry_only_for_longer_lived_peers() {
        let t0 = Instant::now();
        let mut t = PeerTable::new(2, Duration::from_secs(60));
        let (a, b, c, d) = (id(), id(), id(), id());
        t.apply(a, advert(1, 100, 1), t0);
        t.apply(b, advert(1, 5000, 1), t0);
        assert_eq!(t.apply(c, advert(1, 50, 1), t0), Applied::Full);
        assert_eq!(t.apply(d, advert(1, 1000, 1), t0), Applied::Joined);
        assert_eq!(t.len(), 2);
        assert!(!t.contains(&a) && t.contains(&b) && t.contains(&d));
    }
}
