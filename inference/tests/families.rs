//! The dense families that differ from Llama in details (Granite's multipliers, OLMo 2's
//! post-norms and whole-row QK norm, OLMo 3's sliding window, SmolLM3's layers without
//! rotation), YaRN and LongRoPE rotation and the IQ4 types, against llama.cpp on the same random-weight
//! GGUF files ([`common`] says how), and batched equal to alone.

mod common;

use candle_core::Device;
use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Value;
use common::{Case, Result, Suite};
use fleet_inference::transformer::config::{RopeConfig, RopeScaling};
use fleet_inference::transformer::fixture::Blocks;
use fleet_inference::transformer::gguf::Transcoded;
use fleet_inference::transformer::load::load_gguf;
use fleet_inference::transformer::{DecoderConfig, Family, fixture};

const SUITE: Suite = Suite { name: "families", cases };

fn cases(vocab: usize) -> Vec<Case> {
    let sized = |cfg: DecoderConfig| DecoderConfig { vocab_size: vocab, ..cfg };
    let granite = sized(fixture::quantizable_config(Family::Granite));
    let olmo2 = sized(fixture::quantizable_config(Family::Olmo2));
    // OLMo 3: the first layer slides over 6 positions, the second is global.
    let olmo3 = fixture::with_window(olmo2.clone(), 6, 2);
    let smollm3 = sized(fixture::quantizable_config(Family::SmolLm3));
    // LFM2: convolution, attention, convolution, attention.
    let lfm2 = sized(fixture::quantizable_config(Family::Lfm2));
    // YaRN as Qwen3's long-context files set it: pairs 10 to 23 of 32 on the ramp, cos and sin
    // scaled by 1 + 0.1 ln 4.
    let qwen3 = sized(fixture::quantizable_config(Family::Qwen3));
    let yarn = RopeScaling::Yarn {
        factor: 4.0,
        original_max_positions: 4096,
        beta_fast: 32.0,
        beta_slow: 1.0,
        attn_factor: 1.0,
    };
    let qwen3_yarn =
        DecoderConfig { rope: RopeConfig { scaling: yarn, ..qwen3.rope.clone() }, ..qwen3 };
    // LongRoPE as Phi-3.5's files carry it: a long and a short set of divisors, the long one
    // where the model serves more than its original context; cos and sin scaled.
    let phi3 = sized(fixture::quantizable_config(Family::Phi3));
    let longrope = |long| {
        let factors = (0..phi3.rope.dims / 2).map(|i| 1.0 + i as f32 * 0.25).collect();
        let scaling = RopeScaling::LongRope { long, factors, attn_factor: 1.19 };
        DecoderConfig { rope: RopeConfig { scaling, ..phi3.rope.clone() }, ..phi3.clone() }
    };
    let f32_ = |name, cfg| Case { name, cfg, dtype: GgmlDType::F32.into(), tolerance: 1e-4 };
    // Quantized files: 0.1, about a tenth of the logits' spread. Ours and llama.cpp's
    // integers are the same; the float sums are not always in the same order (llama.cpp's own
    // batched and one-by-one logits differ by up to 0.03 on these files).
    let quantized = |name, cfg, dtype: Blocks| Case { name, cfg, dtype, tolerance: 0.1 };
    vec![
        f32_("granite-f32", granite.clone()),
        quantized("granite-q4_k", granite.clone(), GgmlDType::Q4K.into()),
        // The i-quants we transcode to Q8_0 at load: IQ4_NL exactly, IQ4_XS with each 32's
        // scale rounded to f16.
        quantized("granite-iq4_xs", granite, Transcoded::Iq4Xs.into()),
        f32_("olmo2-f32", olmo2.clone()),
        quantized("olmo2-q8_0", olmo2, GgmlDType::Q8_0.into()),
        f32_("olmo3-f32", olmo3.clone()),
        quantized("olmo3-q5_k", olmo3, GgmlDType::Q5K.into()),
        f32_("smollm3-f32", smollm3.clone()),
        quantized("smollm3-q4_0", smollm3.clone(), GgmlDType::Q4_0.into()),
        quantized("smollm3-iq4_nl", smollm3.clone(), Transcoded::Iq4Nl.into()),
        // BF16 matrices (the type of many unquantized uploads): llama.cpp's CPU rounds the
        // activations to bf16 too before its dot products; ours stay f32, hence 0.05.
        f32_("phi3-longrope-long-f32", longrope(true)),
        f32_("phi3-longrope-short-f32", longrope(false)),
        f32_("qwen3-yarn-f32", qwen3_yarn.clone()),
        quantized("qwen3-yarn-q8_0", qwen3_yarn, GgmlDType::Q8_0.into()),
        Case { name: "smollm3-bf16", cfg: smollm3, dtype: GgmlDType::BF16.into(), tolerance: 0.05 },
        f32_("lfm2-f32", lfm2.clone()),
        quantized("lfm2-q8_0", lfm2, GgmlDType::Q8_0.into()),
    ]
}

