//! `ova-sim`: runs the scheduler simulator.
//!
//! ```text
//! ova-sim --scenario NAME [--seed N]   print one scenario's report
//! ova-sim --list                      list scenarios
//! ova-sim all [--seed N]               every scenario except the benchmark
//! ova-sim bench [--seed N] [--peers N] [--units N] [--churn N] [--owners F]
//!                                      the P5 benchmark (use --release); `--owners F`: a
//!                                      fraction F of the peers' owners take their cores back
//!                                      now and then (see `SimConfig::owners`)
//! ```
//!
//! `--threads N` (any mode): threads that handle the peers' calls of one lookahead window
//! side by side (default: the machine's cores). The reports are the same, byte for byte, for
//! any N.
//!
//! Debugging a stall: `OVA_SIM_DEBUG=1` prints what the peers know of up to a few units left
//! unresolved (`unit JOB:INDEX`); `OVA_SIM_WATCH=JOB:INDEX` then prints every change of that
//! unit's state at any peer, with the event behind it; `OVA_SIM_HORIZON=MS` ends a run early.
//!
//! It starts itself again with `MIMALLOC_PURGE_DELAY=-1` unless that is set (see
//! `keep_freed_memory`).

use std::process::ExitCode;
use std::time::Instant;

use ova_scheduler::sim::{SCENARIOS, Sim, scenario};

/// mimalloc, for two reasons measured on the P5 run. With helper threads, peer state is
/// allocated on one thread and freed on another, which made glibc's allocator cost a fifth
/// of every `Peer::handle` call; mimalloc frees across threads cheaply. And a large run
/// touches gigabytes of peer tables at random: mimalloc's arenas are backed by transparent
/// huge pages (seen in `AnonHugePages` on Linux with THP in `madvise` mode), which spares
/// TLB misses. The simulation does not depend on where memory lies, so reports are the same.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's option for how long freed memory stays with the process before it goes back to
/// the system, read from the environment when the process starts.
const PURGE_DELAY_VAR: &str = "MIMALLOC_PURGE_DELAY";

/// Runs this program again with mimalloc told never to give freed memory back (`-1`), unless
/// the caller chose a purge delay; returns only if that failed. Given back, the same memory
/// came back soon after as fresh pages the kernel zeroes again: on the P5 run that zeroing
/// was a tenth of the calling thread's samples. Keeping the memory, side by side: the P5 run
/// 131.5 and 119.6 s against 141.2 and 130.2 s, its first 400 simulated seconds 27.7–27.9 s against 30.4–32.8 s,
/// for 1 % more peak memory; the same run, byte for byte.
/// (The option is read once at start-up; setting it from inside would take `unsafe` FFI,
/// which the workspace forbids.)
#[cfg(unix)]
fn keep_freed_memory() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(PURGE_DELAY_VAR).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(PURGE_DELAY_VAR, "-1")
        .exec();
    eprintln!("ova-sim: could not start again with {PURGE_DELAY_VAR}=-1 ({err}); going on");
}

const USAGE: &str = "usage: ova-sim --scenario NAME [--seed N] | --list | all [--seed N] | bench [--seed N] [--peers N] [--units N] [--churn N] [--owners FRACTION]; any of them [--threads N] (threads that handle one lookahead window's peer calls; the run is the same for any N)";

