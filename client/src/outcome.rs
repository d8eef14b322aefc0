//! Folding task events into outcomes: for one task ([`TaskOutcome::collect`]) and for many
//! multiplexed tasks ([`Collector`]).

use std::collections::HashMap;
use std::sync::Arc;

use futures::{Stream, StreamExt};

use crate::{Error, ManyUpdate, Result, TaskEvent, TaskId, TaskState, Usage};
use fleet_proto::{Artifact, ErrorKind, EventKind};

/// How a task ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOutcome {
    pub task_id: TaskId,
    pub state: TaskState,
    /// The text of the final attempt.
    pub output: String,
    /// The files and data the final attempt returned beside its text.
    pub artifacts: Vec<Arc<Artifact>>,
    pub error: String,
    /// What kind of failure (`Internal` unless the task failed).
    pub kind: ErrorKind,
    pub attempt: u32,
    pub usage: Usage,
    /// Events received, counting every attempt.
    pub events: u64,
}

impl TaskOutcome {
    fn new(task_id: TaskId) -> Self {
        Self {
            task_id,
            state: TaskState::Queued,
            output: String::new(),
            artifacts: Vec::new(),
            error: String::new(),
            kind: ErrorKind::default(),
            attempt: 1,
            usage: Usage::default(),
            events: 0,
        }
    }

    /// Applies one event; true once the task has ended.
    pub fn apply(&mut self, event: &TaskEvent) -> bool {
        self.events += 1;
        if event.attempt != self.attempt {
            self.attempt = event.attempt;
            self.output.clear();
            self.artifacts.clear();
        }
        if let Some(state) = event.kind.state_after() {
            self.state = state;
        }
        match &event.kind {
            EventKind::TextDelta { text, .. } => self.output.push_str(text),
            EventKind::Artifact(artifact) => self.artifacts.push(artifact.clone()),
            EventKind::Completed { usage } => self.usage = *usage,
            EventKind::Failed { error, kind, .. } => {
                self.error.clone_from(error);
                self.kind = *kind;
            }
            EventKind::Canceled { reason } => self.error.clone_from(reason),
            _ => {}
        }
        self.state.is_terminal()
    }

    /// Reads a task's stream to its end.
    pub async fn collect(
        mut stream: impl Stream<Item = Result<TaskEvent>> + Unpin,
    ) -> Result<Self> {
        let mut outcome: Option<Self> = None;
        while let Some(event) = stream.next().await {
            let event = event?;
            let o = outcome.get_or_insert_with(|| Self::new(event.task_id.clone()));
            if o.apply(&event) {
                return outcome.ok_or(Error::StreamEnded);
            }
        }
        Err(Error::StreamEnded)
    }
}

/// Gathers the outcomes of tasks submitted with client refs `0..total`.
#[derive(Debug)]
pub struct Collector {
    outcomes: Vec<Option<TaskOutcome>>,
    by_task: HashMap<TaskId, usize>,
    done: usize,
}

impl Collector {
    pub fn new(total: usize) -> Self {
        Self { outcomes: vec![None; total], by_task: HashMap::with_capacity(total), done: 0 }
    }

    pub fn apply(&mut self, update: ManyUpdate) {
        match update {
            ManyUpdate::Accepted { client_ref, task_id, .. } => {
                if let Some(slot) = self.outcomes.get_mut(client_ref as usize) {
                    *slot = Some(TaskOutcome::new(task_id.clone()));
                    self.by_task.insert(task_id, client_ref as usize);
                }
            }
            ManyUpdate::Rejected { client_ref, code, message } => {
                if let Some(slot) = self.outcomes.get_mut(client_ref as usize) {
                    let mut o = TaskOutcome::new(TaskId::new(""));
                    o.state = TaskState::Failed;
                    o.error = format!("{code}: {message}");
                    *slot = Some(o);
                    self.done += 1;
                }
            }
            ManyUpdate::Event(event) => {
                let Some(&index) = self.by_task.get(&event.task_id) else { return };
                if let Some(Some(o)) = self.outcomes.get_mut(index)
                    && !o.state.is_terminal()
                    && o.apply(&event)
                {
                    self.done += 1;
                }
            }
        }
    }

    pub fn all_done(&self) -> bool {
        self.done == self.outcomes.len()
    }

    /// The outcomes in client-ref order; an error if any task did not end.
    pub fn finish(self) -> Result<Vec<TaskOutcome>> {
        self.outcomes
            .into_iter()
            .map(|o| o.filter(|o| o.state.is_terminal()).ok_or(Error::StreamEnded))
            .collect()
    }
}
