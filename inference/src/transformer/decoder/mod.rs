//! One batched forward pass for every supported family: RMSNorm, grouped-query attention
//! with rotary embeddings (optional QKV bias, QK norm per head or over whole rows, fused
//! QKV), SwiGLU MLP (optionally fused gate/up), optionally tied embeddings; and what a
//! family's [`Recipe`] adds: norms after attention and MLP (with or without those before),
//! GELU, scaled embeddings, residual branches and logits, sliding-window layers with their
//! own rotation, layers without rotation, soft-capped scores and logits.
//!
//! [`Recipe`]: super::config::Recipe

//!
//! - `layer`: a layer's weights, loaded and checked;
//! - three forward paths over one recipe: `tensors` (candle's ops, any device), `buffers`
//!   (the CPU's, on f32 buffers through our kernels, the same bits) and `gpu` (CUDA, the KV
//!   memory in shared pools).

mod buffers;
mod gpu;
mod layer;
mod tensors;

use std::sync::OnceLock;

use candle_core::{D, DType, Device, Result, Tensor};

use super::StepInput;
use super::attention::Scores;
use super::awake::{KEEP_AWAKE_TOKENS, KeepAwake};
use super::cache::SequenceCache;
use super::config::DecoderConfig;
use super::linear::{Linear, compute_dtype};
use super::paged::BlockTable;
use super::rope::Rope;
use super::weights::{Part, WeightSource};
use crate::cuda::PagedKv;
use layer::{Attention, Ffn, Layer, Mlp, load_layer};

/// The norm gains as f32 values, for the CPU's layer loop on buffers ([`fused`]).
#[derive(Debug)]
struct Gains {
    layers: Vec<LayerGains>,
    norm: Vec<f32>,
}

#[derive(Debug)]
struct LayerGains {
    attn: Option<Vec<f32>>,
    mlp: Option<Vec<f32>>,
    q: Option<Vec<f32>>,
    k: Option<Vec<f32>>,
    post_attn: Option<Vec<f32>>,
    post_mlp: Option<Vec<f32>>,
}

/// Where token embeddings are read from.
#[derive(Debug)]
enum Embedding {
    /// The rows of the (tied) lm head: one copy of the table serves both.
    LmHead,
    /// The table's own matrix, quantized or dense, read row by row.
    Rows(Linear),
    /// A dense tensor (weights not on the CPU, or of a type our kernels do not read).
    Table(Tensor),
}

/// A loaded decoder-only model.
#[derive(Debug)]
pub struct Decoder {
    cfg: DecoderConfig,
    device: Device,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    rope: Rope,
    /// The rotation of sliding-window layers, where it differs (Gemma 3).
    window_rope: Option<Rope>,
    /// Activations' dtype: f32 on the CPU, bf16 on a CUDA GPU.
    dtype: DType,
    /// On the CPU, where every projection runs on our kernels: the norms' gains for
    /// [`Decoder::layers_fused`].
    gains: Option<Gains>,
    /// On a CUDA GPU, every sequence's keys and values in blocks of shared pools (made by
    /// [`Decoder::reserve_kv`], or at the first cache with [`DEFAULT_GPU_KV_BYTES`]).
    paged: OnceLock<PagedKv>,
}

/// KV memory a GPU decoder takes when nobody said how much.
pub const DEFAULT_GPU_KV_BYTES: usize = 2 << 30;

