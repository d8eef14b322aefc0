//! One HTTP request's task on the cluster (the OpenAI API's and MCP's): submitted with a
//! subscriber attached before its first event, followed to its terminal event, and canceled
//! if the request goes away first (the HTTP client disconnected: axum drops the handler's
//! future or the response stream). These doors have no way to ask their client for input:
//! a question or an approval the agent asks for is declined at once (the model reads why).

use std::sync::Arc;

use fleet_proto::{EventKind, Reply, TaskEvent, TaskId};

use crate::api::streams;
use crate::auth::Principal;
use crate::cluster::{Cluster, NewTask};
use crate::tasks::{Delivery, Subscription};

/// Why the agent's questions and approvals are declined.
const NOBODY_TO_ASK: &str = "nobody can answer: the task came through an API that takes no \
     replies (OpenAI or MCP); go on without it, or use A2A or the Python or gRPC clients";

/// How often a decline is tried while the task's worker is away (100 ms apart).
const DECLINE_TRIES: u32 = 300;

/// A submitted task and its events.
pub struct TaskRun {
    cluster: Arc<Cluster>,
    pub task_id: TaskId,
    /// Who submitted it: the reads, declines and cancel are theirs.
    who: Principal,
    sub: Subscription,
    last_seq: u64,
    ended: bool,
}

impl TaskRun {
    /// Submits `task`; refusals (queue full, input too long, ...) come back as errors.
    pub fn start(cluster: &Arc<Cluster>, who: &Principal, task: NewTask) -> crate::Result<Self> {
        let (subscriber, sub) = cluster.subscriber();
        let task_id = cluster.submit(who, task, Some((subscriber, None)))?;
        let who = who.clone();
        Ok(Self { cluster: cluster.clone(), who, task_id, sub, last_seq: 0, ended: false })
    }

    /// The task's next event; `None` after its terminal event or when its events stopped
    /// (the head is shutting down, or the task was dropped from retention).
    pub async fn next(&mut self) -> Option<Arc<TaskEvent>> {
        if self.ended {
            return None;
        }
        loop {
            match streams::next(&mut self.sub).await {
                Some(Delivery::Event(event)) => {
                    if event.seq <= self.last_seq {
                        continue;
                    }
                    self.last_seq = event.seq;
                    self.ended = event.kind.is_terminal();
                    if matches!(event.kind, EventKind::InputRequired { .. }) {
                        self.decline(event.seq).await;
                        continue;
                    }
                    return Some(event);
                }
                Some(_) => continue,
                // A reader that fell behind (a slow HTTP client) was cut off: resume after
                // the last event seen, from the task's log.
                None if self.sub.was_cut() => {
                    self.sub = self
                        .cluster
                        .watch(&self.who, self.task_id.as_str(), self.last_seq + 1)
                        .ok()?;
                }
                None => return None,
            }
        }
    }
}

impl TaskRun {
    /// Declines the task's request `seq`; while its worker rejoins the head (a reply would
    /// not reach it), again a moment later.
    async fn decline(&self, seq: u64) {
        for _ in 0..DECLINE_TRIES {
            let reply = Reply::Reject(NOBODY_TO_ASK.into());
            match self.cluster.reply(&self.who, self.task_id.as_str(), "", reply, seq) {
                Err(crate::Error::Unavailable(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                _ => return,
            }
        }
        tracing::warn!(task_id = %self.task_id, "its worker did not rejoin: the request stays unanswered");
    }
}

impl Drop for TaskRun {
    fn drop(&mut self) {
        if !self.ended {
            tracing::debug!(task_id = %self.task_id, "request gone before its task ended; canceling");
            let _ = self.cluster.cancel(&self.who, self.task_id.as_str());
        }
    }
}
