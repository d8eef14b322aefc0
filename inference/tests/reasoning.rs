//! A thinking model's reasoning arrives apart from its answer, and an output format binds
//! the answer only. The model is a tiny Qwen3 whose weights are planted to think by rote
//! (`fixture::write_thinking_model`: after the prompt it writes `<think>plan</think>42`), so
//! what the stream must split is known; everything between is the real engine, tokenizer
//! and chat template.

use std::path::PathBuf;

use candle_core::Device;
use fleet_grammar::OutputFormat;
use fleet_inference::transformer::fixture;
use fleet_inference::{
    ChatMessage, GenerateRequest, GenerationEvent, LoadOptions, LocalModel, Model, Role, load,
};
use futures::StreamExt;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const REASONING: &str = "plan";
const ANSWER: &str = "42";

fn thinking_model(name: &str) -> Result<(LocalModel, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("fleet-thinking-{name}-{}", std::process::id()));
    fixture::write_thinking_model(&dir, REASONING, ANSWER)?;
    Ok((load(&dir, &Device::Cpu, &LoadOptions::default())?, dir))
}

fn chat(text: &str) -> GenerateRequest {
    GenerateRequest {
        messages: vec![ChatMessage::new(Role::User, text)],
        max_tokens: Some(16),
        ..Default::default()
    }
}

/// What one generation streamed, in order: ("reasoning" | "answer" | "logprob", text).
async fn events(
    model: &LocalModel,
    request: GenerateRequest,
) -> Result<Vec<(&'static str, String)>> {
    let mut stream = model.generate(request)?;
    let mut out = Vec::new();
    while let Some(event) = stream.next().await {
        match event? {
            GenerationEvent::Reasoning(text) => out.push(("reasoning", text)),
            GenerationEvent::Delta(text) => out.push(("answer", text)),
            GenerationEvent::Logprobs(l) => out.push(("logprob", l.token)),
            GenerationEvent::ToolCall(_) => return Err("a tool call from a local model".into()),
            GenerationEvent::Done(_) => return Ok(out),
        }
    }
    Err("the stream ended without Done".into())
}

fn joined(events: &[(&str, String)], kind: &str) -> String {
    events.iter().filter(|(k, _)| *k == kind).map(|(_, t)| t.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_streams_apart_from_the_answer_and_before_it() -> Result<()> {
    let (model, dir) = thinking_model("apart")?;
    let out = events(&model, chat("What is six times seven?")).await?;
    assert_eq!(joined(&out, "reasoning"), REASONING, "{out:?}");
    assert_eq!(joined(&out, "answer"), ANSWER, "{out:?}");
    let last_reasoning = out.iter().rposition(|(k, _)| *k == "reasoning");
    let first_answer = out.iter().position(|(k, _)| *k == "answer");
    assert!(last_reasoning < first_answer, "the answer came before the reasoning ended: {out:?}");
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_are_the_answers_alone() -> Result<()> {
    let (model, dir) = thinking_model("logprobs")?;
    let out =
        events(&model, GenerateRequest { logprobs: Some(2), ..chat("Six times seven?") }).await?;
    let tokens: Vec<&str> =
        out.iter().filter(|(k, _)| *k == "logprob").map(|(_, t)| t.as_str()).collect();
    assert_eq!(tokens, ["4", "2", "<|im_end|>"], "{out:?}");
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_format_binds_the_answer_not_the_reasoning() -> Result<()> {
    let (model, dir) = thinking_model("format")?;
    // An integer: the reasoning's `<think>` and "plan" are no part of one, the answer is.
    let format = OutputFormat::JsonSchema(serde_json::json!({"type": "integer"}));
    let out = events(&model, GenerateRequest { format: Some(format), ..chat("6 x 7?") }).await?;
    assert_eq!(joined(&out, "reasoning"), REASONING, "{out:?}");
    assert_eq!(joined(&out, "answer"), ANSWER, "{out:?}");
    // A string: the reasoning is as free as before; the answer bends to the format.
    let format = OutputFormat::JsonSchema(serde_json::json!({"type": "string"}));
    let out = events(&model, GenerateRequest { format: Some(format), ..chat("6 x 7?") }).await?;
    assert_eq!(joined(&out, "reasoning"), REASONING, "{out:?}");
    assert!(joined(&out, "answer").starts_with('"'), "{out:?}");
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thinking_off_closes_an_empty_reasoning_in_the_prompt() -> Result<()> {
    let (model, dir) = thinking_model("off")?;
    let on = model.prompt_tokens(&chat("Hi"))?;
    let off = model.prompt_tokens(&GenerateRequest { thinking: Some(false), ..chat("Hi") })?;
    let tokenizer = model.tokenizer().ok_or("no tokenizer")?;
    let text = tokenizer.decode(&off)?;
    assert!(text.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"), "{text:?}");
    assert_eq!(on, model.prompt_tokens(&GenerateRequest { thinking: Some(true), ..chat("Hi") })?);
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_prompt_continues_as_text_markers_and_all() -> Result<()> {
    let (model, dir) = thinking_model("raw")?;
    let request = GenerateRequest {
        prompt: Some("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n".into()),
        max_tokens: Some(16),
        ..Default::default()
    };
    let out = events(&model, request).await?;
    assert_eq!(joined(&out, "reasoning"), "");
    assert_eq!(joined(&out, "answer"), format!("<think>{REASONING}</think>{ANSWER}"));
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_the_reasoning_tokens_markers_included() -> Result<()> {
    let (model, dir) = thinking_model("usage")?;
    let mut stream = model.generate(chat("What is six times seven?"))?;
    let mut usage = None;
    while let Some(event) = stream.next().await {
        if let GenerationEvent::Done(u) = event? {
            usage = Some(u);
        }
    }
    let usage = usage.ok_or("no Done")?;
    let tokenizer = model.tokenizer().ok_or("no tokenizer")?;
    // <think>, the reasoning's tokens, </think>; then "4", "2" and <|im_end|>.
    let reasoning = 2 + tokenizer.encode(REASONING)?.len() as u32;
    assert_eq!(usage.reasoning_tokens, reasoning, "{usage:?}");
    assert_eq!(usage.completion_tokens, reasoning + 3, "{usage:?}");
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
