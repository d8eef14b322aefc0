//! Tool calls under a grammar: the calls a model may make, in its family's format (Hermes's
//! `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, what Qwen2/2.5/3 and
//! Hermes-style models are trained on and what models without a tool format are told to
//! write; Llama's bare JSON; harmony's messages addressed to a function), compiled into an
//! [`OutputFormat::Lark`] grammar. Every call the model writes under it names a declared
//! function and carries arguments valid under that function's schema.

use serde_json::{Value, json};

use crate::{GrammarError, OutputFormat};

/// Opens and closes one call in the Hermes format.
pub const CALL_OPEN: &str = "<tool_call>";
pub const CALL_CLOSE: &str = "</tool_call>";

/// How a model family writes a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallStyle {
    /// `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, one or more: Qwen2,
    /// 2.5 and 3, Hermes-style models, and models told about tools in their system message.
    #[default]
    Hermes,
    /// One bare `{"name": ..., "parameters": {...}}` as the whole reply: Llama 3.x.
    BareJson,
    /// OpenAI's harmony (gpt-oss): a reply is messages, and a call is the last one,
    /// `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}`, after
    /// any `analysis` (reasoning) or `commentary` (preamble) messages; an answer is a
    /// `final` message. The grammar covers the whole reply from the assistant's header on.
    Harmony(HarmonyTokens),
}

/// The ids of harmony's special tokens in a model's vocabulary, for [`CallStyle::Harmony`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HarmonyTokens {
    pub start: u32,
    pub end: u32,
    pub message: u32,
    pub channel: u32,
    /// `<|constrain|>`, which names a call's content type; without it the type follows a
    /// space.
    pub constrain: Option<u32>,
    /// The prompt opened an `analysis` message (its template starts every reply
    /// reasoning): the reply begins inside it.
    pub in_analysis: bool,
}

/// Whether and which tools the model must call (OpenAI's `tool_choice`; `none` is a
/// request without tools).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// Answer, or call one or more tools.
    #[default]
    Auto,
    /// Call one or more tools.
    Required,
    /// Call this function, once.
    Function(String),
}

