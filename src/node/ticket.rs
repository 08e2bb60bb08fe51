//! Tickets: how a node tells others where to dial it.
//!
//! A ticket is `<endpoint id>@<addr>,<addr>…`, for example
//! `8f3a…c2@127.0.0.1:51234,[::1]:51235`. It carries the direct addresses, so a
//! ticket dials without any discovery service: what `--no-relay` needs.
//!
//! A granted ticket (`can-sync ticket --grant`) ends in `#<capability>`, 64
//! hex characters: the secret its holder presents in `HELLO` to be admitted
//! ([`crate::node::access::grants`]). Treat such a ticket as a password.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use iroh::{EndpointAddr, EndpointId, TransportAddr};

use super::access::Capability;

/// An endpoint id and the addresses it listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Who to dial: the node's public key.
    pub id: EndpointId,
    /// Where: its direct addresses.
    pub addrs: Vec<SocketAddr>,
    /// The secret that admits its holder, in a granted ticket.
    pub capability: Option<Capability>,
}

/// Why a string is not a ticket.
#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    /// No `@` between id and addresses.
    #[error("ticket {0:?} lacks '@': expected <endpoint id>@<addr>[,<addr>…]")]
    Shape(String),
    /// The part before `@` is not an endpoint id.
    #[error("ticket endpoint id {0:?} is invalid")]
    Id(String),
    /// An address is not `ip:port`.
    #[error("ticket address {0:?} is not ip:port")]
    Addr(String),
    /// The part after `#` is not 64 hex characters.
    #[error("ticket capability is not 64 hex characters")]
    Capability,
}

impl Ticket {
    /// The address iroh dials.
    pub fn endpoint_addr(&self) -> EndpointAddr {
        EndpointAddr::from_parts(self.id, self.addrs.iter().map(|a| TransportAddr::Ip(*a)))
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@", self.id)?;
        for (i, addr) in self.addrs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{addr}")?;
        }
        if let Some(capability) = &self.capability {
            write!(f, "#{capability}")?;
        }
        Ok(())
    }
}

impl FromStr for Ticket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (s, capability) = match s.split_once('#') {
            Some((rest, capability)) => (
                rest,
                Some(capability.parse().map_err(|_| TicketError::Capability)?),
            ),
            None => (s, None),
        };
        let (id, addrs) = s
            .split_once('@')
            .ok_or_else(|| TicketError::Shape(s.to_string()))?;
        let id = id.parse().map_err(|_| TicketError::Id(id.to_string()))?;
        let addrs = addrs
            .split(',')
            .filter(|a| !a.is_empty())
            .map(|a| a.parse().map_err(|_| TicketError::Addr(a.to_string())))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            id,
            addrs,
            capability,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_round_trips_and_rejects_garbage() {
        let id = iroh::SecretKey::generate().public();
        let ticket = Ticket {
            id,
            addrs: vec![
                "127.0.0.1:4000".parse().unwrap(),
                "[::1]:4001".parse().unwrap(),
            ],
            capability: None,
        };
        let text = ticket.to_string();
        assert_eq!(text.parse::<Ticket>().unwrap(), ticket);
        let granted = Ticket {
            capability: Some(Capability::generate()),
            ..ticket.clone()
        };
        let text = granted.to_string();
        assert!(text.contains('#'), "{text}");
        assert_eq!(text.parse::<Ticket>().unwrap(), granted);
        assert!(matches!(
            format!("{ticket}#abc").parse::<Ticket>(),
            Err(TicketError::Capability)
        ));
        assert!(matches!(
            "nope".parse::<Ticket>(),
            Err(TicketError::Shape(_))
        ));
        assert!(matches!(
            "abc@127.0.0.1:1".parse::<Ticket>(),
            Err(TicketError::Id(_))
        ));
        assert!(matches!(
            format!("{id}@localhost").parse::<Ticket>(),
            Err(TicketError::Addr(_))
        ));
    }
}
