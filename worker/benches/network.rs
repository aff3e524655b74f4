//! Network benchmarks, measured side by side in one run on this machine:
//!
//! - **P3**: the Mandelbrot example cut into 256 tiles, rendered (a) natively with rayon on all
//!   cores and (b) as wasm units on 3 local workers (in-process peers on 127.0.0.1, each with
//!   its supervised executor process), submitted by a light peer and verified at quorum 1 and
//!   at quorum 2. Ratios are network throughput ÷ native throughput; at quorum 2 every tile
//!   runs twice, so 0.5 is the ceiling. Each of the three is timed three times, interleaved,
//!   and its best time counts.
//! - **P4**: tiny units (a 64-byte echo) verified end to end per second on 3 local workers at
//!   quorum 2. Timed three times, each on a fresh network; the best counts.
//!
//! Each measurement starts a fresh network (fresh stores, so no result is reused from an
//! earlier run) and first runs a small untimed job of the same module, so what is timed is
//! the network's steady throughput: the workers already hold the module and its compiled
//! code, as volunteers do after a job's first units. `OVA_BENCH_QUICK=1` runs smaller jobs. Needs the example modules:
//! `scripts/build-examples.sh`. Run: `cargo bench -p ova-worker --bench network`.

use std::path::Path;
use std::time::{Duration, Instant};

use ova_jobs::Bundle;
use ova_net::endpoint::EndpointConfig;
use ova_sdk::{Client, ClientConfig, JobBuilder};
use ova_worker::metrics::{KindLabel, Metrics};
use ova_worker::peer::{WorkerOptions, WorkerPeer};
use prometheus_client::metrics::{counter::Counter, family::Family};
use rayon::prelude::*;

const WORKERS: usize = 3;

/// How many times P3 times each side (native, quorum 1, quorum 2); the best time of each counts.
const ROUNDS: usize = 3;

/// The allocator of the `ova` binary (see its `main.rs`), so the peers here cost what they
/// cost in a volunteer's worker.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn quick() -> bool {
    std::env::var_os("OVA_BENCH_QUICK").is_some()
}

/// `OVA_BENCH_ONLY=P3` or `P4` runs one part (for profiling); the summary lines then show
/// only what was measured.
fn wanted(part: &str) -> bool {
    std::env::var("OVA_BENCH_ONLY").map_or(true, |only| only.eq_ignore_ascii_case(part))
}

/// `OVA_BENCH_TIMELINE=1` prints, every 20 ms that something changed, how many units each
/// worker has started and how many commits it has published, with how busy the machine was
/// since the line before (to see where a run's time goes).
fn timeline() -> bool {
    std::env::var_os("OVA_BENCH_TIMELINE").is_some()
}

/// `OVA_BENCH_PERF_CTL=FIFO` writes `enable` to that FIFO when a timed run starts and `disable`
/// when it ends, so `perf record --control=fifo:FIFO -D -1 …` profiles only the timed runs,
/// not the setup and warm-up around them.
fn perf_control(command: &str) {
    if let Some(path) = std::env::var_os("OVA_BENCH_PERF_CTL")
        && let Err(e) = std::fs::write(&path, format!("{command}\n"))
    {
        eprintln!("perf control {}: {e}", Path::new(&path).display());
    }
}

/// Busy and total core-seconds of the whole machine since boot (Linux `/proc/stat`; `None`
/// elsewhere): a run whose machine is not busy throughout loses time to waiting, not to work.
fn machine_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let (all, idle) = ova_worker::spare_cpu::parse_proc_stat(&stat)?;
    Some(((all - idle) as f64 / 100.0, all as f64 / 100.0))
}

/// CPU time of this process so far: the peers' network work (the three workers' and the
/// client's drivers, QUIC, stores, signatures), not the units, which run in the executor
/// children. (`None` off Unix.)
fn own_cpu() -> Option<Duration> {
    #[cfg(unix)]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        Some(Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
    }
    #[cfg(not(unix))]
    None
}

/// The shortest of several timings of one measurement: other work on a shared machine only
/// ever slows a run down, so it is the one least disturbed by it.
fn best(secs: &[f64]) -> f64 {
    secs.iter().copied().fold(f64::INFINITY, f64::min)
}

