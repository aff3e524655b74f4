//! `ova peers`: the peers a running worker knows, with spare cores, advert age and address.
//!
//! Talks to the worker's loopback control API (`GET /api/peers`), whose address the worker
//! writes to `DATA_DIR/control.addr` (see `ova_net::control`).

use std::process::ExitCode;

use clap::Args;
use ova_net::PeerInfo;
use ova_net::control;

use super::node::DataDirArg;

/// Options of `ova peers`.
#[derive(Args, Debug)]
pub struct PeersArgs {
    #[command(flatten)]
    data_dir: DataDirArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Show full node ids.
    #[arg(long)]
    full: bool,
}

/// Runs `ova peers`.
pub fn run(args: PeersArgs) -> anyhow::Result<ExitCode> {
    let dir = args.data_dir.resolve()?;
    let addr = control::read_control_addr(&dir)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let peers: Vec<PeerInfo> = rt.block_on(control::get_json(addr, "/api/peers"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&peers)?);
    } else {
        print!("{}", table(&peers, args.full));
    }
    Ok(ExitCode::SUCCESS)
}

/// The peers as a text table.
pub fn table(peers: &[PeerInfo], full: bool) -> String {
    let mut out = format!(
        "{:<18} {:>5} {:>4} {:>5} {:>5} {:<8} {:>7}  {}\n",
        "NODE", "SPARE", "BUSY", "QUEUE", "CORES", "ARCH", "AGE", "ADDRESS"
    );
    for p in peers {
        let id = if full { p.id.to_string() } else { p.id.fmt_short().to_string() };
        let addr =
            p.addrs.first().cloned().or_else(|| p.relay.clone()).unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<18} {:>5} {:>4} {:>5} {:>5} {:<8} {:>6.1}s  {}\n",
            id,
            p.capacity.spare_cores,
            p.capacity.busy_cores,
            p.capacity.queue_len,
            p.total_cores,
            p.arch.name(),
            p.age_ms as f64 / 1000.0,
            addr
        ));
    }
    out.push_str(&format!("{} peer(s)\n", peers.len()));
    out
}
