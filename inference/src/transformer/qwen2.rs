//! Qwen2 / Qwen2.5: RMSNorm, grouped-query attention with biased QKV, rotary embeddings,
//! SwiGLU MLP, optionally tied embeddings.

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::Deserialize;

use super::StepInput;
use super::cache::SequenceCache;

/// The fields of a Qwen2 `config.json` the forward pass needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Qwen2Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

impl Qwen2Config {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

#[derive(Debug)]
struct Layer {
    input_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// A loaded Qwen2 model.
#[derive(Debug)]
pub struct Qwen2 {
    cfg: Qwen2Config,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
}

fn linear(vb: &VarBuilder, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
    let vb = vb.pp(name);
    let weight = vb.get((out, inp), "weight")?;
    let bias = if bias { Some(vb.get(out, "bias")?) } else { None };
    Ok(Linear::new(weight, bias))
}

impl Qwen2 {
    /// Builds the model from weights named as in Hugging Face checkpoints.
    pub fn new(cfg: &Qwen2Config, vb: VarBuilder) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        let (nh, kvh, inter) =
            (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size);
        let m = vb.pp("model");
        let embed = m.get((cfg.vocab_size, h), "embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = m.pp("layers").pp(i);
            let attn = l.pp("self_attn");
            let mlp = l.pp("mlp");
            layers.push(Layer {
                input_norm: l.get(h, "input_layernorm.weight")?,
                q: linear(&attn, "q_proj", nh * hd, h, true)?,
                k: linear(&attn, "k_proj", kvh * hd, h, true)?,
                v: linear(&attn, "v_proj", kvh * hd, h, true)?,
                o: linear(&attn, "o_proj", h, nh * hd, false)?,
                post_norm: l.get(h, "post_attention_layernorm.weight")?,
                gate: linear(&mlp, "gate_proj", inter, h, false)?,
                up: linear(&mlp, "up_proj", inter, h, false)?,
                down: linear(&mlp, "down_proj", h, inter, false)?,
            });
        }
        let norm = m.get(h, "norm.weight")?;
        let lm_head = if cfg.tie_word_embeddings || !vb.contains_tensor("lm_head.weight") {
            Linear::new(embed.clone(), None)
        } else {
            linear(&vb, "lm_head", cfg.vocab_size, h, false)?
        };
        let (cos, sin) = rope_tables(cfg, vb.device())?;
        Ok(Self { cfg: cfg.clone(), embed, layers, norm, lm_head, cos, sin })
    }

