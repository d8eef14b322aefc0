//! A `POST /v1/responses` body read as the chat request it amounts to: `instructions` and
//! `input` become messages, the flat function tools and `text.format` take chat's shapes,
//! and [`ChatRequest::parse`] validates the rest. Errors name the Responses field at fault
//! (`input[2].content`, `text.format.schema`, `max_output_tokens`), not the chat one.

use serde_json::{Map, Value, json};

use super::super::errors::ApiError;
use super::super::wire::ChatRequest;

/// The include that asks for the answer's logprobs.
const INCLUDE_LOGPROBS: &str = "message.output_text.logprobs";

/// A validated Responses request and what its response object repeats back.
#[derive(Debug, Clone)]
pub struct ResponsesRequest {
    pub chat: ChatRequest,
    /// Fields every response object (and stream event) carries as sent: `instructions`,
    /// `tools`, `tool_choice`, `text`, `metadata`, ...
    pub echo: Map<String, Value>,
    /// Whether the answer's text parts carry logprobs (`include`).
    pub logprobs: bool,
}

impl ResponsesRequest {
    pub fn parse(body: &Value) -> Result<Self, ApiError> {
        let Value::Object(b) = body else {
            return Err(ApiError::malformed("the body must be a JSON object"));
        };
        refuse_unsupported(b)?;
        let mut chat = Map::new();
        // The chat message at each index came from this Responses field.
        let mut origin = Vec::new();
        let mut messages = Vec::new();
        match b.get("instructions") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                messages.push(json!({"role": "system", "content": s}));
                origin.push("instructions".to_owned());
            }
            Some(_) => return Err(ApiError::invalid("instructions", "instructions must be text")),
        }
        match b.get("input") {
            Some(Value::String(s)) => {
                messages.push(json!({"role": "user", "content": s}));
                origin.push("input".to_owned());
            }
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    input_item(i, item, &mut messages, &mut origin)?;
                }
            }
            None | Some(Value::Null) => {
                return Err(ApiError::invalid(
                    "input",
                    "input is required: text, or an array of messages and tool call items",
                ));
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "input",
                    "input must be text or an array of messages and tool call items",
                ));
            }
        }
        chat.insert("messages".into(), Value::Array(messages));
        for name in ["model", "temperature", "top_p", "stream", "seed", "parallel_tool_calls"] {
            if let Some(v) = b.get(name).filter(|v| !v.is_null()) {
                chat.insert(name.into(), v.clone());
            }
        }
        if let Some(v) = b.get("max_output_tokens").filter(|v| !v.is_null()) {
            chat.insert("max_tokens".into(), v.clone());
        }
        if let Some(tools) = b.get("tools").filter(|v| !v.is_null()) {
            chat.insert("tools".into(), chat_tools(tools)?);
        }
        if let Some(choice) = b.get("tool_choice").filter(|v| !v.is_null()) {
            chat.insert("tool_choice".into(), chat_tool_choice(choice)?);
        }
        if let Some(text) = b.get("text").filter(|v| !v.is_null())
            && let Some(format) = chat_format(text)?
        {
            chat.insert("response_format".into(), format);
        }
        let logprobs = includes_logprobs(b.get("include"))?;
        if logprobs {
            chat.insert("logprobs".into(), Value::Bool(true));
            if let Some(top) = b.get("top_logprobs").filter(|v| !v.is_null()) {
                chat.insert("top_logprobs".into(), top.clone());
            }
        }
        let mut chat = ChatRequest::parse(&Value::Object(chat)).map_err(|e| renamed(e, &origin))?;
        let effort = b.get("reasoning").and_then(|r| r.get("effort"));
        chat.sampling.thinking = super::super::wire::reasoning_effort(effort, "reasoning.effort")?;
        let mut echo = Map::new();
        for name in ["instructions", "max_output_tokens", "temperature", "top_p", "user"] {
            echo.insert(name.into(), b.get(name).cloned().unwrap_or(Value::Null));
        }
        echo.insert("tools".into(), b.get("tools").cloned().unwrap_or_else(|| json!([])));
        echo.insert("tool_choice".into(), b.get("tool_choice").cloned().unwrap_or(json!("auto")));
        echo.insert("parallel_tool_calls".into(), Value::Bool(chat.parallel_tool_calls));
        echo.insert(
            "text".into(),
            b.get("text").cloned().unwrap_or_else(|| json!({"format": {"type": "text"}})),
        );
        echo.insert("metadata".into(), b.get("metadata").cloned().unwrap_or_else(|| json!({})));
        echo.insert("top_logprobs".into(), b.get("top_logprobs").cloned().unwrap_or(json!(0)));
        echo.insert("truncation".into(), json!("disabled"));
        // Responses are not kept: every request carries its whole conversation.
        echo.insert("store".into(), Value::Bool(false));
        echo.insert("previous_response_id".into(), Value::Null);
        echo.insert("background".into(), Value::Bool(false));
        let effort = effort.cloned().unwrap_or(Value::Null);
        echo.insert("reasoning".into(), json!({"effort": effort, "summary": null}));
        Ok(Self { chat, echo, logprobs })
    }
}

