//! `POST /v1/chat/completions`: the messages become one task (history + the last message as
//! input, sampling overrides), answered as one `chat.completion` or streamed as
//! `chat.completion.chunk` server-sent events.
//!
//! A retried task (its worker was lost) starts its answer again. Without streaming the text
//! so far is dropped and the answer waits for the retry; while streaming, a retry before any
//! text was sent is invisible, one after ends the stream with an error chunk (text already
//! sent cannot be taken back), and the retry is canceled.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use fleet_proto::EventKind;
use futures::{Stream, StreamExt, stream};

use super::errors::ApiError;
use super::wire::{
    AssistantMessage, ChatCompletion, ChatCompletionChunk, ChatRequest, Choice, ChoiceLogprobs,
    ChunkChoice, CompletionUsage, Delta, ToolCallOut, finish_reason,
};
use super::{JsonBody, unix_now};
use crate::cluster::NewTask;
use crate::run::TaskRun;

/// Comment lines on a quiet stream (a model loading), so proxies keep the connection open.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(10);

pub async fn completions(
    crate::auth::Caller(api): super::Caller,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let request = ChatRequest::parse(&body)?;
    let agent = api.agent_with_tools(&request.model, &request.tools)?;
    let options = request.task_options();
    // One task per choice (`n`); with a seed, choice i samples with seed + i, so that the
    // choices differ the way OpenAI's do while each stays reproducible.
    let mut runs = Vec::with_capacity(request.n as usize);
    for i in 0..u64::from(request.n) {
        let mut options = options.clone();
        options.sampling.seed = options.sampling.seed.map(|seed| seed.wrapping_add(i));
        let task = NewTask {
            agent: agent.clone(),
            input: request.input.clone(),
            context_id: String::new(),
            options: Some(Arc::new(options)),
            traceparent: crate::traceparent::incoming(),
            ..Default::default()
        };
        // Those started already are canceled when `runs` drops on a refusal.
        runs.push(TaskRun::start(&api.cluster, &api.who, task)?);
    }
    let head = Head {
        id: format!("chatcmpl-{}", runs[0].task_id),
        created: unix_now(),
        model: request.model.clone(),
        logprobs: request.sampling.logprobs.is_some(),
    };
    tracing::debug!(task_id = %runs[0].task_id, model = %request.model, n = request.n, stream = request.stream, "chat completion");
    if request.stream {
        Ok(stream_chunks(runs, head, request.include_usage).into_response())
    } else {
        let answers = futures::future::try_join_all(runs.into_iter().map(complete)).await?;
        Ok(Json(completion(answers, head)).into_response())
    }
}

/// The usage of a completion's choices: the prompt once (every choice read the same),
/// the completions summed.
fn total_usage(usages: impl IntoIterator<Item = fleet_proto::Usage>) -> CompletionUsage {
    let mut total: Option<fleet_proto::Usage> = None;
    for u in usages {
        let t = total.get_or_insert(fleet_proto::Usage {
            completion_tokens: 0,
            reasoning_tokens: 0,
            ..u
        });
        t.completion_tokens = t.completion_tokens.saturating_add(u.completion_tokens);
        t.reasoning_tokens = t.reasoning_tokens.saturating_add(u.reasoning_tokens);
    }
    CompletionUsage::from(total.unwrap_or_default())
}

/// What every chunk of one completion repeats.
struct Head {
    id: String,
    created: u64,
    model: String,
    /// Whether the request asked for logprobs.
    logprobs: bool,
}

impl Head {
    fn chunk(&self, index: u32, delta: Delta, finish: Option<&'static str>) -> Event {
        self.chunk_with(index, delta, finish, &[])
    }

    /// A chunk with the logprobs of its text's tokens (`null` unless the request asked).
    fn chunk_with(
        &self,
        index: u32,
        delta: Delta,
        finish: Option<&'static str>,
        logprobs: &[fleet_proto::TokenLogprob],
    ) -> Event {
        let logprobs = self.logprobs.then(|| ChoiceLogprobs::new(logprobs));
        let choice = ChunkChoice { index, delta, finish_reason: finish, logprobs };
        self.event(vec![choice], None)
    }

    fn event(&self, choices: Vec<ChunkChoice>, usage: Option<CompletionUsage>) -> Event {
        data(&ChatCompletionChunk::new(&self.id, self.created, &self.model, choices, usage))
    }
}

