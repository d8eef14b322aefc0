//! AG-UI's `RunAgentInput`, validated into a task's parts: the conversation the client
//! holds (every run carries it whole), the frontend tools it declares, its context, and the
//! answer to the interrupt a run resumes from. Every rejection names the field at fault in
//! AG-UI's own spelling (`messages[2].toolCalls`).

use fleet_proto::{CallMade, Reply, Turn};
use serde_json::{Value, json};

use crate::openai::errors::ApiError;

/// Tools one request may declare (as the OpenAI door).
const MAX_TOOLS: usize = 128;

/// A validated `RunAgentInput`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInput {
    pub thread_id: String,
    pub run_id: String,
    pub parent_run_id: Option<String>,
    /// Every message before the last one, the context first (as a system message).
    pub history: Vec<Turn>,
    /// The last message when it is the user's: what the agent answers.
    pub input: String,
    /// The frontend tools, in the OpenAI form the workers take: the agent's calls of them
    /// end the run for the client to answer in its next one.
    pub tools: Vec<Value>,
    /// The answer to the interrupt this run continues from.
    pub resume: Option<Resume>,
}

/// A `resume` entry: the answer to one interrupt.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    pub interrupt: InterruptId,
    pub reply: Reply,
    /// The client cancelled the interrupt (`status: "cancelled"`) rather than answer it.
    pub cancelled: bool,
}

/// An interrupt's id: the task that waits and the seq of its `InputRequired`, so that a
/// later request (to any head of the cluster) finds both without state of the door's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterruptId {
    pub task_id: String,
    pub seq: u64,
}

impl InterruptId {
    pub fn to_wire(&self) -> String {
        format!("{}@{}", self.task_id, self.seq)
    }

    fn parse(s: &str) -> Option<Self> {
        let (task_id, seq) = s.rsplit_once('@')?;
        let seq = seq.parse().ok().filter(|&seq| seq > 0)?;
        (!task_id.is_empty()).then(|| Self { task_id: task_id.to_owned(), seq })
    }
}

impl RunInput {
    pub fn parse(body: &Value) -> Result<Self, ApiError> {
        let thread_id = required_string(body, "threadId")?;
        let run_id = required_string(body, "runId")?;
        let parent_run_id = optional_string(body, "parentRunId")?;
        let resume = resume(body.get("resume"))?;
        let mut history = context(body.get("context"))?;
        let mut messages = messages(body.get("messages"))?;
        let input = match messages.last().map(|m| m.role.as_str()) {
            // A resumed run goes on with the task's own conversation.
            _ if resume.is_some() => String::new(),
            None => {
                return Err(ApiError::invalid(
                    "messages",
                    "messages is empty: send the conversation, ending with the user's message",
                ));
            }
            Some("user") => messages.pop().map(|m| m.content).unwrap_or_default(),
            Some("assistant") => {
                return Err(ApiError::invalid(
                    format!("messages[{}].role", messages.len() - 1),
                    "the last message is the assistant's: end the conversation with a user or \
                     tool message for the agent to answer",
                ));
            }
            // A tool's result (of a frontend tool) or a system message: all history.
            Some(_) => String::new(),
        };
        history.append(&mut messages);
        Ok(Self {
            thread_id,
            run_id,
            parent_run_id,
            history,
            input,
            tools: tools(body.get("tools"))?,
            resume,
        })
    }
}

fn required_string(body: &Value, field: &str) -> Result<String, ApiError> {
    match body.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(ApiError::invalid(field, format!("{field} is required: a non-empty string"))),
    }
}

fn optional_string(body: &Value, field: &str) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(field, format!("{field} must be a string"))),
    }
}

/// `context` as one system message at the start (none when empty).
fn context(value: Option<&Value>) -> Result<Vec<Turn>, ApiError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ApiError::invalid("context", "context must be an array")),
    };
    let mut text = String::new();
    for (i, item) in items.iter().enumerate() {
        let field = |name: &str| item.get(name).and_then(Value::as_str);
        let (Some(description), Some(value)) = (field("description"), field("value")) else {
            return Err(ApiError::invalid(
                format!("context[{i}]"),
                format!("context[{i}] needs description and value, both strings"),
            ));
        };
        if text.is_empty() {
            text.push_str("Context from the application:");
        }
        text.push_str(&format!("\n- {description}: {value}"));
    }
    Ok(if text.is_empty() { Vec::new() } else { vec![turn("system", text)] })
}

