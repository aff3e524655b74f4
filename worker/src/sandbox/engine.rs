//! The wasmtime engines: one per [`Flavor`], all configured for determinism and speed.
//!
//! Determinism: no wasm threads or shared memory, relaxed SIMD in its deterministic mode, no
//! memory64 and no multi-memory (a unit has one 32-bit memory), NaN canonicalisation only in
//! [`Flavor::strict`] (it costs 2.5–4× on float code, see `shared/notes/wasmtime.md`).
//!
//! Speed: the pooling allocator with copy-on-write memory images and resident slots
//! (`linear_memory_keep_resident`), so a fresh instance per unit costs a few microseconds.
//! Epoch checks and fuel are compiled in only for the flavors that need them: plain code has no
//! per-loop checks at all.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, Linker, PoolingAllocationConfig,
};

use super::state::UnitState;

/// What computes a unit's result, recorded in every result's [`ova_jobs::Provenance`] (and
/// so in its comparison class) and in cache keys: the wasmtime version and the WASI host's
/// ABI ([`super::wasi::HOST_ABI`], which it ends with). It is [`ova_jobs::COMPUTE_ABI`], which
/// also sets which network a peer joins (peers only meet peers of the same ABI).
pub const ENGINE_NAME: &str = ova_jobs::COMPUTE_ABI;

/// Largest linear memory any unit can be given (the whole wasm32 address space). Pool slots
/// reserve this much *virtual* memory; the per-unit limit is enforced by the store's limiter.
pub const MAX_MEMORY_BYTES: u64 = 4 << 30;

/// Which code generation a unit needs. Each combination is its own `Engine` (wasmtime compiles
/// these checks into the code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flavor {
    /// Epoch-interruption checks at loop heads and function entries, so the deadline can be
    /// enforced in process. Off for well-behaved modules (see the supervisor).
    pub epoch: bool,
    /// Fuel metering: a deterministic instruction budget.
    pub fuel: bool,
    /// NaN canonicalisation, for cross-architecture ([`ova_jobs::Determinism::Strict`]) jobs.
    pub strict: bool,
}

impl Flavor {
    /// The flavor with no checks at all: full speed.
    pub const PLAIN: Flavor = Flavor { epoch: false, fuel: false, strict: false };

    pub(crate) fn index(self) -> usize {
        (self.epoch as usize) | (self.fuel as usize) << 1 | (self.strict as usize) << 2
    }

    /// A short label, e.g. `plain`, `epoch+fuel`.
    pub fn label(self) -> String {
        let mut parts = Vec::new();
        if self.epoch {
            parts.push("epoch");
        }
        if self.fuel {
            parts.push("fuel");
        }
        if self.strict {
            parts.push("strict");
        }
        if parts.is_empty() { "plain".into() } else { parts.join("+") }
    }
}

/// Pool sizing for one engine.
#[derive(Debug, Clone, Copy)]
pub struct PoolSizing {
    /// Instances (and memories, tables) that may be live at once: at least the number of
    /// threads running units.
    pub slots: u32,
    /// Largest table any unit can have, in elements.
    pub max_table_elements: usize,
}

/// One configured engine with its WASI linker.
pub struct EngineSlot {
    /// The engine.
    pub engine: Engine,
    /// WASI preview 1, nothing else.
    pub linker: Arc<Linker<UnitState>>,
    /// The names the linker defines, to report a precise forbidden import.
    pub known_imports: std::collections::HashSet<(String, String)>,
    /// BLAKE3 of wasmtime's compatibility hash, the flavor and our cache format: the key under
    /// which compiled code for this engine is cached on disk.
    pub compat: [u8; 32],
    /// The flavor.
    pub flavor: Flavor,
}

