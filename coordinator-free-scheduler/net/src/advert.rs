//! The capacity advert: what a peer offers right now, gossiped periodically and signed.
//!
//! An advert travels inside a [`crate::signed`] envelope, so its author is the verified
//! signer. Receivers keep it until its TTL (counted from when *they* received it, so clock skew
//! does not matter) unless a newer one from the same author replaces it.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Most addresses one advert may list.
pub const MAX_ADVERT_ADDRS: usize = 8;
/// Longest relay URL an advert may carry.
pub const MAX_RELAY_URL_LEN: usize = 256;
/// Most cores a peer may claim (anything above is a lie or a typo).
pub const MAX_CORES: u16 = 4096;

/// A CPU architecture class: results of same-architecture jobs are only compared within a
/// class. Numbering matches `ova_scheduler::ArchClass`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Debug)]
pub struct ArchClass(pub u16);

impl ArchClass {
    /// Unknown or other.
    pub const OTHER: ArchClass = ArchClass(0);
    /// x86-64.
    pub const X86_64: ArchClass = ArchClass(1);
    /// 64-bit ARM.
    pub const AARCH64: ArchClass = ArchClass(2);

    /// The class of this build's target.
    pub fn current() -> Self {
        match std::env::consts::ARCH {
            "x86_64" => Self::X86_64,
            "aarch64" => Self::AARCH64,
            _ => Self::OTHER,
        }
    }

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::AARCH64 => "aarch64",
            _ => "other",
        }
    }
}

/// What the worker can take on right now (set by the driver, advertised by the node).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Cores offered to Ova now (the placement weight).
    pub spare_cores: u16,
    /// Cores busy with Ova units now.
    pub busy_cores: u16,
    /// Units queued but not started.
    pub queue_len: u32,
}

/// A signed-by-envelope capacity advert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advert {
    /// The capacity on offer.
    pub capacity: Capacity,
    /// Cores on the machine.
    pub total_cores: u16,
    /// Architecture class.
    pub arch: ArchClass,
    /// When it was sent, in the author's clock (Unix milliseconds). With `seq`, orders adverts
    /// from one author across restarts.
    pub sent_at_ms: u64,
    /// Increases with every message the author sends in one run.
    pub seq: u64,
    /// How long receivers keep it, in milliseconds (clamped by each receiver's maximum).
    pub ttl_ms: u32,
    /// Direct addresses the author listens on (at most [`MAX_ADVERT_ADDRS`]).
    pub addrs: Vec<SocketAddr>,
    /// The author's home relay, if any (at most [`MAX_RELAY_URL_LEN`] bytes).
    pub relay: Option<String>,
}

impl Advert {
    /// Checks the bounds a well-behaved peer respects; the reason if not.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.addrs.len() > MAX_ADVERT_ADDRS {
            return Err("too many addresses");
        }
        if self.relay.as_ref().is_some_and(|r| r.len() > MAX_RELAY_URL_LEN) {
            return Err("relay url too long");
        }
        if self.ttl_ms == 0 {
            return Err("zero ttl");
        }
        if self.total_cores > MAX_CORES
            || self.capacity.spare_cores > self.total_cores
            || self.capacity.busy_cores > self.total_cores
        {
            return Err("core counts out of range");
        }
        Ok(())
    }

    /// The ordering key: a later advert from the same author has a larger key.
    pub fn order_key(&self) -> (u64, u64) {
        (self.sent_at_ms, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Advert {
        Advert {
            capacity: Capacity { spare_cores: 2, busy_cores: 1, queue_len: 3 },
            total_cores: 4,
            arch: ArchClass::current(),
            sent_at_ms: 1,
            seq: 1,
            ttl_ms: 1000,
            addrs: vec!["127.0.0.1:1".parse().unwrap()],
            relay: None,
        }
    }

    #[test]
    fn validation_bounds() {
        assert_eq!(sample().validate(), Ok(()));
        let mut a = sample();
        a.addrs = vec!["127.0.0.1:1".parse().unwrap(); MAX_ADVERT_ADDRS + 1];
        assert!(a.validate().is_err());
        let mut a = sample();
        a.capacity.spare_cores = 5;
        assert!(a.validate().is_err());
        let mut a = sample();
        a.ttl_ms = 0;
        assert!(a.validate().is_err());
        let mut a = sample();
        a.relay = Some("x".repeat(MAX_RELAY_URL_LEN + 1));
        assert!(a.validate().is_err());
    }

    #[test]
    fn wire_round_trip() {
        let a = sample();
        let f = ova_jobs::wire::encode(&a);
        assert_eq!(ova_jobs::wire::decode::<Advert>(&f, 1024).unwrap(), a);
    }
}