/// A turn of `role` saying `content`.
pub(crate) fn turn(role: &str, content: String) -> Turn {
    Turn {
        role: role.to_owned(),
        content,
        tool_calls: Vec::new(),
        tool_call_id: String::new(),
        is_error: false,
    }
}

fn messages(value: Option<&Value>) -> Result<Vec<Turn>, ApiError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ApiError::invalid("messages", "messages must be an array")),
    };
    let mut turns = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        if let Some(t) = message(i, m)? {
            turns.push(t);
        }
    }
    Ok(turns)
}

/// One message as a turn; `None` for what a model does not read (the UI's activity
/// messages, and reasoning the model already did).
fn message(i: usize, m: &Value) -> Result<Option<Turn>, ApiError> {
    let at = |field: &str| format!("messages[{i}].{field}");
    if !m.is_object() {
        return Err(ApiError::invalid(format!("messages[{i}]"), "each message is an object"));
    }
    let role = match m.get("role").and_then(Value::as_str) {
        Some("system" | "developer") => "system",
        Some(role @ ("user" | "assistant" | "tool")) => role,
        Some("activity" | "reasoning") => return Ok(None),
        Some(other) => {
            return Err(ApiError::invalid(
                at("role"),
                format!(
                    "unknown role {other:?}: use developer, system, user, assistant, tool, \
                     activity or reasoning"
                ),
            ));
        }
        None => return Err(ApiError::invalid(at("role"), format!("{} is required", at("role")))),
    };
    let mut content = match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => text_parts(&at("content"), parts)?,
        None | Some(Value::Null) if role == "assistant" => String::new(),
        _ => {
            return Err(ApiError::invalid(
                at("content"),
                format!("{} is required: a string or an array of text parts", at("content")),
            ));
        }
    };
    let mut t = turn(role, String::new());
    match role {
        "assistant" => t.tool_calls = tool_calls(&at("toolCalls"), m.get("toolCalls"))?,
        "tool" => {
            let Some(id) = m.get("toolCallId").and_then(Value::as_str) else {
                return Err(ApiError::invalid(
                    at("toolCallId"),
                    format!("{} is required on a tool message", at("toolCallId")),
                ));
            };
            t.tool_call_id = id.to_owned();
            // A failed frontend tool: its error is what the model reads.
            if let Some(error) = m.get("error").and_then(Value::as_str) {
                t.is_error = true;
                if content.is_empty() {
                    content = error.to_owned();
                }
            }
        }
        _ => {}
    }
    t.content = content;
    Ok(Some(t))
}

/// The text of a content array: text parts joined by newlines; media parts are refused
/// (the cluster's models read text).
fn text_parts(at: &str, parts: &[Value]) -> Result<String, ApiError> {
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        match (part.get("type").and_then(Value::as_str), part.get("text")) {
            (Some("text"), Some(Value::String(text))) => texts.push(text.as_str()),
            (Some("text"), _) => {
                return Err(ApiError::invalid(
                    format!("{at}[{j}].text"),
                    "a text part needs its text",
                ));
            }
            (kind, _) => {
                return Err(ApiError::unsupported(
                    format!("{at}[{j}].type"),
                    format!(
                        "content parts of type {} are not read here: send text",
                        kind.map_or_else(|| "(none)".to_owned(), |k| format!("{k:?}"))
                    ),
                ));
            }
        }
    }
    Ok(texts.join("\n"))
}

fn tool_calls(at: &str, value: Option<&Value>) -> Result<Vec<CallMade>, ApiError> {
    let calls = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(calls)) => calls,
        Some(_) => return Err(ApiError::invalid(at, format!("{at} must be an array"))),
    };
    calls
        .iter()
        .enumerate()
        .map(|(j, call)| {
            let field = |path: &str| call.pointer(path).and_then(Value::as_str);
            match (field("/id"), field("/function/name"), field("/function/arguments")) {
                (Some(id), Some(name), Some(arguments)) => Ok(CallMade {
                    id: id.to_owned(),
                    name: name.to_owned(),
                    arguments: arguments.to_owned(),
                }),
                _ => Err(ApiError::invalid(
                    format!("{at}[{j}]"),
                    format!(
                        "{at}[{j}] needs id, function.name and function.arguments (a JSON string)"
                    ),
                )),
            }
        })
        .collect()
}