impl Decoder {
    /// Builds the model from `source`, whose tensors must have the shapes `cfg` names.
    pub fn load(
        cfg: DecoderConfig,
        source: &mut impl WeightSource,
        device: &Device,
    ) -> Result<Self> {
        // A quantized table stays quantized: rows are dequantized as tokens come in.
        let tied = cfg.tie_word_embeddings || !source.has(Part::LmHead, false);
        let table = source.linear(Part::Embed, false)?;
        let table_dims = [table.out_features(), table.in_features()];
        let (embed, lm_head) = match (tied, table.has_rows()) {
            (true, true) => (Embedding::LmHead, table),
            (true, false) => (Embedding::Table(source.dense(Part::Embed, false)?), table),
            (false, true) => (Embedding::Rows(table), source.linear(Part::LmHead, false)?),
            (false, false) => {
                drop(table);
                let embed = Embedding::Table(source.dense(Part::Embed, false)?);
                (embed, source.linear(Part::LmHead, false)?)
            }
        };
        let want = [cfg.vocab_size, cfg.hidden_size];
        if table_dims != want {
            candle_core::bail!("the embedding table has shape {table_dims:?}, expected {want:?}");
        }
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            layers.push(load_layer(&cfg, source, i)?);
        }
        let norm = source.dense(Part::final_norm(cfg.family), false)?;
        let rope = Rope::new(&cfg.rope, device)?;
        let window_rope = match &cfg.recipe.sliding_window {
            Some(w) if w.rope != cfg.rope => Some(Rope::new(&w.rope, device)?),
            _ => None,
        };
        if device.is_cuda() && !cfg.recipe.runs_on_gpu(cfg.head_dim) {
            candle_core::bail!(
                "{:?} models run on the CPU only for now: the GPU's kernels run Llama's and \
                 Qwen3's layers only (no post-norms, GELU, sliding windows, soft caps, \
                 multipliers or unrotated layers yet)",
                cfg.family
            );
        }
        let dtype = compute_dtype(device);
        let mut decoder = Self {
            cfg,
            device: device.clone(),
            embed,
            layers,
            norm,
            lm_head,
            rope,
            window_rope,
            dtype,
            gains: None,
            paged: OnceLock::new(),
        };
        if dtype != DType::F32 {
            decoder.cast_small_tensors()?;
        }
        if device.is_cpu() && dtype == DType::F32 {
            decoder.gains = decoder.gains()?;
        }
        if device.is_cuda() {
            decoder.stack_projections()?;
        }
        Ok(decoder)
    }

    /// The norms' gains as values, when every projection runs on our CPU kernels.
    fn gains(&self) -> Result<Option<Gains>> {
        let on_slices = self.layers.iter().all(|l| {
            let attention = match &l.attention {
                Attention::Fused(qkv) => vec![qkv],
                Attention::Separate { q, k, v } => vec![q, k, v],
                // The convolution runs on candle's ops only for now.
                Attention::Conv { .. } => return false,
            };
            // Experts run on our kernels or on candle's matmul, row slices in and out.
            let ffn = match &l.ffn {
                Ffn::Dense { mlp: Mlp::Fused(gate_up), down } => vec![gate_up, down],
                Ffn::Dense { mlp: Mlp::Separate { gate, up }, down } => vec![gate, up, down],
                Ffn::Experts(_) => vec![],
            };
            attention.into_iter().chain(ffn).chain([&l.o]).all(Linear::runs_on_slices)
        });
        if !on_slices {
            return Ok(None);
        }
        let values = |t: &Tensor| t.to_dtype(DType::F32)?.to_vec1::<f32>();
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(LayerGains {
                    attn: l.attn_norm.as_ref().map(values).transpose()?,
                    mlp: l.mlp_norm.as_ref().map(values).transpose()?,
                    q: l.q_norm.as_ref().map(values).transpose()?,
                    k: l.k_norm.as_ref().map(values).transpose()?,
                    post_attn: l.post_attn_norm.as_ref().map(values).transpose()?,
                    post_mlp: l.post_mlp_norm.as_ref().map(values).transpose()?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Some(Gains { layers, norm: values(&self.norm)? }))
    }

    /// On a GPU every launch counts: Q, K and V become one matmul, and gate and up another.
    fn stack_projections(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            if let Attention::Separate { q, k, v } = &layer.attention
                && let Some(qkv) = Linear::stack(&[q, k, v])?
            {
                layer.attention = Attention::Fused(qkv);
            }
            if let Ffn::Dense { mlp, .. } = &mut layer.ffn
                && let Mlp::Separate { gate, up } = mlp
                && let Some(gate_up) = Linear::stack(&[gate, up])?
            {
                *mlp = Mlp::Fused(gate_up);
            }
        }
        Ok(())
    }

    /// Norm gains and a dense embedding table in the compute dtype (the loaders give f32).
    fn cast_small_tensors(&mut self) -> Result<()> {
        let dtype = self.dtype;
        let cast = |t: &mut Tensor| -> Result<()> {
            *t = t.to_dtype(dtype)?;
            Ok(())
        };
        cast(&mut self.norm)?;
        if let Embedding::Table(t) = &mut self.embed {
            cast(t)?;
        }
        for layer in &mut self.layers {
            let norms = [&mut layer.attn_norm, &mut layer.mlp_norm, &mut layer.q_norm];
            let more = [&mut layer.k_norm, &mut layer.post_attn_norm, &mut layer.post_mlp_norm];
            for t in norms.into_iter().chain(more).flatten() {
                cast(t)?;
            }
        }
        Ok(())
    }

    /// On a CUDA GPU, allocates `bytes` of KV memory shared by every sequence (once; later
    /// calls change nothing). Elsewhere each sequence's cache is its own buffers and this
    /// does nothing.
    pub fn reserve_kv(&self, bytes: usize) -> Result<()> {
        self.paged_kv(bytes).map(|_| ())
    }

    fn paged_kv(&self, bytes: usize) -> Result<Option<&PagedKv>> {
        if !self.device.is_cuda() {
            return Ok(None);
        }
        if let Some(kv) = self.paged.get() {
            return Ok(Some(kv));
        }
        let c = &self.cfg;
        let kv = PagedKv::new(
            &self.device,
            self.dtype,
            c.num_layers,
            c.num_kv_heads,
            c.head_dim,
            bytes,
        )?;
        Ok(Some(self.paged.get_or_init(|| kv)))
    }

    /// Blocks of KV memory free and in all, on a GPU once its pools exist.
    pub fn kv_blocks(&self) -> Option<(usize, usize)> {
        let pool = self.paged.get()?.pool();
        Some((pool.free_blocks(), pool.blocks()))
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// A new, empty cache for one sequence, with room for `capacity` positions (on a GPU its
    /// blocks are taken as positions come, from pools made now if they do not exist yet).
    pub fn new_cache(&self, capacity: usize) -> SequenceCache {
        match self.paged_kv(DEFAULT_GPU_KV_BYTES) {
            Ok(Some(kv)) => SequenceCache::paged(BlockTable::new(kv.pool().clone())),
            // A failed allocation shows at the first step, which needs the pools.
            _ => {
                let windows = (0..self.cfg.num_layers).map(|i| self.window(i));
                SequenceCache::with_windows(windows.collect(), capacity)
            }
        }
    }

    /// Positions layer `index`'s cache keeps: a window layer's window, a convolution's
    /// `l_cache` (its B·x rows); `None` for every position.
    fn window(&self, index: usize) -> Option<usize> {
        match &self.cfg.recipe.short_conv {
            Some(conv) if self.cfg.convolves(index) => Some(conv.l_cache),
            _ => self.cfg.window_of(index).map(|w| w.size),
        }
    }

    /// Bytes one position takes in layer `index`'s cache: keys and values, or a
    /// convolution's B·x row (held twice, as keys and as values, so that the cache keeps one
    /// layout; it is `l_cache` + a step's rows).
    fn layer_bytes_per_token(&self, index: usize) -> usize {
        let c = &self.cfg;
        let width = if c.convolves(index) { c.hidden_size } else { c.num_kv_heads * c.head_dim };
        2 * width * self.dtype.size_in_bytes()
    }

    /// KV bytes one position of one sequence takes.
    pub fn kv_bytes_per_token(&self) -> usize {
        (0..self.cfg.num_layers).map(|i| self.layer_bytes_per_token(i)).sum()
    }

    /// KV bytes a sequence of `positions` takes at most when fed in steps of at most
    /// `chunk` tokens: every position in global layers, a window layer's window plus a
    /// step's tokens (its ring, [`SequenceCache`]); on a GPU every layer every position.
    pub fn kv_bytes(&self, positions: usize, chunk: usize) -> usize {
        if self.device.is_cuda() {
            return positions * self.kv_bytes_per_token();
        }
        (0..self.cfg.num_layers)
            .map(|i| {
                let held = match self.window(i) {
                    Some(w) => positions.min(w + chunk.max(1) - 1),
                    None => positions,
                };
                held * self.layer_bytes_per_token(i)
            })
            .sum()
    }

    /// Bytes of weights read per forward step (the memory-bandwidth bound of decoding).
    pub fn weight_bytes(&self) -> usize {
        let linears = self.layers.iter().map(|l| {
            let attention = match &l.attention {
                Attention::Separate { q, k, v } => {
                    q.weight_bytes() + k.weight_bytes() + v.weight_bytes()
                }
                Attention::Fused(qkv) => qkv.weight_bytes(),
                Attention::Conv { in_proj, kernel, .. } => {
                    in_proj.weight_bytes() + std::mem::size_of_val(kernel.as_slice())
                }
            };
            let ffn = match &l.ffn {
                Ffn::Dense { mlp: Mlp::Separate { gate, up }, down } => {
                    gate.weight_bytes() + up.weight_bytes() + down.weight_bytes()
                }
                Ffn::Dense { mlp: Mlp::Fused(gate_up), down } => {
                    gate_up.weight_bytes() + down.weight_bytes()
                }
                Ffn::Experts(moe) => moe.weight_bytes(),
            };
            attention + ffn + l.o.weight_bytes()
        });
        linears.sum::<usize>() + self.lm_head.weight_bytes()
    }

    /// One forward step over several sequences at once. Returns the logits `[B, vocab]` of
    /// each sequence's last fed token, and extends every sequence's cache.
    ///
    /// On the CPU the step runs on a thread of rayon's pool, which then splits each matmul
    /// with the pool's other threads: called from outside the pool, every matmul (4 a
    /// layer) would hand its work to the pool and sleep until it is done, two wake-ups
    /// each way (a fifth of a single stream's time on SmolLM2, in the scheduler). In a
    /// step of short matmuls (decode) the other threads stay awake for its length
    /// ([`KeepAwake`]).
    pub fn step(&self, inputs: &mut [StepInput<'_>]) -> Result<Tensor> {
        if self.device.is_cpu() && rayon::current_thread_index().is_none() {
            let tokens: usize = inputs.iter().map(|s| s.tokens.len()).sum();
            return rayon::scope(|_| {
                let _awake = (tokens <= KEEP_AWAKE_TOKENS).then(KeepAwake::start);
                self.step_here(inputs)
            });
        }
        self.step_here(inputs)
    }

    /// [`Self::step`] on the calling thread.
    fn step_here(&self, inputs: &mut [StepInput<'_>]) -> Result<Tensor> {
        let device = &self.device;
        let total: usize = inputs.iter().map(|s| s.tokens.len()).sum();
        let ids: Vec<u32> = inputs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let positions: Vec<u32> = inputs
            .iter()
            .flat_map(|s| (0..s.tokens.len()).map(|j| (s.cache.len() + j) as u32))
            .collect();
        if let Some(p) = positions.iter().find(|p| **p as usize >= self.cfg.max_positions) {
            candle_core::bail!(
                "position {p} is past the model's context of {} tokens",
                self.cfg.max_positions
            );
        }
        let plan = self.plan(inputs)?;
        let positions = Tensor::from_vec(positions, total, device)?;
        let tables = Tables {
            global: self.rope.tables(&positions)?,
            window: self.window_rope.as_ref().map(|r| r.tables(&positions)).transpose()?,
        };
        let x = match &self.embed {
            Embedding::LmHead => self.lm_head.rows(&ids)?,
            Embedding::Rows(table) => table.rows(&ids)?,
            Embedding::Table(t) => t.index_select(&Tensor::from_vec(ids, total, device)?, 0)?,
        };
        let x = match self.cfg.recipe.embed_scale {
            Some(scale) => (x * f64::from(scale))?,
            None => x,
        };
        let eps = self.cfg.rms_norm_eps as f32;
        let mut last = Vec::with_capacity(inputs.len());
        let mut offset = 0;
        for input in inputs.iter() {
            offset += input.tokens.len();
            last.push(offset as u32 - 1);
        }
        let hidden = match (&plan, &self.gains) {
            (Some((kv, plan)), _) => {
                let last = Tensor::new(last.as_slice(), device)?;
                self.paged_layers(x, kv, plan, &tables.global)?.index_select(&last, 0)?
            }
            (None, Some(gains)) => self.layers_fused(&x, inputs, &tables, gains, &last)?,
            (None, None) => {
                let last = Tensor::new(last.as_slice(), device)?;
                // The paged kernels read f32 tables; candle's rotation wants the activations'.
                let tables = tables.to_dtype(self.dtype)?;
                let x = self.layers_cpu(x, inputs, &tables)?;
                candle_nn::ops::rms_norm(&x.index_select(&last, 0)?, &self.norm, eps)?
            }
        };
        for input in inputs.iter_mut() {
            input.cache.advance(input.tokens.len());
        }
        let mut logits = self.lm_head.forward(&hidden)?.to_dtype(DType::F32)?;
        if let Some(scale) = self.cfg.recipe.logit_scale {
            logits = (logits * f64::from(1.0 / scale))?;
        }
        match self.cfg.recipe.final_softcap {
            Some(cap) => (logits / f64::from(cap))?.tanh()? * f64::from(cap),
            None => Ok(logits),
        }
    }

    /// How layer `index` forms its attention scores.
    fn scores(&self, index: usize) -> Scores<'_> {
        let recipe = &self.cfg.recipe;
        Scores {
            scale: recipe.query_scale,
            window: self.cfg.window_of(index).map(|w| w.size),
            softcap: recipe.attn_softcap,
            sinks: self.layers.get(index).and_then(|l| l.sinks.as_deref()),
        }
    }
}

/// A step's rotation tables `[T, dims / 2]`: the global layers', and the sliding-window
/// layers' where their rotation differs.
struct Tables {
    global: (Tensor, Tensor),
    window: Option<(Tensor, Tensor)>,
}

impl Tables {
    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let cast = |(c, s): &(Tensor, Tensor)| -> Result<_> {
            Ok((c.to_dtype(dtype)?, s.to_dtype(dtype)?))
        };
        Ok(Self {
            global: cast(&self.global)?,
            window: self.window.as_ref().map(cast).transpose()?,
        })
    }

    /// The cos and sin tables of layer `index`.
    fn of(&self, cfg: &DecoderConfig, index: usize) -> (&Tensor, &Tensor) {
        match (&self.window, cfg.window_of(index)) {
            (Some((cos, sin)), Some(_)) => (cos, sin),
            _ => (&self.global.0, &self.global.1),
        }
    }
}

