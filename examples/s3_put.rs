//! The baseline of the object-storage measurements (PERFORMANCE.md,
//! "Object storage (issue 23)"): uploads one file to an S3 bucket as a
//! direct multipart upload, with the part size and the parts in flight a
//! store uses, through the same client, and prints the seconds it took.
//!
//! ```sh
//! AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… \
//!   cargo run --release --example s3_put -- FILE s3://BUCKET/KEY http://127.0.0.1:PORT
//! ```
//!
//! With `S3_PUT_SINGLE=1`, the file goes up as one presigned, streamed
//! `PUT` instead, as a store sends a large asset that arrives in order.

use std::time::Instant;

use anyhow::{Context, Result};
use can_sync::can::store::objects::{connect, part_bytes, parts_in_flight, ObjectsConfig};
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStoreExt as _, WriteMultipart};
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: s3_put FILE s3://BUCKET/KEY ENDPOINT";
    let (file, url, endpoint) = (
        args.next().context(usage)?,
        args.next().context(usage)?,
        args.next().context(usage)?,
    );
    let config: ObjectsConfig = url.parse()?;
    let key = Path::from(config.prefix.as_str());
    let store = connect(&config.with_endpoint(Some(endpoint)), ClientOptions::new())?;
    if std::env::var("S3_PUT_SINGLE").is_ok() {
        return single_put(&store, &key, &file).await;
    }
    let started = Instant::now();
    let upload = store.put_multipart(&key).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, part_bytes());
    let mut file = tokio::fs::File::open(&file).await?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let read = file.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        bytes += read as u64;
        writer.wait_for_capacity(parts_in_flight()).await?;
        writer.write(&buffer[..read]);
    }
    writer.finish().await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "direct multipart upload: {bytes} bytes in {secs:.2} s, {:.1} MB/s \
         ({} MiB parts, {} in flight)",
        bytes as f64 / secs / 1e6,
        part_bytes() >> 20,
        parts_in_flight()
    );
    Ok(())
}

/// With `S3_PUT_SINGLE` set: the file as one presigned, streamed `PUT`,
/// as a store sends a large asset arriving in order (the measurement behind
/// `STREAMED_PUT_MAX`).
async fn single_put(store: &object_store::aws::AmazonS3, key: &Path, file: &str) -> Result<()> {
    use object_store::signer::Signer as _;
    let started = Instant::now();
    let url = store
        .signed_url(
            reqwest::Method::PUT,
            key,
            std::time::Duration::from_secs(3600),
        )
        .await?;
    let file = tokio::fs::File::open(file).await?;
    let len = file.metadata().await?.len();
    let body = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
    let client = can_sync::can::client::http_client_builder()?.build()?;
    let response = client
        .put(url)
        .header("content-length", len)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    anyhow::ensure!(status.is_success(), "{status}: {text}");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "single streamed PUT: {len} bytes in {secs:.2} s, {:.1} MB/s",
        len as f64 / secs / 1e6
    );
    Ok(())
}
