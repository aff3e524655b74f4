//! # ova-worker — runs other people's WebAssembly, fast, safely and reproducibly
//!
//! This crate owns everything a worker peer does with a unit once it has it:
//!
//! - [`sandbox`]: one unit in a wasmtime sandbox — engine configuration for determinism and
//!   speed, the WASI preview-1 world (stdin = input, stdout = output, fixed clocks, seeded
//!   random, no files/env/sockets), memory/table/output limits, and the mapping of every way a
//!   run can end to a typed [`ova_jobs::Outcome`].
//! - [`compile_cache`]: compiled code on disk, keyed by (module hash, engine hash), only ever
//!   our own.
//! - [`executor`]: the [`Executor`] trait (what the scheduler needs; fakeable) and
//!   [`PoolExecutor`], units on a dedicated `rayon::ThreadPool`, with an async API for tokio.
//! - [`supervisor`]: the production executor — [`ShardedExecutor`], one single-threaded
//!   [`SupervisedExecutor`] child process per core, each running units check-free at full
//!   speed; a unit past its deadline gets its child killed and restarted (innocent in-flight
//!   units re-run) and its module is run with epoch checks from then on.
//! - [`ipc`]: the framed messages between the supervisor and its executor process.
//! - [`runner`]: the seam to the network runtime — units the scheduler assigns run on an
//!   [`Executor`] and come back as result records.
//! - [`peer`]: [`peer::WorkerPeer`], a whole worker (store, network, executor, scheduler,
//!   spare-CPU sensing, metrics) as one value; `ova worker` and `ova demo` run it.
//! - [`spare_cpu`]: how many cores the owner's own work leaves free.
//! - [`metrics`], [`status`], [`http`]: Prometheus metrics, the status page's data, and the
//!   server for both.
//! - [`cli`]: the `ova` command line (`ova job …`, `ova run`, `ova worker`, `ova demo`).

pub mod cli;
pub mod compile_cache;
pub mod executor;
pub mod http;
pub mod ipc;
pub mod metrics;
pub mod peer;
pub mod runner;
pub mod sandbox;
pub mod spare_cpu;
pub mod status;
pub mod supervisor;

pub use executor::{Completion, Executor, ExecutorExt, PoolExecutor};
pub use sandbox::{ModuleSource, Sandbox, SandboxConfig, UnitRequest};
pub use supervisor::{ShardedExecutor, SupervisedExecutor, SupervisorConfig};
