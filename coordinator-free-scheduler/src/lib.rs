//! # ova-scheduler — coordinator-free scheduling as a pure state machine
//!
//! Owns placement, leases, replication and quorum verification for Ova, and the deterministic
//! simulator that exercises them. It is sans-IO: no tokio, no wasmtime, no iroh, no clock and
//! no OS randomness. Time (`now`, milliseconds) and a seed are passed in; effects come out as
//! [`Action`]s for a shell to perform. The network shell (ova-net, on iroh) and the executor
//! (ova-worker, on wasmtime) drive a [`Peer`]; the [`sim`] module drives thousands of them.
//!
//! Modules:
//! - [`membership`]: capacity adverts and a bounded, TTL-expiring ring-neighbourhood view.
//! - [`placement`]: weighted rendezvous ranking over a window of the ring.
//! - [`lease`]: claims as leases that lapse.
//! - [`commit`]: signed result commits; [`Signer`]/[`Verifier`] traits, ed25519 in production.
//! - [`commit_batch`]: a signed batch's commits for one receiver in one message (a multiproof).
//! - [`quorum`]: the verification tally, failure reasons and dissent records.
//! - [`message`]: protocol messages, encoded through [`ova_jobs::wire`].
//! - [`peer`]: the state machine tying them together, one submodule per concern (adverts,
//!   liveness, jobs, region scan, placement rule, claims, executor, verdicts, stealing).
//! - [`sim`]: the seeded discrete-event simulator, its fault models, scenarios and report.
//!
//! This crate must not depend on tokio, wasmtime or iroh.

pub mod commit;
pub mod commit_batch;
pub mod lease;
pub mod membership;
pub mod message;
pub mod peer;
pub mod placement;
pub mod quorum;
pub mod sim;
pub mod types;
pub mod util;

pub use commit::{CommitBody, CommitError, SignedCommit, Signer, SimKeys, SimSigner, Verifier};
#[cfg(feature = "ed25519")]
pub use commit::{Ed25519Signer, Ed25519Verifier};
pub use commit_batch::{CommitBatch, OpenedBatch};
pub use membership::{Advert, View};
pub use message::{Grant, JobInfo, MESSAGE_KINDS, Message};
pub use peer::{
    Action, Config, Event, FetchPurpose, LocalFailure, MAX_HELD_CLAIMS, MAX_UNSIGNED, Peer,
    RunCause, Stats, VIEW_MARGIN,
};
pub use quorum::{DissentRecord, FailReason, Verdict};
pub use types::{ArchClass, Millis, PeerId, UnitRef};
pub use util::Rng;
