//! Network options shared by the commands that join the network (`ova worker`, `ova job
//! submit|status|results`).
//!
//! Modes (`--net`): `local` (default; LAN only: direct addresses, `--bootstrap` tickets and
//! mDNS; no relay or DNS server is contacted), `internet` (n0's public relays, or `--relay
//! URL`, for NAT traversal, and DNS/pkarr address lookup, plus mDNS), and `loopback`
//! (127.0.0.1 only, no discovery: tests and the demo). See `ova_net::endpoint`.

use std::net::SocketAddr;

use clap::{Args, ValueEnum};
use iroh::RelayUrl;
use ova_net::{EndpointConfig, NetMode, NodeConfig, NodeTicket};

/// How to reach other peers.
#[derive(Args, Debug, Clone)]
pub struct NetArgs {
    /// How to reach other peers.
    #[arg(long, value_enum, default_value_t = NetArg::Local)]
    pub net: NetArg,
    /// UDP address to listen on [default: all interfaces, any port; 127.0.0.1 in loopback].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// A peer to join through: a ticket (`ova node ticket`), NODE_ID@IP:PORT, or a NODE_ID
    /// (needs mDNS or DNS to resolve). Repeatable.
    #[arg(long = "bootstrap", short = 'b', value_name = "TICKET")]
    pub bootstrap: Vec<NodeTicket>,
    /// Relay server for `--net internet` (repeatable) [default: n0's public relays].
    #[arg(long = "relay", value_name = "URL")]
    pub relays: Vec<RelayUrl>,
    /// Do not run local-network discovery (mDNS).
    #[arg(long)]
    pub no_mdns: bool,
    /// Name of the Ova network to join (peers on other networks are invisible).
    #[arg(long, default_value = "ova", value_name = "NAME")]
    pub network: String,
    /// Shared secret of a private network: peers without it can neither join nor submit.
    /// Also read from $OVA_NETWORK_SECRET.
    #[arg(long, env = "OVA_NETWORK_SECRET", value_name = "SECRET", hide_env_values = true)]
    pub network_secret: Option<String>,
}

/// `--net` values.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetArg {
    /// 127.0.0.1 only: tests and demos. No discovery, relay or DNS.
    Loopback,
    /// The local network: direct addresses, tickets and mDNS. No relay or DNS.
    Local,
    /// The internet: relays and DNS address lookup (plus mDNS).
    Internet,
}

impl NetArgs {
    /// The endpoint configuration these options ask for.
    pub fn endpoint(&self) -> anyhow::Result<EndpointConfig> {
        anyhow::ensure!(
            self.relays.is_empty() || self.net == NetArg::Internet,
            "--relay only applies to --net internet"
        );
        let mode = match self.net {
            NetArg::Loopback => NetMode::Loopback,
            NetArg::Local => NetMode::Local,
            NetArg::Internet => NetMode::Internet { relays: self.relays.clone() },
        };
        Ok(EndpointConfig { mode, listen: self.listen })
    }

    /// Applies the network name, secret, bootstrap peers and discovery to `config`.
    pub fn apply(&self, config: &mut NodeConfig) -> anyhow::Result<()> {
        if let Some(s) = &self.network_secret {
            anyhow::ensure!(s.len() >= 16, "--network-secret must be at least 16 characters");
        }
        config.network = self.network.clone();
        config.network_secret = self.network_secret.clone();
        config.bootstrap = self.bootstrap.clone();
        config.local_discovery = !self.no_mdns;
        Ok(())
    }
}
