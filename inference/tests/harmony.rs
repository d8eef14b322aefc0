//! A harmony model's (gpt-oss's) channels: the `analysis` message streams as reasoning, the
//! `final` one as the answer, headers and markers as neither, and `<|end|>` does not end the
//! generation while `<|return|>` does; an output format binds the final message alone. The models are tiny Qwen3s planted to write a known
//! harmony text after the prompt (`fixture::write_harmony_model`), with a harmony tokenizer
//! and chat template; everything between is the real engine, tokenizer and stream.

use std::path::PathBuf;

use candle_core::Device;
use fleet_grammar::OutputFormat;
use fleet_inference::transformer::fixture;
use fleet_inference::{
    ChatMessage, GenerateRequest, GenerationEvent, LoadOptions, LocalModel, Model, Role, Usage,
    load,
};
use futures::StreamExt;

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
async fn an_output_format_binds_the_final_message_and_tools_are_refused() -> Result<()> {
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
    // Tools: harmony's calls are not parsed yet, so they are refused rather than lost.
    let tool = serde_json::json!({"type": "function", "function": {
        "name": "add", "description": "adds", "parameters": {"type": "object"}}});
    let request = GenerateRequest { tools: vec![tool], ..chat("add 6 and 7") };
    let refusal = model.generate(request).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(refusal.contains("harmony"), "{refusal}");
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

/// How many tokens `text` is in the model's vocabulary.
fn model_tokens(dir: &std::path::Path, text: &str) -> Result<usize> {
    Ok(fleet_inference::text::Tokenizer::from_hf_dir(dir)?.encode(text)?.len())
}
