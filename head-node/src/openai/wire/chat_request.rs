//! `POST /v1/chat/completions`'s body, validated: sampling, output formats and tools
//! compiled here so that what the models cannot follow is a 400 naming the field.

use fleet_proto::{CallMade, ClientToolChoice, OutputFormat, Sampling, Turn};
use serde_json::Value;

use super::super::errors::ApiError;
use super::fields::{Fields, refuse_if};

/// Stop strings one request may carry (OpenAI's limit).
const MAX_STOP: usize = 4;

/// A validated `POST /v1/chat/completions` request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    /// Every message before the last one.
    pub history: Vec<Turn>,
    /// The last message (from the user): what the model answers.
    pub input: String,
    pub sampling: Sampling,
    /// The client's tools (`tools`; none with `tool_choice: "none"`) and whether the model
    /// must call them.
    pub tools: Vec<Value>,
    pub tool_choice: ClientToolChoice,
    /// `parallel_tool_calls: true` said explicitly: one reply may make several calls. Left
    /// out, local models make one call per reply (small models asked for more tend to
    /// repeat their call until they run out of tokens).
    pub parallel_tool_calls: bool,
    /// How many choices to generate (`n`), each its own task.
    pub n: u32,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub include_usage: bool,
}

impl ChatRequest {
    /// The options of the request's task (of each, with `n` above 1).
    pub fn task_options(&self) -> fleet_proto::TaskOptions {
        fleet_proto::TaskOptions {
            history: self.history.clone(),
            sampling: self.sampling.clone(),
            embed: Vec::new(),
            tools: self.tools.clone(),
            tool_choice: self.tool_choice.clone(),
            parallel_tool_calls: self.parallel_tool_calls,
            raw_prompt: false,
            files: Vec::new(),
        }
    }

    pub fn parse(body: &Value) -> Result<Self, ApiError> {
        let f = Fields::of(body)?;
        let model = f.required_string("model")?.to_owned();
        let mut messages = messages(f.get("messages"))?;
        let Some(last) = messages.last() else {
            return Err(ApiError::invalid(
                "messages",
                "messages is empty: send at least one message",
            ));
        };
        // The model answers the conversation: a user's message (the task's input), or a
        // tool's result or system message (the whole conversation is history, no input).
        let input = match last.role.as_str() {
            "user" => messages.pop().map(|m| m.content).unwrap_or_default(),
            "assistant" => {
                return Err(ApiError::invalid(
                    format!("messages[{}].role", messages.len() - 1),
                    "the last message is the assistant's: end the conversation with a user, \
                     tool or system message for the model to answer",
                ));
            }
            _ => String::new(),
        };
        let stream = f.bool("stream")?.unwrap_or(false);
        let include_usage = match f.get("stream_options") {
            None => false,
            Some(Value::Object(o)) => match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(ApiError::invalid(
                        "stream_options.include_usage",
                        "stream_options.include_usage must be true or false",
                    ));
                }
            },
            Some(_) => {
                return Err(ApiError::invalid(
                    "stream_options",
                    "stream_options must be an object",
                ));
            }
        };
        let n = match f.integer("n")? {
            None => 1,
            Some(n @ 1..=MAX_CHOICES) => n as u32,
            Some(n) => {
                return Err(ApiError::invalid(
                    "n",
                    format!("n must be from 1 to {MAX_CHOICES}, got {n}"),
                ));
            }
        };
        unsupported_chat_fields(&f)?;
        let sampling = sampling(&f)?;
        let (tools, tool_choice) = tools(&f, sampling.format.as_ref())?;
        Ok(Self {
            model,
            history: messages,
            input,
            sampling,
            tools,
            tool_choice,
            parallel_tool_calls: f.bool("parallel_tool_calls")?.unwrap_or(false),
            n,
            stream,
            include_usage,
        })
    }
}

/// Rejects the chat features the cluster's models do not offer, saying what to do instead.
fn unsupported_chat_fields(f: &Fields<'_>) -> Result<(), ApiError> {
    let legacy = f.get("functions").is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()));
    refuse_if(legacy, "functions", "send them as tools (functions is OpenAI's older form)")?;
    refuse_if(f.get("function_call").is_some(), "function_call", "send tool_choice instead")?;
    let bias = f.get("logit_bias").is_some_and(|b| b.as_object().is_none_or(|o| !o.is_empty()));
    refuse_if(bias, "logit_bias", "leave it out")?;
    refuse_if(f.get("audio").is_some(), "audio", "this server answers with text only")?;
    Ok(())
}

