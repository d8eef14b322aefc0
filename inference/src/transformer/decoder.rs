//! One batched forward pass for every supported family: RMSNorm, grouped-query attention
//! with rotary embeddings (optional QKV bias, QK norm per head or over whole rows, fused
//! QKV), SwiGLU MLP (optionally fused gate/up), optionally tied embeddings; and what a
//! family's [`Recipe`] adds: norms after attention and MLP (with or without those before),
//! GELU, scaled embeddings, residual branches and logits, sliding-window layers with their
//! own rotation, layers without rotation, soft-capped scores and logits.
//!
//! [`Recipe`]: super::config::Recipe

use std::sync::OnceLock;

use super::awake::{KEEP_AWAKE_TOKENS, KeepAwake};

use candle_core::{D, DType, Device, IndexOp, Result, Tensor};

use super::StepInput;
use super::attention::{AttendJob, Scores, attend_cpu, attention};
use super::cache::SequenceCache;
use super::config::{Activation, DecoderConfig, Family, QkNorm};
use super::experts::MixtureOfExperts;
use super::fused;
use super::linear::{Linear, compute_dtype};
use super::paged::{BlockTable, StepPlan};
use super::rope::Rope;
use super::weights::{Part, Projections, WeightSource};
use crate::cuda::{DevicePlan, PagedKv};

