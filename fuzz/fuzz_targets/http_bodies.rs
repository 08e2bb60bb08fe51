//! The HTTP sync API's bodies (`src/can/server/sync.rs`, and what the client
//! in `src/can/client` decodes from the answers) and the SSE parser
//! (`src/can/sse.rs`).
//!
//! Modes, picked by the first input byte:
//! - **bodies**: the rest decoded as each protobuf body, then turned into
//!   the store's terms the way the server (and the client) does:
//!   `PullRequest` hashes, `AssetBundle` → [`Bundle::from_pb`] → `verify`,
//!   `PushBatch`, `MetaUpdate` → [`MetaUpdate::from_pb`], `HashList` and
//!   `ChangePage` → [`Summary::from_pb`], `PullResponse`, the listing
//!   cursors, and the JSON `MetaPatch`. Each is a value or an error that
//!   says why; parsed values survive a round trip through their wire form;
//! - **server**: the rest POSTed as the body of a sync route (or PATCHed as a
//!   metadata patch) to the real [`router`] over an in-memory
//!   [`EmbeddedCan`] (a fresh one every 256 inputs): the answer is 2xx or 4xx, never 5xx and never a panic;
//!   a 2xx answer decodes as the documented answer;
//! - **sse**: the rest fed to an [`SseParser`] in arbitrary chunks: the
//!   messages (and the error that ends them) do not depend on the chunking,
//!   no message's data exceeds the parser's limit, and every message that
//!   [`decode_change`] accepts re-encodes with [`encode_event`] to itself.

#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use arbitrary::Unstructured;
use axum::body::Body;
use bytes::Bytes;
use can_sync::asset::{AssetHash, Bundle, MetaUpdate, Summary};
use can_sync::can::api::{self, MetaPatch};
use can_sync::can::server::{router, ServerConfig};
use can_sync::can::sse::{decode_change, encode_event, SseError, SseMessage, SseParser};
use can_sync::can::{EmbeddedCan, StoreLimits};
use can_sync::pb;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tower::ServiceExt;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    match mode % 3 {
        0 => bodies(rest),
        1 => server(rest),
        _ => sse(rest),
    }
});

// ---------------------------------------------------------------------------
// Bodies, decoded as the server and the client do.

