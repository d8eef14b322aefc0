//! The engine's prefix cache: a prompt that starts with blocks another sequence computed
//! copies them instead of computing them, gives exactly the tokens and log-probabilities it
//! gives without the cache, gives way to sequences when memory is short, and counts it all.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use candle_core::Device;
use fleet_inference::engine::{Engine, EngineOptions, TokenEvent, TokenLogprobs, TokenRequest};
use fleet_inference::prefix::BLOCK_SIZE;
use fleet_inference::transformer::load::load_hf_dir;
use fleet_inference::transformer::{Decoder, Family, fixture};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Two copies of one random model: the engine's, and one to compute each prompt alone.
fn models(name: &str) -> Result<(Decoder, Decoder)> {
    let dir = std::env::temp_dir().join(format!("fleet-prefix-{name}-{}", std::process::id()));
    let cfg = fixture::tiny_config(Family::Llama, true);
    fixture::write_hf(&dir, &cfg, &fixture::random_weights(&cfg)?)?;
    let pair = (load_hf_dir(&dir, &Device::Cpu, None)?, load_hf_dir(&dir, &Device::Cpu, None)?);
    std::fs::remove_dir_all(&dir)?;
    Ok(pair)
}

fn request(prompt: &[u32], max_tokens: usize) -> TokenRequest {
    TokenRequest {
        prompt: prompt.to_vec(),
        max_tokens,
        stop_tokens: vec![],
        sampling: Default::default(),
        logprobs: Some(2),
        constraint: None,
    }
}

/// What one generation produced: tokens, their logprobs, and the prompt tokens it took
/// from the cache.
#[derive(Debug, PartialEq)]
struct Run {
    tokens: Vec<u32>,
    logprobs: Vec<TokenLogprobs>,
    cached: usize,
}

