//! Sentence embeddings on the real all-MiniLM-L6-v2 weights: the similarity
//! sentence-transformers reports, hidden states equal to candle-transformers' BertModel,
//! batched results equal to one-at-a-time ones, and clear errors for broken model folders.
//! The weights come from `fixture::minilm_dir` (FLEET_MINILM_DIR or the pip package); the
//! tests fail, never skip, when they are missing.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert as reference;
use fleet_inference::Error;
use fleet_inference::embedding::{Embedder, fixture};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn model_dir() -> PathBuf {
    fixture::minilm_dir().unwrap_or_else(|e| panic!("{e}"))
}

fn load() -> Result<Embedder> {
    Ok(Embedder::load(&model_dir(), &Device::Cpu)?)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt())
}

#[test]
fn similarity_matches_sentence_transformers() -> Result<()> {
    let embedder = load()?;
    assert_eq!(embedder.dimensions(), 384);
    assert_eq!(embedder.max_seq_length(), 256, "from sentence_bert_config.json");
    let v = embedder.embed(&["The cat sits outside", "The dog plays in the garden"])?;
    assert_eq!(v.len(), 2);
    for row in &v {
        assert_eq!(row.len(), 384);
        assert!((dot(row, row) - 1.0).abs() < 1e-5, "not unit length");
    }
    let c = cosine(&v[0], &v[1]);
    println!("cosine {c:.5}");
    // sentence-transformers 2.x/3.x on the same weights gives 0.2838.
    assert!((c - 0.2838).abs() <= 1e-3, "cosine {c}, expected 0.2838");
    Ok(())
}

