//! The one place Ova builds iroh endpoints.
//!
//! Three modes ([`NetMode`]):
//!
//! - [`NetMode::Loopback`] — tests and the demo. Nothing leaves the machine: crypto-only preset
//!   (`presets::Minimal`), relays disabled, no DNS/pkarr address lookup (only an in-memory
//!   table, [`MemoryLookup`]), a DNS resolver with no nameservers and fallback disabled, the
//!   default IP transports replaced by one socket on `127.0.0.1:0` (or the given loopback
//!   address), the port mapper off and a minimal net report (no HTTPS probes, no captive-portal
//!   check). Local discovery (mDNS) is never started in this mode.
//! - [`NetMode::Local`] — the default for `ova worker`: a LAN without any third-party service.
//!   Same as loopback (no relays, no DNS, no port mapper) but bound on all interfaces (or the
//!   `listen` address), and local discovery (mDNS) finds the other workers on the network.
//! - [`NetMode::Internet`] — real deployments across NATs: relays (n0's public ones, or the
//!   URLs given) for hole punching and fallback, DNS + pkarr address lookup so a bare node id
//!   is enough to connect, the port mapper on, plus mDNS for peers on the same LAN.
//!
//! Every mode adds a [`MemoryLookup`], into which ova-net writes the addresses it learns from
//! bootstrap tickets and signed adverts.

use std::net::{Ipv4Addr, SocketAddr};

use iroh::address_lookup::memory::MemoryLookup;
use iroh::address_lookup::{DnsAddressLookup, PkarrPublisher, PkarrResolver};
use iroh::dns::{DnsResolver, FallbackMode};
use iroh::endpoint::{PortmapperConfig, presets};
use iroh::{Endpoint, NetReportConfig, RelayMap, RelayMode, RelayUrl, SecretKey};

/// How an endpoint reaches other peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetMode {
    /// Loopback only: tests and the local demo. Contacts no relay, DNS server or LAN.
    Loopback,
    /// Local network only: direct addresses, bootstrap tickets and mDNS; no relay, no DNS.
    Local,
    /// The internet: relays for NAT traversal and DNS/pkarr address lookup.
    Internet {
        /// Relay servers to use; empty means n0's public relays.
        relays: Vec<RelayUrl>,
    },
}

impl NetMode {
    /// Whether this mode may use local-network (multicast) discovery at all.
    pub fn allows_local_discovery(&self) -> bool {
        !matches!(self, NetMode::Loopback)
    }
}

/// Configuration of the endpoint.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// How to reach others.
    pub mode: NetMode,
    /// The UDP socket to bind. `None`: `127.0.0.1:0` in loopback mode, all interfaces
    /// (IPv4 and IPv6, any port) otherwise.
    pub listen: Option<SocketAddr>,
}

impl EndpointConfig {
    /// Loopback only, on an ephemeral port of 127.0.0.1.
    pub fn loopback() -> Self {
        Self { mode: NetMode::Loopback, listen: None }
    }

    /// Local network only, on all interfaces.
    pub fn local() -> Self {
        Self { mode: NetMode::Local, listen: None }
    }
}

/// The endpoint could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The listen address is not allowed in this mode.
    #[error("listen address {0} is not a loopback address (loopback mode)")]
    NotLoopback(SocketAddr),
    /// iroh rejected the listen address.
    #[error("invalid listen address {addr}: {reason}")]
    InvalidListen {
        /// The address.
        addr: SocketAddr,
        /// iroh's reason.
        reason: String,
    },
    /// Binding failed.
    #[error("could not bind the endpoint: {0}")]
    Bind(String),
}

/// Builds and binds an endpoint for `config` with `secret_key` and the given ALPNs.
///
/// Returns the endpoint and the in-memory address table attached to it.
pub async fn bind(
    config: &EndpointConfig,
    secret_key: SecretKey,
    alpns: Vec<Vec<u8>>,
) -> Result<(Endpoint, MemoryLookup), EndpointError> {
    let memory = MemoryLookup::new();
    let mut builder = Endpoint::builder(presets::Minimal)
        .secret_key(secret_key)
        .alpns(alpns)
        .clear_address_lookup()
        .address_lookup(memory.clone());
    let listen = match (&config.mode, config.listen) {
        (NetMode::Loopback, Some(addr)) if !addr.ip().is_loopback() => {
            return Err(EndpointError::NotLoopback(addr));
        }
        (NetMode::Loopback, None) => Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
        (_, listen) => listen,
    };
    if let Some(addr) = listen {
        builder = builder
            .clear_ip_transports()
            .bind_addr(addr)
            .map_err(|e| EndpointError::InvalidListen { addr, reason: e.to_string() })?;
    }
    builder = match &config.mode {
        NetMode::Loopback | NetMode::Local => builder
            .relay_mode(RelayMode::Disabled)
            .portmapper_config(PortmapperConfig::Disabled)
            .net_report_config(NetReportConfig::minimal())
            .dns_resolver(no_dns()),
        NetMode::Internet { relays } => {
            let relay_mode = if relays.is_empty() {
                RelayMode::Default
            } else {
                RelayMode::Custom(relays.iter().cloned().collect::<RelayMap>())
            };
            builder
                .relay_mode(relay_mode)
                .address_lookup(PkarrPublisher::n0_dns())
                .address_lookup(PkarrResolver::n0_dns())
                .address_lookup(DnsAddressLookup::n0_dns())
        }
    };
    let endpoint = builder.bind().await.map_err(|e| EndpointError::Bind(e.to_string()))?;
    Ok((endpoint, memory))
}

/// A resolver with no nameservers and no fallback: every lookup fails without a packet sent.
fn no_dns() -> DnsResolver {
    DnsResolver::builder().with_fallback_mode(FallbackMode::Never).build()
}

/// Whether `endpoint` is reachable only through loopback addresses and has no relay.
///
/// Tests use it to check that [`NetMode::Loopback`] really keeps everything on the machine.
pub fn is_loopback_only(endpoint: &Endpoint) -> bool {
    let addr = endpoint.addr();
    addr.relay_urls().next().is_none()
        && addr.ip_addrs().all(|a| a.ip().is_loopback())
        && endpoint.bound_sockets().iter().all(|s| s.ip().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_endpoint_stays_on_loopback() {
        let (ep, _mem) =
            bind(&EndpointConfig::loopback(), SecretKey::generate(), vec![]).await.expect("bind");
        assert!(is_loopback_only(&ep), "addr {:?}", ep.addr());
        assert!(!ep.bound_sockets().is_empty());
        ep.close().await;
    }

    #[tokio::test]
    async fn loopback_mode_refuses_other_addresses() {
        let cfg = EndpointConfig {
            mode: NetMode::Loopback,
            listen: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))),
        };
        let err = bind(&cfg, SecretKey::generate(), vec![]).await.unwrap_err();
        assert!(matches!(err, EndpointError::NotLoopback(_)));
    }

    #[test]
    fn only_loopback_mode_forbids_local_discovery() {
        assert!(!NetMode::Loopback.allows_local_discovery());
        assert!(NetMode::Local.allows_local_discovery());
        assert!(NetMode::Internet { relays: vec![] }.allows_local_discovery());
    }
}
