//! Tickets: the text a node prints so others can join it (`ova node ticket`).
//!
//! A ticket is `ova` followed by lowercase base32 of a wire-encoded (node id, direct
//! addresses, home relay). [`NodeTicket::from_str`] also accepts the shorter forms a person may
//! type: `NODE_ID@IP:PORT[,IP:PORT…]`, or a bare `NODE_ID` (which needs an address lookup —
//! mDNS on a LAN, DNS in internet mode — to be reachable).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use iroh::{EndpointAddr, EndpointId, RelayUrl, TransportAddr};
use ova_jobs::wire;
use serde::{Deserialize, Serialize};

use crate::advert::{MAX_ADVERT_ADDRS, MAX_RELAY_URL_LEN};

const PREFIX: &str = "ova";
const MAX_TICKET_BYTES: usize = 1024;

/// How to reach a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTicket {
    /// Its id.
    pub id: EndpointId,
    /// Its direct addresses.
    pub addrs: Vec<SocketAddr>,
    /// Its home relay.
    pub relay: Option<RelayUrl>,
}

#[derive(Serialize, Deserialize)]
struct TicketWire {
    id: [u8; 32],
    addrs: Vec<SocketAddr>,
    relay: Option<String>,
}

/// A ticket or address could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node ticket or address {input:?}: {reason}")]
pub struct TicketError {
    input: String,
    reason: String,
}

impl NodeTicket {
    /// The ticket of an endpoint address.
    pub fn from_addr(addr: &EndpointAddr) -> Self {
        Self {
            id: addr.id,
            addrs: addr.ip_addrs().copied().take(MAX_ADVERT_ADDRS).collect(),
            relay: addr.relay_urls().next().cloned(),
        }
    }

    /// The endpoint address it names.
    pub fn to_addr(&self) -> EndpointAddr {
        let mut addrs: Vec<TransportAddr> =
            self.addrs.iter().map(|a| TransportAddr::Ip(*a)).collect();
        if let Some(r) = &self.relay {
            addrs.push(TransportAddr::Relay(r.clone()));
        }
        EndpointAddr::from_parts(self.id, addrs)
    }
}

impl fmt::Display for NodeTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = TicketWire {
            id: *self.id.as_bytes(),
            addrs: self.addrs.clone(),
            relay: self.relay.as_ref().map(|r| r.to_string()),
        };
        let bytes = wire::encode(&w);
        write!(f, "{PREFIX}{}", data_encoding::BASE32_NOPAD.encode(&bytes).to_ascii_lowercase())
    }
}

impl FromStr for NodeTicket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let err = |reason: &str| TicketError {
            input: s.chars().take(80).collect(),
            reason: reason.to_string(),
        };
        if let Some((id, addrs)) = s.split_once('@') {
            let id: EndpointId = id.parse().map_err(|_| err("bad node id"))?;
            let addrs = addrs
                .split(',')
                .map(|a| a.trim().parse::<SocketAddr>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| err("bad socket address"))?;
            return Ok(Self { id, addrs, relay: None });
        }
        if let Ok(id) = s.parse::<EndpointId>() {
            return Ok(Self { id, addrs: vec![], relay: None });
        }
        let body =
            s.strip_prefix(PREFIX).ok_or_else(|| err("not a ticket, NODE_ID@ADDR or NODE_ID"))?;
        if body.len() > MAX_TICKET_BYTES * 2 {
            return Err(err("too long"));
        }
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| err("bad base32"))?;
        let w: TicketWire =
            wire::decode(&bytes, MAX_TICKET_BYTES).map_err(|e| err(&e.to_string()))?;
        let id = EndpointId::from_bytes(&w.id).map_err(|_| err("bad node id"))?;
        if w.addrs.len() > MAX_ADVERT_ADDRS {
            return Err(err("too many addresses"));
        }
        let relay = match w.relay {
            Some(r) if r.len() <= MAX_RELAY_URL_LEN => {
                Some(r.parse::<RelayUrl>().map_err(|_| err("bad relay url"))?)
            }
            Some(_) => return Err(err("relay url too long")),
            None => None,
        };
        Ok(Self { id, addrs: w.addrs, relay })
    }
}

#[cfg(test)]
mod tests {
    use iroh::SecretKey;

    use super::*;

    #[test]
    fn round_trips_and_short_forms() {
        let id = SecretKey::generate().public();
        let t = NodeTicket {
            id,
            addrs: vec!["127.0.0.1:4000".parse().unwrap(), "[::1]:4001".parse().unwrap()],
            relay: None,
        };
        let s = t.to_string();
        assert!(s.starts_with("ova"));
        assert_eq!(s.parse::<NodeTicket>().unwrap(), t);
        assert_eq!(NodeTicket::from_addr(&t.to_addr()).addrs.len(), 2);

        let short: NodeTicket = format!("{id}@127.0.0.1:4000").parse().unwrap();
        assert_eq!(short.addrs, vec!["127.0.0.1:4000".parse().unwrap()]);
        let bare: NodeTicket = id.to_string().parse().unwrap();
        assert_eq!(bare.id, id);
        assert!(bare.addrs.is_empty());

        assert!("ovaxyz1".parse::<NodeTicket>().is_err());
        assert!("hello".parse::<NodeTicket>().is_err());
        assert!(format!("{id}@nope").parse::<NodeTicket>().is_err());
    }
}
