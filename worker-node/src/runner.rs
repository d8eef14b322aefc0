//! One generation of a task: drive the model's stream into text-delta events (and a
//! thinking model's reasoning into reasoning-delta events), find the tool calls in its
//! answer, honour cancellation. The agent loop (`agent_loop`) runs one
//! or more of these per task.

use fleet_inference::{FinishReason, Generation, GenerationEvent, ToolCall};
use fleet_proto::{ErrorKind, EventKind, TaskAssignment, TaskEvent, TokenLogprob, now_us};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::tool_calls::ToolCallParser;

/// An event on its way to the head, with whoever waits for the head to have stored it.
#[derive(Debug)]
pub struct Outgoing {
    pub event: TaskEvent,
    /// Told once the head has stored the event (dropped by a sink that keeps no record: a
    /// call over the mesh, which the head never sees).
    pub stored: Option<oneshot::Sender<()>>,
}

/// Where a task's events go: up the worker's `Join` stream.
pub type EventSink = mpsc::Sender<Outgoing>;

fn event(task: &TaskAssignment, kind: EventKind) -> TaskEvent {
    TaskEvent {
        task_id: task.task_id.clone(),
        seq: 0,
        attempt: task.attempt,
        timestamp_us: now_us(),
        kind,
    }
}

/// Sends one event of `task`.
pub async fn emit(sink: &EventSink, task: &TaskAssignment, kind: EventKind) {
    // A closed sink means the connection to the head is gone; the head retries the task.
    let _ = sink.send(Outgoing { event: event(task, kind), stored: None }).await;
}

/// Sends one event of `task`; the receiver hears once the head has stored it (or is
/// dropped when nothing will: a sink without a head, a worker stopping). While the head is
/// away, that waits for it to come back.
pub async fn emit_stored(
    sink: &EventSink,
    task: &TaskAssignment,
    kind: EventKind,
) -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    let _ = sink.send(Outgoing { event: event(task, kind), stored: Some(tx) }).await;
    rx
}

/// What one generation produced.
#[derive(Debug, Default)]
pub struct Turn {
    /// The text shown (tool-call markup removed).
    pub text: String,
    /// A thinking model's reasoning before it (streamed, not part of the answer).
    pub reasoning: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: fleet_inference::Usage,
}

/// Items of a generation taken before it lets the worker's other tasks run. A generation
/// that is always ready (`builtin:echo`, an answer from a cache) would otherwise run until
/// tokio's budget stops it (128 sends), and the stream up could send its first delta only
/// with a hundred more, which the head and the client must then handle before they reach
/// it (a 1,000-word echo's first delta: 0.68 ms before, 0.51 ms with this; BENCHMARKS.md).
/// A model on the blocking pool waits between tokens anyway; to it this costs nothing.
const YIELD_EVERY: u32 = 16;

/// Runs `generation` to its end, emitting its text as deltas. With `find_tool_calls`, tool
/// calls written as text are taken out of the stream. Returns the terminal event instead
/// when the generation fails or `cancel` fires.
pub async fn generate(
    task: &TaskAssignment,
    mut generation: Generation,
    sink: &EventSink,
    cancel: &CancellationToken,
    find_tool_calls: bool,
) -> Result<Turn, EventKind> {
    let mut turn = Turn::default();
    let mut parser = find_tool_calls.then(ToolCallParser::default);
    let mut logprobs = Vec::new();
    let mut emitted = 0u32;
    loop {
        emitted = emitted.wrapping_add(1);
        if emitted.is_multiple_of(YIELD_EVERY) {
            tokio::task::yield_now().await;
        }
        let next = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(EventKind::Canceled { reason: "canceled".into() }),
            next = generation.next() => next,
        };
        match next {
            Some(Ok(GenerationEvent::Delta(text))) => {
                let shown = match &mut parser {
                    Some(p) => p.push(&text),
                    None => text,
                };
                show(task, sink, &mut turn, shown, &mut logprobs).await;
            }
            Some(Ok(GenerationEvent::Reasoning(text))) => {
                turn.reasoning.push_str(&text);
                emit(sink, task, EventKind::ReasoningDelta { text }).await;
            }
            Some(Ok(GenerationEvent::Logprobs(l))) => logprobs.push(logprob(l)),
            Some(Ok(GenerationEvent::ToolCall(call))) => turn.tool_calls.push(call),
            Some(Ok(GenerationEvent::Done(usage))) => {
                if let Some(parser) = parser {
                    let (rest, calls) = parser.finish();
                    show(task, sink, &mut turn, rest, &mut logprobs).await;
                    turn.tool_calls.extend(calls);
                }
                turn.usage = usage;
                return Ok(turn);
            }
            Some(Err(e)) => return Err(model_failed(&e)),
            None => return Err(failed(ErrorKind::Internal, "the model stopped without finishing")),
        }
    }
}