fn data(body: &impl serde::Serialize) -> Event {
    // Serializing our own structs cannot fail; an empty object keeps the stream well formed.
    Event::default().data(serde_json::to_string(body).unwrap_or_else(|_| "{}".to_owned()))
}

fn error_event(e: &ApiError) -> Event {
    tracing::warn!(error = %e.message, status = e.status.as_u16(), "chat stream ended with an error");
    Event::default().data(e.to_json().to_string())
}

/// The error for a task that ended without completing, or whose events stopped.
pub(super) fn ended_without_answer(kind: Option<&EventKind>) -> ApiError {
    match kind {
        Some(EventKind::Failed { error, kind, .. }) => ApiError::task_failed(*kind, error),
        Some(EventKind::Canceled { reason }) => {
            ApiError::server(format!("the task was canceled: {reason}"))
        }
        _ => ApiError::server("the task's events stopped before it ended: retry the request"),
    }
}

/// One choice's whole answer.
pub(super) struct Answer {
    pub message: AssistantMessage,
    pub finish_reason: &'static str,
    pub usage: fleet_proto::Usage,
    pub logprobs: Vec<fleet_proto::TokenLogprob>,
}

/// Waits for the whole answer of one choice.
pub(super) async fn complete(mut run: TaskRun) -> Result<Answer, ApiError> {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    let mut logprobs = Vec::new();
    while let Some(event) = run.next().await {
        match &event.kind {
            EventKind::TextDelta { text: delta, logprobs: tokens } => {
                text.push_str(delta);
                logprobs.extend_from_slice(tokens);
            }
            EventKind::ReasoningDelta { text: delta } => reasoning.push_str(delta),
            EventKind::ToolCall { call_id, name, arguments, .. } => {
                calls.push(ToolCallOut::new(call_id, name, arguments));
            }
            EventKind::Retrying { .. } => {
                text.clear();
                reasoning.clear();
                calls.clear();
                logprobs.clear();
            }
            EventKind::Completed { usage } => {
                // A call cut off by max_tokens is no call to run: the reason is the length.
                let finish = if calls.is_empty() || usage.truncated {
                    finish_reason(usage)
                } else {
                    "tool_calls"
                };
                let content = (!text.is_empty() || calls.is_empty()).then_some(text);
                let reasoning_content = (!reasoning.is_empty()).then_some(reasoning);
                let message = AssistantMessage {
                    role: "assistant",
                    content,
                    reasoning_content,
                    tool_calls: calls,
                };
                return Ok(Answer { message, finish_reason: finish, usage: *usage, logprobs });
            }
            kind @ (EventKind::Failed { .. } | EventKind::Canceled { .. }) => {
                return Err(ended_without_answer(Some(kind)));
            }
            _ => {}
        }
    }
    Err(ended_without_answer(None))
}

/// A `chat.completion` of every choice's answer.
fn completion(answers: Vec<Answer>, head: Head) -> ChatCompletion {
    let usage = total_usage(answers.iter().map(|a| a.usage));
    let choices = answers
        .into_iter()
        .enumerate()
        .map(|(i, a)| Choice {
            index: i as u32,
            logprobs: head.logprobs.then(|| ChoiceLogprobs::new(&a.logprobs)),
            message: a.message,
            finish_reason: a.finish_reason,
        })
        .collect();
    ChatCompletion {
        id: head.id,
        object: "chat.completion",
        created: head.created,
        model: head.model,
        choices,
        usage,
    }
}

/// One choice's stream between chunks.
struct Streaming {
    run: TaskRun,
    index: u32,
    head: Arc<Head>,
    sent_text: bool,
    /// Tool calls sent so far.
    calls: u32,
}

/// What one choice's stream yields: a chunk, its usage once it completed, or an error chunk
/// that ends the whole response.
enum Out {
    Chunk(Event),
    Done(fleet_proto::Usage),
    Fatal(Event),
}

