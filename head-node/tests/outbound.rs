//! Outbound calls a client chooses the target of, against a real head and worker: push
//! webhooks (the head) and an agent's `openai:` base URL (a worker) to every spelling of a
//! loopback, private or link-local address are refused, and a listener on 127.0.0.1 gets
//! no request; the operator's flag lets the same URLs through (the listener then does get
//! requests, so its silence above means something).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fleet_testkit::ClusterSandbox;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(60);

const CONFIG: &str = r#"
[[agent]]
name = "echo"
model = "builtin:echo"
"#;

async fn within<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(LIMIT, f).await.context("test ran past its time limit")?
}

/// A listener on 127.0.0.1 that counts connections and answers each with an empty 200.
struct Listener {
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl Listener {
    async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    let _ = stream.read(&mut buffer).await;
                    let reply = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        Ok(Self { port, hits })
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Every way of writing an address of this machine (or a private one) in a URL, each
    /// with this listener's port where it names loopback.
    fn spellings(&self, path: &str) -> Vec<String> {
        let p = self.port;
        [
            format!("http://127.0.0.1:{p}"),
            format!("http://2130706433:{p}"),
            format!("http://127.1:{p}"),
            format!("http://0x7f.1:{p}"),
            format!("http://0x7f000001:{p}"),
            format!("http://0177.0.0.1:{p}"),
            format!("http://127.0.0.1.:{p}"),
            format!("http://[::ffff:127.0.0.1]:{p}"),
            format!("http://[::ffff:7f00:1]:{p}"),
            format!("http://[::127.0.0.1]:{p}"),
            format!("http://[64:ff9b::7f00:1]:{p}"),
            format!("http://localhost:{p}"),
            format!("http://LocalHost.:{p}"),
            "http://169.254.169.254.".to_owned(),
            "http://[fd00::1]".to_owned(),
            "http://10.0.0.1".to_owned(),
        ]
        .into_iter()
        .map(|base| format!("{base}{path}"))
        .collect()
    }
}

async fn rpc(cluster: &ClusterSandbox, method: &str, params: Value) -> Result<Value> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let response = reqwest::Client::new()
        .post(format!("{}/a2a/echo", cluster.url))
        .header("A2A-Version", "1.0")
        .json(&body)
        .send()
        .await?;
    Ok(response.json().await?)
}

fn message(text: &str) -> Value {
    json!({"message": {"role": "ROLE_USER", "messageId": uuid::Uuid::new_v4().to_string(),
                       "parts": [{"text": text}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_to_private_addresses_are_refused_in_every_spelling() -> Result<()> {
    within(async {
        let listener = Listener::start().await?;
        let cluster = ClusterSandbox::builder().workers(1).config(CONFIG).start().await?;
        let sent = rpc(&cluster, "SendMessage", message("hooks")).await?;
        let task = sent["result"]["task"]["id"].as_str().context("no task")?.to_owned();
        for url in listener.spellings("/hook") {
            let params = json!({"taskId": task, "url": url});
            let reply = rpc(&cluster, "CreateTaskPushNotificationConfig", params).await?;
            ensure!(reply["error"]["code"] == -32602, "{url}: {reply}");
            let said = reply["error"]["message"].as_str().unwrap_or_default();
            ensure!(said.contains("--allow-private-webhooks"), "{url}: {said}");
            // Nor as a message's configuration.
            let push = json!({"configuration": {"taskPushNotificationConfig": {"url": url}}});
            let mut params = message("pushed");
            params["configuration"] = push["configuration"].clone();
            let reply = rpc(&cluster, "SendMessage", params).await?;
            ensure!(reply["error"]["code"] == -32602, "{url}: {reply}");
        }
        cluster.shutdown().await?;
        ensure!(listener.hits() == 0, "the head called the listener {} times", listener.hits());

        // The operator's flag lets one of the same URLs through: the listener hears it.
        let allowed = ClusterSandbox::builder()
            .workers(1)
            .config(CONFIG)
            .head_arg("--allow-private-webhooks")
            .start()
            .await?;
        let url = format!("http://127.1:{}/hook", listener.port);
        let mut params = message("allowed");
        params["configuration"] = json!({"taskPushNotificationConfig": {"url": url}});
        let reply = rpc(&allowed, "SendMessage", params).await?;
        ensure!(reply.get("result").is_some(), "{reply}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while listener.hits() == 0 {
            ensure!(tokio::time::Instant::now() < deadline, "no delivery to an allowed webhook");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        allowed.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_model_urls_to_private_addresses_are_refused_in_every_spelling() -> Result<()> {
    within(async {
        let listener = Listener::start().await?;
        let cluster = ClusterSandbox::builder().workers(1).config(CONFIG).start().await?;
        let fleet = cluster.client().await?;
        for (i, url) in listener.spellings("/v1").into_iter().enumerate() {
            let name = format!("remote-{i}");
            fleet
                .register_agent(fleet_client::AgentSpec {
                    name: name.clone(),
                    model: "openai:m".into(),
                    model_options: [("base_url".to_owned(), url.clone())].into(),
                    max_retries: 0,
                    ..Default::default()
                })
                .await?;
            let outcome = fleet.run(&name, "hello").await?;
            ensure!(outcome.state == fleet_client::TaskState::Failed, "{url}: {outcome:?}");
            ensure!(
                outcome.error.contains("--allow-private-model-urls"),
                "{url}: {}",
                outcome.error
            );
        }
        cluster.shutdown().await?;
        ensure!(listener.hits() == 0, "the worker called the listener {} times", listener.hits());

        // With the worker's flag the same kind of URL is called.
        let allowed = ClusterSandbox::builder()
            .workers(1)
            .config(CONFIG)
            .worker_arg("--allow-private-model-urls")
            .start()
            .await?;
        let fleet = allowed.client().await?;
        let url = format!("http://0x7f.1:{}/v1", listener.port);
        fleet
            .register_agent(fleet_client::AgentSpec {
                name: "remote".into(),
                model: "openai:m".into(),
                model_options: [("base_url".to_owned(), url)].into(),
                max_retries: 0,
                ..Default::default()
            })
            .await?;
        let outcome = fleet.run("remote", "hello").await?;
        // The listener's empty 200 is no chat completion: the task fails, after the call.
        ensure!(outcome.state == fleet_client::TaskState::Failed, "{outcome:?}");
        ensure!(listener.hits() > 0, "an allowed base_url was not called: {}", outcome.error);
        allowed.shutdown().await
    })
    .await
}
