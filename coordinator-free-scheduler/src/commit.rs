//! Result commits: an executor's signed statement "unit U produced result H, signed by me".
//!
//! Signing sits behind the [`Signer`] and [`Verifier`] traits. Production uses ed25519 (the
//! peer id *is* the public key; see [`Ed25519Signer`] / [`Ed25519Verifier`], cargo feature
//! `ed25519`, on by default). The simulator uses [`SimKeys`], a keyed hash (not a
//! cryptographic MAC) with a registry of known peers, hundreds of times cheaper, which lets
//! it model unknown signers and altered commits.
//!
//! ## Batches: one signature for many commits
//!
//! An ed25519 signature costs tens of microseconds to make and more to check, and every commit
//! is checked by each of its receivers; for short units that was a quarter of all the CPU
//! of an end-to-end run. An executor that finishes several units at once therefore signs them
//! together ([`sign_batch`]): the commit bodies are the leaves of a BLAKE3 Merkle tree, the
//! executor signs the root once, and each commit carries its [`BatchProof`] (its leaf index,
//! the batch size and the sibling hashes up to the root). A receiver recomputes the root from
//! the body and the proof and checks the one signature over it; a [`Verifier`] that remembers
//! verified (signer, message, signature) triples checks it once per batch. A single commit
//! is signed over its body, with no proof, as before batches existed.
//!
//! Leaves and inner nodes are hashed under different BLAKE3 key-derivation contexts, and the
//! root's signed message names the batch size, so no proof can make a commit out of an inner
//! node or out of a different tree shape.

use std::sync::LazyLock;

use ova_jobs::{BlobId, UnitId};
use serde::{Deserialize, Serialize};
use serde_big_array_shim::Sig;

use crate::types::{ArchClass, PeerId, UnitRef};
use crate::util::mix64;

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCommit {
    /// What is claimed.
    pub body: CommitBody,
    /// The executor's signature: over [`CommitBody::signing_bytes`] for a commit signed alone,
    /// or over its batch's root ([`batch_signing_bytes`]).
    pub sig: Sig,
    /// Where the commit sits in a batch signed once (`None`: signed alone).
    pub batch: Option<Box<BatchProof>>,
}

/// Most commits signed together (a batch's tree is at most 8 levels deep).
pub const MAX_SIGN_BATCH: usize = 256;

/// A commit's place in a batch signed once: the path from its leaf to the signed root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchProof {
    /// The leaf's index in the batch.
    pub index: u16,
    /// Commits in the batch (2 ..= [`MAX_SIGN_BATCH`]).
    pub size: u16,
    /// Sibling hashes from the leaf's level up (a level where the node has no sibling, the
    /// last of an odd row, contributes none).
    pub path: Vec<[u8; 32]>,
}

const LEAF_CONTEXT: &str = "ova commit batch leaf v1";
const NODE_CONTEXT: &str = "ova commit batch node v1";

/// Hashers set up for each context, cloned for every hash: deriving a context's key is a
/// compression of its own, as costly as hashing a tree node, and every receiver of a commit
/// hashes its leaf and the path to the root. A clone hashes exactly as a fresh
/// `Hasher::new_derive_key` does.
static LEAF_HASHER: LazyLock<blake3::Hasher> =
    LazyLock::new(|| blake3::Hasher::new_derive_key(LEAF_CONTEXT));
static NODE_HASHER: LazyLock<blake3::Hasher> =
    LazyLock::new(|| blake3::Hasher::new_derive_key(NODE_CONTEXT));

pub(crate) fn leaf_hash(body: &CommitBody) -> [u8; 32] {
    let mut h = LEAF_HASHER.clone();
    h.update(&body.signing_bytes());
    *h.finalize().as_bytes()
}

pub(crate) fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut both = [0u8; 64];
    both[..32].copy_from_slice(left);
    both[32..].copy_from_slice(right);
    let mut h = NODE_HASHER.clone();
    h.update(&both);
    *h.finalize().as_bytes()
}

