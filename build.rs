//! Compiles `proto/*.proto` with protox (a protobuf compiler in pure Rust), so a
//! fresh machine builds without `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/cansync.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        // `bytes` fields as `bytes::Bytes`: decoding from a received frame
        // shares its memory instead of copying asset data.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