/// The chunks of a completion: each choice's role, text or tool calls as they come and
/// finish reason (choices interleaved as their tokens arrive), the usage when asked,
/// `[DONE]`; or an error chunk where one fails, which ends the response (the other
/// choices' tasks are canceled as their runs drop with it).
fn stream_chunks(runs: Vec<TaskRun>, head: Head, include_usage: bool) -> Response {
    let head = Arc::new(head);
    let choices = runs.into_iter().enumerate().map(|(i, run)| {
        let index = i as u32;
        let role =
            Delta { role: Some("assistant"), content: Some(String::new()), ..Default::default() };
        let first = Out::Chunk(head.chunk(index, role, None));
        let state = Streaming { run, index, head: head.clone(), sent_text: false, calls: 0 };
        let rest = stream::unfold(Some(state), |state| async move {
            let mut s = state?;
            let (outs, keep_going) = next_chunks(&mut s).await;
            Some((stream::iter(outs), keep_going.then_some(s)))
        })
        .flatten();
        stream::once(async move { first }).chain(rest).boxed()
    });
    let merged = (stream::select_all(choices), Vec::new());
    let events = stream::unfold(Some(merged), move |state| {
        let head = head.clone();
        async move {
            let (mut choices, mut usages) = state?;
            loop {
                match choices.next().await {
                    Some(Out::Chunk(event)) => return Some((vec![event], Some((choices, usages)))),
                    Some(Out::Done(usage)) => usages.push(usage),
                    Some(Out::Fatal(event)) => return Some((vec![event], None)),
                    None => {
                        let mut tail = Vec::new();
                        if include_usage {
                            tail.push(head.event(Vec::new(), Some(total_usage(usages))));
                        }
                        tail.push(Event::default().data("[DONE]"));
                        return Some((tail, None));
                    }
                }
            }
        }
    })
    .flat_map(stream::iter)
    .map(Ok::<_, Infallible>);
    sse(events)
}

fn sse(events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
}

/// The chunks for one choice's next event that shows, and whether more may follow.
async fn next_chunks(s: &mut Streaming) -> (Vec<Out>, bool) {
    loop {
        let Some(event) = s.run.next().await else {
            return (vec![Out::Fatal(error_event(&ended_without_answer(None)))], false);
        };
        match &event.kind {
            EventKind::TextDelta { text, logprobs } if !text.is_empty() => {
                s.sent_text = true;
                let delta = Delta { content: Some(text.clone()), ..Default::default() };
                let chunk = s.head.chunk_with(s.index, delta, None, logprobs);
                return (vec![Out::Chunk(chunk)], true);
            }
            EventKind::ReasoningDelta { text } if !text.is_empty() => {
                s.sent_text = true;
                let delta = Delta { reasoning_content: Some(text.clone()), ..Default::default() };
                return (vec![Out::Chunk(s.head.chunk(s.index, delta, None))], true);
            }
            EventKind::ToolCall { call_id, name, arguments, .. } => {
                // Each call whole in one chunk (it is known whole when its event comes).
                s.sent_text = true;
                let call = ToolCallOut {
                    index: Some(s.calls),
                    ..ToolCallOut::new(call_id, name, arguments)
                };
                s.calls += 1;
                let delta = Delta { tool_calls: vec![call], ..Default::default() };
                return (vec![Out::Chunk(s.head.chunk(s.index, delta, None))], true);
            }
            EventKind::Retrying { reason, .. } if s.sent_text => {
                let e = ApiError::server(format!(
                    "the task's worker was lost after part of the answer was sent ({reason}): \
                     retry the request"
                ));
                return (vec![Out::Fatal(error_event(&e))], false);
            }
            EventKind::Completed { usage } => {
                let finish = if s.calls > 0 && !usage.truncated {
                    "tool_calls"
                } else {
                    finish_reason(usage)
                };
                let last = s.head.chunk(s.index, Delta::default(), Some(finish));
                return (vec![Out::Chunk(last), Out::Done(*usage)], false);
            }
            EventKind::Failed { .. } | EventKind::Canceled { .. } => {
                let e = ended_without_answer(Some(&event.kind));
                return (vec![Out::Fatal(error_event(&e))], false);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_statuses() {
        use fleet_proto::ErrorKind;
        let failed = |kind| EventKind::failed(kind, "the prompt is 9000 tokens, over 4096");
        let bad = failed(ErrorKind::InvalidRequest);
        assert_eq!(ended_without_answer(Some(&bad)).status.as_u16(), 400);
        assert_eq!(ended_without_answer(Some(&failed(ErrorKind::Busy))).status.as_u16(), 429);
        let lost = failed(ErrorKind::Unavailable);
        assert_eq!(ended_without_answer(Some(&lost)).status.as_u16(), 503);
        // A peer that sends no kind: ours, not the request's.
        assert_eq!(ended_without_answer(Some(&failed(ErrorKind::Internal))).status.as_u16(), 500);
        assert_eq!(ended_without_answer(None).status.as_u16(), 500);
    }
}
