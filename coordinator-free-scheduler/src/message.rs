//! Protocol messages. Broadcast (gossip): adverts, job announcements, "I hold the bundle",
//! sync requests. Direct (to one peer): claims, commits, probes, steals, sync replies.
//!
//! On the wire every message goes through [`ova_jobs::wire`] ([`Message::encode`],
//! [`Message::decode`]); the simulator passes them as values and shares the (large, immutable)
//! job announcement through an `Arc`, as an in-process shell would.
//!
//! Lease ends in messages ([`Message::Claim`], [`Message::Release`], the leases of
//! [`Message::ProbeReply`] and [`Grant`]) are times in the *sender's* clock, as the core
//! hands them out. Peers' clocks are not shared (a shell counts from its own start), so on
//! the wire they travel as time remaining: [`Message::to_wire_times`] before encoding,
//! [`Message::from_wire_times`] after decoding. The simulator's peers share one clock and
//! skip both.

use std::sync::{Arc, OnceLock};

use ova_jobs::wire::{self, WireError};
use ova_jobs::{Determinism, JobId, Manifest, UnitId};
use serde::{Deserialize, Serialize};

use crate::commit::SignedCommit;
use crate::commit_batch::CommitBatch;
use crate::lease::Lease;
use crate::membership::Advert;
use crate::placement::{pick_class, unit_point};
use crate::types::{ArchClass, Millis, PeerId, UnitRef};

/// Largest frame accepted: the manifest cap plus room for the announcement's other fields.
pub const MAX_FRAME_BYTES: usize = ova_jobs::manifest::MAX_MANIFEST_BYTES + (64 << 10);
/// Most commits or units in one batch message.
pub const MAX_BATCH: usize = 256;
/// About the most bytes of results one [`Message::ResultBytes`] carries (one larger result
/// goes alone).
pub const MAX_RESULT_BYTES_BATCH: usize = 1 << 20;
/// Most declined jobs a steal request names ([`Message::StealRequest`]).
pub const MAX_STEAL_SKIP: usize = 8;
/// Most classes or holders in one announcement.
pub const MAX_ANNOUNCE_LIST: usize = 16;

/// A job as announced: its manifest plus who submitted it and placement hints.
#[derive(Debug, Serialize, Deserialize)]
pub struct JobInfo {
    /// The manifest.
    pub manifest: Manifest,
    /// Its id (checked against the manifest on first use).
    pub job_id: JobId,
    /// The submitting peer (receives every commit, keeps a copy of every result).
    pub submitter: PeerId,
    /// When it was announced, in the submitter's clock (informational).
    pub announced_at: Millis,
    /// Architecture classes and their capacity, as the submitter saw them: same-arch units
    /// are split across classes by weighted rendezvous on these, so every peer agrees.
    pub class_weights: Vec<(ArchClass, u32)>,
    /// Peers that keep the bundle (the submitter first), so the job survives its submitter.
    pub holders: Vec<PeerId>,
    #[serde(skip)]
    derived: OnceLock<Option<Arc<Derived>>>,
}

/// What every peer computes once from a job: unit ids, ring points and a ring-sorted index.
#[derive(Debug)]
pub struct Derived {
    /// Unit ids, by index.
    pub unit_ids: Vec<UnitId>,
    /// Ring points ([`unit_point`]), by index: a quarter of the ids' bytes, for the lookups
    /// placement makes on most messages.
    pub points: Vec<u64>,
    /// (ring point, index, class of the unit for same-arch jobs), sorted. The class rides in
    /// the entry's padding (16 bytes either way): a region scan walks this array in order and
    /// reads the class of every unit, and `class_of[index]` was a cache miss per unit.
    pub by_point: Vec<(u64, u32, ArchClass)>,
    /// Class of each unit for same-arch jobs.
    pub class_of: Vec<ArchClass>,
}

