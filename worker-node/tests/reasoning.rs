//! A thinking model's reasoning through the cluster's front doors, apart from its answer:
//! `reasoning_content` in OpenAI chat (whole and streamed), a `reasoning` item in the
//! Responses API (whole and streamed), a `reasoning` artifact in A2A (streamed, and in the
//! task), and `ReasoningDelta` events for cluster clients. The model is a tiny Qwen3 planted
//! to answer `<think>plan</think>42` (`fixture::write_thinking_model`), served by a real
//! worker process from its models dir.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fleet_client::{EventKind, Submission};
use fleet_inference::transformer::fixture;
use fleet_testkit::ClusterSandbox;
use futures::StreamExt;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(120);
const MODEL: &str = "thinker";
const REASONING: &str = "plan";
const ANSWER: &str = "42";

const CONFIG: &str = r#"
[[agent]]
name = "thinker"
model = "thinker"
sampling = { max_tokens = 16 }
"#;

async fn within<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(LIMIT, f).await.context("test ran past its time limit")?
}

fn models_dir() -> Result<PathBuf> {
    let root = std::env::temp_dir().join(format!("fleet-thinking-{}", std::process::id()));
    fixture::write_thinking_model(&root.join(MODEL), REASONING, ANSWER)?;
    Ok(root)
}

async fn post(url: &str, body: Value, headers: &[(&str, &str)]) -> Result<String> {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await?;
    let status = response.status();
    let text = response.text().await?;
    ensure!(status.is_success(), "{url}: {status} {text}");
    Ok(text)
}

/// The JSON of each `data:` line of a server-sent event stream (`[DONE]` left out).
fn sse(body: &str) -> Result<Vec<Value>> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).with_context(|| format!("not JSON: {d}")))
        .collect()
}

