//! Compiles `proto/` with protox (pure Rust, so no system `protoc` is needed) and generates the
//! tonic/prost bindings plus the encoded descriptor set that server reflection serves.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "partnerledger/common/v1/common.proto",
        "partnerledger/crm/v1/crm.proto",
        "partnerledger/crm/v1/events.proto",
        "partnerledger/attribution/v1/attribution.proto",
        "partnerledger/attribution/v1/events.proto",
        "partnerledger/commissions/v1/commissions.proto",
        "partnerledger/commissions/v1/book.proto",
        "partnerledger/compliance/v1/compliance.proto",
        "partnerledger/compliance/v1/events.proto",
        "partnerledger/audit/v1/audit.proto",
    ];
    let fds = protox::compile(files.iter().map(|f| root.join(f)), [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptor.bin"), fds.encode_to_vec())?;
    let mut builder = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Requests that do not decode are the caller's error, not ours (see src/codec.rs).
        .codec_path("crate::codec::ApiCodec");
    // The stored book events' byte fields as `Bytes`: prost copies a `Vec<u8>` field twice on
    // decode (through a `Bytes`), a tenth of an audit replay.
    for message in [
        "StoredBookEvent",
        "StoredBookEventV3",
        "StoredBookBody",
        "StoredBookPostings",
        "StoredTransaction",
        "StoredPostings",
        "StoredAccount",
    ] {
        builder = builder.bytes(format!(".partnerledger.commissions.v1.{message}"));
    }
    builder.compile_fds(fds)?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
