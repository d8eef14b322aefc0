//! The task state machine: a task's states, the state each event leaves it in, and the one
//! table of which event may happen in which state ([`TaskState::after`]).
//!
//! A task's state is never set, only derived: it is the state its last state-changing event
//! left it in. The head checks every event it logs against the table (a worker's late or
//! out-of-order event is refused there, and a head bug that would log one is caught), and
//! clients (the Python package, the CLI) derive the state of the events they see with the
//! same [`EventKind::state_after`].
//!
//! ```text
//!            Submitted
//!                │
//!                ▼         Retrying (attempt lost)
//!   ┌──────── Queued ◄──────────────────────────────┐
//!   │            │ Scheduled                        │
//!   │            ▼                                  │
//!   │        Scheduled ── Working ──► Working ◄─────┤── InputReceived
//!   │            │                      │  ▲        │
//!   │            │                      ▼  │        │
//!   │            │                InputRequired ────┘
//!   ▼            ▼                      ▼
//!   Failed, Canceled         Completed, Failed, Canceled
//! ```
//!
//! Content events (text, reasoning, tool calls and results, embeddings, artifacts, saved
//! actor state) belong to an attempt on a worker: Scheduled, Working or InputRequired. A
//! terminal state takes nothing more.

use std::fmt;

use crate::EventKind;

/// Where a task is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskState {
    Queued,
    Scheduled,
    Working,
    Completed,
    Failed,
    Canceled,
    InputRequired,
}

impl TaskState {
    /// Every state, in the order a task goes through them.
    pub const ALL: [TaskState; 7] = [
        Self::Queued,
        Self::Scheduled,
        Self::Working,
        Self::InputRequired,
        Self::Completed,
        Self::Failed,
        Self::Canceled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Canceled)
    }

    /// Whether an attempt of the task is on a worker.
    pub fn is_on_worker(self) -> bool {
        matches!(self, Self::Scheduled | Self::Working | Self::InputRequired)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Scheduled => "scheduled",
            Self::Working => "working",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::InputRequired => "input-required",
        }
    }

    /// The state of a new task after its first event, which must be `Submitted`.
    pub fn first(event: &EventKind) -> Result<TaskState, IllegalTransition> {
        match event {
            EventKind::Submitted { .. } => Ok(Self::Queued),
            _ => Err(IllegalTransition { from: None, event: event.name() }),
        }
    }

    /// The state a task in this state is in after `event`, or why the event cannot happen
    /// to it now. The task state machine's one table.
    pub fn after(self, event: &EventKind) -> Result<TaskState, IllegalTransition> {
        use TaskState::*;
        let legal = match event {
            // Only a task's first event (see `first`).
            EventKind::Submitted { .. } => false,
            EventKind::Scheduled { .. } => self == Queued,
            // A worker may say again that it works (a `RunTask` sent again after a rejoin),
            // and an answered question goes on working.
            EventKind::Working => self.is_on_worker(),
            EventKind::InputRequired { .. } => self.is_on_worker(),
            EventKind::InputReceived { .. } => self == InputRequired,
            EventKind::Completed { .. } => self.is_on_worker(),
            // A queued task fails without running when no worker ever can run it, or when
            // it would wait on itself.
            EventKind::Failed { .. } | EventKind::Canceled { .. } => !self.is_terminal(),
            EventKind::Retrying { .. } => self.is_on_worker(),
            EventKind::TextDelta { .. }
            | EventKind::ReasoningDelta { .. }
            | EventKind::ToolCall { .. }
            | EventKind::ToolResult { .. }
            | EventKind::Embeddings { .. }
            | EventKind::Artifact(_)
            | EventKind::StateSaved { .. } => self.is_on_worker(),
        };
        if !legal {
            return Err(IllegalTransition { from: Some(self), event: event.name() });
        }
        Ok(event.state_after().unwrap_or(self))
    }
}

/// An event that cannot happen to a task in its state: a worker's late event, or a bug.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IllegalTransition {
    /// `None`: the task had no event yet.
    pub from: Option<TaskState>,
    pub event: &'static str,
}

impl fmt::Display for IllegalTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.from {
            Some(state) => {
                write!(f, "a {} task cannot take a {} event", state.as_str(), self.event)
            }
            None => write!(f, "a task's first event must be submitted, not {}", self.event),
        }
    }
}

impl std::error::Error for IllegalTransition {}

impl EventKind {
    /// The state a task is in after this event; `None` for the events that leave it as it
    /// was (text, tool calls, ...).
    pub fn state_after(&self) -> Option<TaskState> {
        match self {
            Self::Submitted { .. } | Self::Retrying { .. } => Some(TaskState::Queued),
            Self::Scheduled { .. } => Some(TaskState::Scheduled),
            Self::Working | Self::InputReceived { .. } => Some(TaskState::Working),
            Self::Completed { .. } => Some(TaskState::Completed),
            Self::Failed { .. } => Some(TaskState::Failed),
            Self::Canceled { .. } => Some(TaskState::Canceled),
            Self::InputRequired { .. } => Some(TaskState::InputRequired),
            Self::TextDelta { .. }
            | Self::ReasoningDelta { .. }
            | Self::ToolCall { .. }
            | Self::ToolResult { .. }
            | Self::Embeddings { .. }
            | Self::Artifact(_)
            | Self::StateSaved { .. } => None,
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.state_after().is_some_and(TaskState::is_terminal)
    }

    /// The event's name as clients see it (Python's `Event.kind`, the inspector).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Submitted { .. } => "submitted",
            Self::Scheduled { .. } => "scheduled",
            Self::Working => "working",
            Self::TextDelta { .. } => "text_delta",
            Self::ReasoningDelta { .. } => "reasoning_delta",
            Self::ToolCall { .. } => "tool_call",
            Self::ToolResult { .. } => "tool_result",
            Self::Completed { .. } => "completed",
            Self::Failed { .. } => "failed",
            Self::Canceled { .. } => "canceled",
            Self::InputRequired { .. } => "input_required",
            Self::InputReceived { .. } => "input_received",
            Self::Retrying { .. } => "retrying",
            Self::Embeddings { .. } => "embeddings",
            Self::Artifact(_) => "artifact",
            Self::StateSaved { .. } => "state_saved",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, Usage};

