//! Checking commit signatures without repeating work: a [`Verifier`] that keeps decoded
//! public keys and remembers which signatures it has already checked.
//!
//! A commit reaches a peer several times (directly, in probe and sync replies, re-sent by the
//! liveness sweep), and one that comes alone is checked twice on arrival (by the driver before
//! storing it, and by the scheduler core; a batch of commits is opened once, by the driver,
//! which hands the opened batch to the core). An ed25519 check costs tens of microseconds,
//! most of it spent decoding the signer's key (a point decompression) and the double-scalar
//! multiplication. This cache keeps the decoded keys of recent signers and the digests of
//! recently verified (signer, message, signature) triples, so each distinct commit is checked
//! once. Only successes are remembered; a forged signature is checked (and refused) every time.
//! Both tables are bounded: when one is full it is cleared.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use ed25519_dalek::{Signature, VerifyingKey};
use ova_scheduler::{CommitError, PeerId, Verifier};

use crate::node::lock;

/// Most decoded keys kept.
const MAX_KEYS: usize = 4096;
/// Most verified signatures remembered.
const MAX_VERIFIED: usize = 1 << 16;

/// An ed25519 [`Verifier`] (strict verification, as [`ova_scheduler::Ed25519Verifier`]) with
/// caches; share one per peer.
#[derive(Debug, Default)]
pub struct CachingVerifier {
    keys: Mutex<HashMap<PeerId, VerifyingKey>>,
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl CachingVerifier {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn key(&self, peer: &PeerId) -> Result<VerifyingKey, CommitError> {
        if let Some(k) = lock(&self.keys).get(peer) {
            return Ok(*k);
        }
        let key = VerifyingKey::from_bytes(&peer.0).map_err(|_| CommitError::UnknownSigner)?;
        let mut keys = lock(&self.keys);
        if keys.len() >= MAX_KEYS {
            keys.clear();
        }
        keys.insert(*peer, key);
        Ok(key)
    }
}

fn digest(peer: &PeerId, msg: &[u8], sig: &[u8; 64]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&peer.0);
    h.update(sig);
    h.update(msg);
    *h.finalize().as_bytes()
}

impl Verifier for CachingVerifier {
    fn verify(&self, peer: &PeerId, msg: &[u8], sig: &[u8; 64]) -> Result<(), CommitError> {
        let d = digest(peer, msg, sig);
        if lock(&self.verified).contains(&d) {
            return Ok(());
        }
        let key = self.key(peer)?;
        key.verify_strict(msg, &Signature::from_bytes(sig))
            .map_err(|_| CommitError::BadSignature)?;
        let mut verified = lock(&self.verified);
        if verified.len() >= MAX_VERIFIED {
            verified.clear();
        }
        verified.insert(d);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn signed(seed: u8, msg: &[u8]) -> (PeerId, [u8; 64]) {
        let key = SigningKey::from_bytes(&[seed; 32]);
        (PeerId(key.verifying_key().to_bytes()), key.sign(msg).to_bytes())
    }

    #[test]
    fn accepts_good_signatures_again_and_refuses_forgeries_every_time() {
        let v = CachingVerifier::new();
        let (peer, sig) = signed(1, b"commit");
        assert_eq!(v.verify(&peer, b"commit", &sig), Ok(()));
        assert_eq!(v.verify(&peer, b"commit", &sig), Ok(()), "cached success");
        // The cached digest covers message and signer too.
        assert_eq!(v.verify(&peer, b"commit!", &sig), Err(CommitError::BadSignature));
        let (other, _) = signed(2, b"x");
        assert_eq!(v.verify(&other, b"commit", &sig), Err(CommitError::BadSignature));
        let mut forged = sig;
        forged[3] ^= 1;
        for _ in 0..2 {
            assert_eq!(v.verify(&peer, b"commit", &forged), Err(CommitError::BadSignature));
        }
    }

    #[test]
    fn refuses_keys_that_are_not_curve_points() {
        let v = CachingVerifier::new();
        // y = 2 is not the y-coordinate of any point on the curve.
        let mut bad = [0u8; 32];
        bad[0] = 2;
        let r = v.verify(&PeerId(bad), b"m", &[0; 64]);
        assert!(matches!(r, Err(CommitError::UnknownSigner) | Err(CommitError::BadSignature)));
    }
}
