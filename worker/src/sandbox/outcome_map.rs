//! Maps how a wasmtime call ended to a typed [`Outcome`].
//!
//! The mapping looks at host-side facts first (did stdout overflow? did the limiter refuse
//! growth?) and only then at the error's type, never at its text.

use ova_jobs::{Outcome, Phase, TrapKind};
use wasmtime::Trap;

use super::wasi::Exit;

/// Host-side facts about a finished run.
pub struct RunFacts {
    /// Stdout went over its cap.
    pub stdout_overflowed: bool,
    /// The limiter refused a growth: resource, requested, limit.
    pub limit_hit: Option<(ova_jobs::Resource, u64, u64)>,
    /// The output cap.
    pub max_output: u64,
    /// The fuel budget, if any.
    pub fuel: Option<u64>,
    /// The deadline.
    pub deadline_ms: u64,
}

/// The outcome of a run that returned `result`.
pub fn classify(result: &wasmtime::Result<()>, facts: &RunFacts) -> Outcome {
    let err = match result {
        Ok(()) => return Outcome::Success,
        Err(e) => e,
    };
    if facts.stdout_overflowed {
        return Outcome::OutputTooLarge { limit: facts.max_output };
    }
    if let Some((resource, requested, limit)) = facts.limit_hit {
        return Outcome::OutOfMemory { resource, requested, limit };
    }
    if let Some(exit) = err.downcast_ref::<Exit>() {
        return if exit.0 == 0 { Outcome::Success } else { Outcome::Exit { code: exit.0 } };
    }
    if let Some(trap) = err.downcast_ref::<Trap>() {
        let kind = match trap {
            Trap::Interrupt => {
                return Outcome::Timeout { phase: Phase::Run, deadline_ms: facts.deadline_ms };
            }
            Trap::OutOfFuel => return Outcome::OutOfFuel { limit: facts.fuel.unwrap_or(0) },
            Trap::StackOverflow => TrapKind::StackOverflow,
            Trap::MemoryOutOfBounds => TrapKind::MemoryOutOfBounds,
            Trap::HeapMisaligned => TrapKind::HeapMisaligned,
            Trap::TableOutOfBounds => TrapKind::TableOutOfBounds,
            Trap::IndirectCallToNull => TrapKind::IndirectCallToNull,
            Trap::BadSignature => TrapKind::BadSignature,
            Trap::IntegerOverflow => TrapKind::IntegerOverflow,
            Trap::IntegerDivisionByZero => TrapKind::IntegerDivisionByZero,
            Trap::BadConversionToInteger => TrapKind::BadConversionToInteger,
            Trap::UnreachableCodeReached => TrapKind::Unreachable,
            Trap::NullReference | Trap::CastFailure => TrapKind::NullReference,
            _ => TrapKind::Other,
        };
        return Outcome::Trap { kind };
    }
    Outcome::Trap { kind: TrapKind::HostError }
}
