//! Secrets at rest, against real processes: an agent's `api_key` and a webhook's credentials
//! are in none of the head's files (`head.redb`, its log) nor in any API answer, and a head
//! restarted on the same data opens them again: the worker still calls the model endpoint
//! with the key (a listener on 127.0.0.1 records what it was sent).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fleet_client::AgentSpec;
use fleet_testkit::ClusterSandbox;
use parking_lot::Mutex;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "sk-at-rest-5f3c9e1d";
const WEBHOOK_SECRET: &str = "hook-credentials-8d2a";

/// A listener that keeps the requests it was sent and answers each with an empty 200.
async fn listener() -> Result<(u16, Arc<Mutex<Vec<String>>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 16 << 10];
                let n = stream.read(&mut buffer).await.unwrap_or(0);
                kept.lock().push(String::from_utf8_lossy(&buffer[..n]).into_owned());
                let reply = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok((port, seen))
}

/// Every byte of every file under `dir`.
fn all_bytes(dir: &std::path::Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            bytes.extend(all_bytes(&path)?);
        } else {
            bytes.extend(std::fs::read(&path)?);
        }
    }
    Ok(bytes)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_api_key_is_sealed_at_rest_and_opened_after_a_restart() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(120), async {
        let (port, seen) = listener().await?;
        let data = std::env::temp_dir().join(format!("fleet-secrets-{}", uuid::Uuid::new_v4()));
        let mut cluster = ClusterSandbox::builder()
            .workers(1)
            .token("admin")
            .head_arg("--data-dir")
            .head_arg(data.display().to_string())
            .head_arg("--allow-private-webhooks")
            .worker_arg("--allow-private-model-urls")
            .config("[[agent]]\nname = \"echo\"\nmodel = \"builtin:echo\"\n")
            .start()
            .await?;
        let fleet = cluster.client().await?;
        let remote = AgentSpec {
            name: "remote".into(),
            model: "openai:m".into(),
            model_options: [
                ("base_url".to_owned(), format!("http://127.0.0.1:{port}/v1")),
                ("api_key".to_owned(), KEY.to_owned()),
            ]
            .into(),
            max_retries: 0,
            ..Default::default()
        };
        fleet.register_agent(remote).await?;
        // A webhook with credentials, on a task of the echo agent.
        let done = fleet.run("echo", "hooked").await?;
        let config = json!({"jsonrpc": "2.0", "id": 1, "method": "CreateTaskPushNotificationConfig",
            "params": {"taskId": done.task_id.as_str(), "url": format!("http://127.0.0.1:{port}/hook"),
                       "authentication": {"scheme": "Bearer", "credentials": WEBHOOK_SECRET}}});
        let made = reqwest::Client::new()
            .post(format!("{}/a2a/echo", cluster.url))
            .bearer_auth("admin")
            .header("A2A-Version", "1.0")
            .json(&config)
            .send()
            .await?
            .text()
            .await?;
        ensure!(made.contains("\"result\""), "{made}");
        ensure!(!made.contains(WEBHOOK_SECRET), "an answer showed the credentials: {made}");

        // No API answer shows the key.
        let listed = format!("{:?}", fleet.list_agents().await?);
        ensure!(!listed.contains(KEY), "ListAgents showed the key");
        let (_, card) = cluster.http("GET", "/.well-known/agent-card.json", &[("Authorization", "Bearer admin")], b"").await?;
        ensure!(!card.contains(KEY), "the card showed the key");

        // Nor any file of the head's: the answers above came after the records were stored.
        let bytes = all_bytes(&data)?;
        ensure!(!bytes.is_empty(), "the head stored nothing under {}", data.display());
        ensure!(!contains(&bytes, KEY), "the api_key is in the head's files in clear");
        ensure!(!contains(&bytes, WEBHOOK_SECRET), "the webhook credentials are in clear");
        ensure!(contains(&bytes, "sealed:v1:"), "nothing sealed in the head's files");

        // A restarted head opens the key again: the worker calls with it.
        cluster.restart_head().await?;
        cluster.wait_for_workers(1, Duration::from_secs(30)).await?;
        let fleet = cluster.client().await?;
        let outcome = fleet.run("remote", "hello").await?;
        let seen_key = seen.lock().iter().any(|r| r.contains(&format!("Bearer {KEY}")));
        ensure!(seen_key, "the endpoint never got the key after the restart: {}", outcome.error);
        cluster.shutdown().await?;
        let _ = std::fs::remove_dir_all(&data);
        Ok(())
    })
    .await
    .context("test ran past its time limit")?
}
