//! Tool calls under a grammar: the calls a model may make, written in the Hermes format
//! (`<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, what Qwen2/2.5/3 and
//! Hermes-style models are trained on and what models without a tool format are told to
//! write), compiled into an [`OutputFormat::Lark`] grammar. Every call the model writes under
//! it names a declared function and carries arguments valid under that function's schema.

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
        CallStyle::Hermes => "arguments",
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
    };
    let start = match (choice, answer) {
        (ToolChoice::Function(_), _) => "start: call",
        (ToolChoice::Required, _) => "start: calls",
        (ToolChoice::Auto, None) => "start: TEXT | calls",
        (ToolChoice::Auto, Some(_)) => "start: answer | calls",
    };
    let answer = match answer {
        None => String::new(),
        Some(OutputFormat::JsonObject) => {
            format!("answer: %json {{{options}, \"type\": \"object\"}}")
        }
        Some(OutputFormat::JsonSchema(schema)) => {
            let mut schema = schema.clone();
            if let Value::Object(fields) = &mut schema {
                fields.entry("x-guidance").or_insert_with(|| {
                    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
                });
            }
            format!("answer: %json {schema}")
        }
        Some(_) => return invalid("tools go with a JSON answer format only".into()),
    };
    Ok(OutputFormat::Lark(format!("{start}\n{calls}\n{call}\n{answer}\n{text}\n")))
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
            for style in [CallStyle::Hermes, CallStyle::BareJson] {
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
