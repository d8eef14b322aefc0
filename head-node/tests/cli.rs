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

/// `GET path` on a head's HTTP port with the status line back (std only: no runtime here).
fn http_status(address: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response.lines().next().unwrap_or_default().to_owned())
}

#[test]
fn a_damaged_or_busy_store_is_refused_naming_the_file() -> anyhow::Result<()> {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("fleet-head-store-{}", std::process::id()));
    let (damaged, busy) = (dir.join("damaged"), dir.join("busy"));
    std::fs::create_dir_all(&damaged)?;
    std::fs::write(damaged.join("head.redb"), vec![0x5a; 64 << 10])?;
    let output = head()
        .args(["--listen", "127.0.0.1:0", "--store", "file", "--data-dir"])
        .arg(&damaged)
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let file = damaged.join("head.redb").display().to_string();
    assert!(stderr.contains(&file) && stderr.contains("not a readable store"), "{stderr}");

    // A second head on the data directory of a running one.
    let mut first = head()
        .args(["--listen", "127.0.0.1:0", "--print-address", "--store", "file", "--data-dir"])
        .arg(&busy)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(first.stdout.take().expect("piped")).read_line(&mut line)?;
    let address = line.trim().trim_start_matches("listening on ").to_owned();
    // It answers once its store is open.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !http_status(&address, "/healthz").is_ok_and(|s| s.contains(" 200 ")) {
        assert!(std::time::Instant::now() < deadline, "the first head does not answer");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let output = head()
        .args(["--listen", "127.0.0.1:0", "--store", "file", "--data-dir"])
        .arg(&busy)
        .output()?;
    let _ = first.kill();
    let _ = first.wait();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("another head has this store open"), "{stderr}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn an_unknown_store_or_an_unreachable_database_is_refused_saying_what_to_give() -> anyhow::Result<()>
{
    let output = head().args(["--listen", "127.0.0.1:0", "--store", "mysql://x"]).output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("give file, memory or a postgres://"), "{stderr}");

    // Nothing listens on the port: the start fails naming the server, without its password.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("postgres://fleet:s3cret@127.0.0.1:{port}/fleet");
    let output = head().args(["--listen", "127.0.0.1:0", "--store", &url]).output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("postgres://fleet@127.0.0.1:{port}/fleet")), "{stderr}");
    assert!(stderr.contains("cannot connect") && !stderr.contains("s3cret"), "{stderr}");
    Ok(())
}

/// A head reachable from the network needs credentials, or the operator's explicit word
/// (refused before it binds: nothing here listens beyond loopback; the accepted settings are
/// `config::validate`'s unit test).
#[test]
fn a_head_on_the_network_needs_credentials_or_the_insecure_flag() -> anyhow::Result<()> {
    for extra in [&[][..], &["--token", "t"], &["--api-key", "k"]] {
        let output = head().args(["--listen", "0.0.0.0:0"]).args(extra).output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains("--join-token"), "{stderr}");
    }
    let output = head().args(["--listen", "192.0.2.1:7070"]).output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not loopback") && stderr.contains("--insecure-no-credentials"));
    Ok(())
}
