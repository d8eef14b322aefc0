//! OpenAI's chat completions API answered in this process, for the Python agent's task that
//! asks (`af.openai_client()`, the framework adapters): the body is read as the head's
//! `/v1/chat/completions` reads it (the same parser, the same refusals naming their field)
//! and answered by the worker's models through the task's [`CodeContext`], in the head's
//! response shapes. A call costs no HTTP hop and no credential; its tokens count in the
//! task's usage, and the task's cancellation stops it.

use std::borrow::Cow;
use std::sync::Arc;

use fleet_head::openai::errors::ApiError;
use fleet_head::openai::wire::{
    AssistantMessage, ChatCompletion, ChatCompletionChunk, ChatRequest, Choice, ChunkChoice,
    CompletionUsage, Delta, ToolCallOut,
};
use fleet_worker::code_agents::{CodeContext, Generated, Piece, completion_request};
use pyo3::prelude::*;
use tokio::sync::mpsc;

/// What an in-process call answers: the HTTP status, the JSON body, or for a stream (body
/// empty) the server-sent events as they come.
pub type Answer = (u16, Cow<'static, [u8]>, Option<Chunks>);

/// Answers one `POST /v1/chat/completions` body for the task of `context`.
pub async fn chat_completions(context: CodeContext, body: Vec<u8>) -> Answer {
    match answer(context, &body).await {
        Ok(answer) => answer,
        Err(e) => (e.status.as_u16(), Cow::Owned(e.to_json().to_string().into_bytes()), None),
    }
}

async fn answer(context: CodeContext, body: &[u8]) -> Result<Answer, ApiError> {
    let body: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::malformed(format!("the body is not JSON: {e}")))?;
    let request = ChatRequest::parse(&body)?;
    if request.n != 1 {
        return Err(ApiError::unsupported(
            "n",
            "an agent's in-process model calls make one choice each: make several calls",
        ));
    }
    let generate = completion_request(&request.task_options(), &request.input)
        .map_err(|e| ApiError::invalid("response_format", e))?;
    let find_calls = !generate.tools.is_empty();
    let generation = context
        .start_generation(&request.model, generate)
        .await
        .map_err(|(kind, message)| ApiError::of(kind, message))?;
    let head = Head {
        id: format!("chatcmpl-{}", context.task_id()),
        created: fleet_head::openai::unix_now(),
        model: request.model,
    };
    if !request.stream {
        let made = context
            .drain(generation, find_calls, |_| {})
            .await
            .map_err(|(kind, message)| ApiError::of(kind, message))?;
        return Ok((200, Cow::Owned(head.completion(made)), None));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let include_usage = request.include_usage;
    tokio::spawn(async move {
        let head = Arc::new(head);
        let role =
            Delta { role: Some("assistant"), content: Some(String::new()), ..Default::default() };
        let _ = tx.send(head.chunk(role, None));
        let mut calls = 0;
        let pieces = tx.clone();
        let sending = head.clone();
        let drained = context.drain(generation, find_calls, move |piece| {
            let delta = match piece {
                Piece::Text(text) => Delta { content: Some(text), ..Default::default() },
                Piece::Reasoning(text) => {
                    Delta { reasoning_content: Some(text), ..Default::default() }
                }
                Piece::ToolCall(call) => {
                    let out = ToolCallOut {
                        index: Some(calls),
                        ..ToolCallOut::new(&call.id, &call.name, &call.arguments)
                    };
                    calls += 1;
                    Delta { tool_calls: vec![out], ..Default::default() }
                }
            };
            let _ = pieces.send(sending.chunk(delta, None));
        });
        // The reader gone (the client closed the stream): the generation stops with it.
        let made = tokio::select! {
            made = drained => made,
            () = tx.closed() => return,
        };
        match made {
            Ok(made) => {
                let finish = finish_reason(&made);
                let _ = tx.send(head.chunk(Delta::default(), Some(finish)));
                if include_usage {
                    let _ = tx.send(head.chunk_usage(usage(&made)));
                }
                let _ = tx.send(b"data: [DONE]\n\n".to_vec());
            }
            Err((kind, message)) => {
                let error = ApiError::of(kind, message).to_json();
                let _ = tx.send(format!("data: {error}\n\n").into_bytes());
            }
        }
    });
    Ok((200, Cow::Borrowed(b""), Some(Chunks { rx: Arc::new(tokio::sync::Mutex::new(rx)) })))
}

/// What every chunk (and the completion) of one call repeats.
struct Head {
    id: String,
    created: u64,
    model: String,
}

impl Head {
    fn completion(&self, made: Generated) -> Vec<u8> {
        let finish = finish_reason(&made);
        let usage = usage(&made);
        let calls: Vec<_> = made
            .tool_calls
            .iter()
            .map(|c| ToolCallOut::new(&c.id, &c.name, &c.arguments))
            .collect();
        let message = AssistantMessage {
            role: "assistant",
            content: (!made.text.is_empty() || calls.is_empty()).then_some(made.text),
            reasoning_content: (!made.reasoning.is_empty()).then_some(made.reasoning),
            tool_calls: calls,
        };
        let completion = ChatCompletion {
            id: self.id.clone(),
            object: "chat.completion",
            created: self.created,
            model: self.model.clone(),
            choices: vec![Choice { index: 0, message, finish_reason: finish, logprobs: None }],
            usage,
        };
        serde_json::to_vec(&completion).unwrap_or_default()
    }

    /// One server-sent event of a `chat.completion.chunk`.
    fn chunk(&self, delta: Delta, finish: Option<&'static str>) -> Vec<u8> {
        let choices = vec![ChunkChoice { index: 0, delta, finish_reason: finish, logprobs: None }];
        self.event(choices, None)
    }

    /// The last chunk of a stream that asked for the usage (`stream_options.include_usage`).
    fn chunk_usage(&self, usage: CompletionUsage) -> Vec<u8> {
        self.event(Vec::new(), Some(usage))
    }

    fn event(&self, choices: Vec<ChunkChoice>, usage: Option<CompletionUsage>) -> Vec<u8> {
        let chunk = ChatCompletionChunk::new(&self.id, self.created, &self.model, choices, usage);
        let json = serde_json::to_string(&chunk).unwrap_or_else(|_| "{}".to_owned());
        format!("data: {json}\n\n").into_bytes()
    }
}

/// A call cut off by `max_tokens` is no call to run: its reason is the length.
fn finish_reason(made: &Generated) -> &'static str {
    let truncated = made.usage.finish_reason == fleet_inference::FinishReason::Length;
    match (truncated, made.tool_calls.is_empty()) {
        (true, _) => "length",
        (false, false) => "tool_calls",
        (false, true) => "stop",
    }
}

