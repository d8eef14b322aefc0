//! Agents calling agents through the head (a worker without a mesh): the call is announced
//! as the task's `ToolCall` event, the head runs the called agent as a sub-task and sends its
//! result back down as a `ToolReply` command, which [`PendingCalls`] hands to the waiting
//! call.

use std::collections::HashMap;
use std::sync::Arc;

use fleet_inference::ToolCall;
use fleet_proto::TaskId;
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::tool_calls;
use crate::toolbox::{CallContext, TOOL_CALL_TIMEOUT, ToolCaller, ToolOutcome};

/// Where the answer to each call goes, by (task, call id).
type Waiters = HashMap<(TaskId, String), oneshot::Sender<ToolOutcome>>;

/// The calls of running tasks waiting for the head's answer.
#[derive(Clone, Default)]
pub struct PendingCalls(Arc<Mutex<Waiters>>);

impl PendingCalls {
    /// The head's answer to a call; `false` when nobody waits for it (the task ended or was
    /// retried meanwhile).
    pub fn answer(&self, task_id: TaskId, call_id: String, outcome: ToolOutcome) -> bool {
        match self.0.lock().remove(&(task_id, call_id)) {
            Some(waiting) => waiting.send(outcome).is_ok(),
            None => false,
        }
    }

    /// The connection to the head is gone: no answer will come.
    pub fn clear(&self) {
        self.0.lock().clear();
    }

    fn wait(&self, key: (TaskId, String)) -> (Waiting, oneshot::Receiver<ToolOutcome>) {
        let (tx, rx) = oneshot::channel();
        self.0.lock().insert(key.clone(), tx);
        (Waiting { calls: self.clone(), key }, rx)
    }
}

/// A call's place among the pending calls, given up when the call ends or is abandoned.
struct Waiting {
    calls: PendingCalls,
    key: (TaskId, String),
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.calls.0.lock().remove(&self.key);
    }
}

/// Another agent of the cluster, called through the head.
pub struct HeadCall {
    pub agent: String,
    pub calls: PendingCalls,
}

impl ToolCaller for HeadCall {
    fn definition(&self) -> serde_json::Value {
        tool_calls::agent_definition(&self.agent)
    }

    fn call(&self, call: &ToolCall, context: CallContext) -> BoxFuture<'static, ToolOutcome> {
        // Waiting before the call is announced, so a fast reply always finds its waiter.
        let (waiting, rx) = self.calls.wait((context.task_id, call.id.clone()));
        let agent = self.agent.clone();
        async move {
            let _waiting = waiting;
            match tokio::time::timeout(TOOL_CALL_TIMEOUT, rx).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => {
                    ToolOutcome::error("the connection to the head was lost during the call")
                }
                Err(_) => ToolOutcome::error(format!(
                    "agent {agent} did not answer within {} s",
                    TOOL_CALL_TIMEOUT.as_secs()
                )),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(task: &str) -> CallContext {
        CallContext {
            task_id: TaskId::new(task),
            context_id: String::new(),
            depth: 0,
            traceparent: String::new(),
            lease: None,
        }
    }

    fn call(id: &str) -> ToolCall {
        ToolCall { id: id.into(), name: "helper".into(), arguments: "{}".into() }
    }

    #[tokio::test]
    async fn the_heads_answer_reaches_the_waiting_call() {
        let calls = PendingCalls::default();
        let tool = HeadCall { agent: "helper".into(), calls: calls.clone() };
        let answer = tool.call(&call("c1"), context("t1"));
        // Registered before the future is first polled: an answer may come at once.
        assert!(calls.answer(TaskId::new("t1"), "c1".into(), ToolOutcome::ok("done")));
        assert_eq!(answer.await, ToolOutcome::ok("done"));
        assert!(calls.0.lock().is_empty());
    }

    #[tokio::test]
    async fn an_abandoned_call_leaves_no_waiter_behind() {
        let calls = PendingCalls::default();
        let tool = HeadCall { agent: "helper".into(), calls: calls.clone() };
        let answer = tool.call(&call("c1"), context("t1"));
        assert_eq!(calls.0.lock().len(), 1);
        drop(answer);
        assert!(calls.0.lock().is_empty());
        assert!(!calls.answer(TaskId::new("t1"), "c1".into(), ToolOutcome::ok("late")));
    }

    #[tokio::test]
    async fn a_lost_head_ends_the_call_with_an_error() {
        let calls = PendingCalls::default();
        let tool = HeadCall { agent: "helper".into(), calls: calls.clone() };
        let answer = tool.call(&call("c1"), context("t1"));
        calls.clear();
        let outcome = answer.await;
        assert!(outcome.is_error && outcome.output.contains("lost"), "{outcome:?}");
    }
}