/// The index of the largest logit of each row.
pub fn greedy(logits: &Tensor) -> Result<Vec<u32>> {
    logits.argmax(D::Minus1)?.to_vec1::<u32>()
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::GgmlDType;

    use super::*;
    use crate::transformer::Family;
    use crate::transformer::fixture;
    use crate::transformer::load::{load_gguf, load_hf_dir};

    /// Two sequences through a prompt step (chunks of 7 and 3 tokens) and three decode steps:
    /// every step's logits.
    fn run(model: &Decoder) -> Result<Vec<Vec<Vec<f32>>>> {
        let (mut a, mut b) = (model.new_cache(16), model.new_cache(16));
        let (mut ta, mut tb) = (vec![5u32, 9, 2, 77, 31, 8, 100], vec![3u32, 250, 42]);
        let mut steps = Vec::new();
        for _ in 0..4 {
            let logits = model.step(&mut [
                StepInput { tokens: &ta, cache: &mut a },
                StepInput { tokens: &tb, cache: &mut b },
            ])?;
            let next = greedy(&logits)?;
            (ta, tb) = (vec![next[0]], vec![next[1]]);
            steps.push(logits.to_vec2::<f32>()?);
        }
        Ok(steps)
    }

    #[test]
    fn the_fused_cpu_layers_give_the_bits_of_the_candle_ops()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("fleet-fused-{}", std::process::id()));
        let families = [
            Family::Qwen2,
            Family::Llama,
            Family::Qwen3,
            Family::Phi3,
            Family::Gemma2,
            Family::Gemma3,
            Family::Qwen3Moe,
            Family::Qwen2Moe,
            Family::Granite,
            Family::Olmo2,
            Family::SmolLm3,
        ];
        for family in families {
            // Dense f32 (separate projections; an F32 GGUF for Gemma, whose Hugging Face
            // folders are not read) and Q8_0 (stacked, interleaved rotation for Llama's GGUF).
            let cfg = fixture::tiny_config(family, false);
            let weights = fixture::random_weights(&cfg)?;
            let f32_gguf = dir.join("f32.gguf");
            // Gemma's and the mixtures of experts' Hugging Face folders are not read.
            let gemma = cfg.recipe.experts.is_some() || !cfg.recipe.runs_on_gpu(cfg.head_dim);
            if gemma {
                std::fs::create_dir_all(&dir)?;
                fixture::write_gguf(&f32_gguf, &cfg, &weights, GgmlDType::F32, &[])?;
            } else {
                fixture::write_hf(&dir, &cfg, &weights)?;
            }
            let dense = || {
                if gemma {
                    load_gguf(&f32_gguf, &Device::Cpu).map(|(m, _)| m)
                } else {
                    load_hf_dir(&dir, &Device::Cpu, None)
                }
            };
            let cfg = fixture::quantizable_config(family);
            let weights = fixture::random_weights(&cfg)?;
            let gguf = dir.join("model.gguf");
            fixture::write_gguf(&gguf, &cfg, &weights, GgmlDType::Q8_0, &[])?;
            let quantized = || load_gguf(&gguf, &Device::Cpu).map(|(m, _)| m);
            for (format, load) in
                [("dense", &dense as &dyn Fn() -> crate::Result<Decoder>), ("Q8_0", &quantized)]
            {
                let fused = load()?;
                assert!(fused.gains.is_some(), "{family:?} {format}: not on the fused layers");
                let mut ops = load()?;
                ops.gains = None;
                assert!(run(&fused)? == run(&ops)?, "{family:?} {format}: the logits differ");
            }
        }
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
