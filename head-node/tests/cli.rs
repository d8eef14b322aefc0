//! The `fleet-head` binary's handling of bad settings.

use std::process::Command;

fn head() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fleet-head"))
}

#[test]
fn a_malformed_config_file_is_refused_naming_the_line() -> std::io::Result<()> {
    let dir = std::env::temp_dir().join(format!("fleet-head-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("fleet.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:0\"\n\n[[agent]]\nname = \"echo\"\nmodel = 42\n")?;
    let output = head().arg("--config").arg(&path).output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("fleet.toml:5:"), "the error does not name line 5: {stderr}");

    std::fs::write(&path, "[[agent]]\nname = \"bad name\"\nmodel = \"builtin:echo\"\n")?;
    let output = head().arg("--config").arg(&path).arg("--listen").arg("127.0.0.1:0").output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid agent spec"), "{stderr}");

    let output = head().arg("--config").arg(dir.join("missing.toml")).output()?;
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read the file"));
    std::fs::remove_dir_all(&dir)
}

#[test]
fn inconsistent_timeouts_are_refused() -> std::io::Result<()> {
    let output =
        head().args(["--heartbeat-interval-ms", "1000", "--worker-timeout-ms", "500"]).output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("worker timeout must be longer than the heartbeat interval"),
        "{stderr}"
    );
    Ok(())
}
