//! The continuous-batching engine: requests arriving at different times, batched together,
//! produce exactly what each produces alone; cancelling frees KV memory; limits hold.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use candle_core::Device;
use fleet_inference::engine::{Engine, EngineOptions, Finish, Refusal, TokenEvent, TokenRequest};
use fleet_inference::transformer::load::load_hf_dir;
use fleet_inference::transformer::{Decoder, Family, StepInput, fixture};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Two copies of one random model (the engine takes ownership of its model; the other
/// copy computes what each sequence produces alone).
fn models(name: &str) -> Result<(Decoder, Decoder)> {
    let dir = std::env::temp_dir().join(format!("fleet-engine-{name}-{}", std::process::id()));
    let cfg = fixture::tiny_config(Family::Qwen2, true);
    fixture::write_hf(&dir, &cfg, &fixture::random_weights(&cfg)?)?;
    let pair = (load_hf_dir(&dir, &Device::Cpu, None)?, load_hf_dir(&dir, &Device::Cpu, None)?);
    std::fs::remove_dir_all(&dir)?;
    Ok(pair)
}

fn model(name: &str) -> Result<Decoder> {
    Ok(models(name)?.0)
}

fn alone(model: &Decoder, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
    Ok(fixture::greedy_alone(model, prompt, n)?)
}

async fn collect(
    mut events: tokio::sync::mpsc::UnboundedReceiver<TokenEvent>,
) -> (Vec<u32>, Option<TokenEvent>) {
    let mut tokens = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            TokenEvent::Token(t) => tokens.push(t),
            other => return (tokens, Some(other)),
        }
    }
    (tokens, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staggered_requests_produce_their_solo_tokens() -> Result<()> {
    // Each run must give every request its solo tokens. Whether the requests overlapped
    // depends on the test thread being scheduled while the engine steps: a descheduled
    // test thread (a loaded CI machine) can let each request finish before the next one
    // arrives. So runs repeat, each checked in full, until one shows batching (fewer steps
    // than the requests take one after another); 5 runs without any is a failure.
    for run in 0..5 {
        if staggered_run(&format!("solo-{run}")).await? < 8 * 16 {
            return Ok(());
        }
    }
    Err("in 5 runs the staggered requests were never batched".into())
}

/// Submits 8 prompts one by one to an engine on a new random model, each once the previous
/// has produced its first token, and checks each request's tokens against the model's
/// tokens alone; gives the engine's step count.
async fn staggered_run(name: &str) -> Result<usize> {
    let (reference, model) = models(name)?;
    let prompts: Vec<Vec<u32>> =
        (0..8u32).map(|i| (0..3 + 5 * i).map(|j| (i * 13 + j * 11 + 1) % 256).collect()).collect();
    let expected: Vec<Vec<u32>> =
        prompts.iter().map(|p| alone(&reference, p, 16)).collect::<Result<_>>()?;
    // The same weights again, now inside an engine with a small prefill chunk.
    let engine = Engine::start(model, EngineOptions { prefill_chunk: 8, ..Default::default() })?;
    let mut runs = Vec::new();
    for prompt in &prompts {
        let events = engine.generate(TokenRequest {
            prompt: prompt.clone(),
            max_tokens: 16,
            stop_tokens: vec![],
            sampling: Default::default(),
            logprobs: None,
            constraint: None,
        });
        // The next request arrives once this one has produced its first token: each joins
        // a batch already running, at a different step (an observable condition, not a sleep).
        let mut events = events;
        let first = events.recv().await;
        runs.push(tokio::spawn(async move {
            let (mut tokens, end) = collect(events).await;
            if let Some(TokenEvent::Token(t)) = first {
                tokens.insert(0, t);
            }
            (tokens, end)
        }));
    }
    for (i, run) in runs.into_iter().enumerate() {
        let (tokens, end) = run.await?;
        assert_eq!(tokens, expected[i], "request {i}");
        assert_eq!(
            end,
            Some(TokenEvent::Done {
                prompt_tokens: prompts[i].len(),
                cached_tokens: 0,
                completion_tokens: 16,
                finish: Finish::Length
            })
        );
    }
    Ok(engine.stats().steps.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_tokens_end_a_generation() -> Result<()> {
    let m = model("stop")?;
    let prompt = vec![5, 6, 7];
    let solo = alone(&m, &prompt, 8)?;
    let engine = Engine::start(m, EngineOptions::default())?;
    let stop = solo[3];
    let (tokens, end) = collect(engine.generate(TokenRequest {
        prompt,
        max_tokens: 8,
        stop_tokens: vec![stop],
        sampling: Default::default(),
        logprobs: None,
        constraint: None,
    }))
    .await;
    let cut = solo.iter().position(|&t| t == stop).map_or(8, |p| p + 1);
    assert_eq!(tokens, solo[..cut]);
    assert!(matches!(end, Some(TokenEvent::Done { finish: Finish::Stop, .. })));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_sequence_frees_its_kv_memory() -> Result<()> {
    // No stop tokens: uncancelled, the sequence would run all 4,000 tokens (a tiny model
    // does that within the deadline, so freed memory alone would not show the cancel).
    const MAX_TOKENS: usize = 4000;
    let engine = Engine::start(model("cancel")?, EngineOptions::default())?;
    let mut events = engine.generate(TokenRequest {
        prompt: vec![1, 2, 3],
        max_tokens: MAX_TOKENS,
        stop_tokens: vec![],
        sampling: Default::default(),
        logprobs: None,
        constraint: None,
    });
    assert!(matches!(events.recv().await, Some(TokenEvent::Token(_))));
    assert!(engine.stats().kv_bytes.load(Ordering::Relaxed) > 0);
    drop(events);
    let deadline = Instant::now() + Duration::from_secs(5);
    while engine.stats().kv_bytes.load(Ordering::Relaxed) != 0 {
        assert!(Instant::now() < deadline, "the cancelled sequence kept its KV memory");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(engine.stats().active.load(Ordering::Relaxed), 0);
    let generated = engine.stats().generated_tokens.load(Ordering::Relaxed);
    assert!(generated < MAX_TOKENS as u64 / 4, "{generated} tokens generated after the cancel");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_show_an_idle_engine_once_its_last_sequence_ends() -> Result<()> {
    let engine = Engine::start(model("idle")?, EngineOptions::default())?;
    let (tokens, end) = collect(engine.generate(TokenRequest {
        prompt: vec![1, 2, 3],
        max_tokens: 6,
        stop_tokens: vec![],
        sampling: Default::default(),
        logprobs: None,
        constraint: None,
    }))
    .await;
    assert!(matches!(end, Some(TokenEvent::Done { finish: Finish::Length, .. })), "{end:?}");
    // The engine now waits for a request; its figures must not keep the ended sequence.
    let stats = engine.stats();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.active.load(Ordering::Relaxed) != 0 || stats.kv_bytes.load(Ordering::Relaxed) != 0 {
        assert!(Instant::now() < deadline, "an idle engine still shows a running sequence");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Every token timed once: the first from the request, the others from the one before.
    let (first, between) = (stats.time_to_first_token.snapshot(), stats.inter_token.snapshot());
    assert_eq!((first.count(), between.count()), (1, tokens.len() as u64 - 1));
    assert!(first.sum_seconds > 0.0 && between.sum_seconds > 0.0);
    Ok(())
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> TokenRequest {
    TokenRequest {
        prompt,
        max_tokens,
        stop_tokens: vec![],
        sampling: Default::default(),
        logprobs: None,
        constraint: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_waiting_queue_refuses_at_once_and_keeps_serving_the_rest() -> Result<()> {
    let options = EngineOptions { max_sequences: 1, max_waiting: 2, ..Default::default() };
    let engine = Engine::start(model("queue")?, options)?;
    // One sequence running (it would run 4,000 tokens), two waiting behind it.
    let mut running = engine.generate(request(vec![1, 2, 3], 4000));
    assert!(matches!(running.recv().await, Some(TokenEvent::Token(_))));
    let (first, second) =
        (engine.generate(request(vec![4], 3)), engine.generate(request(vec![5], 3)));
    // The third is one too many: refused before it queues, with what to do.
    let mut refused = engine.generate(request(vec![6], 3));
    match refused.recv().await {
        Some(TokenEvent::Error(e)) => {
            assert_eq!(e.kind, Refusal::Busy, "{e}");
            assert!(e.message.contains("2 requests are already waiting"), "{e}");
        }
        other => panic!("a request past the waiting limit got {other:?}"),
    }
    // The running one ends (canceled); the waiting ones get their turn and finish.
    drop(running);
    for waiting in [first, second] {
        let (tokens, end) = collect(waiting).await;
        assert_eq!(tokens.len(), 3);
        assert!(matches!(end, Some(TokenEvent::Done { .. })), "{end:?}");
    }
    // Room again: the queue counted the ones that left it.
    for _ in 0..2 {
        let (tokens, end) = collect(engine.generate(request(vec![7], 2))).await;
        assert_eq!(tokens.len(), 2, "{end:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_waits_for_kv_memory_and_refuses_what_never_fits() -> Result<()> {
    let m = model("admit")?;
    let per_token = 2 * 2 * 2 * 16 * 4; // layers * (k, v) * kv heads * head dim * f32
    let options = EngineOptions { max_kv_bytes: 40 * per_token, ..Default::default() };
    let engine = Engine::start(m, options)?;
    let (tokens, end) = collect(engine.generate(TokenRequest {
        prompt: vec![1; 30],
        max_tokens: 20,
        stop_tokens: vec![],
        sampling: Default::default(),
        logprobs: None,
        constraint: None,
    }))
    .await;
    assert!(
        tokens.is_empty()
            && matches!(end, Some(TokenEvent::Error(e)) if e.message.contains("KV memory"))
    );
    // Two requests of 30 positions each cannot run together within 40: the second waits
    // until the first is done. Told by the engine's steps, not by when tokens are read (a
    // reader may fall behind an engine that has long finished the first): 20 tokens each
    // take 20 steps each when they run one after the other, 20 in all when batched.
    let steps_before = engine.stats().steps.load(Ordering::Relaxed);
    let a = engine.generate(TokenRequest {
        prompt: vec![1; 10],
        max_tokens: 20,
        stop_tokens: vec![],
        sampling: Default::default(),
        logprobs: None,
        constraint: None,
    });
    let b = engine.generate(TokenRequest {
        prompt: vec![2; 10],
        max_tokens: 20,
        stop_tokens: vec![],
        sampling: Default::default(),
        logprobs: None,
        constraint: None,
    });
    let ((a_tokens, a_end), (b_tokens, b_end)) = tokio::join!(collect(a), collect(b));
    assert!(matches!(a_end, Some(TokenEvent::Done { .. })), "{a_end:?}");
    assert!(matches!(b_end, Some(TokenEvent::Done { .. })), "{b_end:?}");
    let steps = engine.stats().steps.load(Ordering::Relaxed) - steps_before;
    assert!(
        steps >= 40,
        "{steps} steps: the second request ran beside the first beyond the KV budget"
    );
    assert_eq!((a_tokens.len(), b_tokens.len()), (20, 20));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_sampling_is_the_same_batched_as_alone() -> Result<()> {
    use fleet_inference::sampling::{Sampler, SamplingParams};
    let (reference, engine_model) = models("sampled")?;
    let sampling = |seed| SamplingParams {
        temperature: 1.0,
        top_p: Some(0.9),
        seed: Some(seed),
        ..Default::default()
    };
    let prompts: Vec<Vec<u32>> = (0..4u32).map(|i| vec![i + 1, i + 2, i + 3, 9]).collect();
    let mut expected = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let mut sampler = Sampler::new(sampling(i as u64));
        let mut cache = reference.new_cache(prompt.len() + 10);
        let mut seen = prompt.clone();
        let mut feed = prompt.clone();
        for _ in 0..10 {
            let logits = reference
                .step(&mut [StepInput { tokens: &feed, cache: &mut cache }])?
                .to_vec2::<f32>()?;
            let token = sampler.sample(&logits[0], &seen, &seen[prompt.len()..]);
            seen.push(token);
            feed = vec![token];
        }
        expected.push(seen[prompt.len()..].to_vec());
    }
    let engine = Engine::start(engine_model, EngineOptions::default())?;
    let runs: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let request = TokenRequest {
                prompt: p.clone(),
                max_tokens: 10,
                stop_tokens: vec![],
                sampling: sampling(i as u64),
                logprobs: None,
                constraint: None,
            };
            tokio::spawn(collect(engine.generate(request)))
        })
        .collect();
    for (i, run) in runs.into_iter().enumerate() {
        assert_eq!(run.await?.0, expected[i], "request {i}");
    }
    let bad = TokenRequest {
        prompt: vec![1],
        max_tokens: 1,
        stop_tokens: vec![],
        sampling: SamplingParams { temperature: 9.0, ..Default::default() },
        logprobs: None,
        constraint: None,
    };
    assert!(
        matches!(collect(engine.generate(bad)).await.1, Some(TokenEvent::Error(e)) if e.message.contains("temperature"))
    );
    Ok(())
}