/// Fields whose feature this server lacks: a 400 saying what to do instead.
fn refuse_unsupported(b: &Map<String, Value>) -> Result<(), ApiError> {
    let set = |name: &str| b.get(name).is_some_and(|v| !v.is_null() && v != &Value::Bool(false));
    if set("previous_response_id") {
        return Err(ApiError::unsupported(
            "previous_response_id",
            "this server does not keep responses: send the whole conversation as input (earlier \
             output items included)",
        ));
    }
    if set("conversation") {
        return Err(ApiError::unsupported(
            "conversation",
            "this server does not keep conversations: send the whole conversation as input",
        ));
    }
    if set("background") {
        return Err(ApiError::unsupported(
            "background",
            "background responses are not offered: stream the response, or submit a task over \
             A2A and poll it",
        ));
    }
    if set("prompt") {
        return Err(ApiError::unsupported(
            "prompt",
            "stored prompts are not offered: send instructions and input",
        ));
    }
    Ok(())
}

/// One `input` item appended as chat messages: a message (its text parts joined), a
/// `function_call` (merged into the assistant message before it), or a
/// `function_call_output` (a tool message). Reasoning items are dropped.
fn input_item(
    i: usize,
    item: &Value,
    messages: &mut Vec<Value>,
    origin: &mut Vec<String>,
) -> Result<(), ApiError> {
    let at = |field: &str| format!("input[{i}].{field}");
    let Value::Object(m) = item else {
        return Err(ApiError::invalid(format!("input[{i}]"), "each input item must be an object"));
    };
    let kind = match m.get("type") {
        None | Some(Value::Null) => "message",
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Err(ApiError::invalid(at("type"), "type must be text")),
    };
    let string = |field: &str| match m.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(ApiError::invalid(at(field), format!("{} is required: text", at(field)))),
    };
    match kind {
        "message" => {
            let role = match m.get("role").and_then(Value::as_str) {
                Some(role @ ("user" | "assistant" | "system")) => role,
                Some("developer") => "system",
                Some(other) => {
                    return Err(ApiError::invalid(
                        at("role"),
                        format!("unknown role {other:?}: use user, assistant, system or developer"),
                    ));
                }
                None => {
                    return Err(ApiError::invalid(
                        at("role"),
                        format!("{} is required", at("role")),
                    ));
                }
            };
            let content = content_text(&at("content"), m.get("content"))?;
            messages.push(json!({"role": role, "content": content}));
            origin.push(format!("input[{i}]"));
        }
        "function_call" => {
            let call = json!({
                "id": string("call_id")?,
                "type": "function",
                "function": {"name": string("name")?, "arguments": string("arguments")?},
            });
            let last = messages.last_mut().filter(|m| m["role"] == "assistant");
            match last.and_then(|m| m.as_object_mut()) {
                Some(assistant) => {
                    let calls = assistant.entry("tool_calls").or_insert_with(|| json!([]));
                    if let Some(calls) = calls.as_array_mut() {
                        calls.push(call);
                    }
                }
                None => {
                    messages
                        .push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
                    origin.push(format!("input[{i}]"));
                }
            }
        }
        "function_call_output" => {
            let output = match m.get("output") {
                Some(Value::String(s)) => s.clone(),
                parts @ Some(Value::Array(_)) => content_text(&at("output"), parts)?,
                _ => {
                    return Err(ApiError::invalid(
                        at("output"),
                        format!("{} is required: the call's result as text", at("output")),
                    ));
                }
            };
            messages.push(
                json!({"role": "tool", "tool_call_id": string("call_id")?, "content": output}),
            );
            origin.push(format!("input[{i}]"));
        }
        // A reasoning model's thoughts, sent back by clients that replay whole outputs:
        // this server's models do not read them.
        "reasoning" => {}
        "item_reference" => {
            return Err(ApiError::unsupported(
                at("type"),
                "this server does not keep items: send the item itself instead of a reference",
            ));
        }
        other => {
            return Err(ApiError::invalid(
                at("type"),
                format!(
                    "unknown input item type {other:?}: send message, function_call or \
                     function_call_output items"
                ),
            ));
        }
    }
    Ok(())
}

