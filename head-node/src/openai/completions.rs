//! `POST /v1/completions`, OpenAI's legacy text completions: each prompt is continued as it
//! is (no chat template), one task per prompt and choice (`n`), on a model (an agent answers
//! conversations: it is a 400 pointing at chat completions). Answered as one
//! `text_completion`, or streamed as `text_completion` chunks ending with `[DONE]`.
//! `logprobs` (0 to 5 alternatives) come in the legacy shape: parallel arrays of tokens,
//! their logprobs, the alternatives by token and each token's offset in the text.
//!
//! The sampling fields are read by the chat parser (a completion request is a chat request
//! of one user message), and its errors are renamed to this API's fields.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use fleet_proto::{EventKind, TokenLogprob};
use futures::{StreamExt, stream};
use serde_json::{Map, Value, json};

use super::chat::{KEEP_ALIVE, ended_without_answer};
use super::errors::ApiError;
use super::wire::{ChatRequest, CompletionUsage, finish_reason};
use super::{JsonBody, unix_now};
use crate::cluster::NewTask;
use crate::run::TaskRun;

/// OpenAI's default when `max_tokens` is left out.
const DEFAULT_MAX_TOKENS: u64 = 16;
/// The most alternatives per token the legacy API returns.
const MAX_LOGPROBS: i64 = 5;
/// The most prompts one request may give.
const MAX_PROMPTS: usize = 8;

/// A validated completions request.
pub struct CompletionRequest {
    chat: ChatRequest,
    prompts: Vec<String>,
    echo: bool,
    /// Whether the answer carries logprobs.
    logprobs: bool,
}

impl CompletionRequest {
    pub fn parse(body: &Value) -> Result<Self, ApiError> {
        let Value::Object(b) = body else {
            return Err(ApiError::malformed("the body must be a JSON object"));
        };
        let prompts = match b.get("prompt") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .map(|p| p.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    ApiError::unsupported(
                        "prompt",
                        "prompt must be text or a list of texts (token ids are not taken)",
                    )
                })?,
            _ => {
                return Err(ApiError::invalid(
                    "prompt",
                    "prompt is required: the text to continue, or a list of texts",
                ));
            }
        };
        if prompts.len() > MAX_PROMPTS {
            return Err(ApiError::invalid(
                "prompt",
                format!("prompt takes at most {MAX_PROMPTS} texts, got {}", prompts.len()),
            ));
        }
        if let Some(i) = prompts.iter().position(String::is_empty) {
            return Err(ApiError::invalid(
                "prompt",
                format!("prompt {i} is empty: give text to continue"),
            ));
        }
        let set = |name: &str| b.get(name).is_some_and(|v| !v.is_null());
        if b.get("suffix").is_some_and(|s| s.as_str().is_some_and(|s| !s.is_empty())) {
            return Err(ApiError::unsupported(
                "suffix",
                "suffix (text inserted before) is not offered: leave it out",
            ));
        }
        if b.get("best_of").and_then(Value::as_i64).is_some_and(|n| n > 1) {
            return Err(ApiError::unsupported(
                "best_of",
                "best_of is not offered: ask for n choices and pick one yourself",
            ));
        }
        let echo = match b.get("echo") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(e)) => *e,
            Some(_) => return Err(ApiError::invalid("echo", "echo must be true or false")),
        };
        let logprobs = match b.get("logprobs") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_i64() {
                Some(n @ 0..=MAX_LOGPROBS) => Some(n),
                _ => {
                    return Err(ApiError::invalid(
                        "logprobs",
                        format!("logprobs must be an integer from 0 to {MAX_LOGPROBS}"),
                    ));
                }
            },
        };
        if echo && logprobs.is_some() {
            return Err(ApiError::unsupported(
                "echo",
                "echo with logprobs (the prompt's own logprobs) is not offered: leave one out",
            ));
        }
        // The rest is a chat request of one message, read by the chat parser.
        let mut chat = Map::new();
        chat.insert("messages".into(), json!([{"role": "user", "content": prompts[0]}]));
        for name in [
            "model",
            "temperature",
            "top_p",
            "n",
            "stream",
            "stream_options",
            "seed",
            "stop",
            "presence_penalty",
            "frequency_penalty",
            "logit_bias",
            "user",
        ] {
            if set(name) {
                chat.insert(name.into(), b[name].clone());
            }
        }
        let max_tokens =
            if set("max_tokens") { b["max_tokens"].clone() } else { json!(DEFAULT_MAX_TOKENS) };
        chat.insert("max_tokens".into(), max_tokens);
        if let Some(n) = logprobs {
            chat.insert("logprobs".into(), Value::Bool(true));
            chat.insert("top_logprobs".into(), json!(n));
        }
        let chat = ChatRequest::parse(&Value::Object(chat)).map_err(|mut e| {
            if e.param.as_deref().is_some_and(|p| p.starts_with("messages")) {
                e.param = Some("prompt".into());
            }
            e
        })?;
        Ok(Self { chat, prompts, echo, logprobs: logprobs.is_some() })
    }
}

