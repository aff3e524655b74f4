//! `ova demo`: a whole Ova network on this machine, for seeing it work.
//!
//! Starts `--workers` worker peers on 127.0.0.1 (each with its own identity, store and
//! supervised executor process, as `ova worker --net loopback` would), then a submitter (the
//! SDK client) that joins through the first, submits the bundle, follows it to the end with
//! a progress bar, checks every result from the signed records, writes the results, prints
//! throughput, and stops everything it started. Nothing leaves 127.0.0.1.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use ova_jobs::Bundle;
use ova_net::endpoint::EndpointConfig;
use ova_sdk::{Client, ClientConfig};

use super::submit;
use crate::peer::{WorkerOptions, WorkerPeer};

/// Options of `ova demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// The job bundle to run (e.g. the Mandelbrot example packed by `ova job pack`).
    bundle: PathBuf,
    /// Worker peers to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// Cores each worker offers [default: this machine's cores ÷ workers, at least 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    cores: Option<u16>,
    /// Distinct workers that must agree on each result.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..))]
    quorum: u8,
    /// Directory for the results (`unit-NNNNN.out`, `summary.tsv`).
    #[arg(short = 'o', long = "out", value_name = "DIR")]
    out: PathBuf,
    /// Serve each worker's metrics and status page, on consecutive ports from this one
    /// (0: any free ports).
    #[arg(long, value_name = "PORT")]
    metrics_port: Option<u16>,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    timeout: u64,
    /// Hide the progress bar.
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// Runs `ova demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    super::worker::init_logging_quiet();
    let bundle = Bundle::read_file(&args.bundle)
        .with_context(|| format!("reading {}", args.bundle.display()))?;
    let (mut m, blobs) = bundle.into_parts();
    m.replication.quorum = args.quorum;
    m.replication.max_replicas = m.replication.max_replicas.max(args.quorum.saturating_add(1));
    anyhow::ensure!(
        u16::from(args.quorum) <= args.workers,
        "quorum {} needs at least that many workers (--workers {})",
        args.quorum,
        args.workers
    );
    let bundle = Bundle::new(m, blobs.into_values())?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(demo(args, bundle))
}

async fn demo(args: DemoArgs, bundle: Bundle) -> anyhow::Result<ExitCode> {
    let tmp = tempfile::Builder::new().prefix("ova-demo-").tempdir()?;
    let machine = std::thread::available_parallelism().map_or(1, |n| n.get()) as u16;
    let cores = args.cores.unwrap_or((machine / args.workers).max(1));
    println!(
        "starting {} workers on 127.0.0.1 ({} core{} each) and a submitter",
        args.workers,
        cores,
        if cores == 1 { "" } else { "s" }
    );
    let mut workers: Vec<WorkerPeer> = Vec::new();
    let result = async {
        for i in 0..args.workers {
            let mut opts = WorkerOptions::loopback(tmp.path().join(format!("worker-{i}")), cores)?;
            if let Some(first) = workers.first() {
                opts.node.bootstrap = vec![first.runtime().node().ticket()];
            }
            opts.http = args.metrics_port.map(|p| {
                let port = if p == 0 { 0 } else { p.saturating_add(i) };
                std::net::SocketAddr::from(([127, 0, 0, 1], port))
            });
            let w =
                WorkerPeer::start(opts).await.with_context(|| format!("starting worker {i}"))?;
            match w.http_addr() {
                Some(a) => println!(
                    "  worker {i}: {}  status page http://{a}/",
                    w.runtime().node().id().fmt_short()
                ),
                None => println!("  worker {i}: {}", w.runtime().node().id().fmt_short()),
            }
            workers.push(w);
        }
        let mut config = ClientConfig::new(
            tmp.path().join("submitter"),
            vec![workers[0].runtime().node().ticket()],
        );
        config.endpoint = EndpointConfig::loopback();
        let client = Client::connect(config).await?;
        let outcome = run_job(&args, &client, bundle, workers.len()).await;
        client.shutdown().await;
        outcome
    }
    .await;
    for w in workers {
        w.shutdown().await;
    }
    result
}

async fn run_job(
    args: &DemoArgs,
    client: &Client,
    bundle: Bundle,
    workers: usize,
) -> anyhow::Result<ExitCode> {
    client
        .wait_for_workers(workers, Duration::from_secs(30))
        .await
        .context("the workers did not all join")?;

    let m = bundle.manifest().clone();
    println!(
        "submitting {} ({} units, quorum {}, job {})",
        m.name,
        m.units.len(),
        m.replication.quorum,
        bundle.job_id().short()
    );
    let t0 = Instant::now();
    let mut job = client.submit(bundle).await?;
    let summary =
        submit::follow(&mut job, client, Duration::from_secs(args.timeout), args.quiet).await?;
    let wall = t0.elapsed().as_secs_f64();
    let code = submit::report(&job, Some(&args.out))?;
    let check = job.verify()?;
    println!(
        "{} of {} units verified by quorum {} in {wall:.2} s: {:.1} units/s ({:.1} unit runs/s \
         across {workers} workers)",
        summary.verified,
        summary.units,
        m.replication.quorum,
        f64::from(summary.verified) / wall,
        f64::from(summary.verified) * f64::from(m.replication.quorum) / wall
    );
    println!(
        "re-checked from signed records: {} of {} units verified, {} problems",
        check.verified,
        check.units,
        check.problems.len()
    );
    for p in check.problems.iter().take(5) {
        eprintln!("problem: {p}");
    }
    submit::print_dissenters(&check);
    if !check.problems.is_empty() || summary.failed > 0 {
        return Ok(ExitCode::FAILURE);
    }
    Ok(code)
}