/// A message's content as text: a string, or text parts (`input_text`, `output_text`,
/// `refusal`) joined. Images and files are refused: the models here read text.
fn content_text(at: &str, content: Option<&Value>) -> Result<String, ApiError> {
    let parts = match content {
        Some(Value::String(s)) => return Ok(s.clone()),
        Some(Value::Array(parts)) => parts,
        _ => {
            return Err(ApiError::invalid(at, format!("{at} is required: text or text parts")));
        }
    };
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let at = format!("{at}[{j}]");
        let kind = part.get("type").and_then(Value::as_str);
        let field = match kind {
            Some("input_text" | "output_text" | "text") => "text",
            Some("refusal") => "refusal",
            Some("input_image" | "input_file" | "input_audio") => {
                return Err(ApiError::unsupported(
                    format!("{at}.type"),
                    "this server's models read text only: send the content as input_text",
                ));
            }
            _ => {
                return Err(ApiError::invalid(
                    format!("{at}.type"),
                    "each content part must be input_text (or output_text from an earlier answer)",
                ));
            }
        };
        match part.get(field) {
            Some(Value::String(s)) => text.push_str(s),
            _ => {
                return Err(ApiError::invalid(
                    format!("{at}.{field}"),
                    format!("{at}.{field} is required: text"),
                ));
            }
        }
    }
    Ok(text)
}

/// Responses' flat function tools (`{type, name, description, parameters, strict}`) in
/// chat's nested shape.
fn chat_tools(tools: &Value) -> Result<Value, ApiError> {
    let Value::Array(tools) = tools else {
        return Err(ApiError::invalid("tools", "tools must be an array of function tools"));
    };
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        match tool.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(other) => {
                return Err(ApiError::unsupported(
                    format!("tools[{i}].type"),
                    format!(
                        "tools of type {other:?} are not offered: give function tools, which \
                         the client runs"
                    ),
                ));
            }
            None => {
                return Err(ApiError::invalid(
                    format!("tools[{i}].type"),
                    format!("tools[{i}].type is required: \"function\""),
                ));
            }
        }
        let mut function = Map::new();
        for field in ["name", "description", "parameters", "strict"] {
            if let Some(v) = tool.get(field).filter(|v| !v.is_null()) {
                function.insert(field.into(), v.clone());
            }
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(Value::Array(out))
}

/// `tool_choice`: the strings as they are, `{type: "function", name}` in chat's shape.
fn chat_tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(_) => Ok(choice.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            match o.get("name") {
                Some(Value::String(name)) => {
                    Ok(json!({"type": "function", "function": {"name": name}}))
                }
                _ => Err(ApiError::invalid(
                    "tool_choice.name",
                    "tool_choice.name is required: the function to call",
                )),
            }
        }
        _ => Err(ApiError::unsupported(
            "tool_choice",
            "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \
             \"name\": ...}",
        )),
    }
}

/// `text.format` as chat's `response_format`; `None` for plain text.
fn chat_format(text: &Value) -> Result<Option<Value>, ApiError> {
    let Value::Object(text) = text else {
        return Err(ApiError::invalid("text", "text must be an object with a format"));
    };
    let Some(format) = text.get("format").filter(|f| !f.is_null()) else { return Ok(None) };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut spec = Map::new();
            for field in ["name", "description", "schema", "strict"] {
                if let Some(v) = format.get(field) {
                    spec.insert(field.into(), v.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": spec})))
        }
        _ => Err(ApiError::invalid(
            "text.format.type",
            "text.format.type must be \"text\", \"json_object\" or \"json_schema\"",
        )),
    }
}

/// Whether `include` asks for the answer's logprobs; the other includes concern features
/// these models lack and change nothing.
fn includes_logprobs(include: Option<&Value>) -> Result<bool, ApiError> {
    match include {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Array(items)) => Ok(items.iter().any(|i| i == INCLUDE_LOGPROBS)),
        Some(_) => Err(ApiError::invalid("include", "include must be an array of strings")),
    }
}

