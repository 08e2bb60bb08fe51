//! Application error codes: what a node closes a connection, resets a stream
//! or stops a stream with, so the peer's log names the reason.
//!
//! Every code is part of the protocol: a peer reads it to tell a complete
//! session from a refusal or a fault, and whose fault it was.

/// Connection closed after a complete session.
pub const CLOSE_DONE: u32 = 0x00;
/// Closed because the peer broke the protocol: its bytes, messages or their
/// order (every [`Violation`](super::Violation) but silence).
pub const CLOSE_PROTOCOL_ERROR: u32 = 0x01;
/// Closed because the peer's endpoint id is not on the allow-list.
pub const CLOSE_NOT_ALLOWED: u32 = 0x02;
/// Closed because this node is shutting down, or its own side failed (its
/// store, or a bug): nothing is wrong with the peer.
pub const CLOSE_SHUTDOWN: u32 = 0x03;
/// Closed because the peer stayed silent past a deadline.
pub const CLOSE_IDLE: u32 = 0x04;
/// Closed because this node already serves as many connections as it takes,
/// in all or from this peer: nothing is wrong with the peer; try later.
pub const CLOSE_BUSY: u32 = 0x06;
/// Stream reset (or stop) code: this side could not go on with the stream for
/// a local reason (its store failed); nothing is wrong with the peer.
pub const RESET_LOCAL_FAILURE: u32 = 0x05;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct() {
        let codes = [
            CLOSE_DONE,
            CLOSE_PROTOCOL_ERROR,
            CLOSE_NOT_ALLOWED,
            CLOSE_SHUTDOWN,
            CLOSE_IDLE,
            CLOSE_BUSY,
            RESET_LOCAL_FAILURE,
        ];
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), codes.len());
    }
}
