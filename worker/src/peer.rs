//! A worker peer: everything `ova worker` runs, as one value a program or a test can start.
//!
//! [`WorkerPeer::start`] opens the data directory (identity, `store.redb`), joins the network,
//! starts the executor (supervised `ova-executor` children, one per core, by default), and
//! drives the scheduler core over the network ([`ova_net::runtime::Runtime`]) with units
//! running on that executor. Around it run:
//!
//! - spare-CPU sensing ([`crate::spare_cpu`]): once a second the offer to the network follows
//!   the cores the owner's own work leaves free (the executor children's CPU time counts as
//!   ours), and new units run on that many executor children only;
//! - metrics ([`crate::metrics`]) fed by the runtime's [`Observer`](ova_net::runtime::Observer) hooks, the runner and a
//!   once-a-second refresh of network counters;
//! - the status board ([`crate::status`]) and, when an address is given, the HTTP server with
//!   `/metrics`, the status page and its JSON ([`crate::http`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use iroh::EndpointId;
use ova_net::endpoint::EndpointConfig;
use ova_net::node::NodeConfig;
use ova_net::runtime::{BoxFuture, RunOutput, RunRequest, Runtime, RuntimeConfig, UnitRunner};
use ova_net::stats::DropReason;
use ova_net::store::{Durability, Store};
use ova_net::{Capacity, identity};
use ova_scheduler::PeerId;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::http::{HttpServer, StatusSource};
use crate::metrics::{Metrics, inc_kind};
use crate::runner::ExecutorRunner;
use crate::spare_cpu::{self, SpareCpu, SpareCpuConfig};
use crate::status::{RecentUnit, StatusBoard};
use crate::supervisor::{ShardedExecutor, SupervisorConfig, executor_available, find_executor};
use crate::{Executor, PoolExecutor, Sandbox, SandboxConfig};

/// Which executor runs the units.
#[derive(Clone)]
pub enum ExecutorChoice {
    /// Supervised `ova-executor` child processes, one per core (production; falls back to
    /// in-process with epoch checks when the program cannot be found).
    Supervised,
    /// In this process, epoch checks on every unit.
    InProcess,
    /// A given executor (tests: e.g. one that lies).
    Given(Arc<dyn Executor>),
}

impl std::fmt::Debug for ExecutorChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Supervised => f.write_str("Supervised"),
            Self::InProcess => f.write_str("InProcess"),
            Self::Given(e) => write!(f, "Given({} cores)", e.cores()),
        }
    }
}

/// How to start a [`WorkerPeer`].
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Identity key and store live here.
    pub data_dir: PathBuf,
    /// The network node's configuration (identity loaded from `data_dir`).
    pub node: NodeConfig,
    /// Spare-CPU limits (`--cores`, `--cpu-limit`, `--idle-only`).
    pub spare: SpareCpuConfig,
    /// Follow the machine's load (`true`), or always offer the cap (a dedicated machine,
    /// tests and the demo).
    pub sense_load: bool,
    /// What runs the units.
    pub executor: ExecutorChoice,
    /// Compiled-code cache directory.
    pub cache_dir: Option<PathBuf>,
    /// Only run jobs submitted by these nodes (`None`: anyone's).
    pub allowed_submitters: Option<Vec<EndpointId>>,
    /// Where to serve `/metrics`, `/` and `/api/status` (`None`: not served).
    pub http: Option<SocketAddr>,
    /// What a store commit survives (`--durability`): the process being killed (default),
    /// or a power cut too (an fsync per group commit).
    pub durability: Durability,
    /// Runtime tunables (cores and the allow-list are filled in from the fields above).
    pub runtime: RuntimeConfig,
    /// Niceness of the executor processes (`--nice`; see [`SupervisorConfig::nice`]):
    /// [`VOLUNTEER_NICE`] by default. Units run in process are not reniced.
    pub nice: i32,
}

/// The niceness a worker's units run at by default: the lowest priority, so the machine's
/// owner never waits for them.
pub const VOLUNTEER_NICE: i32 = 19;

impl WorkerOptions {
    /// Options for a worker keeping its state in `data_dir`, reaching peers through `endpoint`.
    /// Loads (or creates) the node's identity.
    pub fn new(data_dir: impl Into<PathBuf>, endpoint: EndpointConfig) -> anyhow::Result<Self> {
        let data_dir = data_dir.into();
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let key = identity::load_or_create(&data_dir)?;
        Ok(Self {
            node: NodeConfig::new(key, endpoint),
            data_dir,
            spare: SpareCpuConfig::default(),
            sense_load: true,
            executor: ExecutorChoice::Supervised,
            cache_dir: default_cache_dir(),
            allowed_submitters: None,
            http: None,
            durability: Durability::default(),
            runtime: RuntimeConfig::default(),
            nice: VOLUNTEER_NICE,
        })
    }
}

