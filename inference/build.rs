//! With the `cuda` feature, compiles our CUDA kernels (src/cuda/*.cu) to PTX with nvcc,
//! embedded in the crate and JIT-compiled by the driver for whatever GPU it finds.
//! PTX for compute capability 8.0 runs on Ampere, Ada and Hopper alike.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/cuda/convert.cuh");
    println!("cargo::rerun-if-changed=src/cuda/quant.cuh");
    for name in KERNELS {
        println!("cargo::rerun-if-changed=src/cuda/{name}.cu");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for name in KERNELS {
        let source = format!("src/cuda/{name}.cu");
        let status = Command::new("nvcc")
            .args(["--ptx", "-arch=compute_80", "-O3", "-std=c++17", &source, "-o"])
            .arg(out.join(format!("{name}.ptx")))
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("nvcc failed on {source} ({s})"),
            Err(e) => panic!(
                "the cuda feature needs nvcc on PATH ({e}); scripts/cuda-toolchain.sh installs it"
            ),
        }
    }
}

const KERNELS: [&str; 3] = ["paged", "fused", "gemm"];
