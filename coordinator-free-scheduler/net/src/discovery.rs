//! Local-network discovery: two workers on one LAN find each other with no flags.
//!
//! iroh 1.x keeps mDNS out of the core crate; the crate it points to is
//! `iroh-mdns-address-lookup` (built on `swarm-discovery`). We register it as an address
//! lookup on the endpoint, under Ova's own service name ([`MDNS_SERVICE`]) so only Ova nodes
//! answer, and subscribe to its events. Each newly discovered node goes through the *discovery
//! hook* — [`crate::Node::discovered`] — which records its address and asks gossip to join it;
//! tests drive the same hook directly on loopback, where multicast is never started.
//!
//! Multicast leaves on every interface the host has, so it is only started in
//! [`crate::NetMode::Local`] and [`crate::NetMode::Internet`], never in loopback mode; the
//! discovery test runs workers in network namespaces it creates.

use iroh::{Endpoint, EndpointAddr, EndpointId};
use iroh_mdns_address_lookup::{DiscoveryEvent, MdnsAddressLookup};
use n0_future::{Stream, StreamExt};

/// The mDNS service name Ova nodes advertise and look for.
pub const MDNS_SERVICE: &str = "ova1";

/// Local discovery could not start.
#[derive(Debug, thiserror::Error)]
#[error("local discovery (mDNS) could not start: {0}")]
pub struct DiscoveryError(String);

/// A running mDNS discovery service.
#[derive(Debug, Clone)]
pub struct LocalDiscovery {
    mdns: MdnsAddressLookup,
}

impl LocalDiscovery {
    /// Starts mDNS for `endpoint` and registers it as one of its address lookups.
    pub fn start(endpoint: &Endpoint) -> Result<Self, DiscoveryError> {
        let mdns = MdnsAddressLookup::builder()
            .service_name(MDNS_SERVICE)
            .build(endpoint.id())
            .map_err(|e| DiscoveryError(e.to_string()))?;
        endpoint.address_lookup().map_err(|e| DiscoveryError(e.to_string()))?.add(mdns.clone());
        Ok(Self { mdns })
    }

    /// The stream of nodes discovered (not including `me`).
    pub async fn discovered(
        &self,
        me: EndpointId,
    ) -> impl Stream<Item = EndpointAddr> + Unpin + use<> {
        self.mdns.subscribe().await.filter_map(move |ev| discovered_peer(&ev, me))
    }
}

/// The node a discovery event announces, if it is a newly found other node.
pub fn discovered_peer(event: &DiscoveryEvent, me: EndpointId) -> Option<EndpointAddr> {
    match event {
        DiscoveryEvent::Discovered { endpoint_info, .. } if endpoint_info.endpoint_id != me => {
            Some(endpoint_info.to_endpoint_addr())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use iroh::SecretKey;
    use iroh::address_lookup::EndpointInfo;

    use super::*;

    #[test]
    fn only_other_nodes_discoveries_count() {
        let me = SecretKey::generate().public();
        let other = SecretKey::generate().public();
        let info =
            |id| EndpointInfo::new(id).with_ip_addrs(["10.0.0.2:4000".parse().unwrap()].into());
        let found = discovered_peer(
            &DiscoveryEvent::Discovered { endpoint_info: info(other), last_updated: None },
            me,
        )
        .unwrap();
        assert_eq!(found.id, other);
        assert_eq!(found.ip_addrs().count(), 1);
        assert!(
            discovered_peer(
                &DiscoveryEvent::Discovered { endpoint_info: info(me), last_updated: None },
                me
            )
            .is_none()
        );
        assert!(discovered_peer(&DiscoveryEvent::Expired { endpoint_id: other }, me).is_none());
    }
}
