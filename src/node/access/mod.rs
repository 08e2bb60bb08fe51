//! Who may connect to a node, and what each may do.
//!
//! A daemon's endpoint id is in every ticket it prints, and with relays on
//! anyone who learns it can reach the node from anywhere. So access is
//! closed by default: a node admits only the endpoints it was told of, each
//! with a [`Right`]:
//!
//! - the endpoints of its `--peer` tickets and `--allow ID`: [`Right::Write`];
//! - `--allow-read ID`: [`Right::Read`];
//! - anyone, with the right given, only when the user says `--open read|write`
//!   (and the daemon says so in its log at start);
//! - a dialer whose `HELLO` presents the capability of a granted ticket
//!   ([`grants`]), with the grant's right: the way in for a new node whose
//!   id its owner does not know yet.
//!
//! The decision is made right after the TLS handshake proved the dialer's
//! id, before any stream is accepted (the endpoint hook `Gate`): a refused
//! dialer costs the node a handshake and nothing of its store. While a grant is live, a `/2`
//! dialer unknown by id is let on to its `HELLO`, which the node reads before
//! any store work and before it sends anything; without a valid capability
//! there it is closed with the same code. It is closed with
//! [`CLOSE_NOT_ALLOWED`] and a reason it can print that names the way in
//! (`--allow <its id>` on this node). Protocol `/1` has no `HELLO`, so it
//! serves only ids on the list, like `/2`.
//!
//! What the rights mean:
//! - *read* may pull: the node sends it what it lacks. The node takes nothing
//!   from it: its `HELLO` says so ([`FEATURE_READ_ONLY`]), so an honest peer
//!   sends nothing and counts what it did not send; whatever it sends anyway
//!   (assets or metadata updates) is refused and counted as rejected, and its
//!   live offers are declined.
//! - *write* may also push assets and metadata.
//!
//! [`CLOSE_NOT_ALLOWED`]: crate::wire::CLOSE_NOT_ALLOWED
//! [`FEATURE_READ_ONLY`]: crate::session::v2::FEATURE_READ_ONLY

use std::collections::HashMap;
use std::sync::Arc;

use iroh::endpoint::{AfterHandshakeOutcome, Connection, EndpointHooks, Side, VarInt};
use iroh::EndpointId;
use tracing::warn;

use super::refusals::{RefusalKind, Refusals};
use crate::wire::CLOSE_NOT_ALLOWED;

pub mod grants;
mod read_only;

pub use grants::{Capability, GrantBook, Revoke};
pub use read_only::ReadOnly;

/// What an admitted peer may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Right {
    /// Pull what this node has; nothing it sends is taken.
    Read,
    /// Pull, and push assets and metadata.
    Write,
}

impl Right {
    /// The name `--open` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

impl std::fmt::Display for Right {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Right {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            other => Err(format!("unknown right {other:?}: read or write")),
        }
    }
}

/// Who may connect and with which right; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Endpoints admitted by id.
    allowed: HashMap<EndpointId, Right>,
    /// The right of everyone else; `None`: they are refused.
    open: Option<Right>,
    /// The node's grants: dialers presenting a granted capability in `HELLO`.
    grants: Option<GrantBook>,
    /// Where the gate and the accepting side record whom they refused.
    refusals: Arc<Refusals>,
}

/// How an incoming connection is admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// By its endpoint id (or because the node is open), with this right.
    Known(Right),
    /// Not known by id, but the node has live grants: its `HELLO` must
    /// present a granted capability (protocol `/2` only).
    ByCapability,
}

impl Access {
    /// Admits nobody until told: what a node is by default.
    pub fn closed() -> Self {
        Self::default()
    }

    /// Admits everyone with `right` (`--open`); ids given a right of their
    /// own keep the greater of the two.
    pub fn open(right: Right) -> Self {
        Self {
            open: Some(right),
            ..Self::default()
        }
    }

    /// The same access, admitting `id` with `right` too; an id given two
    /// rights keeps the greater.
    pub fn allow(mut self, id: EndpointId, right: Right) -> Self {
        let entry = self.allowed.entry(id).or_insert(right);
        *entry = (*entry).max(right);
        self
    }

    /// The same access, admitting each of `ids` with `right`.
    pub fn allow_all(self, ids: impl IntoIterator<Item = EndpointId>, right: Right) -> Self {
        ids.into_iter()
            .fold(self, |access, id| access.allow(id, right))
    }

    /// The same access, also admitting holders of the grants in `book`.
    pub fn with_grants(mut self, book: GrantBook) -> Self {
        self.grants = Some(book);
        self
    }

    /// The right of `id`, or `None` when it is not admitted by id.
    pub fn right_of(&self, id: &EndpointId) -> Option<Right> {
        self.allowed.get(id).copied().max(self.open)
    }

