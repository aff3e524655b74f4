//! Small shared types: peer ids, architecture classes, time, unit references.

use std::fmt;

use ova_jobs::JobId;
use serde::{Deserialize, Serialize};

/// Time as milliseconds since an arbitrary epoch chosen by the shell (or the simulator).
///
/// The core never reads a clock: every event comes with `now`.
pub type Millis = u64;

/// A peer's identity: its 32-byte ed25519 public key (iroh's `EndpointId` bytes).
#[derive(Clone, Copy, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerId(pub [u8; 32]);

impl std::hash::Hash for PeerId {
    /// Hashes the first eight bytes only: a peer id is a public key, uniformly spread, and
    /// every table keyed by it is bounded (see [`crate::util::FxHasher`]). Peer-id lookups
    /// run on most messages; hashing all 32 bytes and the length took five rounds, not one.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.prefix());
    }
}

impl PartialEq for PeerId {
    /// Four word compares (byte-wise equality of the keys), inlined: peer ids are compared
    /// on most messages, and a call to `memcmp` for each showed in profiles.
    fn eq(&self, other: &Self) -> bool {
        let w = |b: &[u8; 32], i: usize| {
            u64::from_ne_bytes([
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
                b[i + 4],
                b[i + 5],
                b[i + 6],
                b[i + 7],
            ])
        };
        (0..4).all(|k| w(&self.0, 8 * k) == w(&other.0, 8 * k))
    }
}

impl PeerId {
    /// The first eight bytes as a number (a cheap, well-spread summary of the key).
    #[inline]
    pub fn prefix(&self) -> u64 {
        let b = &self.0;
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The peer's point on the placement ring: a hash of its id, so ids chosen by an attacker
    /// still land uniformly.
    pub fn ring_point(&self) -> u64 {
        let h = blake3::keyed_hash(&RING_KEY, &self.0);
        u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]))
    }
}

const RING_KEY: [u8; 32] = *b"ova ring point v1...............";

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Peer(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// A CPU architecture class. Results of [`ova_jobs::Determinism::SameArch`] jobs are only
/// compared between peers of the same class, because NaN bit patterns differ across classes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Debug)]
pub struct ArchClass(pub u16);

impl ArchClass {
    /// x86-64.
    pub const X86_64: ArchClass = ArchClass(1);
    /// 64-bit ARM.
    pub const AARCH64: ArchClass = ArchClass(2);
}

/// One unit of one job, as the protocol names it: the job and the unit's index in its manifest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Debug)]
pub struct UnitRef {
    /// The job.
    pub job: JobId,
    /// Index into the manifest's units.
    pub index: u32,
}
