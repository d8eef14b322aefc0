//! A decoder layer's weights, as the family's recipe says they are stored, loaded and
//! checked against the configuration's shapes.

use candle_core::{DType, Result, Tensor};

use crate::transformer::config::{DecoderConfig, Family, QkNorm};
use crate::transformer::experts::MixtureOfExperts;
use crate::transformer::linear::Linear;
use crate::transformer::weights::{Part, Projections, WeightSource};

#[derive(Debug)]
pub(super) enum Attention {
    Separate {
        q: Linear,
        k: Linear,
        v: Linear,
    },
    Fused(Linear),
    /// LFM2's short convolution in place of attention: `in_proj` gives B, C and x; the
    /// kernel `[hidden, l_cache]` (column 0 the oldest position) mixes B·x over the last
    /// `l_cache` positions; the layer's `o` is its output projection. CPU only.
    Conv {
        in_proj: Linear,
        kernel: Vec<f32>,
        l_cache: usize,
    },
}

#[derive(Debug)]
pub(super) enum Mlp {
    Separate { gate: Linear, up: Linear },
    Fused(Linear),
}

/// What follows attention: one MLP, or a mixture of experts.
#[derive(Debug)]
pub(super) enum Ffn {
    Dense {
        mlp: Mlp,
        down: Linear,
    },
    /// Runs on the CPU only (a GPU refuses these models at load).
    Experts(Box<MixtureOfExperts>),
}

#[derive(Debug)]
pub(super) struct Layer {
    /// `None` where the family norms after attention only (OLMo 2).
    pub(super) attn_norm: Option<Tensor>,
    pub(super) attention: Attention,
    pub(super) q_norm: Option<Tensor>,
    pub(super) k_norm: Option<Tensor>,
    pub(super) o: Linear,
    /// Each head's sink logit (gpt-oss).
    pub(super) sinks: Option<Vec<f32>>,
    pub(super) post_attn_norm: Option<Tensor>,
    pub(super) mlp_norm: Option<Tensor>,
    pub(super) ffn: Ffn,
    pub(super) post_mlp_norm: Option<Tensor>,
}

