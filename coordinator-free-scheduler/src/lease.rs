//! Claims as leases: a peer that starts a unit claims it until `until`; if no commit from it
//! arrives by then, the lease has lapsed and the next-ranked peer takes over.

use serde::{Deserialize, Serialize};

use crate::types::{Millis, PeerId};

/// Most leases remembered per unit; when full, the earliest-expiring one is replaced.
pub const MAX_LEASES_PER_UNIT: usize = 8;

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
    v: Vec<Lease>,
}

impl Leases {
    /// Records or extends a claim (a lease never shrinks).
    pub fn claim(&mut self, holder: PeerId, until: Millis) {
        if let Some(l) = self.v.iter_mut().find(|l| l.holder == holder) {
            l.until = l.until.max(until);
            return;
        }
        if self.v.len() >= MAX_LEASES_PER_UNIT
            && let Some(i) = (0..self.v.len()).min_by_key(|&i| self.v[i].until)
        {
            self.v.swap_remove(i);
        }
        self.v.push(Lease { holder, until });
    }

    /// Drops `holder`'s claim (it committed, or gave the unit away).
    pub fn release(&mut self, holder: &PeerId) {
        self.v.retain(|l| l.holder != *holder);
    }

    /// Whether `holder` holds a live lease at `now`.
    pub fn is_live(&self, holder: &PeerId, now: Millis) -> bool {
        self.v.iter().any(|l| l.holder == *holder && l.until > now)
    }

    /// Whether `holder` held a lease that lapsed.
    pub fn lapsed(&self, holder: &PeerId, now: Millis) -> bool {
        self.v.iter().any(|l| l.holder == *holder && l.until <= now)
    }

    /// Live leases at `now`.
    pub fn live(&self, now: Millis) -> impl Iterator<Item = &Lease> {
        self.v.iter().filter(move |l| l.until > now)
    }

    /// The next moment a live lease lapses.
    pub fn next_expiry(&self, now: Millis) -> Option<Millis> {
        self.live(now).map(|l| l.until).min()
    }

    /// All leases.
    pub fn all(&self) -> &[Lease] {
        &self.v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
