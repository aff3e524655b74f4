//! Verification: tallying signed commits for one unit until `quorum` distinct peers agree, and
//! remembering who dissented.

use std::fmt;

use ova_jobs::BlobId;
use serde::{Deserialize, Serialize};

use crate::commit::SignedCommit;
use crate::types::{ArchClass, PeerId};
use crate::util::FxHashMap;

/// Why a unit failed. Every failed unit carries one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailReason {
    /// `max_replicas` peers ran the unit and no result reached the quorum.
    NoQuorum {
        /// Replicas that committed.
        replicas: u8,
        /// Distinct results among them.
        distinct_results: u8,
        /// Largest number of peers agreeing on one result.
        best_agreement: u8,
        /// Agreement required.
        quorum: u8,
    },
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailReason::NoQuorum { replicas, distinct_results, best_agreement, quorum } => write!(
                f,
                "no quorum: {replicas} replicas (the job's maximum) returned {distinct_results} \
                 different results; at most {best_agreement} agreed, {quorum} needed"
            ),
        }
    }
}

/// Where a unit's verification stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not decided yet: `need` more agreeing commits are required for the leading result.
    Pending {
        /// Additional agreeing commits needed.
        need: u8,
    },
    /// `quorum` distinct peers signed this result.
    Verified {
        /// The agreed result.
        result: BlobId,
        /// The class the replicas shared (same-arch jobs), or `None` for strict jobs.
        arch: Option<ArchClass>,
    },
    /// The unit failed.
    Failed(FailReason),
}

/// What adding a commit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    /// A new executor's commit.
    New,
    /// The same commit again.
    Duplicate,
    /// The executor already committed a *different* result: the later one is ignored.
    Equivocation,
}

/// Most commits kept per unit. A unit fails once `max_replicas` (a `u8`) disagree, so honest
/// runs never come near this; it only stops a flood of signed commits from growing the tally.
pub const MAX_COMMITS_PER_UNIT: usize = 64;

/// The commits received for one unit (at most one per executor, at most
/// [`MAX_COMMITS_PER_UNIT`]).
#[derive(Clone, Debug, Default)]
pub struct Tally {
    commits: Vec<SignedCommit>,
}

impl Tally {
    /// Adds a (signature-checked) commit.
    pub fn add(&mut self, c: SignedCommit) -> Added {
        if let Some(old) = self.commits.iter().find(|o| o.body.executor == c.body.executor) {
            return if old.body.result == c.body.result && old.body.arch == c.body.arch {
                Added::Duplicate
            } else {
                Added::Equivocation
            };
        }
        if self.commits.len() >= MAX_COMMITS_PER_UNIT {
            return Added::Duplicate;
        }
        // Near-exact growth: a tally holds `quorum` commits (usually two) or a few more; the
        // default doubling would reserve 4 (800 bytes) at the first one, and growing by one
        // moved the first commit again at the second.
        self.commits.reserve_exact(if self.commits.is_empty() { 2 } else { 1 });
        self.commits.push(c);
        Added::New
    }

    /// The commits so far.
    pub fn commits(&self) -> &[SignedCommit] {
        &self.commits
    }

    /// Whether `peer` has committed.
    pub fn has(&self, peer: &PeerId) -> bool {
        self.commits.iter().any(|c| c.body.executor == *peer)
    }

    fn key(c: &SignedCommit, same_arch: bool) -> (BlobId, Option<ArchClass>) {
        (c.body.result, same_arch.then_some(c.body.arch))
    }

    /// The leading (result, class) and how many agree on it; ties go to the smaller hash, so
    /// every peer picks the same one.
    pub fn leader(&self, same_arch: bool) -> Option<((BlobId, Option<ArchClass>), u8)> {
        let mut best: Option<((BlobId, Option<ArchClass>), u8)> = None;
        for c in &self.commits {
            let k = Self::key(c, same_arch);
            let n = self.commits.iter().filter(|o| Self::key(o, same_arch) == k).count() as u8;
            best = match best {
                Some((bk, bn)) if bn > n || (bn == n && bk <= k) => Some((bk, bn)),
                _ => Some((k, n)),
            };
        }
        best
    }

    /// The verdict for a job with this quorum and replica cap.
    pub fn verdict(&self, quorum: u8, max_replicas: u8, same_arch: bool) -> Verdict {
        let quorum = quorum.max(1);
        let Some(((result, arch), n)) = self.leader(same_arch) else {
            return Verdict::Pending { need: quorum };
        };
        if n >= quorum {
            return Verdict::Verified { result, arch };
        }
        if self.commits.len() >= max_replicas as usize {
            let mut keys: Vec<_> = self.commits.iter().map(|c| Self::key(c, same_arch)).collect();
            keys.sort();
            keys.dedup();
            return Verdict::Failed(FailReason::NoQuorum {
                replicas: self.commits.len() as u8,
                distinct_results: keys.len() as u8,
                best_agreement: n,
                quorum,
            });
        }
        Verdict::Pending { need: quorum - n }
    }
}

/// Per (peer, module) record of a peer that dissented, for later adaptive replication.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DissentRecord {
    /// Verified units where the peer agreed with the quorum, since its first dissent.
    pub agreed: u32,
    /// Verified units where it signed a different result.
    pub dissented: u32,
    /// Agreements since its last dissent.
    pub consecutive_agreed: u32,
}