/// The grammar of a reply that may (`Auto`) or must call `tools` (OpenAI-shaped
/// definitions: `{"type": "function", "function": {"name", "parameters"}}`). An `Auto`
/// reply that does not call answers in text that never opens a call, or in `answer`'s
/// format when one is given (a JSON schema or object). A reply makes one call, or with
/// `parallel` one or more: small models asked for "one or more" tend to repeat their call
/// until they run out of tokens. Errors name the tool at fault.
pub fn tool_call_format(
    tools: &[Value],
    choice: &ToolChoice,
    answer: Option<&OutputFormat>,
    style: CallStyle,
    parallel: bool,
) -> Result<OutputFormat, GrammarError> {
    let arguments = match style {
        CallStyle::Hermes | CallStyle::Harmony(_) => "arguments",
        CallStyle::BareJson => "parameters",
    };
    let invalid = |msg: String| Err(GrammarError::Invalid(msg));
    let mut calls = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let function = tool.get("function").unwrap_or(tool);
        let Some(name) = function.get("name").and_then(Value::as_str) else {
            return invalid(format!("tool {i} has no function name"));
        };
        if let ToolChoice::Function(only) = choice
            && only != name
        {
            continue;
        }
        let parameters = match function.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object"}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => return invalid(format!("the parameters of tool {name:?} are not a schema")),
        };
        if let CallStyle::Harmony(tokens) = style {
            // The name is in the header; the message is the arguments alone.
            calls.push(harmony_call(tokens, name, &parameters));
            continue;
        }
        // Written by hand so that `name` comes before `arguments`, as models write calls.
        calls.push(format!(
            r#"{{"type": "object", "properties": {{"name": {{"const": {}}}, "{arguments}": {}}}, "required": ["name", "{arguments}"], "additionalProperties": false}}"#,
            Value::from(name),
            parameters
        ));
    }
    if calls.is_empty() {
        return invalid(match choice {
            ToolChoice::Function(name) => format!("tool_choice names {name:?}, not a given tool"),
            _ => "tools is empty: give at least one tool, or no tool_choice".to_owned(),
        });
    }
    let options = r#""x-guidance": {"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}"#;
    let json = format!("%json {{{options}, \"anyOf\": [{}]}}", calls.join(", "));
    let (call, calls, text) = match style {
        CallStyle::Hermes => (
            format!(r#"call: "{CALL_OPEN}\n" {json} "\n{CALL_CLOSE}""#),
            if parallel { r#"calls: call ("\n" call)*"# } else { "calls: call" },
            // Text that never opens a call: a reply answers or calls, never half of each.
            format!(r#"TEXT: /(?s:.+)/ & ~/(?s:.*{CALL_OPEN}.*)/"#),
        ),
        CallStyle::BareJson => (
            format!("call: {json}"),
            "calls: call",
            // A bare call is the whole reply: text is what does not start as JSON.
            r#"TEXT: /(?s:[^{\s].*)/"#.to_owned(),
        ),
        CallStyle::Harmony(tokens) => {
            return Ok(OutputFormat::Lark(harmony_reply(tokens, &calls, choice, answer)?));
        }
    };
    let start = match (choice, answer) {
        (ToolChoice::Function(_), _) => "start: call",
        (ToolChoice::Required, _) => "start: calls",
        (ToolChoice::Auto, None) => "start: TEXT | calls",
        (ToolChoice::Auto, Some(_)) => "start: answer | calls",
    };
    let answer = answer_rule(answer)?;
    Ok(OutputFormat::Lark(format!("{start}\n{calls}\n{call}\n{answer}\n{text}\n")))
}

/// The rule `answer` for a reply's JSON answer format (empty without one), laid out as
/// [`OutputFormat`] lays out JSON without tools.
fn answer_rule(answer: Option<&OutputFormat>) -> Result<String, GrammarError> {
    let layout =
        json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "});
    Ok(match answer {
        None => String::new(),
        Some(OutputFormat::JsonObject) => {
            format!("answer: %json {}", json!({"x-guidance": layout, "type": "object"}))
        }
        Some(OutputFormat::JsonSchema(schema)) => {
            let mut schema = schema.clone();
            if let Value::Object(fields) = &mut schema {
                fields.entry("x-guidance").or_insert(layout);
            }
            format!("answer: %json {schema}")
        }
        Some(_) => {
            return Err(GrammarError::Invalid("tools go with a JSON answer format only".into()));
        }
    })
}

/// One harmony call of `name`: its header and its arguments, compact JSON as harmony's
/// calls are written (a schema's own layout wins).
fn harmony_call(tokens: HarmonyTokens, name: &str, parameters: &Value) -> String {
    let mut schema = parameters.clone();
    if let Value::Object(fields) = &mut schema {
        fields.entry("x-guidance").or_insert_with(
            || json!({"whitespace_flexible": false, "item_separator": ",", "key_separator": ":"}),
        );
    }
    let recipient = Value::from(format!("commentary to=functions.{name} "));
    let content_type = match tokens.constrain {
        Some(constrain) => format!(r#"<[{constrain}]> "json""#),
        None => r#""json""#.to_owned(),
    };
    format!("{recipient} {content_type} <[{}]> %json {schema}", tokens.message)
}

/// The grammar of a whole harmony reply (special tokens by id, `<[id]>`): reasoning and
/// preambles, free text each closed by `<|end|>` and the next assistant header, then a
/// call (one: the reply ends at `<|call|>` to wait for its result), or with `Auto` a
/// `final` answer, free or in `answer`'s format.
fn harmony_reply(
    tokens: HarmonyTokens,
    calls: &[String],
    choice: &ToolChoice,
    answer: Option<&OutputFormat>,
) -> Result<String, GrammarError> {
    let HarmonyTokens { start, end, message, channel, in_analysis, .. } = tokens;
    let opened = if in_analysis {
        format!(r#"FREE <[{end}]> <[{start}]> "assistant" "#)
    } else {
        String::new()
    };
    let last = match choice {
        ToolChoice::Auto => "(final | call)",
        ToolChoice::Required | ToolChoice::Function(_) => "call",
    };
    let final_body = if answer.is_some() { "answer" } else { "FREE" };
    let answer = answer_rule(answer)?;
    let calls =
        calls.iter().map(|c| format!("<[{channel}]> {c}")).collect::<Vec<_>>().join("\n    | ");
    Ok(format!(
        "start: {opened}message* {last}\n\
         message: <[{channel}]> (\"analysis\" | \"commentary\") <[{message}]> FREE <[{end}]> <[{start}]> \"assistant\"\n\
         final: <[{channel}]> \"final\" <[{message}]> {final_body}\n\
         call: {calls}\n\
         {answer}\n\
         FREE: /(?s:.*)/\n"
    ))
}

/// What a model without a tool format of its own is told, as Qwen2.5's template tells it:
/// the tools, then how to call them.
pub fn tools_preamble(tools: &[Value]) -> String {
    let mut text = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for tool in tools {
        text.push('\n');
        text.push_str(&tool.to_string());
    }
    text.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Vec<Value> {
        vec![
            json!({"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}),
            json!({"type": "function", "function": {"name": "now"}}),
        ]
    }

    #[test]
    fn every_choice_compiles() {
        let schema = OutputFormat::JsonSchema(json!({"type": "object"}));
        for (choice, answer) in [
            (ToolChoice::Auto, None),
            (ToolChoice::Auto, Some(&schema)),
            (ToolChoice::Auto, Some(&OutputFormat::JsonObject)),
            (ToolChoice::Required, None),
            (ToolChoice::Function("now".into()), None),
        ] {
            let harmony = |constrain, in_analysis| {
                let tokens = HarmonyTokens {
                    start: 1,
                    end: 2,
                    message: 3,
                    channel: 4,
                    constrain,
                    in_analysis,
                };
                CallStyle::Harmony(tokens)
            };
            for style in [
                CallStyle::Hermes,
                CallStyle::BareJson,
                harmony(Some(5), false),
                harmony(None, true),
            ] {
                let format = tool_call_format(&weather(), &choice, answer, style, true);
                let checked = format.as_ref().map_err(Clone::clone).and_then(OutputFormat::check);
                assert_eq!(checked, Ok(()), "{choice:?} {style:?}: {format:?}");
            }
        }
    }

    #[test]
    fn bad_tools_are_refused_with_the_reason() {
        let cases = [
            (vec![json!({"function": {}})], ToolChoice::Auto, "no function name"),
            (weather(), ToolChoice::Function("fly".into()), "\"fly\""),
            (vec![], ToolChoice::Required, "tools is empty"),
            (
                vec![json!({"function": {"name": "f", "parameters": {"type": "frobnicate"}}})],
                ToolChoice::Auto,
                "frobnicate",
            ),
        ];
        for (tools, choice, needle) in cases {
            let error = tool_call_format(&tools, &choice, None, CallStyle::Hermes, false)
                .and_then(|f| f.check())
                .expect_err("refused")
                .to_string();
            assert!(error.contains(needle), "{needle}: {error}");
        }
    }
}