/// The frontend tools in OpenAI's form (`{"type": "function", "function": {...}}`).
pub(crate) fn tools(value: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ApiError::invalid("tools", "tools must be an array of tools")),
    };
    if items.len() > MAX_TOOLS {
        return Err(ApiError::invalid("tools", format!("at most {MAX_TOOLS} tools per run")));
    }
    let mut names: Vec<&str> = Vec::with_capacity(items.len());
    let mut tools = Vec::with_capacity(items.len());
    for (i, tool) in items.iter().enumerate() {
        let at = |field: &str| format!("tools[{i}].{field}");
        let name = tool.get("name").and_then(Value::as_str).unwrap_or_default();
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if name.is_empty() || name.len() > 64 || !name.chars().all(valid) {
            return Err(ApiError::invalid(
                at("name"),
                "a tool's name is 1 to 64 letters, digits, underscores or dashes",
            ));
        }
        if names.contains(&name) {
            return Err(ApiError::invalid(at("name"), format!("two tools are named {name:?}")));
        }
        names.push(name);
        let description = match tool.get("description") {
            None | Some(Value::Null) => "",
            Some(Value::String(d)) => d,
            Some(_) => return Err(ApiError::invalid(at("description"), "must be a string")),
        };
        let parameters = match tool.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err(ApiError::invalid(
                    at("parameters"),
                    "parameters must be a JSON Schema object",
                ));
            }
        };
        tools.push(json!({
            "type": "function",
            "function": {"name": name, "description": description, "parameters": parameters},
        }));
    }
    Ok(tools)
}

/// `resume`: at most one entry, since a run of ours ends on its first interrupt.
fn resume(value: Option<&Value>) -> Result<Option<Resume>, ApiError> {
    let entries = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err(ApiError::invalid("resume", "resume must be an array")),
    };
    let entry = match entries.as_slice() {
        [] => return Ok(None),
        [entry] => entry,
        _ => {
            return Err(ApiError::invalid(
                "resume",
                "resume answers one interrupt here (a run ends on its first): send one entry",
            ));
        }
    };
    let interrupt =
        entry.get("interruptId").and_then(Value::as_str).and_then(InterruptId::parse).ok_or_else(
            || {
                ApiError::invalid(
                    "resume[0].interruptId",
                    "resume[0].interruptId must be the id of the interrupt that ended the last run",
                )
            },
        )?;
    let status = entry.get("status").and_then(Value::as_str);
    let reply = match status {
        Some("cancelled") => Reply::Reject("the user cancelled the request".into()),
        Some("resolved") => answer(entry.get("payload"))?,
        _ => {
            return Err(ApiError::invalid(
                "resume[0].status",
                "resume[0].status must be \"resolved\" or \"cancelled\"",
            ));
        }
    };
    Ok(Some(Resume { interrupt, reply, cancelled: status == Some("cancelled") }))
}

