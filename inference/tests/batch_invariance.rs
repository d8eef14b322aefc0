//! Batch invariance: a sequence's tokens (greedy, and seeded sampling at temperature 0.9) are
//! bitwise the same whether it runs alone or among 32 others, beside other sequences' prompt
//! chunks, on one rayon thread or several, and while other threads load the CPU. Checked for
//! every weight path: dense f32, f16 and bf16, our quantized kernels (Q8_0, Q4_0, Q4_1,
//! Q5_0, Q5_1) and the k-quants' super-block kernel (Q4_K, Q6_K); and for mixtures of
//! experts, whose experts run side by side on the pool's threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Device;
use candle_core::quantized::GgmlDType;
use fleet_inference::engine::{Engine, EngineOptions, TokenEvent, TokenRequest};
use fleet_inference::sampling::SamplingParams;
use fleet_inference::transformer::load::load_gguf;
use fleet_inference::transformer::{Decoder, Family, fixture};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const NEW: usize = 10;
const SEQUENCES: usize = 32;

fn write_model(family: Family, dtype: GgmlDType) -> Result<std::path::PathBuf> {
    let cfg = fixture::quantizable_config(family);
    let path = std::env::temp_dir()
        .join(format!("fleet-invariance-{family:?}-{dtype:?}-{}.gguf", std::process::id()));
    fixture::write_gguf(&path, &cfg, &fixture::random_weights(&cfg)?, dtype, &[])?;
    Ok(path)
}

fn prompts(vocab: u32) -> Vec<Vec<u32>> {
    (0..SEQUENCES as u32)
        .map(|i| (0..1 + (i * 7) % 23).map(|j| (i * 31 + j * 17 + 3) % vocab).collect())
        .collect()
}

/// Odd sequences sample with a seed at temperature 0.9; even ones are greedy.
fn request(i: usize, prompt: &[u32]) -> TokenRequest {
    let sampling = if i % 2 == 1 {
        SamplingParams {
            temperature: 0.9,
            top_p: Some(0.95),
            seed: Some(100 + i as u64),
            ..Default::default()
        }
    } else {
        SamplingParams::default()
    };
    TokenRequest {
        prompt: prompt.to_vec(),
        max_tokens: NEW,
        stop_tokens: vec![],
        sampling,
        logprobs: None,
        constraint: None,
    }
}

async fn tokens(mut events: tokio::sync::mpsc::UnboundedReceiver<TokenEvent>) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            TokenEvent::Token(t) => out.push(t),
            TokenEvent::Done { .. } => return Ok(out),
            TokenEvent::Error(e) => return Err(e.into()),
            TokenEvent::Logprobs(_) => {}
        }
    }
    Err("the engine stopped".into())
}

/// Each prompt's tokens alone: one sequence at a time, the whole prompt in one chunk.
async fn alone(model: Decoder, prompts: &[Vec<u32>]) -> Result<Vec<Vec<u32>>> {
    let engine = Engine::start(
        model,
        EngineOptions { max_sequences: 1, prefill_chunk: 512, ..Default::default() },
    )?;
    let mut solo = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        solo.push(tokens(engine.generate(request(i, p))).await?);
    }
    Ok(solo)
}

/// Threads that keep every core busy until dropped.
struct Contention(Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>);

impl Contention {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..std::thread::available_parallelism().map_or(2, |n| n.get()))
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 1u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(
                            x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1),
                        );
                    }
                })
            })
            .collect();
        Self(stop, threads)
    }
}

impl Drop for Contention {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        for t in self.1.drain(..) {
            let _ = t.join();
        }
    }
}

