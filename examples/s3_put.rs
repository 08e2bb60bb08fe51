//! The baseline of the object-storage measurements (PERFORMANCE.md,
//! "Object storage (issue 23)"): uploads one file to an S3 bucket as a
//! direct multipart upload, with the part size and the parts in flight a
//! store uses, through the same client, and prints the seconds it took.
//!
//! ```sh
//! AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… \
//!   cargo run --release --example s3_put -- FILE s3://BUCKET/KEY http://127.0.0.1:PORT
//! ```

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
