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
