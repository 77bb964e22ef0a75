//! Generates the Rust code of every `.proto` in `api/` with tonic-build.
//!
//! Uses the `protoc` shipped inside the `protoc-bin-vendored` crate unless `PROTOC` is set, so a
//! fresh machine needs no system protobuf compiler.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "api/eventsourcing/messages.proto",
    "api/eventsourcing/eventstore_service.proto",
    "api/common/service_information.proto",
    "api/gateway/messages.proto",
    "api/gateway/service.proto",
    "api/monoskope/backup/v1/backup_service.proto",
    "api/monoskope/backup/v1/archive.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY of intent: build scripts are single-threaded; setting PROTOC here only tells
        // prost-build where the vendored compiler is.
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        std::env::set_var("PROTOC", protoc);
    }
    let include = protoc_bin_vendored::include_path()?;
    let include_str = include.to_str().ok_or("non-UTF-8 include path")?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("descriptor.bin"))
        // Deterministic encodings: metadata maps sorted by key.
        .btree_map(".")
        .compile_protos(PROTOS, &[".", include_str])?;
    Ok(())
}
