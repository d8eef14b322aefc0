//! A task's events as ACP `session/update`s: its text and reasoning as message chunks, its
//! tool calls as `tool_call` and their results as `tool_call_update`, its artifacts as
//! resource content. The turn ([`super::turn`]) handles what needs an answer or ends it.

use std::collections::HashSet;

use base64::Engine as _;
use fleet_client::{Artifact, ArtifactPart, EventKind, TaskEvent};
use serde_json::{Value, json};

/// The updates of one prompt turn, each tool call announced once.
#[derive(Default)]
pub struct Translator {
    announced: HashSet<String>,
    /// Whether anything of the answer has been sent (a retry then cannot be hidden).
    pub shown: bool,
}

impl Translator {
    /// The updates `event` makes (none for the events the turn itself handles).
    pub fn updates(&mut self, event: &TaskEvent) -> Vec<Value> {
        let task = event.task_id.to_string();
        let out = match &event.kind {
            EventKind::TextDelta { text, .. } if !text.is_empty() => {
                vec![chunk("agent_message_chunk", json!({"type": "text", "text": text}))]
            }
            EventKind::ReasoningDelta { text } if !text.is_empty() => {
                vec![chunk("agent_thought_chunk", json!({"type": "text", "text": text}))]
            }
            EventKind::ToolCall { call_id, name, arguments, .. } => {
                self.announce(&task, call_id, name, arguments, "in_progress").into_iter().collect()
            }
            EventKind::ToolResult { call_id, output, is_error } => {
                let status = if *is_error { "failed" } else { "completed" };
                vec![json!({
                    "sessionUpdate": "tool_call_update",
                    "toolCallId": call_id_on_wire(&task, call_id),
                    "status": status,
                    "content": [{"type": "content", "content": {"type": "text", "text": output}}],
                    "rawOutput": output,
                })]
            }
            // An approval's answer: a refused call ends here (the agent hears the reason),
            // an allowed one runs.
            EventKind::InputReceived { call_id, text, rejected } => {
                match call_id.strip_suffix("/input").filter(|c| self.announced.contains(*c)) {
                    Some(call) => {
                        let mut update = json!({
                            "sessionUpdate": "tool_call_update",
                            "toolCallId": call_id_on_wire(&task, call),
                            "status": if *rejected { "failed" } else { "in_progress" },
                        });
                        if *rejected {
                            let reason = format!("rejected: {text}");
                            update["content"] = json!([{"type": "content", "content": {"type": "text", "text": reason}}]);
                        }
                        vec![update]
                    }
                    None => Vec::new(),
                }
            }
            EventKind::Artifact(artifact) => {
                vec![chunk("agent_message_chunk", artifact_block(&task, artifact))]
            }
            _ => Vec::new(),
        };
        self.shown |= !out.is_empty();
        out
    }

    /// The `tool_call` that shows a call, unless it was shown already (an approval shows its
    /// call before asking, and the call's own event comes after).
    pub fn announce(
        &mut self,
        task: &str,
        call_id: &str,
        name: &str,
        arguments: &str,
        status: &str,
    ) -> Option<Value> {
        if !self.announced.insert(call_id.to_owned()) {
            return None;
        }
        self.shown = true;
        Some(json!({
            "sessionUpdate": "tool_call",
            "toolCallId": call_id_on_wire(task, call_id),
            "title": name,
            "kind": "other",
            "status": status,
            "rawInput": raw_input(arguments),
        }))
    }
}

/// A call's id on the wire: a worker numbers its calls per task, and a session holds the
/// calls of many tasks.
pub fn call_id_on_wire(task: &str, call_id: &str) -> String {
    format!("{task}:{call_id}")
}

/// A call's arguments as JSON when they are (models sometimes write other text).
pub fn raw_input(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_owned()))
}

/// A content chunk update of `kind` (`agent_message_chunk`, `user_message_chunk`, ...).
pub fn chunk(kind: &str, content: Value) -> Value {
    json!({"sessionUpdate": kind, "content": content})
}

/// Media types whose bytes an editor can show as text.
fn is_text(media_type: &str) -> bool {
    media_type.starts_with("text/")
        || matches!(media_type, "application/json" | "application/xml" | "application/yaml")
        || media_type.ends_with("+json")
        || media_type.ends_with("+xml")
}