    /// How a connection from `id` over `alpn` is admitted at `now_ms`, or
    /// `None` when it is refused. A stranger gets as far as its `HELLO` only
    /// over `/2` and only while some grant is live.
    pub fn admission(&self, id: &EndpointId, alpn: &[u8], now_ms: i64) -> Option<Admission> {
        if let Some(right) = self.right_of(id) {
            return Some(Admission::Known(right));
        }
        let grants = self.grants.as_ref()?;
        if alpn != crate::session::ALPN_V2 {
            return None;
        }
        match grants.any_live(now_ms) {
            Ok(true) => Some(Admission::ByCapability),
            Ok(false) => None,
            Err(err) => {
                warn!(error = %err, "grants unreadable: admitting by id only");
                None
            }
        }
    }

    /// The right the capability a dialer presented in `HELLO` grants at
    /// `now_ms`; `None` when it grants none (absent, unknown, expired or
    /// revoked).
    pub fn right_of_capability(&self, capability: &[u8], now_ms: i64) -> Option<Right> {
        let capability = Capability::from_bytes(capability)?;
        match self.grants.as_ref()?.right_of(&capability, now_ms) {
            Ok(right) => right,
            Err(err) => {
                warn!(error = %err, "grants unreadable: refusing a capability");
                None
            }
        }
    }

    /// Whom this access refused: strangers and capabilities, counted where
    /// they are turned away (the node adds future-stamped updates).
    pub fn refusals(&self) -> &Arc<Refusals> {
        &self.refusals
    }

    /// The grants this access consults, if any.
    pub fn grant_book(&self) -> Option<&GrantBook> {
        self.grants.as_ref()
    }

    /// The right of everyone not named, when the node is open.
    pub fn open_to_all(&self) -> Option<Right> {
        self.open
    }

    /// True when nobody is admitted by id or openness (grants aside).
    pub fn admits_nobody(&self) -> bool {
        self.open.is_none() && self.allowed.is_empty()
    }
}

/// The reason a refused dialer reads in the close frame: what it is, and the
/// ways in.
pub fn refusal_reason(id: &EndpointId) -> String {
    format!(
        "endpoint {id} is not allowed on this node: its owner can admit it with \
         `--allow {id}` (or `--allow-read {id}`), or hand it a ticket from \
         `can-sync ticket --grant`"
    )
}

/// The reason a dialer whose `HELLO` presents no valid capability reads.
pub fn capability_refusal_reason(id: &EndpointId) -> String {
    format!(
        "endpoint {id} presented no valid capability (none, unknown, expired or revoked): \
         ask the node's owner for a ticket from `can-sync ticket --grant`, or for \
         `--allow {id}`"
    )
}

/// The endpoint hook that applies an [`Access`] right after the handshake,
/// before any stream is accepted.
#[derive(Debug)]
pub(crate) struct Gate(pub(crate) Arc<Access>);

impl EndpointHooks for Gate {
    async fn after_handshake<'a>(&'a self, conn: &'a Connection) -> AfterHandshakeOutcome {
        let remote = conn.remote_id();
        // The hook runs for our own dials too: whom we dial, we chose.
        if conn.side() == Side::Client
            || self
                .0
                .admission(&remote, conn.alpn(), crate::clock::now_ms())
                .is_some()
        {
            return AfterHandshakeOutcome::accept();
        }
        warn!(peer = %remote, alpn = %String::from_utf8_lossy(conn.alpn()),
              "refused a connection from an endpoint that is not allowed");
        let reason = refusal_reason(&remote);
        self.0
            .refusals
            .record(RefusalKind::Stranger, &remote, "not allowed".into());
        AfterHandshakeOutcome::Reject {
            error_code: VarInt::from_u32(CLOSE_NOT_ALLOWED),
            reason: reason.into_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> EndpointId {
        iroh::SecretKey::generate().public()
    }

    #[test]
    fn closed_admits_only_whom_it_names_with_their_right() {
        let (writer, reader, stranger) = (id(), id(), id());
        let access = Access::closed()
            .allow(writer, Right::Write)
            .allow(reader, Right::Read);
        assert_eq!(access.right_of(&writer), Some(Right::Write));
        assert_eq!(access.right_of(&reader), Some(Right::Read));
        assert_eq!(access.right_of(&stranger), None);
        assert!(Access::closed().admits_nobody());
        assert!(!access.admits_nobody());
    }

    #[test]
    fn the_greater_right_wins() {
        let peer = id();
        let access = Access::closed()
            .allow(peer, Right::Write)
            .allow(peer, Right::Read);
        assert_eq!(access.right_of(&peer), Some(Right::Write));
        let open = Access::open(Right::Read).allow(peer, Right::Write);
        assert_eq!(open.right_of(&peer), Some(Right::Write));
        assert_eq!(open.right_of(&id()), Some(Right::Read));
        assert_eq!(open.open_to_all(), Some(Right::Read));
    }

    #[test]
    fn rights_parse_from_their_names() {
        assert_eq!("read".parse(), Ok(Right::Read));
        assert_eq!("write".parse(), Ok(Right::Write));
        assert!("admin".parse::<Right>().is_err());
        assert_eq!(Right::Write.to_string(), "write");
    }

    #[test]
    fn the_refusal_names_the_way_in() {
        let peer = id();
        let reason = refusal_reason(&peer);
        assert!(reason.contains(&format!("--allow {peer}")), "{reason}");
        assert!(reason.len() < 1000, "fits a close frame");
    }
}
