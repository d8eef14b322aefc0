//! One tool call, however the tool is reached: the interface every kind of tool implements
//! ([`ToolCaller`]), what the call knows of its task ([`CallContext`]) and the one kind of
//! answer the caller sees ([`ToolOutcome`]). A leaf: the tools themselves (`head_calls`,
//! `agent_calls`, `mcp`, `topics`) and their users (`toolbox`, `agent_loop`, `code_agents`)
//! depend on it, it on none of them.

use std::sync::Arc;
use std::time::Duration;

use fleet_inference::ToolCall;
use fleet_proto::TaskId;
use futures::future::BoxFuture;

use crate::gate::Lease;

/// How long a tool call may take.
pub const TOOL_CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// What a tool answered: the text the model reads next, and whether it reports an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolOutcome {
    pub output: String,
    pub is_error: bool,
}

impl ToolOutcome {
    pub fn ok(output: impl Into<String>) -> Self {
        Self { output: output.into(), is_error: false }
    }

    /// An error the calling model reads (the task goes on).
    pub fn error(output: impl Into<String>) -> Self {
        Self { output: output.into(), is_error: true }
    }
}

/// What a tool call knows of the task that makes it.
#[derive(Clone)]
pub struct CallContext {
    pub task_id: TaskId,
    pub context_id: String,
    /// Tool calls between this task and a client's (a called agent runs one deeper).
    pub depth: u32,
    /// W3C `traceparent` of the call's `execute_tool` span, for the callee's spans.
    pub traceparent: String,
    /// The turn and slot a call's run holds, lent back while it waits on this call.
    pub lease: Option<Arc<Lease>>,
}

/// One tool, however it is reached.
pub trait ToolCaller: Send + Sync {
    /// The tool as the model sees it: an OpenAI function definition.
    fn definition(&self) -> serde_json::Value;

    /// Starts a call. It runs before the call is announced (the task's `ToolCall` event), so
    /// an answer that follows the announcement always finds its waiter. The future ends with
    /// the answer; dropping it (the task canceled) abandons the call.
    fn call(&self, call: &ToolCall, context: CallContext) -> BoxFuture<'static, ToolOutcome>;

    /// Whether the tool says it is not idempotent: a retried task never calls it twice for
    /// one step. Others are called again when a call's result was lost with its worker.
    fn call_once(&self) -> bool {
        false
    }
}
