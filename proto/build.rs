//! Generates the tabadol.v1 gRPC code and the descriptor set used by server reflection.
//! protoc comes from the `protoc-bin-vendored` crate, so no system protoc is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts are single-threaded; tonic-prost-build reads PROTOC.
    std::env::set_var("PROTOC", protoc);
    let include = protoc_bin_vendored::include_path()?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let files = [
        "tabadol/v1/common.proto",
        "tabadol/v1/inquiry.proto",
        "tabadol/v1/shahkar.proto",
        "tabadol/v1/civil_registry.proto",
        "tabadol/v1/tax.proto",
        "tabadol/v1/events.proto",
        "tabadol/v1/datasets.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let files = files.map(PathBuf::from);
    let includes = [PathBuf::from("."), include];
    // Messages and servers: servers decode requests with `codec::RequestCodec`, so a
    // malformed body is INVALID_ARGUMENT for every service.
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::codec::RequestCodec")
        .file_descriptor_set_path(out.join("tabadol_descriptor.bin"))
        .compile_protos(&files, &includes)?;
    // Clients only, over the messages above, with prost's own codec (a malformed response
    // stays INTERNAL on the client side).
    let client_out = out.join("client");
    std::fs::create_dir_all(&client_out)?;
    tonic_prost_build::configure()
        .build_server(false)
        .extern_path(".tabadol.v1", "crate::v1")
        .out_dir(&client_out)
        .compile_protos(&files, &includes)?;
    Ok(())
}
