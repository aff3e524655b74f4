//! Executor benchmarks. Prints figures measured side by side in one run; asserts nothing.
//!
//! - P1: each example kernel as wasm under the production executor (supervised children, one
//!   per core, no per-loop checks: deadline protection is the watchdog) vs the same kernel built natively,
//!   on the same cores. Beside it: strict (NaN-canonical) mode, fuel metering, and in-process
//!   epoch checks — the alternative deadline protection we did not choose.
//! - P2: trivial units (64-byte echo) through the executor, on 1 core and on all cores, plain
//!   vs epoch vs fuel, one child for all cores (the design a child per core replaced: see
//!   `supervisor::shards`), and in-process without supervision for reference; submitted in batches
//!   ([`Executor::submit_batch`]). Beside them, the ceiling: bare wasmtime (same pooling
//!   engine) instantiating and running an empty module, with no WASI and no executor. Each row
//!   also gives the CPU time spent per unit by all threads (the executor process's included):
//!   on a shared machine wall-clock rates swing with other work, CPU time much less.
//!
//! Run: `cargo bench -p ova-worker --bench executor` (after `scripts/build-examples.sh`).
//! Environment: `OVA_BENCH_CORES` (default: all), `OVA_BENCH_QUICK=1` (smaller workloads, well
//! under a minute), `OVA_BENCH_ONLY=p1|p2|bare|sandbox|supervised` (one part, e.g. under a
//! profiler; the parts left out print as NaN), `OVA_EXECUTOR` (another `ova-executor`
//! program, as for `ova`; it must be of the same build, or it refuses the supervisor's hello).
//! The last three lines are `P2 reference: bare wasmtime instantiate+run units/s=<n>`,
//! `P1 wasm/native geomean=<ratio>` and `P2 trivial units/s=<n>`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ova_jobs::{BlobId, Determinism, Limits, Outcome, UnitId};
use ova_worker::sandbox::{Flavor, engine};
use ova_worker::{
    Completion, Executor, ModuleSource, PoolExecutor, Sandbox, SandboxConfig, ShardedExecutor,
    SupervisedExecutor, SupervisorConfig, UnitRequest,
};

fn limits() -> Limits {
    Limits {
        memory_bytes: 256 << 20,
        deadline_ms: 600_000,
        fuel: None,
        max_output_bytes: 16 << 20,
        max_stderr_bytes: 4096,
    }
}

fn example(name: &str) -> Arc<ModuleSource> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/wasm/{name}.wasm"));
    ModuleSource::new(
        std::fs::read(&p).unwrap_or_else(|e| {
            panic!("{}: {e} — run scripts/build-examples.sh first", p.display())
        }),
    )
}

fn request(module: &Arc<ModuleSource>, input: &[u8], args: &[String]) -> UnitRequest {
    UnitRequest {
        unit: UnitId::derive(&module.id(), &BlobId::of(input), args),
        module: module.clone(),
        input: bytes::Bytes::copy_from_slice(input),
        args: args.to_vec(),
        limits: limits(),
        determinism: Determinism::SameArch,
        epoch_guard: false,
    }
}

/// Runs all `reqs` through `exec` with at most `window` in flight, submitted in batches of up
/// to `window / 4` ([`Executor::submit_batch`]); returns seconds.
fn run_batch(exec: &dyn Executor, reqs: &[UnitRequest], window: usize) -> f64 {
    let (tx, rx) = std::sync::mpsc::channel::<Outcome>();
    let chunk = (window / 4).max(1);
    let submit = |from: usize, to: usize| {
        let batch: Vec<(UnitRequest, Completion)> = reqs[from..to]
            .iter()
            .map(|r| {
                let tx = tx.clone();
                let done: Completion = Box::new(move |r| drop(tx.send(r.outcome)));
                (r.clone(), done)
            })
            .collect();
        exec.submit_batch(batch);
    };
    let t0 = Instant::now();
    let mut next = reqs.len().min(window);
    submit(0, next);
    for finished in 1..=reqs.len() {
        let o = rx.recv().expect("executor alive");
        assert_eq!(o, Outcome::Success, "benchmark unit failed");
        let in_flight = next - finished;
        if next < reqs.len() && in_flight + chunk <= window {
            let to = (next + chunk).min(reqs.len());
            submit(next, to);
            next = to;
        }
    }
    t0.elapsed().as_secs_f64()
}

