//! `ova worker`: run a node — join the network, advertise spare CPU, serve the control API.
//!
//! Network modes (`--net`): `local` (default; LAN only: direct addresses, `--bootstrap`
//! tickets and mDNS; no relay or DNS server is contacted), `internet` (n0's public relays, or
//! `--relay URL`, for NAT traversal, and DNS/pkarr address lookup, plus mDNS), and `loopback`
//! (127.0.0.1 only, no discovery: tests and the demo). See `ova_net::endpoint`.
//!
//! The worker samples CPU use every second and advertises
//! `spare = min(--cores, --cpu-limit share, cores not busy with other work)` (see
//! [`crate::spare_cpu`]). It serves `GET /api/node` and `GET /api/peers` on a loopback control
//! address written to `DATA_DIR/control.addr` (`ova peers` reads it), and stops cleanly on
//! Ctrl-C or SIGTERM (telling the others it leaves).
//!
//! Seam to the scheduler: the loop in [`serve`] receives every [`NetEvent`]; driving
//! `ova_scheduler::Peer` means feeding those to it and carrying its actions out with
//! `Node::broadcast` / `Node::send` (mapping in `ova_net`'s crate docs). Until the executor
//! and blob transfer are wired, the worker only logs them.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use iroh::RelayUrl;
use ova_net::control::{self, ControlServer};
use ova_net::{
    Capacity, EndpointConfig, NetEvent, NetMode, Node, NodeConfig, NodeTicket, identity,
};
use tracing::{debug, info, warn};

use super::node::DataDirArg;
use crate::spare_cpu::{self, SpareCpu, SpareCpuConfig};

/// Options of `ova worker`.
#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    data_dir: DataDirArg,
    /// How to reach other peers.
    #[arg(long, value_enum, default_value_t = NetArg::Local)]
    net: NetArg,
    /// UDP address to listen on [default: all interfaces, any port; 127.0.0.1 in loopback].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// A peer to join through: a ticket (`ova node ticket`), NODE_ID@IP:PORT, or a NODE_ID
    /// (needs mDNS or DNS to resolve). Repeatable.
    #[arg(long = "bootstrap", short = 'b', value_name = "TICKET")]
    bootstrap: Vec<NodeTicket>,
    /// Relay server for `--net internet` (repeatable) [default: n0's public relays].
    #[arg(long = "relay", value_name = "URL")]
    relays: Vec<RelayUrl>,
    /// Do not run local-network discovery (mDNS).
    #[arg(long)]
    no_mdns: bool,
    /// Name of the Ova network to join (peers on other networks are invisible).
    #[arg(long, default_value = "ova", value_name = "NAME")]
    network: String,
    /// Most cores to offer [default: all].
    #[arg(long, value_name = "N")]
    cores: Option<u16>,
    /// Most share of the machine's CPU to use, in percent.
    #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(1..=100))]
    cpu_limit: Option<u8>,
    /// Offer cores only while the machine is otherwise idle.
    #[arg(long)]
    idle_only: bool,
    /// Loopback address of the control API (`ova peers`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    control: SocketAddr,
    /// Address for Prometheus metrics (reserved; served by a later release).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Seconds between capacity adverts.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    advert_interval: f64,
    /// Seconds peers keep our advert [default: 3.5 × the advert interval].
    #[arg(long, value_name = "SECS")]
    advert_ttl: Option<f64>,
}

/// `--net` values.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum NetArg {
    /// 127.0.0.1 only: tests and demos. No discovery, relay or DNS.
    Loopback,
    /// The local network: direct addresses, tickets and mDNS. No relay or DNS.
    Local,
    /// The internet: relays and DNS address lookup (plus mDNS).
    Internet,
}

fn secs(s: f64, what: &str) -> anyhow::Result<Duration> {
    anyhow::ensure!(s.is_finite() && s > 0.0 && s <= 86_400.0, "{what} must be in (0, 86400] s");
    Ok(Duration::from_secs_f64(s))
}

/// Runs `ova worker` until Ctrl-C or SIGTERM.
pub fn run(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,iroh=warn,iroh_gossip=warn,noq=warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

/// The worker's main loop.
async fn serve(args: WorkerArgs) -> anyhow::Result<()> {
    let dir = args.data_dir.resolve()?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = identity::load_or_create(&dir)?;
    let mode = match args.net {
        NetArg::Loopback => NetMode::Loopback,
        NetArg::Local => NetMode::Local,
        NetArg::Internet => NetMode::Internet { relays: args.relays.clone() },
    };
    anyhow::ensure!(
        args.relays.is_empty() || args.net == NetArg::Internet,
        "--relay only applies to --net internet"
    );
    let interval = secs(args.advert_interval, "--advert-interval")?;
    let ttl = match args.advert_ttl {
        Some(t) => secs(t, "--advert-ttl")?,
        None => interval.mul_f64(3.5),
    };
    let mut config = NodeConfig::new(key, EndpointConfig { mode, listen: args.listen });
    config.network = args.network.clone();
    config.bootstrap = args.bootstrap.clone();
    config.local_discovery = !args.no_mdns;
    config.advert_interval = interval;
    config.advert_ttl = ttl;
    config.max_ttl = config.max_ttl.max(ttl);
    let spare_config = SpareCpuConfig {
        cores: args.cores,
        cpu_limit_pct: args.cpu_limit,
        idle_only: args.idle_only,
        ..SpareCpuConfig::default()
    };
    let mut spare = SpareCpu::new(spare_config, config.total_cores);
    // Advertise nothing until the first measurement says what is free.
    config.capacity = Capacity { spare_cores: 0, busy_cores: 0, queue_len: 0 };

    let node = Node::spawn(config).await?;
    if let Some(m) = args.metrics {
        warn!(addr = %m, "--metrics is reserved: metrics are not served by this version yet");
    }
    let control =
        ControlServer::start(control::router(node.clone()), args.control, Some(&dir)).await?;
    println!("node id: {}", node.id());
    println!("ticket:  {}", node.ticket());
    println!("control: {}", control.addr());
    info!(node = %node.id(), data_dir = %dir.display(), cap = spare.cap(), "worker running");

    let mut events = node.take_events().context("events already taken")?;
    let mut sample_tick = tokio::time::interval(Duration::from_secs(1));
    sample_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            sig = &mut shutdown => {
                info!("{sig}: shutting down");
                break;
            }
            _ = sample_tick.tick() => {
                // Our own process; executor child processes join this list once wired.
                match spare_cpu::read_sample(&[]) {
                    Ok(s) => {
                        if let Some(n) = spare.update(s) {
                            info!(spare = n, other_busy = ?spare.other_busy(), "spare cores changed");
                            let c = node.capacity();
                            node.set_capacity(Capacity { spare_cores: n, ..c });
                        }
                    }
                    Err(e) => debug!("cannot sample CPU use: {e}"),
                }
            }
            ev = events.recv() => match ev {
                Some(ev) => on_event(&ev),
                None => break,
            },
        }
    }
    control.shutdown().await;
    node.shutdown().await;
    Ok(())
}

/// Where the scheduler core will be driven from (see the module docs).
fn on_event(ev: &NetEvent) {
    match ev {
        NetEvent::Advert { from, advert, joined: true } => {
            info!(peer = %from.fmt_short(), spare = advert.capacity.spare_cores, "peer joined")
        }
        NetEvent::PeerExpired(id) => info!(peer = %id.fmt_short(), "peer expired"),
        NetEvent::PeerLeft(id) => info!(peer = %id.fmt_short(), "peer left"),
        other => debug!(?other, "network event"),
    }
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
