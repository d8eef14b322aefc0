//! PostgreSQL over TLS, on a server of the test's own that takes TCP clients over TLS only,
//! with a certificate the test makes for `localhost` alone: each `sslmode` connects or is
//! refused as libpq's does, the refusals say why, and a head given a `verify-full` URL runs
//! a task with its store on that server.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, ensure};
use fleet_client::{AgentSpec, EventKind, Submission};
use fleet_head::store::postgres::lease::{Acquired, Lease};
use fleet_head::store::postgres::{SslMode, parse};
use fleet_testkit::postgres::PostgresServer;
use fleet_testkit::tls::{TestCertificates, make_certificates_for};
use fleet_testkit::{ClusterSandbox, run_to_end};

const TTL: Duration = Duration::from_secs(5);

struct Setup {
    pg: PostgresServer,
    certs: TestCertificates,
    other_ca: TestCertificates,
    port: String,
    dir: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn setup() -> Result<Setup> {
    let dir = std::env::temp_dir().join(format!("fleet-pg-tls-{}", fleet_testkit::unique()));
    std::fs::create_dir_all(dir.join("other"))?;
    let certs = make_certificates_for(&dir, &["localhost"])?;
    let other_ca = make_certificates_for(&dir.join("other"), &["localhost"])?;
    let pg = PostgresServer::start_tls(&certs)?;
    let port = pg.url.rsplit_once(':').and_then(|(_, p)| p.split_once('/')).map(|(p, _)| p);
    let port = port.unwrap_or_default().to_owned();
    Ok(Setup { pg, certs, other_ca, port, dir })
}

/// Connects for the lease (which creates the tables): the error's text when refused.
fn connect(url: &str) -> Result<(), String> {
    let target = parse(url).map_err(|e| e.message)?;
    let lease = Lease::open(&target, "http://test", TTL).map_err(|e| e.message)?;
    match lease.try_acquire()? {
        Acquired::Leader(_) | Acquired::Standby { .. } => Ok(()),
    }
}

#[test]
fn each_sslmode_connects_or_is_refused_as_libpq_would() -> Result<()> {
    let s = setup()?;
    let (port, ca, other) = (&s.port, s.certs.ca.display(), s.other_ca.ca.display());
    let at =
        |host: &str, query: &str| format!("postgres://postgres@{host}:{port}/postgres?{query}");

    // The server takes no plain TCP: `disable` is refused by it.
    let plain = connect(&at("localhost", "sslmode=disable"));
    ensure!(matches!(&plain, Err(e) if e.contains("no encryption")), "{plain:?}");

    // Encryption without checking the certificate: prefer (the default) and require.
    connect(&at("localhost", "application_name=fleet"))
        .map_err(|e| anyhow::anyhow!("prefer: {e}"))?;
    connect(&at("127.0.0.1", "sslmode=require")).map_err(|e| anyhow::anyhow!("require: {e}"))?;

    // verify-full: the right CA and the certificate's own name.
    let full = at("localhost", &format!("sslmode=verify-full&sslrootcert={ca}"));
    ensure!(parse(&full)?.mode == SslMode::VerifyFull);
    connect(&full).map_err(|e| anyhow::anyhow!("verify-full: {e}"))?;

    // A name the certificate does not hold: verify-full refuses, verify-ca does not check.
    let wrong_name = connect(&at("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={ca}")));
    ensure!(
        matches!(&wrong_name, Err(e) if e.contains("TLS") && e.contains("not valid for name")),
        "{wrong_name:?}"
    );
    connect(&at("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")))
        .map_err(|e| anyhow::anyhow!("verify-ca: {e}"))?;

    // A certificate no trusted root signed: both verifying modes refuse, and require with
    // that root given verifies as libpq does.
    for query in [
        format!("sslmode=verify-full&sslrootcert={other}"),
        format!("sslmode=verify-ca&sslrootcert={other}"),
        format!("sslmode=require&sslrootcert={other}"),
    ] {
        let refused = connect(&at("localhost", &query));
        ensure!(
            matches!(&refused, Err(e) if e.contains("invalid peer certificate")),
            "{query}: {refused:?}"
        );
    }

    // A root file that is not there is named at parse time, before any connection.
    let missing = parse(&at("localhost", "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"));
    ensure!(matches!(&missing, Err(e) if e.message.contains("/nonexistent/ca.pem")), "{missing:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_keeps_its_store_over_verified_tls() -> Result<()> {
    let s = setup()?;
    let url = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        s.port,
        s.certs.ca.display()
    );
    let sandbox =
        ClusterSandbox::builder().workers(1).head_arg("--store").head_arg(&url).start().await?;
    let client = sandbox.client().await?;
    let spec =
        AgentSpec { name: "echo".into(), model: "builtin:echo".into(), ..Default::default() };
    client.register_agent(spec).await?;
    let kinds = run_to_end(&client, Submission::new("echo", "over TLS")).await?;
    ensure!(matches!(kinds.last(), Some(EventKind::Completed { .. })), "{kinds:?}");
    drop(sandbox);
    let _ = &s.pg;
    Ok(())
}
