//! What names a bucket and how the node reaches it: [`ObjectsConfig`]
//! (`--blobs s3://BUCKET/PREFIX`, `--s3-endpoint`), the sizes and counts
//! that bound an upload, and [`connect`], the S3 client over the node's own
//! HTTP stack.

use std::str::FromStr;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{ClientOptions, RetryConfig};

use super::ObjectError;
use crate::can::CanError;

/// The size of one part of a multipart upload, and so the size above which
/// an upload is multipart: below it a single `PUT` after the hash check
/// costs one request instead of three. S3 wants parts of at least 5 MiB.
/// Measured in PERFORMANCE.md ("Object storage").
pub const PART_BYTES: usize = 8 * 1024 * 1024;

/// The part size in force: [`PART_BYTES`], or `CAN_SYNC_S3_PART_BYTES`
/// (at least 5 MiB), read once, for measuring it again.
pub fn part_bytes() -> usize {
    static PART: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PART.get_or_init(|| {
        std::env::var("CAN_SYNC_S3_PART_BYTES")
            .ok()
            .and_then(|value| value.parse::<usize>().ok())
            .map_or(PART_BYTES, |bytes| bytes.max(5 * 1024 * 1024))
    })
}

/// Parts uploading at once, across every upload of the store: each holds
/// its bytes in memory until the server took them, so this bounds what
/// uploads hold (`PART_BYTES` each) whatever the number of transfers.
pub const PARTS_IN_FLIGHT: usize = 4;

/// The parts in flight in force: [`PARTS_IN_FLIGHT`], or
/// `CAN_SYNC_S3_PARTS_IN_FLIGHT` (at least 1), read once, for measuring it
/// again.
pub fn parts_in_flight() -> usize {
    static IN_FLIGHT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *IN_FLIGHT.get_or_init(|| {
        std::env::var("CAN_SYNC_S3_PARTS_IN_FLIGHT")
            .ok()
            .and_then(|value| value.parse::<usize>().ok())
            .map_or(PARTS_IN_FLIGHT, |parts| parts.max(1))
    })
}

/// How long a failing request is retried before the operation fails by
/// default: long enough for a server restart, short enough that a transfer
/// fails (and is retried by its peer) rather than hanging.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(120);

/// The endpoint, bucket and prefix of an object store, as the flags give
/// them: `--blobs s3://BUCKET/PREFIX` and `--s3-endpoint URL`. Credentials
/// and region come from the environment (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`), never from a flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectsConfig {
    /// The bucket.
    pub bucket: String,
    /// The key prefix every object of the store is under, without slashes
    /// at its ends; empty for the bucket's root.
    pub prefix: String,
    /// The server's URL; `None` for AWS itself.
    pub endpoint: Option<String>,
    /// How long a failing request is retried ([`DEFAULT_RETRY_FOR`]).
    pub retry_for: Duration,
}

impl ObjectsConfig {
    /// The same store on the server at `endpoint`.
    pub fn with_endpoint(mut self, endpoint: Option<String>) -> Self {
        self.endpoint = endpoint;
        self
    }

    /// The same store, retrying a failing request for `retry_for`.
    pub fn with_retry_for(mut self, retry_for: Duration) -> Self {
        self.retry_for = retry_for;
        self
    }
}

impl FromStr for ObjectsConfig {
    type Err = ObjectError;

    /// Parses `s3://BUCKET` or `s3://BUCKET/PREFIX`.
    fn from_str(url: &str) -> Result<Self, ObjectError> {
        let bad = |why: &'static str| ObjectError::Url {
            url: url.to_string(),
            why,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("expected s3://BUCKET/PREFIX"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket"));
        }
        Ok(Self {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: None,
            retry_for: DEFAULT_RETRY_FOR,
        })
    }
}

/// The S3 client of the bucket `config` names, as a store uses it: the
/// node's HTTP client, credentials and region from the environment, no
/// retries of its own (a store retries and counts them). Public for tools
/// that measure the same server directly (`examples/s3_put.rs`).
pub fn connect(config: &ObjectsConfig, options: ClientOptions) -> Result<AmazonS3, ObjectError> {
    let mut builder = AmazonS3Builder::from_env()
        .with_http_connector(NodeHttp)
        .with_bucket_name(&config.bucket)
        // Retries are the store's, so that each is counted and the stream
        // being uploaded waits while they run.
        .with_retry(RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        })
        .with_client_options(options);
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        builder = builder.with_region("us-east-1");
    }
    if let Some(endpoint) = &config.endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    builder.build().map_err(ObjectError::Client)
}

/// The HTTP client object storage requests go through: the node's own
/// (`http_client_builder`: rustls with iroh's crypto provider, which the
/// node installs nowhere process-wide), HTTP/1.1 with a bounded connect
/// and request time.
#[derive(Debug)]
struct NodeHttp;

impl object_store::client::HttpConnector for NodeHttp {
    fn connect(&self, _: &ClientOptions) -> object_store::Result<object_store::client::HttpClient> {
        let client = node_http_client(Some(Duration::from_secs(60))).map_err(|err| {
            object_store::Error::Generic {
                store: "S3",
                source: Box::new(err),
            }
        })?;
        Ok(object_store::client::HttpClient::new(client))
    }
}

/// The client [`NodeHttp`] hands `object_store` (`read_timeout` 60 s),
/// and streamed `PUT`s use (none: reqwest times a request from its start
/// to its answer's headers, which for a `PUT` fed at a transfer's pace
/// may be minutes; `streamed.rs` bounds its stalls itself).
pub(super) fn node_http_client(
    read_timeout: Option<Duration>,
) -> Result<reqwest::Client, CanError> {
    crate::can::client::http_client_builder().and_then(|builder| {
        let builder = builder
            .http1_only()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30));
        match read_timeout {
            Some(timeout) => builder.read_timeout(timeout),
            None => builder,
        }
        .build()
        .map_err(|err| CanError::Invalid(format!("HTTP client: {err}")))
    })
}

/// Whether a streamed `PUT` may carry the uploads of this process: not when
/// server-side encryption is configured (`AWS_SERVER_SIDE_ENCRYPTION`,
/// `AWS_SSE_*`), whose headers `object_store` adds to its own requests but
/// a presigned one cannot carry.
pub(super) fn streamed_puts_allowed() -> bool {
    !std::env::vars_os().any(|(key, _)| {
        key.to_str().is_some_and(|key| {
            let key = key.to_ascii_uppercase();
            key == "AWS_SERVER_SIDE_ENCRYPTION" || key.starts_with("AWS_SSE_")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_bucket_and_prefix() {
        let config: ObjectsConfig = "s3://archive/node-a/".parse().unwrap();
        assert_eq!(
            (config.bucket.as_str(), config.prefix.as_str()),
            ("archive", "node-a")
        );
        let config: ObjectsConfig = "s3://archive".parse().unwrap();
        assert_eq!(config.prefix, "");
        assert!("http://archive".parse::<ObjectsConfig>().is_err());
        assert!("s3:///x".parse::<ObjectsConfig>().is_err());
    }
}
