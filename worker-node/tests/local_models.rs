//! Local models in a real cluster: a head and worker processes on 127.0.0.1 serving a tiny
//! generated model from their models dirs, compared with the same model run in this process;
//! model-aware placement, load reports, `--preload`, and agents calling agents as tools.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fleet_client::{AgentSpec, Client, EventKind, Sampling, Submission, TaskState, WorkerStatus};
use fleet_inference::text::fixture::{gguf_tokenizer_metadata, write_tokenizer_files};
use fleet_inference::transformer::{Family, fixture};
use fleet_inference::{
    ChatMessage, GenerateRequest, GenerationEvent, GgmlDType, LoadOptions, Model, Role,
};
use fleet_testkit::ClusterSandbox;
use futures::StreamExt;

const LIMIT: Duration = Duration::from_secs(120);
const MODEL: &str = "tiny-qwen.gguf";
const INSTRUCTIONS: &str = "You are terse.";
const MAX_TOKENS: u32 = 12;

async fn within<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(LIMIT, f).await.context("test ran past its time limit")?
}

/// A models dir holding a tiny random-weight Qwen2 as a Q8_0 GGUF with its tokenizer.
fn models_dir(name: &str) -> Result<PathBuf> {
    let root = std::env::temp_dir().join(format!("fleet-models-{name}-{}", std::process::id()));
    let hf = root.join("hf-source");
    let models = root.join("models");
    std::fs::create_dir_all(&models)?;
    let cfg = fixture::quantizable_config(Family::Qwen2);
    let weights = fixture::random_weights(&cfg)?;
    fixture::write_hf(&hf, &cfg, &weights)?;
    write_tokenizer_files(&hf)?;
    let tokenizer = gguf_tokenizer_metadata(&hf)?;
    fixture::write_gguf(&models.join(MODEL), &cfg, &weights, GgmlDType::Q8_0, &tokenizer)?;
    Ok(models)
}

fn chat_agent(name: &str, seed: u64) -> AgentSpec {
    AgentSpec {
        name: name.into(),
        model: MODEL.into(),
        instructions: INSTRUCTIONS.into(),
        sampling: Sampling {
            temperature: Some(0.9),
            top_p: Some(0.95),
            max_tokens: Some(MAX_TOKENS),
            seed: Some(seed),
            ..Default::default()
        },
        max_retries: 1,
        ..Default::default()
    }
}

/// What the engine alone makes of `input` with `seed`: the reference for the cluster.
async fn engine_alone(model: &dyn Model, input: &str, seed: u64) -> Result<String> {
    let request = GenerateRequest {
        messages: vec![
            ChatMessage::new(Role::System, INSTRUCTIONS),
            ChatMessage::new(Role::User, input),
        ],
        max_tokens: Some(MAX_TOKENS),
        temperature: Some(0.9),
        top_p: Some(0.95),
        seed: Some(seed),
        ..Default::default()
    };
    let mut text = String::new();
    let mut stream = model.generate(request)?;
    while let Some(event) = stream.next().await {
        if let GenerationEvent::Delta(delta) = event? {
            text.push_str(&delta);
        }
    }
    Ok(text)
}

/// Runs one task; returns the worker it ran on, its text and its final state.
async fn run_task(
    client: &Client,
    agent: &str,
    input: &str,
) -> Result<(String, String, TaskState)> {
    let mut stream = client.submit(Submission::new(agent, input)).await?;
    let (mut worker, mut text) = (String::new(), String::new());
    while let Some(event) = stream.next().await {
        match event?.kind {
            EventKind::Scheduled { worker_id } => worker = worker_id,
            EventKind::TextDelta { text: delta, .. } => text.push_str(&delta),
            EventKind::Completed { .. } => return Ok((worker, text, TaskState::Completed)),
            EventKind::Failed { error, .. } => return Ok((worker, error, TaskState::Failed)),
            EventKind::Canceled { .. } => return Ok((worker, text, TaskState::Canceled)),
            _ => {}
        }
    }
    anyhow::bail!("the task stream of {agent} ended without a terminal event")
}

