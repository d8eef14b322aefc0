//! A task's events as AG-UI events: text and reasoning as messages opened, streamed and
//! closed; every tool call as `TOOL_CALL_START`/`ARGS`/`END` (those the agent's own tools
//! answer followed by `TOOL_CALL_RESULT`, the frontend tools' left pending for the client);
//! the actor state the task saves as `STATE_SNAPSHOT`; artifacts as `CUSTOM`; and the end:
//! `RUN_FINISHED` (success with its pending calls and usage, an interrupt where the task
//! waits on its user, cancelled) or `RUN_ERROR`.

use fleet_proto::{ArtifactPart, EventKind, TaskEvent};
use serde_json::{Value, json};

use super::input::InterruptId;
use crate::run::{Ending, Translate};

/// The name of the `CUSTOM` event an artifact comes as.
pub const ARTIFACT_EVENT: &str = "agentfleet.artifact";

/// Translates one run's share of a task's events.
pub struct Translator {
    thread_id: String,
    run_id: String,
    task_id: String,
    /// The open text message's id.
    text: Option<String>,
    /// The open reasoning message's id.
    reasoning: Option<String>,
    /// The assistant message this turn's tool calls belong to.
    turn: Option<String>,
    /// Tool calls started and not answered in this run, in order.
    pending: Vec<String>,
    /// Whether the client was shown any of the answer (a retry after that ends the run).
    shown: bool,
    /// Calls announced (`TOOL_CALL_START`) in this run or, for the one an approval waited
    /// on, the run before: each is announced once.
    announced: std::collections::HashSet<String>,
    /// The seq of the interrupt a resumed run continues from.
    resumed_at: Option<u64>,
    /// Whether the task took an answer in this run.
    answered: bool,
}

impl Translator {
    pub fn new(thread_id: &str, run_id: &str, task_id: &str) -> Self {
        Self {
            thread_id: thread_id.to_owned(),
            run_id: run_id.to_owned(),
            task_id: task_id.to_owned(),
            text: None,
            reasoning: None,
            turn: None,
            pending: Vec::new(),
            shown: false,
            announced: Default::default(),
            resumed_at: None,
            answered: false,
        }
    }

    /// The translator of a run that resumes from the interrupt at `seq`: it is shown that
    /// interrupt's event again and announces nothing for it, and what came before was shown
    /// (a retry ends the run rather than stream it twice).
    pub fn resumed(thread_id: &str, run_id: &str, task_id: &str, seq: u64) -> Self {
        Self { resumed_at: Some(seq), shown: true, ..Self::new(thread_id, run_id, task_id) }
    }

    /// A call's id on the wire: unique in the thread (a worker numbers its own calls per
    /// task, and a client matches calls by id across the whole thread).
    fn call_id(&self, call_id: &str) -> String {
        format!("{}:{call_id}", self.task_id)
    }

    /// `TOOL_CALL_START`/`ARGS`/`END` of a call, unless it was announced already.
    fn announce(
        &mut self,
        out: &mut Vec<Value>,
        call_id: &str,
        name: &str,
        arguments: &str,
        id: String,
    ) {
        if !self.announced.insert(call_id.to_owned()) {
            return;
        }
        let parent = self.turn.get_or_insert(id).clone();
        let wire = self.call_id(call_id);
        out.push(json!({"type": "TOOL_CALL_START", "toolCallId": wire, "toolCallName": name, "parentMessageId": parent}));
        if !arguments.is_empty() {
            out.push(json!({"type": "TOOL_CALL_ARGS", "toolCallId": wire, "delta": arguments}));
        }
        out.push(json!({"type": "TOOL_CALL_END", "toolCallId": wire}));
        self.pending.push(wire);
        self.shown = true;
    }

    /// `RUN_STARTED`.
    pub fn started(&self, parent_run_id: Option<&str>) -> Value {
        let mut event = json!({
            "type": "RUN_STARTED",
            "threadId": self.thread_id,
            "runId": self.run_id,
            "protocolVersion": super::PROTOCOL_VERSION,
        });
        if let Some(parent) = parent_run_id {
            event["parentRunId"] = json!(parent);
        }
        event
    }

    /// `RUN_ERROR` (after closing what is open).
    pub fn error(&mut self, message: &str, code: &str) -> Vec<Value> {
        let mut out = self.close();
        out.push(json!({"type": "RUN_ERROR", "message": message, "code": code}));
        out
    }
}