fn joined<'a>(values: impl Iterator<Item = &'a Value>) -> String {
    values.filter_map(Value::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_arrives_apart_at_every_front_door() -> Result<()> {
    within(async {
        let models = models_dir()?;
        let cluster = ClusterSandbox::builder()
            .workers(1)
            .config(CONFIG)
            .worker_arg("--models-dir")
            .worker_arg(models.to_string_lossy())
            .start()
            .await?;
        let url = &cluster.url;
        let chat = json!({"model": MODEL, "messages": [{"role": "user", "content": "6 x 7?"}]});

        // OpenAI chat, whole: the reasoning beside the content.
        let whole: Value = serde_json::from_str(&post(&format!("{url}/v1/chat/completions"), chat.clone(), &[]).await?)?;
        let message = &whole["choices"][0]["message"];
        ensure!(message["content"] == ANSWER && message["reasoning_content"] == REASONING, "{whole}");

        // reasoning_effort "none" reaches the template: it closes an empty reasoning in the
        // prompt, whose last token then no longer starts this model's chain: no reasoning.
        let mut off = chat.clone();
        off["reasoning_effort"] = json!("none");
        let off: Value = serde_json::from_str(&post(&format!("{url}/v1/chat/completions"), off, &[]).await?)?;
        let prompt = |v: &Value| v["usage"]["prompt_tokens"].as_u64().unwrap_or_default();
        let tokenizer = fleet_inference::text::Tokenizer::from_hf_dir(&models.join(MODEL))?;
        let empty = tokenizer.encode("<think>\n\n</think>\n\n")?.len() as u64;
        ensure!(prompt(&off) == prompt(&whole) + empty, "{off} / {whole}");
        ensure!(off["choices"][0]["message"].get("reasoning_content").is_none(), "{off}");

        // Streamed: reasoning_content deltas, then content deltas.
        let mut streamed = chat.clone();
        streamed["stream"] = json!(true);
        let chunks = sse(&post(&format!("{url}/v1/chat/completions"), streamed, &[]).await?)?;
        let deltas: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["delta"]).collect();
        let reasoning = joined(deltas.iter().map(|d| &d["reasoning_content"]));
        let content = joined(deltas.iter().map(|d| &d["content"]));
        ensure!(reasoning == REASONING && content == ANSWER, "{chunks:?}");
        let last_reasoning = deltas.iter().rposition(|d| d["reasoning_content"].is_string());
        let first_content = deltas.iter().position(|d| d["content"].as_str().is_some_and(|c| !c.is_empty()));
        ensure!(last_reasoning < first_content, "content before the reasoning ended: {chunks:?}");

        // Responses, whole: a reasoning item before the message.
        let input = json!({"model": MODEL, "input": "6 x 7?"});
        let response: Value = serde_json::from_str(&post(&format!("{url}/v1/responses"), input.clone(), &[]).await?)?;
        let output = &response["output"];
        ensure!(output[0]["type"] == "reasoning", "{response}");
        ensure!(output[0]["content"][0] == json!({"type": "reasoning_text", "text": REASONING}), "{response}");
        ensure!(output[1]["type"] == "message" && output[1]["content"][0]["text"] == ANSWER, "{response}");

        // Streamed: reasoning_text deltas and done, then the message's text.
        let mut streamed = input.clone();
        streamed["stream"] = json!(true);
        let events = sse(&post(&format!("{url}/v1/responses"), streamed, &[]).await?)?;
        let of = |kind: &'static str| events.iter().filter(move |e| e["type"] == kind);
        ensure!(joined(of("response.reasoning_text.delta").map(|e| &e["delta"])) == REASONING, "{events:?}");
        ensure!(joined(of("response.reasoning_text.done").map(|e| &e["text"])) == REASONING, "{events:?}");
        ensure!(joined(of("response.output_text.delta").map(|e| &e["delta"])) == ANSWER, "{events:?}");
        let completed = of("response.completed").next().context("no response.completed")?;
        let done = &completed["response"]["output"];
        ensure!(done[0]["type"] == "reasoning" && done[0]["content"] == output[0]["content"], "{completed}");
        ensure!(done[1]["type"] == "message" && done[1]["content"] == output[1]["content"], "{completed}");

        // A2A: the reasoning's own artifact, streamed and in the task.
        let message = json!({"message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "6 x 7?"}]}});
        let a2a = format!("{url}/a2a/thinker");
        let items = sse(&post(&format!("{a2a}/message:stream"), message, &[("A2A-Version", "1.0")]).await?)?;
        let parts = |id: &str| -> String {
            let updates = items.iter().filter_map(|i| i.get("artifactUpdate"));
            let of_id = updates.filter(|u| u["artifact"]["artifactId"] == id);
            joined(of_id.flat_map(|u| u["artifact"]["parts"].as_array().into_iter().flatten()).map(|p| &p["text"]))
        };
        ensure!(parts("reasoning") == REASONING && parts("output") == ANSWER, "{items:?}");
        let task_id = items[0]["task"]["id"].as_str().context("no task first")?;
        let client = reqwest::Client::new();
        let task: Value = serde_json::from_str(
            &client.get(format!("{a2a}/tasks/{task_id}")).header("A2A-Version", "1.0").send().await?.text().await?,
        )?;
        let artifacts = &task["artifacts"];
        ensure!(artifacts[0]["artifactId"] == "reasoning" && artifacts[0]["parts"][0]["text"] == REASONING, "{task}");
        ensure!(artifacts[1]["artifactId"] == "output" && artifacts[1]["parts"][0]["text"] == ANSWER, "{task}");

        // The cluster's own clients: ReasoningDelta events, the answer's text apart.
        let fleet = cluster.client().await?;
        let mut events = fleet.submit(Submission::new("thinker", "6 x 7?")).await?;
        let (mut reasoning, mut text) = (String::new(), String::new());
        while let Some(event) = events.next().await {
            match event?.kind {
                EventKind::ReasoningDelta { text: t } => reasoning.push_str(&t),
                EventKind::TextDelta { text: t, .. } => text.push_str(&t),
                kind if kind.is_terminal() => break,
                _ => {}
            }
        }
        ensure!(reasoning == REASONING && text == ANSWER, "{reasoning:?} / {text:?}");
        std::fs::remove_dir_all(&models)?;
        Ok(())
    })
    .await
}

/// A harmony model's (gpt-oss's) call to a function, through OpenAI chat and the Responses
/// API: structured tool calls (not text), under the grammar of the tools the client gave.
/// The model is a tiny Qwen3 planted to call `sum` with no arguments in harmony's format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_harmony_models_calls_arrive_as_tool_calls_under_their_grammar() -> Result<()> {
    within(async {
        let root = std::env::temp_dir().join(format!("fleet-harmony-calls-{}", std::process::id()));
        let call = "<|channel|>commentary to=functions.sum <|constrain|>json<|message|>{}<|call|>";
        fixture::write_harmony_model(&root.join("caller"), call)?;
        let config =
            "[[agent]]\nname = \"caller\"\nmodel = \"caller\"\nsampling = { max_tokens = 64 }\n";
        let cluster = ClusterSandbox::builder()
            .workers(1)
            .config(config)
            .worker_arg("--models-dir")
            .worker_arg(root.to_string_lossy())
            .start()
            .await?;
        let url = &cluster.url;
        let tools = json!([
            {"type": "function", "function": {"name": "sum", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "add", "parameters": {"type": "object",
                "properties": {"a": {"type": "integer", "maximum": 99}, "b": {"type": "integer", "maximum": 99}},
                "required": ["a", "b"], "additionalProperties": false}}},
        ]);
        let chat = json!({"model": "caller", "tools": tools,
            "messages": [{"role": "user", "content": "add 6 and 7"}]});

        // Whole: the model's own call, as a tool call.
        let whole: Value = serde_json::from_str(
            &post(&format!("{url}/v1/chat/completions"), chat.clone(), &[]).await?,
        )?;
        let choice = &whole["choices"][0];
        let calls = &choice["message"]["tool_calls"];
        ensure!(
            choice["finish_reason"] == "tool_calls" && calls.as_array().map(Vec::len) == Some(1),
            "{whole}"
        );
        ensure!(calls[0]["function"] == json!({"name": "sum", "arguments": "{}"}), "{whole}");
        ensure!(choice["message"]["content"].as_str().unwrap_or_default().is_empty(), "{whole}");

        // Told to call `add`, streamed: the grammar writes its header and valid arguments.
        let mut forced = chat.clone();
        forced["tool_choice"] = json!({"type": "function", "function": {"name": "add"}});
        forced["stream"] = json!(true);
        let chunks = sse(&post(&format!("{url}/v1/chat/completions"), forced, &[]).await?)?;
        let deltas = chunks.iter().flat_map(|c| {
            c["choices"][0]["delta"]["tool_calls"].as_array().cloned().unwrap_or_default()
        });
        let (mut name, mut arguments) = (String::new(), String::new());
        for delta in deltas {
            name.push_str(delta["function"]["name"].as_str().unwrap_or_default());
            arguments.push_str(delta["function"]["arguments"].as_str().unwrap_or_default());
        }
        let args: Value =
            serde_json::from_str(&arguments).with_context(|| format!("{chunks:?}"))?;
        ensure!(name == "add" && args["a"].is_i64() && args["b"].is_i64(), "{chunks:?}");
        let last = chunks.last().map(|c| &c["choices"][0]["finish_reason"]);
        ensure!(last == Some(&json!("tool_calls")), "{chunks:?}");

        // Cut off inside its arguments (`{` of `{}`, the 11th token): a call, but no call to
        // run, so the reason is the length.
        let mut cut = chat.clone();
        cut["max_tokens"] = json!(11);
        let whole: Value = serde_json::from_str(&post(&format!("{url}/v1/chat/completions"), cut, &[]).await?)?;
        let choice = &whole["choices"][0];
        ensure!(choice["finish_reason"] == "length", "{whole}");
        ensure!(choice["message"]["tool_calls"][0]["function"]["arguments"] == "{", "{whole}");

        // Responses: a function_call item.
        let input = json!({"model": "caller", "input": "add 6 and 7", "tools": [
            {"type": "function", "name": "sum", "parameters": {"type": "object"}}]});
        let response: Value =
            serde_json::from_str(&post(&format!("{url}/v1/responses"), input, &[]).await?)?;
        let item = &response["output"][0];
        ensure!(
            item["type"] == "function_call" && item["name"] == "sum" && item["arguments"] == "{}",
            "{response}"
        );
        std::fs::remove_dir_all(&root)?;
        Ok(())
    })
    .await
}
