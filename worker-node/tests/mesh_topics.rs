//! Topics on the workers' mesh: a head and three worker processes on 127.0.0.1. Two agents
//! on different workers publish on a topic with their `publish` tool; a client follows the
//! topic through each of the three workers' subscriptions and receives every message, in
//! order per publisher; a client publishes too; an agent reading the topic has it in its
//! prompt. A node that did not join through the head cannot call a worker's agents.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fleet_client::{AgentSpec, Client, EventKind, Submission, TopicStream};
use fleet_mesh::{AgentCall, Mesh, MeshConfig, MeshRequest, Peer};
use fleet_testkit::ClusterSandbox;
use futures::StreamExt;

const LIMIT: Duration = Duration::from_secs(120);
const PER_PUBLISHER: usize = 40;

async fn within<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(LIMIT, f).await.context("test ran past its time limit")?
}

fn agent(name: &str, role: &str) -> AgentSpec {
    AgentSpec {
        name: name.into(),
        model: "builtin:echo".into(),
        topics: vec!["news".into()],
        labels: [("role".to_owned(), role.to_owned())].into(),
        ..Default::default()
    }
}

/// Runs `agent` once on `input`; returns its tool result (if any) and its usage's prompt
/// tokens.
async fn run(client: &Client, agent: &str, input: &str) -> Result<(Option<(String, bool)>, u32)> {
    let mut stream = client.submit(Submission::new(agent, input)).await?;
    let mut result = None;
    while let Some(event) = stream.next().await {
        match event?.kind {
            EventKind::ToolResult { output, is_error, .. } => result = Some((output, is_error)),
            EventKind::Completed { usage } => return Ok((result, usage.prompt_tokens)),
            EventKind::Failed { error, .. } => anyhow::bail!("{agent} failed: {error}"),
            _ => {}
        }
    }
    anyhow::bail!("{agent}'s task did not end")
}

/// Has `publisher` post "<prefix> 0", "<prefix> 1", ... one task after the other.
async fn publish_all(client: Client, publisher: &str, prefix: &str) -> Result<()> {
    for i in 0..PER_PUBLISHER {
        let input = format!(
            r#"<tool_call>{{"name": "publish", "arguments": {{"topic": "news", "message": "{prefix} {i}"}}}}</tool_call>"#
        );
        let (result, _) = run(&client, publisher, &input).await?;
        let (output, is_error) = result.context("no tool result")?;
        ensure!(!is_error && output.starts_with("published on news"), "{output}");
    }
    Ok(())
}

/// Has each publisher post a probe until every follower has had one from each: the
/// followers' subscriptions have reached the publishers' nodes (gossip spreads them).
async fn until_subscriptions_spread(
    client: &Client,
    followers: &mut [TopicStream],
    publishers: &[&str],
) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut heard: Vec<HashSet<String>> = vec![HashSet::new(); followers.len()];
    while heard.iter().any(|h| h.len() < publishers.len()) {
        ensure!(std::time::Instant::now() < deadline, "subscriptions did not spread: {heard:?}");
        for publisher in publishers {
            let probe = r#"<tool_call>{"name": "publish", "arguments": {"topic": "news", "message": "probe"}}</tool_call>"#;
            run(client, publisher, probe).await?;
        }
        for (follower, heard) in followers.iter_mut().zip(&mut heard) {
            // What has arrived by now; the next round probes again.
            while let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(200), follower.next()).await
            {
                heard.insert(m?.publisher);
            }
        }
    }
    Ok(())
}

