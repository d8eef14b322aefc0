//! A task's events as the AI SDK's UI message stream chunks: text and reasoning parts
//! started, streamed and ended; every tool call as a dynamic tool part (`tool-input-start`,
//! `-delta`, `-available`), answered ones with `tool-output-available` (or `-error`), a step
//! per model call; artifacts as `data-artifact` parts (files as `file` parts); the actor
//! state as `data-state`; and the end: `finish` with its reason and the usage as message
//! metadata, `error`, or `abort`.

use fleet_proto::{ArtifactPart, EventKind, TaskEvent};
use serde_json::{Value, json};

use crate::run::{Ending, Translate};

/// Translates one response's share of a task's events.
pub struct Translator {
    task_id: String,
    text: Option<String>,
    reasoning: Option<String>,
    /// A tool's result came: what follows is the model's next step.
    step_ended: bool,
    /// Calls made and not answered (the client's), in order.
    pending: Vec<String>,
    /// Whether the client was shown any of the answer (a retry after that ends it).
    shown: bool,
    /// The names of the client's tools: the agent's other calls are run by the cluster
    /// (`providerExecuted`), so the client does not run them.
    client_tools: Vec<String>,
    /// Calls announced: each once (an approval announces its call before it is asked).
    announced: std::collections::HashSet<String>,
}

impl Translator {
    pub fn new(task_id: &str, client_tools: Vec<String>) -> Self {
        Self {
            client_tools,
            announced: Default::default(),
            task_id: task_id.to_owned(),
            text: None,
            reasoning: None,
            step_ended: false,
            pending: Vec::new(),
            shown: false,
        }
    }

    /// `start` (a new assistant message, unless the request continues the last one) and the
    /// first step.
    pub fn started(&self, continues: bool) -> Vec<Value> {
        let start = if continues {
            json!({"type": "start"})
        } else {
            json!({"type": "start", "messageId": self.task_id})
        };
        vec![start, json!({"type": "start-step"})]
    }

    fn error(&mut self, message: &str) -> Vec<Value> {
        let mut out = self.close();
        out.push(json!({"type": "error", "errorText": message}));
        out
    }

    /// Opens the next step when a tool's result ended the last one.
    fn step(&mut self, out: &mut Vec<Value>) {
        if std::mem::take(&mut self.step_ended) {
            out.push(json!({"type": "finish-step"}));
            out.push(json!({"type": "start-step"}));
        }
    }

    /// A call's id on the wire: unique in the chat (a worker numbers its own calls per task,
    /// and a continued message holds the calls of several tasks).
    fn call_id(&self, call_id: &str) -> String {
        format!("{}:{call_id}", self.task_id)
    }

    /// The chunks of a call's input, unless it was announced already.
    fn announce(&mut self, out: &mut Vec<Value>, call_id: &str, name: &str, arguments: &str) {
        if !self.announced.insert(call_id.to_owned()) {
            return;
        }
        self.step(out);
        out.extend(self.close());
        let wire = self.call_id(call_id);
        let input: Value = serde_json::from_str(arguments).unwrap_or(Value::Null);
        let ours = !self.client_tools.iter().any(|t| t == name);
        out.push(json!({"type": "tool-input-start", "toolCallId": wire, "toolName": name, "dynamic": true, "providerExecuted": ours}));
        out.push(
            json!({"type": "tool-input-delta", "toolCallId": wire, "inputTextDelta": arguments}),
        );
        out.push(json!({"type": "tool-input-available", "toolCallId": wire, "toolName": name, "input": input, "dynamic": true, "providerExecuted": ours}));
        if !ours {
            self.pending.push(wire);
        }
        self.shown = true;
    }

    fn close(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        if let Some(id) = self.text.take() {
            out.push(json!({"type": "text-end", "id": id}));
        }
        if let Some(id) = self.reasoning.take() {
            out.push(json!({"type": "reasoning-end", "id": id}));
        }
        out
    }
}

