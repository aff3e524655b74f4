//! `ova worker`: run a worker peer — join the network, offer spare CPU, run units.
//!
//! The worker ([`crate::peer::WorkerPeer`]) keeps its identity and store in the data
//! directory, runs the units the network places on it in the sandbox (a supervised
//! `ova-executor` process), signs and publishes their results, keeps copies of results it is
//! asked to hold, and checks others' results by quorum. Network modes: see [`super::net`].
//!
//! It samples CPU use every second and advertises
//! `spare = min(--cores, --cpu-limit share, cores not busy with other work)` (see
//! [`crate::spare_cpu`]); `--dedicated` always offers the cap. It serves `GET /api/node` and
//! `GET /api/peers` on a loopback control address written to `DATA_DIR/control.addr` (`ova
//! peers` and `ova job submit` read it), `/metrics` and the status page on `--metrics`, and
//! stops cleanly on Ctrl-C or SIGTERM (telling the others it leaves).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use iroh::EndpointId;
use ova_net::control::{self, ControlServer};
use ova_net::store::Durability;
use tracing::info;

use super::net::NetArgs;
use super::node::DataDirArg;
use crate::peer::{ExecutorChoice, WorkerOptions, WorkerPeer};
use crate::spare_cpu::SpareCpuConfig;

/// Options of `ova worker`.
#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    data_dir: DataDirArg,
    #[command(flatten)]
    net: NetArgs,
    /// Most cores to offer [default: all].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    cores: Option<u16>,
    /// Most share of the machine's CPU to use, in percent.
    #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(1..=100))]
    cpu_limit: Option<u8>,
    /// Offer cores only while the machine is otherwise idle.
    #[arg(long, conflicts_with = "dedicated")]
    idle_only: bool,
    /// Always offer the cap (`--cores`, `--cpu-limit`), whatever else the machine is doing.
    #[arg(long)]
    dedicated: bool,
    /// Only run jobs submitted by this node id (repeatable) [default: anyone's].
    #[arg(long = "allow", value_name = "NODE_ID")]
    allow: Vec<EndpointId>,
    /// Loopback address of the control API (`ova peers`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    control: SocketAddr,
    /// Serve Prometheus `/metrics` and the live status page `/` on this address.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Run units in this process with epoch checks instead of a supervised executor process.
    #[arg(long)]
    in_process: bool,
    /// Scheduling niceness of the processes that run units: 19 (the default) is the lowest
    /// priority, so your own programs take the CPU back at once; 0 runs units at your
    /// programs' priority.
    #[arg(long, value_name = "N", default_value_t = crate::peer::VOLUNTEER_NICE,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    nice: i32,
    /// What a stored result survives: `process` (the worker being killed; results are also
    /// held by other peers) or `disk` (a power cut too: an fsync per store commit).
    #[arg(long, value_name = "WHAT", default_value = "process")]
    durability: Durability,
    /// Seconds between capacity adverts.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    advert_interval: f64,
    /// Seconds peers keep our advert [default: 3.5 × the advert interval].
    #[arg(long, value_name = "SECS")]
    advert_ttl: Option<f64>,
}

fn secs(s: f64, what: &str) -> anyhow::Result<Duration> {
    anyhow::ensure!(s.is_finite() && s > 0.0 && s <= 86_400.0, "{what} must be in (0, 86400] s");
    Ok(Duration::from_secs_f64(s))
}

/// Sets up logging to stderr: `default` unless `RUST_LOG` says otherwise.
fn init_logging(default: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

/// Logging for the short client commands: warnings only.
pub fn init_logging_quiet() {
    init_logging("warn,iroh=error,iroh_gossip=error,noq=error");
}

/// Runs `ova worker` until Ctrl-C or SIGTERM.
pub fn run(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    init_logging("info,iroh=warn,iroh_gossip=warn,noq=warn");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

/// The worker's main loop.
async fn serve(args: WorkerArgs) -> anyhow::Result<()> {
    let dir = args.data_dir.resolve()?;
    let mut opts = WorkerOptions::new(&dir, args.net.endpoint()?)?;
    args.net.apply(&mut opts.node)?;
    let interval = secs(args.advert_interval, "--advert-interval")?;
    let ttl = match args.advert_ttl {
        Some(t) => secs(t, "--advert-ttl")?,
        None => interval.mul_f64(3.5),
    };
    opts.node.advert_interval = interval;
    opts.node.advert_ttl = ttl;
    opts.node.max_ttl = opts.node.max_ttl.max(ttl);
    opts.spare = SpareCpuConfig {
        cores: args.cores,
        cpu_limit_pct: args.cpu_limit,
        idle_only: args.idle_only,
        ..SpareCpuConfig::default()
    };
    opts.sense_load = !args.dedicated;
    opts.allowed_submitters = (!args.allow.is_empty()).then(|| args.allow.clone());
    opts.http = args.metrics;
    opts.durability = args.durability;
    opts.nice = args.nice;
    if args.in_process {
        opts.executor = ExecutorChoice::InProcess;
    }
    let peer = WorkerPeer::start(opts).await?;
    let node = peer.runtime().node().clone();
    let control =
        ControlServer::start(control::router(node.clone()), args.control, Some(&dir)).await?;
    println!("node id: {}", node.id());
    println!("ticket:  {}", node.ticket());
    println!("control: {}", control.addr());
    if let Some(m) = peer.http_addr() {
        println!("metrics: http://{m}/metrics  status page: http://{m}/");
    }
    println!("cores:   up to {}", peer.cap());

    let sig = shutdown_signal().await;
    info!("{sig}: shutting down");
    control.shutdown().await;
    peer.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM, with the signal's name.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "interrupted",
                _ = term.recv() => "terminated",
            },
            Err(_) => {
                tokio::signal::ctrl_c().await.ok();
                "interrupted"
            }
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.ok();
        "interrupted"
    }
}