fn is_hash(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_summary(summary: &pb::AssetSummary) {
    match Summary::from_pb(summary) {
        Ok(parsed) => {
            assert!(is_hash(&summary.hash));
            assert_eq!(parsed.size, summary.size);
            assert_eq!(parsed.created_at_ms, summary.timestamp);
            assert_eq!(Summary::from_pb(&parsed.to_pb()), Ok(parsed), "round trip");
        }
        Err(_) => assert!(!is_hash(&summary.hash), "{:?} refused", summary.hash),
    }
}

fn check_bundle(bundle: pb::AssetBundle) {
    let hash = bundle.hash.clone();
    match Bundle::from_pb(bundle.clone()) {
        Ok(parsed) => {
            assert!(is_hash(&hash));
            assert_eq!(parsed.data, bundle.data);
            assert_eq!(
                Bundle::from_pb(parsed.clone().into_pb()),
                Ok(parsed.clone())
            );
            let matches = AssetHash::of(&parsed.data) == parsed.hash;
            assert_eq!(parsed.verify().is_ok(), matches, "verify");
        }
        Err(_) => assert!(!is_hash(&hash), "{hash:?} refused"),
    }
}

fn bodies(bytes: &[u8]) {
    if let Ok(request) = pb::PullRequest::decode(bytes) {
        let parsed: Result<Vec<AssetHash>, _> = request.hashes.iter().map(|h| h.parse()).collect();
        assert_eq!(parsed.is_ok(), request.hashes.iter().all(|h| is_hash(h)));
    }
    if let Ok(bundle) = pb::AssetBundle::decode(bytes) {
        check_bundle(bundle);
    }
    if let Ok(batch) = pb::PushBatch::decode(bytes) {
        for bundle in batch.bundles {
            check_bundle(bundle);
        }
    }
    if let Ok(update) = pb::MetaUpdate::decode(bytes) {
        match MetaUpdate::from_pb(update.clone()) {
            Ok(parsed) => {
                assert!(is_hash(&update.hash));
                assert_eq!(MetaUpdate::from_pb(parsed.to_pb()), Ok(parsed.clone()));
                assert_eq!(parsed.text_bytes() as usize, {
                    update.description.len() + update.tags.iter().map(String::len).sum::<usize>()
                });
            }
            Err(_) => assert!(!is_hash(&update.hash)),
        }
    }
    if let Ok(list) = pb::HashList::decode(bytes) {
        for summary in &list.assets {
            check_summary(summary);
        }
        check_cursor(&list.next);
    }
    if let Ok(page) = pb::ChangePage::decode(bytes) {
        for change in &page.changes {
            if let Some(summary) = &change.summary {
                check_summary(summary);
            }
        }
    }
    if let Ok(answer) = pb::PullResponse::decode(bytes) {
        for bundle in answer.bundles {
            check_bundle(bundle);
        }
        for missing in &answer.missing {
            assert_eq!(missing.parse::<AssetHash>().is_ok(), is_hash(missing));
        }
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        check_cursor(text);
        if let Ok(patch) = serde_json::from_str::<MetaPatch>(text) {
            let again: MetaPatch =
                serde_json::from_str(&serde_json::to_string(&patch).unwrap()).unwrap();
            assert_eq!(again, patch);
        }
    }
}

/// A listing cursor: `MS:HASH`, which prints back to an equal cursor.
fn check_cursor(text: &str) {
    if let Some(cursor) = api::parse_since_cursor(text) {
        let printed = api::since_cursor(&cursor);
        assert_eq!(api::parse_since_cursor(&printed), Some(cursor));
    }
}

// ---------------------------------------------------------------------------
// The real router.

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// Inputs served by one store before a fresh one replaces it: a store costs
/// milliseconds to set up (its coded cells), and one per input would make
/// this mode a hundred times slower; a bounded number keeps its memory (every
/// pushed asset) bounded too.
const INPUTS_PER_STORE: u32 = 256;

/// The router over an in-memory store holding one known asset, and that
/// asset; a fresh one every [`INPUTS_PER_STORE`] inputs.
fn server_app() -> (axum::Router, Bundle) {
    static APP: Mutex<Option<(axum::Router, u32)>> = Mutex::new(None);
    let known = Bundle {
        hash: AssetHash::of(b"known"),
        data: Bytes::from_static(b"known"),
        meta: pb::AssetMeta::default(),
    };
    let mut slot = APP.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((app, served)) = slot.as_mut() {
        if *served < INPUTS_PER_STORE {
            *served += 1;
            return (app.clone(), known);
        }
    }
    *slot = None;
    let can = EmbeddedCan::memory(StoreLimits::default()).expect("a memory store");
    let app = router(Arc::new(can), ServerConfig::default());
    let push = pb::PushBatch {
        bundles: vec![known.clone().into_pb()],
    };
    let (status, _) =
        runtime().block_on(call(&app, "POST", "/sync/push-batch", push.encode_to_vec()));
    assert!(status.is_success(), "seeding the store: {status}");
    *slot = Some((app.clone(), 1));
    (app, known)
}

/// The routes a client POSTs a protobuf body to, and what a 2xx answers.
#[derive(Clone, Copy, Debug)]
enum Route {
    Pull,
    Push,
    PushBatch,
    Meta,
    Patch,
}

fn server(input: &[u8]) {
    let mut u = Unstructured::new(input);
    let route = match u.int_in_range(0..=4u8).unwrap_or(0) {
        0 => Route::Pull,
        1 => Route::Push,
        2 => Route::PushBatch,
        3 => Route::Meta,
        _ => Route::Patch,
    };
    let body = Bytes::copy_from_slice(u.take_rest());
    let (app, known) = server_app();
    runtime().block_on(async move {
        let (method, path) = match route {
            Route::Pull => ("POST", "/sync/pull".to_owned()),
            Route::Push => ("POST", "/sync/push".to_owned()),
            Route::PushBatch => ("POST", "/sync/push-batch".to_owned()),
            Route::Meta => ("POST", "/sync/meta".to_owned()),
            Route::Patch => ("PATCH", format!("/assets/{}/meta", known.hash)),
        };
        let (status, answer) = call(&app, method, &path, body.to_vec()).await;
        assert!(
            status.is_success() || status.is_client_error(),
            "{method} {path} answered {status}: {}",
            String::from_utf8_lossy(&answer)
        );
        if status.is_success() {
            match route {
                Route::Pull => {
                    let answer = pb::PullResponse::decode(answer).expect("a PullResponse");
                    let asked = pb::PullRequest::decode(body).expect("it was a PullRequest");
                    assert_eq!(
                        answer.bundles.len() + answer.missing.len(),
                        asked.hashes.len(),
                        "one answer per hash asked"
                    );
                    for bundle in answer.bundles {
                        let bundle = Bundle::from_pb(bundle).expect("a well-formed bundle");
                        assert!(bundle.verify().is_ok(), "the store serves what it verified");
                    }
                }
                Route::Push => {
                    let answer = pb::PushResponse::decode(answer).expect("a PushResponse");
                    let pushed = pb::AssetBundle::decode(body).expect("it was an AssetBundle");
                    let hash: AssetHash = answer.hash.parse().expect("a hash");
                    assert_eq!(hash, AssetHash::of(&pushed.data), "stored what was sent");
                }
                Route::PushBatch => {
                    let answer =
                        pb::PushBatchResponse::decode(answer).expect("a PushBatchResponse");
                    let batch = pb::PushBatch::decode(body).expect("it was a PushBatch");
                    assert_eq!(answer.results.len(), batch.bundles.len(), "one slot each");
                    for (result, bundle) in answer.results.iter().zip(&batch.bundles) {
                        if result.error.is_empty() {
                            assert_eq!(result.hash, AssetHash::of(&bundle.data).to_hex());
                        } else {
                            assert!(
                                (400..500).contains(&result.status),
                                "slot status {} for {:?}",
                                result.status,
                                result.error
                            );
                        }
                    }
                }
                Route::Meta | Route::Patch => {
                    let _: serde_json::Value =
                        serde_json::from_slice(&answer).expect("a JSON answer");
                }
            }
        }
    });
}

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (http::StatusCode, Bytes) {
    let content_type = if path.starts_with("/sync/") {
        "application/x-protobuf"
    } else {
        "application/json"
    };
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .expect("a request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a whole answer")
        .to_bytes();
    (status, body)
}

// ---------------------------------------------------------------------------
// Server-sent events.

/// Every message (decoded as a change where it is one) until the first
/// error or the end of `chunks`.
fn parse_all<'a>(
    max_line: usize,
    chunks: impl Iterator<Item = &'a [u8]>,
) -> (Vec<SseMessage>, Option<SseError>) {
    let mut parser = SseParser::new(max_line);
    let mut out = Vec::new();
    for chunk in chunks {
        parser.feed(chunk);
        loop {
            match parser.next_message() {
                Ok(Some(message)) => {
                    assert!(
                        message.data.len() <= max_line,
                        "{} bytes of data over the limit {max_line}",
                        message.data.len()
                    );
                    assert_eq!(parser.last_event_id(), message.id.as_deref());
                    out.push(message);
                }
                Ok(None) => break,
                Err(err) => return (out, Some(err)),
            }
        }
    }
    (out, None)
}

