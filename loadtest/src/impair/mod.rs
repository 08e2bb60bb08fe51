//! A seeded UDP impairment proxy for the WAN and outage runs (issue 12,
//! item 5): delay, jitter, loss, reordering, a rate cap with a bounded
//! queue, and blackhole windows, per direction, between one client and one
//! upstream on 127.0.0.1.
//!
//! The harness routes a can-sync connection through it by handing the
//! dialling side a ticket whose address is the proxy's (see
//! [`via`]): the ticket names the peer by its endpoint id, so QUIC's
//! handshake still proves who answers, and the peer sees the proxy's socket
//! as its client's address, as it would a NAT's.
//!
//! Every random decision comes from one `u64` seed: the n-th packet of each
//! direction gets the same luck in every run with that seed, so a run is
//! replayed by passing its printed seed back (the real arrival times, and so
//! which packet is the n-th, still vary a little between runs).
//!
//! # Layout
//!
//! - [`rng`]: SplitMix64, the one generator;
//! - [`link`]: one direction's impairment as a pure function of arrival
//!   time and size ([`link::Link::offer`]), unit-tested on virtual time;
//! - [`proxy`]: the sockets, one task per direction, the delay queue and
//!   the counters ([`Proxy`], [`Counts`]).

use std::net::SocketAddr;

use anyhow::{Context, Result};
use can_sync::node::Ticket;

mod link;
mod proxy;
mod rng;

pub(crate) use link::{Impairment, Window};
pub(crate) use proxy::{Counts, Proxy};

/// `ticket` with its addresses replaced by `addr`: the same peer, reached
/// through the proxy at `addr`.
pub(crate) fn via(ticket: &str, addr: SocketAddr) -> Result<String> {
    let mut parsed: Ticket = ticket
        .parse()
        .with_context(|| format!("{ticket:?} is not a ticket"))?;
    parsed.addrs = vec![addr];
    Ok(parsed.to_string())
}

/// The first loopback address of `ticket`: what the proxy forwards to.
pub(crate) fn upstream_of(ticket: &str) -> Result<SocketAddr> {
    let parsed: Ticket = ticket
        .parse()
        .with_context(|| format!("{ticket:?} is not a ticket"))?;
    parsed
        .addrs
        .iter()
        .copied()
        .find(|a| a.ip().is_loopback())
        .with_context(|| format!("ticket {ticket} has no loopback address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_via_the_proxy_keeps_its_id_and_only_the_proxy_address() {
        let id = iroh::SecretKey::generate().public();
        let ticket = format!("{id}@127.0.0.1:4000,[::1]:4001");
        assert_eq!(
            upstream_of(&ticket).unwrap(),
            "127.0.0.1:4000".parse().unwrap()
        );
        let proxied = via(&ticket, "127.0.0.1:5000".parse().unwrap()).unwrap();
        assert_eq!(proxied, format!("{id}@127.0.0.1:5000"));
    }
}
