//! `POST /v1/responses`, OpenAI's Responses API (what current OpenAI SDK code calls by
//! default): the request is read as the chat request it amounts to ([`request`]), runs as
//! one task, and is answered as a `response` object whose `output` holds a message item
//! and/or `function_call` items; streamed as the typed events of [`stream`].
//!
//! Responses are not kept (`store` is answered false): a request carries its whole
//! conversation, earlier output items included, and `previous_response_id` is a 400.

pub mod request;
mod stream;

use std::sync::Arc;

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::chat::{Answer, complete};
use super::errors::ApiError;
use super::wire::LogprobOut;
use super::{JsonBody, unix_now};
use crate::cluster::NewTask;
use crate::run::TaskRun;
use request::ResponsesRequest;

pub async fn create(
    crate::auth::Caller(api): super::Caller,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let request = ResponsesRequest::parse(&body)?;
    let chat = &request.chat;
    let agent = api.agent_with_tools(&chat.model, &chat.tools)?;
    let options = chat.task_options();
    let task = NewTask {
        agent,
        input: chat.input.clone(),
        context_id: String::new(),
        options: Some(Arc::new(options)),
        traceparent: crate::traceparent::incoming(),
        ..Default::default()
    };
    let run = TaskRun::start(&api.cluster, &api.who, task)?;
    let shell = Shell {
        id: format!("resp_{}", run.task_id),
        message_id: format!("msg_{}", run.task_id),
        reasoning_id: format!("rs_{}", run.task_id),
        created_at: unix_now(),
        model: chat.model.clone(),
        echo: request.echo,
        logprobs: request.logprobs,
    };
    tracing::debug!(task_id = %run.task_id, model = %chat.model, stream = chat.stream, "response");
    if chat.stream {
        Ok(stream::events(run, shell))
    } else {
        let answer = complete(run).await?;
        Ok(Json(shell.finished(&answer)).into_response())
    }
}

/// What every response object of one request repeats: its ids, model and the request's
/// settings.
struct Shell {
    id: String,
    message_id: String,
    /// The id of a thinking model's reasoning item.
    reasoning_id: String,
    created_at: u64,
    model: String,
    echo: Map<String, Value>,
    /// Whether text parts carry their logprobs (`include`).
    logprobs: bool,
}

impl Shell {
    /// The response object with `status`, `output` and the rest.
    fn object(&self, status: &str, output: Vec<Value>, extra: Value) -> Value {
        let mut o = self.echo.clone();
        o.insert("id".into(), json!(self.id));
        o.insert("object".into(), json!("response"));
        o.insert("created_at".into(), json!(self.created_at));
        o.insert("status".into(), json!(status));
        o.insert("model".into(), json!(self.model));
        o.insert("output".into(), Value::Array(output));
        o.insert("error".into(), Value::Null);
        o.insert("incomplete_details".into(), Value::Null);
        o.insert("usage".into(), Value::Null);
        if let Value::Object(extra) = extra {
            o.extend(extra);
        }
        Value::Object(o)
    }

    /// A response still being generated.
    fn in_progress(&self) -> Value {
        self.object("in_progress", Vec::new(), Value::Null)
    }

    /// The response for a whole answer: completed, or incomplete when max_output_tokens
    /// cut it off.
    fn finished(&self, answer: &Answer) -> Value {
        let calls = &answer.message.tool_calls;
        let truncated = answer.usage.truncated && calls.is_empty();
        let item_status = if truncated { "incomplete" } else { "completed" };
        let mut output = Vec::new();
        if let Some(reasoning) = &answer.message.reasoning_content {
            output.push(self.reasoning("completed", reasoning));
        }
        let text = answer.message.content.as_deref().unwrap_or_default();
        if !text.is_empty() || calls.is_empty() {
            output.push(self.message(item_status, text, &answer.logprobs));
        }
        output.extend(
            calls.iter().map(|c| {
                function_call(&c.id, &c.function.name, &c.function.arguments, "completed")
            }),
        );
        let (status, details) = if truncated {
            ("incomplete", json!({"reason": "max_output_tokens"}))
        } else {
            ("completed", Value::Null)
        };
        let extra = json!({"usage": usage(&answer.usage), "incomplete_details": details});
        self.object(status, output, extra)
    }

    /// A response that failed after it started streaming.
    fn failed(&self, code: &str, message: &str) -> Value {
        let error = json!({"code": code, "message": message});
        self.object("failed", Vec::new(), json!({"error": error}))
    }

    /// The reasoning item holding a thinking model's reasoning as its raw text (as OpenAI's
    /// open-weight models report theirs: a `reasoning_text` part, no summary).
    fn reasoning(&self, status: &str, text: &str) -> Value {
        json!({
            "type": "reasoning",
            "id": self.reasoning_id,
            "status": status,
            "summary": [],
            "content": [{"type": "reasoning_text", "text": text}],
        })
    }

    /// The assistant message item holding `text`.
    fn message(&self, status: &str, text: &str, logprobs: &[fleet_proto::TokenLogprob]) -> Value {
        json!({
            "type": "message",
            "id": self.message_id,
            "status": status,
            "role": "assistant",
            "content": [self.text_part(text, logprobs)],
        })
    }

    fn text_part(&self, text: &str, logprobs: &[fleet_proto::TokenLogprob]) -> Value {
        json!({
            "type": "output_text",
            "text": text,
            "annotations": [],
            "logprobs": self.logprobs(logprobs),
        })
    }

    /// The logprobs entries of some tokens (none unless the request included them).
    fn logprobs(&self, tokens: &[fleet_proto::TokenLogprob]) -> Value {
        if !self.logprobs {
            return json!([]);
        }
        let entries: Vec<LogprobOut> = tokens.iter().map(LogprobOut::from).collect();
        serde_json::to_value(entries).unwrap_or_else(|_| json!([]))
    }
}

/// A `function_call` output item. Its id is the call's id with `fc_` in front, so that
/// the stream's and the final response's items match.
fn function_call(call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({
        "type": "function_call",
        "id": format!("fc_{call_id}"),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    })
}

/// The Responses API's usage.
fn usage(u: &fleet_proto::Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.prompt_tokens.saturating_add(u.completion_tokens),
    })
}
