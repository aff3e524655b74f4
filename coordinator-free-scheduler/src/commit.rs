//! Result commits: an executor's signed statement "unit U produced result H, signed by me".
//!
//! Signing sits behind the [`Signer`] and [`Verifier`] traits. Production uses ed25519 (the
//! peer id *is* the public key; see [`Ed25519Signer`] / [`Ed25519Verifier`], cargo feature
//! `ed25519`, on by default). The simulator uses [`SimKeys`], a keyed-BLAKE3 MAC with a
//! registry of known peers, which is ~100× cheaper and lets it model unknown signers.

use ova_jobs::{BlobId, UnitId};
use serde::{Deserialize, Serialize};
use serde_big_array_shim::Sig;

use crate::types::{ArchClass, PeerId, UnitRef};

/// The signed content of a commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CommitBody {
    /// The unit (job and index).
    pub unit: UnitRef,
    /// The unit's content id, so a commit also stands for the same unit in other jobs.
    pub unit_id: UnitId,
    /// Hash of the result (opaque to the scheduler).
    pub result: BlobId,
    /// Who ran it.
    pub executor: PeerId,
    /// The executor's architecture class (results of same-arch jobs only compare within one).
    pub arch: ArchClass,
}

impl CommitBody {
    /// The bytes that are signed: a domain tag and the fields, fixed layout.
    pub fn signing_bytes(&self) -> [u8; 150] {
        let mut b = [0u8; 150];
        b[..12].copy_from_slice(b"ova commit 1");
        b[12..44].copy_from_slice(&self.unit.job.0);
        b[44..48].copy_from_slice(&self.unit.index.to_le_bytes());
        b[48..80].copy_from_slice(&self.unit_id.0);
        b[80..112].copy_from_slice(&self.result.0);
        b[112..144].copy_from_slice(&self.executor.0);
        b[144..146].copy_from_slice(&self.arch.0.to_le_bytes());
        b
    }
}

/// A commit and its signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCommit {
    /// What is claimed.
    pub body: CommitBody,
    /// The executor's signature over [`CommitBody::signing_bytes`].
    pub sig: Sig,
}

/// Why a commit was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The signer is not a peer we can verify.
    #[error("commit from an unknown peer")]
    UnknownSigner,
    /// The signature does not verify.
    #[error("commit signature does not verify")]
    BadSignature,
}

/// Signs commits as one peer.
pub trait Signer: Send + Sync {
    /// This signer's peer id (its public key).
    fn peer_id(&self) -> PeerId;
    /// Signs `msg`.
    fn sign(&self, msg: &[u8]) -> [u8; 64];
}

/// Checks commit signatures.
pub trait Verifier: Send + Sync {
    /// Checks that `peer` signed `msg` with `sig`.
    fn verify(&self, peer: &PeerId, msg: &[u8], sig: &[u8; 64]) -> Result<(), CommitError>;
}

/// Signs a commit body.
pub fn sign(signer: &dyn Signer, body: CommitBody) -> SignedCommit {
    SignedCommit { body, sig: Sig(signer.sign(&body.signing_bytes())) }
}

/// Checks a signed commit.
pub fn verify(verifier: &dyn Verifier, c: &SignedCommit) -> Result<(), CommitError> {
    verifier.verify(&c.body.executor, &c.body.signing_bytes(), &c.sig.0)
}

/// 64-byte signatures with serde support (serde derives arrays only up to 32).
pub mod serde_big_array_shim {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// A 64-byte signature.
    #[derive(Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Sig(pub [u8; 64]);

    impl std::fmt::Debug for Sig {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Sig({:02x}{:02x}..)", self.0[0], self.0[1])
        }
    }

    impl Serialize for Sig {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let (a, b) = self.0.split_at(32);
            let a: [u8; 32] = a.try_into().unwrap_or([0; 32]);
            let b: [u8; 32] = b.try_into().unwrap_or([0; 32]);
            (a, b).serialize(s)
        }
    }

    impl<'de> Deserialize<'de> for Sig {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let (a, b): ([u8; 32], [u8; 32]) = Deserialize::deserialize(d)?;
            let mut out = [0u8; 64];
            out[..32].copy_from_slice(&a);
            out[32..].copy_from_slice(&b);
            Ok(Sig(out))
        }
    }
}

/// The simulator's signatures: a keyed-BLAKE3 MAC per peer, with a registry of peers.
///
/// Not secure against anyone who can read the registry; it exists so the simulator can model
/// signing and forgery at a fraction of ed25519's cost.
#[derive(Clone, Debug, Default)]
pub struct SimKeys {
    known: crate::util::FxHashSet<PeerId>,
}

