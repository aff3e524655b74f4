//! Commits on the wire, one message per signed batch and receiver.
//!
//! An executor signs the results it finished together ([`commit::sign_batch`]): one
//! signature over the root of a Merkle tree of the commit bodies. Sent one [`SignedCommit`]
//! per message, every commit repeated the signature, the executor's id, the batch size and its
//! own path of sibling hashes, and every receiver decoded, hashed and tallied them one message
//! at a time. On the network bench's tiny units (P4) one commit message more per run cost
//! about 15 µs of the peers' CPU, against about 105 µs for the whole run.
//!
//! A [`CommitBatch`] carries the commits of one signed batch that one receiver should get:
//! the shared fields once, then per commit only its leaf index, unit, unit id and result,
//! and one *multiproof* for them all — the sibling hashes the receiver cannot compute from
//! the commits it got, in the order the walk up the tree needs them. A receiver that gets
//! every commit of the batch (the usual case: a small network, or a unit's watchers) gets no
//! hashes at all. [`CommitBatch::open`] recomputes the root, checks the one signature, and
//! hands back ordinary [`SignedCommit`]s, each with its own [`BatchProof`] rebuilt from the
//! tree, so the store, probe and sync replies and the tally work on them as before.

use ova_jobs::{BlobId, UnitId};
use serde::{Deserialize, Serialize};

use crate::commit::serde_big_array_shim::Sig;
use crate::commit::{
    self, BatchProof, CommitBody, CommitError, MAX_SIGN_BATCH, SignedCommit, Verifier,
};
use crate::types::{ArchClass, PeerId, UnitRef};
use crate::util::FxHashMap;

/// The commits of a [`CommitBatch`] that passed [`CommitBatch::open`]: its shape, its tree's
/// root and its one signature were checked. Only [`CommitBatch::open_checked`] makes one.
#[derive(Clone, Debug)]
pub struct OpenedBatch {
    executor: PeerId,
    commits: Vec<SignedCommit>,
}

impl OpenedBatch {
    /// Who ran the units and signed them.
    pub fn executor(&self) -> &PeerId {
        &self.executor
    }

    /// The commits, each with the proof it would carry alone.
    pub fn commits(&self) -> &[SignedCommit] {
        &self.commits
    }

    /// The commits, taken out.
    pub fn into_commits(self) -> Vec<SignedCommit> {
        self.commits
    }
}

/// One commit of a [`CommitBatch`]: what differs from commit to commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchEntry {
    /// Its leaf index in the signed batch.
    pub index: u16,
    /// The unit.
    pub unit: UnitRef,
    /// The unit's content id.
    pub unit_id: UnitId,
    /// Hash of the result.
    pub result: BlobId,
}

/// A commit being packed: its entry and its own path of sibling hashes.
type Member = (BatchEntry, Vec<[u8; 32]>);

/// Commits of one signed batch for one receiver (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitBatch {
    /// Who ran the units and signed.
    pub executor: PeerId,
    /// The executor's architecture class.
    pub arch: ArchClass,
    /// The signature: over the batch's root, or over the one body of a batch of 1.
    pub sig: Sig,
    /// Commits in the signed batch (1 ..= [`MAX_SIGN_BATCH`]), not just in this message.
    pub size: u16,
    /// The commits for this receiver, by strictly increasing leaf index.
    pub entries: Vec<BatchEntry>,
    /// Sibling hashes the walk from `entries` up to the root needs, in the order it needs
    /// them (level by level from the leaves, left to right).
    pub proof: Vec<[u8; 32]>,
}

impl BatchEntry {
    fn body(&self, executor: PeerId, arch: ArchClass) -> CommitBody {
        CommitBody { unit: self.unit, unit_id: self.unit_id, result: self.result, executor, arch }
    }
}

