//! `ova run job.ova`: runs a bundle's units locally on the executor pool.
//!
//! Results go to a directory (default `JOB.results/` beside the bundle): `unit-NNNNN.out`
//! holds a unit's stdout, `unit-NNNNN.err` its stderr (when not empty), and `summary.tsv` one
//! line per unit (index, unit id, outcome kind, result hash, microseconds, message). A summary
//! follows on the terminal: units/s, CPU-seconds, failures by kind.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::peer::default_cache_dir;
use crate::supervisor::{executor_available, find_executor};
use crate::{
    Executor, ModuleSource, PoolExecutor, Sandbox, SandboxConfig, ShardedExecutor,
    SupervisorConfig, UnitRequest,
};
use anyhow::Context;
use ova_jobs::{Bundle, OutcomeKind, UnitResult};

/// Arguments of `ova run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The job bundle (made by `ova job pack`).
    pub bundle: PathBuf,
    /// Cores to use (default: all).
    #[arg(long)]
    pub cores: Option<usize>,
    /// Directory for results (default: JOB.results beside the bundle).
    #[arg(short = 'o', long = "out")]
    pub out: Option<PathBuf>,
    /// Compiled-code cache directory (default: ~/.cache/ova/compiled).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Run units in this process with epoch checks on every unit, instead of in a supervised
    /// executor process (slower on tight loops; for debugging).
    #[arg(long)]
    pub in_process: bool,
    /// Hide the progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Runs `ova run`.
pub fn run(args: RunArgs) -> anyhow::Result<std::process::ExitCode> {
    let bundle = Bundle::read_file(&args.bundle)
        .with_context(|| format!("reading {}", args.bundle.display()))?;
    let manifest = bundle.manifest();
    let cores = args
        .cores
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let out_dir = args.out.clone().unwrap_or_else(|| args.bundle.with_extension("results"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let cache_dir = args.cache_dir.clone().or_else(default_cache_dir);

    let program = find_executor();
    let executor: Box<dyn Executor> = if !args.in_process && executor_available(&program) {
        let mut config = SupervisorConfig::new(cores);
        config.program = program;
        config.cache_dir = cache_dir;
        Box::new(ShardedExecutor::start(config).context("starting the executor processes")?)
    } else {
        if !args.in_process {
            eprintln!(
                "warning: {} not found; running units in process with epoch checks",
                program.display()
            );
        }
        let config = SandboxConfig {
            slots: SandboxConfig::slots_for(cores),
            cache_dir,
            ..Default::default()
        };
        Box::new(PoolExecutor::new(cores, Arc::new(Sandbox::new(config)?))?.guard_all(true))
    };

    let n = manifest.units.len();
    println!(
        "job {} ({}): {n} units on {cores} cores, deadline {} ms, {:?}{}",
        manifest.name,
        bundle.job_id().short(),
        manifest.limits.deadline_ms,
        manifest.determinism,
        manifest.limits.fuel.map(|f| format!(", fuel {f}")).unwrap_or_default()
    );
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(n as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} units  {per_sec}  eta {eta}  {msg}",
        )
        .expect("valid template"),
    );

    let module = ModuleSource::new(bundle.module().to_vec());
    let (tx, rx) = std::sync::mpsc::channel::<(usize, UnitResult)>();
    let submit = |i: usize| {
        let tx = tx.clone();
        let req = UnitRequest::from_bundle(&bundle, i, &module);
        executor.submit(req, Box::new(move |r| drop(tx.send((i, r)))));
    };
    // Keep a bounded window of units in flight.
    let window = (cores * 4).min(n);
    let t0 = Instant::now();
    for i in 0..window {
        submit(i);
    }
    let mut next = window;
    let mut kinds: BTreeMap<OutcomeKind, usize> = BTreeMap::new();
    let mut rows = vec![String::new(); n];
    let mut cpu_micros = 0u64;
    for _ in 0..n {
        let (i, r) = rx.recv().context("the executor stopped")?;
        if next < n {
            submit(next);
            next += 1;
        }
        cpu_micros += r.wall_micros;
        *kinds.entry(r.outcome.kind()).or_default() += 1;
        if !r.stdout.is_empty() {
            std::fs::write(out_dir.join(format!("unit-{i:05}.out")), &r.stdout)?;
        }
        if !r.stderr.is_empty() {
            std::fs::write(out_dir.join(format!("unit-{i:05}.err")), &r.stderr)?;
        }
        rows[i] = format!(
            "{i}\t{}\t{}\t{}\t{}\t{}",
            r.unit,
            r.outcome.kind(),
            r.result_hash.map(|h| h.to_string()).unwrap_or_else(|| "-".into()),
            r.wall_micros,
            r.outcome
        );
        let failures = n_failures(&kinds);
        if failures > 0 {
            bar.set_message(format!("{failures} failed"));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let wall = t0.elapsed().as_secs_f64();
    let mut summary = std::fs::File::create(out_dir.join("summary.tsv"))?;
    writeln!(summary, "index\tunit\toutcome\tresult_hash\tmicros\tmessage")?;
    for row in rows {
        writeln!(summary, "{row}")?;
    }

    let cpu = cpu_micros as f64 / 1e6;
    println!(
        "{n} units in {wall:.2} s: {:.1} units/s, {cpu:.2} CPU-seconds ({:.0}% of {cores} cores)",
        n as f64 / wall,
        100.0 * cpu / (wall * cores as f64)
    );
    let by_kind: Vec<String> = kinds.iter().map(|(k, c)| format!("{k}: {c}")).collect();
    println!("outcomes: {}", by_kind.join(", "));
    println!("results in {}", out_dir.display());
    let failures = n_failures(&kinds);
    if failures > 0 {
        eprintln!(
            "{failures} of {n} units did not succeed (see {}/summary.tsv)",
            out_dir.display()
        );
        return Ok(std::process::ExitCode::FAILURE);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn n_failures(kinds: &BTreeMap<OutcomeKind, usize>) -> usize {
    kinds.iter().filter(|(k, _)| **k != OutcomeKind::Success).map(|(_, c)| c).sum()
}