/// The sampling overrides of a chat request.
fn sampling(f: &Fields<'_>) -> Result<Sampling, ApiError> {
    let temperature = f.number("temperature")?;
    if temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(ApiError::invalid("temperature", "temperature must be between 0 and 2"));
    }
    let top_p = f.number("top_p")?;
    if top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
        return Err(ApiError::invalid("top_p", "top_p must be greater than 0 and at most 1"));
    }
    // max_completion_tokens replaced max_tokens; when both are sent it wins.
    let mut max_tokens = None;
    for name in ["max_tokens", "max_completion_tokens"] {
        if let Some(n) = f.integer(name)? {
            if n < 1 {
                return Err(ApiError::invalid(
                    name,
                    format!("{name} must be at least 1, got {n}: leave it out for no limit"),
                ));
            }
            max_tokens = Some(u32::try_from(n).unwrap_or(u32::MAX));
        }
    }
    let seed = match f.get("seed") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            ApiError::invalid("seed", "seed must be an integer from 0 to 18446744073709551615")
        })?),
    };
    Ok(Sampling {
        temperature: temperature.map(|t| t as f32),
        top_p: top_p.map(|p| p as f32),
        max_tokens,
        seed,
        stop: stop(f.get("stop"))?,
        format: response_format(f.get("response_format"))?,
        presence_penalty: penalty(f, "presence_penalty")?,
        frequency_penalty: penalty(f, "frequency_penalty")?,
        logprobs: logprobs(f)?,
        thinking: reasoning_effort(f.get("reasoning_effort"), "reasoning_effort")?,
    })
}

/// OpenAI's `reasoning_effort` as whether a thinking model reasons: `none` turns its
/// reasoning off; the other levels leave it on (the thinking families served here have no
/// levels between). `param` names the field in errors.
pub fn reasoning_effort(value: Option<&Value>, param: &str) -> Result<Option<bool>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s == "none" => Ok(Some(false)),
        Some(Value::String(s)) if ["minimal", "low", "medium", "high"].contains(&s.as_str()) => {
            Ok(Some(true))
        }
        Some(other) => Err(ApiError::invalid(
            param,
            format!(
                "{param} must be \"none\", \"minimal\", \"low\", \"medium\" or \"high\", got {other}"
            ),
        )),
    }
}

/// `presence_penalty` or `frequency_penalty`: -2 to 2; 0 is the same as none.
fn penalty(f: &Fields<'_>, name: &str) -> Result<Option<f32>, ApiError> {
    match f.number(name)? {
        Some(p) if !(-2.0..=2.0).contains(&p) => {
            Err(ApiError::invalid(name, format!("{name} must be between -2 and 2, got {p}")))
        }
        Some(p) if p != 0.0 => Ok(Some(p as f32)),
        _ => Ok(None),
    }
}

/// `logprobs: true` with `top_logprobs` alternatives per token (0 to 20), as the number
/// of alternatives the model reports; `None` when logprobs are not asked for.
fn logprobs(f: &Fields<'_>) -> Result<Option<u32>, ApiError> {
    let wanted = f.bool("logprobs")?.unwrap_or(false);
    let top = f.integer("top_logprobs")?;
    if let Some(n) = top {
        if !(0..=MAX_TOP_LOGPROBS).contains(&n) {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"),
            ));
        }
        if !wanted {
            return Err(ApiError::invalid(
                "top_logprobs",
                "top_logprobs needs logprobs: true (set both, or leave top_logprobs out)",
            ));
        }
    }
    Ok(wanted.then(|| top.unwrap_or(0) as u32))
}

/// The most alternatives per token a request may ask for (OpenAI's limit).
const MAX_TOP_LOGPROBS: i64 = 20;

