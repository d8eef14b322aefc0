//! The JSON the API reads and writes. Requests are read field by field from a JSON object, so
//! that every rejection names the field at fault (`param`) and unknown fields (clients send
//! many) are ignored; responses are plain `Serialize` structs.

use fleet_proto::{CallMade, ClientToolChoice, OutputFormat, Sampling, Turn};
use serde::Serialize;
use serde_json::{Map, Value};

use super::errors::ApiError;

/// Texts one embeddings request may carry (OpenAI's limit).
pub const MAX_EMBED_INPUTS: usize = 2048;
/// Stop strings one request may carry (OpenAI's limit).
const MAX_STOP: usize = 4;

/// The fields of a request body, read with errors that name them.
struct Fields<'a> {
    object: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn of(body: &'a Value) -> Result<Self, ApiError> {
        match body {
            Value::Object(object) => Ok(Self { object }),
            _ => Err(ApiError::malformed("the body must be a JSON object")),
        }
    }

    /// A field's value; `null` counts as absent, as OpenAI treats it.
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.object.get(name).filter(|v| !v.is_null())
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::invalid(name, format!("{name} must be a string"))),
        }
    }

    fn required_string(&self, name: &str) -> Result<&'a str, ApiError> {
        match self.string(name)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(ApiError::invalid(name, format!("{name} is required"))),
        }
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::invalid(name, format!("{name} must be true or false"))),
        }
    }

    fn number(&self, name: &str) -> Result<Option<f64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| ApiError::invalid(name, format!("{name} must be a number"))),
        }
    }

    /// An integer field; values beyond i64 come back as `i64::MAX`.
    fn integer(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
                Ok(Some(n.as_i64().unwrap_or(i64::MAX)))
            }
            Some(_) => Err(ApiError::invalid(name, format!("{name} must be an integer"))),
        }
    }
}

/// Fails when a field this server does not implement is set to something other than its
/// neutral value (clients often send the neutral value explicitly).
fn refuse_if(set: bool, name: &str, what_to_do: &str) -> Result<(), ApiError> {
    if set {
        return Err(ApiError::unsupported(name, format!("{name} is not supported: {what_to_do}")));
    }
    Ok(())
}

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
    Ok(Turn { role: role.to_owned(), content, tool_calls, tool_call_id })
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

/// How the vectors of an embeddings response are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingFormat {
    Float,
    /// Base64 of the little-endian f32 bytes (what the official Python client asks for).
    Base64,
}

/// A validated `POST /v1/embeddings` request.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: Vec<String>,
    pub encoding_format: EncodingFormat,
    /// The vector length the client expects; we cannot shorten vectors.
    pub dimensions: Option<usize>,
}

impl EmbeddingsRequest {
    pub fn parse(body: &Value) -> Result<Self, ApiError> {
        let f = Fields::of(body)?;
        let model = f.required_string("model")?.to_owned();
        let token_ids = || {
            ApiError::unsupported("input", "token ids as input are not supported: send the texts")
        };
        let input = match f.get("input") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => {
                let mut texts = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) => texts.push(s.clone()),
                        Value::Number(_) | Value::Array(_) => return Err(token_ids()),
                        _ => {
                            return Err(ApiError::invalid(
                                "input",
                                "input must be a string or an array of strings",
                            ));
                        }
                    }
                }
                texts
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "input",
                    "input must be a string or an array of strings",
                ));
            }
            None => return Err(ApiError::invalid("input", "input is required")),
        };
        if input.is_empty() {
            return Err(ApiError::invalid("input", "input is empty: send at least one text"));
        }
        if input.len() > MAX_EMBED_INPUTS {
            return Err(ApiError::invalid(
                "input",
                format!(
                    "{} texts in one request; at most {MAX_EMBED_INPUTS}: split the request",
                    input.len()
                ),
            ));
        }
        if input.iter().any(String::is_empty) {
            return Err(ApiError::invalid("input", "input texts must not be empty"));
        }
        let encoding_format = match f.string("encoding_format")? {
            None | Some("float") => EncodingFormat::Float,
            Some("base64") => EncodingFormat::Base64,
            Some(other) => {
                return Err(ApiError::invalid(
                    "encoding_format",
                    format!("unknown encoding_format {other:?}: use \"float\" or \"base64\""),
                ));
            }
        };
        let dimensions = match f.integer("dimensions")? {
            None => None,
            Some(n) if n >= 1 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            Some(n) => {
                return Err(ApiError::invalid(
                    "dimensions",
                    format!("dimensions must be at least 1, got {n}"),
                ));
            }
        };
        Ok(Self { model, input, encoding_format, dimensions })
    }
}

