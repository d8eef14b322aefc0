//! Asking the person behind a task: the built-in `ask_user` tool, and the approval that
//! calls of some tools wait for. The task announces what it waits for (`InputRequired`),
//! the head makes it input-required until the client replies, and the reply comes back
//! like the answer of a call through the head (a `ToolReply`, `is_error` for a rejection).
//!
//! Only a task a client submitted can ask: a called agent's (depth > 0, or over the mesh)
//! has no person behind it, and its model reads that instead.

use std::time::Duration;

use fleet_proto::{AgentSpec, ErrorKind, EventKind, FunctionTool, TaskAssignment, now_us};
use tokio_util::sync::CancellationToken;

use crate::head_calls::PendingCalls;
use crate::runner::{EventSink, emit, failed};
use crate::tool::ToolOutcome;

/// What an agent may ask its client, and how long a task waits for the reply.
#[derive(Clone)]
pub struct HumanInput {
    calls: PendingCalls,
    timeout: Duration,
    ask_user: bool,
    /// Tools whose calls wait for approval.
    approvals: Vec<String>,
}

/// The client's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub text: String,
    /// The approval was refused, or the question declined.
    pub rejected: bool,
}

/// Where a task's request for input is announced and what ends its wait early.
pub struct Asking<'a> {
    pub task: &'a TaskAssignment,
    pub sink: &'a EventSink,
    pub cancel: &'a CancellationToken,
}

impl HumanInput {
    /// What agent `spec` may ask (its hosted `functions` may require approval too); `None`
    /// for an agent that asks nothing.
    pub fn new(spec: &AgentSpec, functions: &[FunctionTool], calls: PendingCalls) -> Option<Self> {
        let mut approvals = spec.requires_approval.clone();
        approvals.extend(functions.iter().filter(|f| f.requires_approval).map(|f| f.name.clone()));
        (spec.ask_user || !approvals.is_empty()).then(|| Self {
            calls,
            timeout: spec.input_timeout(),
            ask_user: spec.ask_user,
            approvals,
        })
    }

    pub fn asks_user(&self) -> bool {
        self.ask_user
    }

    pub fn needs_approval(&self, tool: &str) -> bool {
        self.approvals.iter().any(|t| t == tool)
    }

    /// The `ask_user` tool as the model sees it.
    pub fn ask_user_definition() -> serde_json::Value {
        serde_json::json!({
            "type": "function",
            "function": {
                "name": fleet_proto::ASK_USER_TOOL,
                "description": "Ask the user a question and wait for the answer. Use it when \
                    you need information or a decision only the user can give.",
                "parameters": {
                    "type": "object",
                    "properties": { "question": { "type": "string" } },
                    "required": ["question"],
                },
            }
        })
    }

    /// Asks the model's question (the arguments of an `ask_user` call); the answer is the
    /// call's result.
    pub async fn ask_user(
        &self,
        asking: Asking<'_>,
        call_id: &str,
        arguments: &str,
    ) -> Result<ToolOutcome, EventKind> {
        let question = serde_json::from_str::<serde_json::Value>(arguments)
            .ok()
            .and_then(|a| a.get("question").and_then(|q| q.as_str()).map(str::to_owned))
            .filter(|q| !q.trim().is_empty());
        let Some(question) = question else {
            return Ok(ToolOutcome::error(
                "ask_user needs {\"question\": \"...\"}: the question to ask the user",
            ));
        };
        if asking.task.depth > 0 {
            return Ok(ToolOutcome::error(
                "there is no user to ask: another agent called this one; answer with what you \
                 know, and say what is missing",
            ));
        }
        let reply = self.wait(asking, call_id, question, "", "").await?;
        Ok(match (reply.rejected, reply.text) {
            (false, text) => ToolOutcome::ok(text),
            (true, reason) if reason.is_empty() => {
                ToolOutcome::error("the user declined to answer")
            }
            (true, reason) => ToolOutcome::error(format!("the user declined to answer: {reason}")),
        })
    }

    /// Asks the client to approve calling `tool` with `arguments`; `Some` error result (what
    /// the model reads) unless it is approved.
    pub async fn approve(
        &self,
        asking: Asking<'_>,
        agent: &str,
        call_id: &str,
        tool: &str,
        arguments: &str,
    ) -> Result<Option<ToolOutcome>, EventKind> {
        if asking.task.depth > 0 {
            return Ok(Some(ToolOutcome::error(format!(
                "calling {tool} needs a person's approval, and nobody can give it: another \
                 agent called this one"
            ))));
        }
        let prompt = format!(
            "Agent {agent} wants to call {tool} with {arguments}. Reply \"approve\" to let it, \
             or anything else to refuse (your words reach the agent as the reason)."
        );
        let reply = self.wait(asking, call_id, prompt, tool, arguments).await?;
        Ok(match (reply.rejected, reply.text) {
            (false, _) => None,
            (true, reason) if reason.is_empty() => {
                Some(ToolOutcome::error("the user did not approve this call"))
            }
            (true, reason) => {
                Some(ToolOutcome::error(format!("the user did not approve this call: {reason}")))
            }
        })
    }

    /// Announces the request and waits for the reply, at most the agent's input timeout.
    /// The wait outlives a broken connection to the head (the worker keeps its tasks and
    /// their waiters while it rejoins; a restarted head knows the task waits from its log).
    async fn wait(
        &self,
        asking: Asking<'_>,
        call_id: &str,
        prompt: String,
        tool: &str,
        arguments: &str,
    ) -> Result<Reply, EventKind> {
        // The request is named apart from the call it is for: a reply the head sends again
        // (to a worker that rejoined) never answers the call itself.
        let request_id = format!("{call_id}/input");
        // Waiting before the request is announced, so a fast reply always finds its waiter.
        let (_waiting, answer) = self.calls.wait((asking.task.task_id.clone(), request_id.clone()));
        let request = EventKind::InputRequired {
            prompt,
            call_id: request_id,
            tool: tool.to_owned(),
            arguments: arguments.to_owned(),
            deadline_us: now_us() + self.timeout.as_micros() as u64,
        };
        emit(asking.sink, asking.task, request).await;
        let what = if tool.is_empty() { "an answer" } else { "the approval of a call" };
        tokio::select! {
            biased;
            () = asking.cancel.cancelled() => Err(EventKind::Canceled { reason: "canceled".into() }),
            reply = tokio::time::timeout(self.timeout, answer) => match reply {
                Ok(Ok(outcome)) => Ok(Reply { text: outcome.output, rejected: outcome.is_error }),
                // The worker gave up on the head (its tasks are canceled too).
                Ok(Err(_)) => Err(failed(
                    ErrorKind::Unavailable,
                    format!("the connection to the head was lost while the task waited for {what}"),
                )),
                Err(_) => Err(failed(
                    ErrorKind::Unavailable,
                    format!(
                        "nobody replied within {} s (the agent's input timeout) while the task \
                         waited for {what}",
                        self.timeout.as_secs()
                    ),
                )),
            },
        }
    }
}