/// Emits `text` with the logprobs of the tokens it came from. Logprobs wait for text: a
/// token may end inside a UTF-8 character, or inside markup the parser holds back.
async fn show(
    task: &TaskAssignment,
    sink: &EventSink,
    turn: &mut Turn,
    text: String,
    logprobs: &mut Vec<TokenLogprob>,
) {
    if !text.is_empty() {
        turn.text.push_str(&text);
        let logprobs = std::mem::take(logprobs);
        emit(sink, task, EventKind::TextDelta { text, logprobs }).await;
    }
}

fn logprob(l: fleet_inference::TokenLogprob) -> TokenLogprob {
    TokenLogprob { token: l.token, logprob: l.logprob, top: l.top }
}

/// Whether a generation was cut off by max_tokens or the context.
pub fn truncated(usage: &fleet_inference::Usage) -> bool {
    usage.finish_reason == FinishReason::Length
}

/// A failure of `kind`: the status the front doors answer the task's client with.
pub fn failed(kind: ErrorKind, error: impl Into<String>) -> EventKind {
    EventKind::failed(kind, error)
}

/// A model's error as the task's failure, of the kind the model says it is.
pub fn model_failed(e: &fleet_inference::Error) -> EventKind {
    EventKind::failed(crate::error::model_error_kind(e), e.to_string())
}

#[cfg(test)]
mod tests {
    use fleet_inference::Usage;
    use fleet_proto::TaskId;

    use super::*;

    fn task() -> TaskAssignment {
        TaskAssignment::new(TaskId::new("t"), "a", "")
    }

    /// A generation that is always ready gives way while it emits: on the worker's one
    /// runtime thread, the first delta is on its way up long before the last is made.
    #[tokio::test(flavor = "current_thread")]
    async fn an_always_ready_generation_lets_its_first_deltas_go_before_the_rest() {
        const DELTAS: usize = 1000;
        let (sink, mut events) = mpsc::channel(DELTAS + 1);
        let mut items: Vec<_> =
            (0..DELTAS).map(|i| Ok(GenerationEvent::Delta(format!(" w{i}")))).collect();
        items.push(Ok(GenerationEvent::Done(Usage::default())));
        let generation: Generation = Box::pin(futures::stream::iter(items));
        let generating = tokio::spawn(async move {
            generate(&task(), generation, &sink, &CancellationToken::new(), false).await
        });
        // What the stream up sees when it first gets to run: the deltas waiting then.
        let first = events.recv().await.expect("a first delta");
        let waiting = events.len();
        assert!(
            waiting < 2 * YIELD_EVERY as usize,
            "{waiting} more deltas were made before the first could go up"
        );
        assert!(matches!(first.event.kind, EventKind::TextDelta { .. }));
        let turn = generating.await.expect("no panic").expect("a turn");
        assert_eq!(turn.text.split_whitespace().count(), DELTAS);
    }
}