/// A usage error: the usage on stderr, exit code 2.
fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    #[cfg(unix)]
    keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seed = 1u64;
    let mut name: Option<String> = None;
    let mut mode = "";
    let mut peers: Option<usize> = None;
    let mut units: Option<usize> = None;
    let mut churn: Option<usize> = None;
    let mut owners: Option<f64> = None;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut i = 0;
    while i < args.len() {
        let val = |i: usize| args.get(i + 1).cloned();
        match args[i].as_str() {
            "--scenario" => {
                name = val(i);
                i += 1;
            }
            "--seed" => {
                match val(i).and_then(|v| v.parse().ok()) {
                    Some(v) => seed = v,
                    None => return usage(),
                }
                i += 1;
            }
            "--peers" => {
                peers = val(i).and_then(|v| v.parse().ok());
                i += 1;
            }
            "--units" => {
                units = val(i).and_then(|v| v.parse().ok());
                i += 1;
            }
            "--churn" => {
                churn = val(i).and_then(|v| v.parse().ok());
                i += 1;
            }
            "--owners" => {
                match val(i).and_then(|v| v.parse().ok()) {
                    Some(v) => owners = Some(v),
                    None => return usage(),
                }
                i += 1;
            }
            "--threads" => {
                match val(i).and_then(|v| v.parse().ok()).filter(|&n| n > 0) {
                    Some(v) => threads = v,
                    None => return usage(),
                }
                i += 1;
            }
            "--list" => mode = "list",
            "all" => mode = "all",
            "bench" => mode = "bench",
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => return usage(),
        }
        i += 1;
    }
    match (mode, name) {
        ("list", _) => {
            for s in SCENARIOS {
                println!("{:18} {}", s.name, s.about);
            }
        }
        ("all", _) => {
            for s in SCENARIOS.iter().filter(|s| s.name != "bench") {
                let mut sim = Sim::new((s.config)(seed));
                sim.threads = threads;
                print!("{}", sim.run(s.name).render());
            }
        }
        ("bench", _) => {
            // Defaults: the P5 figures (10,000 peers, 1,000,000 units, churn).
            let mut cfg = (scenario("bench").expect("bench scenario").config)(seed);
            if let Some(p) = peers {
                cfg.peers = p;
            }
            if let Some(u) = units {
                cfg.units = u;
            }
            if let Some(c) = churn {
                cfg.churn_events = c;
            }
            if let Some(f) = owners {
                // As in the `owners` scenario: a switch about every two minutes.
                cfg.owners = Some((f, 120_000));
            }
            println!(
                "bench: peers={} units={} jobs={} churn_events={} quorum={} max_replicas={} seed={seed} threads={threads}",
                cfg.peers,
                cfg.units,
                cfg.jobs,
                cfg.churn_events,
                cfg.replication.quorum,
                cfg.replication.max_replicas
            );
            let t0 = Instant::now();
            let mut sim = Sim::new(cfg);
            sim.time_handle = true;
            sim.threads = threads;
            let setup = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            let r = sim.run("bench");
            let run = t1.elapsed().as_secs_f64();
            let secs = t0.elapsed().as_secs_f64();
            print!("{}", r.render());
            if std::env::var_os("OVA_SIM_DEBUG").is_some() {
                print!("{}", sim.describe_unresolved(3));
            }
            let (tracked, done) = sim.tracked_totals();
            println!(
                "  simulator: setup={setup:.1}s run={run:.1}s events={} events/s={:.0} handle_calls={} peak_rss={}",
                r.events,
                r.events as f64 / run.max(1e-9),
                sim.handle_calls,
                peak_rss().unwrap_or_else(|| "n/a".into())
            );
            if let Some(h) = sim.handle_seconds() {
                println!(
                    "  scheduler: cpu_in_Peer::handle={h:.1}s (sampled 1/8) per_unit={:.1}us per_call={:.2}us; \
                     whole simulator per unit={:.1}us; state at end: tracked={tracked} done_keys={done}",
                    h * 1e6 / r.units.max(1) as f64,
                    h * 1e6 / sim.handle_calls.max(1) as f64,
                    run * 1e6 / r.units.max(1) as f64
                );
            }
            let by_kind: Vec<String> = (sim.handle_time_by_kind().iter())
                .filter(|(_, share, _)| *share >= 0.001)
                .map(|(k, share, us)| format!("{k}={:.1}%/{us:.1}us", share * 100.0))
                .collect();
            if !by_kind.is_empty() {
                println!("  scheduler_cpu_by_event (share, per call): {}", by_kind.join(" "));
            }
            println!(
                "P5 peers={} units={} verified={} wrong_accepted={} waste={:.4} seconds={:.1}",
                r.peers, r.units, r.verified, r.wrong_accepted, r.waste, secs
            );
        }
        ("", Some(n)) => {
            let Some(s) = scenario(&n) else {
                eprintln!("unknown scenario {n:?}; try --list");
                return ExitCode::from(2);
            };
            let mut sim = Sim::new((s.config)(seed));
            sim.threads = threads;
            print!("{}", sim.run(s.name).render());
            if std::env::var_os("OVA_SIM_DEBUG").is_some() {
                print!("{}", sim.describe_unresolved(5));
            }
        }
        _ => return usage(),
    }
    ExitCode::SUCCESS
}

/// Peak resident set size of this process (Linux), e.g. "2.1GB".
fn peak_rss() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(format!("{:.2}GB", kb / (1024.0 * 1024.0)))
}
