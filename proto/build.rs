//! Generates the tonic/prost code from `proto/` with protox, so no system `protoc` is needed:
//! the cluster's own protocol (`fleet/v1`), and A2A 1.0's gRPC binding (`a2a/v1`) with the
//! google.rpc error model its errors travel in. A2A's descriptor set is kept too: the head
//! maps its messages to their proto3 JSON form by reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fleet = [
        "proto/fleet/v1/common.proto",
        "proto/fleet/v1/worker.proto",
        "proto/fleet/v1/client.proto",
        "proto/fleet/v1/store.proto",
    ];
    let a2a = ["proto/a2a/v1/a2a.proto", "proto/google/rpc/status.proto"];
    for file in fleet.iter().chain(&a2a) {
        println!("cargo:rerun-if-changed={file}");
    }
    tonic_prost_build::configure().compile_fds(protox::compile(fleet, ["proto"])?)?;

    let a2a_set = protox::Compiler::new(["proto"])?
        .include_imports(true)
        .include_source_info(false)
        .open_files(a2a)?
        .file_descriptor_set();
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("a2a_descriptor_set.bin"), prost::Message::encode_to_vec(&a2a_set))?;
    tonic_prost_build::configure().compile_fds(a2a_set)?;
    Ok(())
}
