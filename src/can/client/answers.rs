//! HTTP answers back to the store's terms: a non-2xx answer becomes the
//! [`CanError`] its status and JSON [`ErrorBody`] stand for (the inverse of the
//! server's mapping), a transport failure becomes [`CanError::Unavailable`],
//! and a push answer (or a batch's slot) becomes [`Pushed`].

use reqwest::{RequestBuilder, Response, StatusCode};

use crate::asset::AssetHash;
use crate::can::api::ErrorBody;
use crate::can::{CanError, Pushed};
use crate::pb;

/// At most this much of an error answer is read.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Sends `request` and keeps only 2xx answers; others become errors.
pub(super) async fn send(
    request: RequestBuilder,
    context: Option<AssetHash>,
) -> Result<Response, CanError> {
    let response = request.send().await.map_err(transport)?;
    if response.status().is_success() {
        Ok(response)
    } else {
        Err(error_of(response, context).await)
    }
}

/// A reqwest error with its causes, which its own message leaves out.
pub(crate) fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A request that failed on the way: worth a retry.
pub(super) fn transport(err: reqwest::Error) -> CanError {
    CanError::Unavailable(describe(&err))
}

/// An answer that could not be read: the CAN is not well, worth a retry.
pub(super) fn bad_answer(what: String) -> CanError {
    CanError::Unavailable(format!("undecodable answer from the CAN: {what}"))
}

/// The error an unsuccessful answer stands for. `context` is the asset the
/// request was about, used when the answer does not name one.
pub(super) async fn error_of(mut response: Response, context: Option<AssetHash>) -> CanError {
    let status = response.status();
    let mut raw = Vec::new();
    while raw.len() < MAX_ERROR_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => raw.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let body: ErrorBody = serde_json::from_slice(&raw).unwrap_or_else(|_| {
        ErrorBody::new(String::from_utf8_lossy(&raw[..raw.len().min(512)]).into_owned())
    });
    error_of_answer(status, body, context)
}

/// Maps a status and its JSON error body back to a [`CanError`].
fn error_of_answer(status: StatusCode, body: ErrorBody, context: Option<AssetHash>) -> CanError {
    let parse = |hex: &Option<String>| hex.as_deref().and_then(|h| h.parse::<AssetHash>().ok());
    let unknown = AssetHash::from_bytes([0; 32]);
    match status {
        StatusCode::UNPROCESSABLE_ENTITY => {
            let expected = parse(&body.expected).or(context).unwrap_or(unknown);
            let actual = parse(&body.actual).unwrap_or(expected);
            CanError::HashMismatch { expected, actual }
        }
        StatusCode::NOT_FOUND => match context {
            Some(hash) => CanError::NotFound(hash),
            None => CanError::Invalid(format!("HTTP 404: {}", body.error)),
        },
        // The one status stands for two limits; the message tells which.
        StatusCode::PAYLOAD_TOO_LARGE if body.error.starts_with("metadata") => {
            CanError::MetaTooLarge {
                size: body.size.unwrap_or(0),
                limit: body.limit.unwrap_or(0),
            }
        }
        StatusCode::PAYLOAD_TOO_LARGE => CanError::TooLarge {
            size: body.size.unwrap_or(0),
            limit: body.limit.unwrap_or(0),
        },
        StatusCode::BAD_REQUEST => CanError::Invalid(body.error),
        // Not worth a retry: the record stays damaged until it is mended.
        StatusCode::INTERNAL_SERVER_ERROR if parse(&body.damaged).is_some() => {
            let hash = parse(&body.damaged).expect("parsed above");
            let said = format!("the record of {hash} is damaged: ");
            let why = body.error.strip_prefix(&said).unwrap_or(&body.error);
            CanError::DamagedRecord {
                hash,
                why: why.to_string(),
            }
        }
        // Not retried either. The answer does not say where the listing
        // was (`after`): the caller knows, and sets it (see `list_page`).
        StatusCode::INTERNAL_SERVER_ERROR if body.damaged_index == Some(true) => {
            let why = body
                .error
                .strip_prefix("a page of the index of assets is damaged somewhere past ")
                .and_then(|rest| rest.split_once(": "))
                .map_or(body.error.as_str(), |(_, why)| why);
            CanError::DamagedIndex {
                after: None,
                why: why.to_string(),
            }
        }
        status if status.is_server_error() => {
            CanError::Unavailable(format!("HTTP {}: {}", status.as_u16(), body.error))
        }
        status => CanError::Invalid(format!("HTTP {}: {}", status.as_u16(), body.error)),
    }
}

