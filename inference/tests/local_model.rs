//! Local models through the public API: `load(path)` of a Hugging Face folder or a GGUF file
//! (tiny random weights with a generated tokenizer), generation as text deltas and a usage
//! record, stop strings, logprobs, cancellation, and clear errors for bad models and input.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Device;
use candle_core::quantized::GgmlDType;
use fleet_inference::text::fixture::{gguf_tokenizer_metadata, write_tokenizer_files};
use fleet_inference::transformer::{Family, fixture};
use fleet_inference::{
    ChatMessage, FinishReason, GenerateRequest, GenerationEvent, LoadOptions, LocalModel, Model,
    Role, Usage, load,
};
use futures::StreamExt;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn temp_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("fleet-local-{name}-{}", std::process::id()))
}

/// A tiny Qwen2 with a tokenizer, as a Hugging Face folder and as an F32 GGUF of the same
/// weights and tokenizer.
fn write_model(name: &str) -> Result<(PathBuf, PathBuf)> {
    let dir = temp_dir(name);
    let cfg = fixture::tiny_config(Family::Qwen2, true);
    let weights = fixture::random_weights(&cfg)?;
    fixture::write_hf(&dir, &cfg, &weights)?;
    let vocab = write_tokenizer_files(&dir)?;
    assert!(vocab <= cfg.vocab_size);
    let gguf = temp_dir(name).with_extension("gguf");
    fixture::write_gguf(&gguf, &cfg, &weights, GgmlDType::F32, &gguf_tokenizer_metadata(&dir)?)?;
    Ok((dir, gguf))
}

fn request(text: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        messages: vec![
            ChatMessage::new(Role::System, "You are terse."),
            ChatMessage::new(Role::User, text),
        ],
        max_tokens: Some(max_tokens),
        ..Default::default()
    }
}