impl Translate for Translator {
    fn translate(&mut self, event: &TaskEvent) -> (Vec<Value>, Option<Ending>) {
        let id = format!("{}-{}", self.task_id, event.seq);
        let mut out = Vec::new();
        match &event.kind {
            EventKind::TextDelta { text, .. } if !text.is_empty() => {
                self.step(&mut out);
                if let Some(r) = self.reasoning.take() {
                    out.push(json!({"type": "reasoning-end", "id": r}));
                }
                let part = self.text.get_or_insert_with(|| {
                    out.push(json!({"type": "text-start", "id": id}));
                    id.clone()
                });
                out.push(json!({"type": "text-delta", "id": part, "delta": text}));
                self.shown = true;
            }
            EventKind::ReasoningDelta { text } if !text.is_empty() => {
                self.step(&mut out);
                if let Some(t) = self.text.take() {
                    out.push(json!({"type": "text-end", "id": t}));
                }
                let part = self.reasoning.get_or_insert_with(|| {
                    out.push(json!({"type": "reasoning-start", "id": id}));
                    id.clone()
                });
                out.push(json!({"type": "reasoning-delta", "id": part, "delta": text}));
                self.shown = true;
            }
            EventKind::ToolCall { call_id, name, arguments, .. } => {
                self.announce(&mut out, call_id, name, arguments);
            }
            // Declined (this stream cannot ask): an approval's call is shown, its refusal
            // comes as the call's error.
            EventKind::InputRequired { call_id, tool, arguments, .. } if !tool.is_empty() => {
                let call = call_id.strip_suffix("/input").unwrap_or(call_id);
                self.announce(&mut out, call, tool, arguments);
            }
            EventKind::ToolResult { call_id, output, is_error } => {
                out.extend(self.close());
                let wire = self.call_id(call_id);
                let call_id = &wire;
                if *is_error {
                    out.push(json!({"type": "tool-output-error", "toolCallId": call_id, "errorText": output, "dynamic": true, "providerExecuted": true}));
                } else {
                    // JSON output as JSON, anything else as its text.
                    let output = serde_json::from_str::<Value>(output)
                        .ok()
                        .filter(|v| v.is_object() || v.is_array())
                        .unwrap_or_else(|| Value::String(output.clone()));
                    out.push(json!({"type": "tool-output-available", "toolCallId": call_id, "output": output, "dynamic": true, "providerExecuted": true}));
                }
                self.pending.retain(|c| c != call_id);
                self.step_ended = true;
            }
            EventKind::StateSaved { state } => {
                let data = serde_json::from_str::<Value>(state).unwrap_or(Value::Null);
                out.push(json!({"type": "data-state", "id": "state", "data": data}));
            }
            EventKind::Artifact(artifact) => match &artifact.part {
                ArtifactPart::File(file) => {
                    use base64::Engine;
                    let url = if file.url.is_empty() {
                        let data = base64::engine::general_purpose::STANDARD.encode(&file.data);
                        format!("data:{};base64,{data}", file.media_type)
                    } else {
                        file.url.clone()
                    };
                    out.push(json!({"type": "file", "url": url, "mediaType": file.media_type}));
                }
                ArtifactPart::Data(data) => {
                    let data = serde_json::from_str::<Value>(data).unwrap_or(Value::Null);
                    out.push(json!({"type": "data-artifact", "id": artifact.id, "data": {
                        "name": artifact.name, "description": artifact.description, "data": data,
                    }}));
                }
            },
            EventKind::Retrying { reason, .. } if self.shown => {
                let message = format!(
                    "the task's worker was lost after part of the answer was sent ({reason}): \
                     send the message again"
                );
                return (self.error(&message), Some(Ending::Done));
            }
            EventKind::Completed { usage } => {
                out.extend(self.close());
                let reason = if usage.truncated {
                    "length"
                } else if self.pending.is_empty() {
                    "stop"
                } else {
                    "tool-calls"
                };
                out.push(json!({"type": "finish-step"}));
                out.push(json!({"type": "finish", "finishReason": reason, "messageMetadata": {"usage": {
                    "inputTokens": usage.prompt_tokens,
                    "cachedInputTokens": usage.cached_tokens,
                    "outputTokens": usage.completion_tokens,
                    "reasoningTokens": usage.reasoning_tokens,
                    "totalTokens": u64::from(usage.prompt_tokens) + u64::from(usage.completion_tokens),
                }}}));
                return (out, Some(Ending::Done));
            }
            EventKind::Failed { error, .. } => return (self.error(error), Some(Ending::Done)),
            EventKind::Canceled { reason } => {
                out.extend(self.close());
                out.push(json!({"type": "abort", "reason": reason}));
                return (out, Some(Ending::Done));
            }
            _ => {}
        }
        (out, None)
    }

    fn stopped(&mut self) -> Vec<Value> {
        self.error(
            "the task's events stopped before it ended (the head is shutting down, or the task \
             left retention): send the message again",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::Usage;

    fn event(seq: u64, kind: EventKind) -> TaskEvent {
        TaskEvent { task_id: fleet_proto::TaskId::new("t"), seq, attempt: 1, timestamp_us: 0, kind }
    }

    #[test]
    fn a_tool_step_then_text_then_finish() {
        let mut t = Translator::new("t", Vec::new());
        let mut all = t.started(false);
        let kinds = [
            EventKind::ToolCall {
                call_id: "c1".into(),
                name: "helper".into(),
                arguments: r#"{"input":"hi"}"#.into(),
                traceparent: String::new(),
                replayed: false,
            },
            EventKind::ToolResult { call_id: "c1".into(), output: "hi".into(), is_error: false },
            EventKind::TextDelta { text: "hi".into(), logprobs: Vec::new() },
            EventKind::Completed {
                usage: Usage { prompt_tokens: 2, completion_tokens: 1, ..Default::default() },
            },
        ];
        for (i, kind) in kinds.into_iter().enumerate() {
            all.extend(t.translate(&event(i as u64 + 3, kind)).0);
        }
        let types: Vec<&str> = all.iter().map(|c| c["type"].as_str().unwrap_or_default()).collect();
        assert_eq!(
            types,
            [
                "start",
                "start-step",
                "tool-input-start",
                "tool-input-delta",
                "tool-input-available",
                "tool-output-available",
                "finish-step",
                "start-step",
                "text-start",
                "text-delta",
                "text-end",
                "finish-step",
                "finish",
            ]
        );
        assert_eq!(all[4]["input"], json!({"input": "hi"}));
        assert_eq!(all[12]["finishReason"], "stop");
        assert_eq!(all[12]["messageMetadata"]["usage"]["totalTokens"], 3);
    }
}