/// Token counts as OpenAI reports them.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CompletionUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
    pub completion_tokens_details: CompletionTokensDetails,
}

/// `usage.completion_tokens_details`: completion tokens a thinking model spent reasoning.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CompletionTokensDetails {
    pub reasoning_tokens: u32,
}

/// `usage.prompt_tokens_details`: prompt tokens the engine read from its prefix cache.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: u32,
}

impl From<fleet_proto::Usage> for CompletionUsage {
    fn from(u: fleet_proto::Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
            prompt_tokens_details: PromptTokensDetails { cached_tokens: u.cached_tokens },
            completion_tokens_details: CompletionTokensDetails {
                reasoning_tokens: u.reasoning_tokens,
            },
        }
    }
}

/// `finish_reason`: `length` when generation stopped at max_tokens or the context.
pub fn finish_reason(usage: &fleet_proto::Usage) -> &'static str {
    if usage.truncated { "length" } else { "stop" }
}

#[derive(Debug, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    /// None (`null`) when the model only called tools.
    pub content: Option<String>,
    /// A thinking model's reasoning before its answer (the field vLLM, llama.cpp's server
    /// and DeepSeek's API name it), absent when it did not think.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
}

/// A tool call of the model for the client to run.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallOut {
    /// Its place among the calls of the message (in stream chunks only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionOut,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionOut {
    pub name: String,
    /// JSON text.
    pub arguments: String,
}

impl ToolCallOut {
    pub fn new(id: &str, name: &str, arguments: &str) -> Self {
        Self {
            index: None,
            id: id.to_owned(),
            kind: "function",
            function: FunctionOut { name: name.to_owned(), arguments: arguments.to_owned() },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Choice {
    pub index: u32,
    pub message: AssistantMessage,
    pub finish_reason: &'static str,
    pub logprobs: Option<ChoiceLogprobs>,
}

/// The logprobs of a choice's (or a chunk's) tokens, when the request asked for them.
#[derive(Debug, Serialize)]
pub struct ChoiceLogprobs {
    pub content: Vec<LogprobOut>,
    /// This server's models never refuse in OpenAI's separate field.
    pub refusal: Option<()>,
}

impl ChoiceLogprobs {
    pub fn new(tokens: &[fleet_proto::TokenLogprob]) -> Self {
        Self { content: tokens.iter().map(LogprobOut::from).collect(), refusal: None }
    }
}

/// One token's logprob and the most likely tokens at its place, each with its UTF-8 bytes
/// (a token may be part of a character).
#[derive(Debug, Serialize)]
pub struct LogprobOut {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprobOut>,
}

#[derive(Debug, Serialize)]
pub struct TopLogprobOut {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

impl From<&fleet_proto::TokenLogprob> for LogprobOut {
    fn from(t: &fleet_proto::TokenLogprob) -> Self {
        let top_logprobs = t
            .top
            .iter()
            .map(|(token, logprob)| TopLogprobOut {
                token: token.clone(),
                logprob: *logprob,
                bytes: token.as_bytes().to_vec(),
            })
            .collect();
        Self {
            token: t.token.clone(),
            logprob: t.logprob,
            bytes: t.token.as_bytes().to_vec(),
            top_logprobs,
        }
    }
}

/// A `chat.completion`.
#[derive(Debug, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: CompletionUsage,
}

#[derive(Debug, Default, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
}

#[derive(Debug, Serialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub finish_reason: Option<&'static str>,
    pub logprobs: Option<ChoiceLogprobs>,
}

/// A `chat.completion.chunk` of a stream.
#[derive(Debug, Serialize)]
pub struct ChatCompletionChunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<CompletionUsage>,
}