fn usage(made: &Generated) -> CompletionUsage {
    let u = &made.usage;
    CompletionUsage::from(fleet_proto::Usage {
        prompt_tokens: u.prompt_tokens,
        cached_tokens: u.cached_tokens,
        completion_tokens: u.completion_tokens,
        reasoning_tokens: u.reasoning_tokens,
        truncated: u.finish_reason == fleet_inference::FinishReason::Length,
    })
}

/// The server-sent events of a streamed completion, read by `af.openai_client()`'s
/// transport: `await chunks.next()` gives the next event's bytes, or None at the end.
#[pyclass(module = "agentfleet", name = "_Chunks", frozen)]
pub struct Chunks {
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Vec<u8>>>>,
}

#[pymethods]
impl Chunks {
    /// The events ready now, at least one (waits), as one piece of the byte stream; None at
    /// the end. Ready events come together: each await is a hop between two runtimes.
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let rx = self.rx.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let mut rx = rx.lock().await;
            let Some(mut bytes) = rx.recv().await else { return Ok(None) };
            while let Ok(more) = rx.try_recv() {
                bytes.extend_from_slice(&more);
            }
            Ok(Some(Cow::<'static, [u8]>::Owned(bytes)))
        })
    }

    /// Stops the stream: the generation ends (the client closed the response early).
    fn close(&self) {
        if let Ok(mut rx) = self.rx.try_lock() {
            rx.close();
        }
    }
}