pub async fn create(
    crate::auth::Caller(api): super::Caller,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let request = CompletionRequest::parse(&body)?;
    let model = &request.chat.model;
    let agent = api.agent_for(model)?;
    if &agent == model {
        return Err(ApiError::unsupported(
            "model",
            format!(
                "{model:?} is an agent, which answers conversations: send it chat completions, \
                 or name a model here to continue raw text"
            ),
        ));
    }
    let mut options = request.chat.task_options();
    options.raw_prompt = true;
    let mut runs = Vec::new();
    for prompt in &request.prompts {
        for i in 0..u64::from(request.chat.n) {
            let mut options = options.clone();
            options.sampling.seed = options.sampling.seed.map(|seed| seed.wrapping_add(i));
            let task = NewTask {
                agent: agent.clone(),
                input: prompt.clone(),
                context_id: String::new(),
                options: Some(Arc::new(options)),
                traceparent: crate::traceparent::incoming(),
                ..Default::default()
            };
            runs.push(TaskRun::start(&api.cluster, &api.who, task)?);
        }
    }
    let head = Arc::new(Head {
        id: format!("cmpl-{}", runs[0].task_id),
        created: unix_now(),
        model: model.clone(),
        logprobs: request.logprobs,
    });
    // Each choice's echo: the prompt it continues.
    let n = request.chat.n as usize;
    let echoes: Vec<String> = (0..runs.len())
        .map(|i| if request.echo { request.prompts[i / n].clone() } else { String::new() })
        .collect();
    tracing::debug!(task_id = %runs[0].task_id, model = %model, choices = runs.len(), "completion");
    if request.chat.stream {
        return Ok(stream_chunks(runs, head, echoes, n, request.chat.include_usage));
    }
    let answers = futures::future::try_join_all(runs.into_iter().map(complete)).await?;
    let mut usage = fleet_proto::Usage::default();
    for (i, a) in answers.iter().enumerate() {
        add_usage(&mut usage, &a.usage, i % n == 0);
    }
    let choices: Vec<Value> = answers
        .iter()
        .zip(&echoes)
        .enumerate()
        .map(|(i, (a, echo))| {
            let text = format!("{echo}{}", a.text);
            head.choice(i, &text, echo.len(), &a.logprobs, Some(finish_reason(&a.usage)))
        })
        .collect();
    let mut body = head.object(choices);
    body["usage"] = json!(CompletionUsage::from(usage));
    Ok(Json(body).into_response())
}

/// What every chunk and the answer repeat.
struct Head {
    id: String,
    created: u64,
    model: String,
    logprobs: bool,
}

