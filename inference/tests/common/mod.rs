//! What the llama.cpp reference tests share (`moe.rs`, `families.rs`): random-weight GGUF
//! files written here, the same bytes on every run (seeded weights, candle's quantizer), and
//! a `reference.json` per test holding llama.cpp's logits for each file, made by
//! `tests/common/make_reference.py` (llama-cpp-python 0.3.36, never in CI) and named by the
//! file's SHA-256.
//!
//! Checked per file and prompt: the logits after the prompt within a stated tolerance of
//! llama.cpp's (F32 KV cache on both sides), and teacher-forced greedy steps (llama.cpp's 32
//! greedy tokens fed one by one): our top token is llama.cpp's at every step whose top-two
//! gap in llama.cpp is at least [`MARGIN`] (closer ties may flip between two implementations
//! within rounding, so they are not judged); and a batch of prompts gives each prompt's solo
//! logits, bit for bit.

use std::path::{Path, PathBuf};

use candle_core::Device;
use fleet_inference::text::fixture::{gguf_tokenizer_metadata, write_tokenizer_files};
use fleet_inference::transformer::load::load_gguf;
use fleet_inference::transformer::{Decoder, DecoderConfig, StepInput, fixture};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Top-two gaps at least this wide must give the same token as llama.cpp.
pub const MARGIN: f32 = 0.1;

/// A reference file: its name, its family's shape, the GGUF type of its matrices, and the
/// largest difference from llama.cpp's logits allowed.
pub struct Case {
    pub name: &'static str,
    pub cfg: DecoderConfig,
    pub dtype: fixture::Blocks,
    pub tolerance: f32,
}

/// The cases of one test and where its reference lives.
pub struct Suite {
    /// The test's name: `tests/{name}/reference.json`, and `FLEET_{NAME}_REFERENCE_DIR` keeps
    /// the files for make_reference.py.
    pub name: &'static str,
    /// The cases for a tokenizer of `vocab` tokens.
    pub cases: fn(usize) -> Vec<Case>,
}

impl Suite {
    fn temp_dir(&self, what: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("fleet-{}-{what}-{}", self.name, std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        dir
    }

    /// Writes every case's file into `dir`; returns each path.
    fn write_cases(&self, dir: &Path) -> Result<Vec<(Case, PathBuf)>> {
        let vocab = write_tokenizer_files(dir)?;
        let tokenizer = gguf_tokenizer_metadata(dir)?;
        let mut out = Vec::new();
        for case in (self.cases)(vocab) {
            let weights = fixture::seeded_weights(&case.cfg, 51)?;
            let path = dir.join(format!("{}.gguf", case.name));
            fixture::write_gguf(&path, &case.cfg, &weights, case.dtype, &tokenizer)?;
            out.push((case, path));
        }
        Ok(out)
    }

    fn reference(&self) -> Result<Value> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/{}/reference.json", self.name));
        Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
    }

    /// Every case's logits and clear greedy steps against llama.cpp's.
    pub fn check_against_llama_cpp(&self) -> Result<()> {
        let env = format!("FLEET_{}_REFERENCE_DIR", self.name.to_uppercase());
        let kept = std::env::var_os(&env);
        let dir = match &kept {
            // make_reference.py asks for the files where it reads them.
            Some(dir) => PathBuf::from(dir),
            None => self.temp_dir("reference"),
        };
        std::fs::create_dir_all(&dir)?;
        // The files first: make_reference.py reads them when there is no reference yet.
        let cases = self.write_cases(&dir)?;
        let reference = self.reference()?;
        for (case, path) in cases {
            let name = case.name;
            let entry = &reference[name];
            assert_eq!(
                entry["sha256"].as_str(),
                Some(sha256(&path)?.as_str()),
                "{name}: the file differs from the one tests/{test}/reference.json was made \
                 from; run tests/common/make_reference.py on the files {env}=DIR cargo test \
                 --test {test} writes",
                test = self.name,
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
                let diff =
                    rows[0].iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                worst = worst.max(diff);
                assert!(
                    diff <= case.tolerance,
                    "{name} prompt {p}: logits differ from llama.cpp's by up to {diff} \
                     (allowed {})",
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

    /// Each case: a batch of prompts gives each prompt's solo logits, bit for bit.
    pub fn check_batch_invariance(&self) -> Result<()> {
        let dir = self.temp_dir("batch");
        let prompts: [&[u32]; 3] = [&[5, 9, 2, 77, 31, 8, 100, 41], &[3, 250, 42], &[7; 13]];
        for (case, path) in self.write_cases(&dir)? {
            let (model, _) = load_gguf(&path, &Device::Cpu)?;
            let solo: Vec<Vec<Vec<f32>>> = prompts
                .iter()
                .map(|p| teacher_forced(&model, p, &[1, 2, 3]))
                .collect::<Result<_>>()?;
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
}

fn sha256(path: &Path) -> Result<String> {
    let digest = Sha256::digest(std::fs::read(path)?);
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
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