/// An artifact as a content block: JSON data and text files as embedded text, other files
/// as embedded bytes, a file known by its URL as a link.
fn artifact_block(task: &str, artifact: &Artifact) -> Value {
    let uri = format!("agentfleet://tasks/{task}/artifacts/{}", artifact.id);
    match &artifact.part {
        ArtifactPart::Data(json) => json!({
            "type": "resource",
            "resource": {"uri": uri, "mimeType": "application/json", "text": json},
        }),
        ArtifactPart::File(file) if !file.url.is_empty() => {
            let name = if file.name.is_empty() { &artifact.name } else { &file.name };
            let mut link = json!({"type": "resource_link", "name": name, "uri": file.url});
            if !file.media_type.is_empty() {
                link["mimeType"] = json!(file.media_type);
            }
            link
        }
        ArtifactPart::File(file) => {
            let media_type = if file.media_type.is_empty() {
                "application/octet-stream"
            } else {
                &file.media_type
            };
            let resource = match std::str::from_utf8(&file.data) {
                Ok(text) if is_text(media_type) => {
                    json!({"uri": uri, "mimeType": media_type, "text": text})
                }
                _ => json!({
                    "uri": uri,
                    "mimeType": media_type,
                    "blob": base64::engine::general_purpose::STANDARD.encode(&file.data),
                }),
            };
            json!({"type": "resource", "resource": resource})
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fleet_client::FilePart;

    use super::*;

    fn event(kind: EventKind) -> TaskEvent {
        TaskEvent {
            task_id: fleet_client::TaskId::new("t1"),
            seq: 5,
            attempt: 1,
            timestamp_us: 0,
            kind,
        }
    }

    fn kinds(updates: &[Value]) -> Vec<&str> {
        updates.iter().filter_map(|u| u["sessionUpdate"].as_str()).collect()
    }

    #[test]
    fn text_and_reasoning_are_chunks() {
        let mut t = Translator::default();
        let text = t.updates(&event(EventKind::TextDelta { text: "hi".into(), logprobs: vec![] }));
        assert_eq!(
            text,
            [
                json!({"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "hi"}})
            ]
        );
        let thought = t.updates(&event(EventKind::ReasoningDelta { text: "hm".into() }));
        assert_eq!(kinds(&thought), ["agent_thought_chunk"]);
        assert!(t.shown);
    }

    #[test]
    fn a_call_is_announced_once_and_its_result_ends_it() {
        let mut t = Translator::default();
        // An approval shows the call before asking; the call's own event then adds nothing.
        let first = t.announce("t1", "c1", "add", r#"{"a":1}"#, "pending");
        assert_eq!(first.map(|u| u["toolCallId"].clone()), Some(json!("t1:c1")));
        let call = EventKind::ToolCall {
            call_id: "c1".into(),
            name: "add".into(),
            arguments: r#"{"a":1}"#.into(),
            traceparent: String::new(),
            replayed: false,
        };
        assert!(t.updates(&event(call)).is_empty());
        let result = t.updates(&event(EventKind::ToolResult {
            call_id: "c1".into(),
            output: "2".into(),
            is_error: false,
        }));
        assert_eq!(result[0]["status"], "completed");
        assert_eq!(result[0]["content"][0]["content"]["text"], "2");
        let refused = EventKind::InputReceived {
            call_id: "c1/input".into(),
            text: "no".into(),
            rejected: true,
        };
        assert_eq!(t.updates(&event(refused))[0]["status"], "failed");
    }

    #[test]
    fn arguments_that_are_not_json_stay_text() {
        assert_eq!(raw_input(r#"{"x":2}"#), json!({"x": 2}));
        assert_eq!(raw_input("x=2"), json!("x=2"));
    }

    #[test]
    fn artifacts_are_resources() {
        let mut t = Translator::default();
        let data = Artifact {
            id: "a1".into(),
            name: "r".into(),
            description: String::new(),
            part: ArtifactPart::Data("{\"k\":1}".into()),
        };
        let out = t.updates(&event(EventKind::Artifact(Arc::new(data))));
        assert_eq!(out[0]["content"]["resource"]["text"], "{\"k\":1}");
        assert_eq!(out[0]["content"]["resource"]["uri"], "agentfleet://tasks/t1/artifacts/a1");
        let file = |media: &str, data: &[u8], url: &str| Artifact {
            id: "f".into(),
            name: "f.bin".into(),
            description: String::new(),
            part: ArtifactPart::File(FilePart {
                name: "f.bin".into(),
                media_type: media.into(),
                data: data.to_vec(),
                url: url.into(),
            }),
        };
        let png =
            t.updates(&event(EventKind::Artifact(Arc::new(file("image/png", &[0x89, 0x50], "")))));
        assert_eq!(png[0]["content"]["resource"]["blob"], "iVA=");
        let text =
            t.updates(&event(EventKind::Artifact(Arc::new(file("text/plain", b"hello", "")))));
        assert_eq!(text[0]["content"]["resource"]["text"], "hello");
        let link = t.updates(&event(EventKind::Artifact(Arc::new(file(
            "image/png",
            &[],
            "https://x/y.png",
        )))));
        assert_eq!(
            link[0]["content"],
            json!({"type": "resource_link", "name": "f.bin", "uri": "https://x/y.png", "mimeType": "image/png"})
        );
    }
}