    /// Writes the weights as a safetensors file (names as in Hugging Face checkpoints).
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let mut t = std::collections::HashMap::new();
        t.insert("model.embed_tokens.weight".to_owned(), self.embed.clone());
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            t.insert(format!("{p}.input_layernorm.weight"), l.input_norm.clone());
            t.insert(format!("{p}.post_attention_layernorm.weight"), l.post_norm.clone());
            let linears = [
                ("self_attn.q_proj", &l.q),
                ("self_attn.k_proj", &l.k),
                ("self_attn.v_proj", &l.v),
                ("self_attn.o_proj", &l.o),
                ("mlp.gate_proj", &l.gate),
                ("mlp.up_proj", &l.up),
                ("mlp.down_proj", &l.down),
            ];
            for (name, linear) in linears {
                t.insert(format!("{p}.{name}.weight"), linear.weight().clone());
                if let Some(b) = linear.bias() {
                    t.insert(format!("{p}.{name}.bias"), b.clone());
                }
            }
        }
        t.insert("model.norm.weight".to_owned(), self.norm.clone());
        if !self.cfg.tie_word_embeddings {
            t.insert("lm_head.weight".to_owned(), self.lm_head.weight().clone());
        }
        candle_core::safetensors::save(&t, path)
    }

    pub fn config(&self) -> &Qwen2Config {
        &self.cfg
    }

    /// A new, empty cache for one sequence.
    pub fn new_cache(&self) -> SequenceCache {
        SequenceCache::new(self.cfg.num_hidden_layers)
    }

    /// One forward step over several sequences at once. Returns the logits `[B, vocab]` of
    /// each sequence's last fed token, and extends every sequence's cache.
    pub fn step(&self, inputs: &mut [StepInput<'_>]) -> Result<Tensor> {
        let device = self.embed.device();
        let ids: Vec<u32> = inputs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let ids =
            Tensor::from_vec(ids, inputs.iter().map(|s| s.tokens.len()).sum::<usize>(), device)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        let eps = self.cfg.rms_norm_eps as f32;
        for (index, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.input_norm, eps)?;
            let (q, k, v) = (layer.q.forward(&h)?, layer.k.forward(&h)?, layer.v.forward(&h)?);
            let mut outputs = Vec::with_capacity(inputs.len());
            let mut offset = 0;
            for input in inputs.iter_mut() {
                let n = input.tokens.len();
                let pos = input.cache.len();
                let qi = self.heads(&q.narrow(0, offset, n)?, self.cfg.num_attention_heads, pos)?;
                let ki = self.heads(&k.narrow(0, offset, n)?, self.cfg.num_key_value_heads, pos)?;
                let vi = v
                    .narrow(0, offset, n)?
                    .reshape((n, self.cfg.num_key_value_heads, self.cfg.head_dim()))?
                    .transpose(0, 1)?
                    .contiguous()?;
                let (keys, values) = input.cache.append(index, ki, vi)?;
                outputs.push(self.attention(&qi, &keys, &values, pos)?);
                offset += n;
            }
            let attn = Tensor::cat(&outputs, 0)?;
            x = (x + layer.o.forward(&attn)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.post_norm, eps)?;
            let mlp = layer.down.forward(
                &(candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?,
            )?;
            x = (x + mlp)?;
        }
        let mut last = Vec::with_capacity(inputs.len());
        let mut offset = 0;
        for input in inputs.iter_mut() {
            offset += input.tokens.len();
            last.push(offset as u32 - 1);
            input.cache.advance(input.tokens.len());
        }
        let last = x.index_select(&Tensor::new(last.as_slice(), device)?, 0)?;
        self.lm_head.forward(&candle_nn::ops::rms_norm(&last, &self.norm, eps)?)
    }

    /// `[n, heads * head_dim]` → `[heads, n, head_dim]` with rotary embeddings for
    /// positions `pos..pos + n`.
    fn heads(&self, x: &Tensor, heads: usize, pos: usize) -> Result<Tensor> {
        let (n, hd) = (x.dim(0)?, self.cfg.head_dim());
        let x = x.reshape((1, n, heads, hd))?.transpose(1, 2)?.contiguous()?;
        let cos = self.cos.narrow(0, pos, n)?;
        let sin = self.sin.narrow(0, pos, n)?;
        candle_nn::rotary_emb::rope(&x, &cos, &sin)?.squeeze(0)
    }

    /// Attention of `q` `[heads, n, hd]` (positions `pos..pos + n`) over `keys`/`values`
    /// `[kv_heads, len, hd]`; returns `[n, heads * hd]`.
    fn attention(&self, q: &Tensor, keys: &Tensor, values: &Tensor, pos: usize) -> Result<Tensor> {
        let (nh, n, hd) = q.dims3()?;
        let (kvh, len, _) = keys.dims3()?;
        let groups = nh / kvh;
        let repeat = |t: &Tensor| -> Result<Tensor> {
            if groups == 1 {
                return Ok(t.clone());
            }
            t.unsqueeze(1)?.expand((kvh, groups, len, hd))?.reshape((nh, len, hd))
        };
        let (keys, values) = (repeat(keys)?, repeat(values)?);
        let scale = 1.0 / (hd as f64).sqrt();
        let mut scores = (q.matmul(&keys.t()?)? * scale)?;
        if n > 1 {
            // Query i (at position pos + i) sees keys up to pos + i.
            let mask: Vec<f32> = (0..n)
                .flat_map(|i| {
                    (0..len).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (n, len), q.device())?;
            scores = scores.broadcast_add(&mask)?;
        }
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        weights.matmul(&values)?.transpose(0, 1)?.reshape((n, nh * hd))
    }
}

/// cos and sin tables `[max_positions, head_dim / 2]`.
fn rope_tables(cfg: &Qwen2Config, device: &Device) -> Result<(Tensor, Tensor)> {
    let hd = cfg.head_dim();
    let inv_freq: Vec<f32> = (0..hd)
        .step_by(2)
        .map(|i| 1f32 / cfg.rope_theta.powf(i as f64 / hd as f64) as f32)
        .collect();
    let inv_freq = Tensor::from_vec(inv_freq, (1, hd / 2), device)?;
    let positions = Tensor::arange(0u32, cfg.max_position_embeddings as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((cfg.max_position_embeddings, 1))?;
    let freqs = positions.matmul(&inv_freq)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

/// The index of the largest logit of each row.
pub fn greedy(logits: &Tensor) -> Result<Vec<u32>> {
    logits.argmax(D::Minus1)?.to_vec1::<u32>()
}