/// A resolved interrupt's payload as our reply: `true`/`false` or `{"approved": bool,
/// "reason"?}` for an approval, a string (or `{"answer": string}`) for a question.
fn answer(payload: Option<&Value>) -> Result<Reply, ApiError> {
    let reason = |p: &Value| {
        p.get("reason").and_then(Value::as_str).unwrap_or("the user refused").to_owned()
    };
    Ok(match payload {
        Some(Value::Bool(true)) => Reply::Approve,
        Some(Value::Bool(false)) => Reply::Reject("the user refused".into()),
        Some(Value::String(text)) => Reply::Text(text.clone()),
        Some(p @ Value::Object(o)) => match (o.get("approved"), o.get("answer")) {
            (Some(Value::Bool(true)), _) => Reply::Approve,
            (Some(Value::Bool(false)), _) => Reply::Reject(reason(p)),
            (_, Some(Value::String(text))) => Reply::Text(text.clone()),
            _ => Reply::Text(p.to_string()),
        },
        Some(Value::Null) | None => {
            return Err(ApiError::invalid(
                "resume[0].payload",
                "a resolved interrupt needs its payload: the answer (a string), or for an \
                 approval true, false or {\"approved\": bool, \"reason\": string}",
            ));
        }
        Some(other) => Reply::Text(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        json!({"threadId": "t1", "runId": "r1", "messages": [
            {"id": "1", "role": "developer", "content": "Be brief."},
            {"id": "2", "role": "user", "content": "hi"},
        ]})
    }

    #[test]
    fn the_last_user_message_is_the_input_and_the_rest_history() -> Result<(), ApiError> {
        let mut body = base();
        body["context"] = json!([{"description": "page", "value": "/cart"}]);
        let run = RunInput::parse(&body)?;
        assert_eq!(run.input, "hi");
        assert_eq!(run.history.len(), 2);
        assert_eq!(run.history[0].content, "Context from the application:\n- page: /cart");
        assert_eq!(
            (run.history[1].role.as_str(), run.history[1].content.as_str()),
            ("system", "Be brief.")
        );
        Ok(())
    }

    #[test]
    fn a_frontend_tools_result_is_answered_as_history() -> Result<(), ApiError> {
        let body = json!({"threadId": "t", "runId": "r", "messages": [
            {"id": "1", "role": "user", "content": [{"type": "text", "text": "weather?"}]},
            {"id": "2", "role": "assistant", "toolCalls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
            {"id": "3", "role": "tool", "toolCallId": "c1", "content": "", "error": "offline"},
            {"id": "4", "role": "activity", "activityType": "x", "content": {}},
        ], "tools": [{"name": "weather", "description": "the weather"}]});
        let run = RunInput::parse(&body)?;
        assert_eq!(run.input, "");
        assert_eq!(run.history.len(), 3);
        assert_eq!(run.history[1].tool_calls[0].name, "weather");
        assert!(run.history[2].is_error);
        assert_eq!(run.history[2].content, "offline");
        assert_eq!(run.tools[0]["function"]["parameters"]["type"], "object");
        Ok(())
    }

    #[test]
    fn rejections_name_the_field() {
        let param =
            |body: Value| RunInput::parse(&body).err().and_then(|e| e.param).unwrap_or_default();
        let mut body = base();
        body["threadId"] = json!("");
        assert_eq!(param(body), "threadId");
        let mut body = base();
        body["messages"][1]["content"] = json!([{"type": "image", "source": {}}]);
        assert_eq!(param(body), "messages[1].content[0].type");
        let mut body = base();
        body["tools"] = json!([{"name": "a b"}]);
        assert_eq!(param(body), "tools[0].name");
        let mut body = base();
        body["messages"][1]["role"] = json!("assistant");
        assert_eq!(param(body), "messages[1].role");
        let mut body = base();
        body["resume"] = json!([{"interruptId": "nope", "status": "resolved", "payload": true}]);
        assert_eq!(param(body), "resume[0].interruptId");
        let mut body = base();
        body["resume"] = json!([{"interruptId": "t-1@4", "status": "resolved"}]);
        assert_eq!(param(body), "resume[0].payload");
    }

    #[test]
    fn resume_entries_become_replies() {
        let reply = |status: &str, payload: Value| {
            let mut body = base();
            body["resume"] =
                json!([{"interruptId": "task-9@12", "status": status, "payload": payload}]);
            let resume = RunInput::parse(&body).ok().and_then(|run| run.resume);
            let interrupt = InterruptId { task_id: "task-9".into(), seq: 12 };
            assert_eq!(resume.as_ref().map(|r| &r.interrupt), Some(&interrupt));
            resume.map_or(Reply::Text("no resume".into()), |r| r.reply)
        };
        assert_eq!(reply("resolved", json!(true)), Reply::Approve);
        assert_eq!(
            reply("resolved", json!({"approved": false, "reason": "no"})),
            Reply::Reject("no".into())
        );
        assert_eq!(reply("resolved", json!("Paris")), Reply::Text("Paris".into()));
        assert_eq!(reply("resolved", json!({"answer": "Rome"})), Reply::Text("Rome".into()));
        assert!(matches!(reply("cancelled", Value::Null), Reply::Reject(_)));
    }
}
