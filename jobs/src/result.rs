//! The result record: what a unit produced, in the canonical form replicas agree on.
//!
//! A unit's result is stored and transferred as a blob whose bytes are the postcard encoding
//! of a [`ResultRecord`], and the scheduler compares replicas by that blob's id (BLAKE3 of the
//! bytes). The record keeps only the deterministic part of an [`Outcome`]: the same fields the
//! [`ResultHash`](crate::outcome::ResultHash) covers, with human-readable messages blanked
//! (they may change between engine versions). Runs that produced no result to compare
//! (timeouts, executor failures) have no record.

use serde::{Deserialize, Serialize};

use crate::id::BlobId;
use crate::outcome::Outcome;
use crate::wire::{self, WireError};

/// Largest result record accepted from a peer (output cap plus room for the outcome).
pub const MAX_RECORD_BYTES: usize = (1 << 30) + 4096;

/// A unit's deterministic result: how it ended and what it wrote to standard output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultRecord {
    /// How the unit ended (messages blanked).
    pub outcome: Outcome,
    /// Standard output.
    #[serde(with = "crate::wire::byte_string")]
    pub stdout: Vec<u8>,
}

impl ResultRecord {
    /// The record of a run, or `None` if the outcome is not deterministic (no result).
    pub fn of_run(outcome: &Outcome, stdout: &[u8]) -> Option<Self> {
        if !outcome.is_deterministic() {
            return None;
        }
        let outcome = match outcome {
            Outcome::InvalidModule { .. } => Outcome::InvalidModule { reason: String::new() },
            o => o.clone(),
        };
        Some(Self { outcome, stdout: stdout.to_vec() })
    }

    /// The canonical bytes (a versioned wire frame).
    pub fn encode(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Decodes a record blob.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        wire::decode(bytes, MAX_RECORD_BYTES)
    }

    /// The id replicas compare: BLAKE3 of [`ResultRecord::encode`].
    pub fn id(&self) -> BlobId {
        BlobId::of(&self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Phase, TrapKind};

    #[test]
    fn deterministic_runs_only_and_messages_blanked() {
        let a = ResultRecord::of_run(&Outcome::Success, b"42\n").unwrap();
        assert_eq!(ResultRecord::decode(&a.encode()).unwrap(), a);
        assert_eq!(a.id(), ResultRecord::of_run(&Outcome::Success, b"42\n").unwrap().id());
        assert_ne!(a.id(), ResultRecord::of_run(&Outcome::Success, b"43\n").unwrap().id());
        assert_ne!(a.id(), ResultRecord::of_run(&Outcome::Exit { code: 1 }, b"42\n").unwrap().id());
        let t = Outcome::Timeout { phase: Phase::Run, deadline_ms: 5 };
        assert!(ResultRecord::of_run(&t, b"").is_none());
        assert!(
            ResultRecord::of_run(&Outcome::Trap { kind: TrapKind::StackOverflow }, b"").is_none()
        );
        let x = ResultRecord::of_run(&Outcome::InvalidModule { reason: "v1 words".into() }, b"");
        let y = ResultRecord::of_run(&Outcome::InvalidModule { reason: "v2 words".into() }, b"");
        assert_eq!(x.unwrap().id(), y.unwrap().id());
    }
}
