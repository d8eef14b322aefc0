//! A harmony model's (gpt-oss's) channels: the `analysis` message streams as reasoning, the
//! `final` one as the answer, headers and markers as neither, and `<|end|>` does not end the
//! generation while `<|return|>` does; an output format binds the final message alone; a
//! message to a function is a tool call, under a grammar that makes every call name a given
//! tool with valid arguments. The models are tiny Qwen3s planted to write a known harmony
//! text after the prompt (`fixture::write_harmony_model`), with a harmony tokenizer and chat
//! template; everything between is the real engine, tokenizer, grammar and stream.

use std::path::PathBuf;

use candle_core::Device;
use fleet_grammar::OutputFormat;
use fleet_inference::transformer::fixture;
use fleet_inference::{
    ChatMessage, FinishReason, GenerateRequest, GenerationEvent, LoadOptions, LocalModel, Model,
    Role, ToolCall, ToolChoice, Usage, load,
};
use futures::StreamExt;
use serde_json::{Value, json};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn harmony_model(name: &str, output: &str) -> Result<(LocalModel, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("fleet-harmony-{name}-{}", std::process::id()));
    fixture::write_harmony_model(&dir, output)?;
    Ok((load(&dir, &Device::Cpu, &LoadOptions::default())?, dir))
}

fn chat(text: &str) -> GenerateRequest {
    GenerateRequest {
        messages: vec![ChatMessage::new(Role::User, text)],
        max_tokens: Some(24),
        logprobs: Some(0),
        ..Default::default()
    }
}

