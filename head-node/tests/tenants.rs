//! Many users on one head, against real processes: two tenants' users, a reader and an
//! admin try every operation on each other's agents, tasks, tools, topics and push configs
//! at every door (gRPC, A2A, the OpenAI API, MCP, the inspector, `/metrics`), and each
//! answers as the roles say: another tenant's ids are not found, a reader changes nothing,
//! only an admin replaces a shared agent. Quotas refuse with 429 / RESOURCE_EXHAUSTED and
//! `Retry-After`, and let work through again once under.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use fleet_client::{AgentSpec, Client, ConnectOptions, Submission};
use fleet_testkit::ClusterSandbox;
use futures::StreamExt;
use serde_json::{Value, json};
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(120);
const ADMIN: &str = "admin-key";

async fn within<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(LIMIT, f).await.context("test ran past its time limit")?
}

fn hash(key: &str) -> String {
    fleet_head::auth::key_sha256(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Alice and Bob are users of tenants `a` and `b`, Rita reads `a`, Quinn uses `q` (whose
/// quotas are small); `echo` is shared (the operator's), `shown` is on the public card.
fn config() -> String {
    let principal = |name: &str, tenant: &str, role: &str| {
        format!(
            "[[principal]]\nname = \"{name}\"\ntenant = \"{tenant}\"\nrole = \"{role}\"\n\
             key_sha256 = \"{}\"\n\n",
            hash(&format!("key-{name}"))
        )
    };
    let mut text = String::new();
    for (name, tenant, role) in [
        ("alice", "a", "user"),
        ("bob", "b", "user"),
        ("rita", "a", "reader"),
        ("quinn", "q", "user"),
    ] {
        text.push_str(&principal(name, tenant, role));
    }
    text.push_str(
        r#"
[[tenant]]
name = "q"
max_queued_tasks = 2
max_running_tasks = 1

[[agent]]
name = "echo"
model = "builtin:echo"

[[agent]]
name = "slow"
model = "builtin:echo"
model_options = { token_delay_ms = 40 }

[[agent]]
name = "shown"
model = "builtin:echo"
public = true
"#,
    );
    text
}

async fn client(cluster: &ClusterSandbox, key: &str) -> Result<Client> {
    let options = ConnectOptions { token: Some(key.to_owned()), ..Default::default() };
    Ok(Client::connect_with(&cluster.url, options).await?)
}

fn key(name: &str) -> String {
    format!("key-{name}")
}

/// The gRPC code of a result that must have failed.
fn code<T>(outcome: fleet_client::Result<T>) -> Result<Code> {
    match outcome {
        Ok(_) => bail!("succeeded where it must be refused"),
        Err(e) => Ok(e.code()),
    }
}

/// A task that stays running a few seconds (the slow echo of a long input).
async fn running_task(fleet: &Client, agent: &str, context: &str) -> Result<String> {
    let submission = Submission {
        context_id: context.to_owned(),
        ..Submission::new(agent, "word ".repeat(400))
    };
    let mut events = fleet.submit(submission).await?;
    let first = events.next().await.context("no event")??;
    Ok(first.task_id.to_string())
}

async fn http(
    cluster: &ClusterSandbox,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Result<(u16, Value, reqwest::header::HeaderMap)> {
    let url = format!("{}{path}", cluster.url);
    let mut request = reqwest::Client::new().request(method.parse()?, url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.header("A2A-Version", "1.0").json(&body);
    }
    let response = request.send().await?;
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let text = response.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text)), headers))
}

