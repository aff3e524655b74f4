//! Shared helpers: modules from WAT, requests, executors.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ova_jobs::{BlobId, Determinism, Limits, UnitId};
use ova_worker::{
    ModuleSource, PoolExecutor, Sandbox, SandboxConfig, SupervisedExecutor, SupervisorConfig,
    UnitRequest,
};

/// Limits small enough that hostile modules hit them quickly.
pub fn small_limits() -> Limits {
    Limits {
        memory_bytes: 16 << 20,
        deadline_ms: 60_000,
        fuel: None,
        max_output_bytes: 4096,
        max_stderr_bytes: 1024,
    }
}

pub fn wat(src: &str) -> Arc<ModuleSource> {
    ModuleSource::new(wat::parse_str(src).expect("test WAT must parse"))
}

pub fn request(
    module: &Arc<ModuleSource>,
    input: &[u8],
    args: &[&str],
    limits: Limits,
) -> UnitRequest {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let input_id = BlobId::of(input);
    UnitRequest {
        unit: UnitId::derive(&module.id(), &input_id, &args),
        module: module.clone(),
        input: bytes::Bytes::copy_from_slice(input),
        args,
        limits,
        determinism: Determinism::SameArch,
        epoch_guard: false,
    }
}

pub fn sandbox() -> Arc<Sandbox> {
    Arc::new(Sandbox::new(SandboxConfig { slots: 8, ..SandboxConfig::default() }).unwrap())
}

pub fn pool(threads: usize) -> PoolExecutor {
    PoolExecutor::new(threads, sandbox()).unwrap()
}

pub fn supervisor_config(threads: usize) -> SupervisorConfig {
    let mut c = SupervisorConfig::new(threads);
    c.program = PathBuf::from(env!("CARGO_BIN_EXE_ova-executor"));
    c.compile_timeout = Duration::from_secs(60);
    c
}

pub fn supervised(threads: usize) -> SupervisedExecutor {
    SupervisedExecutor::start(supervisor_config(threads)).unwrap()
}

/// An example module built by `scripts/build-examples.sh`.
pub fn example(name: &str) -> Arc<ModuleSource> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/wasm/{name}.wasm"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{}: {e} — run scripts/build-examples.sh first", path.display())
    });
    ModuleSource::new(bytes)
}

/// A module with a `_start` that does `body` (WAT instructions), importing the WASI functions
/// the hostile tests use and exporting one page of memory.
pub fn wasi_module(body: &str) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") {body}))"#
    )
}
