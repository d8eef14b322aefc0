//! The CPU's forward pass on f32 buffers the step reuses, where every projection runs on our
//! kernels: the values of [`super::tensors`], without a tensor per operation.

use candle_core::{DType, Device, Result, Tensor};

use super::layer::{Attention, Ffn, Mlp};
use super::tensors::{append_kv, attend_cached};
use super::{Decoder, Gains, Tables};
use crate::transformer::StepInput;
use crate::transformer::config::QkNorm;
use crate::transformer::fused;

impl Decoder {
    /// [`Self::layers_cpu`] on f32 buffers the step reuses, where every projection runs on
    /// our kernels: per layer its matmuls, one attention and three loops ([`fused`]) instead
    /// of some thirty candle calls, each allocating its output; the same values. Returns the
    /// final norm of the tokens `last` (each sequence's last) `[last, hidden]`.
    pub(super) fn layers_fused(
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
                // `gains` is `None` for these models: they take the tensors' path.
                Attention::Conv { .. } => {
                    candle_core::bail!("a short convolution takes candle's ops")
                }
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
}
