//! The `fleet-worker` binary's handling of bad settings.

use std::process::Command;

fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fleet-worker"))
}

#[test]
fn a_malformed_head_url_is_refused() -> std::io::Result<()> {
    let output = worker().args(["--head", "not a url"]).output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid head address"), "{stderr}");
    Ok(())
}

#[test]
fn bad_flags_are_refused() -> std::io::Result<()> {
    let output = worker().args(["--head", "http://127.0.0.1:1", "--slots", "0"]).output()?;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--slots must be at least 1"));
    let output = worker().args(["--head", "http://127.0.0.1:1", "--label", "novalue"]).output()?;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("KEY=VALUE"));
    Ok(())
}

#[test]
fn a_missing_models_dir_is_a_clear_error() -> std::io::Result<()> {
    let output =
        worker().args(["--head", "http://127.0.0.1:1", "--models-dir", "/no/such/dir"]).output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot read the models dir /no/such/dir"), "{stderr}");
    Ok(())
}

/// No GPU and no driver on CI machines: `--device cuda` stops the worker at start and says
/// why (a CPU build: no CUDA support; a CUDA build: no driver), and it offers 0 GPUs.
#[test]
fn device_cuda_without_a_gpu_is_refused_with_the_reason() -> std::io::Result<()> {
    let output = worker().args(["--head", "http://127.0.0.1:1", "--device", "cuda"]).output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let reason = if fleet_inference::gpu::CUDA_BUILD {
        "no NVIDIA driver found"
    } else {
        "this build has no CUDA support"
    };
    assert!(stderr.contains("--device: device \"cuda\"") && stderr.contains(reason), "{stderr}");
    Ok(())
}

#[test]
fn gpu_detection_without_a_driver_finds_none_and_says_why() {
    let detected = fleet_inference::gpu::detect();
    if std::path::Path::new("/dev/nvidiactl").exists() {
        return; // a machine with a driver: nothing to say about the no-driver case
    }
    assert!(detected.gpus().is_empty(), "{detected:?}");
    let fleet_inference::gpu::Detected::None(why) = &detected else { unreachable!() };
    assert!(why.contains("NVML"), "{why}");
    assert_eq!(fleet_inference::gpu::default_device(&detected), "cpu");
}