#[test]
fn dense_families_give_llama_cpp_logits_and_tokens() -> Result<()> {
    SUITE.check_against_llama_cpp()
}

#[test]
fn a_batch_of_prompts_gives_each_prompts_solo_logits() -> Result<()> {
    SUITE.check_batch_invariance()
}

/// The error loading a tiny `family` file with `extra` metadata gives, its bytes first
/// changed by `patch`; an error itself if the file loads.
fn refusal(
    name: &str,
    family: Family,
    extra: &[(String, Value)],
    patch: impl FnOnce(&mut Vec<u8>) -> Result<()>,
) -> Result<String> {
    let dir = std::env::temp_dir().join(format!("fleet-families-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = fixture::tiny_config(family, false);
    let weights = fixture::seeded_weights(&cfg, 3)?;
    let path = dir.join(format!("{name}.gguf"));
    fixture::write_gguf(&path, &cfg, &weights, GgmlDType::F32, extra)?;
    let mut bytes = std::fs::read(&path)?;
    patch(&mut bytes)?;
    std::fs::write(&path, bytes)?;
    let loaded = load_gguf(&path, &Device::Cpu);
    std::fs::remove_dir_all(&dir)?;
    Ok(loaded.err().ok_or_else(|| format!("the {name} file loaded"))?.to_string())
}

/// A rotation we do not compute (LongRoPE's type here) is refused at load by name, not
/// ignored: ignored, every position would be rotated otherwise than the model was trained with.
#[test]
fn rope_scaling_we_do_not_compute_is_refused_by_name() -> Result<()> {
    let longrope = [
        ("olmo2.rope.scaling.type".to_owned(), Value::String("longrope".into())),
        ("olmo2.rope.scaling.factor".to_owned(), Value::F32(8.0)),
    ];
    let e = refusal("longrope", Family::Olmo2, &longrope, |_| Ok(()))?;
    assert!(e.contains("\"longrope\"") && e.contains("not supported"), "{e}");
    Ok(())
}

/// A family that never has experts refuses a file that says it has some, rather than running
/// it as a dense model whose expert tensors are never read.
#[test]
fn experts_in_a_family_without_them_are_refused() -> Result<()> {
    let experts = [
        ("gemma3.expert_count".to_owned(), Value::U32(4)),
        ("gemma3.expert_used_count".to_owned(), Value::U32(2)),
    ];
    let e = refusal("gemma3-experts", Family::Gemma3, &experts, |_| Ok(()))?;
    assert!(e.contains("gemma3 models with experts are not supported"), "{e}");
    Ok(())
}

/// A file whose tensors are of a GGML type we do not read (IQ2_XXS here) is refused naming
/// the type and what to do, not as an unreadable file.
#[test]
fn a_tensor_type_we_do_not_read_is_named() -> Result<()> {
    // The tensor index: name (u64 length, bytes), dimensions (u32 count, u64 each), type
    // (u32), offset (u64). token_embd.weight's type becomes IQ2_XXS's, 16.
    let e = refusal("iq2_xxs", Family::Granite, &[], |bytes| {
        let name = b"token_embd.weight";
        let at = bytes.windows(name.len()).position(|w| w == name).ok_or("no token_embd")?;
        let dims_at = at + name.len();
        let dims = u32::from_le_bytes(bytes[dims_at..dims_at + 4].try_into()?) as usize;
        let type_at = dims_at + 4 + 8 * dims;
        bytes[type_at..type_at + 4].copy_from_slice(&16u32.to_le_bytes());
        Ok(())
    })?;
    assert!(e.contains("IQ2_XXS") && e.contains("requantize"), "{e}");
    Ok(())
}
