//! The daemon's page: `GET /` on its `--http` port, what a person opens to
//! see how the node is doing.
//!
//! Three files, compiled into the binary, make it: `index.html` (the
//! skeleton), `page.css` and `page.js`, served at `/`, `/ui/page.css` and
//! `/ui/page.js`. The script polls `GET /status` every two seconds and
//! `GET /status/throughput` every five (see [`super::status`]) and draws
//! from them: the node and its store, each peer with its rates (computed
//! between two polls), the throughput chart as SVG, the grants, the recent
//! refusals.
//!
//! Invariants:
//! - **Nothing leaves the node.** Every byte the page uses comes from these
//!   routes; the policy below forbids any other origin, so a change that
//!   adds a font or a CDN script fails in the browser test.
//! - **No inline script or style.** The `Content-Security-Policy` allows
//!   scripts and styles from this origin only (`'self'`), so markup a peer
//!   could influence (an error text, an id) can never run: the script also
//!   writes such text with `textContent`, never as HTML.
//! - **Read-only.** The page only reads; it has no form and sends no write.
//!   The browser rules of the API (Host, Origin, `Sec-Fetch-Site`; see
//!   `can::server::browser`) guard these routes as every other.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// The page's skeleton.
const INDEX_HTML: &str = include_str!("index.html");
/// Its style sheet.
const PAGE_CSS: &str = include_str!("page.css");
/// Its script.
const PAGE_JS: &str = include_str!("page.js");

/// What the page may load and where it may connect: this origin only, no
/// inline script or style, no frames, no forms, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The headers every file of the page carries besides its type.
fn headers(content_type: &'static str) -> [(header::HeaderName, &'static str); 6] {
    [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        // The files change with the binary; a restarted daemon must not
        // run yesterday's script against today's `/status`.
        (header::CACHE_CONTROL, "no-cache"),
    ]
}

/// The page's routes: `/`, `/ui/page.css`, `/ui/page.js`.
pub fn router() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { (headers("text/html; charset=utf-8"), INDEX_HTML).into_response() }),
        )
        .route(
            "/ui/page.css",
            get(|| async { (headers("text/css; charset=utf-8"), PAGE_CSS).into_response() }),
        )
        .route(
            "/ui/page.js",
            get(|| async { (headers("text/javascript; charset=utf-8"), PAGE_JS).into_response() }),
        )
}

/// Bytes of the page as a browser loads it: the three files.
pub fn weight() -> usize {
    INDEX_HTML.len() + PAGE_CSS.len() + PAGE_JS.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_weighs_less_than_150_kb() {
        assert!(weight() < 150_000, "{} bytes", weight());
    }

    #[test]
    fn the_skeleton_has_no_inline_script_or_style_and_loads_only_its_own_files() {
        let lower = INDEX_HTML.to_ascii_lowercase();
        for script in lower.match_indices("<script").map(|(at, _)| &lower[at..]) {
            let tag = &script[..script.find('>').expect("a closed tag")];
            assert!(tag.contains("src=\"/ui/page.js\""), "inline script: {tag}");
        }
        assert!(!lower.contains("<style"), "inline style sheet");
        assert!(!lower.contains(" style="), "inline style attribute");
        for (at, _) in lower.match_indices(" on") {
            let name: String = lower[at + 1..]
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect();
            let after = lower[at + 1 + name.len()..].trim_start();
            assert!(!after.starts_with('='), "inline event handler {name}");
        }
        for reference in ["http:", "https:", "//"] {
            assert!(
                !lower.contains(reference),
                "a reference off the node: {reference}"
            );
        }
    }

    #[test]
    fn the_script_writes_text_never_html() {
        assert!(!PAGE_JS.contains("innerHTML"));
        assert!(!PAGE_JS.contains("outerHTML"));
        assert!(!PAGE_JS.contains("insertAdjacentHTML"));
        assert!(!PAGE_JS.contains("document.write"));
        assert!(!PAGE_JS.contains("eval("));
    }
}