#[derive(Debug)]
enum Attention {
    Separate { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

#[derive(Debug)]
enum Mlp {
    Separate { gate: Linear, up: Linear },
    Fused(Linear),
}

/// What follows attention: one MLP, or a mixture of experts.
#[derive(Debug)]
enum Ffn {
    Dense {
        mlp: Mlp,
        down: Linear,
    },
    /// Runs on the CPU only (a GPU refuses these models at load).
    Experts(Box<MixtureOfExperts>),
}

#[derive(Debug)]
struct Layer {
    /// `None` where the family norms after attention only (OLMo 2).
    attn_norm: Option<Tensor>,
    attention: Attention,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    o: Linear,
    /// Each head's sink logit (gpt-oss).
    sinks: Option<Vec<f32>>,
    post_attn_norm: Option<Tensor>,
    mlp_norm: Option<Tensor>,
    ffn: Ffn,
    post_mlp_norm: Option<Tensor>,
}

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
        let norm = source.dense(Part::Norm, false)?;
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
                let windows =
                    (0..self.cfg.num_layers).map(|i| self.cfg.window_of(i).map(|w| w.size));
                SequenceCache::with_windows(windows.collect(), capacity)
            }
        }
    }

    /// KV bytes one position of one sequence takes.
    pub fn kv_bytes_per_token(&self) -> usize {
        let c = &self.cfg;
        c.num_layers * 2 * c.num_kv_heads * c.head_dim * self.dtype.size_in_bytes()
    }

    /// KV bytes a sequence of `positions` takes at most when fed in steps of at most
    /// `chunk` tokens: every position in global layers, a window layer's window plus a
    /// step's tokens (its ring, [`SequenceCache`]); on a GPU every layer every position.
    pub fn kv_bytes(&self, positions: usize, chunk: usize) -> usize {
        let c = &self.cfg;
        let per_layer = 2 * c.num_kv_heads * c.head_dim * self.dtype.size_in_bytes();
        if self.device.is_cuda() {
            return positions * self.kv_bytes_per_token();
        }
        (0..c.num_layers)
            .map(|i| match c.window_of(i) {
                Some(w) => positions.min(w.size + chunk.max(1) - 1) * per_layer,
                None => positions * per_layer,
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

    /// Every layer over the step's tokens `x`, each sequence's cache its own buffers.
    fn layers_cpu(
        &self,
        mut x: Tensor,
        inputs: &mut [StepInput<'_>],
        tables: &Tables,
    ) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps as f32;
        let total = x.dim(0)?;
        let (nh, kvh, hd) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim);
        let norm = |x: &Tensor, norm: &Option<Tensor>| match norm {
            Some(w) => candle_nn::ops::rms_norm(x, w, eps),
            None => Ok(x.clone()),
        };
        // A branch's output, post-normed and scaled where the family does.
        let branch = |out: Tensor, post: &Option<Tensor>| -> Result<Tensor> {
            let out = norm(&out, post)?;
            match self.cfg.recipe.residual_scale {
                Some(s) => out * f64::from(s),
                None => Ok(out),
            }
        };
        for (index, layer) in self.layers.iter().enumerate() {
            let rotation = self.cfg.rotates(index).then(|| tables.of(&self.cfg, index));
            let h = norm(&x, &layer.attn_norm)?;
            let (q, k, v) = match &layer.attention {
                Attention::Separate { q, k, v } => (q.forward(&h)?, k.forward(&h)?, v.forward(&h)?),
                Attention::Fused(qkv) => {
                    let qkv = qkv.forward(&h)?;
                    (
                        qkv.narrow(1, 0, nh * hd)?,
                        qkv.narrow(1, nh * hd, kvh * hd)?,
                        qkv.narrow(1, (nh + kvh) * hd, kvh * hd)?,
                    )
                }
            };
            let q = self.heads(&q, nh, layer.q_norm.as_ref(), rotation)?;
            let k = self.heads(&k, kvh, layer.k_norm.as_ref(), rotation)?;
            let v = v.contiguous()?.reshape((total, kvh, hd))?.transpose(0, 1)?;
            let attn = attend(&q, &k, &v, inputs, index, kvh, self.scores(index))?;
            x = (x + branch(layer.o.forward(&attn)?, &layer.post_attn_norm)?)?;
            let h = norm(&x, &layer.mlp_norm)?;
            let act = self.cfg.recipe.activation;
            let out = match &layer.ffn {
                Ffn::Dense { mlp, down } => {
                    let hidden = match mlp {
                        Mlp::Separate { gate, up } => {
                            glu_tensor(act, &gate.forward(&h)?, &up.forward(&h)?)?
                        }
                        Mlp::Fused(gate_up) => {
                            let gu = gate_up.forward(&h)?;
                            let inter = self.cfg.intermediate_size;
                            glu_tensor(act, &gu.narrow(1, 0, inter)?, &gu.narrow(1, inter, inter)?)?
                        }
                    };
                    down.forward(&hidden)?
                }
                Ffn::Experts(moe) => {
                    let rows: Vec<f32> = h.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                    let mut out = vec![0f32; rows.len()];
                    moe.forward(&rows, &mut out)?;
                    Tensor::from_vec(out, h.dims(), h.device())?.to_dtype(h.dtype())?
                }
            };
            x = (x + branch(out, &layer.post_mlp_norm)?)?;
        }
        Ok(x)
    }

    /// [`Self::layers_cpu`] on f32 buffers the step reuses, where every projection runs on
    /// our kernels: per layer its matmuls, one attention and three loops ([`fused`]) instead
    /// of some thirty candle calls, each allocating its output; the same values. Returns the
    /// final norm of the tokens `last` (each sequence's last) `[last, hidden]`.
    fn layers_fused(
        &self,
        x: &Tensor,
        inputs: &mut [StepInput<'_>],
        tables: &Tables,
        gains: &Gains,
        last: &[u32],
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let eps = c.rms_norm_eps as f32;
        let (t, hs) = x.dims2()?;
        let (nh, kvh, hd, inter) = (c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size);
        let mut x: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let values =
            |t: &Tensor| -> Result<Vec<f32>> { t.flatten_all()?.to_dtype(DType::F32)?.to_vec1() };
        let global = (values(&tables.global.0)?, values(&tables.global.1)?);
        let window = match &tables.window {
            Some((cos, sin)) => Some((values(cos)?, values(sin)?)),
            None => None,
        };
        let widths = [nh * hd, kvh * hd, kvh * hd];
        let mut normed = vec![0f32; t * hs];
        let mut qkv = vec![0f32; t * (nh + 2 * kvh) * hd];
        let mut out = vec![0f32; t * hs];
        // The attention's and the MLP's outputs norm'd (Gemma's post-norms).
        let mut post = if c.recipe.post_norms { vec![0f32; t * hs] } else { Vec::new() };
        let mut gate_up = vec![0f32; t * 2 * inter];
        let mut hidden = vec![0f32; t * inter];
        if let Some(first) = gains.layers.first() {
            fused::norm_or_copy(&x, first.attn.as_deref(), eps, &mut normed);
        }
        for (index, (layer, g)) in self.layers.iter().zip(&gains.layers).enumerate() {
            let (cos, sin) = match (&window, c.window_of(index)) {
                (Some(window), Some(_)) => window,
                _ => &global,
            };
            let parts = match &layer.attention {
                Attention::Fused(m) => {
                    m.forward_into(&normed, &mut qkv)?;
                    [0, 1, 2].map(|i| fused::Part::of(&qkv, &widths, i))
                }
                Attention::Separate { q, k, v } => {
                    let (qs, rest) = qkv.split_at_mut(t * widths[0]);
                    let (ks, vs) = rest.split_at_mut(t * widths[1]);
                    q.forward_into(&normed, qs)?;
                    k.forward_into(&normed, ks)?;
                    v.forward_into(&normed, vs)?;
                    let whole = fused::Part::whole;
                    [whole(qs, widths[0]), whole(ks, widths[1]), whole(vs, widths[2])]
                }
            };
            let heads = fused::Heads {
                heads: nh,
                kv_heads: kvh,
                head_dim: hd,
                q_norm: g.q.as_deref(),
                k_norm: g.k.as_deref(),
                whole_rows: c.qk_norm() == QkNorm::Whole,
                eps,
                rope: match c.window_of(index) {
                    _ if !c.rotates(index) => None,
                    Some(w) => Some(&w.rope),
                    None => Some(&c.rope),
                },
            };
            let [q, k, v] = heads.split(parts, t, cos, sin);
            let q = Tensor::from_vec(q, (nh, t, hd), &Device::Cpu)?;
            let k = Tensor::from_vec(k, (kvh, t, hd), &Device::Cpu)?;
            let v = Tensor::from_vec(v, (kvh, t, hd), &Device::Cpu)?;
            append_kv(&k, &v, inputs, index)?;
            let Some(attn) = attend_cached(&q, inputs, index, kvh, self.scores(index))? else {
                candle_core::bail!("a sequence's cache is not in f32 CPU buffers")
            };
            layer.o.forward_into(&attn, &mut out)?;
            // A branch's output, post-normed and scaled where the family does.
            let branch =
                |out: &'_ mut Vec<f32>, norm: &Option<Vec<f32>>, post: &'_ mut Vec<f32>| {
                    let added = match norm {
                        Some(w) => {
                            fused::rms_norm(out, w, eps, post);
                            post
                        }
                        None => out,
                    };
                    if let Some(s) = c.recipe.residual_scale {
                        added.iter_mut().for_each(|v| *v *= s);
                    }
                };
            branch(&mut out, &g.post_attn, &mut post);
            let added = if g.post_attn.is_some() { &post } else { &out };
            fused::add_norm(&mut x, added, g.mlp.as_deref(), eps, &mut normed);
            match &layer.ffn {
                Ffn::Experts(moe) => moe.forward(&normed, &mut out)?,
                Ffn::Dense { mlp, down } => {
                    let (gate, up) = match mlp {
                        Mlp::Fused(m) => {
                            m.forward_into(&normed, &mut gate_up)?;
                            let parts = [inter, inter];
                            let part = |i| fused::Part::of(&gate_up, &parts, i);
                            (part(0), part(1))
                        }
                        Mlp::Separate { gate, up } => {
                            let (gs, us) = gate_up.split_at_mut(t * inter);
                            gate.forward_into(&normed, gs)?;
                            up.forward_into(&normed, us)?;
                            (fused::Part::whole(gs, inter), fused::Part::whole(us, inter))
                        }
                    };
                    fused::glu(c.recipe.activation, gate, up, &mut hidden);
                    down.forward_into(&hidden, &mut out)?;
                }
            }
            branch(&mut out, &g.post_mlp, &mut post);
            let added = if g.post_mlp.is_some() { &post } else { &out };
            match gains.layers.get(index + 1) {
                Some(next) => {
                    fused::add_norm(&mut x, added, next.attn.as_deref(), eps, &mut normed)
                }
                None => x.iter_mut().zip(added).for_each(|(x, y)| *x += y),
            }
        }
        let mut rows = vec![0f32; last.len() * hs];
        for (row, &i) in rows.chunks_exact_mut(hs).zip(last) {
            fused::rms_norm(&x[i as usize * hs..][..hs], &gains.norm, eps, row);
        }
        Tensor::from_vec(rows, (last.len(), hs), &Device::Cpu)
    }

    /// Every layer over the step's tokens `x` on a GPU, keys and values in the shared pools:
    /// per layer four matmuls and five of our kernels (rotate and write, attend, add and norm
    /// twice, SiLU and product). Returns the final norm of every token `[T, hidden]`.
    fn paged_layers(
        &self,
        mut x: Tensor,
        kv: &PagedKv,
        plan: &DevicePlan,
        (cos, sin): &(Tensor, Tensor),
    ) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps as f32;
        let Some(first) = self.layers.first() else {
            return candle_nn::ops::rms_norm(&x, &self.norm, eps);
        };
        let mut h = candle_nn::ops::rms_norm(&x, pre_norm(&first.attn_norm)?, eps)?;
        for (index, layer) in self.layers.iter().enumerate() {
            let qkv = self.projected_qkv(layer, &h)?;
            let q = kv.rope_write(index, &qkv, (cos, sin), self.rope.rotation(), plan)?;
            let attn = kv.attend(index, &q, plan)?;
            let (mid, h_mlp) = crate::cuda::add_rms_norm(
                &x,
                &layer.o.forward(&attn)?,
                pre_norm(&layer.mlp_norm)?,
                eps,
            )?;
            let Ffn::Dense { mlp, down } = &layer.ffn else {
                candle_core::bail!("a mixture of experts runs on the CPU only")
            };
            let gate_up = match mlp {
                Mlp::Fused(gate_up) => gate_up.forward(&h_mlp)?,
                Mlp::Separate { gate, up } => {
                    Tensor::cat(&[gate.forward(&h_mlp)?, up.forward(&h_mlp)?], 1)?
                }
            };
            let hidden = crate::cuda::silu_mul(&gate_up)?;
            // The next layer's attention norm, or after the last layer the final norm.
            let next = match self.layers.get(index + 1) {
                Some(l) => pre_norm(&l.attn_norm)?,
                None => &self.norm,
            };
            (x, h) = crate::cuda::add_rms_norm(&mid, &down.forward(&hidden)?, next, eps)?;
        }
        Ok(h)
    }

    /// On a GPU, takes the blocks this step's tokens need and uploads the step's plan.
    fn plan(&self, inputs: &mut [StepInput<'_>]) -> Result<Option<(&PagedKv, DevicePlan)>> {
        let Some(kv) = self.paged.get() else { return Ok(None) };
        for input in inputs.iter_mut() {
            let needed = input.cache.len() + input.tokens.len();
            let Some(blocks) = input.cache.blocks_mut() else {
                candle_core::bail!("a sequence's cache is not in the GPU's KV pools")
            };
            blocks.reserve(needed).map_err(candle_core::Error::wrap)?;
        }
        let seqs =
            inputs.iter().filter_map(|s| Some((s.cache.blocks()?, s.cache.len(), s.tokens.len())));
        Ok(Some((kv, kv.upload(&StepPlan::new(seqs, kv.tile_rows()))?)))
    }

    /// The step's queries, keys and values side by side `[T, (heads + 2 kv_heads) * head_dim]`
    /// (what the paged kernels read), queries and keys per-head norm'd where the family does
    /// (Qwen3).
    fn projected_qkv(&self, layer: &Layer, h: &Tensor) -> Result<Tensor> {
        let qkv = match &layer.attention {
            Attention::Fused(qkv) => qkv.forward(h)?,
            Attention::Separate { q, k, v } => {
                Tensor::cat(&[q.forward(h)?, k.forward(h)?, v.forward(h)?], 1)?
            }
        };
        let (Some(q_norm), Some(k_norm)) = (&layer.q_norm, &layer.k_norm) else {
            return Ok(qkv);
        };
        let (t, c) = (qkv.dim(0)?, &self.cfg);
        let (nh, kvh, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let eps = c.rms_norm_eps as f32;
        let norm = |from: usize, heads: usize, w: &Tensor| -> Result<Tensor> {
            let x = qkv.narrow(1, from, heads * hd)?.contiguous()?.reshape((t, heads, hd))?;
            candle_nn::ops::rms_norm(&x, w, eps)?.reshape((t, heads * hd))
        };
        let q = norm(0, nh, q_norm)?;
        let k = norm(nh * hd, kvh, k_norm)?;
        let v = qkv.narrow(1, (nh + kvh) * hd, kvh * hd)?;
        Tensor::cat(&[&q, &k, &v], 1)?.contiguous()
    }

    /// `[T, heads * head_dim]` → `[heads, T, head_dim]`, norm'd per head (Qwen3) or over
    /// whole rows (OLMo 2), and rotated by each token's own position where `rotation` (cos,
    /// sin) is given.
    fn heads(
        &self,
        x: &Tensor,
        heads: usize,
        norm: Option<&Tensor>,
        rotation: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        let (t, hd) = (x.dim(0)?, self.cfg.head_dim);
        let eps = self.cfg.rms_norm_eps as f32;
        let mut x = x.contiguous()?;
        if let Some(w) = norm.filter(|_| self.cfg.qk_norm() == QkNorm::Whole) {
            x = candle_nn::ops::rms_norm(&x, w, eps)?;
        }
        let mut x = x.reshape((t, heads, hd))?;
        if let Some(w) = norm.filter(|_| self.cfg.qk_norm() == QkNorm::PerHead) {
            x = candle_nn::ops::rms_norm(&x, w, eps)?;
        }
        let x = x.unsqueeze(0)?.transpose(1, 2)?.contiguous()?;
        match rotation {
            Some((cos, sin)) => self.rope.apply(&x, cos, sin)?.i(0),
            None => x.i(0),
        }
    }
}

fn load_layer(cfg: &DecoderConfig, src: &mut impl WeightSource, i: usize) -> Result<Layer> {
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    let (q_out, kv_out) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let bias = cfg.qkv_bias;
    let attention = if cfg.family == Family::Phi3 {
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
        o: src.linear(Part::O(i), cfg.recipe.out_bias)?,
        sinks,
        post_attn_norm,
        mlp_norm: pre_norm(src, Part::mlp_norm(cfg.family, i))?,
        ffn,
        post_mlp_norm,
    })
}

/// A layer's norm before attention or MLP, which the GPU's layers have (their recipe is
/// Llama's: [`Recipe::runs_on_gpu`](super::config::Recipe::runs_on_gpu)).
fn pre_norm(norm: &Option<Tensor>) -> Result<&Tensor> {
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

/// Appends this step's keys and values `[kv_heads, T, hd]` to each sequence's cache, then
/// attends: on the CPU every token by the same loop ([`attend_cpu`]), elsewhere with matmuls
/// per sequence. Returns `[T, heads * hd]`.
fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    inputs: &mut [StepInput<'_>],
    layer: usize,
    kv_heads: usize,
    how: Scores<'_>,
) -> Result<Tensor> {
    let views = append_kv(k, v, inputs, layer)?;
    if let Some(rows) = attend_cached(q, inputs, layer, kv_heads, how)? {
        let (t, width) = (q.dim(1)?, q.dim(0)? * q.dim(2)?);
        return Tensor::from_vec(rows, (t, width), q.device());
    }
    // Not on the CPU: matmuls over each sequence's cached views.
    let mut outputs = Vec::with_capacity(inputs.len());
    let mut offset = 0;
    for (view, input) in views.iter().zip(inputs.iter()) {
        let Some((keys, values)) = view else {
            candle_core::bail!("a sliding-window cache whose ring has wrapped is read on the CPU")
        };
        let n = input.tokens.len();
        let q = q.narrow(1, offset, n)?;
        outputs.push(attention(&q, keys, values, input.cache.len(), how)?);
        offset += n;
    }
    Tensor::cat(&outputs, 0)
}

/// Writes this step's keys and values `[kv_heads, T, hd]` of `layer` into each sequence's
/// cache; returns views of each one's keys and values so far.
fn append_kv(
    k: &Tensor,
    v: &Tensor,
    inputs: &mut [StepInput<'_>],
    layer: usize,
) -> Result<Vec<Option<(Tensor, Tensor)>>> {
    let mut views = Vec::with_capacity(inputs.len());
    let mut offset = 0;
    for input in inputs.iter_mut() {
        let n = input.tokens.len();
        let ki = k.narrow(1, offset, n)?.contiguous()?;
        let vi = v.narrow(1, offset, n)?.contiguous()?;
        views.push(input.cache.append(layer, &ki, &vi)?);
        offset += n;
    }
    Ok(views)
}

/// Attention of the step's queries `q` `[heads, T, hd]` over the caches of `layer` (this
/// step's keys and values written), by [`attend_cpu`]: `[T, heads * hd]` rows, or `None`
/// where the caches are not f32 CPU buffers.
fn attend_cached(
    q: &Tensor,
    inputs: &[StepInput<'_>],
    layer: usize,
    kv_heads: usize,
    how: Scores<'_>,
) -> Result<Option<Vec<f32>>> {
    let mut jobs = Vec::with_capacity(inputs.len());
    let mut offset = 0;
    for input in inputs {
        let n = input.tokens.len();
        let Some(b) = input.cache.buffers(layer) else { return Ok(None) };
        jobs.push(AttendJob {
            token: offset,
            n,
            pos: input.cache.len(),
            keys: b.keys.clone(),
            values: b.values.clone(),
        });
        offset += n;
    }
    attend_cpu(q, &jobs, kv_heads, how)
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

/// The gated activation `act` of `gate` and `up` `[T, ff]`: the values [`fused::glu`] gives.
fn glu_tensor(act: Activation, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    match act {
        Activation::Silu => candle_nn::ops::silu(gate)? * up,
        Activation::GeluTanh => fused::gelu_tensor(gate)? * up,
        Activation::SwiGluOai => {
            let (rows, ff) = gate.dims2()?;
            let values = |t: &Tensor| -> Result<Vec<f32>> {
                t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
            };
            let (g, u) = (values(gate)?, values(up)?);
            let mut out = vec![0f32; rows * ff];
            fused::swiglu_oai_mul(fused::Part::whole(&g, ff), fused::Part::whole(&u, ff), &mut out);
            Tensor::from_vec(out, (rows, ff), gate.device())?.to_dtype(gate.dtype())
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
