//! The sandbox: runs one unit of untrusted WebAssembly with hard limits and reproducible
//! inputs, in process.
//!
//! - [`engine`]: the shared wasmtime engines (one per [`Flavor`]) and their WASI linker.
//! - [`wasi`]: the unit's WASI preview-1 world, our own small host (stdio in memory, args,
//!   fixed clocks, seeded random).
//! - [`state`]: per-unit store state and the memory/table limiter.
//! - [`check`]: cheap checks on module bytes before compiling.
//! - [`outcome_map`]: how a run ended → [`ova_jobs::Outcome`].
//!
//! [`Sandbox::run`] never panics on bad input and never blocks past the unit's deadline *when
//! the unit runs with epoch checks* ([`UnitRequest::epoch_guard`]). Without them, a runaway
//! unit is stopped from outside by killing the process: see [`crate::supervisor`].

pub mod check;
pub mod engine;
pub mod outcome_map;
pub mod state;
pub mod wasi;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use ova_jobs::{
    BlobId, Bundle, Determinism, Limits, Outcome, Provenance, ResultHash, UnitId, UnitResult,
};
use wasmtime::{InstancePre, Module, ModuleExport, Store};

pub use engine::{ENGINE_NAME, Flavor};

use crate::compile_cache::CompileCache;
use state::{UnitLimiter, UnitState};

/// A module's bytes with their (verified) content id.
#[derive(Debug)]
pub struct ModuleSource {
    id: BlobId,
    bytes: Arc<[u8]>,
}

impl ModuleSource {
    /// Wraps `bytes`, hashing them for the id.
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> Arc<Self> {
        let bytes = bytes.into();
        Arc::new(Self { id: BlobId::of(&bytes), bytes })
    }

    /// The module's content id.
    pub fn id(&self) -> BlobId {
        self.id
    }

    /// The wasm bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// One unit to run.
#[derive(Debug, Clone)]
pub struct UnitRequest {
    /// The unit's id (seeds its random stream).
    pub unit: UnitId,
    /// The module.
    pub module: Arc<ModuleSource>,
    /// Standard input.
    pub input: bytes::Bytes,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// Limits.
    pub limits: Limits,
    /// Determinism mode (strict turns NaN canonicalisation on).
    pub determinism: Determinism,
    /// Compile epoch checks in, so the deadline is enforced in process (costs 12–38 % on
    /// tight loops). Executors set this for modules that have misbehaved.
    pub epoch_guard: bool,
}

impl UnitRequest {
    /// The request for unit `index` of `bundle`, sharing `module` (the bundle's module).
    pub fn from_bundle(bundle: &Bundle, index: usize, module: &Arc<ModuleSource>) -> Self {
        let m = bundle.manifest();
        Self {
            unit: m.unit_id(index),
            module: module.clone(),
            input: bytes::Bytes::copy_from_slice(bundle.input(index)),
            args: m.units[index].args.clone(),
            limits: m.limits,
            determinism: m.determinism,
            epoch_guard: false,
        }
    }

    /// The engine flavor this request needs.
    pub fn flavor(&self) -> Flavor {
        Flavor {
            epoch: self.epoch_guard,
            fuel: self.limits.fuel.is_some(),
            strict: self.determinism == Determinism::Strict,
        }
    }
}

/// Sandbox configuration.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Instances that may be live at once per engine: at least the threads running units.
    pub slots: u32,
    /// Largest table a unit may have, in elements (the same on every peer: it decides
    /// outcomes).
    pub max_table_elements: usize,
    /// Largest module accepted, in bytes (bounds compile time and memory).
    pub max_module_bytes: usize,
    /// Where compiled code is cached; `None` keeps it in memory only.
    pub cache_dir: Option<PathBuf>,
    /// How often the epoch advances for epoch-guarded units (deadline granularity).
    pub epoch_tick: Duration,
}

/// Largest table a unit may have, in elements.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Largest module accepted by default: 64 MiB.
pub const MAX_MODULE_BYTES: usize = 64 << 20;

impl SandboxConfig {
    /// Instance slots for a sandbox run by `threads` threads: two per thread (a slot is freed
    /// only after its unit's result is taken), and at least 8.
    pub fn slots_for(threads: usize) -> u32 {
        u32::try_from(threads.saturating_mul(2)).unwrap_or(u32::MAX).max(8)
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            slots: 64,
            max_table_elements: MAX_TABLE_ELEMENTS,
            max_module_bytes: MAX_MODULE_BYTES,
            cache_dir: None,
            epoch_tick: Duration::from_millis(5),
        }
    }
}

