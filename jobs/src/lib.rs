//! # ova-jobs — the data model every Ova peer shares
//!
//! This crate owns the *format* of work in Ova, and nothing else:
//!
//! - [`id`]: content ids. A [`BlobId`] is the BLAKE3 hash of some bytes (a module, an input, an
//!   output). A [`UnitId`] names one unit of work by hashing its module, input and arguments, so
//!   the same unit in two jobs is the same unit. A [`JobId`] is the hash of a manifest's bytes.
//! - [`manifest`]: the [`Manifest`] of a job (module, units, replication policy, limits,
//!   priority) and its validation rules.
//! - [`pack`]: building a manifest and its blobs from a directory holding an `ova.toml`.
//! - [`bundle`]: the single-file bundle (`job.ova`) that carries a manifest, its module and its
//!   inputs; decoding checks sizes first and every hash after.
//! - [`outcome`]: how a unit run ended ([`Outcome`]), what it produced ([`UnitResult`]) and the
//!   [`ResultHash`] replicas are compared by.
//! - [`result`]: the canonical result record replicas are compared by.
//! - [`wire`]: the versioned, size-capped postcard envelope that every frame on the network and
//!   every record on disk goes through.
//!
//! It must not depend on any runtime: no tokio, no wasmtime, no networking. Both the sans-IO
//! scheduler core and the guest-facing tooling build on it.

pub mod bundle;
pub mod id;
pub mod manifest;
pub mod outcome;
pub mod pack;
pub mod result;
pub mod wire;

pub use bundle::{Bundle, BundleError};
pub use id::{BlobId, IdParseError, JobId, UnitId};
pub use manifest::{
    Determinism, Limits, MANIFEST_VERSION, Manifest, ManifestError, Replication, UnitSpec,
};
pub use outcome::{
    COMPUTE_ABI, Outcome, OutcomeKind, Phase, Provenance, Resource, ResultHash, TrapKind,
    UnitResult,
};
pub use pack::{PackError, pack_dir};