/// One vector, as floats or base64.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize)]
pub struct Embedding {
    pub object: &'static str,
    pub index: usize,
    pub embedding: Vector,
}

#[derive(Debug, Serialize)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u32,
    pub total_tokens: u32,
}

/// The answer to `POST /v1/embeddings`.
#[derive(Debug, Serialize)]
pub struct EmbeddingList {
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Serialize)]
pub struct Model {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// What the cluster knows beyond OpenAI's fields (clients ignore it).
    pub agentfleet: Value,
}

#[derive(Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<Model>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn chat(extra: Value) -> Result<ChatRequest, ApiError> {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        ChatRequest::parse(&body)
    }

    fn param(r: Result<impl std::fmt::Debug, ApiError>) -> String {
        match r {
            Ok(v) => format!("accepted: {v:?}"),
            Err(e) => {
                assert_eq!(e.status.as_u16(), 400, "{e:?}");
                e.param.unwrap_or_default()
            }
        }
    }

    #[test]
    fn a_conversation_becomes_history_and_input() -> Result<(), ApiError> {
        let body = json!({
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null},
                {"role": "user", "content": "last", "name": "ann"},
            ],
            "temperature": 0.5, "top_p": 1, "max_tokens": 7, "seed": 42, "stop": "END",
            "stream": true, "stream_options": {"include_usage": true},
            "n": 1, "logprobs": false, "presence_penalty": 0, "tools": [], "user": "u",
            "response_format": {"type": "text"}, "some_future_field": {"x": 1},
        });
        let r = ChatRequest::parse(&body)?;
        let roles: Vec<_> = r.history.iter().map(|t| t.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant"]);
        assert_eq!(r.history[1].content, "a\nb");
        assert_eq!(r.input, "last");
        assert_eq!(r.sampling.temperature, Some(0.5));
        assert_eq!(r.sampling.top_p, Some(1.0));
        assert_eq!(r.sampling.max_tokens, Some(7));
        assert_eq!(r.sampling.seed, Some(42));
        assert_eq!(r.sampling.stop, ["END"]);
        assert!(r.stream && r.include_usage);
        Ok(())
    }

    #[test]
    fn a_conversation_ending_in_a_tool_result_is_all_history() -> Result<(), ApiError> {
        let add = json!({"type": "function", "function": {"name": "add", "parameters": {
            "type": "object", "properties": {"a": {"type": "integer"}}}}});
        let body = json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "1+1?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "add", "arguments": "{\"a\": 1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "2"},
            ],
            "tools": [add], "tool_choice": {"type": "function", "function": {"name": "add"}},
        });
        let r = ChatRequest::parse(&body)?;
        assert_eq!(r.input, "");
        assert_eq!(r.history.len(), 3);
        let call = &r.history[1].tool_calls[0];
        assert_eq!(
            (call.id.as_str(), call.name.as_str(), call.arguments.as_str()),
            ("c1", "add", r#"{"a": 1}"#)
        );
        assert_eq!(r.history[2].tool_call_id, "c1");
        assert_eq!(r.tools, [add]);
        assert_eq!(r.tool_choice, ClientToolChoice::Function("add".into()));
        // `none` sends no tools; only a system message is a conversation too.
        let none = ChatRequest::parse(&json!({"model": "m", "tools": [body["tools"][0]],
            "tool_choice": "none", "messages": [{"role": "system", "content": "greet"}]}))?;
        assert!(none.tools.is_empty() && none.input.is_empty() && none.history.len() == 1);
        Ok(())
    }

    #[test]
    fn response_formats_become_output_formats() -> Result<(), ApiError> {
        let r = chat(json!({"response_format": {"type": "json_object"}}))?;
        assert_eq!(r.sampling.format, Some(OutputFormat::JsonObject));
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let r = chat(json!({"response_format": {
            "type": "json_schema",
            "json_schema": {"name": "thing", "strict": true, "schema": schema},
        }}))?;
        assert_eq!(r.sampling.format, Some(OutputFormat::JsonSchema(schema.to_string())));
        assert_eq!(chat(json!({"response_format": {"type": "text"}}))?.sampling.format, None);
        Ok(())
    }

    #[test]
    fn reasoning_effort_turns_thinking_off_or_on() -> Result<(), ApiError> {
        assert_eq!(chat(json!({"reasoning_effort": "none"}))?.sampling.thinking, Some(false));
        for level in ["minimal", "low", "medium", "high"] {
            assert_eq!(chat(json!({"reasoning_effort": level}))?.sampling.thinking, Some(true));
        }
        assert_eq!(chat(json!({}))?.sampling.thinking, None);
        Ok(())
    }

    #[test]
    fn penalties_and_logprobs_become_sampling() -> Result<(), ApiError> {
        let body = |extra: Value| {
            let mut b = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            b.as_object_mut().into_iter().for_each(|o| {
                o.extend(extra.as_object().cloned().unwrap_or_default());
            });
            b
        };
        let r = ChatRequest::parse(&body(json!({
            "presence_penalty": 0.5, "frequency_penalty": -1, "logprobs": true, "top_logprobs": 3
        })))?;
        assert_eq!(r.sampling.presence_penalty, Some(0.5));
        assert_eq!(r.sampling.frequency_penalty, Some(-1.0));
        assert_eq!(r.sampling.logprobs, Some(3));
        let r = ChatRequest::parse(&body(json!({"logprobs": true, "presence_penalty": 0})))?;
        assert_eq!((r.sampling.logprobs, r.sampling.presence_penalty), (Some(0), None));
        let r = ChatRequest::parse(&body(json!({"logprobs": false})))?;
        assert_eq!(r.sampling.logprobs, None);
        Ok(())
    }

    #[test]
    fn max_completion_tokens_wins_and_huge_values_saturate() -> Result<(), ApiError> {
        let r = chat(json!({"max_tokens": 5, "max_completion_tokens": 9}))?;
        assert_eq!(r.sampling.max_tokens, Some(9));
        let r = chat(json!({"max_tokens": 1u64 << 40, "seed": u64::MAX}))?;
        assert_eq!(r.sampling.max_tokens, Some(u32::MAX));
        assert_eq!(r.sampling.seed, Some(u64::MAX));
        Ok(())
    }

    #[test]
    fn bad_chat_requests_name_the_field() {
        let cases = [
            (json!({"max_tokens": -1}), "max_tokens"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"max_completion_tokens": -5}), "max_completion_tokens"),
            (json!({"max_tokens": 1.5}), "max_tokens"),
            (json!({"max_tokens": "10"}), "max_tokens"),
            (json!({"temperature": 2.5}), "temperature"),
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"top_p": 0}), "top_p"),
            (json!({"top_p": 1.1}), "top_p"),
            (json!({"n": 9}), "n"),
            (json!({"n": 0}), "n"),
            (json!({"seed": -1}), "seed"),
            (json!({"seed": 1.5}), "seed"),
            (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
            (json!({"stop": [1]}), "stop"),
            (json!({"stop": ""}), "stop"),
            (json!({"stream": "yes"}), "stream"),
            (json!({"stream_options": {"include_usage": 1}}), "stream_options.include_usage"),
            (json!({"logprobs": "yes"}), "logprobs"),
            (json!({"top_logprobs": 3}), "top_logprobs"),
            (json!({"logprobs": true, "top_logprobs": 21}), "top_logprobs"),
            (json!({"logprobs": true, "top_logprobs": -1}), "top_logprobs"),
            (json!({"tools": [{"type": "function"}]}), "tools[0].function"),
            (json!({"tools": {"type": "function"}}), "tools"),
            (json!({"tools": [{"type": "retrieval"}]}), "tools[0].type"),
            (json!({"tool_choice": "required"}), "tool_choice"),
            (json!({"functions": [{"name": "f"}]}), "functions"),
            (json!({"response_format": {"type": "json_schema"}}), "response_format.json_schema"),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
                "response_format.json_schema.schema",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "frobnicate"}}}}),
                "response_format.json_schema.schema",
            ),
            (json!({"response_format": {"type": "yaml"}}), "response_format.type"),
            (json!({"presence_penalty": -2.5}), "presence_penalty"),
            (json!({"frequency_penalty": 3}), "frequency_penalty"),
            (json!({"reasoning_effort": "maximal"}), "reasoning_effort"),
            (json!({"reasoning_effort": 1}), "reasoning_effort"),
            (json!({"logit_bias": {"50256": -100}}), "logit_bias"),
            (json!({"model": ""}), "model"),
            (json!({"model": 5}), "model"),
            (json!({"messages": []}), "messages"),
            (json!({"messages": "hi"}), "messages"),
            (json!({"messages": [{"role": "user"}]}), "messages[0].content"),
            (json!({"messages": [{"role": "wizard", "content": "x"}]}), "messages[0].role"),
            (json!({"messages": [{"content": "x"}]}), "messages[0].role"),
            (json!({"messages": ["hi"]}), "messages[0]"),
            (json!({"messages": [{"role": "user", "content": 3}]}), "messages[0].content"),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),
                "messages[1].role",
            ),
            (
                json!({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "x"}]}, {"role": "user", "content": "a"}]}),
                "messages[0].tool_calls[0]",
            ),
            (
                json!({"messages": [{"role": "user", "content": "a", "tool_calls": []}]}),
                "messages[0].tool_calls",
            ),
        ];
        for (extra, field) in cases {
            assert_eq!(param(chat(extra.clone())), field, "{extra}");
        }
        let e = ChatRequest::parse(&json!([1, 2])).err();
        assert_eq!(e.map(|e| e.code), Some(Some("invalid_json")));
    }

    #[test]
    fn embeddings_requests() -> Result<(), ApiError> {
        let r = EmbeddingsRequest::parse(&json!({"model": "e", "input": "one"}))?;
        assert_eq!(r.input, ["one"]);
        assert_eq!(r.encoding_format, EncodingFormat::Float);
        let r = EmbeddingsRequest::parse(
            &json!({"model": "e", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 384}),
        )?;
        assert_eq!(r.input, ["a", "b"]);
        assert_eq!(r.encoding_format, EncodingFormat::Base64);
        assert_eq!(r.dimensions, Some(384));
        let too_many: Vec<String> = vec!["x".into(); MAX_EMBED_INPUTS + 1];
        let cases = [
            (json!({"model": "e", "input": [1, 2, 3]}), "input"),
            (json!({"model": "e", "input": [[1, 2]]}), "input"),
            (json!({"model": "e", "input": []}), "input"),
            (json!({"model": "e", "input": [""]}), "input"),
            (json!({"model": "e", "input": 5}), "input"),
            (json!({"model": "e"}), "input"),
            (json!({"model": "e", "input": too_many}), "input"),
            (json!({"model": "e", "input": "a", "encoding_format": "int8"}), "encoding_format"),
            (json!({"model": "e", "input": "a", "dimensions": 0}), "dimensions"),
            (json!({"input": "a"}), "model"),
        ];
        for (body, field) in cases {
            assert_eq!(param(EmbeddingsRequest::parse(&body)), field, "{body}");
        }
        Ok(())
    }

    #[test]
    fn usage_and_finish_reason() {
        let usage = fleet_proto::Usage {
            prompt_tokens: 3,
            cached_tokens: 1,
            completion_tokens: 2,
            reasoning_tokens: 1,
            truncated: true,
        };
        let wire = CompletionUsage::from(usage);
        assert_eq!(wire.total_tokens, 5);
        assert_eq!(wire.prompt_tokens_details.cached_tokens, 1);
        assert_eq!(wire.completion_tokens_details.reasoning_tokens, 1);
        assert_eq!(finish_reason(&usage), "length");
        assert_eq!(finish_reason(&fleet_proto::Usage::default()), "stop");
    }
}
