//! The BERT encoder (BertModel without the pooler): word + position + token-type
//! embeddings and LayerNorm, then post-norm layers of bidirectional self-attention and a
//! GELU MLP.
//!
//! Two forms of the same pass: [`Bert::forward_packed`] (in [`super::packed`]) runs
//! sequences of any lengths back to back as one `[tokens, H]` matrix, with attention as
//! plain loops within each sequence, so no work goes to padding (the CPU path);
//! [`Bert::forward`] runs a padded batch `[B, T]` with matmul attention and a mask (other
//! devices, and the reference the packed form is tested against).

use std::path::Path;

use candle_core::{DType, Module, Tensor};
use candle_nn::{LayerNorm, Linear};
use serde::Deserialize;

use super::weights::Weights;

use crate::{Error, Result};

/// The fields of a BERT `config.json` the forward pass needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    #[serde(default)]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: String,
    #[serde(default = "defaults::position_embedding_type")]
    pub position_embedding_type: String,
}

/// Hugging Face's defaults for the keys old configs leave out.
mod defaults {
    pub fn type_vocab_size() -> usize {
        2
    }
    pub fn layer_norm_eps() -> f64 {
        1e-12
    }
    pub fn hidden_act() -> String {
        "gelu".into()
    }
    pub fn position_embedding_type() -> String {
        "absolute".into()
    }
}

/// The intermediate activations BERT checkpoints use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Activation {
    /// `gelu`: the exact (erf) form.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    Relu,
}

impl BertConfig {
    /// Reads and checks `config.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::model(path, format!("cannot read: {e}")))?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| Error::model(path, format!("not a BERT config: {e}")))?;
        if cfg.model_type != "bert" {
            return Err(Error::UnsupportedModel {
                path: path.to_owned(),
                found: cfg.model_type,
                expected: "\"bert\"",
            });
        }
        cfg.activation().map_err(|reason| Error::model(path, reason))?;
        if cfg.position_embedding_type != "absolute" {
            let reason = format!(
                "position_embedding_type {:?} is not supported, expected \"absolute\"",
                cfg.position_embedding_type
            );
            return Err(Error::model(path, reason));
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            let reason = format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            );
            return Err(Error::model(path, reason));
        }
        Ok(cfg)
    }

    fn activation(&self) -> std::result::Result<Activation, String> {
        match self.hidden_act.as_str() {
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            other => Err(format!("hidden_act {other:?} is not supported, expected \"gelu\"")),
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

#[derive(Debug)]
pub(super) struct Layer {
    /// Query, key and value fused into one `[3H, H]` projection: one matmul instead of three.
    pub(super) qkv: Proj,
    pub(super) attn_out: Proj,
    pub(super) attn_norm: Norm,
    pub(super) up: Proj,
    pub(super) down: Proj,
    pub(super) out_norm: Norm,
}

/// A loaded BERT encoder.
#[derive(Debug)]
pub struct Bert {
    pub(super) cfg: BertConfig,
    pub(super) activation: Activation,
    pub(super) word: Tensor,
    pub(super) position: Tensor,
    pub(super) token_type: Tensor,
    pub(super) embed_norm: Norm,
    pub(super) layers: Vec<Layer>,
}

/// A LayerNorm: candle's op for the padded pass, its values for the packed one.
#[derive(Debug)]
pub(super) struct Norm {
    candle: LayerNorm,
    pub(super) weight: Vec<f32>,
    pub(super) bias: Vec<f32>,
    pub(super) eps: f32,
}

impl Module for Norm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.candle.forward(x)
    }
}

/// A linear layer (with bias): on a CPU with AVX-512, f32 weights packed for the panel
/// kernel ([`crate::kernels::PanelMatrix`]: 1.2-1.3x candle's matmul on a packed batch's
/// ~800 tokens, whose gemm runs 256-bit FMAs), the weights then held only there; else
/// candle's.
#[derive(Debug)]
pub(super) enum Proj {
    Candle(Linear),
    #[cfg(target_arch = "x86_64")]
    Panels(crate::kernels::PanelMatrix),
}

impl Proj {
    fn new(weight: Tensor, bias: Tensor) -> candle_core::Result<Self> {
        #[cfg(target_arch = "x86_64")]
        if weight.device().is_cpu() && weight.dtype() == DType::F32 {
            let (n, k) = weight.dims2()?;
            let values = weight.flatten_all()?.to_vec1::<f32>()?;
            let bias_values = bias.to_vec1::<f32>()?;
            if let Some(panels) =
                crate::kernels::PanelMatrix::new(&values, n, k, Some(&bias_values))
            {
                return Ok(Self::Panels(panels));
            }
        }
        Ok(Self::Candle(Linear::new(weight, Some(bias))))
    }
}

impl Proj {
    /// `out = x · Wᵀ + b` on row-major slices (`x` `[m, k]`, `out` `[m, n]`).
    pub(super) fn forward_into(&self, x: &[f32], out: &mut [f32]) -> candle_core::Result<()> {
        match self {
            Self::Candle(linear) => {
                let k = linear.weight().dim(1)?;
                let x = Tensor::from_slice(x, (x.len() / k, k), linear.weight().device())?;
                let y = linear.forward(&x)?.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
                if y.len() != out.len() {
                    candle_core::bail!("a projection gave {} values for {}", y.len(), out.len());
                }
                out.copy_from_slice(&y);
                Ok(())
            }
            #[cfg(target_arch = "x86_64")]
            Self::Panels(panels) => panels.matmul_slice(x, out).map_err(candle_core::Error::msg),
        }
    }
}

