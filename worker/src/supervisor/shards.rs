//! One supervised child process per core: [`ShardedExecutor`].
//!
//! # Why not one child with a thread per core
//!
//! Wasmtime instantiates a unit in a pooling-allocator slot and, when it ends, resets the
//! slot's memory (`madvise`), after which the next unit's first touches page-fault it back in.
//! Both take the process's memory-map lock, so the threads of one process that run many short
//! units wait on each other: measured on this project's 2-core machine (P2 benchmark), an empty
//! module instantiated and run by bare wasmtime did 637k units/s on one thread and 628k on
//! two threads of one process, but 1.23M in two single-threaded processes side by side; the
//! supervised executor did 372k units/s with one thread and 351k with two in one child.
//!
//! So a worker with `n` cores runs `n` single-threaded children, each a full
//! [`SupervisedExecutor`] with its own watchdog. A unit goes to the child with the fewest
//! units in flight (ties: the next one in turn), so a child busy with a long unit gets no
//! more until the others have as many. Each child reloads compiled code from the shared
//! on-disk cache, so a module is compiled at most once per child (children compiling the same
//! module at the same time each compile it; the cache's writes are atomic).
//!
//! Only the first [`ShardedExecutor::set_active`] children get new units: a worker whose owner
//! is busy offers fewer cores, and its units then run on that many children, whatever the
//! run slots queue (units already handed to a child finish there).
//!
//! What is per child: a unit that passes its deadline kills only its own child, so fewer
//! innocent units are re-run than with one child for all cores; a module marked misbehaved
//! (or uncompilable) by one child is marked by each other child after its own first timeout
//! there, at the cost of one more restart per child.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use ova_jobs::BlobId;

use super::{SupervisedExecutor, SupervisorConfig};
use crate::executor::{Completion, Executor};
use crate::sandbox::UnitRequest;

/// Runs units in `threads` single-threaded supervised `ova-executor` children; see the module
/// docs.
pub struct ShardedExecutor {
    shards: Vec<Shard>,
    /// Where the search for the least-loaded child starts (turns among equally loaded ones).
    next: AtomicUsize,
    /// How many children (the first ones) get new units.
    active: AtomicUsize,
}

struct Shard {
    exec: SupervisedExecutor,
    /// Units handed to this child and not finished yet.
    in_flight: Arc<AtomicUsize>,
    /// Units handed to this child so far.
    placed: AtomicU64,
}

impl ShardedExecutor {
    /// Starts `config.threads` children of one thread each (at least one), with the rest of
    /// `config` for each; fails as [`SupervisedExecutor::start`] does for any of them (the
    /// children already started are stopped).
    pub fn start(config: SupervisorConfig) -> std::io::Result<Self> {
        let n = config.threads.max(1);
        let one = SupervisorConfig { threads: 1, ..config };
        let shards = (0..n)
            .map(|_| {
                Ok(Shard {
                    exec: SupervisedExecutor::start(one.clone())?,
                    in_flight: Arc::new(AtomicUsize::new(0)),
                    placed: AtomicU64::new(0),
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self { shards, next: AtomicUsize::new(0), active: AtomicUsize::new(n) })
    }

    /// Runs new units on the first `cores` children only (at least one, at most all): the
    /// cores the worker offers now. Units already handed to the others finish there.
    pub fn set_active(&self, cores: usize) {
        self.active.store(cores.clamp(1, self.shards.len()), Ordering::Relaxed);
    }

    /// Units handed to each child so far, in child order.
    pub fn placed(&self) -> Vec<u64> {
        self.shards.iter().map(|s| s.placed.load(Ordering::Relaxed)).collect()
    }

    /// How many times children have been restarted (after a timeout or a crash), in all.
    pub fn restarts(&self) -> u64 {
        self.shards.iter().map(|s| s.exec.restarts()).sum()
    }

    /// The process ids of the children running now (spare-CPU sensing counts their CPU time
    /// as Ova's own, not as the owner's work).
    pub fn child_pids(&self) -> Vec<u32> {
        self.shards.iter().filter_map(|s| s.exec.child_pid()).collect()
    }

    /// Whether any child has seen `module` time out, and runs it with epoch checks now.
    pub fn is_misbehaved(&self, module: &BlobId) -> bool {
        self.shards.iter().any(|s| s.exec.is_misbehaved(module))
    }

    /// Units in flight per child, in child order.
    pub fn in_flight(&self) -> Vec<usize> {
        self.shards.iter().map(|s| s.in_flight.load(Ordering::Relaxed)).collect()
    }

    /// The active child with the fewest units in flight, counting `extra` as already given to
    /// them, searching from the one in turn.
    fn pick(&self, extra: &[usize]) -> usize {
        let n = self.active.load(Ordering::Relaxed).clamp(1, self.shards.len());
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|k| (start + k) % n)
            .min_by_key(|&i| self.shards[i].in_flight.load(Ordering::Relaxed) + extra[i])
            .unwrap_or(0)
    }
}

impl Executor for ShardedExecutor {
    fn submit(&self, req: UnitRequest, done: Completion) {
        self.submit_batch(vec![(req, done)]);
    }

    /// Splits the batch over the children (each unit to the least loaded, counting the units
    /// of this batch already placed), then hands each child its share as one batch.
    fn submit_batch(&self, batch: Vec<(UnitRequest, Completion)>) {
        let n = self.shards.len();
        let mut shares: Vec<Vec<(UnitRequest, Completion)>> = (0..n).map(|_| Vec::new()).collect();
        let mut placed = vec![0usize; n];
        for (req, done) in batch {
            let i = self.pick(&placed);
            placed[i] += 1;
            let counter = self.shards[i].in_flight.clone();
            let done: Completion = Box::new(move |r| {
                counter.fetch_sub(1, Ordering::Relaxed);
                done(r);
            });
            shares[i].push((req, done));
        }
        for (shard, share) in self.shards.iter().zip(shares) {
            if !share.is_empty() {
                shard.in_flight.fetch_add(share.len(), Ordering::Relaxed);
                shard.placed.fetch_add(share.len() as u64, Ordering::Relaxed);
                shard.exec.submit_batch(share);
            }
        }
    }

    fn cores(&self) -> usize {
        self.shards.len()
    }
}
