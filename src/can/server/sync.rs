//! The sync API's request/answer routes (`docs/openapi.json`), protobuf bodies: the
//! summary list, batched pull, push (one or a batch), and metadata updates. The streamed routes
//! of the sync API are in `blobs.rs` and `events.rs`.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;

use super::input::{invalid, list_query, read_protobuf, CellsQuery, ChangesQuery, ListQuery};
use super::{error_response, protobuf, AppState};
use crate::asset::{AssetHash, Bundle, MetaUpdate, VerifiedBundle};
use crate::can::api::{self, Applied};
use crate::can::{CanError, SinceCursor};
use crate::pb;

/// `GET /sync/hashes?since=MS&after=CURSOR&limit=N`: a page of summaries, in
/// hash order (cursor: the last hash), or by change time with `since`
/// (cursor: `MS:HASH`).
pub(super) async fn hashes(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, CanError> {
    let query = list_query(query)?;
    let limit = api::page_limit(query.limit);
    let (summaries, next) = match query.since {
        None => {
            let after = query
                .after
                .as_deref()
                .map(|text| text.parse::<AssetHash>().map_err(invalid))
                .transpose()?;
            let page = state.can.list_page(after, limit).await?;
            (page.items, page.next.as_ref().map(api::hash_cursor))
        }
        Some(since) => {
            let page = state
                .can
                .list_since(since, since_after(query.after.as_deref())?, limit)
                .await?;
            (page.items, page.next.as_ref().map(api::since_cursor))
        }
    };
    Ok(protobuf(&pb::HashList {
        assets: summaries.iter().map(|s| s.to_pb()).collect(),
        next: next.unwrap_or_default(),
    }))
}

/// The `after=` of a listing by change time.
pub(super) fn since_after(after: Option<&str>) -> Result<Option<SinceCursor>, CanError> {
    after
        .map(|text| {
            api::parse_since_cursor(text)
                .ok_or_else(|| invalid(format!("bad cursor {text:?}: expected MS:HASH")))
        })
        .transpose()
}

/// `GET /sync/changes?after=SEQ&limit=N`: a page of the compacted change log.
pub(super) async fn changes(
    State(state): State<AppState>,
    query: Result<Query<ChangesQuery>, QueryRejection>,
) -> Result<Response, CanError> {
    let Query(query) =
        query.map_err(|rejection| invalid(format!("bad query: {}", rejection.body_text())))?;
    let page = state
        .can
        .changes(query.after, api::page_limit(query.limit))
        .await?;
    Ok(protobuf(&pb::ChangePage {
        changes: page
            .changes
            .iter()
            .map(|change| pb::Change {
                seq: change.seq,
                kind: api::change_kind_code(change.kind),
                summary: Some(change.summary.to_pb()),
            })
            .collect(),
        next_after: page.next_after,
        store_id: page.store_id,
    }))
}

/// `GET /sync/coded/cells?start=I&count=N`: a run of the store's coded cells
/// in the wire form of [`crate::recon::riblt::encode_cells`]; 404 when the
/// store keeps none.
pub(super) async fn coded_cells(
    State(state): State<AppState>,
    query: Result<Query<CellsQuery>, QueryRejection>,
) -> Result<Response, CanError> {
    let Query(query) =
        query.map_err(|rejection| invalid(format!("bad query: {}", rejection.body_text())))?;
    Ok(
        match state.can.coded_cells(query.start, query.count).await? {
            Some(cells) => octets(crate::recon::riblt::encode_cells(&cells)),
            None => no_coded_cells(),
        },
    )
}

/// `GET /sync/coded/probe`: the probe of the store's coded cells, in the wire
/// form of [`crate::recon::riblt::estimate::Probe::encode`]; 404 when the
/// store keeps none.
pub(super) async fn coded_probe(State(state): State<AppState>) -> Result<Response, CanError> {
    Ok(match state.can.coded_probe().await? {
        Some(probe) => octets(probe.encode()),
        None => no_coded_cells(),
    })
}

fn octets(body: Vec<u8>) -> Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        body,
    )
        .into_response()
}

fn no_coded_cells() -> Response {
    error_response(
        axum::http::StatusCode::NOT_FOUND,
        "this store keeps no coded cells",
    )
}

