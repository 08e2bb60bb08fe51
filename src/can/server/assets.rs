//! The user-facing routes (`docs/openapi.json`), JSON: add an asset with its metadata
//! in headers, read and patch its metadata, list what changed, and health.
//! Reading an asset's bytes (`GET /assets/{hash}`) is in `blobs.rs`, shared
//! with the sync API.

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::input::{list_query, parse_hash, read_body, read_json, text_header, ListQuery};
use super::sync::since_after;
use super::AppState;
use crate::asset::{AssetHash, Bundle, MetaEdit};
use crate::can::api::{
    self, AssetInfo, Health, MetaPatch, Stored, SummaryInfo, ASSET_DESCRIPTION_HEADER,
    ASSET_MIME_HEADER, ASSET_NAME_HEADER, ASSET_TAGS_HEADER, NEXT_CURSOR_HEADER,
};
use crate::can::CanError;
use crate::clock::now_ms;
use crate::pb;

/// `POST /assets`: stores raw bytes with metadata from headers.
pub(super) async fn post_asset(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, CanError> {
    let data = read_body(&headers, body, state.config.max_body_bytes).await?;
    let now = now_ms();
    let meta = pb::AssetMeta {
        name: text_header(&headers, ASSET_NAME_HEADER)?.unwrap_or_default(),
        mime_type: text_header(&headers, ASSET_MIME_HEADER)?.unwrap_or_default(),
        description: text_header(&headers, ASSET_DESCRIPTION_HEADER)?.unwrap_or_default(),
        tags: text_header(&headers, ASSET_TAGS_HEADER)?
            .map(|tags| {
                tags.split(',')
                    .map(str::trim)
                    .filter(|tag| !tag.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        is_trashed: false,
        created_at_ms: now,
        meta_updated_at_ms: now,
    };
    let size = data.len() as u64;
    let hash = {
        let data = data.clone();
        crate::cpu::run(data.len(), move || AssetHash::of(&data))
            .await
            .map_err(|err| CanError::Storage(format!("hashing task failed: {err}")))?
    };
    let answer = Json(Stored {
        hash: hash.to_hex(),
        size,
    });
    // Uploading bytes again must not overwrite the metadata they already have.
    if state.can.meta(hash).await?.is_some() {
        return Ok((StatusCode::OK, answer).into_response());
    }
    let pushed = state.can.push(Bundle { hash, data, meta }).await?;
    let status = if pushed.already_existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, answer).into_response())
}

/// `GET /assets/{hash}/meta`.
pub(super) async fn get_meta(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<AssetInfo>, CanError> {
    let hash = parse_hash(path)?;
    let (size, meta) = known_meta(&state, hash).await?;
    Ok(Json(AssetInfo::new(&hash, size, meta)))
}

/// The size and metadata of an asset the store must hold (404 otherwise).
async fn known_meta(state: &AppState, hash: AssetHash) -> Result<(u64, pb::AssetMeta), CanError> {
    state.can.meta(hash).await?.ok_or(CanError::NotFound(hash))
}

/// `PATCH /assets/{hash}/meta`: a user edit. The store stamps it so that it
/// wins over what it replaces without inheriting a far-future stamp
/// ([`crate::asset::stamp`]).
pub(super) async fn patch_meta(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<AssetInfo>, CanError> {
    let hash = parse_hash(path)?;
    let patch: MetaPatch = read_json(&state, &headers, body).await?;
    let edit = MetaEdit {
        hash,
        description: patch.description,
        tags: patch.tags,
        is_trashed: patch.is_trashed,
    };
    let meta = state.can.edit_meta(edit).await?;
    let (size, _) = known_meta(&state, hash).await?;
    Ok(Json(AssetInfo::new(&hash, size, meta)))
}

/// `GET /assets?since=MS&limit=N&after=CURSOR`: a page of summaries,
/// ascending by change time; a page that is not the last names the next
/// page's cursor in [`NEXT_CURSOR_HEADER`].
pub(super) async fn list_assets(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, CanError> {
    let query = list_query(query)?;
    let page = state
        .can
        .list_since(
            query.since.unwrap_or(i64::MIN),
            since_after(query.after.as_deref())?,
            api::page_limit(query.limit),
        )
        .await?;
    let body = Json(
        page.items
            .into_iter()
            .map(|s| SummaryInfo {
                hash: s.hash.to_hex(),
                size: s.size,
                created_at_ms: s.created_at_ms,
                meta_updated_at_ms: s.version.updated_at_ms,
            })
            .collect::<Vec<_>>(),
    );
    let mut response = body.into_response();
    if let Some(next) = page.next {
        let value = axum::http::HeaderValue::from_str(&api::since_cursor(&next))
            .expect("a cursor is ASCII");
        response.headers_mut().insert(NEXT_CURSOR_HEADER, value);
    }
    Ok(response)
}

/// `GET /health`.
pub(super) async fn health(State(state): State<AppState>) -> Result<Json<Health>, CanError> {
    let stats = state.can.stats().await?;
    Ok(Json(Health {
        status: "ok".into(),
        assets: stats.assets,
        bytes: stats.bytes,
        // Every store this server runs over has its outboards at hand.
        features: vec![api::FEATURE_OUTBOARDS.to_owned()],
    }))
}