/// The ceiling for P2: our pooling engine (plain flavor) instantiating an empty module and
/// calling its `_start`, a fresh store each time, on `threads` threads; (units/s, CPU µs per
/// unit).
fn bare_wasmtime(threads: usize, n: usize) -> (f64, f64) {
    use wasmtime::{Linker, Module, Store};
    let sizing =
        engine::PoolSizing { slots: SandboxConfig::slots_for(threads), max_table_elements: 1000 };
    let slot = engine::build(Flavor::PLAIN, sizing).expect("engine");
    let module = Module::new(
        &slot.engine,
        wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "_start")))"#)
            .unwrap(),
    )
    .unwrap();
    let pre = Linker::<()>::new(&slot.engine).instantiate_pre(&module).unwrap();
    let run = |n: usize| {
        for _ in 0..n {
            let mut store = Store::new(&slot.engine, ());
            let i = pre.instantiate(&mut store).unwrap();
            i.get_typed_func::<(), ()>(&mut store, "_start").unwrap().call(&mut store, ()).unwrap();
        }
    };
    run(1000);
    measure(2, n / threads * threads, Vec::new, || {
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| run(n / threads));
            }
        });
    })
}

/// [`Sandbox::run`] called directly in a loop on `threads` threads (WASI and our per-unit
/// work, no executor); (units/s, CPU µs per unit).
fn sandbox_direct(threads: usize, reqs: &[UnitRequest]) -> (f64, f64) {
    let sb = Sandbox::new(SandboxConfig {
        slots: SandboxConfig::slots_for(threads),
        ..Default::default()
    })
    .unwrap();
    for r in &reqs[..1000.min(reqs.len())] {
        assert_eq!(sb.run(r).outcome, Outcome::Success);
    }
    let per = reqs.len() / threads;
    measure(2, per * threads, Vec::new, || {
        std::thread::scope(|s| {
            for c in reqs.chunks(per).take(threads) {
                let sb = &sb;
                s.spawn(move || {
                    for r in c {
                        std::hint::black_box(sb.run(r));
                    }
                });
            }
        });
    })
}

