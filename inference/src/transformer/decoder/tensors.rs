//! The forward pass on candle's tensors: any device, any dtype; the reference the other
//! two paths give the bits of (on the CPU) or come within bf16 of (on a GPU).

use candle_core::{DType, IndexOp, Result, Tensor};

use super::layer::{Attention, Ffn, Mlp};
use super::{Decoder, Tables};
use crate::transformer::StepInput;
use crate::transformer::attention::{AttendJob, Scores, attend_cpu, attention};
use crate::transformer::config::{Activation, QkNorm};
use crate::transformer::fused;

impl Decoder {
    /// Every layer over the step's tokens `x`, each sequence's cache its own buffers.
    pub(super) fn layers_cpu(
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
            let mixed = if let Attention::Conv { in_proj, kernel, l_cache } = &layer.attention {
                short_conv(&in_proj.forward(&h)?, kernel, *l_cache, inputs, index)?
            } else {
                let (q, k, v) = match &layer.attention {
                    Attention::Separate { q, k, v } => {
                        (q.forward(&h)?, k.forward(&h)?, v.forward(&h)?)
                    }
                    Attention::Fused(qkv) => {
                        let qkv = qkv.forward(&h)?;
                        (
                            qkv.narrow(1, 0, nh * hd)?,
                            qkv.narrow(1, nh * hd, kvh * hd)?,
                            qkv.narrow(1, (nh + kvh) * hd, kvh * hd)?,
                        )
                    }
                    Attention::Conv { .. } => candle_core::bail!("a convolution has no queries"),
                };
                let q = self.heads(&q, nh, layer.q_norm.as_ref(), rotation)?;
                let k = self.heads(&k, kvh, layer.k_norm.as_ref(), rotation)?;
                let v = v.contiguous()?.reshape((total, kvh, hd))?.transpose(0, 1)?;
                attend(&q, &k, &v, inputs, index, kvh, self.scores(index))?
            };
            x = (x + branch(layer.o.forward(&mixed)?, &layer.post_attn_norm)?)?;
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
pub(super) fn append_kv(
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
pub(super) fn attend_cached(
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

/// The gated activation `act` of `gate` and `up` `[T, ff]`: the values [`fused::glu`] gives.
pub(super) fn glu_tensor(act: Activation, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
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

/// LFM2's short convolution over the step's tokens: `bcx` `[T, 3 hidden]` (B, C and x, in
/// that order) becomes `C · conv(B·x)` `[T, hidden]`, where `conv` mixes each position's B·x
/// row with the `l_cache - 1` before it through `kernel` `[hidden, l_cache]` (column 0 the
/// oldest; zeros before the first token), as llama.cpp's `ssm_conv` sums. Each sequence's
/// B·x rows go to its cache for `layer`, which keeps the last `l_cache` positions (a
/// window) for the tokens after.
fn short_conv(
    bcx: &Tensor,
    kernel: &[f32],
    l_cache: usize,
    inputs: &mut [StepInput<'_>],
    layer: usize,
) -> Result<Tensor> {
    let (t, width) = bcx.dims2()?;
    let hs = width / 3;
    let (b, c, x) = (bcx.narrow(1, 0, hs)?, bcx.narrow(1, hs, hs)?, bcx.narrow(1, 2 * hs, hs)?);
    let bx = (b * x)?.to_dtype(DType::F32)?;
    let mut out = vec![0f32; t * hs];
    let mut offset = 0;
    for input in inputs.iter_mut() {
        let n = input.tokens.len();
        let rows = bx.narrow(0, offset, n)?.unsqueeze(0)?.contiguous()?;
        input.cache.append(layer, &rows, &rows)?;
        let Some(buffers) = input.cache.buffers(layer) else {
            candle_core::bail!("the convolution's cache of layer {layer} is missing")
        };
        let ring = buffers.keys.squeeze(0)?.to_vec2::<f32>()?;
        let start = input.cache.len();
        for j in 0..n {
            let row = &mut out[(offset + j) * hs..][..hs];
            for k in 0..l_cache {
                // Position start + j - (l_cache - 1) + k, if the sequence has it.
                let Some(p) = (start + j + k + 1).checked_sub(l_cache) else { continue };
                for (i, (o, v)) in row.iter_mut().zip(&ring[p % ring.len()]).enumerate() {
                    *o += kernel[i * l_cache + k] * v;
                }
            }
        }
        offset += n;
    }
    let conv = Tensor::from_vec(out, (t, hs), bcx.device())?.to_dtype(bcx.dtype())?;
    c * conv
}