/// `POST /sync/pull`.
pub(super) async fn pull(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, CanError> {
    let request: pb::PullRequest = read_protobuf(&state, &headers, body).await?;
    let hashes = request
        .hashes
        .iter()
        .map(|hash| hash.parse())
        .collect::<Result<Vec<AssetHash>, _>>()
        .map_err(invalid)?;
    let pulled = state.can.pull(&hashes).await?;
    Ok(protobuf(&pb::PullResponse {
        bundles: pulled.bundles.into_iter().map(Bundle::into_pb).collect(),
        missing: pulled.missing.iter().map(AssetHash::to_hex).collect(),
    }))
}

/// `POST /sync/push`.
pub(super) async fn push(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, CanError> {
    let bundle: pb::AssetBundle = read_protobuf(&state, &headers, body).await?;
    let pushed = state
        .can
        .push(Bundle::from_pb(bundle).map_err(invalid)?)
        .await?;
    Ok(protobuf(&pb::PushResponse {
        hash: pushed.hash.to_hex(),
        already_existed: pushed.already_existed,
        seq: pushed.seq.unwrap_or(0),
    }))
}

/// `POST /sync/push-batch`: every bundle verified here (the bytes crossed
/// the network), the good ones stored with one
/// [`push_batch`](crate::can::Can::push_batch); one result per bundle, in
/// order. A bundle that is malformed or whose bytes do not match its hash
/// gets its error in its slot and nothing stored; the others are stored. A
/// failure of the store itself fails the whole answer (5xx): nothing of the
/// batch is acknowledged.
pub(super) async fn push_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, CanError> {
    let batch: pb::PushBatch = read_protobuf(&state, &headers, body).await?;
    let checked = tokio::task::spawn_blocking(move || {
        batch
            .bundles
            .into_iter()
            .map(|bundle| {
                let hash = bundle.hash.clone();
                let verified = Bundle::from_pb(bundle)
                    .map_err(invalid)
                    .and_then(|bundle| Ok(bundle.verify()?));
                (hash, verified)
            })
            .collect::<Vec<(String, Result<VerifiedBundle, CanError>)>>()
    })
    .await
    .map_err(|err| CanError::Storage(format!("verification task failed: {err}")))?;

    let mut good = Vec::new();
    let mut slots = Vec::with_capacity(checked.len());
    for (hash, verified) in checked {
        match verified {
            Ok(bundle) => {
                good.push(bundle);
                slots.push((hash, None));
            }
            Err(err) => slots.push((hash, Some(err))),
        }
    }
    let mut stored = state.can.push_batch(good).await?.into_iter();
    let results = slots
        .into_iter()
        .map(|(hash, refused)| {
            let answer = match refused {
                Some(err) => Err(err),
                None => stored.next().expect("one answer per stored bundle"),
            };
            push_result(hash, answer)
        })
        .collect();
    Ok(protobuf(&pb::PushBatchResponse { results }))
}

/// One slot of a batch's answer.
fn push_result(hash: String, answer: Result<crate::can::Pushed, CanError>) -> pb::PushResult {
    match answer {
        Ok(pushed) => pb::PushResult {
            hash: pushed.hash.to_hex(),
            already_existed: pushed.already_existed,
            seq: pushed.seq.unwrap_or(0),
            ..Default::default()
        },
        Err(err) => {
            let mut result = pb::PushResult {
                hash,
                status: u32::from(err.status().as_u16()),
                error: err.to_string(),
                ..Default::default()
            };
            match err {
                CanError::HashMismatch { actual, .. } => result.actual = actual.to_hex(),
                CanError::TooLarge { limit, .. } | CanError::MetaTooLarge { limit, .. } => {
                    result.limit = limit
                }
                _ => {}
            }
            result
        }
    }
}

/// `POST /sync/meta`.
pub(super) async fn meta(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Applied>, CanError> {
    let update: pb::MetaUpdate = read_protobuf(&state, &headers, body).await?;
    let applied = state
        .can
        .apply_meta(MetaUpdate::from_pb(update).map_err(invalid)?)
        .await?;
    Ok(Json(Applied { applied }))
}
