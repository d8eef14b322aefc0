//! [`OutputFormat`]: what a generation must look like, and its llguidance grammar.

use std::sync::OnceLock;

use llguidance::ParserFactory;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::ApproximateTokEnv;
use serde_json::{Value, json};

use crate::{GrammarError, guarded};

/// A format a generation is constrained to.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputFormat {
    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON valid under this JSON Schema.
    JsonSchema(Value),
    /// Text matching this regular expression as a whole.
    Regex(String),
    /// Text in this Lark grammar (llguidance's dialect: `%json {...}` embeds a schema).
    Lark(String),
}

impl OutputFormat {
    /// A JSON Schema given as JSON text (as the cluster's wire carries it).
    pub fn json_schema_text(text: &str) -> Result<Self, GrammarError> {
        serde_json::from_str(text)
            .map(OutputFormat::JsonSchema)
            .map_err(|e| GrammarError::Invalid(format!("the JSON schema does not parse: {e}")))
    }

    /// The llguidance grammar of this format.
    pub(crate) fn grammar(&self) -> TopLevelGrammar {
        match self {
            OutputFormat::JsonObject => {
                TopLevelGrammar::from_json_schema(compact(json!({"type": "object"})))
            }
            OutputFormat::JsonSchema(schema) => {
                TopLevelGrammar::from_json_schema(compact(schema.clone()))
            }
            OutputFormat::Regex(regex) => TopLevelGrammar::from_regex(regex),
            OutputFormat::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
        }
    }

    /// Compiles the format against a byte vocabulary: what a server does before it accepts
    /// a request, so that a bad schema is refused up front rather than failing its task.
    /// The error names what does not compile.
    pub fn check(&self) -> Result<(), GrammarError> {
        static FACTORY: OnceLock<Result<ParserFactory, String>> = OnceLock::new();
        let factory = FACTORY.get_or_init(|| {
            let mut factory = ParserFactory::new_simple(&ApproximateTokEnv::single_byte_env())
                .map_err(|e| e.to_string())?;
            factory.quiet();
            Ok(factory)
        });
        let factory = factory.as_ref().map_err(|e| GrammarError::Vocabulary(e.clone()))?;
        guarded(|| factory.create_parser(self.grammar()).map(drop).map_err(|e| e.to_string()))
            .map_err(GrammarError::Invalid)
    }
}

/// JSON the way small models write it: `", "` and `": "` between items and no other
/// whitespace. Flexible whitespace lets a model pad with newlines until it runs out of
/// tokens. A schema's own `x-guidance` options win.
fn compact(mut schema: Value) -> Value {
    if let Value::Object(fields) = &mut schema
        && !fields.contains_key("x-guidance")
    {
        fields.insert(
            "x-guidance".into(),
            json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_formats_compile() {
        let schema = json!({
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
        });
        for format in [
            OutputFormat::JsonObject,
            OutputFormat::JsonSchema(schema),
            OutputFormat::JsonSchema(json!(true)),
            OutputFormat::Regex("(yes|no)".into()),
            OutputFormat::Lark("start: \"a\" | \"b\"".into()),
        ] {
            assert_eq!(format.check(), Ok(()), "{format:?}");
        }
    }

    #[test]
    fn bad_formats_are_refused_with_the_reason() {
        let cases = [
            (OutputFormat::JsonSchema(json!({"type": "frobnicate"})), "frobnicate"),
            (OutputFormat::JsonSchema(json!({"$ref": "#/$defs/missing"})), "missing"),
            (OutputFormat::Regex("(unclosed".into()), "unclosed"),
            (OutputFormat::Lark("start: undefined_rule".into()), "undefined_rule"),
        ];
        for (format, named) in cases {
            let error = format.check().expect_err("refused").to_string();
            assert!(error.starts_with("invalid output format"), "{error}");
            assert!(error.contains(named), "{format:?}: {error}");
        }
    }
}
