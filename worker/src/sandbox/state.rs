//! Per-unit store state: the WASI world and the resource limiter.

use ova_jobs::{BlobId, Resource, UnitId};
use wasmtime::ResourceLimiter;

use super::wasi::UnitWasi;

/// What a unit's `Store` holds.
pub struct UnitState {
    /// WASI preview 1 (stdin/stdout/stderr in memory, args, fixed clocks, seeded random).
    pub wasi: UnitWasi,
    /// Memory and table limits.
    pub limiter: UnitLimiter,
}

impl UnitState {
    /// A state with an empty WASI world and no limits (used to list the linker's names).
    pub fn empty() -> Self {
        Self {
            wasi: UnitWasi::new(
                &UnitId::derive(&BlobId::of(&[]), &BlobId::of(&[]), &[]),
                Default::default(),
                &[],
                0,
                0,
            ),
            limiter: UnitLimiter::new(u64::MAX, usize::MAX),
        }
    }
}

/// Enforces a unit's memory and table limits, and remembers which one was hit so the outcome
/// can say so precisely.
///
/// Growth beyond the limit is a trap rather than `memory.grow` returning -1: a unit that hits
/// its memory limit ends as [`ova_jobs::Outcome::OutOfMemory`], which is clearer than whatever
/// the guest's allocator does on failure (a Rust guest would abort with a generic trap).
pub struct UnitLimiter {
    memory_limit: u64,
    table_limit: usize,
    /// The first limit hit: resource, amount requested, limit.
    pub hit: Option<(Resource, u64, u64)>,
}

/// The error a limiter raises; the outcome mapping looks at [`UnitLimiter::hit`] instead of
/// its text.
#[derive(Debug, thiserror::Error)]
#[error("resource limit exceeded")]
pub struct LimitExceeded;

impl UnitLimiter {
    /// Limits: linear memory in bytes, table size in elements.
    pub fn new(memory_limit: u64, table_limit: usize) -> Self {
        Self { memory_limit, table_limit, hit: None }
    }
}

impl ResourceLimiter for UnitLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory_limit {
            self.hit.get_or_insert((Resource::Memory, desired as u64, self.memory_limit));
            return Err(wasmtime::Error::new(LimitExceeded));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_limit {
            self.hit.get_or_insert((Resource::Table, desired as u64, self.table_limit as u64));
            return Err(wasmtime::Error::new(LimitExceeded));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }

    fn memories(&self) -> usize {
        1
    }
}