impl Head {
    fn object(&self, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// One choice: its text, and the logprobs of its tokens from `offset` in the text.
    fn choice(
        &self,
        index: usize,
        text: &str,
        offset: usize,
        tokens: &[TokenLogprob],
        finish: Option<&str>,
    ) -> Value {
        let logprobs = self.logprobs.then(|| legacy_logprobs(tokens, offset));
        json!({"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish})
    }
}

/// The legacy logprobs shape: parallel arrays, offsets in characters of the choice's text.
fn legacy_logprobs(tokens: &[TokenLogprob], mut offset: usize) -> Value {
    let mut text_offset = Vec::with_capacity(tokens.len());
    for t in tokens {
        text_offset.push(offset);
        offset += t.token.chars().count();
    }
    let top: Vec<Map<String, Value>> = tokens
        .iter()
        .map(|t| t.top.iter().map(|(token, lp)| (token.clone(), json!(lp))).collect())
        .collect();
    json!({
        "tokens": tokens.iter().map(|t| &t.token).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": text_offset,
    })
}

/// One choice's whole continuation.
struct Answer {
    text: String,
    usage: fleet_proto::Usage,
    logprobs: Vec<TokenLogprob>,
}

async fn complete(mut run: TaskRun) -> Result<Answer, ApiError> {
    let (mut text, mut logprobs) = (String::new(), Vec::new());
    while let Some(event) = run.next().await {
        match &event.kind {
            EventKind::TextDelta { text: delta, logprobs: tokens } => {
                text.push_str(delta);
                logprobs.extend_from_slice(tokens);
            }
            EventKind::Retrying { .. } => {
                text.clear();
                logprobs.clear();
            }
            EventKind::Completed { usage } => return Ok(Answer { text, usage: *usage, logprobs }),
            kind @ (EventKind::Failed { .. } | EventKind::Canceled { .. }) => {
                return Err(ended_without_answer(Some(kind)));
            }
            _ => {}
        }
    }
    Err(ended_without_answer(None))
}

/// What one choice's stream yields.
enum Out {
    Chunk(Value),
    Done(fleet_proto::Usage),
    Fatal(ApiError),
}

/// One choice's stream between chunks.
struct Streaming {
    run: TaskRun,
    index: usize,
    head: Arc<Head>,
    /// Characters of the choice's text so far (the echo included): the next token's offset.
    offset: usize,
    sent: bool,
}

impl Streaming {
    /// The outputs for the task's next event that shows, and whether more may follow.
    async fn next(&mut self) -> (Vec<Out>, bool) {
        loop {
            let Some(event) = self.run.next().await else {
                return (vec![Out::Fatal(ended_without_answer(None))], false);
            };
            match &event.kind {
                EventKind::TextDelta { text, logprobs } if !text.is_empty() => {
                    let choice = self.head.choice(self.index, text, self.offset, logprobs, None);
                    self.offset += text.chars().count();
                    self.sent = true;
                    return (vec![Out::Chunk(self.head.object(vec![choice]))], true);
                }
                EventKind::Retrying { reason, .. } if self.sent => {
                    let e = ApiError::server(format!(
                        "the task's worker was lost after part of the answer was sent \
                         ({reason}): retry the request"
                    ));
                    return (vec![Out::Fatal(e)], false);
                }
                EventKind::Completed { usage } => {
                    let finish = Some(finish_reason(usage));
                    let last = self.head.choice(self.index, "", self.offset, &[], finish);
                    return (
                        vec![Out::Chunk(self.head.object(vec![last])), Out::Done(*usage)],
                        false,
                    );
                }
                kind @ (EventKind::Failed { .. } | EventKind::Canceled { .. }) => {
                    return (vec![Out::Fatal(ended_without_answer(Some(kind)))], false);
                }
                _ => {}
            }
        }
    }
}

/// The chunks of every choice as they come (its echo first), each choice's last with its
/// finish reason; the usage when asked (each prompt counted once, from its first choice's
/// usage); `[DONE]`. An error ends the response (the other tasks are canceled as their runs
/// drop with it).
fn stream_chunks(
    runs: Vec<TaskRun>,
    head: Arc<Head>,
    echoes: Vec<String>,
    n: usize,
    include_usage: bool,
) -> Response {
    let choices = runs.into_iter().zip(echoes).enumerate().map(|(index, (run, echo))| {
        let first = (!echo.is_empty())
            .then(|| Out::Chunk(head.object(vec![head.choice(index, &echo, 0, &[], None)])));
        let offset = echo.chars().count();
        let state = Streaming { run, index, head: head.clone(), offset, sent: false };
        let rest = stream::unfold(Some(state), |state| async move {
            let mut s = state?;
            let (outs, more) = s.next().await;
            Some((stream::iter(outs), more.then_some(s)))
        })
        .flatten();
        stream::iter(first).chain(rest).map(move |out| (index, out)).boxed()
    });
    let merged = stream::select_all(choices);
    let events = stream::unfold(Some((merged, fleet_proto::Usage::default())), move |state| {
        let head = head.clone();
        async move {
            let (mut merged, mut total) = state?;
            loop {
                match merged.next().await {
                    Some((_, Out::Chunk(chunk))) => {
                        return Some((vec![data(&chunk)], Some((merged, total))));
                    }
                    Some((index, Out::Done(u))) => add_usage(&mut total, &u, index % n == 0),
                    Some((_, Out::Fatal(e))) => return Some((vec![data(&e.to_json())], None)),
                    None => {
                        let mut tail = Vec::new();
                        if include_usage {
                            let mut body = head.object(Vec::new());
                            body["usage"] = json!(CompletionUsage::from(total));
                            tail.push(data(&body));
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
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
}

/// Adds a choice's usage to the total: its completion, and its prompt when it is the first
/// choice of its prompt (every choice of a prompt read the same one).
fn add_usage(total: &mut fleet_proto::Usage, u: &fleet_proto::Usage, first_of_prompt: bool) {
    if first_of_prompt {
        total.prompt_tokens = total.prompt_tokens.saturating_add(u.prompt_tokens);
        total.cached_tokens = total.cached_tokens.saturating_add(u.cached_tokens);
    }
    total.completion_tokens = total.completion_tokens.saturating_add(u.completion_tokens);
    total.reasoning_tokens = total.reasoning_tokens.saturating_add(u.reasoning_tokens);
}

fn data(body: &Value) -> Event {
    Event::default().data(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_and_settings() -> Result<(), ApiError> {
        let r = CompletionRequest::parse(&json!({"model": "m", "prompt": "Once upon"}))?;
        assert_eq!(r.prompts, ["Once upon"]);
        assert_eq!(r.chat.sampling.max_tokens, Some(16), "OpenAI's default");
        let r = CompletionRequest::parse(&json!({
            "model": "m", "prompt": ["a", "b"], "n": 2, "logprobs": 3, "max_tokens": 5,
            "stop": ["\n"], "frequency_penalty": 1,
        }))?;
        assert_eq!((r.prompts.len(), r.chat.n, r.logprobs), (2, 2, true));
        assert_eq!(r.chat.sampling.logprobs, Some(3));
        assert_eq!(r.chat.sampling.frequency_penalty, Some(1.0));
        Ok(())
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases = [
            (json!({"model": "m"}), "prompt"),
            (json!({"model": "m", "prompt": [1, 2]}), "prompt"),
            (json!({"model": "m", "prompt": ""}), "prompt"),
            (json!({"model": "m", "prompt": "x", "suffix": "y"}), "suffix"),
            (json!({"model": "m", "prompt": "x", "best_of": 3}), "best_of"),
            (json!({"model": "m", "prompt": "x", "logprobs": 6}), "logprobs"),
            (json!({"model": "m", "prompt": "x", "logprobs": 1, "echo": true}), "echo"),
            (json!({"model": "m", "prompt": "x", "max_tokens": 0}), "max_tokens"),
            (json!({"model": "m", "prompt": "x", "temperature": 9}), "temperature"),
            (json!({"prompt": "x"}), "model"),
        ];
        for (body, param) in cases {
            let e = CompletionRequest::parse(&body).err();
            assert_eq!(e.as_ref().and_then(|e| e.param.as_deref()), Some(param), "{body}: {e:?}");
        }
    }

    #[test]
    fn legacy_logprobs_are_parallel_arrays_with_offsets() {
        let tokens = [
            TokenLogprob { token: "Hel".into(), logprob: -0.5, top: vec![("Hel".into(), -0.5)] },
            TokenLogprob { token: "lo".into(), logprob: -0.25, top: vec![("lo".into(), -0.25)] },
        ];
        let l = legacy_logprobs(&tokens, 4);
        assert_eq!(l["tokens"], json!(["Hel", "lo"]));
        assert_eq!(l["token_logprobs"], json!([-0.5, -0.25]));
        assert_eq!(l["top_logprobs"], json!([{"Hel": -0.5}, {"lo": -0.25}]));
        assert_eq!(l["text_offset"], json!([4, 7]));
    }
}