/// What one generation streamed: reasoning, answer, the answer's logprob tokens, usage.
async fn run(
    model: &LocalModel,
    request: GenerateRequest,
) -> Result<(String, String, String, Usage)> {
    let mut stream = model.generate(request)?;
    let (mut reasoning, mut answer, mut logprobs) = (String::new(), String::new(), String::new());
    while let Some(event) = stream.next().await {
        match event? {
            GenerationEvent::Reasoning(text) => reasoning.push_str(&text),
            GenerationEvent::Delta(text) => answer.push_str(&text),
            GenerationEvent::Logprobs(l) => logprobs.push_str(&l.token),
            GenerationEvent::ToolCall(_) => return Err("a tool call from a local model".into()),
            GenerationEvent::Done(usage) => return Ok((reasoning, answer, logprobs, usage)),
        }
    }
    Err("the stream ended without Done".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_final_channel_is_the_answer_and_its_header_is_not() -> Result<()> {
    let (model, dir) = harmony_model("final", "<|channel|>final<|message|>42<|return|>")?;
    let (reasoning, answer, logprobs, usage) = run(&model, chat("six times seven?")).await?;
    assert_eq!((reasoning.as_str(), answer.as_str()), ("", "42"));
    assert_eq!(logprobs, "42", "logprobs are the answer's alone");
    // `<|channel|>`, the channel's name, `<|message|>`; `42`; `<|return|>`.
    let name = model_tokens(&dir, "final")?;
    assert_eq!(usage.completion_tokens as usize, 2 + name + 2 + 1);
    assert_eq!(usage.reasoning_tokens as usize, 2 + name);
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysis_streams_as_reasoning_and_end_does_not_stop_the_generation() -> Result<()> {
    // After `<|end|>` the model opens another header; `<|return|>` ends it there.
    let (model, dir) =
        harmony_model("analysis", "<|channel|>analysis<|message|>go<|end|><|start|><|return|>")?;
    let (reasoning, answer, logprobs, usage) = run(&model, chat("six times seven?")).await?;
    assert_eq!((reasoning.as_str(), answer.as_str(), logprobs.as_str()), ("go", "", ""));
    assert_eq!(usage.finish_reason, fleet_inference::FinishReason::Stop);
    // All of it was generated (`<|end|>` stopped nothing): `<|channel|>`, the channel's name,
    // `<|message|>`, `go`, `<|end|>`, `<|start|>`, `<|return|>`; every token but the last is
    // the reasoning's or its markers'.
    let written = 3 + model_tokens(&dir, "analysis")? + model_tokens(&dir, "go")? + 2;
    assert_eq!(usage.completion_tokens as usize, written);
    assert_eq!(usage.reasoning_tokens + 1, usage.completion_tokens);
    // An output format binds the final message only: the analysis is as free as before.
    let format = OutputFormat::JsonSchema(serde_json::json!({"type": "integer"}));
    let (reasoning, ..) =
        run(&model, GenerateRequest { format: Some(format), ..chat("6 x 7?") }).await?;
    assert_eq!(reasoning, "go");
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_format_binds_the_final_message() -> Result<()> {
    let (model, dir) = harmony_model("format", "<|channel|>final<|message|>42<|return|>")?;
    // An integer: the model's own answer fits, header and all.
    let integer = OutputFormat::JsonSchema(serde_json::json!({"type": "integer"}));
    let (_, answer, ..) =
        run(&model, GenerateRequest { format: Some(integer), ..chat("6 x 7?") }).await?;
    assert_eq!(answer, "42");
    // A string: the header is free, the message bends to the format.
    let string = OutputFormat::JsonSchema(serde_json::json!({"type": "string"}));
    let (reasoning, answer, ..) =
        run(&model, GenerateRequest { format: Some(string), ..chat("6 x 7?") }).await?;
    assert_eq!(reasoning, "");
    assert!(answer.starts_with('"'), "{answer:?}");
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

/// The planted model's own call: to `sum`, with no arguments.
const CALL: &str = "<|channel|>commentary to=functions.sum <|constrain|>json<|message|>{}<|call|>";

fn tools() -> Vec<Value> {
    vec![
        json!({"type": "function", "function": {"name": "sum", "description": "Adds.",
            "parameters": {"type": "object"}}}),
        json!({"type": "function", "function": {"name": "get_weather", "description": "Weather.",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"], "additionalProperties": false}}}),
        json!({"type": "function", "function": {"name": "add", "description": "Adds two.",
            "parameters": {"type": "object", "properties": {
                "a": {"type": "integer", "minimum": -1000, "maximum": 1000},
                "b": {"type": "integer", "minimum": -1000, "maximum": 1000}},
                "required": ["a", "b"], "additionalProperties": false}}}),
    ]
}

/// What a generation with tools streamed: its calls, its answer and reasoning, its finish.
async fn calls_of(
    model: &LocalModel,
    request: GenerateRequest,
) -> Result<(Vec<ToolCall>, String, FinishReason)> {
    let mut stream = model.generate(request)?;
    let (mut calls, mut text) = (Vec::new(), String::new());
    while let Some(event) = stream.next().await {
        match event? {
            GenerationEvent::ToolCall(call) => calls.push(call),
            GenerationEvent::Delta(t) | GenerationEvent::Reasoning(t) => text.push_str(&t),
            GenerationEvent::Logprobs(_) => {}
            GenerationEvent::Done(usage) => return Ok((calls, text, usage.finish_reason)),
        }
    }
    Err("the stream ended without Done".into())
}

/// Whether `call` names one of [`tools`] and carries arguments valid under its schema.
fn valid(call: &ToolCall) -> bool {
    let Ok(Value::Object(args)) = serde_json::from_str::<Value>(&call.arguments) else {
        return false;
    };
    let integer =
        |v: &Value| v.as_f64().is_some_and(|v| v.fract() == 0.0 && (-1000.0..=1000.0).contains(&v));
    match call.name.as_str() {
        "sum" => true,
        "get_weather" => {
            args.len() == 2
                && args["city"].as_str().is_some_and(|c| c.chars().count() <= 20)
                && matches!(args["unit"].as_str(), Some("celsius" | "fahrenheit"))
        }
        "add" => args.len() == 2 && integer(&args["a"]) && integer(&args["b"]),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_a_function_is_a_tool_call_and_its_grammar_makes_it_valid() -> Result<()> {
    let (model, dir) = harmony_model("calls", CALL)?;
    let ask = |choice: ToolChoice| GenerateRequest {
        tools: tools(),
        tool_choice: choice,
        max_tokens: Some(64),
        ..chat("add 6 and 7")
    };
    // The model's own call passes its grammar, and arrives as a call, not as text.
    let (calls, text, finish) = calls_of(&model, ask(ToolChoice::Auto)).await?;
    let sum = ToolCall { id: "call_0".into(), name: "sum".into(), arguments: "{}".into() };
    assert_eq!((calls, text.as_str(), finish), (vec![sum], "", FinishReason::Stop));
    // Told to call `add` (or any but `sum`), the model would still call `sum` with no
    // arguments: the grammar writes the header of the tool asked for and arguments valid
    // under its schema.
    let only = |name: &str| {
        let mut request = ask(ToolChoice::Function(name.into()));
        request.tools.retain(|t| t["function"]["name"] != "sum" || name == "sum");
        request
    };
    for name in ["add", "get_weather"] {
        let (calls, text, finish) = calls_of(&model, only(name)).await?;
        assert_eq!((calls.len(), text.as_str(), finish), (1, "", FinishReason::Stop), "{calls:?}");
        assert!(calls[0].name == name && valid(&calls[0]), "{calls:?}");
    }
    let mut required = ask(ToolChoice::Required);
    required.tools.remove(0);
    let (calls, _, finish) = calls_of(&model, required).await?;
    assert!(calls.len() == 1 && valid(&calls[0]) && finish == FinishReason::Stop, "{calls:?}");
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_call_and_its_result_render_as_messages_to_and_from_the_function() -> Result<()>
{
    let (model, dir) = harmony_model("history", CALL)?;
    let sum = ToolCall { id: "call_0".into(), name: "sum".into(), arguments: "{}".into() };
    let answered =
        ChatMessage { tool_calls: vec![sum.clone()], ..ChatMessage::new(Role::Assistant, "") };
    let request = GenerateRequest {
        messages: vec![
            ChatMessage::new(Role::User, "add 6 and 7"),
            answered,
            ChatMessage::tool_result("call_0", "13"),
        ],
        tools: tools(),
        max_tokens: Some(64),
        ..Default::default()
    };
    let tokenizer = fleet_inference::text::Tokenizer::from_hf_dir(&dir)?;
    let prompt = tokenizer.decode(&model.prompt_tokens(&request)?)?;
    let expected = "<|start|>assistant<|channel|>commentary to=functions.sum <|constrain|>json\
                    <|message|>{}<|call|><|start|>functions.sum to=assistant<|channel|>commentary\
                    <|message|>13<|end|><|start|>assistant";
    assert!(prompt.ends_with(expected), "{prompt}");
    assert!(prompt.contains("type add = (_: {"), "the tools are declared: {prompt}");
    // The reply after the result is read from the assistant's new header.
    let (calls, ..) = calls_of(&model, request).await?;
    assert_eq!(calls, vec![sum]);
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

/// How many tokens `text` is in the model's vocabulary.
fn model_tokens(dir: &std::path::Path, text: &str) -> Result<usize> {
    Ok(fleet_inference::text::Tokenizer::from_hf_dir(dir)?.encode(text)?.len())
}