    /// One event of each kind.
    fn every_event() -> Vec<EventKind> {
        vec![
            EventKind::Submitted { agent: "a".into() },
            EventKind::Scheduled { worker_id: "w".into() },
            EventKind::Working,
            EventKind::text("t"),
            EventKind::ReasoningDelta { text: "r".into() },
            EventKind::ToolCall {
                call_id: "c".into(),
                name: "n".into(),
                arguments: "{}".into(),
                traceparent: String::new(),
                replayed: false,
            },
            EventKind::ToolResult { call_id: "c".into(), output: "o".into(), is_error: false },
            EventKind::Completed { usage: Usage::default() },
            EventKind::failed(ErrorKind::Internal, "e"),
            EventKind::Canceled { reason: "r".into() },
            EventKind::InputRequired {
                prompt: "p".into(),
                call_id: "c/input".into(),
                tool: String::new(),
                arguments: String::new(),
                deadline_us: 0,
            },
            EventKind::InputReceived {
                call_id: "c/input".into(),
                text: "y".into(),
                rejected: false,
            },
            EventKind::Retrying { reason: "lost".into(), failed_attempt: 1 },
            EventKind::Embeddings { vectors: Vec::new() },
            EventKind::Artifact(std::sync::Arc::new(crate::Artifact {
                id: "a".into(),
                name: String::new(),
                description: String::new(),
                part: crate::ArtifactPart::Data("{}".into()),
            })),
            EventKind::StateSaved { state: "{}".into() },
        ]
    }

    /// The whole table, state × event, written out: `-` is refused, a letter the state after.
    /// Columns: submitted, scheduled, working, text, reasoning, tool call, tool result,
    /// completed, failed, canceled, input required, input received, retrying, embeddings,
    /// artifact, state saved.
    const TABLE: [(&str, &str); 8] = [
        ("none", "Q - - - - - - - - - - - - - - -"),
        ("queued", "- S - - - - - - F C - - - - - -"),
        ("scheduled", "- - W S S S S D F C I - Q S S S"),
        ("working", "- - W W W W W D F C I - Q W W W"),
        ("input-required", "- - W I I I I D F C I W Q I I I"),
        ("completed", "- - - - - - - - - - - - - - - -"),
        ("failed", "- - - - - - - - - - - - - - - -"),
        ("canceled", "- - - - - - - - - - - - - - - -"),
    ];

    fn letter(state: TaskState) -> &'static str {
        match state {
            TaskState::Queued => "Q",
            TaskState::Scheduled => "S",
            TaskState::Working => "W",
            TaskState::InputRequired => "I",
            TaskState::Completed => "D",
            TaskState::Failed => "F",
            TaskState::Canceled => "C",
        }
    }

    #[test]
    fn every_state_and_event_is_in_the_table() {
        let events = every_event();
        for (from, row) in TABLE {
            let expected: Vec<&str> = row.split(' ').collect();
            assert_eq!(expected.len(), events.len(), "row {from}");
            for (event, want) in events.iter().zip(expected) {
                let got = match from {
                    "none" => TaskState::first(event),
                    _ => {
                        let state = TaskState::ALL.into_iter().find(|s| s.as_str() == from);
                        state.expect("a state of the table").after(event)
                    }
                };
                let got = got.map_or("-", letter);
                assert_eq!(got, want, "{from} + {}", event.name());
            }
        }
        // Every state has its row.
        for state in TaskState::ALL {
            assert!(TABLE.iter().any(|(s, _)| *s == state.as_str()), "{state:?}");
        }
    }

    #[test]
    fn a_refusal_says_what_and_in_which_state() {
        let said = |r: Result<TaskState, IllegalTransition>| r.err().map(|e| e.to_string());
        let late = said(TaskState::Completed.after(&EventKind::text("late")));
        assert_eq!(late.as_deref(), Some("a completed task cannot take a text_delta event"));
        let first = said(TaskState::first(&EventKind::Working));
        assert_eq!(first.as_deref(), Some("a task's first event must be submitted, not working"));
    }

    #[test]
    fn the_state_after_an_event_is_what_the_table_moves_to() {
        // `state_after` (what clients derive) and `after` (what the head checks) agree.
        for event in every_event() {
            for from in TaskState::ALL {
                if let (Ok(to), Some(after)) = (from.after(&event), event.state_after()) {
                    assert_eq!(to, after, "{from:?} + {}", event.name());
                }
            }
        }
    }
}