impl JobInfo {
    /// A new announcement.
    pub fn new(
        manifest: Manifest,
        submitter: PeerId,
        announced_at: Millis,
        class_weights: Vec<(ArchClass, u32)>,
        holders: Vec<PeerId>,
    ) -> Self {
        Self {
            job_id: manifest.job_id(),
            manifest,
            submitter,
            announced_at,
            class_weights,
            holders,
            derived: OnceLock::new(),
        }
    }

    /// Whether the job is strict (any architecture may be a replica).
    pub fn strict(&self) -> bool {
        self.manifest.determinism == Determinism::Strict
    }

    /// Validates the announcement and builds the derived index, once. `None` if invalid
    /// (wrong id, invalid manifest, oversized lists): such announcements are dropped.
    pub fn derived(&self) -> Option<&Arc<Derived>> {
        self.derived
            .get_or_init(|| {
                if self.class_weights.len() > MAX_ANNOUNCE_LIST
                    || self.holders.len() > MAX_ANNOUNCE_LIST
                    || self.manifest.validate().is_err()
                    || self.manifest.job_id() != self.job_id
                {
                    return None;
                }
                let module = self.manifest.module;
                let unit_ids: Vec<UnitId> = self
                    .manifest
                    .units
                    .iter()
                    .map(|u| UnitId::derive(&module, &u.input, &u.args))
                    .collect();
                let points: Vec<u64> = unit_ids.iter().map(unit_point).collect();
                let class_of: Vec<ArchClass> = points
                    .iter()
                    .map(|&p| pick_class(p, &self.class_weights).unwrap_or(ArchClass(0)))
                    .collect();
                let mut by_point: Vec<(u64, u32, ArchClass)> = points
                    .iter()
                    .zip(&class_of)
                    .enumerate()
                    .map(|(i, (&p, &c))| (p, i as u32, c))
                    .collect();
                by_point.sort_unstable();
                Some(Arc::new(Derived { unit_ids, points, by_point, class_of }))
            })
            .as_ref()
    }
}

/// One unit of a [`Message::StealGrant`]. The thief may be far from the unit on the ring (its
/// own view cannot rank the unit's candidates), so the victim names the peers that watch the
/// unit: the thief's claims, commit and hand-back go to them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The unit.
    pub unit: UnitRef,
    /// The victim's watchers for the unit, the victim first (at most [`MAX_ANNOUNCE_LIST`]).
    pub watchers: Vec<PeerId>,
    /// The other replicas' live leases the victim knows (hearsay, as in a probe reply): the
    /// thief waits for them instead of taking the unit for stuck.
    pub leases: Vec<Lease>,
}

