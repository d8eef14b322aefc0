//! The forward pass on a CUDA GPU: keys and values in blocks of the decoder's shared pools,
//! every sequence of a step in one launch per kernel and layer.

use candle_core::{Result, Tensor};

use super::Decoder;
use super::layer::{Attention, Ffn, Layer, Mlp, pre_norm};
use crate::cuda::{DevicePlan, PagedKv};
use crate::transformer::StepInput;
use crate::transformer::paged::StepPlan;

impl Decoder {
    /// Every layer over the step's tokens `x` on a GPU, keys and values in the shared pools:
    /// per layer four matmuls and five of our kernels (rotate and write, attend, add and norm
    /// twice, SiLU and product). Returns the final norm of every token `[T, hidden]`.
    pub(super) fn paged_layers(
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
    pub(super) fn plan(
        &self,
        inputs: &mut [StepInput<'_>],
    ) -> Result<Option<(&PagedKv, DevicePlan)>> {
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
            Attention::Conv { .. } => {
                candle_core::bail!("a short convolution runs on the CPU only")
            }
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
}
