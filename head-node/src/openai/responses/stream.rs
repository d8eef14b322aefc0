//! A streamed response: `response.created` and `response.in_progress`; for text, the
//! message item opened (`output_item.added`, `content_part.added`), `output_text.delta`s,
//! and closed (`output_text.done`, `content_part.done`, `output_item.done`); for each tool
//! call a `function_call` item (added with empty arguments, the arguments as one delta,
//! done); then `response.completed`, or `response.incomplete` when max_output_tokens cut
//! the text off. A failure is an `error` event and `response.failed`. Every event has a
//! `sequence_number` from 0 and an `event:` line naming its type; no `[DONE]` follows.
//! A thinking model's reasoning comes first as a `reasoning` item (added,
//! `reasoning_text.delta`s, `reasoning_text.done`, done).
//!
//! As with chat, a retry (the worker was lost) before anything was sent is invisible, and
//! one after ends the stream with an error.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use fleet_proto::{EventKind, TokenLogprob};
use futures::{StreamExt, stream};
use serde_json::{Value, json};

use super::super::chat::{KEEP_ALIVE, ended_without_answer};
use super::super::errors::ApiError;
use super::{Shell, function_call, usage};
use crate::run::TaskRun;

pub fn events(run: TaskRun, shell: Shell) -> Response {
    let state = Streamer {
        run,
        shell,
        seq: 0,
        started: false,
        sent: false,
        text: None,
        reasoning: None,
        output: Vec::new(),
    };
    let events = stream::unfold(Some(state), |state| async move {
        let mut s = state?;
        let (events, more) = s.next_events().await;
        Some((stream::iter(events), more.then_some(s)))
    })
    .flatten()
    .map(Ok::<_, Infallible>);
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
}

/// The message item being streamed.
struct OpenText {
    output_index: usize,
    text: String,
    logprobs: Vec<TokenLogprob>,
}

struct Streamer {
    run: TaskRun,
    shell: Shell,
    /// The next event's `sequence_number`.
    seq: u64,
    started: bool,
    /// Whether any text or call went out (a retry after that cannot be hidden).
    sent: bool,
    text: Option<OpenText>,
    /// The reasoning item being streamed: its index and text so far.
    reasoning: Option<(usize, String)>,
    /// The items done so far, in order.
    output: Vec<Value>,
}

impl Streamer {
    fn event(&mut self, kind: &str, mut body: Value) -> Event {
        body["type"] = json!(kind);
        body["sequence_number"] = json!(self.seq);
        self.seq += 1;
        Event::default().event(kind).data(body.to_string())
    }