/// Everything peers say to each other.
///
/// The two large variants are boxed ([`Message::Commit`], [`Message::Commits`]; the encoding
/// is the same): a message is moved through every event a peer handles, and unboxed they made
/// every message 216 bytes instead of 88. Boxing them cut P5's wall time by 9 % over its first
/// 400 simulated seconds and by 1.5–4.4 % over two whole runs, side by side.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Message {
    /// Capacity advert (broadcast).
    Advert(Advert),
    /// A job (broadcast, or direct in reply to [`Message::GetJob`]).
    Announce(Arc<JobInfo>),
    /// Asks a peer for a job's announcement (direct).
    GetJob(JobId),
    /// The sender now holds the job's bundle and serves its blobs (broadcast).
    HaveBundle(JobId),
    /// The sender has started the unit and holds it until `until` (direct, to its ranking).
    Claim {
        /// The unit.
        unit: UnitRef,
        /// Lease end.
        until: Millis,
    },
    /// The sender handed the unit to another peer (a steal): its reservation ends at `until`
    /// and any claim from it for this unit that arrives later is stale (direct, to the
    /// unit's ranking).
    Release {
        /// The unit.
        unit: UnitRef,
        /// End of the sender's reservation.
        until: Millis,
    },
    /// A signed result (direct, to the unit's ranking and the submitter).
    Commit(Box<SignedCommit>),
    /// Asks what the receiver knows about a unit before taking it over (direct).
    Probe(UnitRef),
    /// Answer to a probe: the commits and leases known.
    ProbeReply {
        /// The unit.
        unit: UnitRef,
        /// Commits known (at most [`MAX_BATCH`]).
        commits: Vec<SignedCommit>,
        /// Leases known (hearsay: only used to wait, never to accept a result).
        leases: Vec<Lease>,
        /// The replier saw the unit resolved but no longer keeps its commits (it did not run
        /// it). Hearsay: a prober that hears this from two peers skips the unit; the peers
        /// that still track it place it again if that was a lie.
        done: bool,
    },
    /// An idle peer asks a busy one for up to `max` queued units (direct). A peer with
    /// nothing to give forwards it, `hops` times at most, towards the busiest peer it knows
    /// (or onwards along the ring), so an idle region finds work beyond its neighbourhood.
    StealRequest {
        /// Most units wanted.
        max: u32,
        /// The idle peer the units are for (the sender, or the peer a forwarder acts for).
        thief: PeerId,
        /// The thief's architecture class (same-arch units only go to their own class).
        arch: ArchClass,
        /// How many more times the request may be forwarded.
        hops: u8,
        /// Jobs the thief declines (its allow-list excludes their submitters; at most
        /// [`MAX_STEAL_SKIP`]): their units are not granted to it, it would only hand them
        /// back.
        skip: Vec<JobId>,
    },
    /// Units handed over to the thief (direct, from the victim).
    StealGrant(Vec<Grant>),
    /// Asks a view member that has been silent (no advert) for a while whether it is alive
    /// (direct). Adverts are rare; this finds a crashed peer sooner than their TTL.
    Ping,
    /// Answer to [`Message::Ping`] (direct).
    Pong,
    /// A returning submitter asks for its job's verified results (broadcast).
    SyncRequest(JobId),
    /// Verified commits for the requester's job, from a peer that tallied them (direct).
    SyncReply(Vec<SignedCommit>),
    /// Small results' bytes, from their executor to the job's submitter, just before the
    /// commits that name their hashes (direct; at most [`MAX_BATCH`] results, about
    /// [`MAX_RESULT_BYTES_BATCH`] bytes): the submitter then needs no fetch. For the shells:
    /// the core ignores it, and a shell keeps the bytes only until its core, having verified
    /// a unit of one of its own jobs, asks for that result.
    ResultBytes(#[serde(with = "ova_jobs::wire::byte_lists")] Vec<Vec<u8>>),
    /// Signed results of one batch the sender signed, those meant for the receiver (direct,
    /// to the units' watchers and submitters): what [`Message::Commit`] says of each, in one
    /// message with one signature and one multiproof ([`CommitBatch`]).
    Commits(Box<CommitBatch>),
}

/// Message kinds as [`Message::kind`] names them, in alphabetical order
/// (the simulator's report and the network's metrics count messages by them).
pub const MESSAGE_KINDS: [&str; 17] = [
    "advert",
    "announce",
    "claim",
    "commit",
    "commits",
    "get_job",
    "have_bundle",
    "ping",
    "pong",
    "probe",
    "probe_reply",
    "release",
    "result_bytes",
    "steal_grant",
    "steal_request",
    "sync_reply",
    "sync_request",
];

