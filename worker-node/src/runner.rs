//! Running one task: drive the model's generation, turn it into task events, honour
//! cancellation, and never let a panic leave the task hanging.

use std::panic::AssertUnwindSafe;

use fleet_inference::{Generation, GenerationEvent};
use fleet_proto::{EventKind, TaskAssignment, TaskEvent, Usage, now_us};
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Where a task's events go: up the worker's `Join` stream.
pub type EventSink = mpsc::Sender<TaskEvent>;

/// Sends one event of `task`.
pub async fn emit(sink: &EventSink, task: &TaskAssignment, kind: EventKind) {
    let event = TaskEvent {
        task_id: task.task_id.clone(),
        seq: 0,
        attempt: task.attempt,
        timestamp_us: now_us(),
        kind,
    };
    // A closed sink means the connection to the head is gone; the head retries the task.
    let _ = sink.send(event).await;
}

/// How a generation ended, for the actor's conversation memory.
pub struct Finished {
    pub output: String,
}

/// Runs `generation` to its end (or until `cancel`), emitting Working, text deltas and
/// exactly one terminal event. Returns the output when the task completed.
pub async fn run(
    task: &TaskAssignment,
    generation: fleet_inference::Result<Generation>,
    sink: &EventSink,
    cancel: &CancellationToken,
) -> Option<Finished> {
    emit(sink, task, EventKind::Working).await;
    let guarded = AssertUnwindSafe(drive(task, generation, sink, cancel)).catch_unwind().await;
    let (terminal, finished) = match guarded {
        Ok(result) => result,
        Err(_) => (
            EventKind::Failed {
                error: "the model panicked while generating".into(),
                worker_id: String::new(),
            },
            None,
        ),
    };
    debug!(task_id = %task.task_id, "task ended");
    emit(sink, task, terminal).await;
    finished
}

async fn drive(
    task: &TaskAssignment,
    generation: fleet_inference::Result<Generation>,
    sink: &EventSink,
    cancel: &CancellationToken,
) -> (EventKind, Option<Finished>) {
    let mut generation = match generation {
        Ok(g) => g,
        Err(e) => return (failed(e.to_string()), None),
    };
    let mut output = String::new();
    loop {
        let next = tokio::select! {
            biased;
            () = cancel.cancelled() => return (EventKind::Canceled { reason: "canceled".into() }, None),
            next = generation.next() => next,
        };
        match next {
            Some(Ok(GenerationEvent::Delta(text))) => {
                output.push_str(&text);
                emit(sink, task, EventKind::TextDelta { text }).await;
            }
            // Logprobs have no event of their own in the cluster yet.
            Some(Ok(GenerationEvent::Logprobs(_) | GenerationEvent::ToolCall(_))) => {}
            Some(Ok(GenerationEvent::Done(usage))) => {
                let usage = Usage {
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                    truncated: usage.finish_reason == fleet_inference::FinishReason::Length,
                };
                return (EventKind::Completed { usage }, Some(Finished { output }));
            }
            Some(Err(e)) => return (failed(e.to_string()), None),
            None => return (failed("the model stopped without finishing".into()), None),
        }
    }
}

fn failed(error: String) -> EventKind {
    EventKind::Failed { error, worker_id: String::new() }
}