impl CommitBatch {
    /// Packs signed commits into as few batch messages as they allow: one per signed batch
    /// they come from, in order of first appearance, each with its commits by leaf index.
    /// The commits are expected to be as [`commit::sign_batch`] made them; one whose proof
    /// does not fit the others of its batch is packed alone (its receiver will reject it,
    /// as it would have the commit itself).
    pub fn pack(commits: impl IntoIterator<Item = SignedCommit>) -> Vec<CommitBatch> {
        // Per signed batch: its shared fields (entries still empty) and its commits.
        let mut groups: Vec<(CommitBatch, Vec<Member>)> = Vec::new();
        for c in commits {
            let (index, size, path) = match c.batch {
                Some(p) => (p.index, p.size, p.path),
                None => (0, 1, Vec::new()),
            };
            let entry = BatchEntry {
                index,
                unit: c.body.unit,
                unit_id: c.body.unit_id,
                result: c.body.result,
            };
            let same = |b: &CommitBatch| {
                size > 1
                    && b.size == size
                    && b.sig == c.sig
                    && b.executor == c.body.executor
                    && b.arch == c.body.arch
            };
            match groups
                .iter_mut()
                .find(|(b, members)| same(b) && !members.iter().any(|(e, _)| e.index == index))
            {
                Some((_, members)) => members.push((entry, path)),
                None => groups.push((
                    CommitBatch {
                        executor: c.body.executor,
                        arch: c.body.arch,
                        sig: c.sig,
                        size,
                        entries: Vec::new(),
                        proof: Vec::new(),
                    },
                    vec![(entry, path)],
                )),
            }
        }
        let mut out = Vec::with_capacity(groups.len());
        for (shared, mut members) in groups {
            members.sort_unstable_by_key(|(e, _)| e.index);
            let mut b = shared.clone();
            b.entries = members.iter().map(|(e, _)| *e).collect();
            match multiproof(&b, &members) {
                Some(proof) => {
                    b.proof = proof;
                    out.push(b);
                }
                // Proofs that do not make one tree: each commit goes on its own.
                None => out.extend(members.into_iter().map(|(e, path)| CommitBatch {
                    entries: vec![e],
                    proof: path,
                    ..shared.clone()
                })),
            }
        }
        out
    }

    /// Checks the batch (its shape, the tree's root, the one signature) and returns its
    /// commits, each with the proof it would carry alone. Any flaw rejects the whole message:
    /// its commits come from one signer and one signature.
    pub fn open(&self, verifier: &dyn Verifier) -> Result<Vec<SignedCommit>, CommitError> {
        let bad = CommitError::BadSignature;
        let size = self.size as usize;
        let increasing = self.entries.windows(2).all(|w| w[0].index < w[1].index);
        let last = self.entries.last().map_or(usize::MAX, |e| e.index as usize);
        if size == 0 || size > MAX_SIGN_BATCH || !increasing || last >= size {
            return Err(bad);
        }
        let bodies: Vec<CommitBody> =
            self.entries.iter().map(|e| e.body(self.executor, self.arch)).collect();
        if size == 1 {
            if !self.proof.is_empty() {
                return Err(bad);
            }
            let c = SignedCommit { body: bodies[0], sig: self.sig, batch: None };
            commit::verify(verifier, &c)?;
            return Ok(vec![c]);
        }
        let row = self
            .entries
            .iter()
            .zip(&bodies)
            .map(|(e, b)| (e.index as usize, commit::leaf_hash(b)))
            .collect();
        let mut known: FxHashMap<(u8, u16), [u8; 32]> = FxHashMap::default();
        let mut proof = self.proof.iter();
        let root = walk(
            size,
            row,
            |_, _| proof.next().copied(),
            |level, pos, h| {
                known.insert((level as u8, pos as u16), *h);
            },
        )
        .ok_or(bad)?;
        if proof.next().is_some() {
            return Err(bad);
        }
        let signed = commit::batch_signing_bytes(&root, self.size);
        verifier.verify(&self.executor, &signed, &self.sig.0)?;
        let mut out = Vec::with_capacity(bodies.len());
        for (e, body) in self.entries.iter().zip(bodies) {
            let path = siblings(size, e.index as usize)
                .map(|(level, pos)| known.get(&(level as u8, pos as u16)).copied())
                .collect::<Option<Vec<_>>>()
                .ok_or(bad)?;
            let proof = BatchProof { index: e.index, size: self.size, path };
            out.push(SignedCommit { body, sig: self.sig, batch: Some(Box::new(proof)) });
        }
        Ok(out)
    }

