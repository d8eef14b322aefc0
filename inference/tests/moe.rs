//! Mixtures of experts (Qwen3-MoE, Qwen2-MoE with its shared expert, Mixtral-style Llama)
//! against llama.cpp on the same random-weight GGUF files: each file is written here, the
//! same bytes on every run (seeded weights, candle's quantizer), and `tests/moe/reference.json`
//! holds llama.cpp's logits for it, made by `tests/moe/make_reference.py` (llama-cpp-python
//! 0.3.36, never in CI) and named by the file's SHA-256.
//!
//! Checked per file and prompt: the logits after the prompt within a stated tolerance of
//! llama.cpp's (F32 KV cache on both sides), and teacher-forced greedy steps (llama.cpp's 32
//! greedy tokens fed one by one): our top token is llama.cpp's at every step whose top-two
//! gap in llama.cpp is at least [`MARGIN`] (closer ties may flip between two implementations
//! within rounding, so they are not judged); and a batch of all prompts gives each prompt's
//! solo logits, bit for bit.

use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::GgmlDType;
use fleet_inference::text::fixture::{gguf_tokenizer_metadata, write_tokenizer_files};
use fleet_inference::transformer::load::load_gguf;
use fleet_inference::transformer::{Decoder, Family, StepInput, fixture};
use serde_json::Value;
use sha2::{Digest, Sha256};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Top-two gaps at least this wide must give the same token as llama.cpp.
const MARGIN: f32 = 0.1;

/// A reference file: its name, its family's shape, the GGUF type of its matrices, and the
/// largest difference from llama.cpp's logits allowed.
struct Case {
    name: &'static str,
    cfg: fleet_inference::transformer::DecoderConfig,
    dtype: GgmlDType,
    tolerance: f32,
}

fn cases(vocab: usize) -> Vec<Case> {
    let sized = |cfg: fleet_inference::transformer::DecoderConfig| {
        fleet_inference::transformer::DecoderConfig { vocab_size: vocab, ..cfg }
    };
    let qwen3 = sized(fixture::quantizable_config(Family::Qwen3Moe));
    let qwen2 = sized(fixture::quantizable_config(Family::Qwen2Moe));
    let mixtral = sized(fixture::with_experts(fixture::quantizable_config(Family::Llama), 4, 2));
    vec![
        Case { name: "qwen3moe-f32", cfg: qwen3.clone(), dtype: GgmlDType::F32, tolerance: 1e-4 },
        Case { name: "qwen3moe-q4_k", cfg: qwen3, dtype: GgmlDType::Q4K, tolerance: 0.05 },
        Case { name: "qwen2moe-f32", cfg: qwen2.clone(), dtype: GgmlDType::F32, tolerance: 1e-4 },
        Case { name: "qwen2moe-q8_0", cfg: qwen2, dtype: GgmlDType::Q8_0, tolerance: 0.05 },
        Case { name: "mixtral-f32", cfg: mixtral.clone(), dtype: GgmlDType::F32, tolerance: 1e-4 },
        Case { name: "mixtral-q4_0", cfg: mixtral, dtype: GgmlDType::Q4_0, tolerance: 0.05 },
    ]
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fleet-moe-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    dir
}

/// Writes every case's file into `dir`; returns each path.
fn write_cases(dir: &Path) -> Result<Vec<(Case, PathBuf)>> {
    let vocab = write_tokenizer_files(dir)?;
    let tokenizer = gguf_tokenizer_metadata(dir)?;
    let mut out = Vec::new();
    for case in cases(vocab) {
        let weights = fixture::seeded_weights(&case.cfg, 51)?;
        let path = dir.join(format!("{}.gguf", case.name));
        fixture::write_gguf(&path, &case.cfg, &weights, case.dtype, &tokenizer)?;
        out.push((case, path));
    }
    Ok(out)
}

fn sha256(path: &Path) -> Result<String> {
    let digest = Sha256::digest(std::fs::read(path)?);
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

fn reference() -> Result<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/moe/reference.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().map_or(vec![], |a| a.iter().filter_map(Value::as_u64).map(|i| i as u32).collect())
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().map_or(vec![], |a| a.iter().filter_map(Value::as_f64).map(|x| x as f32).collect())
}

fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// The logits after `tokens` fed one step each after the prompt, one row per step (the
/// prompt's first).
fn teacher_forced(model: &Decoder, prompt: &[u32], tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
    let mut cache = model.new_cache(prompt.len() + tokens.len() + 1);
    let mut rows = Vec::new();
    let logits = model.step(&mut [StepInput { tokens: prompt, cache: &mut cache }])?;
    rows.push(logits.squeeze(0)?.to_vec1()?);
    for &t in tokens {
        let logits = model.step(&mut [StepInput { tokens: &[t], cache: &mut cache }])?;
        rows.push(logits.squeeze(0)?.to_vec1()?);
    }
    Ok(rows)
}

#[test]
fn mixtures_of_experts_give_llama_cpp_logits_and_tokens() -> Result<()> {
    let kept = std::env::var_os("FLEET_MOE_REFERENCE_DIR");
    let dir = match &kept {
        // make_reference.py asks for the files where it reads them.
        Some(dir) => PathBuf::from(dir),
        None => temp_dir("reference"),
    };
    std::fs::create_dir_all(&dir)?;
    let reference = reference()?;
    for (case, path) in write_cases(&dir)? {
        let name = case.name;
        let entry = &reference[name];
        assert_eq!(
            entry["sha256"].as_str(),
            Some(sha256(&path)?.as_str()),
            "{name}: the file differs from the one tests/moe/reference.json was made from; \
             run tests/moe/make_reference.py on the files FLEET_MOE_REFERENCE_DIR=DIR cargo \
             test --test moe writes"
        );
        let (model, _) = load_gguf(&path, &Device::Cpu)?;
        let prompts = entry["prompts"].as_array().ok_or("no prompts")?;
        let (mut judged, mut worst) = (0, 0f32);
        for (p, prompt) in prompts.iter().enumerate() {
            let ids_ = ids(&prompt["ids"]);
            let steps = prompt["steps"].as_array().ok_or("no steps")?;
            let tokens: Vec<u32> =
                steps.iter().filter_map(|s| s["token"].as_u64()).map(|t| t as u32).collect();
            let rows = teacher_forced(&model, &ids_, &tokens[..tokens.len() - 1])?;
            let theirs = floats(&prompt["logits"]);
            assert_eq!(theirs.len(), rows[0].len(), "{name}: the vocabulary differs");
            let diff = rows[0].iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            worst = worst.max(diff);
            assert!(
                diff <= case.tolerance,
                "{name} prompt {p}: logits differ from llama.cpp's by up to {diff} (allowed {})",
                case.tolerance
            );
            for (s, (step, row)) in steps.iter().zip(&rows).enumerate() {
                let margin = step["margin"].as_f64().unwrap_or(0.0) as f32;
                if margin < MARGIN {
                    continue;
                }
                judged += 1;
                assert_eq!(
                    argmax(row),
                    tokens[s],
                    "{name} prompt {p} step {s}: llama.cpp's top token by a gap of {margin}"
                );
            }
        }
        assert!(judged >= 32, "{name}: only {judged} steps had a clear top token");
        eprintln!(
            "{name}: logits within {worst} of llama.cpp's; {judged} clear greedy steps agree"
        );
    }
    if kept.is_none() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

#[test]
fn a_batch_of_prompts_gives_each_prompts_solo_logits() -> Result<()> {
    let dir = temp_dir("batch");
    let prompts: [&[u32]; 3] = [&[5, 9, 2, 77, 31, 8, 100, 41], &[3, 250, 42], &[7; 13]];
    for (case, path) in write_cases(&dir)? {
        let (model, _) = load_gguf(&path, &Device::Cpu)?;
        let solo: Vec<Vec<Vec<f32>>> =
            prompts.iter().map(|p| teacher_forced(&model, p, &[1, 2, 3])).collect::<Result<_>>()?;
        let mut caches: Vec<_> = prompts.iter().map(|_| model.new_cache(32)).collect();
        let mut feeds: Vec<Vec<u32>> = prompts.iter().map(|p| p.to_vec()).collect();
        for step in 0..solo[0].len() {
            let mut inputs: Vec<StepInput<'_>> = feeds
                .iter()
                .zip(caches.iter_mut())
                .map(|(tokens, cache)| StepInput { tokens, cache })
                .collect();
            let logits = model.step(&mut inputs)?.to_vec2::<f32>()?;
            for (i, (row, alone)) in logits.iter().zip(&solo).enumerate() {
                assert!(
                    *row == alone[step],
                    "{}: prompt {i} step {step} differs batched",
                    case.name
                );
            }
            feeds = (0..prompts.len()).map(|_| vec![step as u32 + 1]).collect();
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