async fn check(family: Family, dtype: GgmlDType) -> Result<()> {
    let path = write_model(family, dtype)?;
    let (solo_model, _) = load_gguf(&path, &Device::Cpu)?;
    let (batch_model, _) = load_gguf(&path, &Device::Cpu)?;
    let (one_thread_model, _) = load_gguf(&path, &Device::Cpu)?;
    std::fs::remove_file(&path)?;
    let prompts = prompts(solo_model.config().vocab_size as u32);

    let solo = alone(solo_model, &prompts).await?;

    // Batched: all 32 at once, prompts in chunks of 5 beside other sequences' decodes, while
    // other threads load every core.
    let batch_engine = Engine::start(
        batch_model,
        EngineOptions { max_sequences: 64, prefill_chunk: 5, ..Default::default() },
    )?;
    let busy = Contention::start();
    let receivers: Vec<_> =
        prompts.iter().enumerate().map(|(i, p)| batch_engine.generate(request(i, p))).collect();
    let batched = futures::future::try_join_all(receivers.into_iter().map(tokens)).await?;
    drop(busy);
    for (i, (b, s)) in batched.iter().zip(&solo).enumerate() {
        assert_eq!(b, s, "{family:?} {dtype:?}: sequence {i} differs batched from alone");
    }

    // One rayon thread instead of several (greedy sequences).
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    for (i, p) in prompts.iter().enumerate().step_by(2).take(4) {
        let one = pool.install(|| {
            fixture::greedy_alone(&one_thread_model, p, NEW).map_err(|e| e.to_string())
        })?;
        assert_eq!(one, solo[i], "{family:?} {dtype:?}: sequence {i} differs on one thread");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_do_not_depend_on_the_batch_threads_or_load() -> Result<()> {
    for dtype in [
        GgmlDType::F32,
        GgmlDType::F16,
        GgmlDType::BF16,
        GgmlDType::Q8_0,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ] {
        check(Family::Qwen2, dtype).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixtures_of_experts_do_not_depend_on_the_batch_threads_or_load() -> Result<()> {
    check(Family::Qwen3Moe, GgmlDType::Q4K).await?;
    check(Family::Qwen2Moe, GgmlDType::Q8_0).await
}

/// Two models decoding at once in one process, their steps on the same rayon pool (each
/// keeps the pool's other threads awake while it runs): both finish, in bounded time, with
/// each sequence's tokens the same as alone. A helper job of one step that ran on the
/// thread of a step would wait for a step that cannot go on: a hang, caught by the timeout.
/// The model is wide enough that a decode step's matmuls split across threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_decoding_at_once_give_their_solo_tokens() -> Result<()> {
    let cfg = fleet_inference::transformer::DecoderConfig {
        hidden_size: 512,
        intermediate_size: 2048,
        num_heads: 8,
        num_kv_heads: 4,
        ..fixture::quantizable_config(Family::Qwen2)
    };
    let path = std::env::temp_dir().join(format!("fleet-two-models-{}.gguf", std::process::id()));
    fixture::write_gguf(&path, &cfg, &fixture::random_weights(&cfg)?, GgmlDType::Q8_0, &[])?;
    let models = [load_gguf(&path, &Device::Cpu)?.0, load_gguf(&path, &Device::Cpu)?.0];
    let (solo_model, _) = load_gguf(&path, &Device::Cpu)?;
    std::fs::remove_file(&path)?;
    let prompts = prompts(solo_model.config().vocab_size as u32);
    let solo = alone(solo_model, &prompts).await?;
    let engines =
        models.map(|m| Engine::start(m, EngineOptions { max_sequences: 8, ..Default::default() }));
    let [a, b] = engines;
    let (a, b) = (a?, b?);
    for round in 0..3 {
        // Even prompts on one engine, odd ones on the other, all at once.
        let runs = prompts.iter().enumerate().map(|(i, p)| {
            let engine = if i % 2 == 0 { &a } else { &b };
            tokens(engine.generate(request(i, p)))
        });
        let all = futures::future::try_join_all(runs);
        let got = tokio::time::timeout(std::time::Duration::from_secs(120), all)
            .await
            .map_err(|_| format!("round {round}: two engines did not finish in 120 s"))??;
        for (i, (g, s)) in got.iter().zip(&solo).enumerate() {
            assert_eq!(g, s, "round {round}: sequence {i} differs beside another model");
        }
    }
    Ok(())
}
