//! Fuzz targets for every parser of outside input at the head (see `fleet_testkit::fuzz`;
//! `FLEET_FUZZ_CASES` cases each, 10,000 by default). A panic, a hang or a server error is a
//! failure; refusing the input with the protocol's error is the expected outcome.
//!
//! - `openai_bodies`, `a2a_messages`: the request parsers on structure-aware JSON;
//! - `fleet_toml`: the config file, from mutated valid files, through `validate`;
//! - `rogue_worker_messages`: what a worker sends on its Join stream, from mutated valid
//!   messages, through the wire → domain conversion;
//! - `http_front_doors`: raw requests to a real head and worker (A2A JSON-RPC in both
//!   dialects, HTTP+JSON, the OpenAI API): every one answered, never with a 5xx, in time.

use std::path::Path;
use std::time::Duration;

use fleet_head::a2a::message;
use fleet_head::config::{ConfigFile, HeadConfig, validate};
use fleet_head::openai::completions::CompletionRequest;
use fleet_head::openai::responses::request::ResponsesRequest;
use fleet_head::openai::wire::{ChatRequest, EmbeddingsRequest};
use fleet_proto::pb;
use fleet_proto::{
    EventKind, Gpu, Heartbeat, LocateRequest, Registration, TaskEvent, TaskId, TopicMessage,
    WorkerUpdate,
};
use fleet_testkit::fuzz::{config, json, json_mutated, mutated};
use proptest::prelude::*;
use prost::Message;
use serde_json::{Value, json};

/// Field names of the A2A and OpenAI requests, in both spellings where A2A has two.
const KEYS: &[&str] = &[
    // AG-UI's and the AI SDK's.
    "threadId",
    "runId",
    "messages",
    "tools",
    "toolCalls",
    "toolCallId",
    "toolName",
    "resume",
    "interruptId",
    "payload",
    "output",
    "dynamic-tool",
    "output-available",
    "jsonrpc",
    "id",
    "method",
    "params",
    "message",
    "messageId",
    "message_id",
    "role",
    "parts",
    "text",
    "data",
    "file",
    "raw",
    "url",
    "mediaType",
    "kind",
    "taskId",
    "task_id",
    "contextId",
    "context_id",
    "historyLength",
    "history_length",
    "configuration",
    "blocking",
    "returnImmediately",
    "acceptedOutputModes",
    "pushNotificationConfig",
    "token",
    "authentication",
    "metadata",
    "extensions",
    "referenceTaskIds",
    "pageSize",
    "pageToken",
    "status",
    "state",
    "includeArtifacts",
    "ROLE_USER",
    "user",
    "agent",
    "SendMessage",
    "SendStreamingMessage",
    "GetTask",
    "ListTasks",
    "CancelTask",
    "SubscribeToTask",
    "message/send",
    "message/stream",
    "tasks/get",
    "tasks/cancel",
    "tasks/resubscribe",
    "tasks/pushNotificationConfig/set",
    "model",
    "messages",
    "content",
    "system",
    "assistant",
    "tool",
    "stream",
    "stream_options",
    "include_usage",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "n",
    "seed",
    "tools",
    "tool_choice",
    "response_format",
    "logprobs",
    "top_logprobs",
    "frequency_penalty",
    "presence_penalty",
    "input",
    "encoding_format",
    "float",
    "base64",
    "dimensions",
    "type",
    "image_url",
    "echo",
    "instructions",
    "max_output_tokens",
    "format",
    "json_schema",
    "function_call",
    "function_call_output",
    "call_id",
    "arguments",
    "output",
    "include",
    "previous_response_id",
    "prompt",
    "suffix",
    "best_of",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn openai_bodies(body in prop_oneof![json_mutated(openai_seeds(), KEYS), json(KEYS)]) {
        let _ = ChatRequest::parse(&body);
        let _ = EmbeddingsRequest::parse(&body);
        let _ = ResponsesRequest::parse(&body);
        let _ = CompletionRequest::parse(&body);
    }

    #[test]
    fn a2a_messages(params in prop_oneof![json_mutated(a2a_rpc_seeds(), KEYS), json(KEYS)]) {
        let params = params.get("params").cloned().unwrap_or(params);
        let _ = message::incoming(&params);
    }
}

const TOML_SEEDS: &[&str] = &[
    "listen = \"127.0.0.1:7070\"\ntoken = \"t\"\njoin_token = \"j\"\nmax_queued_tasks = 10\n\
     heartbeat_interval_ms = 500\nworker_timeout_ms = 3000\n",
    "[[agent]]\nname = \"echo\"\nmodel = \"builtin:echo\"\ninstructions = \"be brief\"\n\
     max_retries = 2\nmax_concurrency = 4\ntopics = [\"news\"]\n\
     [agent.resources]\ncpus = 0.5\nmemory_mb = 512\ngpus = 0\n\
     [agent.sampling]\ntemperature = 0.7\ntop_p = 0.9\nmax_tokens = 64\nseed = 7\nstop = [\"\\n\"]\n\
     [agent.labels]\nzone = \"a\"\n[agent.model_options]\ntoken_delay_ms = 5\n",
];

