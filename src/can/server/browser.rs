//! Browser safety: what a web page the user happens to visit must not be able
//! to do with this API.
//!
//! The API listens on loopback without a token, so anything that can make the
//! user's machine send a request could use it, and a browser sends requests
//! for every page it shows. Three rules close the ways a page could:
//!
//! 1. **The Host must be one of ours** (421 otherwise): a loopback name
//!    (`localhost`, `127.0.0.0/8`, `[::1]`, any port) or a name given in
//!    [`ServerConfig::allowed_hosts`](super::ServerConfig::allowed_hosts).
//!    *Why:* DNS rebinding. A page at `http://evil.example:8080` can have
//!    `evil.example` re-resolve to `127.0.0.1`; the browser then sends the
//!    page's requests to this server and, seeing the same origin, lets the
//!    page read every answer. The one thing the attacker cannot change is
//!    the Host header: it still says `evil.example`.
//!
//! 2. **Requests from another origin are refused** (403): a request whose
//!    `Origin` is not the server's own (`http://` and the Host it was reached
//!    at, same port; `null` is never ours), or that says
//!    `Sec-Fetch-Site: cross-site` or `same-site`. `same-origin` and `none`
//!    (the user typed the URL) pass, and so does a request without either
//!    header: browsers send them, other clients (the sync agent, curl) do
//!    not. For writes (any method but GET and HEAD) this is the defence
//!    against cross-site form posts and `fetch(.., {mode: "no-cors"})`: the
//!    browser sends those without asking, and only the server can refuse
//!    them. Reads from another origin are refused too, except a top-level
//!    navigation (`Sec-Fetch-Mode: navigate`, a link the user follows):
//!    a page cannot read our answers anyway (no CORS headers), but an
//!    `<img>` or `<script>` of an asset would still load, and its success
//!    tells the page which assets the user holds. Note that another port on
//!    the same host is another origin: a dev server on `localhost:3000` is
//!    a stranger too.
//!
//! 3. **A write states the type of its body** (415 otherwise): each write
//!    route takes one type ([`BodyType`]): the sync API's protobuf routes
//!    `application/x-protobuf`, `PATCH /assets/{hash}/meta`
//!    `application/json`, and the raw-bytes routes (`POST /assets`,
//!    `PUT /sync/blob/{hash}`) any explicit type but the three a page may
//!    send without a CORS preflight (`text/plain`,
//!    `application/x-www-form-urlencoded`, `multipart/form-data`). *Why:*
//!    defence in depth behind rule 2: an HTML form can only send those three
//!    types, and a page that sets any other type must first ask the server
//!    (preflight), which this server never grants. A body without a
//!    `Content-Type` is refused too, from any client (a browser sends a
//!    `Blob` body without one): every write names what it carries, as the
//!    project's own client always has.
//!
//! Assets themselves carry `X-Content-Type-Options: nosniff` and
//! `Content-Security-Policy: sandbox` (see `blobs.rs`): their type is
//! whatever a peer chose, and an HTML asset opened in the browser must not
//! run script with the API's origin (a sandboxed page has an opaque origin,
//! so its requests fail rule 2).
//!
//! Every refusal is the API's JSON error body with a message that names the
//! way out (`--allowed-host`, the expected content type).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error_response;
use crate::can::api::PROTOBUF;

/// Request header browsers set to say where a request comes from.
const SEC_FETCH_SITE: &str = "sec-fetch-site";
/// Request header browsers set to say what a request is for.
const SEC_FETCH_MODE: &str = "sec-fetch-mode";

/// The content types a page can send without a CORS preflight (the Fetch
/// standard's CORS-safelisted `Content-Type` values): a raw-bytes write
/// must name another.
pub const SIMPLE_CONTENT_TYPES: [&str; 3] = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
];

/// The host part of a Host header or of an allowed-host setting, normalised:
/// lower case, no trailing dot, IPv6 without brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostName {
    /// An IP address literal.
    Ip(IpAddr),
    /// A DNS name.
    Name(String),
}

impl HostName {
    /// True for `localhost`, 127.0.0.0/8 and ::1 (also IPv4-mapped).
    fn is_loopback(&self) -> bool {
        match self {
            Self::Ip(ip) => ip.to_canonical().is_loopback(),
            Self::Name(name) => name == "localhost",
        }
    }
}

/// `host[:port]` as a Host header (or an Origin's authority) carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Authority {
    host: HostName,
    /// The port; `None` when not given (80 for `http`).
    port: Option<u16>,
}