/// One slot of a batch push's answer, for the bundle of `hash` and `size`:
/// stored, or the error a single push would have answered.
pub(super) fn slot_of(
    result: pb::PushResult,
    hash: AssetHash,
    size: u64,
) -> Result<Pushed, CanError> {
    if result.error.is_empty() {
        let pushed = pushed_of(pb::PushResponse {
            hash: result.hash,
            already_existed: result.already_existed,
            seq: result.seq,
        })?;
        if pushed.hash != hash {
            return Err(bad_answer(format!(
                "the answer for {hash} names {}",
                pushed.hash
            )));
        }
        return Ok(pushed);
    }
    let status = u16::try_from(result.status)
        .ok()
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = ErrorBody {
        error: result.error,
        expected: Some(hash.to_hex()),
        actual: Some(result.actual).filter(|a| !a.is_empty()),
        size: Some(size),
        limit: Some(result.limit),
        ..ErrorBody::default()
    };
    Err(error_of_answer(status, body, Some(hash)))
}

/// The [`Pushed`] of a push answer.
pub(super) fn pushed_of(answer: pb::PushResponse) -> Result<Pushed, CanError> {
    Ok(Pushed {
        hash: answer
            .hash
            .parse()
            .map_err(|err: crate::asset::MalformedHash| bad_answer(err.to_string()))?,
        already_existed: answer.already_existed,
        seq: (answer.seq != 0).then_some(answer.seq),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_answers_to_errors() {
        let a = AssetHash::of(b"a");
        let b = AssetHash::of(b"b");
        let mismatch = ErrorBody {
            expected: Some(a.to_hex()),
            actual: Some(b.to_hex()),
            ..ErrorBody::new("mismatch")
        };
        assert!(matches!(
            error_of_answer(StatusCode::UNPROCESSABLE_ENTITY, mismatch, None),
            CanError::HashMismatch { expected, actual } if expected == a && actual == b
        ));
        assert!(matches!(
            error_of_answer(StatusCode::UNPROCESSABLE_ENTITY, ErrorBody::new("x"), Some(a)),
            CanError::HashMismatch { expected, actual } if expected == a && actual == a
        ));
        assert!(matches!(
            error_of_answer(StatusCode::NOT_FOUND, ErrorBody::new("x"), Some(a)),
            CanError::NotFound(h) if h == a
        ));
        let large = ErrorBody {
            size: Some(10),
            limit: Some(5),
            ..ErrorBody::new("big")
        };
        assert!(matches!(
            error_of_answer(StatusCode::PAYLOAD_TOO_LARGE, large, None),
            CanError::TooLarge { size: 10, limit: 5 }
        ));
        assert!(matches!(
            error_of_answer(StatusCode::BAD_REQUEST, ErrorBody::new("x"), None),
            CanError::Invalid(_)
        ));
        let damaged = CanError::DamagedRecord {
            hash: a,
            why: "corrupt asset record".into(),
        };
        let answered = ErrorBody {
            damaged: Some(a.to_hex()),
            ..ErrorBody::new(damaged.to_string())
        };
        let mapped = error_of_answer(StatusCode::INTERNAL_SERVER_ERROR, answered, None);
        assert!(!mapped.is_transient(), "a damaged record is not retried");
        assert_eq!(mapped.to_string(), damaged.to_string());
        let damaged = CanError::DamagedIndex {
            after: Some(a),
            why: "a leaf: bad length".into(),
        };
        let answered = ErrorBody {
            damaged_index: Some(true),
            ..ErrorBody::new(damaged.to_string())
        };
        match error_of_answer(StatusCode::INTERNAL_SERVER_ERROR, answered, None) {
            CanError::DamagedIndex { why, .. } => assert_eq!(why, "a leaf: bad length"),
            other => panic!("a damaged index, not retried: {other:?}"),
        }
        for status in [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            assert!(error_of_answer(status, ErrorBody::new("x"), None).is_transient());
        }
    }
}
