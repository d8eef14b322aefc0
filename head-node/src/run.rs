//! One HTTP request's task on the cluster (the OpenAI API's, MCP's and AG-UI's): submitted
//! with a subscriber attached before its first event, followed to its terminal event, and
//! canceled if the request goes away first (the HTTP client disconnected: axum drops the
//! handler's future or the response stream). The OpenAI API and MCP have no way to ask their
//! client for input: a question or an approval the agent asks for is declined at once (the
//! model reads why). AG-UI has ([`TaskRun::asking`]): its response ends on the question and
//! the task is [kept](TaskRun::keep) waiting for the client's next request.

use std::sync::Arc;

use fleet_proto::{EventKind, Reply, TaskEvent, TaskId};

use crate::auth::Principal;
use crate::cluster::{Cluster, Follow, NewTask};

/// Why the agent's questions and approvals are declined.
const NOBODY_TO_ASK: &str = "nobody can answer: the task came through an API that takes no \
     replies (OpenAI, the AI SDK's chat or MCP); go on without it, or use A2A, AG-UI or the \
     Python or gRPC clients";

/// How often a decline is tried while the task's worker is away (100 ms apart).
const DECLINE_TRIES: u32 = 300;

/// A submitted task and its events.
pub struct TaskRun {
    cluster: Arc<Cluster>,
    pub task_id: TaskId,
    /// Who submitted it: the reads, declines and cancel are theirs.
    who: Principal,
    follow: Follow,
    /// Hand `InputRequired` out instead of declining it.
    asks: bool,
    /// Leave the task running when this run drops (it waits for a reply).
    kept: bool,
}

impl TaskRun {
    /// Submits `task`; refusals (queue full, input too long, ...) come back as errors.
    pub fn start(cluster: &Arc<Cluster>, who: &Principal, task: NewTask) -> crate::Result<Self> {
        Ok(Self::following(cluster, who, cluster.submit_and_follow(who, task)?))
    }

    /// Follows task `task_id`, already submitted, from its event `from_seq` on; canceled
    /// like a started one if the request goes away first.
    pub fn resume(
        cluster: &Arc<Cluster>,
        who: &Principal,
        task_id: &str,
        from_seq: u64,
    ) -> crate::Result<Self> {
        Ok(Self::following(cluster, who, cluster.follow(who, task_id, from_seq)?))
    }

    fn following(cluster: &Arc<Cluster>, who: &Principal, follow: Follow) -> Self {
        let (task_id, who) = (follow.task_id().clone(), who.clone());
        Self { cluster: cluster.clone(), who, task_id, follow, asks: false, kept: false }
    }

    /// Hands the task's questions and approvals (`InputRequired`) out rather than declining
    /// them: the door asks its client.
    pub fn asking(mut self) -> Self {
        self.asks = true;
        self
    }

    /// Lets the task go on after this run drops: it waits on a question its client will
    /// answer in a later request (and fails at the question's deadline if none comes).
    pub fn keep(mut self) {
        self.kept = true;
    }

    /// The task's next event; `None` after its terminal event or when its events stopped
    /// (the head is shutting down, or the task was dropped from retention). Unless the run
    /// is [`asking`](Self::asking), its questions are declined here before they are handed
    /// out.
    pub async fn next(&mut self) -> Option<Arc<TaskEvent>> {
        let event = self.follow.next().await?;
        if !self.asks && matches!(event.kind, EventKind::InputRequired { .. }) {
            // Declined, and still handed out: a door may show the call it was about.
            self.decline(event.seq).await;
        }
        Some(event)
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
        if !self.follow.ended() && !self.kept {
            tracing::debug!(task_id = %self.task_id, "request gone before its task ended; canceling");
            let _ = self.cluster.cancel(&self.who, self.task_id.as_str());
        }
    }
}

/// How a door's stream of a task ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The task ended (or failed, or its events stopped).
    Done,
    /// The task waits on its user: it goes on when a later request answers (the run is
    /// [kept](TaskRun::keep)).
    Interrupted,
}

/// A door's protocol: what each of a task's events becomes on its stream.
pub trait Translate: Send + 'static {
    /// The door's events for `event`, and whether the stream ends with it.
    fn translate(&mut self, event: &TaskEvent) -> (Vec<serde_json::Value>, Option<Ending>);
    /// The last events when the task's events stopped before its end (the head is shutting
    /// down, or the task left retention).
    fn stopped(&mut self) -> Vec<serde_json::Value>;
}

/// The door's events of `run`, translated by `door`, to the stream's end: the one loop the
/// SSE doors (AG-UI, the AI SDK) follow a task with.
pub fn translated(
    run: TaskRun,
    door: impl Translate,
) -> impl futures::Stream<Item = serde_json::Value> + Send + 'static {
    use futures::StreamExt;
    futures::stream::unfold(Some((run, door)), |state| async move {
        let (mut run, mut door) = state?;
        loop {
            let Some(event) = run.next().await else {
                return Some((door.stopped(), None));
            };
            let (out, ending) = door.translate(&event);
            match ending {
                None if out.is_empty() => continue,
                None => return Some((out, Some((run, door)))),
                Some(Ending::Interrupted) => {
                    run.keep();
                    return Some((out, None));
                }
                Some(Ending::Done) => return Some((out, None)),
            }
        }
    })
    .flat_map(futures::stream::iter)
}