/// `n` distinct trivial units: a module that echoes its 64-byte input.
fn echo_requests(n: usize) -> Vec<UnitRequest> {
    let echo = ModuleSource::new(
        wat::parse_str(
            r#"(module
 (import "wasi_snapshot_preview1" "fd_read" (func $r (param i32 i32 i32 i32) (result i32)))
 (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
 (memory (export "memory") 1)
 (func (export "_start")
   (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 1024))
   (drop (call $r (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
   (i32.store (i32.const 4) (i32.load (i32.const 8)))
   (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        )
        .unwrap(),
    );
    let payload = [7u8; 64];
    let mut base = request(&echo, &payload, &[]);
    base.limits = Limits { memory_bytes: 1 << 20, deadline_ms: 10_000, ..base.limits };
    (0..n)
        .map(|i| {
            let mut r = base.clone();
            r.unit = UnitId::derive(&echo.id(), &BlobId::of(&payload), &[i.to_string()]);
            r
        })
        .collect()
}

fn supervisor_config(cores: usize) -> SupervisorConfig {
    let mut c = SupervisorConfig::new(cores);
    // `OVA_EXECUTOR` (which `SupervisorConfig::new` reads) runs another build's executor.
    if std::env::var_os("OVA_EXECUTOR").is_none() {
        c.program = PathBuf::from(env!("CARGO_BIN_EXE_ova-executor"));
    }
    c
}

/// The production executor: a supervised single-threaded child per core.
fn supervised(cores: usize) -> ShardedExecutor {
    ShardedExecutor::start(supervisor_config(cores)).expect("starting ova-executor")
}

/// The design it replaced: one supervised child with a thread per core.
fn one_child(cores: usize) -> SupervisedExecutor {
    SupervisedExecutor::start(supervisor_config(cores)).expect("starting ova-executor")
}

fn in_process(cores: usize) -> PoolExecutor {
    let sb = Sandbox::new(SandboxConfig {
        slots: SandboxConfig::slots_for(cores),
        ..Default::default()
    });
    PoolExecutor::new(cores, Arc::new(sb.unwrap())).unwrap()
}

struct Kernel {
    name: &'static str,
    module: Arc<ModuleSource>,
    units: Vec<(Vec<u8>, Vec<String>)>,
    native: fn(&[u8], &[String]) -> Vec<u8>,
}

fn native_primes(input: &[u8], args: &[String]) -> Vec<u8> {
    let (lo, hi) = primes::parse_unit(std::str::from_utf8(input).unwrap(), args).unwrap();
    format!("{}\n", primes::count_primes(lo, hi)).into_bytes()
}

fn native_mandelbrot(_: &[u8], args: &[String]) -> Vec<u8> {
    let i = mandelbrot::parse_args(args).unwrap();
    ova_guest::encode(&mandelbrot::render_tile(&mandelbrot::DEFAULT_VIEW, i))
}

fn native_montecarlo(input: &[u8], args: &[String]) -> Vec<u8> {
    let (seed, n) = montecarlo::parse_unit(std::str::from_utf8(input).unwrap(), args).unwrap();
    ova_guest::encode(&montecarlo::simulate(seed, n))
}

fn native_batch(pool: &rayon::ThreadPool, k: &Kernel) -> f64 {
    let t0 = Instant::now();
    pool.install(|| {
        use rayon::prelude::*;
        let outs: Vec<Vec<u8>> = k.units.par_iter().map(|(i, a)| (k.native)(i, a)).collect();
        std::hint::black_box(outs);
    });
    t0.elapsed().as_secs_f64()
}

/// CPU time (user + system, all threads) used so far by this process and by `child`.
/// (`/proc/<pid>/stat`, in clock ticks of 10 ms.)
fn cpu_used(children: Vec<u32>) -> f64 {
    let of = |pid: String| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        ova_worker::spare_cpu::parse_pid_stat(&stat).map_or(0.0, |t| t as f64 / 100.0)
    };
    of("self".into()) + children.into_iter().map(|p| of(p.to_string())).sum::<f64>()
}

/// Runs `f` (which does `units` units) `n` times; the best wall time as units/s, and the
/// least CPU time (this process and the `child` processes) as µs per unit.
fn measure(
    n: usize,
    units: usize,
    child: impl Fn() -> Vec<u32>,
    mut f: impl FnMut(),
) -> (f64, f64) {
    let (mut secs, mut cpu) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..n {
        let (c0, t0) = (cpu_used(child()), Instant::now());
        f();
        secs = secs.min(t0.elapsed().as_secs_f64());
        cpu = cpu.min(cpu_used(child()) - c0);
    }
    (units as f64 / secs, cpu * 1e6 / units as f64)
}

fn geomean(v: &[f64]) -> f64 {
    (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp()
}

fn main() {
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores: usize =
        std::env::var("OVA_BENCH_CORES").ok().and_then(|v| v.parse().ok()).unwrap_or(all);
    let quick = std::env::var_os("OVA_BENCH_QUICK").is_some();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let scale = if quick { 1 } else { 4 };
    println!(
        "ova executor benchmarks: {cores} of {all} cores, RUST_BACKTRACE={} in this process \
         (the executor child runs with RUST_LIB_BACKTRACE=0), {}",
        std::env::var("RUST_BACKTRACE").unwrap_or_else(|_| "unset".into()),
        if quick { "quick workloads" } else { "full workloads" }
    );

    let only = std::env::var("OVA_BENCH_ONLY").unwrap_or_default();
    let part = |p: &str| only.is_empty() || only == p;
    let n = if quick { 200_000 } else { 1_000_000 };
    if only == "bare" {
        let (rate, cpu) = bare_wasmtime(cores, n);
        println!("bare wasmtime instantiate+run units/s={rate:.0} CPU µs/unit={cpu:.2}");
        return;
    }
    if only == "supervised" {
        let reqs = echo_requests(n);
        let exec = supervised(cores);
        run_batch(&exec, &reqs[..1000], 4096);
        let (rate, cpu) = measure(
            2,
            n,
            || exec.child_pids(),
            || {
                run_batch(&exec, &reqs, 8192);
            },
        );
        println!("supervised executor (64-byte echo) units/s={rate:.0} CPU µs/unit={cpu:.2}");
        return;
    }
    if only == "sandbox" {
        let (rate, cpu) = sandbox_direct(cores, &echo_requests(n));
        println!("Sandbox::run in a loop (64-byte echo) units/s={rate:.0} CPU µs/unit={cpu:.2}");
        return;
    }
    let mut kernels = vec![
        Kernel {
            name: "primes (u64 sieve)",
            module: example("primes"),
            // Four times the units of the others: a prime unit is short, and a batch of a
            // tenth of a second timed best of two swung by a fifth from run to run.
            units: (0..32 * scale)
                .map(|i| (i.to_string().into_bytes(), s(&["--span", "4000000"])))
                .collect(),
            native: native_primes,
        },
        Kernel {
            name: "mandelbrot (f64 tiles)",
            module: example("mandelbrot"),
            units: (0..16 * scale)
                .map(|i| (Vec::new(), s(&["--tile", &(i % 64).to_string()])))
                .collect(),
            native: native_mandelbrot,
        },
        Kernel {
            name: "montecarlo (f64 + rng)",
            module: example("montecarlo"),
            units: (0..8 * scale)
                .map(|i| (i.to_string().into_bytes(), s(&["--samples", "3000000"])))
                .collect(),
            native: native_montecarlo,
        },
    ];

    if !part("p1") {
        kernels.clear();
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(cores).build().unwrap();
    let sup = supervised(cores);
    let epoch = in_process(cores).guard_all(true);
    let window = cores * 4;

    println!("\nP1: native time / wasm time on {cores} cores (1.0 = native speed; best of 2)");
    println!(
        "{:26} {:>9} {:>11} {:>9} {:>9} {:>13}",
        "kernel", "native s", "supervised", "strict", "fuel", "epoch (alt.)"
    );
    let mut plain_ratios = Vec::new();
    let mut cols: [Vec<f64>; 3] = Default::default();
    for k in &kernels {
        let reqs: Vec<UnitRequest> =
            k.units.iter().map(|(i, a)| request(&k.module, i, a)).collect();
        let variant = |f: &dyn Fn(&mut UnitRequest)| {
            reqs.iter()
                .cloned()
                .map(|mut r| {
                    f(&mut r);
                    r
                })
                .collect::<Vec<_>>()
        };
        let strict = variant(&|r| r.determinism = Determinism::Strict);
        let fuel = variant(&|r| r.limits.fuel = Some(u64::MAX / 2));
        // Warm up: compile every flavor once, outside the timings.
        run_batch(&sup, &reqs[..1], 1);
        run_batch(&sup, &strict[..1], 1);
        run_batch(&sup, &fuel[..1], 1);
        run_batch(&epoch, &reqs[..1], 1);
        native_batch(
            &pool,
            &Kernel { units: k.units[..1].to_vec(), module: k.module.clone(), ..*k },
        );

        let mut n = f64::INFINITY;
        let (mut p, mut st, mut fu, mut ep) = (n, n, n, n);
        for _ in 0..2 {
            // Interleaved, so that noise from other work on the machine hits all columns alike.
            n = n.min(native_batch(&pool, k));
            p = p.min(run_batch(&sup, &reqs, window));
            st = st.min(run_batch(&sup, &strict, window));
            fu = fu.min(run_batch(&sup, &fuel, window));
            ep = ep.min(run_batch(&epoch, &reqs, window));
        }
        let r = [n / p, n / st, n / fu, n / ep];
        println!(
            "{:26} {:>9.3} {:>11.3} {:>9.3} {:>9.3} {:>13.3}",
            k.name, n, r[0], r[1], r[2], r[3]
        );
        plain_ratios.push(r[0]);
        cols[0].push(r[1]);
        cols[1].push(r[2]);
        cols[2].push(r[3]);
    }
    let p1 = geomean(&plain_ratios);
    println!(
        "{:26} {:>9} {:>11.3} {:>9.3} {:>9.3} {:>13.3}",
        "geometric mean",
        "",
        p1,
        geomean(&cols[0]),
        geomean(&cols[1]),
        geomean(&cols[2])
    );

    // P2: trivial units.
    let n_units = match (part("p2"), quick) {
        (false, _) => 0,
        (true, true) => 20_000,
        (true, false) => 200_000,
    };
    if n_units == 0 {
        println!("\nP1 wasm/native geomean={p1:.3}");
        println!("P2 trivial units/s=NaN");
        return;
    }
    let reqs = echo_requests(n_units);
    let flavored = |f: &dyn Fn(&mut UnitRequest)| {
        reqs.iter()
            .cloned()
            .map(|mut r| {
                f(&mut r);
                r
            })
            .collect::<Vec<_>>()
    };
    let epoch_reqs = flavored(&|r| r.epoch_guard = true);
    let fuel_reqs = flavored(&|r| r.limits.fuel = Some(1_000_000));

    println!(
        "\nP2: trivial units (64-byte echo), {n_units} units per figure; units/s (best of 2) and \
         CPU time per unit on {cores} cores (least of 2; all threads, the executor process's too)"
    );
    println!(
        "{:44} {:>12} {:>12} {:>10} {:>12}",
        "executor",
        "1 core",
        format!("{cores} cores"),
        "per core",
        "CPU µs/unit"
    );
    let mut p2_all = 0.0;
    let rate = |exec: &dyn Executor, child: &dyn Fn() -> Vec<u32>, reqs: &[UnitRequest]| {
        run_batch(exec, &reqs[..1000.min(reqs.len())], 4096);
        measure(2, reqs.len(), child, || {
            run_batch(exec, reqs, 8192);
        })
    };
    let row = |label: &str, one: (f64, f64), all: (f64, f64)| {
        println!(
            "{label:44} {:>12.0} {:>12.0} {:>10.0} {:>12.2}",
            one.0,
            all.0,
            all.0 / cores as f64,
            all.1
        );
    };
    for (label, kind) in [
        ("supervised, plain (production)", 0),
        ("supervised, epoch checks", 1),
        ("supervised, fuel", 2),
        ("supervised, plain, one child for all cores", 5),
        ("in process, no supervision", 3),
        ("in process, epoch checks (PoolExecutor)", 4),
    ] {
        let rs = match kind {
            1 | 4 => &epoch_reqs,
            2 => &fuel_reqs,
            _ => &reqs,
        };
        let mut figs = [(0.0, 0.0); 2];
        for (f, c) in figs.iter_mut().zip([1, cores]) {
            *f = match kind {
                3 | 4 => rate(&in_process(c), &Vec::new, rs),
                5 => {
                    let exec = one_child(c);
                    rate(&exec, &|| exec.child_pid().into_iter().collect(), rs)
                }
                _ => {
                    let exec = supervised(c);
                    rate(&exec, &|| exec.child_pids(), rs)
                }
            };
        }
        row(label, figs[0], figs[1]);
        if kind == 0 {
            p2_all = figs[1].0;
        }
    }
    row(
        "Sandbox::run in a loop, no executor",
        sandbox_direct(1, &reqs),
        sandbox_direct(cores, &reqs),
    );
    let bare = [bare_wasmtime(1, n_units), bare_wasmtime(cores, n_units)];
    row("bare wasmtime: empty module, no WASI", bare[0], bare[1]);
    println!();
    println!("P2 reference: bare wasmtime instantiate+run units/s={:.0}", bare[1].0);
    println!("P1 wasm/native geomean={p1:.3}");
    println!("P2 trivial units/s={p2_all:.0}");
}
