//! The budget of incoming handshakes in progress.
//!
//! A QUIC handshake proves who the dialer is only when it completes, so a
//! node cannot tell an allowed peer's handshake from a stranger's while it
//! runs. A stranger that starts handshakes and never finishes them (stalled
//! handshakes) would otherwise hold every slot and lock allowed peers out.
//! So handshakes have a budget of their own, apart from the sessions of
//! admitted peers, with two bounds:
//!
//! - in all ([`ConnectionLimits::max_handshakes`]): a handshake in progress
//!   costs a few KiB, so the bound is generous;
//! - per source address ([`ConnectionLimits::max_handshakes_per_source`]):
//!   one address (one attacker) holds at most that many, so the slots of
//!   peers at other addresses stay free.
//!
//! and each handshake holds its slot at most [`HANDSHAKE_TIMEOUT`].
//!
//! [`ConnectionLimits::max_handshakes`]: super::ConnectionLimits::max_handshakes
//! [`ConnectionLimits::max_handshakes_per_source`]: super::ConnectionLimits::max_handshakes_per_source
//! [`HANDSHAKE_TIMEOUT`]: super::HANDSHAKE_TIMEOUT

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use iroh::endpoint::IncomingAddr;
use iroh::EndpointId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Where a handshake comes from, as far as can be told before it completes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    /// A direct dial: its IP address (the port is the dialer's to change).
    Ip(IpAddr),
    /// Through a relay: the endpoint id the relay names (not yet proven).
    Relayed(EndpointId),
    /// A custom transport.
    Other,
}

impl Source {
    pub(crate) fn of(addr: &IncomingAddr) -> Self {
        match addr {
            IncomingAddr::Ip(addr) => Self::Ip(addr.ip()),
            IncomingAddr::Relay { endpoint_id, .. } => Self::Relayed(*endpoint_id),
            _ => Self::Other,
        }
    }
}

/// Why a handshake was not taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// As many handshakes in progress as the node takes.
    Total,
    /// As many from this source as one source may have.
    Source,
}

/// The handshake budget of one accept loop; see the module docs.
pub(crate) struct Handshakes {
    total: Arc<Semaphore>,
    per_source: Arc<Mutex<HashMap<Source, usize>>>,
    max_per_source: usize,
}

/// One handshake's place in the budget; freed on drop.
pub(crate) struct HandshakeSlot {
    _permit: OwnedSemaphorePermit,
    source: Source,
    per_source: Arc<Mutex<HashMap<Source, usize>>>,
}

impl Handshakes {
    pub(crate) fn new(max_total: usize, max_per_source: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(max_total.max(1))),
            per_source: Arc::default(),
            max_per_source: max_per_source.max(1),
        }
    }

    /// A slot for one more handshake from `source`, or why there is none.
    pub(crate) fn try_take(&self, source: Source) -> Result<HandshakeSlot, Full> {
        let mut per_source = self.per_source.lock().expect("handshakes lock");
        if per_source.get(&source).copied().unwrap_or(0) >= self.max_per_source {
            return Err(Full::Source);
        }
        let permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Full::Total)?;
        *per_source.entry(source.clone()).or_default() += 1;
        Ok(HandshakeSlot {
            _permit: permit,
            source,
            per_source: self.per_source.clone(),
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut per_source = self.per_source.lock().expect("handshakes lock");
        if let Some(count) = per_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                per_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Source {
        Source::Ip(IpAddr::from([127, 0, 0, last]))
    }

    #[test]
    fn one_source_fills_its_share_and_leaves_the_rest_to_others() {
        let budget = Handshakes::new(10, 3);
        let stalled: Vec<_> = (0..3).map(|_| budget.try_take(ip(2)).unwrap()).collect();
        assert_eq!(budget.try_take(ip(2)).err(), Some(Full::Source));
        let allowed = budget.try_take(ip(1));
        assert!(allowed.is_ok(), "another address still gets a slot");
        drop(stalled);
        assert!(budget.try_take(ip(2)).is_ok(), "freed when they end");
    }

    #[test]
    fn the_total_bounds_every_source_together() {
        let budget = Handshakes::new(4, 3);
        let _held: Vec<_> = (1..=4).map(|i| budget.try_take(ip(i)).unwrap()).collect();
        assert_eq!(budget.try_take(ip(9)).err(), Some(Full::Total));
        // A refusal leaves no count behind.
        assert!(!budget.per_source.lock().unwrap().contains_key(&ip(9)));
    }

    #[test]
    fn relayed_handshakes_count_by_the_id_the_relay_names() {
        let id = iroh::SecretKey::generate().public();
        let relayed = IncomingAddr::Relay {
            url: "https://relay.invalid".parse().unwrap(),
            endpoint_id: id,
        };
        assert_eq!(Source::of(&relayed), Source::Relayed(id));
        let direct = IncomingAddr::Ip("127.0.0.3:4000".parse().unwrap());
        assert_eq!(Source::of(&direct), ip(3));
    }
}
