//! The sync API's request/answer routes (DESIGN §3), protobuf bodies: the
//! summary list, batched pull, push, and metadata updates. The streamed routes
//! of the sync API are in `blobs.rs` and `events.rs`.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;

use super::input::{invalid, list_query, read_protobuf, ListQuery};
use super::{protobuf, AppState};
use crate::asset::{AssetHash, Bundle, MetaUpdate};
use crate::can::api::Applied;
use crate::can::CanError;
use crate::pb;

/// `GET /sync/hashes?since=MS`.
pub(super) async fn hashes(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, CanError> {
    let query = list_query(query)?;
    let summaries = state.can.list(query.since).await?;
    Ok(protobuf(&pb::HashList {
        assets: summaries.iter().map(|s| s.to_pb()).collect(),
    }))
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
    }))
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