fn sse(input: &[u8]) {
    let mut u = Unstructured::new(input);
    let max_line = match u.int_in_range(0..=3u8).unwrap_or(0) {
        0 => can_sync::can::sse::DEFAULT_MAX_LINE,
        1 => 0,
        2 => 16,
        _ => usize::from(u.int_in_range(0..=512u16).unwrap_or(0)),
    };
    let cuts: Vec<usize> = (0..u.int_in_range(0..=16u8).unwrap_or(0))
        .map(|_| usize::from(u.int_in_range(0..=64u8).unwrap_or(0)))
        .collect();
    let stream = u.take_rest();

    let whole = parse_all(max_line, std::iter::once(stream));
    let mut pieces = Vec::new();
    let mut at = 0;
    for cut in cuts {
        let end = (at + cut).min(stream.len());
        pieces.push(&stream[at..end]);
        at = end;
    }
    pieces.push(&stream[at..]);
    let chunked = parse_all(max_line, pieces.iter().copied());
    assert_eq!(chunked, whole, "the chunking changed what was parsed");
    // Byte by byte, too.
    let bytes = parse_all(max_line, stream.chunks(1));
    assert_eq!(bytes, whole, "byte-by-byte parsing differs");

    for message in &whole.0 {
        let Ok(event) = decode_change(message) else {
            continue;
        };
        let id = message.id.as_deref().expect("a change has an id");
        assert_eq!(id.trim().parse::<u64>(), Ok(event.seq));
        let text = encode_event(&event);
        let (again, err) = parse_all(
            can_sync::can::sse::DEFAULT_MAX_LINE,
            std::iter::once(text.as_bytes()),
        );
        assert_eq!(err, None, "{text:?}");
        assert_eq!(again.len(), 1, "{text:?}");
        assert_eq!(decode_change(&again[0]), Ok(event));
    }
}