/// A module ready to instantiate.
pub struct Prepared {
    pre: InstancePre<UnitState>,
    start: ModuleExport,
    /// The exported memory host calls use, if the module exports one named `memory`.
    memory: Option<ModuleExport>,
}

type Slot = Arc<OnceLock<Result<Arc<Prepared>, Outcome>>>;

/// Gives every sandbox a distinct id, so per-thread caches never confuse two sandboxes.
static NEXT_SANDBOX_ID: AtomicU64 = AtomicU64::new(1);

/// How many prepared modules each thread remembers (most recent first).
const THREAD_CACHE_ENTRIES: usize = 8;

/// (sandbox id, module, flavor, prepared module).
type CachedPrepared = (u64, BlobId, Flavor, Weak<Prepared>);

thread_local! {
    /// A per-thread shortcut past [`Sandbox::prepare`]'s lock and hash map: (sandbox id,
    /// module, flavor) → the prepared module. Weak, so a dropped sandbox's engine (and its
    /// pool's address space) is not kept alive by a thread that outlives it.
    static PREPARED: RefCell<Vec<CachedPrepared>> =
        const { RefCell::new(Vec::new()) };
}

/// Runs units in process. Cheap to share (`Arc`) between threads.
pub struct Sandbox {
    id: u64,
    config: SandboxConfig,
    engines: [OnceLock<Result<engine::EngineSlot, String>>; 8],
    modules: Mutex<HashMap<(BlobId, Flavor), Slot>>,
    cache: Option<CompileCache>,
    ticker: Mutex<Option<Ticker>>,
}

struct Ticker {
    engines: Arc<Mutex<Vec<wasmtime::Engine>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// The CPU architecture this peer reports.
pub fn arch() -> &'static str {
    std::env::consts::ARCH
}