fn machine_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The count under label `kind` of a metric family, summed over `workers`.
fn counted(
    workers: &[WorkerPeer],
    family: impl Fn(&Metrics) -> &Family<KindLabel, Counter>,
    kind: &'static str,
) -> u64 {
    let label = KindLabel { kind };
    workers.iter().map(|w| family(w.metrics()).get_or_create(&label).get()).sum()
}

/// Starts `WORKERS` workers and a client on 127.0.0.1, runs `warm_up` (untimed: a small job
/// of the same module, so the workers hold the module and its compiled code, as volunteers
/// who ran the job's first units do), then runs `bundle`, and returns the seconds from its
/// submission until every unit is verified and held by the submitter.
async fn run_on_network(warm_up: Bundle, bundle: Bundle, cores_each: u16) -> f64 {
    let tmp = tempfile::tempdir().unwrap();
    let mut workers: Vec<WorkerPeer> = Vec::new();
    for i in 0..WORKERS {
        let mut o = WorkerOptions::loopback(tmp.path().join(format!("w{i}")), cores_each).unwrap();
        if let Some(first) = workers.first() {
            o.node.bootstrap = vec![first.runtime().node().ticket()];
        }
        o.cache_dir = Some(tmp.path().join("compiled"));
        workers.push(WorkerPeer::start(o).await.unwrap());
    }
    let config = ClientConfig {
        endpoint: EndpointConfig::loopback(),
        ..ClientConfig::new(tmp.path().join("client"), vec![workers[0].runtime().node().ticket()])
    };
    let client = Client::connect(config).await.unwrap();
    client.wait_for_workers(WORKERS, Duration::from_secs(60)).await.expect("workers join");
    let w = warm_up.manifest().units.len() as u32;
    let s = client.submit(warm_up).await.unwrap().wait(Duration::from_secs(600)).await.unwrap();
    assert_eq!((s.verified, s.failed), (w, 0), "every warm-up unit verified");
    let n = bundle.manifest().units.len() as u32;
    let quorum = bundle.manifest().replication.quorum;
    let started = |workers: &[WorkerPeer]| -> u64 {
        workers.iter().map(|w| w.metrics().units_started.get()).sum()
    };
    let runs_before = started(&workers);
    // Small results sent to the submitter ahead of their commits, and left out because the
    // other replica's agreeing commit had brought them.
    let inline = |workers: &[WorkerPeer]| -> [u64; 2] {
        ["sent", "skipped"].map(|kind| counted(workers, |m| &m.inline_results, kind))
    };
    let inline_before = inline(&workers);
    // Protocol messages the workers received: all of them, and the claims among them.
    let messages = |workers: &[WorkerPeer]| -> [u64; 2] {
        let of = |kind| counted(workers, |m| &m.messages_received, kind);
        [ova_scheduler::MESSAGE_KINDS.into_iter().map(of).sum(), of("claim")]
    };
    let messages_before = messages(&workers);
    let sampler = timeline().then(|| {
        let metrics: Vec<_> = workers.iter().map(|w| w.metrics().clone()).collect();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let mut last = Vec::new();
            let mut cpu = machine_cpu();
            loop {
                let now: Vec<(u64, u64)> = metrics
                    .iter()
                    .map(|m| (m.units_started.get(), m.commits_published.get()))
                    .collect();
                let cpu_now = machine_cpu();
                let busy = match (cpu, cpu_now) {
                    (Some((b0, a0)), Some((b1, a1))) if a1 > a0 => {
                        format!("{:>3.0} %", 100.0 * (b1 - b0) / (a1 - a0))
                    }
                    _ => "    ".into(),
                };
                if now != last {
                    let t = t0.elapsed().as_secs_f64();
                    eprintln!("  t={t:>6.3} busy {busy} started/committed {now:?}");
                    last = now;
                    cpu = cpu_now;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });
    let cpu0 = machine_cpu();
    let own0 = own_cpu();
    perf_control("enable");
    let t0 = Instant::now();
    let mut job = client.submit(bundle).await.unwrap();
    let s = job.wait(Duration::from_secs(1800)).await.unwrap();
    let secs = t0.elapsed().as_secs_f64();
    perf_control("disable");
    let own = own_cpu().zip(own0).map(|(b, a)| (b - a).as_secs_f64());
    if let (Some((busy0, all0)), Some((busy1, all1))) = (cpu0, machine_cpu()) {
        println!(
            "  machine CPU busy {:.0} % of the run ({:.2} of {:.2} core-seconds, all processes)",
            100.0 * (busy1 - busy0) / (all1 - all0).max(1e-9),
            busy1 - busy0,
            all1 - all0
        );
    }
    if let Some(sampler) = sampler {
        sampler.abort();
        eprintln!("  t={secs:>6.3} every unit verified");
    }
    assert_eq!((s.verified, s.failed), (n, 0), "every unit verified");
    // Runs still going (extra replicas) when the job was verified are counted too.
    let runs = started(&workers) - runs_before;
    println!(
        "  {n} units, {runs} runs started ({:.3} per unit at quorum {quorum}; per worker: {:?})",
        runs as f64 / f64::from(n),
        workers.iter().map(|w| w.metrics().units_started.get()).collect::<Vec<_>>()
    );
    let [sent, skipped] = inline(&workers);
    println!(
        "  results sent to the submitter with their commits: {}, left out (the other replica's \
         had come): {}",
        sent - inline_before[0],
        skipped - inline_before[1]
    );
    let [all, claims] = messages(&workers);
    println!(
        "  protocol messages the workers received: {}, of which claims: {}",
        all - messages_before[0],
        claims - messages_before[1]
    );
    if let Some(own) = own {
        println!(
            "  the peers' network work (this process, not the units): {own:.3} core-seconds, \
             {:.0} µs per run",
            own * 1e6 / runs.max(1) as f64
        );
    }
    client.shutdown().await;
    for w in workers {
        w.shutdown().await;
    }
    secs
}

fn mandelbrot_job(module: &[u8], tiles: u32, tile_px: u32, quorum: u8) -> Bundle {
    let mut b = JobBuilder::new(format!("mandelbrot-q{quorum}"), module.to_vec())
        .quorum(quorum)
        .max_replicas(quorum + 1)
        .result_copies(0)
        .deadline_secs(120.0);
    for i in 0..tiles {
        b = b.unit_with_args(
            Vec::new(),
            ["--tile", &i.to_string(), "--tile-size", &tile_px.to_string()],
        );
    }
    b.build().unwrap()
}

/// A module that copies stdin to stdout (64-byte inputs).
fn echo_module() -> Vec<u8> {
    wat::parse_str(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_read" (func $r (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "_start")
            (i32.store (i32.const 0) (i32.const 64))
            (i32.store (i32.const 4) (i32.const 256))
            (drop (call $r (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
            (i32.store (i32.const 4) (i32.load (i32.const 16)))
            (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"#,
    )
    .unwrap()
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    // The workers run units in their supervised `ova-executor` child, found beside this
    // program (or `$OVA_EXECUTOR`). Without it they fall back to in-process execution with
    // epoch checks, a third slower on float kernels: say so, or the ratios mislead.
    let program = ova_worker::supervisor::find_executor();
    if ova_worker::supervisor::executor_available(&program) {
        println!("executor program: {}", program.display());
    } else {
        println!(
            "WARNING: executor program {} not found; workers run units in process with epoch \
             checks (slower than production). Run from the build's deps directory or set \
             OVA_EXECUTOR.",
            program.display()
        );
    }
    let cores = machine_cores();
    let cores_each = (cores / WORKERS).max(1) as u16;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let p3 = wanted("P3").then(|| p3(&rt, cores, cores_each));
    let p4 = wanted("P4").then(|| p4(&rt, cores_each));
    if let Some((q1, q2)) = p3 {
        println!("P3 q1 network/native={q1:.3}");
        println!("P3 q2 network/native={q2:.3}");
    }
    if let Some(p4) = p4 {
        println!("P4 verified units/s={p4:.0}");
    }
}

/// Mandelbrot tiles natively, then at quorum 1 and 2 on the network: the two ratios.
fn p3(rt: &tokio::runtime::Runtime, cores: usize, cores_each: u16) -> (f64, f64) {
    let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/wasm/mandelbrot.wasm");
    let module = std::fs::read(&wasm)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-examples.sh)", wasm.display()));
    let (tiles, tile_px) = if quick() { (64, 128) } else { (256, 64) };
    let mut view = mandelbrot::DEFAULT_VIEW;
    view.tile = tile_px;
    assert_eq!(view.tiles(), tiles);

    // Native: the same kernel with rayon on every core.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(cores).build().unwrap();
    let native = || {
        let t0 = Instant::now();
        let tiles_done: Vec<_> = pool.install(|| {
            (0..tiles).into_par_iter().map(|i| mandelbrot::render_tile(&view, i)).collect()
        });
        assert_eq!(tiles_done.len(), tiles as usize);
        t0.elapsed().as_secs_f64()
    };
    // Each side is timed `ROUNDS` times, interleaved (native, quorum 1, quorum 2, native, ...),
    // and its best time counts. Other work on a shared machine only ever slows a run down, so
    // the best of each is the estimate least disturbed by it, and interleaving spreads a slow
    // spell over both sides. (The network used to be timed once against the best of three
    // native runs: on one noisy afternoon of this VM, single runs of one build gave quorum 2
    // anywhere from 0.38 to 0.46.)
    let rounds = if quick() { 1 } else { ROUNDS };
    let mut native_secs = Vec::new();
    let mut network_secs: [Vec<f64>; 2] = Default::default();
    for round in 1..=rounds {
        native_secs.push(native());
        for (quorum, secs_of) in [1u8, 2].into_iter().zip(network_secs.iter_mut()) {
            // Warm-up: the same module with coarser tiles (other units, so nothing is reused).
            let warm_up = mandelbrot_job(&module, 4, 16, quorum);
            let job = mandelbrot_job(&module, tiles, tile_px, quorum);
            let secs = rt.block_on(run_on_network(warm_up, job, cores_each));
            println!(
                "P3 network quorum {quorum}, round {round}/{rounds}: {tiles} tiles verified in \
                 {secs:.2} s on {WORKERS} workers × {cores_each} core(s) = {:.1} tiles/s",
                f64::from(tiles) / secs
            );
            secs_of.push(secs);
        }
    }
    let times =
        |secs: &[f64]| secs.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(" / ");
    let native_best = best(&native_secs);
    println!(
        "P3 native: {tiles} tiles on {cores} cores in {} s; best {:.1} tiles/s",
        times(&native_secs),
        f64::from(tiles) / native_best
    );
    for (quorum, secs) in [1, 2].into_iter().zip(&network_secs) {
        println!(
            "P3 network quorum {quorum}: {} s; best {:.1} tiles/s",
            times(secs),
            f64::from(tiles) / best(secs)
        );
    }
    (native_best / best(&network_secs[0]), native_best / best(&network_secs[1]))
}

/// Tiny echo units verified end to end per second: the best of `ROUNDS` runs, each on a
/// fresh network, for the reason P3 takes its best times (other work on this shared machine
/// only ever slows a run down; single runs of one build ranged over a third).
fn p4(rt: &tokio::runtime::Runtime, cores_each: u16) -> f64 {
    let n: usize = if quick() { 500 } else { 5_000 };
    let rounds = if quick() { 1 } else { ROUNDS };
    let echo = echo_module();
    let job = |name: &str, from: usize, n: usize| {
        let mut b = JobBuilder::new(name, echo.clone()).quorum(2).max_replicas(3).result_copies(0);
        for i in from..from + n {
            let mut input = format!("{i:064}").into_bytes();
            input.truncate(64);
            b = b.unit(input);
        }
        b.build().unwrap()
    };
    let mut secs = Vec::new();
    for round in 1..=rounds {
        let s =
            rt.block_on(run_on_network(job("echo-warm-up", n, 10), job("echo", 0, n), cores_each));
        println!(
            "P4 network, round {round}/{rounds}: {n} tiny units verified (quorum 2) in {s:.3} s on \
             {WORKERS} workers = {:.0} units/s",
            n as f64 / s
        );
        secs.push(s);
    }
    let best = best(&secs);
    let rates: Vec<String> = secs.iter().map(|s| format!("{:.0}", n as f64 / s)).collect();
    println!("P4 network: {} units/s; best {:.0}", rates.join(" / "), n as f64 / best);
    n as f64 / best
}
