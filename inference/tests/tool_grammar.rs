//! Tool calls under a grammar, through `load()` and `generate`: a tiny random-weight model
//! sampled at temperature 1 (noise when free) writes calls that parse, name a given tool
//! and carry valid arguments whenever it must call (`required`, a named function), and in
//! `auto` either answers without call markup or calls properly. On SmolLM2 (real weights,
//! a template without tools: told about them in its system message) every call parses.

use std::path::PathBuf;

use candle_core::Device;
use fleet_inference::installed::smollm2_gguf;
use fleet_inference::text::fixture::write_tokenizer_files;
use fleet_inference::transformer::{Family, fixture};
use fleet_inference::{
    ChatMessage, FinishReason, GenerateRequest, GenerationEvent, LoadOptions, LocalModel, Model,
    Role, ToolChoice, load,
};
use futures::StreamExt;
use serde_json::{Value, json};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// `name` keeps each test's files apart: tests run concurrently in one process, and one
/// rewriting tokenizer.json while another loads it reads an empty file.
fn tiny_model(name: &str) -> Result<LocalModel> {
    let dir =
        std::env::temp_dir().join(format!("fleet-tool-grammar-{name}-{}", std::process::id()));
    let mut cfg = fixture::tiny_config(Family::Qwen2, true);
    // The tools' system message is ~900 tokens of the fixture's byte-level vocabulary.
    cfg.max_positions = 2048;
    fixture::write_hf(&dir, &cfg, &fixture::random_weights(&cfg)?)?;
    write_tokenizer_files(&dir)?;
    Ok(load(&dir, &Device::Cpu, &LoadOptions::default())?)
}

fn tools() -> Vec<Value> {
    vec![
        json!({"type": "function", "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 20},
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
                "additionalProperties": false,
            },
        }}),
        json!({"type": "function", "function": {
            "name": "add",
            "description": "Adds two integers.",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "minimum": -1000, "maximum": 1000},
                    "b": {"type": "integer", "minimum": -1000, "maximum": 1000},
                },
                "required": ["a", "b"],
                "additionalProperties": false,
            },
        }}),
    ]
}

fn request(text: &str, seed: u64, choice: ToolChoice, temperature: f32) -> GenerateRequest {
    GenerateRequest {
        messages: vec![ChatMessage::new(Role::User, text)],
        max_tokens: Some(120),
        temperature: Some(temperature),
        seed: Some(seed),
        tools: tools(),
        tool_choice: choice,
        ..Default::default()
    }
}

async fn run(model: &LocalModel, request: GenerateRequest) -> Result<(String, FinishReason)> {
    let mut stream = model.generate(request)?;
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event? {
            GenerationEvent::Delta(delta) => text.push_str(&delta),
            GenerationEvent::Done(usage) => return Ok((text, usage.finish_reason)),
            _ => {}
        }
    }
    Err("the stream ended without Done".into())
}

/// The Hermes calls a reply consists of, checked against [`tools`]: each names a tool and
/// has arguments valid under its schema. An error says what is wrong.
fn calls(text: &str) -> std::result::Result<Vec<(String, Value)>, String> {
    let mut found = Vec::new();
    for (i, piece) in text.split("<tool_call>\n").enumerate() {
        if i == 0 {
            if !piece.is_empty() {
                return Err(format!("text before the first call: {piece:?}"));
            }
            continue;
        }
        let body = piece
            .strip_suffix("\n</tool_call>\n")
            .or_else(|| piece.strip_suffix("\n</tool_call>"))
            .ok_or_else(|| format!("unclosed call: {piece:?}"))?;
        let call: Value = serde_json::from_str(body).map_err(|e| format!("{body}: {e}"))?;
        let (name, args) = (call["name"].as_str().unwrap_or(""), &call["arguments"]);
        let valid = match name {
            "get_weather" => {
                args["city"].as_str().is_some_and(|c| c.chars().count() <= 20)
                    && matches!(args["unit"].as_str(), Some("celsius" | "fahrenheit"))
                    && args.as_object().is_some_and(|o| o.len() == 2)
            }
            "add" => {
                // JSON Schema's integer is a number with no fraction, in any spelling the
                // grammar allows: `-0` is one (serde_json reads it as the float -0.0).
                let integer = |v: &Value| {
                    v.as_f64().is_some_and(|v| v.fract() == 0.0 && (-1000.0..=1000.0).contains(&v))
                };
                integer(&args["a"])
                    && integer(&args["b"])
                    && args.as_object().is_some_and(|o| o.len() == 2)
            }
            _ => false,
        };
        if !valid {
            return Err(format!("not a valid call of a given tool: {body}"));
        }
        found.push((name.to_owned(), args.clone()));
    }
    if found.is_empty() {
        return Err(format!("no call in {text:?}"));
    }
    Ok(found)
}