/// Builds the engine for `flavor`.
pub fn build(flavor: Flavor, sizing: PoolSizing) -> wasmtime::Result<EngineSlot> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_core_instances(sizing.slots)
        .total_memories(sizing.slots)
        .total_tables(sizing.slots)
        .max_memories_per_module(1)
        .max_tables_per_module(4)
        .max_memory_size(MAX_MEMORY_BYTES as usize)
        .table_elements(sizing.max_table_elements)
        // Keep the first MiB of each memory slot resident and reset it with memset instead of
        // madvise: measured here, this halves the per-unit cost of small units.
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(64 << 10)
        // Linux ≥ 6.7: find the pages a unit actually dirtied (PAGEMAP_SCAN) and reset only
        // those, instead of the whole resident first MiB (or all of a small memory); a unit
        // that touches one page pays for one page. Falls back to the memset where unsupported.
        // (Memory protection keys are not compiled into this wasmtime build: off.)
        .pagemap_scan(Enabled::Auto);

    let mut config = Config::new();
    // Wasm threads and shared memory are not compiled into this wasmtime build (no `threads`
    // feature), so they are off.
    config
        // Compile each module's functions on the calling thread. Parallel compilation uses
        // rayon's *current* pool: called from a unit running on our rayon executor, a worker
        // waiting inside `Module::new` would steal another unit of the same module, which then
        // waits on the very compile its own thread is doing (a deadlock seen in CI).
        .parallel_compilation(false)
        .wasm_memory64(false)
        // No GC proposals: plain WASI commands do not need them, and this build has no
        // collector compiled in (the workspace's `gc` feature comes without one).
        .gc_support(false)
        .wasm_gc(false)
        .wasm_function_references(false)
        .wasm_exceptions(false)
        .wasm_multi_memory(false)
        .wasm_relaxed_simd(true)
        .relaxed_simd_deterministic(true)
        .wasm_simd(true)
        .cranelift_nan_canonicalization(flavor.strict)
        .consume_fuel(flavor.fuel)
        .epoch_interruption(flavor.epoch)
        .memory_init_cow(true)
        // Wasm backtraces are not hashed or shown; skipping them makes traps cheaper.
        .wasm_backtrace_max_frames(None)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config)?;

    let mut linker: Linker<UnitState> = Linker::new(&engine);
    super::wasi::add_to_linker(&mut linker, |s: &mut UnitState| &mut s.wasi)?;
    let mut store = wasmtime::Store::new(&engine, UnitState::empty());
    let known_imports =
        linker.iter(&mut store).map(|(m, n, _)| (m.to_string(), n.to_string())).collect();
    drop(store);

    let mut h = Blake3Hasher(blake3::Hasher::new_derive_key("ova compiled code cache v1"));
    engine.precompile_compatibility_hash().hash(&mut h);
    ENGINE_NAME.hash(&mut h);
    flavor.hash(&mut h);
    let compat = *h.0.finalize().as_bytes();
    Ok(EngineSlot { engine, linker: Arc::new(linker), known_imports, compat, flavor })
}

/// Feeds `std::hash::Hash` output into BLAKE3, for a stable, wide digest.
struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn finish(&self) -> u64 {
        let b = self.0.finalize();
        u64::from_le_bytes(b.as_bytes()[..8].try_into().expect("8 bytes"))
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_engine_name_names_the_wasi_host() {
        assert!(super::ENGINE_NAME.ends_with(&format!("; {}", super::super::wasi::HOST_ABI)));
    }

    /// The engine name is written by hand: it must follow the wasmtime the lock file builds.
    #[test]
    fn the_engine_name_names_the_wasmtime_that_is_built() {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
            .expect("the workspace's Cargo.lock");
        let version = lock
            .split("[[package]]")
            .find_map(|p| {
                let p = p.trim();
                p.strip_prefix("name = \"wasmtime\"\nversion = \"")
                    .and_then(|rest| rest.split('"').next())
            })
            .expect("wasmtime in Cargo.lock");
        assert!(
            super::ENGINE_NAME.starts_with(&format!("wasmtime {version};")),
            "ENGINE_NAME {:?} does not name wasmtime {version}: update ova_jobs::COMPUTE_ABI",
            super::ENGINE_NAME
        );
    }
}