pub(super) fn load_layer(
    cfg: &DecoderConfig,
    src: &mut impl WeightSource,
    i: usize,
) -> Result<Layer> {
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    let (q_out, kv_out) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let bias = cfg.qkv_bias;
    let conv = cfg.recipe.short_conv.as_ref().filter(|_| cfg.convolves(i));
    let attention = if let Some(conv) = conv {
        let in_proj = src.linear(Part::ConvIn(i), false)?;
        expect_out(&in_proj, 3 * h, "the convolution's input projection")?;
        let kernel = src.dense(Part::Conv(i), false)?;
        expect_dims(&kernel, &[h, conv.l_cache], "the convolution's kernel")?;
        let kernel = kernel.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        Attention::Conv { in_proj, kernel, l_cache: conv.l_cache }
    } else if cfg.family == Family::Phi3 {
        let qkv = src.linear(Part::Qkv(i), bias)?;
        expect_out(&qkv, q_out + 2 * kv_out, "the fused QKV projection")?;
        Attention::Fused(qkv)
    } else {
        match src.projections(&[Part::Q(i), Part::K(i), Part::V(i)], bias)? {
            Projections::Fused(qkv) => {
                expect_out(&qkv, q_out + 2 * kv_out, "the Q, K and V projections")?;
                Attention::Fused(qkv)
            }
            Projections::Separate(linears) => {
                let Ok([q, k, v]) = <[Linear; 3]>::try_from(linears) else {
                    candle_core::bail!("expected the Q, K and V projections")
                };
                expect_out(&q, q_out, "the Q projection")?;
                expect_out(&k, kv_out, "the K projection")?;
                expect_out(&v, kv_out, "the V projection")?;
                Attention::Separate { q, k, v }
            }
        }
    };
    let (q_norm, k_norm) = match cfg.qk_norm() {
        _ if conv.is_some() => (None, None),
        QkNorm::Off => (None, None),
        norm => {
            let (q, k) = (src.dense(Part::QNorm(i), false)?, src.dense(Part::KNorm(i), false)?);
            let (q_width, k_width) = match norm {
                QkNorm::Whole => (q_out, kv_out),
                _ => (hd, hd),
            };
            expect_dims(&q, &[q_width], "the query norm")?;
            expect_dims(&k, &[k_width], "the key norm")?;
            (Some(q), Some(k))
        }
    };
    let ffn = if let Some(spec) = &cfg.recipe.experts {
        Ffn::Experts(Box::new(MixtureOfExperts::load(spec, h, cfg.recipe.activation, src, i)?))
    } else if cfg.family == Family::Phi3 {
        let gate_up = src.linear(Part::GateUp(i), false)?;
        expect_out(&gate_up, 2 * cfg.intermediate_size, "the fused gate/up projection")?;
        Ffn::Dense { mlp: Mlp::Fused(gate_up), down: src.linear(Part::Down(i), false)? }
    } else {
        let mlp = match src.projections(&[Part::Gate(i), Part::Up(i)], false)? {
            Projections::Fused(gate_up) => {
                expect_out(&gate_up, 2 * cfg.intermediate_size, "the gate and up projections")?;
                Mlp::Fused(gate_up)
            }
            Projections::Separate(linears) => {
                let Ok([gate, up]) = <[Linear; 2]>::try_from(linears) else {
                    candle_core::bail!("expected the gate and up projections")
                };
                expect_out(&gate, cfg.intermediate_size, "the gate projection")?;
                expect_out(&up, cfg.intermediate_size, "the up projection")?;
                Mlp::Separate { gate, up }
            }
        };
        Ffn::Dense { mlp, down: src.linear(Part::Down(i), false)? }
    };
    let pre_norm = |src: &mut _, part| -> Result<Option<Tensor>> {
        if !cfg.recipe.pre_norms {
            return Ok(None);
        }
        let norm = WeightSource::dense(src, part, false)?;
        expect_dims(&norm, &[h], "a norm")?;
        Ok(Some(norm))
    };
    let sinks = if cfg.recipe.attn_sinks {
        let sinks = src.dense(Part::Sinks(i), false)?;
        expect_dims(&sinks, &[cfg.num_heads], "the attention sinks")?;
        Some(sinks.to_dtype(DType::F32)?.to_vec1()?)
    } else {
        None
    };
    let attn_norm = pre_norm(src, Part::AttnNorm(i))?;
    let (post_attn_norm, post_mlp_norm) = if cfg.recipe.post_norms {
        let (attn, mlp) =
            (src.dense(Part::PostAttnNorm(i), false)?, src.dense(Part::PostMlpNorm(i), false)?);
        expect_dims(&attn, &[h], "a post-norm")?;
        expect_dims(&mlp, &[h], "a post-norm")?;
        (Some(attn), Some(mlp))
    } else {
        (None, None)
    };
    Ok(Layer {
        attn_norm,
        attention,
        q_norm,
        k_norm,
        o: match conv {
            Some(_) => src.linear(Part::ConvOut(i), false)?,
            None => src.linear(Part::O(i), cfg.recipe.out_bias)?,
        },
        sinks,
        post_attn_norm,
        mlp_norm: pre_norm(src, Part::mlp_norm(cfg.family, i))?,
        ffn,
        post_mlp_norm,
    })
}

/// A layer's norm before attention or MLP, which the GPU's layers have (their recipe is
/// Llama's: [`Recipe::runs_on_gpu`](super::config::Recipe::runs_on_gpu)).
pub(super) fn pre_norm(norm: &Option<Tensor>) -> Result<&Tensor> {
    norm.as_ref().ok_or_else(|| candle_core::Error::Msg("the GPU's layers need pre-norms".into()))
}

fn expect_dims(t: &Tensor, dims: &[usize], what: &str) -> Result<()> {
    if t.dims() != dims {
        candle_core::bail!("{what} has shape {:?}, expected {dims:?}", t.dims());
    }
    Ok(())
}

fn expect_out(l: &Linear, out: usize, what: &str) -> Result<()> {
    if l.out_features() != out {
        candle_core::bail!("{what} has {} outputs, expected {out}", l.out_features());
    }
    Ok(())
}