impl WorkerOptions {
    /// A worker on 127.0.0.1 only (no discovery), offering `cores` whatever the machine's
    /// load, re-advertising every second, running units at normal priority (niceness 0: a
    /// benchmark measures them, and a test's units must not starve behind other tests): the
    /// demo, benchmarks and tests.
    pub fn loopback(data_dir: impl Into<PathBuf>, cores: u16) -> anyhow::Result<Self> {
        let mut o = Self::new(data_dir, EndpointConfig::loopback())?;
        o.node.local_discovery = false;
        o.node.advert_interval = Duration::from_secs(1);
        o.node.advert_ttl = Duration::from_secs(5);
        o.spare = SpareCpuConfig { cores: Some(cores), ..SpareCpuConfig::default() };
        o.sense_load = false;
        o.nice = 0;
        Ok(o)
    }
}

/// The compiled-code cache: `$XDG_CACHE_HOME/ova/compiled`, else `~/.cache/ova/compiled`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("ova").join("compiled"))
}

/// A running worker peer.
pub struct WorkerPeer {
    runtime: Runtime,
    metrics: Arc<Metrics>,
    status: Arc<StatusBoard>,
    http: Option<HttpServer>,
    tasks: Vec<JoinHandle<()>>,
    cap: u16,
}

impl std::fmt::Debug for WorkerPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPeer")
            .field("node", &self.runtime.node().id().fmt_short().to_string())
            .field("cap", &self.cap)
            .finish()
    }
}

impl WorkerPeer {
    /// Starts the peer: store, network, executor, runtime, sensing, metrics and HTTP.
    pub async fn start(opts: WorkerOptions) -> anyhow::Result<Self> {
        let WorkerOptions {
            data_dir,
            mut node,
            spare,
            sense_load,
            executor,
            cache_dir,
            allowed_submitters,
            http,
            durability,
            runtime: mut rc,
            nice,
        } = opts;
        let store = Arc::new(
            Store::open_with(data_dir.join("store.redb"), durability)
                .with_context(|| format!("opening the store in {}", data_dir.display()))?,
        );
        let mut sensor = SpareCpu::new(spare, node.total_cores);
        let cap = sensor.cap().max(1);

        let (executor, supervised) = build_executor(executor, cap as usize, cache_dir, nice)?;
        let metrics = Arc::new(Metrics::new());
        metrics.init_label_values();
        metrics.pool_threads.set(executor.cores() as i64);
        let status = Arc::new(StatusBoard::new(Instant::now()));

        // Advertise the cap at once when not sensing; otherwise nothing until measured.
        let first = if sense_load { 0 } else { cap };
        node.capacity = Capacity { spare_cores: first, busy_cores: 0, queue_len: 0 };
        let net = ova_net::runtime::spawn_node(node, store.clone(), metrics.clone())
            .await
            .context("joining the network")?;
        metrics.set_node_id(net.id().to_string());
        metrics.spare_cores.set(i64::from(first));

        let busy = Arc::new(AtomicI64::new(0));
        let runner = MeteredRunner {
            inner: ExecutorRunner::new(executor.clone()),
            metrics: metrics.clone(),
            status: status.clone(),
            busy: busy.clone(),
            cores: executor.cores() as i64,
        };
        rc.cores = first;
        rc.allowed_submitters =
            allowed_submitters.map(|ids| ids.iter().map(|id| PeerId(*id.as_bytes())).collect());
        let runtime = Runtime::start(net, store, Some(Arc::new(runner)), metrics.clone(), rc)
            .context("starting the scheduler")?;

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(refresh(runtime.clone(), metrics.clone())));
        if let Some(s) = supervised.clone() {
            tasks.push(tokio::spawn(count_restarts(s, metrics.clone())));
        }
        if sense_load {
            let rt = runtime.clone();
            let m = metrics.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let mut own = vec![std::process::id()];
                    own.extend(supervised.as_ref().map(|s| s.child_pids()).unwrap_or_default());
                    match spare_cpu::read_sample(&own) {
                        Ok(s) => {
                            if let Some(n) = sensor.update(s) {
                                info!(spare = n, other_busy = ?sensor.other_busy(), "spare cores changed");
                                let c = rt.node().capacity();
                                rt.node().set_capacity(Capacity { spare_cores: n, ..c });
                                rt.set_capacity(n).await;
                                if let Some(s) = &supervised {
                                    s.set_active(usize::from(n));
                                }
                                m.spare_cores.set(i64::from(n));
                            }
                        }
                        Err(e) => debug!("cannot sample CPU use: {e}"),
                    }
                }
            }));
        }
        let http = match http {
            Some(addr) => {
                let source = StatusSource {
                    runtime: runtime.clone(),
                    metrics: metrics.clone(),
                    status: status.clone(),
                    busy,
                };
                Some(HttpServer::start(addr, source).await?)
            }
            None => None,
        };
        info!(node = %runtime.node().id(), data_dir = %data_dir.display(), cap, "worker running");
        Ok(Self { runtime, metrics, status, http, tasks, cap })
    }

    /// The runtime (node, store, job events).
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// This peer's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Units this peer ran, for the status page.
    pub fn status(&self) -> &Arc<StatusBoard> {
        &self.status
    }

    /// Where `/metrics` and the status page are served, if they are.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpServer::addr)
    }

    /// The most cores this peer offers.
    pub fn cap(&self) -> u16 {
        self.cap
    }

    /// Stops everything, telling the other peers we leave.
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(h) = self.http {
            h.shutdown().await;
        }
        self.runtime.shutdown().await;
    }
}