fn toml_seeds() -> Vec<Vec<u8>> {
    TOML_SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fleet_toml(bytes in mutated(toml_seeds())) {
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(file) = ConfigFile::parse(&text, Path::new("fleet.toml")) {
            let mut head = HeadConfig::default();
            file.apply(&mut head);
            let _ = validate(&head);
        }
    }
}

fn worker_seeds() -> Vec<Vec<u8>> {
    let event = |kind| TaskEvent {
        task_id: TaskId::new("0b5c7a4e-task"),
        seq: 0,
        attempt: 1,
        timestamp_us: 1_700_000_000_000_000,
        kind,
    };
    let updates = [
        WorkerUpdate::Register(Registration {
            worker_id: "w1".into(),
            hostname: "host".into(),
            labels: [("zone".to_owned(), "a".to_owned())].into(),
            slots: 8,
            version: "0.1.0".into(),
            gpus: vec![Gpu {
                index: 0,
                name: "NVIDIA H100 80GB HBM3".into(),
                memory_bytes: 85 << 30,
            }],
            ..Default::default()
        }),
        WorkerUpdate::Heartbeat(Heartbeat {
            running_tasks: 3,
            actors: 2,
            models_loaded: vec!["m".into()],
            ..Default::default()
        }),
        WorkerUpdate::Events(vec![
            event(EventKind::Working),
            event(EventKind::text("hello")),
            event(EventKind::ToolCall {
                call_id: "c1".into(),
                name: "search".into(),
                arguments: "{\"input\":\"x\"}".into(),
                traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                replayed: false,
            }),
        ]),
        WorkerUpdate::Locate(LocateRequest {
            request_id: 9,
            agent: "echo".into(),
            context_id: "ctx".into(),
            caller_task: "t".into(),
        }),
        WorkerUpdate::TopicMessages(vec![TopicMessage {
            topic: "news".into(),
            publisher: "p".into(),
            seq: 4,
            body: "b".into(),
            worker_id: "w1".into(),
            offset: None,
            published_at_us: 0,
        }]),
        WorkerUpdate::Published { request_id: 3, result: Ok(12) },
        WorkerUpdate::StoreTopicMessage {
            request: fleet_proto::PublishRequest {
                request_id: 5,
                topic: "news".into(),
                publisher: "agent".into(),
                body: "b".into(),
            },
            seq: 2,
            more: vec!["c".into()],
        },
    ];
    updates.into_iter().map(|u| pb::WorkerMessage::from(u).encode_to_vec()).collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn rogue_worker_messages(bytes in mutated(worker_seeds())) {
        if let Ok(message) = pb::WorkerMessage::decode(bytes.as_slice()) {
            let _ = WorkerUpdate::try_from(message);
        }
    }
}

/// One raw request: a path, headers and a body.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    version: Option<&'static str>,
    body: Vec<u8>,
}

fn rpc(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
}

/// Valid requests of every kind, for the near-valid mutants.
fn a2a_rpc_seeds() -> Vec<Value> {
    let v1 =
        json!({"message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hi"}]}});
    let v03 = json!({"message": {"messageId": "m1", "role": "user", "kind": "message",
        "parts": [{"kind": "text", "text": "hi"}]}, "configuration": {"historyLength": 2}});
    vec![
        rpc("SendMessage", v1.clone()),
        rpc("SendStreamingMessage", v1),
        rpc("GetTask", json!({"id": "t1", "historyLength": 3})),
        rpc("ListTasks", json!({"pageSize": 5, "status": "TASK_STATE_COMPLETED"})),
        rpc("CancelTask", json!({"id": "t1"})),
        rpc("SubscribeToTask", json!({"id": "t1"})),
        rpc("message/send", v03.clone()),
        rpc("message/stream", v03),
        rpc("tasks/get", json!({"id": "t1"})),
        rpc(
            "tasks/pushNotificationConfig/set",
            json!({"taskId": "t1",
            "pushNotificationConfig": {"url": "https://example.com/hook", "token": "x"}}),
        ),
    ]
}

fn openai_seeds() -> Vec<Value> {
    let messages =
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]);
    vec![
        json!({"model": "echo", "messages": messages, "max_tokens": 8, "temperature": 0.5}),
        json!({"model": "echo", "messages": messages, "stream": true,
            "stream_options": {"include_usage": true}, "stop": ["x"]}),
        json!({"model": "echo", "input": ["a", "b"], "encoding_format": "float"}),
        json!({"model": "echo", "instructions": "be brief", "max_output_tokens": 8,
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c", "output": "1"}],
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
            "include": ["message.output_text.logprobs"], "top_logprobs": 1}),
        json!({"model": "echo", "prompt": ["a b", "c"], "max_tokens": 4, "n": 2, "logprobs": 2,
            "stream": true, "echo": false}),
    ]
}