impl Authority {
    /// Parses `name`, `name:port`, `1.2.3.4[:port]`, `[::1][:port]`.
    fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest.split_once(']')?;
            let ip: Ipv6Addr = inside.parse().ok()?;
            let port = match after {
                "" => None,
                _ => Some(parse_port(after.strip_prefix(':')?)?),
            };
            (HostName::Ip(IpAddr::V6(ip)), port)
        } else {
            let (name, port) = match text.split_once(':') {
                Some((name, port)) => (name, Some(parse_port(port)?)),
                None => (text, None),
            };
            (host_name(name)?, port)
        };
        Some(Self { host, port })
    }

    /// The port, with `http`'s default filled in.
    fn effective_port(&self) -> u16 {
        self.port.unwrap_or(80)
    }
}

/// A port number: digits only.
fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A host without port: an IPv4 literal or a DNS name of letters, digits,
/// `-`, `_` and dots.
fn host_name(text: &str) -> Option<HostName> {
    let lower = text.trim_end_matches('.').to_ascii_lowercase();
    if let Ok(ip) = lower.parse::<Ipv4Addr>() {
        return Some(HostName::Ip(IpAddr::V4(ip)));
    }
    let valid = !lower.is_empty()
        && lower
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    valid.then_some(HostName::Name(lower))
}

/// An `--allowed-host` value that is no host name (a port, a scheme or a
/// path in it, or no name at all).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a host name or IP address (give it without scheme, port or path, e.g. can.example.org or 192.0.2.7)")]
pub struct InvalidHostName(pub String);

/// Checks an allowed-host setting (`--allowed-host NAME`): a DNS name or an
/// IP address, without scheme, port or path; returns it normalised.
pub fn parse_allowed_host(text: &str) -> Result<String, InvalidHostName> {
    let invalid = || InvalidHostName(text.to_owned());
    let host = match text.trim().strip_prefix('[') {
        Some(rest) => {
            let inside = rest.strip_suffix(']').ok_or_else(invalid)?;
            HostName::Ip(IpAddr::V6(inside.parse().map_err(|_| invalid())?))
        }
        None => match text.trim().parse::<Ipv6Addr>() {
            Ok(ip) => HostName::Ip(IpAddr::V6(ip)),
            Err(_) => host_name(text.trim()).ok_or_else(invalid)?,
        },
    };
    Ok(match host {
        HostName::Ip(ip) => ip.to_string(),
        HostName::Name(name) => name,
    })
}

/// Rules 1 and 2, from the server's settings.
#[derive(Debug, Clone)]
pub(super) struct BrowserRules {
    /// Host names beyond loopback the server answers to.
    allowed_hosts: Vec<HostName>,
}

/// Why a request was refused by rule 1 or 2, with its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refusal {
    /// Rule 1: the Host is not a name of this server.
    #[error(
        "Host {0:?} is not a name this server answers to (loopback names, or one given with \
         --allowed-host): refused, as a page could reach it by DNS rebinding"
    )]
    ForeignHost(String),
    /// Rule 2: a browser sent this on behalf of a page of another origin.
    #[error(
        "refused: a web page of another origin ({0}) may not use this API; browsers may \
         reach it only from its own origin"
    )]
    CrossOrigin(String),
}

impl IntoResponse for Refusal {
    /// The JSON error answer: 421 for a Host not ours, 403 for another origin.
    fn into_response(self) -> Response {
        let status = match self {
            Self::ForeignHost(_) => StatusCode::MISDIRECTED_REQUEST,
            Self::CrossOrigin(_) => StatusCode::FORBIDDEN,
        };
        error_response(status, self.to_string())
    }
}

impl BrowserRules {
    /// The rules with these allowed host names (normalised as
    /// [`parse_allowed_host`] does; entries that are no host name never
    /// match).
    pub(super) fn new(allowed_hosts: &[String]) -> Self {
        let allowed_hosts = allowed_hosts
            .iter()
            .filter_map(|name| parse_allowed_host(name).ok())
            .filter_map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => Some(HostName::Ip(ip)),
                Err(_) => host_name(&name),
            })
            .collect();
        Self { allowed_hosts }
    }

    /// Rules 1 and 2 for a request with this method and these headers.
    pub(super) fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), Refusal> {
        let host = self.check_host(headers)?;
        check_origin(method, headers, host.as_ref())
    }

    /// Rule 1: the Host, parsed, when it is ours (`None`: no Host header,
    /// which no browser sends).
    fn check_host(&self, headers: &HeaderMap) -> Result<Option<Authority>, Refusal> {
        let Some(value) = headers.get(header::HOST) else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(value.as_bytes());
        let authority =
            Authority::parse(&text).ok_or_else(|| Refusal::ForeignHost(text.to_string()))?;
        if authority.host.is_loopback() || self.allowed_hosts.contains(&authority.host) {
            Ok(Some(authority))
        } else {
            Err(Refusal::ForeignHost(text.to_string()))
        }
    }
}