#[test]
fn hidden_states_match_candle_transformers() -> Result<()> {
    let dir = model_dir();
    let embedder = Embedder::load(&dir, &Device::Cpu)?;
    let texts = ["The cat sits outside", "", "A man is playing a guitar on a very small stage."];
    let tokens = embedder.tokenize(&texts)?;
    let t = tokens.iter().map(Vec::len).max().unwrap_or(0);
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for seq in &tokens {
        ids.extend(seq.iter().copied().chain(std::iter::repeat(0)).take(t));
        mask.extend((0..t).map(|j| if j < seq.len() { 1f32 } else { 0. }));
    }
    let ids = Tensor::from_vec(ids, (texts.len(), t), &Device::Cpu)?;
    let mask = Tensor::from_vec(mask, (texts.len(), t), &Device::Cpu)?;
    let types = ids.zeros_like()?;
    let ours = embedder.model().forward(&ids, &types, &mask)?;

    let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let cfg: reference::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let theirs = reference::BertModel::load(vb, &cfg)?.forward(&ids, &types, Some(&mask))?;

    assert_eq!(ours.dims(), &[texts.len(), t, 384]);
    // Padding positions carry no meaning; compare the real tokens.
    let real = mask.unsqueeze(2)?;
    let diff = (ours.broadcast_mul(&real)? - theirs.broadcast_mul(&real)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    println!("max abs diff against BertModel {diff:e}");
    assert!(diff <= 1e-4, "max abs diff {diff}");
    Ok(())
}

#[test]
fn batched_equals_one_at_a_time() -> Result<()> {
    let embedder = load()?;
    let words = "the quick brown fox jumps over the lazy dog while a bird sings".split(' ');
    let words: Vec<&str> = words.collect();
    let mut texts: Vec<String> = (0..18)
        .map(|i| words.iter().cycle().take(1 + i * 3 % 17).copied().collect::<Vec<_>>().join(" "))
        .collect();
    texts.push(String::new());
    // Longer than max_seq_length: truncated, in the batch as alone.
    texts.push(words.iter().cycle().take(400).copied().collect::<Vec<_>>().join(" "));
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    assert_eq!(texts.len(), 20);
    assert_eq!(embedder.tokenize(&texts[19..])?[0].len(), embedder.max_seq_length());

    let batched = embedder.embed(&texts)?;
    assert_eq!(batched.len(), texts.len());
    for (text, row) in texts.iter().zip(&batched) {
        let alone = embedder.embed(&[text])?;
        let diff = row.iter().zip(&alone[0]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff <= 1e-5, "{text:?}: max abs diff {diff}");
    }
    assert!(embedder.embed(&[])?.is_empty());
    Ok(())
}

/// Texts of many lengths (1 to 400 words, the longest truncated), as a test corpus.
fn varied_texts(count: usize) -> Vec<String> {
    let words = "the quick brown fox jumps over the lazy dog while a bird sings".split(' ');
    let words: Vec<&str> = words.collect();
    (0..count)
        .map(|i| {
            let len = if i % 50 == 7 { 400 } else { 1 + i * 7 % 37 };
            words.iter().cycle().skip(i % 5).take(len).copied().collect::<Vec<_>>().join(" ")
        })
        .collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// The packed CPU path (no padding, attention per text) gives the padded batch's vectors.
/// 300 texts are more than one pass, so passes split and join correctly too.
#[test]
fn packed_passes_equal_padded_batches() -> Result<()> {
    let embedder = load()?;
    let texts = varied_texts(300);
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ids = embedder.tokenize(&texts)?;
    let tokens: usize = ids.iter().map(Vec::len).sum();
    assert!(tokens > 2 * fleet_inference::embedding::batcher::TOKENS_PER_PASS, "{tokens}");
    let packed = embedder.embed(&texts)?;
    let padded = embedder.embed_padded(&ids)?;
    let diff = max_diff(&packed, &padded);
    assert!(diff <= 1e-5, "packed differs from padded by {diff}");
    Ok(())
}

/// Callers on several threads at once share the model's thread: each gets its own texts'
/// vectors, in its order, as it would alone.
#[test]
fn concurrent_callers_get_their_own_vectors() -> Result<()> {
    let embedder = load()?;
    let texts = varied_texts(96);
    let callers: Vec<Vec<&str>> =
        texts.chunks(12).map(|c| c.iter().map(String::as_str).collect()).collect();
    let alone: Vec<Vec<Vec<f32>>> =
        callers.iter().map(|c| embedder.embed(c)).collect::<fleet_inference::Result<_>>()?;
    for _ in 0..3 {
        let together: Vec<fleet_inference::Result<Vec<Vec<f32>>>> = std::thread::scope(|s| {
            let handles: Vec<_> = callers.iter().map(|c| s.spawn(|| embedder.embed(c))).collect();
            handles.into_iter().map(|h| h.join().expect("caller thread")).collect()
        });
        let together = together.into_iter().collect::<fleet_inference::Result<Vec<_>>>()?;
        for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
            let diff = max_diff(a, b);
            assert!(diff <= 1e-5, "caller {i}: together differs from alone by {diff}");
        }
    }
    Ok(())
}

/// A copy of the model folder in a fresh temporary folder, with `edit` applied to it.
fn broken_copy(name: &str, edit: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<PathBuf> {
    let src = model_dir();
    let dir = std::env::temp_dir().join(format!("fleet-bert-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    for file in ["config.json", "sentence_bert_config.json", "tokenizer.json", "model.safetensors"]
    {
        std::fs::copy(src.join(file), dir.join(file))?;
    }
    edit(&dir)?;
    Ok(dir)
}

/// Loads `dir`, which must fail with a message naming `file` and containing `what`.
fn assert_load_error(dir: &Path, file: &str, what: &str) -> Result<()> {
    let err = match Embedder::load(dir, &Device::Cpu) {
        Ok(_) => {
            return Err(format!("{} loaded, expected an error about {file}", dir.display()).into());
        }
        Err(err) => err,
    };
    let msg = err.to_string();
    println!("{msg}");
    let path = if file.is_empty() { dir.to_owned() } else { dir.join(file) };
    assert!(msg.contains(&path.display().to_string()), "{msg:?} does not name {}", path.display());
    assert!(msg.contains(what), "{msg:?} does not say {what:?}");
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[test]
fn broken_model_folders_are_clear_errors() -> Result<()> {
    let missing = std::env::temp_dir().join(format!("fleet-bert-none-{}", std::process::id()));
    assert_load_error(&missing, "", "no such model directory")?;

    let dir = broken_copy("tokenizer", |d| std::fs::remove_file(d.join("tokenizer.json")))?;
    assert_load_error(&dir, "tokenizer.json", "cannot read")?;

    let dir = broken_copy("truncated", |d| {
        let path = d.join("model.safetensors");
        let bytes = std::fs::read(&path)?;
        std::fs::write(&path, &bytes[..bytes.len() / 2])
    })?;
    assert_load_error(&dir, "model.safetensors", "not a valid safetensors file")?;

    let dir = broken_copy("gpt2", |d| {
        let text = std::fs::read_to_string(d.join("config.json"))?;
        std::fs::write(d.join("config.json"), text.replace("\"bert\"", "\"gpt2\""))
    })?;
    let err = Embedder::load(&dir, &Device::Cpu).err();
    assert!(matches!(err, Some(Error::UnsupportedModel { .. })), "{err:?}");
    assert_load_error(&dir, "config.json", "unsupported model_type \"gpt2\"")?;

    let dir = broken_copy("shape", |d| {
        let text = std::fs::read_to_string(d.join("config.json"))?;
        std::fs::write(d.join("config.json"), text.replace("30522", "30600"))
    })?;
    assert_load_error(&dir, "model.safetensors", "has shape [30522, 384], expected [30600, 384]")?;
    Ok(())
}

#[test]
fn bert_prefixed_weights_load_the_same() -> Result<()> {
    // Checkpoints of BertFor* task models store the encoder under "bert.".
    let dir = broken_copy("prefixed", |d| {
        let path = d.join("model.safetensors");
        let tensors =
            candle_core::safetensors::load(&path, &Device::Cpu).map_err(std::io::Error::other)?;
        let renamed: std::collections::HashMap<String, Tensor> =
            tensors.into_iter().map(|(k, v)| (format!("bert.{k}"), v)).collect();
        candle_core::safetensors::save(&renamed, &path).map_err(std::io::Error::other)
    })?;
    let text = ["The cat sits outside"];
    let prefixed = Embedder::load(&dir, &Device::Cpu)?.embed(&text)?;
    assert_eq!(prefixed, load()?.embed(&text)?);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