impl Translate for Translator {
    /// The AG-UI events of `event`, and whether the run ends with it.
    fn translate(&mut self, event: &TaskEvent) -> (Vec<Value>, Option<Ending>) {
        // Ids of what opens at this event: unique in the task, so in every run of it.
        let id = format!("{}-{}", self.task_id, event.seq);
        let mut out = Vec::new();
        match &event.kind {
            EventKind::TextDelta { text, .. } if !text.is_empty() => {
                self.close_reasoning(&mut out);
                let message = match &self.text {
                    Some(message) => message.clone(),
                    None => {
                        out.push(json!({"type": "TEXT_MESSAGE_START", "messageId": id, "role": "assistant"}));
                        self.text = Some(id.clone());
                        self.turn = Some(id.clone());
                        id
                    }
                };
                out.push(
                    json!({"type": "TEXT_MESSAGE_CONTENT", "messageId": message, "delta": text}),
                );
                self.shown = true;
            }
            EventKind::ReasoningDelta { text } if !text.is_empty() => {
                self.close_text(&mut out);
                let message = match &self.reasoning {
                    Some(message) => message.clone(),
                    None => {
                        out.push(json!({"type": "REASONING_START", "messageId": id}));
                        out.push(json!({"type": "REASONING_MESSAGE_START", "messageId": id, "role": "reasoning"}));
                        self.reasoning = Some(id.clone());
                        id
                    }
                };
                out.push(json!({"type": "REASONING_MESSAGE_CONTENT", "messageId": message, "delta": text}));
                self.shown = true;
            }
            EventKind::ToolCall { call_id, name, arguments, .. } => {
                out.extend(self.close());
                self.announce(&mut out, call_id, name, arguments, id);
            }
            EventKind::ToolResult { call_id, output, .. } => {
                out.extend(self.close());
                let wire = self.call_id(call_id);
                out.push(json!({"type": "TOOL_CALL_RESULT", "messageId": id, "toolCallId": wire, "content": output, "role": "tool"}));
                self.pending.retain(|c| *c != wire);
                // What the agent says next is a new assistant message.
                self.turn = None;
            }
            EventKind::StateSaved { state } => {
                let snapshot = serde_json::from_str::<Value>(state).unwrap_or(Value::Null);
                out.push(json!({"type": "STATE_SNAPSHOT", "snapshot": snapshot}));
            }
            EventKind::Artifact(artifact) => {
                let mut value = json!({"id": artifact.id, "name": artifact.name, "description": artifact.description});
                match &artifact.part {
                    ArtifactPart::Data(data) => {
                        value["data"] = serde_json::from_str(data).unwrap_or(Value::Null);
                    }
                    ArtifactPart::File(file) => {
                        use base64::Engine;
                        value["file"] = json!({"name": file.name, "mediaType": file.media_type});
                        if file.url.is_empty() {
                            value["file"]["data"] =
                                json!(base64::engine::general_purpose::STANDARD.encode(&file.data));
                        } else {
                            value["file"]["url"] = json!(file.url);
                        }
                    }
                }
                out.push(json!({"type": "CUSTOM", "name": ARTIFACT_EVENT, "value": value}));
            }
            EventKind::InputRequired { prompt, call_id, tool, arguments, deadline_us } => {
                // The call an approval waits on, announced before it is asked about.
                let call = call_id.strip_suffix("/input").unwrap_or(call_id);
                if self.resumed_at == Some(event.seq) {
                    self.announced.insert(call.to_owned());
                    return (out, None);
                }
                out.extend(self.close());
                if !tool.is_empty() {
                    self.announce(&mut out, call, tool, arguments, id);
                }
                let interrupt_id = InterruptId { task_id: self.task_id.clone(), seq: event.seq };
                let mut interrupt = json!({
                    "id": interrupt_id.to_wire(),
                    "message": prompt,
                    "expiresAt": crate::a2a::render::timestamp(*deadline_us),
                });
                if tool.is_empty() {
                    interrupt["reason"] = json!("question");
                    interrupt["responseSchema"] = json!({"type": "string"});
                } else {
                    interrupt["reason"] = json!("tool_approval");
                    interrupt["toolCallId"] = json!(self.call_id(call));
                    interrupt["responseSchema"] = json!({
                        "type": "object",
                        "properties": {"approved": {"type": "boolean"}, "reason": {"type": "string"}},
                        "required": ["approved"],
                    });
                }
                out.push(
                    self.finished(json!({"type": "interrupt", "interrupts": [interrupt]}), None),
                );
                return (out, Some(Ending::Interrupted));
            }
            EventKind::Retrying { reason, .. } if self.shown => {
                let message = format!(
                    "the task's worker was lost after part of the answer was sent ({reason}): \
                     run again"
                );
                return (self.error(&message, "unavailable"), Some(Ending::Done));
            }
            EventKind::Completed { usage } => {
                out.extend(self.close());
                let mut outcome = json!({"type": "success"});
                if !self.pending.is_empty() {
                    outcome["pendingToolCallIds"] = json!(self.pending);
                }
                let usage = json!([{
                    "inputTokens": usage.prompt_tokens,
                    "cachedInputTokens": usage.cached_tokens,
                    "outputTokens": usage.completion_tokens,
                    "reasoningTokens": usage.reasoning_tokens,
                    "totalTokens": u64::from(usage.prompt_tokens) + u64::from(usage.completion_tokens),
                }]);
                out.push(self.finished(outcome, Some(usage)));
                return (out, Some(Ending::Done));
            }
            EventKind::InputReceived { .. } => self.answered = true,
            // A resumed interrupt that ended unanswered (its deadline passed): the run
            // finishes cancelled, which is what lets the client drop the interrupt (a
            // `RUN_ERROR` would leave its thread stuck on it); why is in a custom event.
            EventKind::Failed { error, kind, .. }
                if self.resumed_at.is_some() && !self.answered =>
            {
                out.extend(self.close());
                let value = json!({"message": error, "code": kind.as_str()});
                out.push(
                    json!({"type": "CUSTOM", "name": "agentfleet.interruptEnded", "value": value}),
                );
                out.push(self.finished(json!({"type": "cancelled"}), None));
                return (out, Some(Ending::Done));
            }
            EventKind::Failed { error, kind, .. } => {
                return (self.error(error, kind.as_str()), Some(Ending::Done));
            }
            EventKind::Canceled { .. } => {
                out.extend(self.close());
                out.push(self.finished(json!({"type": "cancelled"}), None));
                return (out, Some(Ending::Done));
            }
            _ => {}
        }
        (out, None)
    }

