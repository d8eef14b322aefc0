//! One batched forward pass for every supported family: RMSNorm, grouped-query attention
//! with rotary embeddings (optional QKV bias, per-head QK norm, fused QKV), SwiGLU MLP
//! (optionally fused gate/up), optionally tied embeddings.

use std::sync::OnceLock;

use candle_core::{D, DType, Device, IndexOp, Result, Tensor};

use super::StepInput;
use super::attention::{AttendJob, attend_cpu, attention};
use super::cache::SequenceCache;
use super::config::{DecoderConfig, Family};
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

#[derive(Debug)]
struct Layer {
    attn_norm: Tensor,
    attention: Attention,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    o: Linear,
    mlp_norm: Tensor,
    mlp: Mlp,
    down: Linear,
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
    /// Activations' dtype: f32 on the CPU, bf16 on a CUDA GPU.
    dtype: DType,
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
        let dtype = compute_dtype(device);
        let mut decoder = Self {
            cfg,
            device: device.clone(),
            embed,
            layers,
            norm,
            lm_head,
            rope,
            dtype,
            paged: OnceLock::new(),
        };
        if dtype != DType::F32 {
            decoder.cast_small_tensors()?;
        }
        if device.is_cuda() {
            decoder.stack_projections()?;
        }
        Ok(decoder)
    }

    /// On a GPU every launch counts: Q, K and V become one matmul, and gate and up another.
    fn stack_projections(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            if let Attention::Separate { q, k, v } = &layer.attention
                && let Some(qkv) = Linear::stack(&[q, k, v])?
            {
                layer.attention = Attention::Fused(qkv);
            }
            if let Mlp::Separate { gate, up } = &layer.mlp
                && let Some(gate_up) = Linear::stack(&[gate, up])?
            {
                layer.mlp = Mlp::Fused(gate_up);
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
            cast(&mut layer.attn_norm)?;
            cast(&mut layer.mlp_norm)?;
            for t in [&mut layer.q_norm, &mut layer.k_norm].into_iter().flatten() {
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
            _ => SequenceCache::new(self.cfg.num_layers, capacity),
        }
    }

    /// KV bytes one position of one sequence takes.
    pub fn kv_bytes_per_token(&self) -> usize {
        let c = &self.cfg;
        c.num_layers * 2 * c.num_kv_heads * c.head_dim * self.dtype.size_in_bytes()
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
            let mlp = match &l.mlp {
                Mlp::Separate { gate, up } => gate.weight_bytes() + up.weight_bytes(),
                Mlp::Fused(gate_up) => gate_up.weight_bytes(),
            };
            attention + mlp + l.o.weight_bytes() + l.down.weight_bytes()
        });
        linears.sum::<usize>() + self.lm_head.weight_bytes()
    }

    /// One forward step over several sequences at once. Returns the logits `[B, vocab]` of
    /// each sequence's last fed token, and extends every sequence's cache.
    ///
    /// On the CPU the step runs on a thread of rayon's pool, which then splits each matmul
    /// with the pool's other threads: called from outside the pool, every matmul (4 a
    /// layer) would hand its work to the pool and sleep until it is done, two wake-ups
    /// each way (a fifth of a single stream's time on SmolLM2, in the scheduler).
    pub fn step(&self, inputs: &mut [StepInput<'_>]) -> Result<Tensor> {
        if self.device.is_cpu() && rayon::current_thread_index().is_none() {
            return rayon::scope(|_| self.step_here(inputs));
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
        let tables = self.rope.tables(&Tensor::from_vec(positions, total, device)?)?;
        let x = match &self.embed {
            Embedding::LmHead => self.lm_head.rows(&ids)?,
            Embedding::Rows(table) => table.rows(&ids)?,
            Embedding::Table(t) => t.index_select(&Tensor::from_vec(ids, total, device)?, 0)?,
        };
        let eps = self.cfg.rms_norm_eps as f32;
        let mut last = Vec::with_capacity(inputs.len());
        let mut offset = 0;
        for input in inputs.iter() {
            offset += input.tokens.len();
            last.push(offset as u32 - 1);
        }
        let last = Tensor::new(last.as_slice(), device)?;
        let hidden = match &plan {
            Some((kv, plan)) => self.paged_layers(x, kv, plan, &tables)?.index_select(&last, 0)?,
            None => {
                // The paged kernels read f32 tables; candle's rotation wants the activations'.
                let (cos, sin) = (tables.0.to_dtype(self.dtype)?, tables.1.to_dtype(self.dtype)?);
                let x = self.layers_cpu(x, inputs, &cos, &sin)?;
                candle_nn::ops::rms_norm(&x.index_select(&last, 0)?, &self.norm, eps)?
            }
        };
        for input in inputs.iter_mut() {
            input.cache.advance(input.tokens.len());
        }
        self.lm_head.forward(&hidden)?.to_dtype(DType::F32)
    }

    /// Every layer over the step's tokens `x`, each sequence's cache its own buffers.
    fn layers_cpu(
        &self,
        mut x: Tensor,
        inputs: &mut [StepInput<'_>],
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps as f32;
        let total = x.dim(0)?;
        let (nh, kvh, hd) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim);
        for (index, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
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
            let q = self.heads(&q, nh, layer.q_norm.as_ref(), cos, sin)?;
            let k = self.heads(&k, kvh, layer.k_norm.as_ref(), cos, sin)?;
            let v = v.contiguous()?.reshape((total, kvh, hd))?.transpose(0, 1)?;
            let attn = attend(&q, &k, &v, inputs, index, kvh)?;
            x = (x + layer.o.forward(&attn)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.mlp_norm, eps)?;
            let hidden = match &layer.mlp {
                Mlp::Separate { gate, up } => {
                    (candle_nn::ops::silu(&gate.forward(&h)?)? * up.forward(&h)?)?
                }
                Mlp::Fused(gate_up) => {
                    let gu = gate_up.forward(&h)?;
                    let inter = self.cfg.intermediate_size;
                    (candle_nn::ops::silu(&gu.narrow(1, 0, inter)?)?
                        * gu.narrow(1, inter, inter)?)?
                }
            };
            x = (x + layer.down.forward(&hidden)?)?;
        }
        Ok(x)
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
        let mut h = candle_nn::ops::rms_norm(&x, &first.attn_norm, eps)?;
        for (index, layer) in self.layers.iter().enumerate() {
            let qkv = self.projected_qkv(layer, &h)?;
            let q = kv.rope_write(index, &qkv, (cos, sin), self.rope.rotation(), plan)?;
            let attn = kv.attend(index, &q, plan)?;
            let (mid, h_mlp) =
                crate::cuda::add_rms_norm(&x, &layer.o.forward(&attn)?, &layer.mlp_norm, eps)?;
            let gate_up = match &layer.mlp {
                Mlp::Fused(gate_up) => gate_up.forward(&h_mlp)?,
                Mlp::Separate { gate, up } => {
                    Tensor::cat(&[gate.forward(&h_mlp)?, up.forward(&h_mlp)?], 1)?
                }
            };
            let hidden = crate::cuda::silu_mul(&gate_up)?;
            // The next layer's attention norm, or after the last layer the final norm.
            let next = self.layers.get(index + 1).map_or(&self.norm, |l| &l.attn_norm);
            (x, h) = crate::cuda::add_rms_norm(&mid, &layer.down.forward(&hidden)?, next, eps)?;
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

    /// `[T, heads * head_dim]` → `[heads, T, head_dim]`, per-head norm'd (Qwen3) and rotated
    /// by each token's own position.
    fn heads(
        &self,
        x: &Tensor,
        heads: usize,
        norm: Option<&Tensor>,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let (t, hd) = (x.dim(0)?, self.cfg.head_dim);
        let mut x = x.contiguous()?.reshape((t, heads, hd))?;
        if let Some(w) = norm {
            x = candle_nn::ops::rms_norm(&x, w, self.cfg.rms_norm_eps as f32)?;
        }
        let x = x.unsqueeze(0)?.transpose(1, 2)?.contiguous()?;
        self.rope.apply(&x, cos, sin)?.i(0)
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
    let (q_norm, k_norm) = if cfg.qk_norm() {
        (Some(src.dense(Part::QNorm(i), false)?), Some(src.dense(Part::KNorm(i), false)?))
    } else {
        (None, None)
    };
    let mlp = if cfg.family == Family::Phi3 {
        let gate_up = src.linear(Part::GateUp(i), false)?;
        expect_out(&gate_up, 2 * cfg.intermediate_size, "the fused gate/up projection")?;
        Mlp::Fused(gate_up)
    } else {
        match src.projections(&[Part::Gate(i), Part::Up(i)], false)? {
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
        }
    };
    let attn_norm = src.dense(Part::AttnNorm(i), false)?;
    expect_dims(&attn_norm, &[h], "a norm")?;
    Ok(Layer {
        attn_norm,
        attention,
        q_norm,
        k_norm,
        o: src.linear(Part::O(i), false)?,
        mlp_norm: src.dense(Part::MlpNorm(i), false)?,
        mlp,
        down: src.linear(Part::Down(i), false)?,
    })
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
) -> Result<Tensor> {
    let mut views = Vec::with_capacity(inputs.len());
    let mut jobs = Vec::with_capacity(inputs.len());
    let mut offset = 0;
    for input in inputs.iter_mut() {
        let n = input.tokens.len();
        let pos = input.cache.len();
        let ki = k.narrow(1, offset, n)?.contiguous()?;
        let vi = v.narrow(1, offset, n)?.contiguous()?;
        views.push(input.cache.append(layer, &ki, &vi)?);
        if let Some((keys, values)) = input.cache.buffers(layer) {
            jobs.push(AttendJob {
                token: offset,
                n,
                pos,
                keys: keys.clone(),
                values: values.clone(),
            });
        }
        offset += n;
    }
    if jobs.len() == inputs.len()
        && let Some(rows) = attend_cpu(q, &jobs, kv_heads)?
    {
        let width = q.dim(0)? * q.dim(2)?;
        return Tensor::from_vec(rows, (offset, width), q.device());
    }
    // Not on the CPU: matmuls over each sequence's cached views.
    let mut outputs = Vec::with_capacity(inputs.len());
    let mut offset = 0;
    for ((keys, values), input) in views.iter().zip(inputs.iter()) {
        let n = input.tokens.len();
        outputs.push(attention(&q.narrow(1, offset, n)?, keys, values, input.cache.len())?);
        offset += n;
    }
    Tensor::cat(&outputs, 0)
}

/// The index of the largest logit of each row.
pub fn greedy(logits: &Tensor) -> Result<Vec<u32>> {
    logits.argmax(D::Minus1)?.to_vec1::<u32>()
}
