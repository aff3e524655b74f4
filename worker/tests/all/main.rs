//! The worker's integration tests, in one binary (wasmtime's pattern: one link, shared setup).

mod common;
mod determinism;
mod hostile;
mod network;
mod supervisor;
