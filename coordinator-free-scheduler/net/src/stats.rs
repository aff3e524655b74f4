//! Counters of what the node received, sent and dropped, and why.
//!
//! Every dropped message increments exactly one [`DropReason`] counter and is logged with its
//! reason and the peer it came from (or was delivered by). The metrics issue exports these.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Why a message from the network was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Larger than the configured cap (checked before reading or decoding).
    Oversize,
    /// Not a valid versioned envelope or body.
    Undecodable,
    /// The signed envelope carried no signature.
    Unsigned,
    /// The signature does not verify for the claimed author.
    BadSignature,
    /// A well-formed advert whose fields are out of bounds.
    Invalid,
    /// Older than what we already have from that author, or already expired.
    Stale,
    /// The events queue to the driver was full.
    QueueFull,
    /// Too many connections or in-flight bytes: refused to protect memory.
    Overloaded,
    /// The stream ended or timed out before the frame was complete.
    Truncated,
}

impl DropReason {
    /// A short, fixed label (bounded metric cardinality).
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Oversize => "oversize",
            DropReason::Undecodable => "undecodable",
            DropReason::Unsigned => "unsigned",
            DropReason::BadSignature => "bad_signature",
            DropReason::Invalid => "invalid",
            DropReason::Stale => "stale",
            DropReason::QueueFull => "queue_full",
            DropReason::Overloaded => "overloaded",
            DropReason::Truncated => "truncated",
        }
    }

    /// Every reason, in a fixed order.
    pub const ALL: [DropReason; 9] = [
        DropReason::Oversize,
        DropReason::Undecodable,
        DropReason::Unsigned,
        DropReason::BadSignature,
        DropReason::Invalid,
        DropReason::Stale,
        DropReason::QueueFull,
        DropReason::Overloaded,
        DropReason::Truncated,
    ];
}

/// Live counters (shared, lock-free).
#[derive(Debug, Default)]
pub struct NetStats {
    gossip_in: AtomicU64,
    frames_in: AtomicU64,
    adverts_in: AtomicU64,
    adverts_sent: AtomicU64,
    broadcasts_sent: AtomicU64,
    frames_sent: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
}

impl NetStats {
    pub(crate) fn gossip_in(&self) {
        self.gossip_in.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn frame_in(&self) {
        self.frames_in.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn advert_in(&self) {
        self.adverts_in.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn advert_sent(&self) {
        self.adverts_sent.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn broadcast_sent(&self) {
        self.broadcasts_sent.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn frame_sent(&self) {
        self.frames_sent.fetch_add(1, Ordering::Relaxed);
    }
    /// Payload bytes handed to the network (a broadcast counts once, whatever its fan-out).
    pub(crate) fn sent_bytes(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }
    /// Payload bytes received (gossip messages and direct frames, before any check).
    pub(crate) fn received_bytes(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts and logs a dropped message.
    pub(crate) fn drop(&self, reason: DropReason, peer: &dyn std::fmt::Display, detail: &str) {
        let i = DropReason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.dropped[i].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(reason = reason.label(), %peer, detail, "dropped message");
    }

    /// A consistent-enough copy of the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |r: DropReason| {
            let i = DropReason::ALL.iter().position(|x| *x == r).unwrap_or(0);
            self.dropped[i].load(Ordering::Relaxed)
        };
        StatsSnapshot {
            gossip_in: self.gossip_in.load(Ordering::Relaxed),
            frames_in: self.frames_in.load(Ordering::Relaxed),
            adverts_in: self.adverts_in.load(Ordering::Relaxed),
            adverts_sent: self.adverts_sent.load(Ordering::Relaxed),
            broadcasts_sent: self.broadcasts_sent.load(Ordering::Relaxed),
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            dropped: DropReason::ALL.iter().map(|r| (r.label().to_string(), get(*r))).collect(),
        }
    }
}

/// A copy of the counters, for the control API and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Gossip messages received (before any check).
    pub gossip_in: u64,
    /// Direct frames received (before any check).
    pub frames_in: u64,
    /// Valid adverts accepted.
    pub adverts_in: u64,
    /// Adverts we broadcast.
    pub adverts_sent: u64,
    /// Application broadcasts we sent.
    pub broadcasts_sent: u64,
    /// Direct frames we sent.
    pub frames_sent: u64,
    /// Payload bytes received by gossip and direct frames (blob transfer not included).
    #[serde(default)]
    pub bytes_in: u64,
    /// Payload bytes sent by gossip (once per broadcast) and direct frames.
    #[serde(default)]
    pub bytes_out: u64,
    /// Dropped messages by [`DropReason::label`], every reason listed.
    pub dropped: Vec<(String, u64)>,
}

impl StatsSnapshot {
    /// Messages dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.iter().find(|(l, _)| l == reason.label()).map_or(0, |(_, n)| *n)
    }

    /// Messages dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(|(_, n)| n).sum()
    }
}
