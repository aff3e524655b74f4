//! `ova node id` / `ova node ticket`: how others can join this node.
//!
//! Both read the node key from the data dir (creating it on first use, so the id is known
//! before the worker first runs). The ticket needs the worker's live addresses, so it asks the
//! running worker's control API; `ova node ticket --listen ADDR` instead builds an
//! `ID@ADDR` ticket for a worker you will start with `--listen ADDR`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use ova_net::control::{self, NodeStatus};
use ova_net::{NodeTicket, identity};

/// Node identity commands.
#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Print this node's id (its ed25519 public key): its name in logs, metrics and tables.
    Id(DataDirArg),
    /// Print a ticket others pass to `ova worker --bootstrap` to join through this node.
    ///
    /// Asks the running worker for its current addresses; with `--listen` it needs no running
    /// worker and prints `NODE_ID@ADDR`.
    Ticket {
        #[command(flatten)]
        data_dir: DataDirArg,
        /// The address the worker listens on (`ova worker --listen`), if it is not running.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
}

/// The `--data-dir` option shared by the network commands.
#[derive(Args, Debug, Clone)]
pub struct DataDirArg {
    /// Where the node keeps its key and state [default: $OVA_DATA_DIR, else
    /// $XDG_DATA_HOME/ova, else ~/.local/share/ova].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl DataDirArg {
    /// The data dir to use.
    pub fn resolve(&self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.data_dir {
            return Ok(d.clone());
        }
        if let Some(d) = std::env::var_os("OVA_DATA_DIR") {
            return Ok(PathBuf::from(d));
        }
        if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
            return Ok(PathBuf::from(d).join("ova"));
        }
        let home = std::env::var_os("HOME").context("no --data-dir given and $HOME is not set")?;
        Ok(PathBuf::from(home).join(".local/share/ova"))
    }
}

/// Runs a `node` subcommand.
pub fn run(cmd: NodeCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        NodeCommand::Id(d) => {
            let dir = d.resolve()?;
            let key = identity::load_or_create(&dir)?;
            println!("{}", key.public());
        }
        NodeCommand::Ticket { data_dir, listen } => {
            let dir = data_dir.resolve()?;
            let key = identity::load_or_create(&dir)?;
            if let Some(addr) = listen {
                let t = NodeTicket { id: key.public(), addrs: vec![addr], relay: None };
                println!("{}@{addr}", t.id);
                return Ok(ExitCode::SUCCESS);
            }
            let addr = control::read_control_addr(&dir)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let status: NodeStatus = rt.block_on(control::get_json(addr, "/api/node"))?;
            anyhow::ensure!(
                status.id == key.public(),
                "the worker at {addr} is node {}, not this data dir's {}",
                status.id,
                key.public()
            );
            println!("{}", status.ticket);
        }
    }
    Ok(ExitCode::SUCCESS)
}