/// A chat request's error named in Responses' terms.
fn renamed(mut e: ApiError, origin: &[String]) -> ApiError {
    let Some(param) = e.param.take() else { return e };
    let mut renamed = param.clone();
    if let Some(rest) = param.strip_prefix("messages[") {
        // messages[k].x → the input item message k came from.
        if let Some((k, tail)) = rest.split_once(']') {
            let from = k.parse::<usize>().ok().and_then(|k| origin.get(k));
            renamed = format!("{}{tail}", from.map_or("input", String::as_str));
        }
    } else if let Some(rest) = param.strip_prefix("response_format.json_schema") {
        renamed = format!("text.format{rest}");
    } else if let Some(rest) = param.strip_prefix("response_format") {
        renamed = format!("text.format{rest}");
    } else if param == "max_tokens" {
        renamed = "max_output_tokens".into();
    } else if let (Some(rest), true) = (param.strip_prefix("tools["), param.contains(".function")) {
        renamed = format!("tools[{}", rest.replacen(".function", "", 1));
    } else if param == "tool_choice.function.name" {
        renamed = "tool_choice.name".into();
    }
    e.message = e.message.replace(&param, &renamed);
    e.param = Some(renamed);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<ResponsesRequest, ApiError> {
        ResponsesRequest::parse(&body)
    }

    #[test]
    fn input_items_become_a_conversation() -> Result<(), ApiError> {
        let r = parse(json!({
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": "Weather in Paris?"},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            ],
        }))?;
        let roles: Vec<&str> = r.chat.history.iter().map(|t| t.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool"]);
        assert_eq!(r.chat.history[2].tool_calls.len(), 1);
        assert_eq!(r.chat.input, "", "a conversation ending in a tool result is all history");
        let r = parse(json!({"model": "m", "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "Hello "}, {"type": "input_text", "text": "there"}
        ]}]}))?;
        assert_eq!(r.chat.input, "Hello there");
        Ok(())
    }

    #[test]
    fn tools_formats_and_limits_take_chat_shapes() -> Result<(), ApiError> {
        let r = parse(json!({
            "model": "m", "input": "hi", "max_output_tokens": 5,
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "f"},
            "include": ["message.output_text.logprobs"], "top_logprobs": 2,
        }))?;
        assert_eq!(r.chat.sampling.max_tokens, Some(5));
        assert_eq!(r.chat.tools.len(), 1);
        assert_eq!(r.chat.sampling.logprobs, Some(2));
        assert!(r.logprobs);
        let r = parse(json!({"model": "m", "input": "hi", "text": {"format": {
            "type": "json_schema", "name": "P", "schema": {"type": "object"}, "strict": true
        }}}))?;
        assert!(r.chat.sampling.format.is_some());
        Ok(())
    }

    #[test]
    fn errors_name_the_responses_field() {
        let cases = [
            (json!({"model": "m"}), "input"),
            (json!({"model": "m", "input": 3}), "input"),
            (json!({"model": "m", "input": [{"role": "wizard", "content": "x"}]}), "input[0].role"),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}),
                "input[0].content[0].type",
            ),
            (
                json!({"model": "m", "input": [{"type": "function_call", "name": "f"}]}),
                "input[0].call_id",
            ),
            (
                json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}),
                "input[0].type",
            ),
            (json!({"model": "m", "input": "hi", "max_output_tokens": 0}), "max_output_tokens"),
            (
                json!({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"model": "m", "input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}),
                "text.format.schema",
            ),
            (
                json!({"model": "m", "input": "hi", "text": {"format": {"type": "yaml"}}}),
                "text.format.type",
            ),
            (
                json!({"model": "m", "input": "hi", "previous_response_id": "resp_1"}),
                "previous_response_id",
            ),
            (json!({"model": "m", "input": "hi", "background": true}), "background"),
            (json!({"model": "m", "input": "hi", "temperature": 3}), "temperature"),
            (
                json!({"model": "m", "input": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),
                "input[1].role",
            ),
        ];
        for (body, param) in cases {
            let e = parse(body.clone()).err();
            assert_eq!(e.as_ref().and_then(|e| e.param.as_deref()), Some(param), "{body}: {e:?}");
            assert_eq!(e.map(|e| e.status.as_u16()), Some(400));
        }
    }
}
