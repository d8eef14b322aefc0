//! Mixtures of experts (Qwen3-MoE, Qwen2-MoE with its shared expert, Mixtral-style Llama,
//! gpt-oss with its sinks, biases, windows, YaRN and MXFP4 experts)
//! against llama.cpp on the same random-weight GGUF files ([`common`] says how), and batched
//! equal to alone.

mod common;

use candle_core::quantized::GgmlDType;
use common::{Case, Result, Suite};
use fleet_inference::transformer::gguf::Transcoded;
use fleet_inference::transformer::{DecoderConfig, Family, fixture};

const SUITE: Suite = Suite { name: "moe", cases };

fn cases(vocab: usize) -> Vec<Case> {
    let sized = |cfg: DecoderConfig| DecoderConfig { vocab_size: vocab, ..cfg };
    let qwen3 = sized(fixture::quantizable_config(Family::Qwen3Moe));
    let qwen2 = sized(fixture::quantizable_config(Family::Qwen2Moe));
    let mixtral = sized(fixture::with_experts(fixture::quantizable_config(Family::Llama), 4, 2));
    let gpt_oss = sized(fixture::quantizable_config(Family::GptOss));
    vec![
        Case {
            name: "qwen3moe-f32",
            cfg: qwen3.clone(),
            dtype: GgmlDType::F32.into(),
            tolerance: 1e-4,
        },
        Case { name: "qwen3moe-q4_k", cfg: qwen3, dtype: GgmlDType::Q4K.into(), tolerance: 0.05 },
        Case {
            name: "qwen2moe-f32",
            cfg: qwen2.clone(),
            dtype: GgmlDType::F32.into(),
            tolerance: 1e-4,
        },
        Case { name: "qwen2moe-q8_0", cfg: qwen2, dtype: GgmlDType::Q8_0.into(), tolerance: 0.05 },
        Case {
            name: "mixtral-f32",
            cfg: mixtral.clone(),
            dtype: GgmlDType::F32.into(),
            tolerance: 1e-4,
        },
        Case { name: "mixtral-q4_0", cfg: mixtral, dtype: GgmlDType::Q4_0.into(), tolerance: 0.05 },
        Case {
            name: "gpt-oss-f32",
            cfg: gpt_oss.clone(),
            dtype: GgmlDType::F32.into(),
            tolerance: 1e-4,
        },
        // Every matrix in MXFP4 (gpt-oss's files hold their experts so), transcoded to Q8_0.
        Case {
            name: "gpt-oss-mxfp4",
            cfg: gpt_oss,
            dtype: Transcoded::Mxfp4.into(),
            tolerance: 0.05,
        },
    ]
}

#[test]
fn mixtures_of_experts_give_llama_cpp_logits_and_tokens() -> Result<()> {
    SUITE.check_against_llama_cpp()
}

#[test]
fn a_batch_of_prompts_gives_each_prompts_solo_logits() -> Result<()> {
    SUITE.check_batch_invariance()
}
