//! TLS on the head's one port: real `fleet-head` and `fleet-worker` processes with a CA made
//! for the test (rcgen). Workers and clients that trust the CA get in over gRPC and HTTP/1.1;
//! clients that do not, or that speak clear text, are refused and the head keeps serving.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fleet_client::{AgentSpec, Client, ConnectOptions};
use fleet_testkit::ClusterSandbox;
use tokio::io::AsyncBufReadExt;

const LIMIT: Duration = Duration::from_secs(60);

async fn within<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(LIMIT, f).await.context("test ran past its time limit")?
}

fn echo() -> AgentSpec {
    AgentSpec { name: "echo".into(), model: "builtin:echo".into(), ..Default::default() }
}

async fn tls_sandbox() -> Result<ClusterSandbox> {
    ClusterSandbox::builder().workers(1).token("t0ken").tls().start().await
}

#[tokio::test]
async fn workers_and_clients_that_trust_the_ca_work_over_tls() -> Result<()> {
    within(async {
        let sandbox = tls_sandbox().await?;
        ensure!(sandbox.url.starts_with("https://"), "{}", sandbox.url);
        // The worker joined over TLS (start() waits for it); a task crosses both links.
        let client = sandbox.client().await?;
        client.register_agent(echo()).await?;
        let outcome = client.run("echo", "over tls").await?;
        ensure!(outcome.output == "over tls", "{outcome:?}");

        // HTTP/1.1 clients (curl, httpx, the A2A SDKs) get HTTP/1.1 after the handshake.
        let ca = std::fs::read(sandbox.tls_ca().context("no CA")?)?;
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
            .http1_only()
            .build()?;
        let models =
            http.get(format!("{}/v1/models", sandbox.url)).bearer_auth("t0ken").send().await?;
        ensure!(models.version() == reqwest::Version::HTTP_11, "{:?}", models.version());
        ensure!(models.status() == 200, "GET /v1/models over TLS: {}", models.status());
        let card = http.get(format!("{}/a2a/echo/.well-known/agent-card.json", sandbox.url));
        let card = card.send().await?;
        ensure!(card.status() == 200, "agent card over TLS: {}", card.status());
        sandbox.shutdown().await
    })
    .await
}