/// The text deltas and the final usage of one generation.
async fn run(model: &LocalModel, request: GenerateRequest) -> Result<(Vec<String>, Usage)> {
    let mut stream = model.generate(request)?;
    let mut deltas = Vec::new();
    while let Some(event) = stream.next().await {
        match event? {
            GenerationEvent::Delta(text) => deltas.push(text),
            GenerationEvent::Logprobs(_) | GenerationEvent::ToolCall(_) => {}
            GenerationEvent::Reasoning(text) => {
                return Err(format!("reasoning {text:?} from a model that does not think").into());
            }
            GenerationEvent::Done(usage) => {
                assert!(stream.next().await.is_none(), "events after Done");
                return Ok((deltas, usage));
            }
        }
    }
    Err("the stream ended without Done".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_and_its_gguf_generate_the_same_text() -> Result<()> {
    let (dir, gguf) = write_model("same")?;
    let options = LoadOptions::default();
    let from_dir = load(&dir, &Device::Cpu, &options)?;
    let from_gguf = load(&gguf, &Device::Cpu, &options)?;
    assert_eq!(from_dir.id(), dir.file_name().and_then(|n| n.to_str()).unwrap_or_default());
    let req = request("Tell me about actors and messages.", 24);
    let prompt = from_dir.prompt_tokens(&req)?;
    assert_eq!(prompt, from_gguf.prompt_tokens(&req)?, "the two tokenizers disagree");
    let (deltas, usage) = run(&from_dir, req.clone()).await?;
    let (gguf_deltas, gguf_usage) = run(&from_gguf, req).await?;
    assert_eq!(deltas.concat(), gguf_deltas.concat());
    assert_eq!(usage, gguf_usage);
    assert_eq!(usage.prompt_tokens as usize, prompt.len());
    assert!(usage.completion_tokens >= 1 && usage.completion_tokens <= 24);
    if usage.finish_reason == FinishReason::Length {
        assert_eq!(usage.completion_tokens, 24);
    }
    assert!(deltas.iter().all(|d| !d.is_empty()), "empty deltas were sent");
    std::fs::remove_dir_all(&dir)?;
    std::fs::remove_file(&gguf)?;
    Ok(())
}

/// A stop string of two characters either side of a delta boundary in the middle of `deltas`,
/// and where its first occurrence starts.
fn stop_across_a_boundary(deltas: &[String]) -> Option<(String, usize)> {
    let full = deltas.concat();
    let mut boundary = 0;
    for d in &deltas[..deltas.len().saturating_sub(1)] {
        boundary += d.len();
        let before: String = full[..boundary].chars().rev().take(2).collect();
        let after: String = full[boundary..].chars().take(2).collect();
        if before.chars().count() == 2 && after.chars().count() == 2 && boundary > 4 {
            let stop: String = before.chars().rev().chain(after.chars()).collect();
            let first = full.find(&stop)?;
            if first + stop.len() > boundary - before.len() {
                return Some((stop, first));
            }
        }
    }
    None
}

/// A stop string is cut out of a greedy generation's text, across a token boundary: the same
/// generation with that stop string ends right before it. Random weights may end a
/// generation at once, so a few models and prompts are tried until one says enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_that_span_tokens_stop() -> Result<()> {
    for attempt in 0..8 {
        let (dir, gguf) = write_model(&format!("stop-{attempt}"))?;
        let model = load(&dir, &Device::Cpu, &LoadOptions::default())?;
        for prompt in ["Write a long answer.", "Tell me a story about actors."] {
            let req = request(prompt, 40);
            let (deltas, _) = run(&model, req.clone()).await?;
            let Some((stop, at)) = stop_across_a_boundary(&deltas) else { continue };
            let full = deltas.concat();
            let (stopped, usage) =
                run(&model, GenerateRequest { stop: vec![stop.clone()], ..req }).await?;
            assert_eq!(stopped.concat(), full[..at], "stop string {stop:?}");
            assert_eq!(usage.finish_reason, FinishReason::Stop);
            std::fs::remove_dir_all(&dir)?;
            std::fs::remove_file(&gguf)?;
            return Ok(());
        }
        std::fs::remove_dir_all(&dir)?;
        std::fs::remove_file(&gguf)?;
    }
    Err("no generation had a delta boundary to test".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_come_with_every_token() -> Result<()> {
    let (dir, gguf) = write_model("logprobs")?;
    let model = load(&gguf, &Device::Cpu, &LoadOptions::default())?;
    let mut stream = model.generate(GenerateRequest { logprobs: Some(3), ..request("Hi", 8) })?;
    let mut logprobs = Vec::new();
    let mut usage = None;
    while let Some(event) = stream.next().await {
        match event? {
            GenerationEvent::Logprobs(l) => logprobs.push(l),
            GenerationEvent::Done(u) => usage = Some(u),
            GenerationEvent::Delta(_) | GenerationEvent::ToolCall(_) => {}
            GenerationEvent::Reasoning(_) => return Err("reasoning from Qwen2".into()),
        }
    }
    let usage = usage.ok_or("no usage")?;
    assert_eq!(logprobs.len(), usage.completion_tokens as usize);
    for l in &logprobs {
        assert_eq!(l.top.len(), 3);
        assert!(l.logprob <= 0.0 && l.logprob.is_finite());
        // Greedy: the chosen token is the most likely one.
        assert_eq!(l.top[0], (l.token.clone(), l.logprob));
        assert!(l.top.windows(2).all(|w| w[0].1 >= w[1].1));
    }
    std::fs::remove_dir_all(&dir)?;
    std::fs::remove_file(&gguf)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_generation_frees_its_kv_memory() -> Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    // Random weights may pick an end token soon; such a model is replaced. Greedy decoding
    // gives the same tokens every time, so a first run to the end says how long the
    // generation that is dropped would run.
    for attempt in 0..8 {
        let (dir, gguf) = write_model(&format!("cancel-{attempt}"))?;
        let model = load(&dir, &Device::Cpu, &LoadOptions::default())?;
        std::fs::remove_dir_all(&dir)?;
        std::fs::remove_file(&gguf)?;
        let stats = model.engine_stats().ok_or("no engine")?;
        let (_, whole) = run(&model, request("Go on forever.", 400)).await?;
        let length = u64::from(whole.completion_tokens);
        if length < 100 {
            continue;
        }
        let mut stream = model.generate(request("Go on forever.", 400))?;
        stream.next().await.ok_or("no first event")??;
        if stats.kv_bytes.load(Relaxed) == 0 {
            // Either the engine did not count the running generation's memory, or the
            // generation ran to its end before this thread looked (a loaded machine).
            let generated = stats.generated_tokens.load(Relaxed);
            assert!(
                generated >= 2 * length,
                "no KV memory counted for a running generation ({generated} tokens of {})",
                2 * length
            );
            continue;
        }
        let dropping = Instant::now();
        let at_drop = stats.generated_tokens.load(Relaxed);
        drop(stream);
        // Dropped at once unless this thread was preempted meanwhile (a loaded machine).
        let prompt = dropping.elapsed() < Duration::from_millis(1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while stats.kv_bytes.load(Relaxed) > 0 {
            assert!(Instant::now() < deadline, "KV memory was not freed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(stats.active.load(Relaxed), 0);
        if !prompt {
            continue;
        }
        // The generation stopped within a step or two of the drop.
        let generated = stats.generated_tokens.load(Relaxed);
        assert!(
            generated <= at_drop + 8,
            "{generated} tokens, {at_drop} when dropped: the dropped generation went on"
        );
        return Ok(());
    }
    Err("no model generated 100 tokens before it ended, or this thread was preempted at every \
         drop"
        .into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_errors_and_the_model_keeps_serving() -> Result<()> {
    let (dir, gguf) = write_model("bad-requests")?;
    let model = load(&dir, &Device::Cpu, &LoadOptions::default())?;
    let long = "word ".repeat(2000);
    let e = model.generate(request(&long, 8)).err().ok_or("a too-long prompt was accepted")?;
    assert!(e.to_string().contains("context"), "{e}");
    let e = model.generate(request("hi", 0)).err().ok_or("max_tokens 0 was accepted")?;
    assert!(e.to_string().contains("max_tokens"), "{e}");
    let hot = GenerateRequest { temperature: Some(7.0), ..request("hi", 4) };
    let e = model.generate(hot).err().ok_or("temperature 7 was accepted")?;
    assert!(e.to_string().contains("temperature"), "{e}");
    let e = model.embed(&["x"]).err().ok_or("a decoder embedded")?;
    assert!(e.to_string().contains("does not embed"), "{e}");
    // Still serving.
    let (_, usage) = run(&model, request("hi", 4)).await?;
    assert!(usage.completion_tokens >= 1);
    std::fs::remove_dir_all(&dir)?;
    std::fs::remove_file(&gguf)?;
    Ok(())
}

fn load_error(path: &Path) -> String {
    match load(path, &Device::Cpu, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_models_are_errors_naming_the_path() -> Result<()> {
    let (dir, gguf) = write_model("bad-models")?;
    let missing = temp_dir("nothing-here");
    assert!(load_error(&missing).contains("no such file"));

    // A GGUF cut short, and one that is not a GGUF at all.
    let bytes = std::fs::read(&gguf)?;
    let cut = temp_dir("cut").with_extension("gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2])?;
    let e = load_error(&cut);
    assert!(e.contains(&cut.display().to_string()), "{e}");
    std::fs::write(&cut, b"this is not a gguf file")?;
    let e = load_error(&cut);
    assert!(e.contains("GGUF") && e.contains(&cut.display().to_string()), "{e}");
    std::fs::remove_file(&cut)?;

    // A truncated safetensors file.
    let broken = temp_dir("broken");
    std::fs::create_dir_all(&broken)?;
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(dir.join(f), broken.join(f))?;
    }
    let weights = std::fs::read(dir.join("model.safetensors"))?;
    std::fs::write(broken.join("model.safetensors"), &weights[..weights.len() - 100])?;
    let e = load_error(&broken);
    assert!(e.contains("model.safetensors") && e.contains("safetensors"), "{e}");

    // No tokenizer.
    std::fs::remove_file(broken.join("tokenizer.json"))?;
    let e = load_error(&broken);
    assert!(e.contains("tokenizer.json"), "{e}");

    // An architecture there is no forward pass for.
    std::fs::copy(dir.join("tokenizer.json"), broken.join("tokenizer.json"))?;
    std::fs::write(broken.join("config.json"), r#"{"model_type": "mamba", "vocab_size": 384}"#)?;
    let e = load_error(&broken);
    assert!(e.contains("mamba") && e.contains("config.json"), "{e}");

    std::fs::remove_dir_all(&broken)?;
    std::fs::remove_dir_all(&dir)?;
    std::fs::remove_file(&gguf)?;
    Ok(())
}

/// A Hugging Face cache folder (`models--org--name/snapshots/<rev>`) loads by its top folder.
#[test]
fn the_hugging_face_cache_layout_resolves() -> Result<()> {
    let (dir, gguf) = write_model("hub-src")?;
    let hub = temp_dir("hub").join("models--tiny--qwen");
    let snapshot = hub.join("snapshots").join("abc123");
    std::fs::create_dir_all(&snapshot)?;
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"] {
        std::fs::copy(dir.join(f), snapshot.join(f))?;
    }
    std::fs::create_dir_all(hub.join("refs"))?;
    std::fs::write(hub.join("refs").join("main"), "abc123\n")?;
    let model = load(&hub, &Device::Cpu, &LoadOptions::default())?;
    assert!(!model.is_embedder());
    std::fs::remove_dir_all(temp_dir("hub"))?;
    std::fs::remove_dir_all(&dir)?;
    std::fs::remove_file(&gguf)?;
    Ok(())
}

/// A BERT folder loads as an embedder (real all-MiniLM-L6-v2 weights from the pip package).
#[test]
fn a_bert_folder_loads_as_an_embedder() -> Result<()> {
    let dir = fleet_inference::embedding::fixture::minilm_dir()?;
    let model = load(&dir, &Device::Cpu, &LoadOptions::default())?;
    assert!(model.is_embedder());
    let v = model.embed(&["The cat sits outside", "The dog plays in the garden"])?;
    let cosine: f32 = v[0].iter().zip(&v[1]).map(|(a, b)| a * b).sum();
    assert!((cosine - 0.2838).abs() <= 0.001, "cosine {cosine}");
    let e = model.generate(request("hi", 4)).err().ok_or("an embedder generated")?;
    assert!(e.to_string().contains("does not generate"), "{e}");
    Ok(())
}