/// `response_format`: text (no constraint), any JSON object, or JSON under a schema. The
/// schema is compiled here so that one the grammar engine cannot follow is a 400 naming
/// the problem, not a failed task.
fn response_format(value: Option<&Value>) -> Result<Option<OutputFormat>, ApiError> {
    let Some(format) = value else { return Ok(None) };
    let kind = format.get("type").and_then(Value::as_str);
    let at_schema = "response_format.json_schema.schema";
    let (checked, format) = match kind {
        Some("text") => return Ok(None),
        Some("json_object") => return Ok(Some(OutputFormat::JsonObject)),
        Some("json_schema") => {
            let Some(Value::Object(spec)) = format.get("json_schema") else {
                return Err(ApiError::invalid(
                    "response_format.json_schema",
                    "response_format.json_schema is required with type json_schema: an object \
                     with the schema under \"schema\"",
                ));
            };
            let schema = match spec.get("schema") {
                Some(schema @ (Value::Object(_) | Value::Bool(_))) => schema,
                Some(_) => {
                    return Err(ApiError::invalid(
                        at_schema,
                        format!("{at_schema} must be an object"),
                    ));
                }
                None => {
                    return Err(ApiError::invalid(
                        at_schema,
                        format!("{at_schema} is required: the JSON Schema the answer must follow"),
                    ));
                }
            };
            (
                fleet_grammar::OutputFormat::JsonSchema(schema.clone()),
                OutputFormat::JsonSchema(schema.to_string()),
            )
        }
        _ => {
            return Err(ApiError::invalid(
                "response_format.type",
                "response_format.type must be \"text\", \"json_object\" or \"json_schema\"",
            ));
        }
    };
    checked.check().map_err(|e| ApiError::invalid(at_schema, e.to_string()))?;
    Ok(Some(format))
}

/// The most choices (`n`) one request may ask for.
const MAX_CHOICES: i64 = 8;

/// The most tools one request may give.
const MAX_TOOLS: usize = 128;

/// `tools` and `tool_choice`. The tools' grammar (with the answer's format) is compiled
/// here, so that a parameter schema the grammar engine cannot follow is a 400 naming it.
fn tools(
    f: &Fields<'_>,
    format: Option<&OutputFormat>,
) -> Result<(Vec<Value>, ClientToolChoice), ApiError> {
    let tools = match f.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => tools.clone(),
        Some(_) => return Err(ApiError::invalid("tools", "tools must be an array of tools")),
    };
    if tools.len() > MAX_TOOLS {
        return Err(ApiError::invalid("tools", format!("at most {MAX_TOOLS} tools per request")));
    }
    let mut names = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let at = |field: &str| format!("tools[{i}].{field}");
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::invalid(at("type"), "tools are of type \"function\""));
        }
        let Some(function) = tool.get("function").filter(|f| f.is_object()) else {
            return Err(ApiError::invalid(
                at("function"),
                format!("{} is required", at("function")),
            ));
        };
        let name = function.get("name").and_then(Value::as_str).unwrap_or_default();
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if name.is_empty() || name.len() > 64 || !name.chars().all(valid) {
            return Err(ApiError::invalid(
                at("function.name"),
                "a function name is 1 to 64 letters, digits, underscores or dashes",
            ));
        }
        if names.contains(&name) {
            return Err(ApiError::invalid(
                at("function.name"),
                format!("two tools are named {name:?}"),
            ));
        }
        names.push(name);
        if !matches!(function.get("parameters"), None | Some(Value::Null | Value::Object(_))) {
            return Err(ApiError::invalid(
                at("function.parameters"),
                "parameters must be a JSON Schema object",
            ));
        }
    }
    let choice = match f.get("tool_choice") {
        None | Some(Value::Null) => ClientToolChoice::Auto,
        Some(Value::String(mode)) => match mode.as_str() {
            "auto" => ClientToolChoice::Auto,
            "required" => ClientToolChoice::Required,
            "none" => return Ok((Vec::new(), ClientToolChoice::Auto)),
            other => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!(
                        "unknown tool_choice {other:?}: use none, auto, required or a function"
                    ),
                ));
            }
        },
        Some(named) => match named.pointer("/function/name").and_then(Value::as_str) {
            Some(name) if names.contains(&name) => ClientToolChoice::Function(name.to_owned()),
            Some(name) => {
                return Err(ApiError::invalid(
                    "tool_choice.function.name",
                    format!("tool_choice names {name:?}, which is not one of the tools"),
                ));
            }
            None => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    "tool_choice is none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                ));
            }
        },
    };
    if tools.is_empty() {
        if choice != ClientToolChoice::Auto {
            return Err(ApiError::invalid("tool_choice", "tool_choice needs tools to choose from"));
        }
        return Ok((tools, choice));
    }
    let answer = match format {
        None => None,
        Some(OutputFormat::JsonObject) => Some(fleet_grammar::OutputFormat::JsonObject),
        Some(OutputFormat::JsonSchema(text)) => Some(
            fleet_grammar::OutputFormat::json_schema_text(text)
                .map_err(|e| ApiError::invalid("response_format", e.to_string()))?,
        ),
        Some(_) => None,
    };
    let grammar_choice = match &choice {
        ClientToolChoice::Auto => fleet_grammar::ToolChoice::Auto,
        ClientToolChoice::Required => fleet_grammar::ToolChoice::Required,
        ClientToolChoice::Function(name) => fleet_grammar::ToolChoice::Function(name.clone()),
    };
    let style = fleet_grammar::CallStyle::Hermes;
    fleet_grammar::tool_call_format(&tools, &grammar_choice, answer.as_ref(), style, true)
        .and_then(|grammar| grammar.check())
        .map_err(|e| ApiError::invalid("tools", e.to_string()))?;
    Ok((tools, choice))
}

