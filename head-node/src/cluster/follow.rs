//! One way to follow a task, for every door (gRPC `WatchTask`, A2A streams and push
//! notifications, the OpenAI API and MCP, the inspector, Python's embedded cluster): its
//! stored events in order from a seq, each once, up to its terminal event.
//!
//! A follower reads a bounded subscription. One that falls behind (a slow HTTP client) is
//! cut off by the task rather than let it buffer without bound; [`Follow`] then catches up
//! from the task's own log, which holds every event anyway, and goes on live. So no door
//! has to tell its client "you fell behind, resume yourself", and none re-implements the
//! resume.

use std::sync::Arc;

use fleet_proto::{TaskEvent, TaskId};

use super::Cluster;
use crate::api::streams;
use crate::auth::Principal;
use crate::tasks::{Delivery, Subscription};

/// A task followed by one reader.
pub struct Follow {
    cluster: Arc<Cluster>,
    who: Principal,
    task_id: TaskId,
    sub: Subscription,
    /// The last seq handed out (the next is the one after it).
    last_seq: u64,
    ended: bool,
}

impl Follow {
    /// Follows through `sub`, a subscription to `task_id` that starts after `last_seq`.
    pub(crate) fn new(
        cluster: Arc<Cluster>,
        who: Principal,
        task_id: TaskId,
        sub: Subscription,
        last_seq: u64,
    ) -> Self {
        Self { cluster, who, task_id, sub, last_seq, ended: false }
    }

    pub fn task_id(&self) -> &TaskId {
        &self.task_id
    }

    /// Whether [`next`](Self::next) gave the task's terminal event.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The seq of the last event [`next`](Self::next) gave (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The task's next event; `None` after its terminal event, or when it can no longer be
    /// followed (the head is shutting down, or the task left retention).
    pub async fn next(&mut self) -> Option<Arc<TaskEvent>> {
        if self.ended {
            return None;
        }
        loop {
            match streams::next(&mut self.sub).await {
                Some(Delivery::Event(event)) => {
                    // A resumed subscription may start with events already given.
                    if event.seq <= self.last_seq {
                        continue;
                    }
                    self.last_seq = event.seq;
                    self.ended = event.kind.is_terminal();
                    return Some(event);
                }
                // Acknowledgements of a multiplexed submitter: not this reader's.
                Some(
                    Delivery::Accepted { .. }
                    | Delivery::Rejected { .. }
                    | Delivery::WatchRefused { .. },
                ) => continue,
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

    /// The events as a stream (for doors that answer with one).
    pub fn into_stream(self) -> impl futures::Stream<Item = Arc<TaskEvent>> + Send {
        futures::stream::unfold(self, |mut follow| async move {
            follow.next().await.map(|event| (event, follow))
        })
    }
}

impl Cluster {
    /// Follows a task from its event `from_seq` on (1: from the start).
    pub fn follow(
        self: &Arc<Self>,
        who: &Principal,
        task_id: &str,
        from_seq: u64,
    ) -> crate::Result<Follow> {
        let sub = self.watch(who, task_id, from_seq)?;
        let id = TaskId::new(task_id.to_owned());
        Ok(Follow::new(self.clone(), who.clone(), id, sub, from_seq.saturating_sub(1)))
    }

    /// The task as it is now and a follower of what comes after it, taken together so that
    /// nothing falls between them (A2A streams start with the task, then its updates).
    pub fn snapshot_and_follow(
        self: &Arc<Self>,
        who: &Principal,
        task_id: &str,
    ) -> crate::Result<(super::TaskInfo, Follow)> {
        let (info, sub) = self.snapshot_and_watch(who, task_id)?;
        let follow = Follow::new(self.clone(), who.clone(), info.task_id.clone(), sub, info.events);
        Ok((info, follow))
    }

    /// Submits `task` with a follower attached before its first event.
    pub fn submit_and_follow(
        self: &Arc<Self>,
        who: &Principal,
        task: super::NewTask,
    ) -> crate::Result<Follow> {
        let (subscriber, sub) = self.subscriber();
        let task_id = self.submit(who, task, Some((subscriber, None)))?;
        Ok(Follow::new(self.clone(), who.clone(), task_id, sub, 0))
    }
}