/// Rule 2: refuses what a browser sent on behalf of a page of another origin.
fn check_origin(
    method: &Method,
    headers: &HeaderMap,
    host: Option<&Authority>,
) -> Result<(), Refusal> {
    let read = matches!(*method, Method::GET | Method::HEAD);
    if read && header_is(headers, SEC_FETCH_MODE, "navigate") {
        // A link the user follows: shown to the user, never to the page.
        return Ok(());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = String::from_utf8_lossy(origin.as_bytes());
        if !is_own_origin(&origin, host) {
            return Err(Refusal::CrossOrigin(format!("Origin {origin}")));
        }
    }
    for site in ["cross-site", "same-site"] {
        if header_is(headers, SEC_FETCH_SITE, site) {
            return Err(Refusal::CrossOrigin(format!("Sec-Fetch-Site: {site}")));
        }
    }
    Ok(())
}

/// True when `origin` is `http://` and the Host the request was sent to.
fn is_own_origin(origin: &str, host: Option<&Authority>) -> bool {
    let (Some(rest), Some(host)) = (origin.trim().strip_prefix("http://"), host) else {
        return false;
    };
    let Some(authority) = Authority::parse(rest) else {
        return false;
    };
    authority.host == host.host && authority.effective_port() == host.effective_port()
}

/// True when header `name` is present and equals `value` (ASCII case ignored).
fn header_is(headers: &HeaderMap, name: &str, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|given| given.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

/// The body type a write route takes (rule 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyType {
    /// `application/x-protobuf`: the sync API's messages.
    Protobuf,
    /// `application/json`.
    Json,
    /// Raw bytes: any explicit type but [`SIMPLE_CONTENT_TYPES`].
    Bytes,
}

impl BodyType {
    /// Why a body declared as `content_type` (its essence, lower case) is
    /// not of this type; `None` when it is.
    fn mismatch(self, content_type: &str) -> Option<String> {
        let expected = match self {
            Self::Protobuf => PROTOBUF,
            Self::Json => "application/json",
            Self::Bytes => {
                return SIMPLE_CONTENT_TYPES.contains(&content_type).then(|| {
                    format!(
                        "Content-Type {content_type} is refused here, as a web page could send \
                         it without asking: send the asset's own type or \
                         application/octet-stream"
                    )
                });
            }
        };
        (content_type != expected)
            .then(|| format!("Content-Type {content_type} is refused here: send {expected}"))
    }

    /// What to send, for a request that named no type.
    fn expected(self) -> &'static str {
        match self {
            Self::Protobuf => PROTOBUF,
            Self::Json => "application/json",
            Self::Bytes => "application/octet-stream (or the asset's own type)",
        }
    }
}

/// Rule 3 for one request: `None` when its body may be read as `body_type`.
fn content_type_refusal(
    body_type: BodyType,
    method: &Method,
    headers: &HeaderMap,
) -> Option<String> {
    if matches!(*method, Method::GET | Method::HEAD) {
        return None;
    }
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Some(format!(
            "a body without Content-Type is refused: send {}",
            body_type.expected()
        ));
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence.is_empty() {
        return Some(format!(
            "an empty Content-Type is refused: send {}",
            body_type.expected()
        ));
    }
    body_type.mismatch(&essence)
}

/// The middleware of rule 3, layered on each write route with the type it
/// takes (see [`takes`]).
async fn check_content_type(
    State(body_type): State<BodyType>,
    request: Request,
    next: Next,
) -> Response {
    match content_type_refusal(body_type, request.method(), request.headers()) {
        Some(message) => error_response(StatusCode::UNSUPPORTED_MEDIA_TYPE, message),
        None => next.run(request).await,
    }
}

