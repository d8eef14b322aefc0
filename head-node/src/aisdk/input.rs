//! The body `useChat`'s default transport sends (`{id, messages, trigger, messageId}`), its
//! UI messages read into a task's conversation: text parts as the turns' text, tool parts
//! that carry their output as the calls made and their results (a step at a time), and the
//! last user message as the input. A conversation that ends with the outputs of tool calls
//! (the client answered its own tools) is all history, for the agent to go on from.

use fleet_proto::{CallMade, Turn};
use serde_json::Value;

use crate::agui::input::turn;
use crate::openai::errors::ApiError;

/// A validated chat request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatInput {
    /// The chat's id (`id`): echoed in logs.
    pub chat_id: String,
    pub history: Vec<Turn>,
    pub input: String,
    /// The client's tools (an extension of ours: `tools` in the body, AG-UI's form), whose
    /// calls the client runs.
    pub tools: Vec<Value>,
    /// Whether the request continues the last assistant message (after tool outputs).
    pub continues: bool,
}

impl ChatInput {
    pub fn parse(body: &Value) -> Result<Self, ApiError> {
        let chat_id = match body.get("id") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(id)) => id.clone(),
            Some(_) => return Err(ApiError::invalid("id", "id must be a string")),
        };
        let Some(Value::Array(messages)) = body.get("messages") else {
            return Err(ApiError::invalid("messages", "messages is required: the chat's messages"));
        };
        let mut history = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            message(i, m, &mut history)?;
        }
        let last_role = messages.last().and_then(|m| m.get("role")).and_then(Value::as_str);
        let (input, continues) = match (last_role, history.last().map(|t| t.role.as_str())) {
            (None, _) => {
                return Err(ApiError::invalid(
                    "messages",
                    "messages is empty: send the chat, ending with the user's message",
                ));
            }
            (Some("user"), _) => (history.pop().map(|t| t.content).unwrap_or_default(), false),
            // The client's tool outputs close the chat: the agent answers them.
            (Some("assistant"), Some("tool")) => (String::new(), true),
            (Some("assistant"), _) => {
                return Err(ApiError::invalid(
                    format!("messages[{}]", messages.len() - 1),
                    "the last message is the assistant's and answers no tool call: end the chat \
                     with the user's message",
                ));
            }
            (Some(_), _) => (String::new(), false),
        };
        let tools = super::super::agui::input::tools(body.get("tools"))?;
        Ok(Self { chat_id, history, input, tools, continues })
    }
}