impl Module for Proj {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Candle(linear) => linear.forward(x),
            #[cfg(target_arch = "x86_64")]
            Self::Panels(panels) => panels.forward(x),
        }
    }
}

fn linear(w: &Weights, name: &str, out: usize, inp: usize) -> Result<Proj> {
    let weight = w.get(&format!("{name}.weight"), &[out, inp])?;
    let bias = w.get(&format!("{name}.bias"), &[out])?;
    Proj::new(weight, bias).map_err(|e| Error::model(w.path(), e))
}

fn layer_norm(w: &Weights, name: &str, size: usize, eps: f64) -> Result<Norm> {
    let weight = w.get(&format!("{name}.weight"), &[size])?;
    let bias = w.get(&format!("{name}.bias"), &[size])?;
    let values = |t: &Tensor| t.to_dtype(DType::F32).and_then(|t| t.to_vec1::<f32>());
    Ok(Norm {
        weight: values(&weight).map_err(|e| Error::model(w.path(), e))?,
        bias: values(&bias).map_err(|e| Error::model(w.path(), e))?,
        eps: eps as f32,
        candle: LayerNorm::new(weight, bias, eps),
    })
}

impl Bert {
    /// Builds the encoder from a checkpoint's weights (Hugging Face names).
    pub(crate) fn new(cfg: &BertConfig, w: &Weights) -> Result<Self> {
        let (h, inter, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let activation = cfg.activation().map_err(|reason| Error::model(w.path(), reason))?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let fused = |kind: &str, shape: &[usize]| -> Result<Tensor> {
                let parts = ["query", "key", "value"]
                    .map(|n| w.get(&format!("{p}.attention.self.{n}.{kind}"), shape));
                let [q, k, v] = parts;
                Tensor::cat(&[q?, k?, v?], 0).map_err(|e| Error::model(w.path(), e))
            };
            let qkv = Proj::new(fused("weight", &[h, h])?, fused("bias", &[h])?)
                .map_err(|e| Error::model(w.path(), e))?;
            layers.push(Layer {
                qkv,
                attn_out: linear(w, &format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: layer_norm(w, &format!("{p}.attention.output.LayerNorm"), h, eps)?,
                up: linear(w, &format!("{p}.intermediate.dense"), inter, h)?,
                down: linear(w, &format!("{p}.output.dense"), h, inter)?,
                out_norm: layer_norm(w, &format!("{p}.output.LayerNorm"), h, eps)?,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            activation,
            word: w.get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?,
            position: w
                .get("embeddings.position_embeddings.weight", &[cfg.max_position_embeddings, h])?,
            token_type: w
                .get("embeddings.token_type_embeddings.weight", &[cfg.type_vocab_size, h])?,
            embed_norm: layer_norm(w, "embeddings.LayerNorm", h, eps)?,
            layers,
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// The rest of a layer after self-attention: output projection, residual and norm, then
    /// the MLP with its residual and norm.
    fn layer_rest(&self, layer: &Layer, attn: &Tensor, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = layer.attn_norm.forward(&(layer.attn_out.forward(attn)? + x)?)?;
        let up = layer.up.forward(&x)?;
        let up = match self.activation {
            Activation::Gelu => super::gelu::gelu_erf(&up)?,
            Activation::GeluTanh => up.gelu()?,
            Activation::Relu => up.relu()?,
        };
        layer.out_norm.forward(&(layer.down.forward(&up)? + &x)?)
    }

    /// The last hidden states `[B, T, H]` of a padded batch: `ids` and `type_ids` `[B, T]`
    /// u32, `mask` `[B, T]` f32 with 1 for real tokens and 0 for padding. Rows of padding
    /// positions are computed but meaningless.
    pub fn forward(
        &self,
        ids: &Tensor,
        type_ids: &Tensor,
        mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let h = self.cfg.hidden_size;
        // Every linear layer runs on the flat `[B*T, H]` matrix: one 2-D matmul per weight.
        let words = self.word.index_select(&ids.flatten_all()?, 0)?;
        let types = self.token_type.index_select(&type_ids.flatten_all()?, 0)?;
        let positions = self.position.narrow(0, 0, t)?;
        let x = (words + types)?.reshape((b, t, h))?.broadcast_add(&positions)?;
        let mut x = self.embed_norm.forward(&x.reshape((b * t, h))?)?;
        // Additive bias `[B, 1, 1, T]`: 0 for real keys, the most negative f32 for padding,
        // so padding gets exactly zero attention weight.
        let bias = ((mask.ones_like()? - mask)? * f64::from(f32::MIN))?.reshape((b, 1, 1, t))?;
        for layer in &self.layers {
            let attn = self.attention(&layer.qkv.forward(&x)?, &bias, b, t)?;
            x = self.layer_rest(layer, &attn, &x)?;
        }
        x.reshape((b, t, h))
    }

    /// Multi-head attention of the fused projections `qkv` `[B*T, 3H]`; returns `[B*T, H]`.
    fn attention(
        &self,
        qkv: &Tensor,
        bias: &Tensor,
        b: usize,
        t: usize,
    ) -> candle_core::Result<Tensor> {
        let (nh, hd) = (self.cfg.num_attention_heads, self.cfg.head_dim());
        // [B, T, 3, nh, hd] -> [3, B, nh, T, hd]
        let qkv = qkv.reshape((b, t, 3, nh, hd))?.permute((2, 0, 3, 1, 4))?;
        let head = |i: usize| qkv.get(i)?.contiguous();
        let (q, k, v) = (head(0)?, head(1)?, head(2)?);
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.broadcast_add(bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        probs.matmul(&v)?.transpose(1, 2)?.reshape((b * t, nh * hd))
    }
}
