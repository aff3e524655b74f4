//! What the core's integration tests share.

use ova_jobs::{BlobId, Limits, MANIFEST_VERSION, Manifest, Replication, UnitSpec};

/// A job of `units` units with distinct inputs, quorum 2 of at most 3 replicas, one result copy.
pub fn manifest(units: usize) -> Manifest {
    Manifest {
        version: MANIFEST_VERSION,
        name: "t".into(),
        module: BlobId::of(b"m"),
        units: (0..units)
            .map(|i| UnitSpec { input: BlobId::of(&(i as u32).to_le_bytes()), args: vec![] })
            .collect(),
        replication: Replication { quorum: 2, max_replicas: 3, result_copies: 1 },
        limits: Limits::default(),
        determinism: ova_jobs::Determinism::SameArch,
        priority: 0,
    }
}
