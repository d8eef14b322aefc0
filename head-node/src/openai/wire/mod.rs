//! The JSON the API reads and writes. Requests are read field by field from a JSON object, so
//! that every rejection names the field at fault (`param`) and unknown fields (clients send
//! many) are ignored; responses are plain `Serialize` structs.
//!
//! - `fields`: the reader of a request's fields;
//! - `chat_request`, `embeddings_request`: the two request parsers (the Responses API and
//!   `/v1/completions` reuse the chat one);
//! - `bodies`: every response body.

mod bodies;
mod chat_request;
mod embeddings_request;
mod fields;

pub use bodies::{
    AssistantMessage, ChatCompletion, ChatCompletionChunk, Choice, ChoiceLogprobs, ChunkChoice,
    CompletionTokensDetails, CompletionUsage, Delta, Embedding, EmbeddingList, EmbeddingUsage,
    FunctionOut, LogprobOut, Model, ModelList, PromptTokensDetails, ToolCallOut, TopLogprobOut,
    Vector, finish_reason,
};
pub use chat_request::{ChatRequest, reasoning_effort};
pub use embeddings_request::{EmbeddingsRequest, EncodingFormat, MAX_EMBED_INPUTS};

#[cfg(test)]
mod tests {
    use fleet_proto::{ClientToolChoice, OutputFormat};
    use serde_json::{Value, json};

    use super::super::errors::ApiError;
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