async fn run(mut events: tokio::sync::mpsc::UnboundedReceiver<TokenEvent>) -> Result<Run> {
    let mut out = Run { tokens: Vec::new(), logprobs: Vec::new(), cached: 0 };
    while let Some(event) = events.recv().await {
        match event {
            TokenEvent::Token(t) => out.tokens.push(t),
            TokenEvent::Logprobs(l) => out.logprobs.push(l),
            TokenEvent::Done { cached_tokens, .. } => {
                out.cached = cached_tokens;
                return Ok(out);
            }
            TokenEvent::Error(e) => return Err(e.into()),
        }
    }
    Err("the engine dropped the generation".into())
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|j| (seed * 31 + j * 7 + 3) % 250).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_prompt_twice_computes_only_its_tail_and_gives_the_same_tokens() -> Result<()> {
    let (reference, model) = models("twice")?;
    let p = prompt(1, 3 * BLOCK_SIZE + 5);
    let solo = fixture::greedy_alone(&reference, &p, 12)?;
    let engine = Engine::start(model, EngineOptions::default())?;
    let first = run(engine.generate(request(&p, 12))).await?;
    let second = run(engine.generate(request(&p, 12))).await?;
    assert_eq!(first.tokens, solo);
    assert_eq!(first.cached, 0);
    // The prompt's three whole blocks; the five tokens after them are computed.
    assert_eq!(second.cached, 3 * BLOCK_SIZE);
    // Bit for bit: the same tokens and the same log-probabilities.
    assert_eq!(second.tokens, first.tokens);
    assert_eq!(second.logprobs, first.logprobs);
    let stats = engine.stats();
    assert_eq!(stats.prefix_hits.load(Ordering::Relaxed), 1);
    assert_eq!(stats.prefix_misses.load(Ordering::Relaxed), 1);
    assert_eq!(stats.cached_tokens.load(Ordering::Relaxed), 3 * BLOCK_SIZE as u64);
    assert_eq!(stats.prompt_tokens.load(Ordering::Relaxed), 2 * p.len() as u64);
    // A prompt that is exactly whole blocks leaves its last block to compute.
    let whole = prompt(2, 2 * BLOCK_SIZE);
    run(engine.generate(request(&whole, 4))).await?;
    let again = run(engine.generate(request(&whole, 4))).await?;
    assert_eq!(again.cached, BLOCK_SIZE);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_sequences_sharing_a_long_prefix_admitted_at_different_steps() -> Result<()> {
    const SHARED: usize = 300;
    let (reference, model) = models("shared")?;
    let shared = prompt(3, SHARED);
    let prompts: Vec<Vec<u32>> = (0..16u32)
        .map(|i| shared.iter().copied().chain((0..5).map(|j| (i * 17 + j * 5) % 250)).collect())
        .collect();
    // What each gives alone without the cache, log-probabilities included.
    let uncached =
        Engine::start(reference, EngineOptions { prefix_cache: false, ..Default::default() })?;
    let mut expected = Vec::new();
    for p in &prompts {
        expected.push(run(uncached.generate(request(p, 10))).await?);
    }
    // A small prefill chunk: the first sequence's prompt takes several steps, and the
    // others join while it runs.
    let engine = Engine::start(model, EngineOptions { prefill_chunk: 64, ..Default::default() })?;
    let mut runs = Vec::new();
    for p in &prompts {
        let mut events = engine.generate(request(p, 10));
        // The next one arrives once this one has its first token: a different step each.
        let first = events.recv().await;
        let lead = match first {
            Some(TokenEvent::Logprobs(l)) => l,
            other => return Err(format!("expected logprobs first, got {other:?}").into()),
        };
        runs.push(tokio::spawn(async move { (lead, run(events).await) }));
    }
    for (i, handle) in runs.into_iter().enumerate() {
        let (lead, result) = handle.await?;
        let result = result?;
        assert_eq!(result.tokens, expected[i].tokens, "sequence {i}");
        assert_eq!(lead, expected[i].logprobs[0], "sequence {i}");
        assert_eq!(result.logprobs, expected[i].logprobs[1..], "sequence {i}");
        // Every sequence after the first finds the shared prefix's whole blocks.
        let want = if i == 0 { 0 } else { SHARED / BLOCK_SIZE * BLOCK_SIZE };
        assert_eq!(result.cached, want, "sequence {i}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_blocks_give_way_to_sequences_under_a_small_budget() -> Result<()> {
    let (reference, model) = models("evict")?;
    let per_token = model.kv_bytes_per_token();
    // Room for one sequence of 58 positions and little else.
    let options = EngineOptions { max_kv_bytes: 70 * per_token, ..Default::default() };
    let engine = Engine::start(model, options)?;
    let (a, b) = (prompt(4, 50), prompt(5, 50));
    let solo = fixture::greedy_alone(&reference, &a, 8)?;
    let first = run(engine.generate(request(&a, 8))).await?;
    assert_eq!((first.cached, &first.tokens), (0, &solo));
    // The engine caches an ended sequence's blocks right after its last token.
    let held = || engine.stats().prefix_cache_bytes.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(5);
    while held() != 3 * BLOCK_SIZE * per_token {
        assert!(Instant::now() < deadline, "a's three whole blocks were not cached: {}", held());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // b needs 58 positions: a's blocks are evicted to admit it, then b's are cached.
    assert_eq!(run(engine.generate(request(&b, 8))).await?.cached, 0);
    let again = run(engine.generate(request(&a, 8))).await?;
    assert_eq!((again.cached, &again.logprobs), (0, &first.logprobs));
    // Now a's blocks are back: the next run finds them.
    let third = run(engine.generate(request(&a, 8))).await?;
    assert_eq!((third.cached, &third.logprobs), (3 * BLOCK_SIZE, &first.logprobs));
    assert!(held() <= 70 * per_token);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_can_be_turned_off() -> Result<()> {
    let (_, model) = models("off")?;
    let engine = Engine::start(model, EngineOptions { prefix_cache: false, ..Default::default() })?;
    let p = prompt(6, 40);
    let first = run(engine.generate(request(&p, 4))).await?;
    let second = run(engine.generate(request(&p, 4))).await?;
    assert_eq!((first.cached, second.cached), (0, 0));
    assert_eq!(second.tokens, first.tokens);
    assert_eq!(engine.stats().prefix_cache_bytes.load(Ordering::Relaxed), 0);
    assert_eq!(engine.stats().prefix_misses.load(Ordering::Relaxed), 2);
    Ok(())
}
