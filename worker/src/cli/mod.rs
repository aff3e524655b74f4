//! The `ova` command line: one module per command group.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
mod format;
mod job;
mod net;
mod node;
mod peers;
mod run;
mod submit;
mod worker;

/// Ova: peer-to-peer volunteer computing on WebAssembly.
///
/// Scientists pack work into job bundles and submit them; volunteers' workers run the units in a
/// wasm sandbox; results are replicated and verified by quorum across peers, with no central
/// server.
#[derive(Parser, Debug)]
#[command(name = "ova", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Pack and inspect job bundles; submit them to the network and fetch their results.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Run a bundle's units locally on this machine's cores.
    Run(run::RunArgs),
    /// Run a worker node: join the network and offer this machine's spare CPU.
    Worker(worker::WorkerArgs),
    /// List the peers the running worker knows (spare cores, advert age, address).
    Peers(peers::PeersArgs),
    /// Show this node's id or a ticket others can join with.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Start a local network of workers on 127.0.0.1, submit a bundle to it, verify the
    /// results by quorum, print throughput, and stop everything.
    Demo(demo::DemoArgs),
}

/// Parses the command line, runs the command and maps errors to a non-zero exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Job(cmd) => job::run(cmd),
        Command::Run(args) => run::run(args),
        Command::Worker(args) => worker::run(args),
        Command::Peers(args) => peers::run(args),
        Command::Node(cmd) => node::run(cmd),
        Command::Demo(args) => demo::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