impl Message {
    /// Encodes as a versioned wire frame.
    pub fn encode(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Decodes a frame of at most [`MAX_FRAME_BYTES`].
    pub fn decode(frame: &[u8]) -> Result<Self, WireError> {
        wire::decode(frame, MAX_FRAME_BYTES)
    }

    /// Whether it is sent by gossip broadcast.
    pub fn is_broadcast(&self) -> bool {
        matches!(self, Message::Advert(_) | Message::HaveBundle(_) | Message::SyncRequest(_))
    }

    /// Applies `f` to every lease end the message carries.
    fn map_times(&mut self, f: impl Fn(Millis) -> Millis) {
        match self {
            Message::Claim { until, .. } | Message::Release { until, .. } => *until = f(*until),
            Message::ProbeReply { leases, .. } => {
                leases.iter_mut().for_each(|l| l.until = f(l.until));
            }
            Message::StealGrant(grants) => {
                for l in grants.iter_mut().flat_map(|g| g.leases.iter_mut()) {
                    l.until = f(l.until);
                }
            }
            _ => {}
        }
    }

    /// Turns the lease ends the message carries from times in the sender's clock (`now` is
    /// its time) into time remaining, to be encoded: 0 for one that has ended. See the
    /// module docs.
    pub fn to_wire_times(&mut self, now: Millis) {
        self.map_times(|until| until.saturating_sub(now));
    }

    /// Turns the lease ends of a decoded message from time remaining into times in the
    /// receiver's clock (`now` is its time). An ended one becomes 0, which every receiver
    /// takes as ended (as a sender's 0 is).
    pub fn from_wire_times(&mut self, now: Millis) {
        self.map_times(|left| if left == 0 { 0 } else { now.saturating_add(left) });
    }

    /// A short label for counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Advert(_) => "advert",
            Message::Announce(_) => "announce",
            Message::GetJob(_) => "get_job",
            Message::HaveBundle(_) => "have_bundle",
            Message::Claim { .. } => "claim",
            Message::Release { .. } => "release",
            Message::Commit(_) => "commit",
            Message::Probe(_) => "probe",
            Message::ProbeReply { .. } => "probe_reply",
            Message::StealRequest { .. } => "steal_request",
            Message::StealGrant(_) => "steal_grant",
            Message::Ping => "ping",
            Message::Pong => "pong",
            Message::SyncRequest(_) => "sync_request",
            Message::SyncReply(_) => "sync_reply",
            Message::ResultBytes(_) => "result_bytes",
            Message::Commits(_) => "commits",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind [`Message::kind`] names is listed once in [`MESSAGE_KINDS`], in order.
    #[test]
    fn message_kinds_are_listed_in_order() {
        let mut sorted = MESSAGE_KINDS;
        sorted.sort_unstable();
        assert_eq!(sorted, MESSAGE_KINDS);
        assert!(MESSAGE_KINDS.windows(2).all(|w| w[0] != w[1]));
        let unit = UnitRef { job: JobId([1; 32]), index: 0 };
        for m in
            [Message::Ping, Message::Pong, Message::Claim { unit, until: 0 }, Message::Probe(unit)]
        {
            assert!(MESSAGE_KINDS.contains(&m.kind()), "{}", m.kind());
        }
    }

    /// A claim made by a peer whose clock is far ahead of the receiver's (it started an hour
    /// earlier) lasts as long at the receiver as it was meant to, not an hour more.
    #[test]
    fn lease_ends_travel_as_time_remaining_between_clocks() {
        let unit = UnitRef { job: JobId([7; 32]), index: 3 };
        let sender_now = 3_600_000;
        let receiver_now = 5_000;
        let holder = PeerId([1; 32]);
        let lease = |until| Lease { holder, until };
        let sent = [
            Message::Claim { unit, until: sender_now + 30_000 },
            Message::Release { unit, until: 0 },
            Message::ProbeReply {
                unit,
                commits: vec![],
                leases: vec![lease(sender_now + 2_000), lease(sender_now - 1)],
                done: false,
            },
            Message::StealGrant(vec![Grant {
                unit,
                watchers: vec![holder],
                leases: vec![lease(sender_now + 9_000)],
            }]),
        ];
        let mut got = Vec::new();
        for mut m in sent {
            m.to_wire_times(sender_now);
            let mut m = Message::decode(&m.encode()).unwrap();
            m.from_wire_times(receiver_now);
            got.push(m);
        }
        assert!(matches!(got[0], Message::Claim { until, .. } if until == receiver_now + 30_000));
        // Ended stays ended (0 is how a sender says it).
        assert!(matches!(got[1], Message::Release { until: 0, .. }));
        let Message::ProbeReply { leases, .. } = &got[2] else { panic!("{:?}", got[2]) };
        assert_eq!(leases, &[lease(receiver_now + 2_000), lease(0)]);
        let Message::StealGrant(grants) = &got[3] else { panic!("{:?}", got[3]) };
        assert_eq!(grants[0].leases, [lease(receiver_now + 9_000)]);
    }
}