#[test]
fn the_checker_takes_integers_in_every_spelling_and_nothing_else() {
    let add = |args: &str| {
        calls(&format!("<tool_call>\n{{\"name\": \"add\", \"arguments\": {args}}}\n</tool_call>"))
    };
    // A random-weight model wrote `-0` once (the weights are drawn anew each run).
    assert!(add(r#"{"a": 111, "b": -0}"#).is_ok());
    assert!(add(r#"{"a": -1000, "b": 1000}"#).is_ok());
    for bad in [r#"{"a": 1.5, "b": 0}"#, r#"{"a": 1001, "b": 0}"#, r#"{"a": "1", "b": 0}"#] {
        assert!(add(bad).is_err(), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_weights_call_tools_properly_whenever_they_call() -> Result<()> {
    let model = tiny_model("calls")?;
    let mut runs = Vec::new();
    for seed in 0..8 {
        let mut required = request("weather?", seed, ToolChoice::Required, 1.0);
        required.parallel_tool_calls = seed % 2 == 0;
        runs.push(run(&model, required));
        runs.push(run(&model, request("sum", seed, ToolChoice::Function("add".into()), 1.0)));
        runs.push(run(&model, request("anything", seed, ToolChoice::Auto, 1.0)));
    }
    let (mut answered, mut called) = (0, 0);
    for (i, result) in futures::future::join_all(runs).await.into_iter().enumerate() {
        let (text, finish) = result?;
        match i % 3 {
            0 | 1 => {
                // One call per reply unless several are allowed; then noise may go on
                // calling until max_tokens, and the calls it finished are proper ones.
                let parallel = i % 3 == 0 && (i / 3) % 2 == 0;
                let done = match (parallel, finish) {
                    (true, FinishReason::Length) => {
                        let end = text.rfind("\n</tool_call>").ok_or("no whole call")?;
                        &text[..end + "\n</tool_call>".len()]
                    }
                    _ => {
                        assert_eq!(finish, FinishReason::Stop, "cut off: {text:?}");
                        &text[..]
                    }
                };
                let found = calls(done)?;
                assert!(parallel || found.len() == 1, "{text}");
                if i % 3 == 1 {
                    assert_eq!(found[0].0, "add", "{text}");
                }
            }
            _ if text.contains("<tool_call>") => {
                // Once a call is opened, it is a proper call (when not cut off).
                if finish == FinishReason::Stop {
                    calls(&text)?;
                }
                called += 1;
            }
            _ => answered += 1,
        }
    }
    assert_eq!(answered + called, 8);
    // Free, the same model writes no call that parses: the grammar did the work.
    let mut free = request("weather?", 0, ToolChoice::Auto, 1.0);
    free.tools.clear();
    let (text, _) = run(&model, free).await?;
    assert!(calls(&text).is_err(), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tool_or_choice_is_an_invalid_request() -> Result<()> {
    let model = tiny_model("refusals")?;
    let mut unknown = request("x", 0, ToolChoice::Function("fly".into()), 1.0);
    let error = model.generate(unknown.clone()).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("\"fly\""), "{error}");
    unknown.tools = vec![
        json!({"type": "function", "function": {"name": "f", "parameters": {"type": "frobnicate"}}}),
    ];
    unknown.tool_choice = ToolChoice::Auto;
    let error = model.generate(unknown).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("frobnicate"), "{error}");
    Ok(())
}

fn smollm2() -> Result<LocalModel> {
    let path: PathBuf = smollm2_gguf().map_err(|e| e.to_string())?;
    Ok(load(&path, &Device::Cpu, &LoadOptions::default())?)
}

/// 24 requests that must call a tool, at once: every reply is calls that parse and name a
/// given tool with valid arguments; and the calls fit the questions (the model chose).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_calls_parse_every_time_when_it_must_call() -> Result<()> {
    let model = smollm2()?;
    let cities = [
        "Paris", "Tokyo", "Lima", "Cairo", "Oslo", "Rome", "Lagos", "Quito", "Hanoi", "Dublin",
        "Madrid", "Seoul",
    ];
    let mut asks = Vec::new();
    for (i, city) in cities.iter().enumerate() {
        let weather = format!("What is the weather in {city} in celsius?");
        let sum = format!("What is {} plus {}?", i * 7 + 3, i * 13 + 5);
        asks.push(run(&model, request(&weather, i as u64, ToolChoice::Required, 0.0)));
        asks.push(run(&model, request(&sum, i as u64, ToolChoice::Required, 0.7)));
    }
    let mut fitting = 0;
    for (i, result) in futures::future::join_all(asks).await.into_iter().enumerate() {
        let (text, finish) = result?;
        assert_eq!(finish, FinishReason::Stop, "cut off: {text:?}");
        let found = calls(&text)?;
        assert_eq!(found.len(), 1, "{text}");
        let wanted = if i % 2 == 0 { "get_weather" } else { "add" };
        fitting += usize::from(found[0].0 == wanted);
    }
    // A 135M model does not always pick the right tool; most of the time it does.
    assert!(fitting >= 12, "only {fitting} of 24 calls fit their question");
    Ok(())
}