/// The executor, and the supervised one again when it is that (for its children's pids).
type BuiltExecutor = (Arc<dyn Executor>, Option<Arc<ShardedExecutor>>);

fn build_executor(
    choice: ExecutorChoice,
    cores: usize,
    cache_dir: Option<PathBuf>,
    nice: i32,
) -> anyhow::Result<BuiltExecutor> {
    let in_process = |cache_dir| -> anyhow::Result<Arc<dyn Executor>> {
        let config = SandboxConfig {
            slots: SandboxConfig::slots_for(cores),
            cache_dir,
            ..Default::default()
        };
        Ok(Arc::new(PoolExecutor::new(cores, Arc::new(Sandbox::new(config)?))?.guard_all(true)))
    };
    Ok(match choice {
        ExecutorChoice::Given(e) => (e, None),
        ExecutorChoice::InProcess => (in_process(cache_dir)?, None),
        ExecutorChoice::Supervised => {
            let program = find_executor();
            if executor_available(&program) {
                let mut config = SupervisorConfig::new(cores);
                config.program = program;
                config.cache_dir = cache_dir;
                config.nice = nice;
                let s = Arc::new(
                    ShardedExecutor::start(config).context("starting the executor processes")?,
                );
                (s.clone() as Arc<dyn Executor>, Some(s))
            } else {
                warn!(
                    program = %program.display(),
                    "executor program not found; running units in process with epoch checks"
                );
                (in_process(cache_dir)?, None)
            }
        }
    })
}

/// Copies the executor children's restart count into the metrics once a second.
async fn count_restarts(executor: Arc<ShardedExecutor>, metrics: Arc<Metrics>) {
    let mut seen = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = executor.restarts();
        metrics.executor_restarts.inc_by(now.saturating_sub(seen));
        seen = seen.max(now);
    }
}

/// Copies the network's counters into the metrics once a second.
async fn refresh(runtime: Runtime, metrics: Arc<Metrics>) {
    let mut last = ova_net::stats::StatsSnapshot::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let node = runtime.node();
        metrics.peers_known.set(node.peers().len() as i64);
        let now = node.stats();
        metrics.sent_bytes.inc_by(now.bytes_out.saturating_sub(last.bytes_out));
        metrics.received_bytes.inc_by(now.bytes_in.saturating_sub(last.bytes_in));
        for r in DropReason::ALL {
            let d = now.dropped(r).saturating_sub(last.dropped(r));
            if d > 0 {
                metrics
                    .frames_dropped
                    .get_or_create(&crate::metrics::KindLabel { kind: r.label() })
                    .inc_by(d);
            }
        }
        last = now;
    }
}

/// The executor runner, counted: units started and finished by outcome, durations, CPU,
/// fuel, busy threads, queue depth and the status board.
struct MeteredRunner {
    inner: ExecutorRunner,
    metrics: Arc<Metrics>,
    status: Arc<StatusBoard>,
    busy: Arc<AtomicI64>,
    cores: i64,
}

impl UnitRunner for MeteredRunner {
    fn run(&self, req: RunRequest) -> BoxFuture<RunOutput> {
        let m = self.metrics.clone();
        m.units_started.inc();
        let inflight = self.busy.fetch_add(1, Ordering::Relaxed) + 1;
        m.pool_busy_threads.set(inflight.min(self.cores));
        m.queue_depth.set((inflight - self.cores).max(0));
        let job = req.job_name.clone();
        let unit = req.unit_id.short();
        let status = self.status.clone();
        let busy = self.busy.clone();
        let cores = self.cores;
        let (m2, busy2) = (m.clone(), busy.clone());
        let guard = scopeguard(move || {
            let left = busy2.fetch_sub(1, Ordering::Relaxed) - 1;
            m2.pool_busy_threads.set(left.clamp(0, cores));
            m2.queue_depth.set((left - cores).max(0));
        });
        let fut = self.inner.run_observed(req, move |r| {
            let secs = r.wall_micros as f64 / 1e6;
            inc_kind(&m.units_finished, r.outcome.kind().label());
            m.unit_duration.observe(secs);
            m.unit_cpu_seconds.inc_by(secs);
            if let Some(f) = r.fuel_used {
                m.fuel_consumed.inc_by(f);
            }
            status.record(
                RecentUnit {
                    unit: unit.clone(),
                    job: job.clone(),
                    outcome: r.outcome.kind().label().to_string(),
                    millis: secs * 1e3,
                },
                Instant::now(),
            );
        });
        Box::pin(async move {
            let out = fut.await;
            drop(guard);
            out
        })
    }
}

/// Runs `f` when dropped (also when the unit's future is dropped unfinished).
fn scopeguard(f: impl FnOnce() + Send + 'static) -> impl Send + 'static {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