/// One UI message's turns, appended to `turns`.
fn message(i: usize, m: &Value, turns: &mut Vec<Turn>) -> Result<(), ApiError> {
    let at = |field: &str| format!("messages[{i}].{field}");
    let role = match m.get("role").and_then(Value::as_str) {
        Some(role @ ("system" | "user" | "assistant")) => role,
        _ => {
            return Err(ApiError::invalid(at("role"), "role must be system, user or assistant"));
        }
    };
    let Some(Value::Array(parts)) = m.get("parts") else {
        return Err(ApiError::invalid(
            at("parts"),
            format!("{} is required: an array", at("parts")),
        ));
    };
    // An assistant message is steps: text, then calls and their results, then more text.
    let mut current = turn(role, String::new());
    let mut results: Vec<Turn> = Vec::new();
    let flush = |current: &mut Turn, results: &mut Vec<Turn>, turns: &mut Vec<Turn>| {
        if !current.content.is_empty() || !current.tool_calls.is_empty() {
            turns.push(std::mem::replace(current, turn(role, String::new())));
        }
        turns.append(results);
    };
    for (j, part) in parts.iter().enumerate() {
        let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
        match kind {
            "text" => {
                if !results.is_empty() {
                    flush(&mut current, &mut results, turns);
                }
                let text = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::invalid(
                        format!("{}[{j}].text", at("parts")),
                        "a text part needs its text",
                    )
                })?;
                if !current.content.is_empty() {
                    current.content.push('\n');
                }
                current.content.push_str(text);
            }
            // What the model thought, where the UI shows its steps, or the app's data: not
            // part of the conversation a model reads.
            "reasoning" | "step-start" | "source-url" | "source-document" => {}
            _ if kind.starts_with("data-") => {}
            _ if role == "assistant" && (kind == "dynamic-tool" || kind.starts_with("tool-")) => {
                let field = |name: &str| part.get(name);
                let call_id = field("toolCallId").and_then(Value::as_str).unwrap_or_default();
                let name = match kind.strip_prefix("tool-") {
                    Some(name) => name,
                    None => field("toolName").and_then(Value::as_str).unwrap_or_default(),
                };
                let (output, is_error) = match field("state").and_then(Value::as_str) {
                    Some("output-available") => {
                        (field("output").cloned().unwrap_or(Value::Null), false)
                    }
                    Some("output-error") => (
                        field("errorText")
                            .cloned()
                            .unwrap_or(Value::String("the tool failed".into())),
                        true,
                    ),
                    Some("output-denied") => {
                        (Value::String("the user denied this call".into()), true)
                    }
                    // A call still waiting for its output (never answered): left out.
                    _ => continue,
                };
                if call_id.is_empty() || name.is_empty() {
                    return Err(ApiError::invalid(
                        format!("{}[{j}]", at("parts")),
                        "a tool part needs its toolCallId (and toolName when dynamic)",
                    ));
                }
                let arguments = match field("input") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => "{}".to_owned(),
                };
                current.tool_calls.push(CallMade {
                    id: call_id.to_owned(),
                    name: name.to_owned(),
                    arguments,
                });
                let text = match output {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                results.push(Turn {
                    tool_call_id: call_id.to_owned(),
                    is_error,
                    ..turn("tool", text)
                });
            }
            other => {
                return Err(ApiError::unsupported(
                    format!("{}[{j}].type", at("parts")),
                    format!("parts of type {other:?} are not read here: send text"),
                ));
            }
        }
    }
    flush(&mut current, &mut results, turns);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_last_user_message_is_the_input() -> Result<(), ApiError> {
        let body = json!({"id": "c", "messages": [
            {"id": "1", "role": "system", "parts": [{"type": "text", "text": "Be brief."}]},
            {"id": "2", "role": "user", "parts": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]},
        ]});
        let chat = ChatInput::parse(&body)?;
        assert_eq!(chat.input, "hi\nthere");
        assert_eq!(chat.history.len(), 1);
        assert!(!chat.continues);
        Ok(())
    }

    #[test]
    fn tool_steps_become_calls_and_results() -> Result<(), ApiError> {
        let body = json!({"messages": [
            {"id": "1", "role": "user", "parts": [{"type": "text", "text": "weather?"}]},
            {"id": "2", "role": "assistant", "parts": [
                {"type": "step-start"},
                {"type": "text", "text": "Looking."},
                {"type": "dynamic-tool", "toolName": "helper", "toolCallId": "c1", "state": "output-available", "input": {"q": 1}, "output": "done"},
                {"type": "step-start"},
                {"type": "text", "text": "It is done."},
                {"type": "tool-weather", "toolCallId": "c2", "state": "output-available", "input": {}, "output": {"sky": "clear"}},
            ]},
        ]});
        let chat = ChatInput::parse(&body)?;
        assert!(chat.continues && chat.input.is_empty());
        let roles: Vec<&str> = chat.history.iter().map(|t| t.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "tool", "assistant", "tool"]);
        assert_eq!(chat.history[1].tool_calls[0].arguments, r#"{"q":1}"#);
        assert_eq!(chat.history[4].content, r#"{"sky":"clear"}"#);
        Ok(())
    }

    #[test]
    fn rejections_name_the_field() {
        let param =
            |body: Value| ChatInput::parse(&body).err().and_then(|e| e.param).unwrap_or_default();
        assert_eq!(param(json!({})), "messages");
        assert_eq!(param(json!({"messages": []})), "messages");
        let file = json!({"messages": [{"role": "user", "parts": [{"type": "file", "url": "x", "mediaType": "image/png"}]}]});
        assert_eq!(param(file), "messages[0].parts[0].type");
        let answered =
            json!({"messages": [{"role": "assistant", "parts": [{"type": "text", "text": "hi"}]}]});
        assert_eq!(param(answered), "messages[0]");
    }
}
