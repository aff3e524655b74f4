//! Running units on a dedicated `rayon::ThreadPool`, behind a trait the scheduler (and its
//! simulator) can fake.
//!
//! # How tokio code calls it
//!
//! ```no_run
//! # async fn f(exec: &dyn ova_worker::Executor, req: ova_worker::UnitRequest) {
//! use ova_worker::ExecutorExt;
//! let result = exec.run(req).await; // the unit runs on the pool, never on a tokio thread
//! # }
//! ```
//!
//! [`Executor::submit`] takes a completion callback, which the pool calls on its own thread;
//! [`ExecutorExt::run`] wraps it in a `tokio::sync::oneshot`, so an async task awaits the result
//! without blocking its runtime. The trait is object-safe and has two methods, so a simulated
//! executor is a few lines.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use ova_jobs::{Determinism, Outcome, Provenance, UnitId, UnitResult};

use crate::sandbox::{ENGINE_NAME, Sandbox, UnitRequest, arch};

/// Called once with the unit's result, on an executor thread. Must not block for long.
pub type Completion = Box<dyn FnOnce(UnitResult) + Send + 'static>;

/// Something that runs units.
pub trait Executor: Send + Sync {
    /// Queues `req`; `done` is called exactly once with its result (unless the executor is
    /// dropped first, in which case `done` is dropped uncalled).
    fn submit(&self, req: UnitRequest, done: Completion);

    /// Queues many units at once; each `done` is called exactly once with its unit's result,
    /// as for [`Executor::submit`]. Executors override it to take their locks, wake their
    /// threads and write to their child process once per batch rather than once per unit.
    fn submit_batch(&self, batch: Vec<(UnitRequest, Completion)>) {
        for (req, done) in batch {
            self.submit(req, done);
        }
    }

    /// How many units run at once.
    fn cores(&self) -> usize;
}

/// Convenience calls on any [`Executor`].
pub trait ExecutorExt: Executor {
    /// Runs `req` and resolves to its result; for async (tokio) callers. If the executor goes
    /// away first, the result is [`Outcome::Failed`].
    fn run(&self, req: UnitRequest) -> impl Future<Output = UnitResult> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (unit, det) = (req.unit, req.determinism);
        self.submit(
            req,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        async move { rx.await.unwrap_or_else(|_| failed(unit, det, "executor shut down")) }
    }

    /// Runs `req` and blocks the calling thread until it is done.
    fn run_blocking(&self, req: UnitRequest) -> UnitResult {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (unit, det) = (req.unit, req.determinism);
        self.submit(
            req,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap_or_else(|_| failed(unit, det, "executor shut down"))
    }

    /// Runs all of `reqs` as one batch ([`Executor::submit_batch`]) and blocks the calling
    /// thread until they are all done; results are in the order of `reqs`.
    fn run_batch_blocking(&self, reqs: Vec<UnitRequest>) -> Vec<UnitResult> {
        let n = reqs.len();
        let (tx, rx) = std::sync::mpsc::channel::<(usize, UnitResult)>();
        let mut ids = Vec::with_capacity(n);
        let batch = reqs
            .into_iter()
            .enumerate()
            .map(|(i, req)| {
                ids.push((req.unit, req.determinism));
                let tx = tx.clone();
                let done: Completion = Box::new(move |r| {
                    let _ = tx.send((i, r));
                });
                (req, done)
            })
            .collect();
        drop(tx);
        self.submit_batch(batch);
        let mut out: Vec<Option<UnitResult>> = (0..n).map(|_| None).collect();
        for (i, r) in rx {
            out[i] = Some(r);
        }
        out.into_iter()
            .zip(ids)
            .map(|(r, (unit, det))| r.unwrap_or_else(|| failed(unit, det, "executor shut down")))
            .collect()
    }
}

impl<E: Executor + ?Sized> ExecutorExt for E {}

/// A [`Outcome::Failed`] result.
pub fn failed(unit: UnitId, determinism: Determinism, message: &str) -> UnitResult {
    UnitResult::new(
        unit,
        Outcome::Failed { message: message.to_string() },
        Vec::new(),
        Provenance { determinism, arch: arch().to_string(), engine: ENGINE_NAME.to_string() },
    )
}

/// Native stack for pool threads: wasm runs on them (wasmtime's own wasm stack limit is
/// 512 KiB, host calls need room beside it).
pub const POOL_STACK_BYTES: usize = 8 << 20;

/// Units in process on a rayon pool.
///
/// It cannot stop a unit that runs without epoch checks, so on its own it is for trusted
/// modules, tests and tools; with [`PoolExecutor::guard_all`] every unit runs with epoch checks
/// and honours its deadline (at the cost measured in `shared/notes/wasmtime.md`). The
/// production executor, [`crate::SupervisedExecutor`], runs one of these in a child process.
pub struct PoolExecutor {
    pool: rayon::ThreadPool,
    sandbox: Arc<Sandbox>,
    threads: usize,
    guard_all: bool,
}

impl PoolExecutor {
    /// A pool of `threads` threads running units in `sandbox`.
    pub fn new(threads: usize, sandbox: Arc<Sandbox>) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .stack_size(POOL_STACK_BYTES)
            .thread_name(|i| format!("ova-unit-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Self { pool, sandbox, threads, guard_all: false })
    }

    /// Runs every unit with epoch checks, so deadlines hold in process.
    pub fn guard_all(mut self, on: bool) -> Self {
        self.guard_all = on;
        self
    }

    /// The sandbox.
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }
}

impl Executor for PoolExecutor {
    fn submit(&self, mut req: UnitRequest, done: Completion) {
        req.epoch_guard |= self.guard_all;
        let sandbox = self.sandbox.clone();
        self.pool.spawn(move || done(run_caught(&sandbox, &req)));
    }

    fn submit_batch(&self, mut batch: Vec<(UnitRequest, Completion)>) {
        if batch.len() <= 1 {
            if let Some((req, done)) = batch.pop() {
                self.submit(req, done);
            }
            return;
        }
        for (req, _) in &mut batch {
            req.epoch_guard |= self.guard_all;
        }
        let sandbox = self.sandbox.clone();
        // One job for the whole batch; rayon splits it down to single units, so an idle
        // thread can always steal the next unit from a busy one.
        self.pool.spawn(move || {
            use rayon::prelude::*;
            batch
                .into_par_iter()
                .with_max_len(1)
                .for_each(|(req, done)| done(run_caught(&sandbox, &req)));
        });
    }

    fn cores(&self) -> usize {
        self.threads
    }
}

/// [`Sandbox::run`], turning a panic (a bug, never expected) into [`Outcome::Failed`] so that
/// the pool keeps serving.
pub fn run_caught(sandbox: &Sandbox, req: &UnitRequest) -> UnitResult {
    std::panic::catch_unwind(AssertUnwindSafe(|| sandbox.run(req)))
        .unwrap_or_else(|_| failed(req.unit, req.determinism, "the executor panicked on this unit"))
}