#[tokio::test]
async fn clients_that_do_not_trust_the_certificate_or_speak_clear_text_are_refused() -> Result<()> {
    within(async {
        let sandbox = tls_sandbox().await?;
        // The system's roots do not include the test CA.
        let options = ConnectOptions { token: Some("t0ken".into()), ..Default::default() };
        let untrusted = Client::connect_with(&sandbox.url, options.clone()).await;
        let error = untrusted.err().context("a client without the CA got in")?.to_string();
        ensure!(error.contains("certificate") || error.contains("issuer"), "{error}");

        // Clear text to a TLS port: the handshake fails and the client sees an error.
        let plain = format!("http://{}", sandbox.address);
        let refused = match Client::connect_with(&plain, options).await {
            Err(e) => e.to_string(),
            Ok(client) => match client.status().await {
                Err(e) => e.to_string(),
                Ok(_) => anyhow::bail!("a clear-text client was served by a TLS head"),
            },
        };
        ensure!(!refused.is_empty());
        // Over HTTP/1.1, clear text gets an answer that says what to fix.
        let (status, body) = plain_http(&sandbox.address).await?;
        ensure!(status == 400 && body.contains("https://"), "{status} {body}");

        // A worker told the wrong CA never joins; the head keeps serving the real one.
        let dir = std::env::temp_dir().join(format!("fleet-tls-other-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let other = fleet_testkit::tls::make_certificates(&dir)?;
        let ca = other.ca.display().to_string();
        let mut stranger =
            sandbox.spawn_worker_process(&["--name", "stranger", "--tls-ca", &ca])?;
        let stderr = stranger.stderr.take().context("no stderr")?;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let refusal = loop {
            let line = lines.next_line().await?.context("the stranger exited")?;
            if line.contains("not connected to a head") {
                break line;
            }
        };
        ensure!(refusal.contains("certificate") || refusal.contains("issuer"), "{refusal}");
        let client = sandbox.client().await?;
        client.register_agent(echo()).await?;
        let outcome = client.run("echo", "still serving").await?;
        ensure!(outcome.output == "still serving", "{outcome:?}");
        let workers = client.status().await?.workers;
        ensure!(workers.len() == 1, "{} workers joined, the stranger among them?", workers.len());
        ensure!(stranger.try_wait()?.is_none(), "the worker should keep retrying, not exit");
        let _ = stranger.kill().await;
        let _ = std::fs::remove_dir_all(&dir);
        sandbox.shutdown().await
    })
    .await
}

/// `GET /healthz` in clear text; returns the status and the body.
async fn plain_http(address: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head.split(' ').nth(1).context("no status")?.parse()?;
    Ok((status, body.to_owned()))
}

/// A connection from `peer` (an address of 127/8) to the head that sends nothing.
async fn silent_from(peer: &str, address: &str) -> Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{peer}:0").parse()?)?;
    Ok(socket.connect(address.parse()?).await?)
}

/// Connections awaiting their handshake are bounded: silent ones from several peers fill
/// every slot, a new client then waits (its handshake is not started), clients already
/// connected keep being served, and once the silent connections go a new client gets in at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_fill_the_handshake_slots_and_hold_nobody_connected_up() -> Result<()> {
    within(async {
        let sandbox = tls_sandbox().await?;
        let connected = sandbox.client().await?;
        connected.register_agent(echo()).await?;
        // Each holds a slot until its 10 s are up; one peer may hold only its share.
        let mut silent = Vec::new();
        let peers = fleet_head::MAX_HANDSHAKES.div_ceil(fleet_head::PEER_HANDSHAKES);
        for peer in 0..peers {
            for _ in 0..fleet_head::PEER_HANDSHAKES {
                silent.push(silent_from(&format!("127.0.0.{}", peer + 2), &sandbox.address).await?);
            }
        }
        let late = tokio::time::timeout(Duration::from_secs(2), sandbox.client()).await;
        ensure!(late.is_err(), "a handshake started past the bound: {:?}", late.map(|c| c.is_ok()));
        let outcome = connected.run("echo", "not blocked").await?;
        ensure!(outcome.output == "not blocked", "{outcome:?}");
        drop(silent);
        let client = tokio::time::timeout(Duration::from_secs(5), sandbox.client())
            .await
            .context("a new client still waited once the silent connections were gone")??;
        ensure!(client.run("echo", "in again").await?.output == "in again");
        sandbox.shutdown().await
    })
    .await
}

/// One peer that opens as many silent connections as the head has slots holds only its
/// share: its connections past the share are closed at once, and another client gets in
/// while the rest are still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_silent_on_every_slot_holds_only_its_share() -> Result<()> {
    use tokio::io::AsyncReadExt;
    within(async {
        let sandbox = tls_sandbox().await?;
        let mut silent = Vec::new();
        for _ in 0..fleet_head::MAX_HANDSHAKES {
            silent.push(silent_from("127.0.0.2", &sandbox.address).await?);
        }
        let client = tokio::time::timeout(Duration::from_secs(5), sandbox.client())
            .await
            .context("one silent peer held a new client up")??;
        client.register_agent(echo()).await?;
        ensure!(client.run("echo", "in beside it").await?.output == "in beside it");
        let last = silent.last_mut().context("no connections")?;
        let read = tokio::time::timeout(Duration::from_secs(5), last.read(&mut [0u8; 16])).await;
        ensure!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a connection past the peer's share was not closed: {read:?}"
        );
        drop(silent);
        sandbox.shutdown().await
    })
    .await
}