    /// [`CommitBatch::open`], kept as proof that it passed: a shell that opens a batch for its
    /// own bookkeeping (noting commits, storing those of its jobs) hands the result to its
    /// core with [`crate::peer::Event::Commits`], which does not check it again.
    pub fn open_checked(&self, verifier: &dyn Verifier) -> Result<OpenedBatch, CommitError> {
        self.open(verifier).map(|commits| OpenedBatch { executor: self.executor, commits })
    }

    /// Commits carried.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it carries no commit (never true of a packed batch; a received one that is
    /// empty fails [`CommitBatch::open`]).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The (level, position) of each sibling on the path from leaf `index` of a `size`-leaf tree
/// to the root, leaves first; a level where the node is the last of an odd row has none.
fn siblings(size: usize, index: usize) -> impl Iterator<Item = (usize, usize)> {
    let (mut pos, mut width, mut level) = (index, size, 0);
    std::iter::from_fn(move || {
        while width > 1 {
            let (l, sibling) = (level, pos ^ 1);
            let exists = sibling < width;
            pos /= 2;
            width = width.div_ceil(2);
            level += 1;
            if exists {
                return Some((l, sibling));
            }
        }
        None
    })
}

/// The multiproof for `b`'s entries, taken from their own paths (`members`, by leaf index as
/// the entries are): `None` if a path does not fit the tree. A lone commit's "multiproof" is
/// its path, which is empty.
fn multiproof(b: &CommitBatch, members: &[Member]) -> Option<Vec<[u8; 32]>> {
    let size = b.size as usize;
    if size == 1 {
        return members.iter().all(|(_, p)| p.is_empty()).then(Vec::new);
    }
    let mut given: FxHashMap<(usize, usize), [u8; 32]> = FxHashMap::default();
    for (e, path) in members {
        if siblings(size, e.index as usize).count() != path.len() {
            return None;
        }
        given.extend(siblings(size, e.index as usize).zip(path.iter().copied()));
    }
    let row = b.entries.iter().map(|e| (e.index as usize, [0u8; 32])).collect();
    let mut proof = Vec::new();
    // The walk's hashes are of placeholder leaves: only the positions it asks for matter.
    walk(
        size,
        row,
        |level, pos| {
            let h = given.get(&(level, pos)).copied();
            proof.extend(h);
            h
        },
        |_, _, _| {},
    )?;
    Some(proof)
}

/// Walks a batch tree of `size` leaves from the known nodes `row` (leaf positions, strictly
/// increasing, each below `size`) up to the root, asking `sibling(level, position)` for each
/// node it cannot compute and telling `seen` every node it meets. The last node of an odd row
/// moves up as it is, as in [`commit::sign_batch`]. `None`: a sibling was not given.
fn walk(
    size: usize,
    mut row: Vec<(usize, [u8; 32])>,
    mut sibling: impl FnMut(usize, usize) -> Option<[u8; 32]>,
    mut seen: impl FnMut(usize, usize, &[u8; 32]),
) -> Option<[u8; 32]> {
    let (mut width, mut level) = (size, 0);
    while width > 1 {
        let mut up = Vec::with_capacity(row.len().div_ceil(2));
        let mut i = 0;
        while i < row.len() {
            let (pos, h) = row[i];
            seen(level, pos, &h);
            let node = if pos % 2 == 1 {
                // Had the left sibling been known it would have taken this node along.
                let left = sibling(level, pos - 1)?;
                seen(level, pos - 1, &left);
                commit::node_hash(&left, &h)
            } else if pos + 1 < width {
                let right = match row.get(i + 1) {
                    Some(&(p, r)) if p == pos + 1 => {
                        i += 1;
                        r
                    }
                    _ => sibling(level, pos + 1)?,
                };
                seen(level, pos + 1, &right);
                commit::node_hash(&h, &right)
            } else {
                h
            };
            up.push((pos / 2, node));
            i += 1;
        }
        row = up;
        width = width.div_ceil(2);
        level += 1;
    }
    match row.as_slice() {
        [(0, root)] => Some(*root),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::{SimKeys, SimSigner, sign_batch};
    use ova_jobs::JobId;

    fn bodies(executor: PeerId, n: u32) -> Vec<CommitBody> {
        (0..n)
            .map(|i| CommitBody {
                unit: UnitRef { job: JobId([1; 32]), index: i },
                unit_id: UnitId([i as u8; 32]),
                result: BlobId([i as u8 ^ 0x55; 32]),
                executor,
                arch: ArchClass::X86_64,
            })
            .collect()
    }

    fn keys(a: PeerId) -> SimKeys {
        let mut k = SimKeys::default();
        k.register(a);
        k
    }

    /// Every subset (by a bit mask) of small batches, and sampled subsets of large ones.
    fn subsets(n: usize) -> Vec<Vec<usize>> {
        if n <= 9 {
            (1u32..1 << n).map(|m| (0..n).filter(|i| m & (1 << i) != 0).collect()).collect()
        } else {
            let mut rng = crate::util::Rng::new(n as u64);
            let mut out = vec![(0..n).collect(), vec![0], vec![n - 1]];
            for _ in 0..40 {
                let k = 1 + rng.below(n as u64) as usize;
                let mut s: Vec<usize> = (0..n).filter(|_| rng.below(n as u64) < k as u64).collect();
                if s.is_empty() {
                    s.push(rng.below(n as u64) as usize);
                }
                out.push(s);
            }
            out
        }
    }

    #[test]
    fn any_subset_of_a_batch_opens_into_the_commits_that_were_signed() {
        let a = PeerId([9; 32]);
        let keys = keys(a);
        for n in [1u32, 2, 3, 4, 5, 6, 7, 8, 9, 31, 64, 255, 256] {
            let signed = sign_batch(&SimSigner(a), &bodies(a, n));
            for subset in subsets(n as usize) {
                // Packed in any order, opened by leaf index.
                let picked: Vec<SignedCommit> =
                    subset.iter().rev().map(|&i| signed[i].clone()).collect();
                let packed = CommitBatch::pack(picked);
                assert_eq!(packed.len(), 1, "n={n} {subset:?}");
                let b = &packed[0];
                let opened = b.open(&keys).unwrap_or_else(|e| panic!("n={n} {subset:?}: {e}"));
                let want: Vec<SignedCommit> = subset.iter().map(|&i| signed[i].clone()).collect();
                assert_eq!(opened, want, "n={n} {subset:?}");
                if subset.len() == n as usize {
                    assert!(b.proof.is_empty(), "the whole batch needs no hashes");
                }
                // Never more hashes than the separate paths held.
                let paths: usize =
                    want.iter().map(|c| c.batch.as_ref().map_or(0, |p| p.path.len())).sum();
                assert!(b.proof.len() <= paths, "n={n} {subset:?}");
            }
        }
    }

    #[test]
    fn commits_of_several_batches_are_packed_one_message_per_batch() {
        let (a, b) = (PeerId([9; 32]), PeerId([8; 32]));
        let first = sign_batch(&SimSigner(a), &bodies(a, 4));
        let second = sign_batch(&SimSigner(a), &bodies(a, 3));
        let alone = sign_batch(&SimSigner(b), &bodies(b, 1));
        let all = [&first[1..], &second[..], &alone[..], &first[..1]].concat();
        let packed = CommitBatch::pack(all);
        let sizes: Vec<(PeerId, u16, usize)> =
            packed.iter().map(|p| (p.executor, p.size, p.len())).collect();
        assert_eq!(sizes, vec![(a, 4, 4), (a, 3, 3), (b, 1, 1)]);
        let mut k = keys(a);
        k.register(b);
        assert_eq!(packed[0].open(&k).unwrap(), first);
        assert_eq!(packed[2].open(&k).unwrap(), alone);
    }

    #[test]
    fn a_doctored_batch_is_rejected_whole() {
        let a = PeerId([9; 32]);
        let keys = keys(a);
        let signed = sign_batch(&SimSigner(a), &bodies(a, 11));
        let some: Vec<SignedCommit> = [1, 2, 7].iter().map(|&i| signed[i].clone()).collect();
        let good = CommitBatch::pack(some).remove(0);
        assert!(good.open(&keys).is_ok());
        assert!(!good.proof.is_empty());
        let bad = |f: &dyn Fn(&mut CommitBatch)| {
            let mut x = good.clone();
            f(&mut x);
            x.open(&keys)
        };
        let sig = Err(CommitError::BadSignature);
        assert_eq!(bad(&|x| x.entries[1].result = BlobId([0; 32])), sig);
        assert_eq!(bad(&|x| x.entries[2].index = 8), sig);
        assert_eq!(bad(&|x| x.entries.swap(0, 1)), sig, "out of order");
        assert_eq!(bad(&|x| x.entries[1] = x.entries[0]), sig, "a leaf twice");
        assert_eq!(bad(&|x| x.entries.clear()), sig);
        assert_eq!(bad(&|x| x.entries[2].index = 11), sig, "outside the batch");
        assert_eq!(bad(&|x| x.size = 12), sig);
        assert_eq!(bad(&|x| x.size = 0), sig);
        assert_eq!(bad(&|x| x.size = 1000), sig);
        assert_eq!(bad(&|x| x.proof.push([0; 32])), sig, "a hash too many");
        assert_eq!(bad(&|x| x.proof.truncate(x.proof.len() - 1)), sig, "a hash short");
        assert_eq!(bad(&|x| x.proof[0][3] ^= 1), sig);
        assert_eq!(bad(&|x| x.arch = ArchClass(7)), sig);
        assert_eq!(bad(&|x| x.executor = PeerId([8; 32])), Err(CommitError::UnknownSigner));
        // A lone commit: no proof hashes allowed, the signature is over its body.
        let lone = CommitBatch::pack(sign_batch(&SimSigner(a), &bodies(a, 1))).remove(0);
        assert!(lone.open(&keys).is_ok());
        let mut x = lone.clone();
        x.proof.push([0; 32]);
        assert_eq!(x.open(&keys), sig);
        let mut x = lone;
        x.entries[0].unit.index = 5;
        assert_eq!(x.open(&keys), sig);
    }

    #[test]
    fn a_commit_whose_proof_does_not_fit_its_batch_is_packed_alone() {
        let a = PeerId([9; 32]);
        let signed = sign_batch(&SimSigner(a), &bodies(a, 6));
        let mut odd = signed[3].clone();
        odd.batch.as_mut().unwrap().path.pop();
        let packed = CommitBatch::pack([signed[0].clone(), odd.clone(), signed[5].clone()]);
        assert_eq!(packed.len(), 3, "{packed:?}");
        let keys = keys(a);
        assert_eq!(packed.iter().filter(|p| p.open(&keys).is_ok()).count(), 2);
        // The same commit twice is packed once per copy, and each opens.
        let packed = CommitBatch::pack([signed[2].clone(), signed[2].clone()]);
        assert_eq!(packed.len(), 2);
        assert!(packed.iter().all(|p| p.open(&keys).unwrap() == vec![signed[2].clone()]));
    }
}