fn stop(value: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let strings = match value {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::invalid("stop", "stop must be a string or strings"))?,
        Some(_) => return Err(ApiError::invalid("stop", "stop must be a string or strings")),
    };
    if strings.len() > MAX_STOP {
        return Err(ApiError::invalid("stop", format!("stop takes at most {MAX_STOP} strings")));
    }
    if strings.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "stop strings must not be empty"));
    }
    Ok(strings)
}

/// The conversation: roles checked (`developer` is `system`), contents as text.
fn messages(value: Option<&Value>) -> Result<Vec<Turn>, ApiError> {
    let Some(Value::Array(items)) = value else {
        return Err(ApiError::invalid("messages", "messages is required: an array of messages"));
    };
    items.iter().enumerate().map(|(i, m)| message(i, m)).collect()
}

fn message(i: usize, value: &Value) -> Result<Turn, ApiError> {
    let at = |field: &str| format!("messages[{i}].{field}");
    let Value::Object(m) = value else {
        return Err(ApiError::invalid(format!("messages[{i}]"), "each message must be an object"));
    };
    let role = match m.get("role").and_then(Value::as_str) {
        Some("system" | "developer") => "system",
        Some("user") => "user",
        Some("assistant") => "assistant",
        Some("tool") => "tool",
        Some(other) => {
            return Err(ApiError::invalid(
                at("role"),
                format!("unknown role {other:?}: use system, developer, user, assistant or tool"),
            ));
        }
        None => return Err(ApiError::invalid(at("role"), format!("{} is required", at("role")))),
    };
    if m.get("function_call").is_some_and(|c| !c.is_null()) {
        return Err(ApiError::unsupported(
            at("function_call"),
            "function_call in messages is OpenAI's older form: send tool_calls",
        ));
    }
    let tool_calls = match m.get("tool_calls") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(calls)) if role == "assistant" => calls
            .iter()
            .enumerate()
            .map(|(j, call)| call_made(&at(&format!("tool_calls[{j}]")), call))
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                at("tool_calls"),
                "tool_calls is an array, on assistant messages only",
            ));
        }
    };
    let tool_call_id = match m.get("tool_call_id") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(id)) => id.clone(),
        Some(_) => {
            return Err(ApiError::invalid(at("tool_call_id"), "tool_call_id must be a string"));
        }
    };
    let content = match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => text_parts(i, parts)?,
        // An assistant turn may carry no content (OpenAI allows it with tool calls).
        None | Some(Value::Null) if role == "assistant" => String::new(),
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(at("content"), format!("{} is required", at("content"))));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                at("content"),
                format!("{} must be a string or an array of text parts", at("content")),
            ));
        }
    };
    Ok(Turn { role: role.to_owned(), content, tool_calls, tool_call_id, is_error: false })
}

/// A call an earlier assistant message made: `{"id", "type": "function", "function":
/// {"name", "arguments"}}`.
fn call_made(at: &str, call: &Value) -> Result<CallMade, ApiError> {
    let field = |path: &str| call.pointer(path).and_then(Value::as_str);
    let (Some(name), Some(arguments)) = (field("/function/name"), field("/function/arguments"))
    else {
        return Err(ApiError::invalid(
            at,
            format!("{at} needs function.name and function.arguments (a JSON string)"),
        ));
    };
    Ok(CallMade {
        id: field("/id").unwrap_or_default().to_owned(),
        name: name.to_owned(),
        arguments: arguments.to_owned(),
    })
}

/// The text of a content array: text parts joined by newlines; other kinds are refused.
fn text_parts(i: usize, parts: &[Value]) -> Result<String, ApiError> {
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let at = format!("messages[{i}].content[{j}]");
        match part.get("type").and_then(Value::as_str) {
            Some("text") => match part.get("text").and_then(Value::as_str) {
                Some(text) => texts.push(text),
                None => return Err(ApiError::invalid(at, "a text part needs a string text")),
            },
            Some(other) => {
                return Err(ApiError::unsupported(
                    at,
                    format!("content parts of type {other:?} are not supported: send text parts"),
                ));
            }
            None => return Err(ApiError::invalid(at, "each content part needs a type")),
        }
    }
    Ok(texts.join("\n"))
}