impl SimKeys {
    /// Registers a peer so its signatures verify.
    pub fn register(&mut self, peer: PeerId) {
        self.known.insert(peer);
    }

    /// A signer for `peer`.
    pub fn signer(peer: PeerId) -> SimSigner {
        SimSigner(peer)
    }
}

fn sim_mac(peer: &PeerId, msg: &[u8]) -> [u8; 64] {
    let mut key = peer.0;
    key[0] ^= 0x5a;
    let mut out = [0u8; 64];
    let mut h = blake3::Hasher::new_keyed(&key);
    h.update(msg);
    h.finalize_xof().fill(&mut out);
    out
}

/// Signs as one simulated peer.
#[derive(Clone, Copy, Debug)]
pub struct SimSigner(pub PeerId);

impl Signer for SimSigner {
    fn peer_id(&self) -> PeerId {
        self.0
    }
    fn sign(&self, msg: &[u8]) -> [u8; 64] {
        sim_mac(&self.0, msg)
    }
}

impl Verifier for SimKeys {
    fn verify(&self, peer: &PeerId, msg: &[u8], sig: &[u8; 64]) -> Result<(), CommitError> {
        if !self.known.contains(peer) {
            return Err(CommitError::UnknownSigner);
        }
        if sim_mac(peer, msg) == *sig { Ok(()) } else { Err(CommitError::BadSignature) }
    }
}

#[cfg(feature = "ed25519")]
pub use ed::{Ed25519Signer, Ed25519Verifier};

#[cfg(feature = "ed25519")]
mod ed {
    use super::*;
    use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

    /// Signs with an ed25519 key; the peer id is the public key.
    pub struct Ed25519Signer {
        key: SigningKey,
    }

    impl Ed25519Signer {
        /// From a 32-byte secret seed (the shell keeps it; iroh's secret key bytes fit).
        pub fn from_seed(seed: [u8; 32]) -> Self {
            Self { key: SigningKey::from_bytes(&seed) }
        }
    }

    impl Signer for Ed25519Signer {
        fn peer_id(&self) -> PeerId {
            PeerId(self.key.verifying_key().to_bytes())
        }
        fn sign(&self, msg: &[u8]) -> [u8; 64] {
            use ed25519_dalek::Signer as _;
            self.key.sign(msg).to_bytes()
        }
    }

    /// Verifies ed25519 signatures by the peer id (public key) alone. A peer id that is not a
    /// valid curve point is an unknown signer.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Ed25519Verifier;

    impl Verifier for Ed25519Verifier {
        fn verify(&self, peer: &PeerId, msg: &[u8], sig: &[u8; 64]) -> Result<(), CommitError> {
            let key = VerifyingKey::from_bytes(&peer.0).map_err(|_| CommitError::UnknownSigner)?;
            key.verify_strict(msg, &Signature::from_bytes(sig))
                .map_err(|_| CommitError::BadSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ova_jobs::JobId;

    fn body(executor: PeerId) -> CommitBody {
        CommitBody {
            unit: UnitRef { job: JobId([1; 32]), index: 3 },
            unit_id: UnitId([2; 32]),
            result: BlobId([3; 32]),
            executor,
            arch: ArchClass::X86_64,
        }
    }

    #[cfg(feature = "ed25519")]
    #[test]
    fn ed25519_sign_verify_and_forgery() {
        let s = Ed25519Signer::from_seed([7; 32]);
        let c = sign(&s, body(s.peer_id()));
        assert_eq!(verify(&Ed25519Verifier, &c), Ok(()));
        let mut forged = c;
        forged.body.result = BlobId([4; 32]);
        assert_eq!(verify(&Ed25519Verifier, &forged), Err(CommitError::BadSignature));
        let other = Ed25519Signer::from_seed([8; 32]);
        let mut stolen = c;
        stolen.body.executor = other.peer_id();
        assert_eq!(verify(&Ed25519Verifier, &stolen), Err(CommitError::BadSignature));
    }

    #[test]
    fn sim_keys_reject_unknown_and_forged() {
        let mut keys = SimKeys::default();
        let a = PeerId([9; 32]);
        let c = sign(&SimSigner(a), body(a));
        assert_eq!(verify(&keys, &c), Err(CommitError::UnknownSigner));
        keys.register(a);
        assert_eq!(verify(&keys, &c), Ok(()));
        let mut f = c;
        f.body.index_bump();
        assert_eq!(verify(&keys, &f), Err(CommitError::BadSignature));
    }

    impl CommitBody {
        fn index_bump(&mut self) {
            self.unit.index += 1;
        }
    }
}