/// The bytes signed for a batch: a domain tag, the root of its tree and its size.
pub fn batch_signing_bytes(root: &[u8; 32], size: u16) -> [u8; 52] {
    let mut b = [0u8; 52];
    b[..18].copy_from_slice(b"ova commit batch 1");
    b[18..50].copy_from_slice(root);
    b[50..52].copy_from_slice(&size.to_le_bytes());
    b
}

/// The root a proof leads to from `body`, or `None` if the proof's shape is impossible (an
/// index outside the batch, a size out of range, too few or too many sibling hashes).
fn root_from_proof(body: &CommitBody, p: &BatchProof) -> Option<[u8; 32]> {
    if p.size < 2 || p.size as usize > MAX_SIGN_BATCH || p.index >= p.size {
        return None;
    }
    let mut node = leaf_hash(body);
    let (mut pos, mut width) = (p.index as usize, p.size as usize);
    let mut path = p.path.iter();
    while width > 1 {
        if pos % 2 == 1 {
            node = node_hash(path.next()?, &node);
        } else if pos + 1 < width {
            node = node_hash(&node, path.next()?);
        }
        pos /= 2;
        width = width.div_ceil(2);
    }
    path.next().is_none().then_some(node)
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

/// Signs a commit body alone.
pub fn sign(signer: &dyn Signer, body: CommitBody) -> SignedCommit {
    SignedCommit { body, sig: Sig(signer.sign(&body.signing_bytes())), batch: None }
}

/// Signs commit bodies with one signature per [`MAX_SIGN_BATCH`] of them (see the module
/// docs); a lone body is signed alone. The commits come back in the order of `bodies`.
pub fn sign_batch(signer: &dyn Signer, bodies: &[CommitBody]) -> Vec<SignedCommit> {
    let mut out = Vec::with_capacity(bodies.len());
    for chunk in bodies.chunks(MAX_SIGN_BATCH) {
        if let [body] = chunk {
            out.push(sign(signer, *body));
            continue;
        }
        // Every level of the tree, leaves first; the last node of an odd row moves up as is.
        let mut levels: Vec<Vec<[u8; 32]>> = vec![chunk.iter().map(leaf_hash).collect()];
        while let Some(row) = levels.last().filter(|r| r.len() > 1) {
            let up = row
                .chunks(2)
                .map(|pair| match pair {
                    [l, r] => node_hash(l, r),
                    [only] => *only,
                    _ => unreachable!("chunks of two"),
                })
                .collect();
            levels.push(up);
        }
        let size = chunk.len() as u16;
        let root = levels.last().and_then(|r| r.first()).copied().unwrap_or_default();
        let sig = Sig(signer.sign(&batch_signing_bytes(&root, size)));
        for (i, body) in chunk.iter().enumerate() {
            let mut path = Vec::new();
            let mut pos = i;
            for row in &levels[..levels.len() - 1] {
                let sibling = pos ^ 1;
                if sibling < row.len() {
                    path.push(row[sibling]);
                }
                pos /= 2;
            }
            let proof = BatchProof { index: i as u16, size, path };
            out.push(SignedCommit { body: *body, sig, batch: Some(Box::new(proof)) });
        }
    }
    out
}

/// Checks a signed commit (alone, or through its batch proof).
pub fn verify(verifier: &dyn Verifier, c: &SignedCommit) -> Result<(), CommitError> {
    match &c.batch {
        None => verifier.verify(&c.body.executor, &c.body.signing_bytes(), &c.sig.0),
        Some(p) => {
            let root = root_from_proof(&c.body, p).ok_or(CommitError::BadSignature)?;
            verifier.verify(&c.body.executor, &batch_signing_bytes(&root, p.size), &c.sig.0)
        }
    }
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

/// The simulator's signatures: a keyed hash per peer, with a registry of peers.
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

/// The simulator's stand-in for a signature: a keyed mixing hash of `msg` under `peer`'s id,
/// 64 bytes like an ed25519 signature. It is not a cryptographic MAC (the simulated peers
/// never try to forge one; another message, length or signer gives another tag with
/// overwhelming probability), and it costs a tenth of the keyed BLAKE3 it replaced: every
/// commit a peer receives is checked, and those checks were an eighth of a simulation's
/// instructions.
fn sim_mac(peer: &PeerId, msg: &[u8]) -> [u8; 64] {
    // Little-endian words of up to eight bytes (a short last one is zero-padded; the length
    // goes into the tag below, so padding cannot collide).
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(w)
    };
    // Four lanes keyed by the id's four words, each absorbing every fourth word of the
    // message, so their mixing rounds overlap.
    let mut lanes = [0u64; 4];
    for (l, k) in lanes.iter_mut().zip(peer.0.chunks_exact(8)) {
        *l = mix64(word(k) ^ 0x5a5a_5a5a_5a5a_5a5a);
    }
    let mut blocks = msg.chunks_exact(32);
    for block in &mut blocks {
        for (l, w) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            *l = mix64(*l ^ word(w));
        }
    }
    for (l, w) in lanes.iter_mut().zip(blocks.remainder().chunks(8)) {
        *l = mix64(*l ^ word(w));
    }
    let all = lanes.iter().fold(mix64(msg.len() as u64), |a, &l| mix64(a ^ l));
    let mut out = [0u8; 64];
    for (j, o) in out.chunks_exact_mut(8).enumerate() {
        let v = mix64(all ^ lanes[j % 4] ^ (j as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        o.copy_from_slice(&v.to_le_bytes());
    }
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

    #[test]
    fn prepared_hashers_hash_as_the_key_derivation_they_stand_for() {
        let b = body(PeerId([7; 32]));
        assert_eq!(leaf_hash(&b), blake3::derive_key(LEAF_CONTEXT, &b.signing_bytes()));
        let (l, r) = ([1u8; 32], [2u8; 32]);
        let mut both = [1u8; 64];
        both[32..].copy_from_slice(&r);
        assert_eq!(node_hash(&l, &r), blake3::derive_key(NODE_CONTEXT, &both));
        assert_ne!(node_hash(&l, &r), node_hash(&r, &l));
    }

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
        let mut forged = c.clone();
        forged.body.result = BlobId([4; 32]);
        assert_eq!(verify(&Ed25519Verifier, &forged), Err(CommitError::BadSignature));
        let other = Ed25519Signer::from_seed([8; 32]);
        let mut stolen = c.clone();
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
        let mut f = c.clone();
        f.body.index_bump();
        assert_eq!(verify(&keys, &f), Err(CommitError::BadSignature));
        // Another signer, a changed last byte, a zero byte more or less: another tag.
        let (bytes, b) = (c.body.signing_bytes(), PeerId([8; 32]));
        let m = &bytes[..];
        assert_ne!(sim_mac(&a, m), sim_mac(&b, m));
        let mut m2 = m.to_vec();
        m2[m.len() - 1] ^= 1;
        assert_ne!(sim_mac(&a, m), sim_mac(&a, &m2));
        assert_ne!(
            sim_mac(&a, &m[..m.len() - 1]),
            sim_mac(&a, &[&m[..m.len() - 1], &[0]].concat())
        );
    }

    fn bodies(executor: PeerId, n: u32) -> Vec<CommitBody> {
        (0..n)
            .map(|i| {
                let mut b = body(executor);
                b.unit.index = i;
                b.result = BlobId([i as u8; 32]);
                b
            })
            .collect()
    }

    /// Counts real checks, so a test can see one signature check serve a whole batch.
    struct Counting<'a>(&'a SimKeys, std::sync::Mutex<Vec<Vec<u8>>>);
    impl Verifier for Counting<'_> {
        fn verify(&self, peer: &PeerId, msg: &[u8], sig: &[u8; 64]) -> Result<(), CommitError> {
            self.1.lock().unwrap().push(msg.to_vec());
            self.0.verify(peer, msg, sig)
        }
    }

    #[test]
    fn every_commit_of_a_batch_verifies_with_its_proof_and_the_one_signature() {
        let a = PeerId([9; 32]);
        let mut keys = SimKeys::default();
        keys.register(a);
        for n in [1u32, 2, 3, 5, 8, 13, 64, 255, 256, 300] {
            let signed = sign_batch(&SimSigner(a), &bodies(a, n));
            assert_eq!(signed.len(), n as usize);
            for (i, c) in signed.iter().enumerate() {
                assert_eq!(c.body.unit.index, i as u32, "order kept");
                assert_eq!(verify(&keys, c), Ok(()), "n={n} i={i}");
                assert_eq!(c.batch.is_none(), n == 1, "a lone commit is signed alone");
            }
            // One signature per MAX_SIGN_BATCH commits.
            let mut sigs: Vec<_> = signed.iter().map(|c| c.sig).collect();
            sigs.dedup();
            assert_eq!(sigs.len(), (n as usize).div_ceil(MAX_SIGN_BATCH));
        }
        let counting = Counting(&keys, Default::default());
        for c in sign_batch(&SimSigner(a), &bodies(a, 4)) {
            verify(&counting, &c).unwrap();
        }
        let mut msgs = counting.1.into_inner().unwrap();
        assert_eq!(msgs.len(), 4);
        msgs.dedup();
        assert_eq!(msgs.len(), 1, "every commit's check is over the same root message");
    }

    #[cfg(feature = "ed25519")]
    #[test]
    fn ed25519_batches_verify() {
        let s = Ed25519Signer::from_seed([7; 32]);
        for c in sign_batch(&s, &bodies(s.peer_id(), 7)) {
            assert_eq!(verify(&Ed25519Verifier, &c), Ok(()));
        }
    }

    #[test]
    fn a_changed_body_or_a_doctored_proof_does_not_verify() {
        let a = PeerId([9; 32]);
        let mut keys = SimKeys::default();
        keys.register(a);
        let signed = sign_batch(&SimSigner(a), &bodies(a, 5));
        let c = &signed[2];
        let bad = |f: &dyn Fn(&mut SignedCommit)| {
            let mut x = c.clone();
            f(&mut x);
            verify(&keys, &x)
        };
        assert_eq!(verify(&keys, c), Ok(()));
        // Another result, or the commit moved to another leaf, or another batch size.
        assert_eq!(bad(&|x| x.body.result = BlobId([77; 32])), Err(CommitError::BadSignature));
        fn p(x: &mut SignedCommit) -> &mut BatchProof {
            x.batch.as_mut().expect("a batch commit")
        }
        assert_eq!(bad(&|x| p(x).index = 3), Err(CommitError::BadSignature));
        assert_eq!(bad(&|x| p(x).size = 6), Err(CommitError::BadSignature));
        // Impossible shapes are refused before any hashing of the path.
        assert_eq!(bad(&|x| p(x).index = 5), Err(CommitError::BadSignature));
        assert_eq!(bad(&|x| p(x).size = 1), Err(CommitError::BadSignature));
        assert_eq!(bad(&|x| p(x).size = 400), Err(CommitError::BadSignature));
        assert_eq!(bad(&|x| p(x).path.push([0; 32])), Err(CommitError::BadSignature));
        assert_eq!(bad(&|x| p(x).path.truncate(1)), Err(CommitError::BadSignature));
        assert_eq!(bad(&|x| p(x).path[0][0] ^= 1), Err(CommitError::BadSignature));
        // A commit of the batch presented as signed alone.
        assert_eq!(bad(&|x| x.batch = None), Err(CommitError::BadSignature));
        // The batch's signature over an inner node presented as a leaf: leaves and nodes
        // hash under different contexts, so no body hashes to a node.
        let other = sign_batch(&SimSigner(a), &bodies(a, 2));
        let mut x = other[0].clone();
        x.sig = c.sig;
        assert_eq!(verify(&keys, &x), Err(CommitError::BadSignature));
    }

    impl CommitBody {
        fn index_bump(&mut self) {
            self.unit.index += 1;
        }
    }
}