    /// The events for the task's next event that shows, and whether more may follow.
    async fn next_events(&mut self) -> (Vec<Event>, bool) {
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            let response = self.shell.in_progress();
            out.push(self.event("response.created", json!({"response": response})));
            out.push(self.event("response.in_progress", json!({"response": response})));
            return (out, true);
        }
        loop {
            let Some(event) = self.run.next().await else {
                return (self.fail(&ended_without_answer(None)), false);
            };
            match &event.kind {
                EventKind::TextDelta { text, logprobs } if !text.is_empty() => {
                    self.sent = true;
                    self.open_text(&mut out);
                    let (item_id, index, delta_logprobs) = match &mut self.text {
                        Some(open) => {
                            open.text.push_str(text);
                            open.logprobs.extend_from_slice(logprobs);
                            (self.shell.message_id.clone(), open.output_index, logprobs.clone())
                        }
                        None => continue,
                    };
                    let delta = json!({
                        "item_id": item_id,
                        "output_index": index,
                        "content_index": 0,
                        "delta": text,
                        "logprobs": self.shell.logprobs(&delta_logprobs),
                    });
                    out.push(self.event("response.output_text.delta", delta));
                    return (out, true);
                }
                EventKind::ReasoningDelta { text } if !text.is_empty() => {
                    self.sent = true;
                    let index = self.open_reasoning(&mut out);
                    if let Some((_, all)) = &mut self.reasoning {
                        all.push_str(text);
                    }
                    let delta = json!({
                        "item_id": self.shell.reasoning_id,
                        "output_index": index,
                        "content_index": 0,
                        "delta": text,
                    });
                    out.push(self.event("response.reasoning_text.delta", delta));
                    return (out, true);
                }
                EventKind::ToolCall { call_id, name, arguments, .. } => {
                    self.sent = true;
                    self.close_reasoning(&mut out);
                    self.close_text("completed", &mut out);
                    let index = self.output.len();
                    let item_id = format!("fc_{call_id}");
                    let added = function_call(call_id, name, "", "in_progress");
                    out.push(self.event(
                        "response.output_item.added",
                        json!({"output_index": index, "item": added}),
                    ));
                    let delta =
                        json!({"item_id": item_id, "output_index": index, "delta": arguments});
                    out.push(self.event("response.function_call_arguments.delta", delta));
                    let done =
                        json!({"item_id": item_id, "output_index": index, "arguments": arguments});
                    out.push(self.event("response.function_call_arguments.done", done));
                    let item = function_call(call_id, name, arguments, "completed");
                    out.push(self.event(
                        "response.output_item.done",
                        json!({"output_index": index, "item": item}),
                    ));
                    self.output.push(item);
                    return (out, true);
                }
                EventKind::Retrying { reason, .. } if self.sent => {
                    let message = format!(
                        "the task's worker was lost after part of the answer was sent ({reason}): \
                         retry the request"
                    );
                    return (self.fail(&ApiError::server(message)), false);
                }
                EventKind::Completed { usage: u } => {
                    self.close_reasoning(&mut out);
                    let calls = self.output.iter().any(|i| i["type"] == "function_call");
                    let truncated = u.truncated && !calls;
                    if !calls {
                        // An answer is a message, even an empty one.
                        self.open_text(&mut out);
                    }
                    self.close_text(if truncated { "incomplete" } else { "completed" }, &mut out);
                    let (status, kind, details) = if truncated {
                        (
                            "incomplete",
                            "response.incomplete",
                            json!({"reason": "max_output_tokens"}),
                        )
                    } else {
                        ("completed", "response.completed", Value::Null)
                    };
                    let extra = json!({"usage": usage(u), "incomplete_details": details});
                    let response = self.shell.object(status, self.output.clone(), extra);
                    out.push(self.event(kind, json!({"response": response})));
                    return (out, false);
                }
                kind @ (EventKind::Failed { .. } | EventKind::Canceled { .. }) => {
                    return (self.fail(&ended_without_answer(Some(kind))), false);
                }
                _ => {}
            }
        }
    }

    /// Opens the reasoning item unless it is open; its output index.
    fn open_reasoning(&mut self, out: &mut Vec<Event>) -> usize {
        if let Some((index, _)) = &self.reasoning {
            return *index;
        }
        let index = self.output.len();
        let mut item = self.shell.reasoning("in_progress", "");
        item["content"] = json!([]);
        out.push(
            self.event("response.output_item.added", json!({"output_index": index, "item": item})),
        );
        self.reasoning = Some((index, String::new()));
        index
    }

    /// Closes the reasoning item if it is open: the answer follows.
    fn close_reasoning(&mut self, out: &mut Vec<Event>) {
        let Some((index, text)) = self.reasoning.take() else { return };
        let done = json!({
            "item_id": self.shell.reasoning_id,
            "output_index": index,
            "content_index": 0,
            "text": text,
        });
        out.push(self.event("response.reasoning_text.done", done));
        let item = self.shell.reasoning("completed", &text);
        out.push(
            self.event("response.output_item.done", json!({"output_index": index, "item": item})),
        );
        self.output.push(item);
    }

    /// Opens the message item unless it is open (closing the reasoning before it).
    fn open_text(&mut self, out: &mut Vec<Event>) {
        if self.text.is_some() {
            return;
        }
        self.close_reasoning(out);
        let index = self.output.len();
        let item = json!({
            "type": "message",
            "id": self.shell.message_id,
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        });
        out.push(
            self.event("response.output_item.added", json!({"output_index": index, "item": item})),
        );
        let part = self.shell.text_part("", &[]);
        let added = json!({
            "item_id": self.shell.message_id,
            "output_index": index,
            "content_index": 0,
            "part": part,
        });
        out.push(self.event("response.content_part.added", added));
        self.text =
            Some(OpenText { output_index: index, text: String::new(), logprobs: Vec::new() });
    }

    /// Closes the message item if it is open.
    fn close_text(&mut self, status: &str, out: &mut Vec<Event>) {
        let Some(open) = self.text.take() else { return };
        let at = json!({
            "item_id": self.shell.message_id,
            "output_index": open.output_index,
            "content_index": 0,
        });
        let mut done = at.clone();
        done["text"] = json!(open.text);
        done["logprobs"] = self.shell.logprobs(&open.logprobs);
        out.push(self.event("response.output_text.done", done));
        let mut part_done = at;
        part_done["part"] = self.shell.text_part(&open.text, &open.logprobs);
        out.push(self.event("response.content_part.done", part_done));
        let item = self.shell.message(status, &open.text, &open.logprobs);
        out.push(self.event(
            "response.output_item.done",
            json!({"output_index": open.output_index, "item": item}),
        ));
        self.output.push(item);
    }

    /// An `error` event and `response.failed`, which end the stream; their code says what
    /// kind of failure it was (`rate_limit_exceeded`, `invalid_request_error`, ...), from the
    /// same table as a status code would be.
    fn fail(&mut self, error: &ApiError) -> Vec<Event> {
        let (message, code) = (&error.message, error.code.unwrap_or(error.kind));
        tracing::warn!(error = %message, code, "response stream ended with an error");
        let error = json!({"code": code, "message": message, "param": error.param});
        let failed = self.shell.failed(code, message);
        vec![self.event("error", error), self.event("response.failed", json!({"response": failed}))]
    }
}
