//! [`ObjectError`]: what went wrong with object storage, and which of its
//! failures may pass, so that the store retries those (and tells its
//! callers, as [`CanError::Unavailable`], that asking again may help).

use crate::can::CanError;

/// What went wrong with object storage.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// `--blobs` is not an `s3://` URL this store understands.
    #[error("object storage URL {url:?}: {why}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The client could not be set up.
    #[error("object storage client: {0}")]
    Client(#[source] object_store::Error),
    /// Object storage needs the async runtime, and the store was opened
    /// outside one.
    #[error("object storage needs a tokio runtime")]
    NoRuntime,
    /// The object is not there.
    #[error("object {0} is missing")]
    Missing(String),
    /// A request failed for good, or kept failing past the retry time.
    #[error("object {key}: {source}")]
    Request {
        /// The object's key.
        key: String,
        /// The last failure.
        #[source]
        source: object_store::Error,
    },
    /// A pack segment to upload is not as the index records it.
    #[error("pack segment {key}: {why}")]
    Segment {
        /// The object's key.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// A streamed `PUT` failed (`streamed.rs`); `transient` when it may
    /// pass (the server unreachable, a 5xx, a cut connection).
    #[error("object {key}: {why}")]
    Put {
        /// The object's key.
        key: String,
        /// What went wrong.
        why: String,
        /// Whether asking again later may succeed.
        transient: bool,
    },
    /// A task uploading a part failed (panicked or was cancelled).
    #[error("uploading a part of {key}: {why}")]
    Task {
        /// The object's key.
        key: String,
        /// What happened to the task.
        why: String,
    },
    /// Reading the local file to upload failed.
    #[error("reading {path} to upload it: {source}")]
    Local {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl From<ObjectError> for CanError {
    fn from(err: ObjectError) -> Self {
        match &err {
            // The server is away or failing: worth a retry later.
            ObjectError::Request { source, .. } if is_transient(source) => {
                Self::Unavailable(err.to_string())
            }
            ObjectError::Put {
                transient: true, ..
            } => Self::Unavailable(err.to_string()),
            _ => Self::Storage(err.to_string()),
        }
    }
}

/// True for a failure that may pass: the server unreachable, a 5xx, a cut
/// connection. `object_store` reports those as its generic error; what it
/// names (missing, exists, refused, unauthenticated) will not change by
/// asking again.
pub(super) fn is_transient(err: &object_store::Error) -> bool {
    matches!(err, object_store::Error::Generic { .. })
}

/// True when a conditional create failed because the object is there.
pub(super) fn already_there(err: &object_store::Error) -> bool {
    matches!(
        err,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }
    )
}