/// Dissent records, bounded: a peer gets a record (per module) when it first signs a result
/// the quorum outvoted, and from then on its agreements are counted too. When full, new
/// (peer, module) pairs are not recorded (and counted in [`DissentBook::dropped`]); existing
/// ones keep updating.
///
/// Peers that never dissented get no record. (They did, one per executor and module whose
/// verdict we saw: a lookup that missed the cache for every commit of every verdict, about 2 %
/// of a 10,000-peer simulation's CPU, and a book that honest peers could fill, so that a liar
/// met later went unrecorded.)
#[derive(Clone, Debug)]
pub struct DissentBook {
    map: FxHashMap<(PeerId, BlobId), DissentRecord>,
    cap: usize,
    /// Updates dropped because the book was full.
    pub dropped: u64,
}

impl DissentBook {
    /// A book holding at most `cap` records.
    pub fn new(cap: usize) -> Self {
        Self { map: FxHashMap::default(), cap, dropped: 0 }
    }

    /// Records one verified outcome for `peer` running `module`: a dissent always, an
    /// agreement only for a peer that has dissented before.
    pub fn record(&mut self, peer: PeerId, module: BlobId, agreed: bool) {
        if agreed {
            if let Some(r) = self.map.get_mut(&(peer, module)) {
                r.agreed += 1;
                r.consecutive_agreed += 1;
            }
            return;
        }
        let len = self.map.len();
        let r = match self.map.get_mut(&(peer, module)) {
            Some(r) => r,
            None if len >= self.cap => {
                self.dropped += 1;
                return;
            }
            None => self.map.entry((peer, module)).or_default(),
        };
        r.dissented += 1;
        r.consecutive_agreed = 0;
    }

    /// The record for (peer, module).
    pub fn get(&self, peer: &PeerId, module: &BlobId) -> Option<DissentRecord> {
        self.map.get(&(*peer, *module)).copied()
    }

    /// Every peer with at least one dissent, for reports.
    pub fn dissenters(&self) -> impl Iterator<Item = (&(PeerId, BlobId), &DissentRecord)> {
        self.map.iter().filter(|(_, r)| r.dissented > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::{CommitBody, SimSigner, sign};
    use crate::types::UnitRef;
    use ova_jobs::{JobId, UnitId};

    fn c(p: u8, r: u8, arch: ArchClass) -> SignedCommit {
        let body = CommitBody {
            unit: UnitRef { job: JobId([0; 32]), index: 0 },
            unit_id: UnitId([0; 32]),
            result: BlobId([r; 32]),
            executor: PeerId([p; 32]),
            arch,
        };
        sign(&SimSigner(body.executor), body)
    }

    #[test]
    fn quorum_mismatch_and_failure() {
        let x = ArchClass::X86_64;
        let mut t = Tally::default();
        assert_eq!(t.verdict(2, 3, true), Verdict::Pending { need: 2 });
        t.add(c(1, 1, x));
        assert_eq!(t.add(c(1, 1, x)), Added::Duplicate);
        assert_eq!(t.add(c(1, 9, x)), Added::Equivocation);
        t.add(c(2, 2, x));
        assert_eq!(t.verdict(2, 3, true), Verdict::Pending { need: 1 });
        t.add(c(3, 3, x));
        match t.verdict(2, 3, true) {
            Verdict::Failed(r) => assert!(r.to_string().contains("3 different results")),
            v => panic!("{v:?}"),
        }
        let mut t = Tally::default();
        t.add(c(1, 1, x));
        t.add(c(2, 1, ArchClass::AARCH64));
        assert_eq!(t.verdict(2, 4, true), Verdict::Pending { need: 1 });
        assert!(matches!(t.verdict(2, 4, false), Verdict::Verified { arch: None, .. }));
    }

    #[test]
    fn dissent_book_is_bounded() {
        let mut b = DissentBook::new(2);
        let m = BlobId([0; 32]);
        b.record(PeerId([1; 32]), m, false);
        b.record(PeerId([1; 32]), m, true);
        b.record(PeerId([2; 32]), m, false);
        b.record(PeerId([3; 32]), m, false);
        assert_eq!(b.dropped, 1);
        let r = b.get(&PeerId([1; 32]), &m).unwrap();
        assert_eq!((r.agreed, r.dissented, r.consecutive_agreed), (1, 1, 1));
        assert_eq!(b.dissenters().count(), 2);
    }

    #[test]
    fn honest_peers_leave_the_book_to_dissenters() {
        let mut b = DissentBook::new(1);
        let m = BlobId([0; 32]);
        for p in 1..=10 {
            b.record(PeerId([p; 32]), m, true);
        }
        assert!(b.get(&PeerId([1; 32]), &m).is_none(), "an honest peer got a record");
        // The one place left goes to the first liar, not to an honest peer seen before it.
        b.record(PeerId([11; 32]), m, false);
        b.record(PeerId([11; 32]), m, true);
        let r = b.get(&PeerId([11; 32]), &m).expect("the liar's record");
        assert_eq!((r.agreed, r.dissented, r.consecutive_agreed), (1, 1, 1));
        assert_eq!(b.dropped, 0);
    }
}