impl Sandbox {
    /// A sandbox with `config`. Engines are built lazily, on first use of each flavor.
    pub fn new(config: SandboxConfig) -> std::io::Result<Self> {
        let cache = config.cache_dir.as_ref().map(CompileCache::open).transpose()?;
        Ok(Self {
            id: NEXT_SANDBOX_ID.fetch_add(1, Ordering::Relaxed),
            config,
            engines: Default::default(),
            modules: Mutex::new(HashMap::new()),
            cache,
            ticker: Mutex::new(None),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    fn engine(&self, flavor: Flavor) -> Result<&engine::EngineSlot, Outcome> {
        let slot = self.engines[flavor.index()].get_or_init(|| {
            let sizing = engine::PoolSizing {
                slots: self.config.slots,
                max_table_elements: self.config.max_table_elements,
            };
            let built = engine::build(flavor, sizing).map_err(|e| format!("{e:#}"));
            if let (Ok(slot), true) = (&built, flavor.epoch) {
                self.start_ticker(slot.engine.clone());
            }
            built
        });
        slot.as_ref().map_err(|e| Outcome::Failed { message: format!("engine: {e}") })
    }

    fn start_ticker(&self, engine: wasmtime::Engine) {
        let mut t = self.ticker.lock().unwrap_or_else(|e| e.into_inner());
        let t = t.get_or_insert_with(|| {
            let engines: Arc<Mutex<Vec<wasmtime::Engine>>> = Arc::default();
            let stop = Arc::new(AtomicBool::new(false));
            let (e2, s2, tick) = (engines.clone(), stop.clone(), self.config.epoch_tick);
            std::thread::Builder::new()
                .name("ova-epoch".into())
                .spawn(move || {
                    // A timer, not synchronisation: advance the epoch every tick.
                    while !s2.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        for e in e2.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                            e.increment_epoch();
                        }
                    }
                })
                .expect("spawning the epoch thread");
            Ticker { engines, stop }
        });
        t.engines.lock().unwrap_or_else(|e| e.into_inner()).push(engine);
    }

    /// Compiles (or loads from the caches) `module` for `flavor`. Each (module, flavor) is
    /// compiled at most once per sandbox; concurrent callers wait for the first. Failures are
    /// cached too: an invalid module is an outcome, not something to retry.
    pub fn prepare(&self, module: &ModuleSource, flavor: Flavor) -> Result<Arc<Prepared>, Outcome> {
        if let Some(p) = self.thread_cached(&module.id, flavor) {
            return Ok(p);
        }
        let slot = {
            let mut map = self.modules.lock().unwrap_or_else(|e| e.into_inner());
            map.entry((module.id, flavor)).or_default().clone()
        };
        let p = slot.get_or_init(|| self.compile(module, flavor).map(Arc::new)).clone()?;
        self.remember(&module.id, flavor, &p);
        Ok(p)
    }

    /// Whether `module` is already prepared for `flavor` (no compile needed).
    pub fn is_prepared(&self, module: &BlobId, flavor: Flavor) -> bool {
        self.thread_cached(module, flavor).is_some() || {
            let map = self.modules.lock().unwrap_or_else(|e| e.into_inner());
            map.get(&(*module, flavor)).is_some_and(|s| s.get().is_some())
        }
    }

    fn thread_cached(&self, module: &BlobId, flavor: Flavor) -> Option<Arc<Prepared>> {
        PREPARED.with_borrow(|v| {
            v.iter()
                .find(|(s, m, f, _)| *s == self.id && m == module && *f == flavor)
                .and_then(|(.., p)| p.upgrade())
        })
    }

    fn remember(&self, module: &BlobId, flavor: Flavor, p: &Arc<Prepared>) {
        PREPARED.with_borrow_mut(|v| {
            v.retain(|(s, m, f, p)| {
                !(*s == self.id && m == module && *f == flavor) && p.strong_count() > 0
            });
            v.insert(0, (self.id, *module, flavor, Arc::downgrade(p)));
            v.truncate(THREAD_CACHE_ENTRIES);
        });
    }

    fn compile(&self, src: &ModuleSource, flavor: Flavor) -> Result<Prepared, Outcome> {
        check::precheck(&src.bytes, self.config.max_module_bytes, self.config.max_table_elements)?;
        let slot = self.engine(flavor)?;
        let cached = self.cache.as_ref().and_then(|c| c.load(&slot.engine, &slot.compat, &src.id));
        let module = match cached {
            Some(m) => m,
            None => {
                let m = Module::new(&slot.engine, &src.bytes).map_err(|e| {
                    Outcome::InvalidModule { reason: check::compile_error_reason(&e) }
                })?;
                if let Some(c) = &self.cache
                    && let Err(e) = c.store(&slot.compat, &src.id, &m)
                {
                    tracing::warn!(error = %e, "cannot write the compiled-code cache");
                }
                m
            }
        };
        for import in module.imports() {
            if !slot
                .known_imports
                .contains(&(import.module().to_string(), import.name().to_string()))
            {
                return Err(Outcome::ForbiddenImport {
                    module: import.module().to_string(),
                    name: import.name().to_string(),
                });
            }
        }
        let start = match module.get_export("_start") {
            Some(wasmtime::ExternType::Func(f))
                if f.params().len() == 0 && f.results().len() == 0 =>
            {
                module.get_export_index("_start").expect("export listed above")
            }
            _ => {
                return Err(Outcome::InvalidModule {
                    reason: "no `_start() -> ()` export: a unit must be a WASI preview-1 command \
                             (a Rust `bin` built for wasm32-wasip1)"
                        .into(),
                });
            }
        };
        let pre = slot.linker.instantiate_pre(&module).map_err(|e| Outcome::InvalidModule {
            reason: format!(
                "imports do not match WASI preview 1: {}",
                check::compile_error_reason(&e)
            ),
        })?;
        let memory = match module.get_export("memory") {
            Some(wasmtime::ExternType::Memory(_)) => module.get_export_index("memory"),
            _ => None,
        };
        Ok(Prepared { pre, start, memory })
    }

    /// Runs one unit to completion and describes how it ended.
    pub fn run(&self, req: &UnitRequest) -> UnitResult {
        self.run_notify(req, || {}, || {})
    }

    /// [`Sandbox::run`], calling `compiling` before the module has to be compiled (not called
    /// when it is already prepared) and `started` just before the unit is instantiated and run
    /// (not called when it cannot be prepared): the supervisor's deadlines start there.
    pub fn run_notify(
        &self,
        req: &UnitRequest,
        compiling: impl FnOnce(),
        started: impl FnOnce(),
    ) -> UnitResult {
        let t0 = Instant::now();
        let provenance = Provenance {
            determinism: req.determinism,
            arch: arch().to_string(),
            engine: ENGINE_NAME.to_string(),
        };
        let flavor = req.flavor();
        let prepared = match self.thread_cached(&req.module.id, flavor) {
            Some(p) => Ok(p),
            None => {
                if !self.is_prepared(&req.module.id, flavor) {
                    compiling();
                }
                self.prepare(&req.module, flavor)
            }
        };
        let (outcome, stdout, stderr, truncated, fuel_used) = match prepared {
            Err(o) => (o, Vec::new(), Vec::new(), false, None),
            Ok(p) => {
                started();
                self.execute(&p, req, flavor)
            }
        };
        let result_hash = ResultHash::compute(&outcome, &stdout);
        UnitResult {
            unit: req.unit,
            outcome,
            stdout,
            stderr,
            stderr_truncated: truncated,
            fuel_used,
            provenance,
            result_hash,
            wall_micros: t0.elapsed().as_micros() as u64,
        }
    }

    fn execute(
        &self,
        p: &Prepared,
        req: &UnitRequest,
        flavor: Flavor,
    ) -> (Outcome, Vec<u8>, Vec<u8>, bool, Option<u64>) {
        let limits = &req.limits;
        let state = UnitState {
            wasi: wasi::UnitWasi::new(
                &req.unit,
                req.input.clone(),
                &req.args,
                limits.max_output_bytes,
                limits.max_stderr_bytes,
            ),
            limiter: UnitLimiter::new(limits.memory_bytes, self.config.max_table_elements),
        };
        let mut store = Store::new(p.pre.module().engine(), state);
        store.limiter(|s| &mut s.limiter);
        if let Some(fuel) = limits.fuel {
            store.set_fuel(fuel).expect("fuel is enabled in this flavor");
        }
        if flavor.epoch {
            let tick = self.config.epoch_tick.as_millis().max(1) as u64;
            store.set_epoch_deadline(limits.deadline_ms.div_ceil(tick) + 1);
            store.epoch_deadline_trap();
        }
        let result = p.pre.instantiate(&mut store).and_then(|instance| {
            let memory = p
                .memory
                .as_ref()
                .and_then(|m| instance.get_module_export(&mut store, m))
                .and_then(|e| e.into_memory());
            store.data_mut().wasi.set_memory(memory);
            let f = instance
                .get_module_export(&mut store, &p.start)
                .and_then(|e| e.into_func())
                .expect("_start checked at compile time");
            f.typed::<(), ()>(&store)?.call(&mut store, ())
        });
        let facts = outcome_map::RunFacts {
            stdout_overflowed: store.data().wasi.stdout().overflowed(),
            limit_hit: store.data().limiter.hit,
            max_output: limits.max_output_bytes,
            fuel: limits.fuel,
            deadline_ms: limits.deadline_ms,
        };
        let outcome = outcome_map::classify(&result, &facts);
        let fuel_used = limits.fuel.map(|f| f.saturating_sub(store.get_fuel().unwrap_or(0)));
        let (out, err) = store.into_data().wasi.into_output();
        // A cut output is never returned.
        let stdout = if matches!(outcome, Outcome::OutputTooLarge { .. }) {
            Vec::new()
        } else {
            out.into_data()
        };
        let truncated = err.overflowed();
        let mut stderr = err.into_data();
        if let (Outcome::Trap { kind: ova_jobs::TrapKind::HostError }, Err(e)) = (&outcome, &result)
        {
            // Tell the author what the host refused (stderr is not hashed).
            stderr.extend_from_slice(&host_error_note(e));
        }
        (outcome, stdout, stderr, truncated, fuel_used)
    }
}

/// Most bytes `host_error_note` adds after a unit's stderr (which may be full to its cap):
/// the executor's frames are sized for both output caps plus this.
pub const HOST_ERROR_NOTE_BYTES: usize = 1024;

/// The line telling the unit's author what the host refused, at most
/// [`HOST_ERROR_NOTE_BYTES`] long.
fn host_error_note(e: &wasmtime::Error) -> Vec<u8> {
    let mut note = format!("\nova: host error: {}\n", check::compile_error_reason(e)).into_bytes();
    note.truncate(HOST_ERROR_NOTE_BYTES);
    note
}