async fn a2a(
    cluster: &ClusterSandbox,
    agent: &str,
    key: &str,
    method: &str,
    params: Value,
) -> Result<Value> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    Ok(http(cluster, "POST", &format!("/a2a/{agent}"), Some(key), Some(body)).await?.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_door_keeps_tenants_apart_and_roles_to_their_rights() -> Result<()> {
    within(async {
        let cluster =
            ClusterSandbox::builder().workers(1).token(ADMIN).config(&config()).start().await?;
        let (alice, bob, rita, admin) = (
            client(&cluster, &key("alice")).await?,
            client(&cluster, &key("bob")).await?,
            client(&cluster, &key("rita")).await?,
            client(&cluster, ADMIN).await?,
        );
        let echo = |name: &str| AgentSpec {
            name: name.into(),
            model: "builtin:echo".into(),
            ..Default::default()
        };

        // Agents: a user's are its tenant's; shared ones only an admin replaces.
        alice.register_agent(echo("a-writer")).await?;
        let names = |agents: Vec<fleet_client::pb::AgentInfo>| -> Vec<String> {
            agents.into_iter().filter_map(|a| a.spec.map(|s| s.name)).collect()
        };
        ensure!(names(alice.list_agents().await?).contains(&"a-writer".into()));
        ensure!(names(rita.list_agents().await?).contains(&"a-writer".into()));
        ensure!(
            !names(bob.list_agents().await?).contains(&"a-writer".into()),
            "bob sees a's agent"
        );
        ensure!(
            names(bob.list_agents().await?).contains(&"echo".into()),
            "shared agents are everyone's"
        );
        ensure!(names(admin.list_agents().await?).contains(&"a-writer".into()));
        ensure!(code(bob.run("a-writer", "hi").await)? == Code::NotFound, "bob ran a's agent");
        ensure!(code(bob.register_agent(echo("a-writer")).await)? == Code::InvalidArgument);
        ensure!(code(alice.register_agent(echo("echo")).await)? == Code::PermissionDenied);
        ensure!(code(rita.register_agent(echo("r-agent")).await)? == Code::PermissionDenied);
        admin.register_agent(AgentSpec { description: "replaced".into(), ..echo("echo") }).await?;

        // Tasks: another tenant's ids are unknown; a reader reads but does not act.
        let task = running_task(&alice, "slow", "conversation-1").await?;
        ensure!(code(bob.get_task(&task).await)? == Code::NotFound);
        ensure!(code(bob.watch(&task, 1).await)? == Code::NotFound);
        ensure!(code(bob.cancel(&task).await)? == Code::NotFound);
        let reply = fleet_client::Reply::Text("yes".into());
        ensure!(code(bob.reply(&task, "", &reply, 0).await)? == Code::NotFound);
        let listed = |r: fleet_client::pb::ListTasksResponse| -> Vec<String> {
            r.tasks.into_iter().map(|t| t.task_id).collect()
        };
        let all = fleet_client::pb::ListTasksRequest::default();
        ensure!(!listed(bob.list_tasks(all.clone()).await?).contains(&task), "bob lists a's task");
        ensure!(listed(rita.list_tasks(all.clone()).await?).contains(&task));
        ensure!(listed(admin.list_tasks(all.clone()).await?).contains(&task));
        rita.get_task(&task).await?;
        ensure!(code(rita.cancel(&task).await)? == Code::PermissionDenied);
        ensure!(code(rita.run("echo", "hi").await)? == Code::PermissionDenied);
        admin.get_task(&task).await?;

        // The same idempotency key in two tenants makes two tasks.
        let keyed = |fleet: Client| async move {
            let submission =
                Submission { idempotency_key: "same-key".into(), ..Submission::new("echo", "k") };
            let outcome =
                fleet_client::TaskOutcome::collect(fleet.submit(submission).await?).await?;
            anyhow::Ok(outcome.task_id.to_string())
        };
        ensure!(
            keyed(alice.clone()).await? != keyed(bob.clone()).await?,
            "keys met across tenants"
        );

        // Topics are named TENANT.NAME.
        ensure!(code(bob.follow_topic("a.news", "").await)? == Code::PermissionDenied);
        ensure!(code(alice.publish("b.news", "alice", "hi").await)? == Code::PermissionDenied);
        let own = alice.follow_topic("a.news", "").await.err().map(|e| e.code());
        ensure!(own != Some(Code::PermissionDenied), "alice may follow her tenant's topic");
        let mut topical = echo("b-reader");
        topical.topics = vec!["a.news".into()];
        ensure!(code(bob.register_agent(topical).await)? == Code::PermissionDenied);

        // A2A: the same rules at the A2A door, with A2A's codes.
        let get = a2a(&cluster, "slow", &key("bob"), "GetTask", json!({"id": task})).await?;
        ensure!(get["error"]["code"] == -32001, "bob's GetTask: {get}");
        let get = a2a(&cluster, "slow", &key("alice"), "GetTask", json!({"id": task})).await?;
        ensure!(get["result"]["id"] == task.as_str(), "alice's GetTask: {get}");
        let list = a2a(&cluster, "slow", &key("bob"), "ListTasks", json!({})).await?;
        ensure!(list["result"]["totalSize"] == 0, "bob's ListTasks: {list}");
        let other =
            a2a(&cluster, "slow", &key("alice"), "ListTasks", json!({"tenant": "b"})).await?;
        ensure!(other["error"]["code"] == -32054, "alice naming tenant b: {other}");
        let push = json!({"taskId": task, "url": "https://example.com/hook"});
        let made =
            a2a(&cluster, "slow", &key("bob"), "CreateTaskPushNotificationConfig", push.clone())
                .await?;
        ensure!(made["error"]["code"] == -32001, "bob's push config: {made}");
        let made =
            a2a(&cluster, "slow", &key("rita"), "CreateTaskPushNotificationConfig", push).await?;
        ensure!(made["error"]["code"] == -32054, "rita's push config: {made}");
        let cancel = a2a(&cluster, "slow", &key("bob"), "CancelTask", json!({"id": task})).await?;
        ensure!(cancel["error"]["code"] == -32001, "bob's CancelTask: {cancel}");
        let sent = a2a(
            &cluster,
            "a-writer",
            &key("bob"),
            "SendMessage",
            json!({
                "message": {"role": "ROLE_USER", "messageId": "m1", "parts": [{"text": "hi"}]}
            }),
        )
        .await?;
        ensure!(sent["error"]["code"] == -32051, "bob's SendMessage to a's agent: {sent}");

        // The public card lists only public agents; a key's card its principal's.
        let (_, card, _) =
            http(&cluster, "GET", "/.well-known/agent-card.json", None, None).await?;
        let skills: Vec<&str> = card["skills"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str())
            .collect();
        ensure!(skills == ["shown"], "the public card lists {skills:?}");
        let (status, _, _) =
            http(&cluster, "GET", "/a2a/a-writer/.well-known/agent-card.json", None, None).await?;
        ensure!(status == 404, "a tenant's agent's card is public: {status}");
        let (status, _, _) = http(
            &cluster,
            "GET",
            "/a2a/a-writer/.well-known/agent-card.json",
            Some(&key("bob")),
            None,
        )
        .await?;
        ensure!(status == 404, "bob read a's agent's card: {status}");
        let (status, _, _) = http(
            &cluster,
            "GET",
            "/a2a/a-writer/.well-known/agent-card.json",
            Some(&key("rita")),
            None,
        )
        .await?;
        ensure!(status == 200, "rita cannot read her tenant's agent's card: {status}");
        let (_, card, _) =
            http(&cluster, "GET", "/.well-known/agent-card.json", Some(&key("bob")), None).await?;
        let text = card.to_string();
        ensure!(text.contains("echo") && !text.contains("a-writer"), "bob's card: {text}");

        // OpenAI: models are the principal's; another tenant's agent is no model.
        let (_, models, _) = http(&cluster, "GET", "/v1/models", Some(&key("bob")), None).await?;
        ensure!(!models.to_string().contains("a-writer"), "bob's models: {models}");
        let chat = json!({"model": "a-writer", "messages": [{"role": "user", "content": "hi"}]});
        let (status, body, _) =
            http(&cluster, "POST", "/v1/chat/completions", Some(&key("bob")), Some(chat.clone()))
                .await?;
        ensure!(status == 404, "bob's chat with a's agent: {status} {body}");
        let (status, body, _) =
            http(&cluster, "POST", "/v1/chat/completions", Some(&key("rita")), Some(chat)).await?;
        ensure!(status == 403, "rita's chat: {status} {body}");

        // MCP: tools are the principal's agents.
        let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
        let mcp = reqwest::Client::new()
            .post(format!("{}/mcp", cluster.url))
            .bearer_auth(key("bob"))
            .header("Accept", "application/json, text/event-stream")
            .json(&list)
            .send()
            .await?
            .text()
            .await?;
        ensure!(mcp.contains("echo") && !mcp.contains("a-writer"), "bob's MCP tools: {mcp}");

        // The inspector and /metrics.
        let path = format!("/ui/api/tasks/{task}");
        let (status, _, _) = http(&cluster, "GET", &path, Some(&key("bob")), None).await?;
        ensure!(status == 404, "bob's inspector page of a's task: {status}");
        let (status, _, _) = http(&cluster, "GET", &path, Some(&key("rita")), None).await?;
        ensure!(status == 200, "rita's inspector page of her tenant's task: {status}");
        // The cluster's status: the shared workers, and a tenant's own agents and tasks.
        let (a_status, b_status, all) =
            (alice.status().await?, bob.status().await?, admin.status().await?);
        ensure!(a_status.workers.len() == 1 && b_status.workers.len() == 1, "{b_status:?}");
        ensure!(a_status.running_tasks == 1, "alice's running tasks: {a_status:?}");
        ensure!(b_status.running_tasks == 0, "bob's running tasks: {b_status:?}");
        ensure!(all.running_tasks >= 1 && all.agents > b_status.agents, "{all:?}");
        ensure!(all.retained_tasks >= a_status.retained_tasks + b_status.retained_tasks);

        // A tenant's scrape shows its own series and nothing cluster-wide; the admin's all.
        let scrape = |who: String| {
            let cluster = &cluster;
            async move {
                let (status, body, _) = http(cluster, "GET", "/metrics", Some(&who), None).await?;
                ensure!(status == 200, "{who}'s scrape: {status} {body}");
                Ok::<_, anyhow::Error>(body.as_str().unwrap_or_default().to_owned())
            }
        };
        let (alices, bobs, admins) =
            (scrape(key("alice")).await?, scrape(key("bob")).await?, scrape(ADMIN.into()).await?);
        let slow_of_a = "agentfleet:tasks_submitted_total{tenant=\"a\",agent=\"slow\"} ";
        ensure!(alices.contains(slow_of_a) && admins.contains(slow_of_a), "{alices}\n{admins}");
        ensure!(alices.contains("agentfleet:tasks_running{agent=\"slow\"} 1"), "{alices}");
        ensure!(alices.contains("agentfleet:tasks_queued{agent=\"a-writer\"} 0"), "{alices}");
        for theirs in ["tenant=\"a\"", "a-writer", "agentfleet:worker", "agent_lookups"] {
            ensure!(!bobs.contains(theirs), "bob's scrape shows {theirs}: {bobs}");
        }
        ensure!(bobs.contains("agentfleet:tasks_running{agent=\"slow\"} 0"), "{bobs}");
        ensure!(admins.contains("agentfleet:workers{state=\"ready\"} 1"), "{admins}");
        let (status, _, headers) = http(&cluster, "GET", "/metrics", Some("wrong"), None).await?;
        ensure!(status == 401 && headers.contains_key("www-authenticate"), "{status}");

        alice.cancel(&task).await?;
        cluster.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_with_retry_after_and_admit_again_once_under() -> Result<()> {
    within(async {
        let cluster =
            ClusterSandbox::builder().workers(1).token(ADMIN).config(&config()).start().await?;
        let quinn = client(&cluster, &key("quinn")).await?;
        // One runs (the running quota), two wait (the queued quota), the fourth is refused.
        let mut tasks = Vec::new();
        for _ in 0..3 {
            tasks.push(running_task(&quinn, "slow", "").await?);
        }
        let refused = quinn.submit(Submission::new("slow", "one more")).await.err();
        let status = match refused {
            Some(fleet_client::Error::Status(status)) => status,
            other => bail!("the fourth task was not refused: {other:?}"),
        };
        ensure!(status.code() == Code::ResourceExhausted, "{status:?}");
        ensure!(status.message().contains("max_queued_tasks"), "{}", status.message());
        ensure!(status.metadata().contains_key("retry-after"), "no retry-after: {status:?}");
        let running = |infos: &[fleet_client::TaskInfo]| {
            let on_worker =
                [fleet_client::pb::TaskState::Scheduled, fleet_client::pb::TaskState::Working];
            infos.iter().filter(|t| on_worker.iter().any(|s| *s as i32 == t.state)).count()
        };
        let mut infos = Vec::new();
        for id in &tasks {
            infos.push(quinn.get_task(id).await?);
        }
        ensure!(running(&infos) == 1, "more than the running quota run: {infos:?}");
        // The OpenAI door answers the same refusal with 429 and Retry-After.
        let chat = json!({"model": "slow", "messages": [{"role": "user", "content": "hi"}]});
        let (status, body, headers) =
            http(&cluster, "POST", "/v1/chat/completions", Some(&key("quinn")), Some(chat)).await?;
        ensure!(status == 429 && headers.contains_key("retry-after"), "{status} {body}");
        // Another tenant is not held back by q's quota.
        client(&cluster, &key("alice")).await?.run("echo", "free").await?;
        // One waiting task canceled: room again.
        quinn.cancel(&tasks[2]).await?;
        let mut admitted = quinn.submit(Submission::new("echo", "admitted")).await?;
        admitted.next().await.context("no event")??;
        for id in &tasks[..2] {
            quinn.cancel(id).await?;
        }
        cluster.shutdown().await
    })
    .await
}