    fn stopped(&mut self) -> Vec<Value> {
        let message = "the task's events stopped before it ended (the head is shutting down, or \
                       the task left retention): run again";
        self.error(message, "unavailable")
    }
}

impl Translator {
    fn finished(&self, outcome: Value, usage: Option<Value>) -> Value {
        let mut event = json!({
            "type": "RUN_FINISHED",
            "threadId": self.thread_id,
            "runId": self.run_id,
            "outcome": outcome,
        });
        if let Some(usage) = usage {
            event["usage"] = usage;
        }
        event
    }

    /// Closes the open text or reasoning message.
    fn close(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        self.close_text(&mut out);
        self.close_reasoning(&mut out);
        out
    }

    fn close_text(&mut self, out: &mut Vec<Value>) {
        if let Some(message) = self.text.take() {
            out.push(json!({"type": "TEXT_MESSAGE_END", "messageId": message}));
        }
    }

    fn close_reasoning(&mut self, out: &mut Vec<Value>) {
        if let Some(message) = self.reasoning.take() {
            out.push(json!({"type": "REASONING_MESSAGE_END", "messageId": message}));
            out.push(json!({"type": "REASONING_END", "messageId": message}));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Ending;
    use fleet_proto::Usage;

    fn event(seq: u64, kind: EventKind) -> TaskEvent {
        TaskEvent { task_id: fleet_proto::TaskId::new("t"), seq, attempt: 1, timestamp_us: 0, kind }
    }

    fn types(events: &[Value]) -> Vec<&str> {
        events.iter().map(|e| e["type"].as_str().unwrap_or_default()).collect()
    }

    fn delta(text: &str) -> EventKind {
        EventKind::TextDelta { text: text.into(), logprobs: Vec::new() }
    }

    #[test]
    fn reasoning_text_and_a_frontend_call_end_in_a_success_with_it_pending() {
        let mut t = Translator::new("th", "r", "t");
        let mut all = Vec::new();
        let kinds = [
            EventKind::ReasoningDelta { text: "hmm".into() },
            delta("Let me"),
            delta(" look."),
            EventKind::ToolCall {
                call_id: "c1".into(),
                name: "weather".into(),
                arguments: "{}".into(),
                traceparent: String::new(),
                replayed: false,
            },
            EventKind::Completed {
                usage: Usage { prompt_tokens: 5, completion_tokens: 7, ..Default::default() },
            },
        ];
        for (i, kind) in kinds.into_iter().enumerate() {
            let (out, end) = t.translate(&event(i as u64 + 3, kind));
            all.extend(out);
            assert_eq!(end.is_some(), i == 4);
        }
        assert_eq!(
            types(&all),
            [
                "REASONING_START",
                "REASONING_MESSAGE_START",
                "REASONING_MESSAGE_CONTENT",
                "REASONING_MESSAGE_END",
                "REASONING_END",
                "TEXT_MESSAGE_START",
                "TEXT_MESSAGE_CONTENT",
                "TEXT_MESSAGE_CONTENT",
                "TEXT_MESSAGE_END",
                "TOOL_CALL_START",
                "TOOL_CALL_ARGS",
                "TOOL_CALL_END",
                "RUN_FINISHED",
            ]
        );
        // The call hangs on the text's message; ids are unique in the task.
        assert_eq!(all[5]["messageId"], "t-4");
        assert_eq!(all[9]["parentMessageId"], "t-4");
        let finished = &all[12];
        assert_eq!(finished["outcome"]["pendingToolCallIds"], json!(["t:c1"]));
        assert_eq!(finished["usage"][0]["totalTokens"], 12);
    }

    #[test]
    fn an_approval_ends_the_run_on_an_interrupt() {
        let mut t = Translator::new("th", "r", "task-1");
        let ask = EventKind::InputRequired {
            prompt: "May I?".into(),
            call_id: "c7/input".into(),
            tool: "helper".into(),
            arguments: "{}".into(),
            deadline_us: 0,
        };
        let (out, end) = t.translate(&event(9, ask.clone()));
        assert_eq!(end, Some(Ending::Interrupted));
        assert_eq!(
            types(&out),
            ["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "RUN_FINISHED"]
        );
        let interrupt = &out[3]["outcome"]["interrupts"][0];
        assert_eq!(interrupt["id"], "task-1@9");
        assert_eq!(interrupt["toolCallId"], "task-1:c7");
        assert_eq!(out[0]["toolCallId"], "task-1:c7");
        // The resumed run sees the interrupt again and the call once approved: neither shows.
        let mut resumed = Translator::resumed("th", "r2", "task-1", 9);
        assert_eq!(resumed.translate(&event(9, ask)), (Vec::new(), None));
        let call = EventKind::ToolCall {
            call_id: "c7".into(),
            name: "helper".into(),
            arguments: "{}".into(),
            traceparent: String::new(),
            replayed: false,
        };
        assert_eq!(resumed.translate(&event(11, call)), (Vec::new(), None));
        assert_eq!(interrupt["reason"], "tool_approval");
    }

    #[test]
    fn an_interrupt_that_ended_unanswered_finishes_its_resumed_run_cancelled() {
        let failed = || EventKind::Failed {
            error: "no input before the deadline".into(),
            worker_id: String::new(),
            kind: fleet_proto::ErrorKind::InvalidRequest,
        };
        let mut t = Translator::resumed("th", "r", "t", 4);
        let (out, end) = t.translate(&event(5, failed()));
        assert_eq!(types(&out), ["CUSTOM", "RUN_FINISHED"]);
        assert_eq!(out[1]["outcome"], json!({"type": "cancelled"}));
        assert_eq!(end, Some(Ending::Done));
        // Answered, then failed: the failure is the run's error.
        let mut t = Translator::resumed("th", "r", "t", 4);
        let answer = EventKind::InputReceived {
            call_id: "c/input".into(),
            text: "x".into(),
            rejected: false,
        };
        t.translate(&event(5, answer));
        assert_eq!(types(&t.translate(&event(6, failed())).0), ["RUN_ERROR"]);
    }

    #[test]
    fn a_retry_after_text_was_shown_ends_the_run_with_an_error() {
        let mut t = Translator::new("th", "r", "t");
        let retry = || EventKind::Retrying { reason: "worker lost".into(), failed_attempt: 1 };
        // Before anything was shown it is invisible.
        assert_eq!(t.translate(&event(2, retry())), (Vec::new(), None));
        t.translate(&event(3, delta("hi")));
        let (out, end) = t.translate(&event(4, retry()));
        assert_eq!(types(&out), ["TEXT_MESSAGE_END", "RUN_ERROR"]);
        assert_eq!(end, Some(Ending::Done));
    }
}