/// What `read` finds in a worker's status, polled for up to 5 s until it is not the default
/// (heartbeats carry these reports, so they trail the events).
async fn worker_report<T: Default + PartialEq>(
    client: &Client,
    worker_id: &str,
    read: impl Fn(&WorkerStatus) -> T,
) -> Result<T> {
    let mut found = T::default();
    for _ in 0..50 {
        let status = client.status().await?;
        let worker = status.workers.iter().find(|w| w.worker_id == worker_id).context("worker")?;
        found = read(worker);
        if found != T::default() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(found)
}

fn dir_arg(dir: &Path) -> String {
    dir.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_chats_over_two_workers_equal_the_engine_alone() -> Result<()> {
    within(async {
        let models = models_dir("chats")?;
        let cluster = ClusterSandbox::builder()
            .workers(2)
            .worker_arg("--models-dir")
            .worker_arg(dir_arg(&models))
            .start()
            .await?;
        let client = cluster.client().await?;
        let seeds: Vec<u64> = (0..8).map(|i| 1000 + i).collect();
        for (i, seed) in seeds.iter().enumerate() {
            client.register_agent(chat_agent(&format!("chat-{i}"), *seed)).await?;
        }
        let jobs: Vec<(String, String, u64)> = (0..64)
            .map(|i| (format!("chat-{}", i % 8), format!("question number {i}?"), seeds[i % 8]))
            .collect();
        let results = futures::future::try_join_all(
            jobs.iter().map(|(agent, input, _)| run_task(&client, agent, input)),
        )
        .await?;

        let local = fleet_inference::load(
            &models.join(MODEL),
            &fleet_inference::device("cpu")?,
            &LoadOptions::default(),
        )?;
        let mut workers = BTreeSet::new();
        for ((_, input, seed), (worker, text, state)) in jobs.iter().zip(&results) {
            ensure!(*state == TaskState::Completed, "{input}: {state:?} {text}");
            let expected = engine_alone(&local, input, *seed).await?;
            ensure!(
                *text == expected,
                "{input} (seed {seed}): cluster {text:?} != engine {expected:?}"
            );
            workers.insert(worker.clone());
        }
        ensure!(workers.len() == 2, "the chats ran on {workers:?}, not on both workers");
        // Not vacuous: the random model says different things to different prompts.
        let distinct: BTreeSet<&String> = results.iter().map(|(_, text, _)| text).collect();
        ensure!(distinct.len() > 16, "only {} distinct answers", distinct.len());

        // Both workers loaded the model once and report it (in a heartbeat, which can come
        // after the last task ended: 64 chats have taken less than one heartbeat interval).
        let status = client.status().await?;
        for w in &status.workers {
            ensure!(w.models == [MODEL], "{} offers {:?}", w.worker_id, w.models);
            let loaded = worker_report(&client, &w.worker_id, |w| w.models_loaded.clone()).await?;
            ensure!(loaded == [MODEL], "{} loaded {loaded:?}", w.worker_id);
        }
        cluster.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_place_by_model_and_report_their_engines() -> Result<()> {
    within(async {
        let models = models_dir("placement")?;
        // One worker has the model and loads it before joining; the other has no models.
        let cluster = ClusterSandbox::builder().workers(1).start().await?;
        let with_model = format!("--models-dir={}", dir_arg(&models));
        let mut child = cluster.spawn_worker_process(&[
            &with_model,
            "--preload",
            MODEL,
            "--name",
            "has-model",
        ])?;
        cluster.wait_for_workers(2, Duration::from_secs(60)).await?;
        let client = cluster.client().await?;
        // The worker joins with the model loaded; its first heartbeat (sent right after the
        // welcome) says so.
        let loaded = worker_report(&client, "has-model", |w| w.models_loaded.clone()).await?;
        ensure!(loaded == [MODEL], "preloaded: {loaded:?}");

        client.register_agent(chat_agent("chat", 7)).await?;
        for i in 0..4 {
            let (worker, text, state) = run_task(&client, "chat", &format!("hello {i}")).await?;
            ensure!(state == TaskState::Completed, "{text}");
            ensure!(worker == "has-model", "a task of {MODEL} ran on {worker}");
        }
        // The heartbeat after those tasks counts the tokens generated.
        let generated = worker_report(&client, "has-model", |w| {
            w.loaded.iter().map(|m| m.generated_tokens).sum::<u64>()
        })
        .await?;
        ensure!(generated > 0, "the worker reported no generated tokens");

        // A model no worker has is refused when the task is submitted.
        let mut missing = chat_agent("missing", 1);
        missing.model = "not-there.gguf".into();
        client.register_agent(missing).await?;
        let refused = client.run("missing", "hi").await;
        let error = refused.err().map(|e| e.to_string()).unwrap_or_default();
        ensure!(error.contains("no worker has model \"not-there.gguf\""), "{error}");

        child.kill().await?;
        cluster.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preload_that_cannot_load_stops_the_worker_with_the_reason() -> Result<()> {
    let models = models_dir("bad-preload")?;
    std::fs::write(models.join("broken.gguf"), b"not a gguf file")?;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-worker"))
        .args(["--head", "http://127.0.0.1:9", "--models-dir"])
        .arg(&models)
        .args(["--preload", "broken.gguf"])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.code() == Some(2), "exit {:?}: {stderr}", output.status);
    ensure!(stderr.contains("cannot preload model \"broken.gguf\""), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_calls_another_agent_as_a_tool() -> Result<()> {
    within(async {
        // Workers without a mesh: the head runs each call as a sub-task (tests/mesh_calls.rs
        // has the direct calls between workers on the mesh).
        let cluster = ClusterSandbox::builder().workers(2).worker_arg("--no-mesh").start().await?;
        let client = cluster.client().await?;
        let echo = |name: &str, tools: &[&str]| AgentSpec {
            name: name.into(),
            model: "builtin:echo".into(),
            tools: tools.iter().map(|t| t.to_string()).collect(),
            max_retries: 1,
            ..Default::default()
        };
        client.register_agent(echo("planner", &["researcher"])).await?;
        client.register_agent(echo("researcher", &[])).await?;
        // builtin:echo says what it is told, so the planner "writes" this tool call; then it
        // answers with the latest tool result, the researcher's answer.
        let input = r#"Asking. <tool_call>{"name": "researcher", "arguments": {"input": "the facts about actors"}}</tool_call>"#;
        let kinds = fleet_testkit::run_to_end(&client, Submission::new("planner", input)).await?;
        let call = kinds.iter().find_map(|k| match k {
            EventKind::ToolCall { call_id, name, arguments, .. } => Some((call_id, name, arguments)),
            _ => None,
        });
        let (call_id, name, arguments) = call.context("no tool call event")?;
        ensure!(name == "researcher", "{name}");
        ensure!(arguments.contains("the facts about actors"), "{arguments}");
        let result = kinds.iter().find_map(|k| match k {
            EventKind::ToolResult { call_id: id, output, is_error } if id == call_id => {
                Some((output, *is_error))
            }
            _ => None,
        });
        ensure!(
            result == Some((&"the facts about actors".to_owned(), false)),
            "tool result {result:?} in {kinds:?}"
        );
        let text: String = kinds
            .iter()
            .filter_map(|k| match k {
                EventKind::TextDelta { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        ensure!(text == "Asking. the facts about actors", "{text:?}");
        ensure!(matches!(kinds.last(), Some(EventKind::Completed { .. })), "{kinds:?}");

        // The callee ran as a task of its own, visible in the cluster.
        let tasks = client
            .list_tasks(fleet_client::pb::ListTasksRequest {
                agent: "researcher".into(),
                ..Default::default()
            })
            .await?;
        ensure!(tasks.tasks.len() == 1, "researcher tasks: {}", tasks.tasks.len());

        // A tool the agent does not have gets an error result, and the agent still answers.
        let input = r#"<tool_call>{"name": "stranger", "arguments": {}}</tool_call>"#;
        let mut stream = client.submit(Submission::new("planner", input)).await?;
        let mut by_kind: HashMap<&'static str, String> = HashMap::new();
        while let Some(event) = stream.next().await {
            match event?.kind {
                EventKind::ToolResult { output, is_error: true, .. } => {
                    by_kind.insert("error", output);
                }
                EventKind::Completed { .. } => {
                    by_kind.insert("completed", String::new());
                    break;
                }
                EventKind::Failed { error, .. } => anyhow::bail!("failed: {error}"),
                _ => {}
            }
        }
        ensure!(
            by_kind.get("error").is_some_and(|e| e.contains("unknown tool \"stranger\"")),
            "{by_kind:?}"
        );
        ensure!(by_kind.contains_key("completed"), "{by_kind:?}");

        // Canceling a caller cancels the agent it is waiting for.
        let mut slow = echo("slow-researcher", &[]);
        slow.model_options.insert("token_delay_ms".into(), "200".into());
        client.register_agent(slow).await?;
        client.register_agent(echo("impatient", &["slow-researcher"])).await?;
        let words = "one two three four five six seven eight nine ten".repeat(5);
        let input = format!(
            r#"<tool_call>{{"name": "slow-researcher", "arguments": {{"input": "{words}"}}}}</tool_call>"#
        );
        let mut stream = client.submit(Submission::new("impatient", input)).await?;
        let mut caller = None;
        while let Some(event) = stream.next().await {
            let event = event?;
            if let EventKind::ToolCall { .. } = event.kind {
                caller = Some(event.task_id.clone());
                break;
            }
        }
        let caller = caller.context("no tool call")?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        client.cancel(caller.as_str()).await?;
        let callee = loop {
            let tasks = client
                .list_tasks(fleet_client::pb::ListTasksRequest {
                    agent: "slow-researcher".into(),
                    ..Default::default()
                })
                .await?;
            let task = tasks.tasks.into_iter().next().context("no callee task")?;
            if task.state == fleet_client::pb::TaskState::Canceled as i32 {
                break task;
            }
            ensure!(
                task.state != fleet_client::pb::TaskState::Completed as i32,
                "the callee completed although its caller was canceled"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        ensure!(callee.output.len() < words.len(), "{}", callee.output);
        cluster.shutdown().await
    })
    .await
}
