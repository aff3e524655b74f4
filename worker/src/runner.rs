//! The seam between the network runtime and the sandbox: runs the units the scheduler core
//! assigns to this peer on the worker's [`Executor`].
//!
//! The runtime ([`ova_net::runtime`]) fetches a unit's module and input, then calls
//! [`UnitRunner::run`]; this turns that into a [`UnitRequest`] for the executor and its
//! [`UnitResult`](ova_jobs::UnitResult) into the canonical [`ResultRecord`] replicas are
//! compared by. Runs that produced no comparable result (a timeout, an executor failure) return
//! no record, so the unit goes back to the network instead of being committed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ova_jobs::BlobId;
use ova_jobs::result::ResultRecord;
use ova_net::runtime::{BoxFuture, RunOutput, RunRequest, UnitRunner};

use crate::executor::{Executor, ExecutorExt};
use crate::sandbox::{ModuleSource, UnitRequest};

/// Modules kept wrapped for reuse (the executor caches compiled code by module hash anyway).
const MODULES_KEPT: usize = 64;

type OnResult = Arc<dyn Fn(&RunRequest, &ova_jobs::UnitResult) + Send + Sync>;

/// Runs network-assigned units on an [`Executor`].
pub struct ExecutorRunner {
    executor: Arc<dyn Executor>,
    modules: Mutex<HashMap<BlobId, Arc<ModuleSource>>>,
    on_result: OnResult,
}

impl std::fmt::Debug for ExecutorRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorRunner").field("cores", &self.executor.cores()).finish()
    }
}

impl ExecutorRunner {
    /// Runs units on `executor`.
    pub fn new(executor: Arc<dyn Executor>) -> Self {
        Self { executor, modules: Mutex::new(HashMap::new()), on_result: Arc::new(|_, _| {}) }
    }

    /// Also calls `f` with every unit's full result (for metrics and the status page).
    pub fn on_result(
        mut self,
        f: impl Fn(&RunRequest, &ova_jobs::UnitResult) + Send + Sync + 'static,
    ) -> Self {
        self.on_result = Arc::new(f);
        self
    }

    fn module(&self, id: BlobId, bytes: &Arc<Vec<u8>>) -> Arc<ModuleSource> {
        let mut m = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = m.get(&id) {
            return s.clone();
        }
        if m.len() >= MODULES_KEPT {
            m.clear();
        }
        let s = ModuleSource::new(bytes.as_slice().to_vec());
        m.insert(id, s.clone());
        s
    }
}

impl ExecutorRunner {
    /// Runs one unit like [`UnitRunner::run`], also calling `f` with its full result.
    pub fn run_observed(
        &self,
        req: RunRequest,
        f: impl FnOnce(&ova_jobs::UnitResult) + Send + 'static,
    ) -> BoxFuture<RunOutput> {
        let module = self.module(req.module_id, &req.module);
        let unit = UnitRequest {
            unit: req.unit_id,
            module,
            input: bytes::Bytes::from(req.input.clone()),
            args: req.args.clone(),
            limits: req.limits,
            determinism: req.determinism,
            epoch_guard: false,
        };
        let fut = self.executor.run(unit);
        let report = self.on_result.clone();
        Box::pin(async move {
            let r = fut.await;
            report(&req, &r);
            f(&r);
            RunOutput { record: ResultRecord::of_run(&r.outcome, &r.stdout) }
        })
    }
}

impl UnitRunner for ExecutorRunner {
    fn run(&self, req: RunRequest) -> BoxFuture<RunOutput> {
        self.run_observed(req, |_| {})
    }
}
