//! Tools the head calls for a task: agents (for a worker without a mesh) and functions that
//! client processes host (Python tools). The call is announced as the task's `ToolCall`
//! event; the head runs the called agent as a sub-task, or sends the call to a process
//! hosting the function, and sends the result back down as a `ToolReply` command, which
//! [`PendingCalls`] hands to the waiting call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_inference::ToolCall;
use fleet_proto::{FunctionTool, TaskId};
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::tool::{CallContext, TOOL_CALL_TIMEOUT, ToolCaller, ToolOutcome};
use crate::tool_calls;

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

    /// Waits for the head's answer to call `key`: the answer comes on the receiver while the
    /// [`Waiting`] is held.
    pub(crate) fn wait(&self, key: (TaskId, String)) -> (Waiting, oneshot::Receiver<ToolOutcome>) {
        let (tx, rx) = oneshot::channel();
        self.0.lock().insert(key.clone(), tx);
        (Waiting { calls: self.clone(), key }, rx)
    }
}

/// A call's place among the pending calls, given up when the call ends or is abandoned.
pub(crate) struct Waiting {
    calls: PendingCalls,
    key: (TaskId, String),
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.calls.0.lock().remove(&self.key);
    }
}

/// A tool called through the head: another agent of the cluster, or a hosted function.
pub struct HeadCall {
    name: String,
    definition: serde_json::Value,
    /// The head answers a hosted function's call that outlives its timeout; this is for a
    /// head that cannot.
    timeout: Duration,
    calls: PendingCalls,
    /// The function says it is not idempotent.
    call_once: bool,
}

/// How much longer than a hosted function's timeout a call waits for the head's answer.
const HEAD_MARGIN: Duration = Duration::from_secs(5);

impl HeadCall {
    /// The agent `name`, run by the head as a sub-task.
    pub fn agent(name: &str, calls: PendingCalls) -> Self {
        let definition = tool_calls::agent_definition(name);
        Self {
            name: name.to_owned(),
            definition,
            timeout: TOOL_CALL_TIMEOUT,
            calls,
            call_once: false,
        }
    }

    /// A function a client process hosts, as the head registered it.
    pub fn hosted(function: &FunctionTool, calls: PendingCalls) -> Self {
        let parameters = serde_json::from_str(&function.parameters)
            .unwrap_or_else(|_| serde_json::json!({ "type": "object" }));
        let definition = serde_json::json!({
            "type": "function",
            "function": {
                "name": function.name,
                "description": function.description,
                "parameters": parameters,
            }
        });
        let timeout = function.timeout() + HEAD_MARGIN;
        Self {
            name: function.name.clone(),
            definition,
            timeout,
            calls,
            call_once: function.call_once,
        }
    }
}

impl ToolCaller for HeadCall {
    fn definition(&self) -> serde_json::Value {
        self.definition.clone()
    }

    fn call_once(&self) -> bool {
        self.call_once
    }

    fn call(&self, call: &ToolCall, context: CallContext) -> BoxFuture<'static, ToolOutcome> {
        // Waiting before the call is announced, so a fast reply always finds its waiter.
        let (waiting, rx) = self.calls.wait((context.task_id, call.id.clone()));
        let (name, timeout) = (self.name.clone(), self.timeout);
        async move {
            let _waiting = waiting;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => {
                    ToolOutcome::error("the connection to the head was lost during the call")
                }
                Err(_) => ToolOutcome::error(format!(
                    "{name} did not answer within {} s",
                    timeout.as_secs()
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
        let tool = HeadCall::agent("helper", calls.clone());
        let answer = tool.call(&call("c1"), context("t1"));
        // Registered before the future is first polled: an answer may come at once.
        assert!(calls.answer(TaskId::new("t1"), "c1".into(), ToolOutcome::ok("done")));
        assert_eq!(answer.await, ToolOutcome::ok("done"));
        assert!(calls.0.lock().is_empty());
    }

    #[tokio::test]
    async fn an_abandoned_call_leaves_no_waiter_behind() {
        let calls = PendingCalls::default();
        let tool = HeadCall::agent("helper", calls.clone());
        let answer = tool.call(&call("c1"), context("t1"));
        assert_eq!(calls.0.lock().len(), 1);
        drop(answer);
        assert!(calls.0.lock().is_empty());
        assert!(!calls.answer(TaskId::new("t1"), "c1".into(), ToolOutcome::ok("late")));
    }

    #[tokio::test]
    async fn a_lost_head_ends_the_call_with_an_error() {
        let calls = PendingCalls::default();
        let tool = HeadCall::agent("helper", calls.clone());
        let answer = tool.call(&call("c1"), context("t1"));
        calls.clear();
        let outcome = answer.await;
        assert!(outcome.is_error && outcome.output.contains("lost"), "{outcome:?}");
    }
}