/// Reads `count` messages besides probes; checks each publisher's come in order with
/// consecutive numbers.
async fn read_in_order(
    mut stream: TopicStream,
    count: usize,
) -> Result<HashMap<String, Vec<String>>> {
    let mut by_publisher: HashMap<String, Vec<String>> = HashMap::new();
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    let mut read = 0;
    while read < count {
        let m = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .context("a topic message did not come")?
            .context("the topic stream ended")??;
        let previous = last_seq.insert(m.publisher.clone(), m.seq);
        ensure!(
            previous.is_none_or(|p| m.seq == p + 1),
            "{}'s message {} came after {previous:?}",
            m.publisher,
            m.seq
        );
        if m.body != "probe" {
            by_publisher.entry(m.publisher).or_default().push(m.body);
            read += 1;
        }
    }
    Ok(by_publisher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_on_three_workers_get_every_message_in_order() -> Result<()> {
    within(async {
        let cluster = ClusterSandbox::builder().workers(0).start().await?;
        let mut workers = Vec::new();
        for (name, role) in [("one", "a"), ("two", "b"), ("three", "c")] {
            let label = format!("role={role}");
            workers.push(cluster.spawn_worker_process(&["--name", name, "--label", &label])?);
        }
        cluster.wait_for_workers(3, Duration::from_secs(60)).await?;
        let client = cluster.client().await?;
        client.register_agent(agent("pub-a", "a")).await?;
        client.register_agent(agent("pub-b", "b")).await?;
        client.register_agent(agent("reader", "c")).await?;

        let mut followers = Vec::new();
        for worker in ["one", "two", "three"] {
            followers.push(client.follow_topic("news", worker).await?);
        }
        until_subscriptions_spread(&client, &mut followers, &["pub-a", "pub-b"]).await?;

        let a = tokio::spawn(publish_all(client.clone(), "pub-a", "a"));
        let b = tokio::spawn(publish_all(client.clone(), "pub-b", "b"));
        a.await??;
        b.await??;
        let from_client = client.publish("news", "operator", "all hands").await?;

        // The topic's log holds every message once, the client's last, at consecutive
        // offsets: the agents' went up from their workers and were stored.
        let mut log = client.follow_log("news", Some(0), "").await?;
        let mut stored: HashMap<String, Vec<String>> = HashMap::new();
        let mut next_offset = 0;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), log.next())
                .await?
                .ok_or_else(|| anyhow::anyhow!("the log's stream ended"))??;
            ensure!(m.offset == Some(next_offset), "offset {:?} after {next_offset}", m.offset);
            next_offset += 1;
            if m.body != "probe" {
                stored.entry(m.publisher.clone()).or_default().push(m.body.clone());
            }
            if m.publisher == "operator" {
                ensure!(m.offset == Some(from_client.offset), "{m:?} vs {from_client:?}");
                break;
            }
        }
        let expected =
            |prefix: &str| (0..PER_PUBLISHER).map(|i| format!("{prefix} {i}")).collect::<Vec<_>>();
        ensure!(stored.get("pub-a") == Some(&expected("a")), "in the log: {stored:?}");
        ensure!(stored.get("pub-b") == Some(&expected("b")), "in the log: {stored:?}");

        for (follower, worker) in followers.into_iter().zip(["one", "two", "three"]) {
            let got = read_in_order(follower, 2 * PER_PUBLISHER + 1).await?;
            ensure!(got.get("pub-a") == Some(&expected("a")), "via {worker}: {got:?}");
            ensure!(got.get("pub-b") == Some(&expected("b")), "via {worker}: {got:?}");
            ensure!(got.get("operator") == Some(&vec!["all hands".to_owned()]), "via {worker}");
        }

        // The reader's prompt carries the latest messages (echo counts every prompt word).
        let (_, prompt_tokens) = run(&client, "reader", "anything new?").await?;
        ensure!(prompt_tokens > 40, "the reader's prompt had {prompt_tokens} words");

        // Bad topic names are refused with the reason.
        let bad = client.publish("no spaces allowed", "", "x").await;
        ensure!(bad.is_err_and(|e| e.code() == fleet_client::Code::InvalidArgument));

        for mut w in workers {
            let _ = w.kill().await;
        }
        cluster.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_did_not_join_the_head_cannot_use_the_mesh() -> Result<()> {
    within(async {
        let cluster = ClusterSandbox::builder().workers(1).start().await?;
        let client = cluster.client().await?;
        client
            .register_agent(AgentSpec { labels: Default::default(), ..agent("target", "any") })
            .await?;
        let status = client.status().await?;
        let worker = status.workers.first().context("no worker")?;
        ensure!(!worker.mesh_peer_id.is_empty() && !worker.mesh_addrs.is_empty(), "{worker:?}");

        // The worker's mesh address accepts connections: a refusal below is the allow
        // list's doing, not an address that cannot be dialed.
        let tcp = worker
            .mesh_addrs
            .iter()
            .find_map(|a| {
                let mut parts = a.split('/').skip(1);
                match (parts.next(), parts.next(), parts.next(), parts.next()) {
                    (Some("ip4"), Some(ip), Some("tcp"), Some(port)) => {
                        Some(format!("{ip}:{port}"))
                    }
                    _ => None,
                }
            })
            .context("no /ip4/.../tcp/... mesh address")?;
        tokio::net::TcpStream::connect(&tcp).await.context("the worker's mesh cannot be dialed")?;

        // An outsider with its own key that knows the worker's address and dials it.
        let config = MeshConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            request_timeout: Duration::from_secs(3),
            ..Default::default()
        };
        let (outsider, _incoming) = Mesh::start(config).await?;
        outsider.set_peers(vec![Peer {
            peer_id: worker.mesh_peer_id.clone(),
            addrs: worker.mesh_addrs.clone(),
        }]);
        let call = MeshRequest::Call(AgentCall {
            agent: "target".into(),
            context_id: String::new(),
            input: "let me in".into(),
            caller_task: "intruder".into(),
            trace: String::new(),
            timeout_ms: 3000,
            depth: 0,
        });
        // Not a dial error or an unknown peer (the outsider lists the worker): the worker
        // drops the connection, so the outsider never gets to ask and waits out its time.
        let refused = outsider.ask(&worker.mesh_peer_id, call).await;
        ensure!(
            matches!(refused, Err(fleet_mesh::MeshError::Timeout { .. })),
            "an outsider's call should find no connection to use: {refused:?}"
        );
        ensure!(outsider.connected_peers().await.is_empty(), "the worker let the outsider in");
        outsider.shutdown().await;

        // The worker still serves the cluster.
        let outcome = client.run("target", "still serving").await?;
        ensure!(outcome.output == "still serving", "{outcome:?}");
        cluster.shutdown().await
    })
    .await
}
