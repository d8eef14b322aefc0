//! Generates the tonic/prost code from `proto/` with protox, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/fleet/v1/common.proto",
        "proto/fleet/v1/worker.proto",
        "proto/fleet/v1/client.proto",
        "proto/fleet/v1/store.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
