//! The `fleet-head` binary's handling of bad settings.

use std::process::Command;

fn head() -> Command {
    let mut head = Command::new(env!("CARGO_BIN_EXE_fleet-head"));
    // These tests are about the command line: keep nothing between them.
    head.env("FLEET_STORE", "memory");
    head
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

#[test]
fn unusable_tls_files_are_refused_naming_the_file() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("fleet-head-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let refused = |args: &[&std::ffi::OsStr]| -> anyhow::Result<String> {
        let output = head().args(["--listen", "127.0.0.1:0"]).args(args).output()?;
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        anyhow::ensure!(output.status.code() == Some(2), "exit {:?}: {stderr}", output.status);
        Ok(stderr)
    };
    let one = fleet_testkit::tls::make_certificates(&dir)?;
    let cert = one.cert.as_os_str();
    let stderr = refused(&["--tls-cert".as_ref(), cert])?;
    assert!(stderr.contains("needs both --tls-cert and --tls-key"), "{stderr}");

    let missing = dir.join("missing.pem");
    let stderr = refused(&[
        "--tls-cert".as_ref(),
        missing.as_os_str(),
        "--tls-key".as_ref(),
        one.key.as_os_str(),
    ])?;
    assert!(stderr.contains("missing.pem"), "the error does not name the file: {stderr}");

    // A key from another certificate.
    let other_dir = dir.join("other");
    std::fs::create_dir_all(&other_dir)?;
    let other = fleet_testkit::tls::make_certificates(&other_dir)?;
    let stderr =
        refused(&["--tls-cert".as_ref(), cert, "--tls-key".as_ref(), other.key.as_os_str()])?;
    assert!(stderr.contains("does not belong to the certificate"), "{stderr}");

    // A certificate file given as the key.
    let stderr = refused(&["--tls-cert".as_ref(), cert, "--tls-key".as_ref(), cert])?;
    assert!(stderr.contains("private key"), "{stderr}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