/// `routes`, whose writes take bodies of `body_type` (415 otherwise); reads
/// and the method-not-allowed answer are left alone.
pub(super) fn takes<S: Clone + Send + Sync + 'static>(
    routes: axum::routing::MethodRouter<S>,
    body_type: BodyType,
) -> axum::routing::MethodRouter<S> {
    routes.route_layer(axum::middleware::from_fn_with_state(
        body_type,
        check_content_type,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn loopback_and_allowed_hosts_pass_others_do_not() {
        let rules = BrowserRules::new(&["Can.Example.org.".into(), "192.0.2.7".into()]);
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "localhost.:1",
            "127.0.0.1",
            "127.1.2.3:9",
            "[::1]:8080",
            "[::1]",
            "[::ffff:127.0.0.1]:80",
            "can.example.org:443",
            "192.0.2.7:8080",
        ] {
            let request = headers(&[("host", host)]);
            assert!(rules.check(&Method::GET, &request).is_ok(), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.0.0.1:80",
            "[::2]:80",
            "0.0.0.0:8080",
            "localhost:http",
            "a b",
            "",
            "[::1",
            "::1",
        ] {
            let request = headers(&[("host", host)]);
            assert!(
                matches!(
                    rules.check(&Method::GET, &request),
                    Err(Refusal::ForeignHost(_))
                ),
                "{host}"
            );
        }
        // No Host at all: no browser sent it.
        assert!(rules.check(&Method::POST, &HeaderMap::new()).is_ok());
    }

    #[test]
    fn writes_from_other_origins_are_refused() {
        let rules = BrowserRules::new(&[]);
        let own = [
            ("127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("localhost", "http://localhost:80"),
            ("localhost:80", "http://LOCALHOST"),
            ("[::1]:9", "http://[::1]:9"),
        ];
        for (host, origin) in own {
            let mut request = headers(&[("host", host)]);
            request.insert("origin", HeaderValue::from_str(origin).unwrap());
            assert!(rules.check(&Method::POST, &request).is_ok(), "{origin}");
        }
        let foreign = [
            ("127.0.0.1:8080", "http://evil.example"),
            ("127.0.0.1:8080", "http://127.0.0.1:8081"),
            ("127.0.0.1:8080", "https://127.0.0.1:8080"),
            ("127.0.0.1:8080", "http://localhost:8080"),
            ("127.0.0.1:8080", "null"),
            ("127.0.0.1:8080", "http://127.0.0.1:8080/path"),
        ];
        for (host, origin) in foreign {
            let mut request = headers(&[("host", host)]);
            request.insert("origin", HeaderValue::from_str(origin).unwrap());
            for method in [Method::POST, Method::PUT, Method::PATCH, Method::GET] {
                assert!(
                    matches!(rules.check(&method, &request), Err(Refusal::CrossOrigin(_))),
                    "{method} from {origin}"
                );
            }
        }
        for (site, passes) in [
            ("same-origin", true),
            ("none", true),
            ("same-site", false),
            ("cross-site", false),
            ("Cross-Site", false),
        ] {
            let request = headers(&[("host", "127.0.0.1:1"), ("sec-fetch-site", site)]);
            assert_eq!(
                rules.check(&Method::POST, &request).is_ok(),
                passes,
                "{site}"
            );
        }
    }

    #[test]
    fn cross_site_reads_pass_only_as_navigations() {
        let rules = BrowserRules::new(&[]);
        let embedded = headers(&[
            ("host", "127.0.0.1:1"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "no-cors"),
        ]);
        assert!(rules.check(&Method::GET, &embedded).is_err());
        let followed = headers(&[
            ("host", "127.0.0.1:1"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "navigate"),
        ]);
        assert!(rules.check(&Method::GET, &followed).is_ok());
        // A navigation that posts (a form) is a write all the same.
        assert!(rules.check(&Method::POST, &followed).is_err());
    }

    #[test]
    fn content_types_per_body_type() {
        let post = Method::POST;
        let with = |value: &'static str| headers(&[("content-type", value)]);
        assert_eq!(
            content_type_refusal(BodyType::Protobuf, &post, &with(PROTOBUF)),
            None
        );
        assert!(content_type_refusal(BodyType::Protobuf, &post, &with("text/plain")).is_some());
        assert_eq!(
            content_type_refusal(
                BodyType::Json,
                &post,
                &with("Application/JSON; charset=utf-8")
            ),
            None
        );
        assert!(content_type_refusal(BodyType::Json, &post, &with("text/plain")).is_some());
        for fine in ["application/octet-stream", "image/png", "text/html"] {
            assert_eq!(
                content_type_refusal(BodyType::Bytes, &post, &with(fine)),
                None
            );
        }
        for simple in [
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
        ] {
            assert!(
                content_type_refusal(BodyType::Bytes, &post, &with(simple)).is_some(),
                "{simple}"
            );
        }
        // No type: refused, from a browser and from any other client.
        assert!(content_type_refusal(BodyType::Json, &post, &HeaderMap::new()).is_some());
        let browser = headers(&[("sec-fetch-site", "same-origin")]);
        assert!(content_type_refusal(BodyType::Json, &post, &browser).is_some());
        // Reads carry no body to check.
        assert_eq!(
            content_type_refusal(BodyType::Json, &Method::GET, &with("text/plain")),
            None
        );
    }

    #[test]
    fn allowed_host_settings() {
        assert_eq!(
            parse_allowed_host("Can.Example.org").as_deref(),
            Ok("can.example.org")
        );
        assert_eq!(parse_allowed_host("[::2]").as_deref(), Ok("::2"));
        assert_eq!(parse_allowed_host("::2").as_deref(), Ok("::2"));
        assert_eq!(parse_allowed_host("192.0.2.7").as_deref(), Ok("192.0.2.7"));
        for bad in ["", "http://x", "x:8080", "x/y", "a b", "[::1"] {
            assert!(parse_allowed_host(bad).is_err(), "{bad}");
        }
    }
}