/// AG-UI `RunAgentInput`s and AI SDK chats, to mutate.
fn web_ui_seeds() -> Vec<Value> {
    vec![
        json!({"threadId": "t", "runId": "r", "state": {}, "context": [{"description": "d", "value": "v"}],
            "messages": [{"id": "1", "role": "developer", "content": "be brief"},
                {"id": "2", "role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"id": "3", "role": "assistant", "toolCalls": [{"id": "c", "type": "function",
                    "function": {"name": "f", "arguments": "{}"}}]},
                {"id": "4", "role": "tool", "toolCallId": "c", "content": "1"}],
            "tools": [{"name": "f", "description": "d", "parameters": {"type": "object"}}],
            "forwardedProps": {}}),
        json!({"threadId": "t", "runId": "r", "messages": [],
            "resume": [{"interruptId": "task@3", "status": "resolved", "payload": {"approved": true}}]}),
        json!({"id": "chat", "trigger": "submit-message", "tools": [{"name": "f", "description": "d"}],
            "messages": [{"id": "1", "role": "user", "parts": [{"type": "text", "text": "hi"}]},
                {"id": "2", "role": "assistant", "parts": [{"type": "step-start"},
                    {"type": "dynamic-tool", "toolName": "f", "toolCallId": "c",
                     "state": "output-available", "input": {}, "output": "1"}]}]}),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    let body = |seeds: Vec<Value>| {
        prop_oneof![
            6 => json_mutated(seeds, KEYS).prop_map(|v| v.to_string().into_bytes()),
            2 => json(KEYS).prop_map(|v| v.to_string().into_bytes()),
            1 => proptest::collection::vec(any::<u8>(), 0..256),
        ]
    };
    let rest = vec![
        json!({"message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hi"}]}}),
    ];
    let path_and_body = prop_oneof![
        (
            prop_oneof![Just("/a2a/echo"), Just("/a2a/echo/"), Just("/a2a/nobody")],
            body(a2a_rpc_seeds())
        ),
        (
            prop_oneof![Just("/a2a/echo/message:send"), Just("/a2a/echo/message:stream")],
            body(rest.clone())
        ),
        (Just("/a2a/echo/tasks/t1:cancel"), body(rest)),
        (
            prop_oneof![Just("/agui/echo"), Just("/ai-sdk/echo"), Just("/agui/nobody")],
            body(web_ui_seeds())
        ),
        (
            prop_oneof![
                Just("/v1/chat/completions"),
                Just("/v1/embeddings"),
                Just("/v1/responses"),
                Just("/v1/completions")
            ],
            body(openai_seeds())
        ),
    ];
    let version = prop_oneof![Just(None), Just(Some("1.0")), Just(Some("0.3")), Just(Some("9"))];
    (path_and_body, version).prop_map(|((path, body), version)| Request {
        path: path.to_owned(),
        version,
        body,
    })
}

#[test]
fn http_front_doors() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let sandbox = runtime.block_on(
        fleet_testkit::ClusterSandbox::builder()
            .workers(1)
            .config("[[agent]]\nname = \"echo\"\nmodel = \"builtin:echo\"\n")
            .start(),
    )?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let mut runner = proptest::test_runner::TestRunner::new(config());
    let answers = std::cell::RefCell::new(std::collections::BTreeMap::<String, u32>::new());
    let outcome = runner.run(&request(), |r| {
        let url = format!("{}{}", sandbox.url, r.path);
        let mut post = http.post(&url).header("content-type", "application/json").body(r.body);
        if let Some(v) = r.version {
            post = post.header("A2A-Version", v);
        }
        let answer = runtime.block_on(async {
            let response = post.send().await?;
            let status = response.status();
            // Read the whole body: a stream must end too (each task is a short echo).
            response.text().await.map(|body| (status, body))
        });
        match answer {
            Ok((status, _)) if status.is_server_error() => {
                Err(TestCaseError::fail(format!("{} answered {status}", r.path)))
            }
            Ok((status, body)) => {
                let done = ["\"result\"", "\"choices\"", "RUN_FINISHED", "\"finish\""];
                let outcome =
                    if done.iter().any(|d| body.contains(d)) { "done" } else { "refused" };
                *answers
                    .borrow_mut()
                    .entry(format!("{} {status} {outcome}", r.path))
                    .or_default() += 1;
                Ok(())
            }
            Err(e) => Err(TestCaseError::fail(format!("{}: no answer: {e}", r.path))),
        }
    });
    // What the cases reached (`--nocapture`): a run where nothing is ever accepted fuzzes
    // only the first checks.
    eprintln!("answers by path, status and outcome: {:#?}", answers.borrow());
    let alive = runtime
        .block_on(async { sandbox.client().await?.status().await.map_err(anyhow::Error::from) });
    runtime.block_on(sandbox.shutdown())?;
    outcome.map_err(|e| anyhow::anyhow!("{e}"))?;
    alive.map(|_| ())
}
