//! Generates the tonic/prost code from `proto/` with protox, so no system `protoc` is needed:
//! the cluster's own protocol (`fleet/v1`), and A2A 1.0's gRPC binding (`a2a/v1`) with the
//! google.rpc error model its errors travel in. A2A's messages also get serde code for
//! their proto3 JSON form (pbjson), which is what the JSON bindings speak.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fleet = [
        "proto/fleet/v1/common.proto",
        "proto/fleet/v1/worker.proto",
        "proto/fleet/v1/client.proto",
        "proto/fleet/v1/store.proto",
    ];
    let a2a = "proto/a2a/v1/a2a.proto";
    let rpc = "proto/google/rpc/status.proto";
    for file in fleet.iter().chain([&a2a, &rpc]) {
        println!("cargo:rerun-if-changed={file}");
    }
    tonic_prost_build::configure().compile_fds(protox::compile(fleet, ["proto"])?)?;
    tonic_prost_build::configure().compile_fds(protox::compile([rpc], ["proto"])?)?;

    // Struct, Value, Timestamp and Empty from pbjson-types: prost types with serde's
    // proto3 JSON mapping, which A2A's messages embed.
    let a2a_set = protox::compile([a2a], ["proto"])?;
    let mut a2a_build = tonic_prost_build::configure();
    for t in ["Struct", "Value", "ListValue", "NullValue", "Timestamp"] {
        a2a_build =
            a2a_build.extern_path(format!(".google.protobuf.{t}"), format!("::pbjson_types::{t}"));
    }
    a2a_build.compile_fds(a2a_set.clone())?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    pbjson_build::Builder::new()
        .out_dir(&out)
        .register_descriptors(&prost::Message::encode_to_vec(&a2a_set))?
        // The head's cards carry A2A 0.3's fields beside 1.0's: dropped, not refused.
        .ignore_unknown_fields()
        .build(&[".lf.a2a.v1"])?;
    Ok(())
}
