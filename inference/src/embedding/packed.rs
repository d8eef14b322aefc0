//! BERT's pass on the CPU with no padding: the sequences of a pass back to back as one
//! `[tokens, H]` matrix, every linear layer once over real tokens only, attention a loop
//! within each sequence.
//!
//! Every stage is a loop over f32 buffers the calling thread keeps from pass to pass (the
//! model's batcher thread): the projections write into them ([`Proj::forward_into`]), the
//! residual add runs with the LayerNorm after it, GELU in place. Built from candle ops,
//! each of a pass's ~50 steps allocated a fresh tensor of up to 12 MB, and the page faults
//! and zeroing of that memory took a tenth of the pass.
//!
//! Row by row, each row's arithmetic is fixed (the sums of a LayerNorm in 16 lanes, then
//! in order): a text's vector does not depend on the texts beside it.

use std::cell::Cell;

use candle_core::Tensor;
use rayon::prelude::*;

use super::bert::{Activation, Bert, Norm};
use crate::transformer::attention::{Logits, attend_one};

/// Rows per rayon task of the row-wise stages (LayerNorm, attention).
const ROWS_PER_TASK: usize = 16;

/// A pass's working memory.
#[derive(Default)]
struct Buffers {
    /// The hidden states `[N, H]`, updated layer by layer.
    x: Vec<f32>,
    /// Query, key and value of each row `[N, 3H]`.
    qkv: Vec<f32>,
    /// Attention's output `[N, H]`.
    attn: Vec<f32>,
    /// A projection's output before its residual add `[N, H]`.
    tmp: Vec<f32>,
    /// The MLP's inner activations `[N, I]`.
    up: Vec<f32>,
}

thread_local! {
    static BUFFERS: Cell<Buffers> = const {
        Cell::new(Buffers { x: Vec::new(), qkv: Vec::new(), attn: Vec::new(), tmp: Vec::new(), up: Vec::new() })
    };
}

/// The first `len` values of `v`, grown (never shrunk) to hold them. Every stage writes
/// all of its output, so old contents never show.
fn sized(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

impl Bert {
    /// Runs `seqs` (token ids, each at most `max_position_embeddings` long, all segment 0)
    /// packed back to back and hands `read` their last hidden states: `[Σ len, H]`
    /// row-major, sequence after sequence. CPU and f32 only; `None` on other devices (use
    /// [`Bert::forward`]).
    pub fn forward_packed<R>(
        &self,
        seqs: &[&[u32]],
        read: impl FnOnce(&[f32]) -> R,
    ) -> candle_core::Result<Option<R>> {
        if !self.word.device().is_cpu() || self.word.dtype() != candle_core::DType::F32 {
            return Ok(None);
        }
        let (h, inter) = (self.cfg.hidden_size, self.cfg.intermediate_size);
        let mut spans = Vec::with_capacity(seqs.len());
        let (mut ids, mut positions) = (Vec::new(), Vec::new());
        for seq in seqs {
            if seq.len() > self.cfg.max_position_embeddings {
                candle_core::bail!(
                    "a sequence of {} tokens is longer than the model's {} positions",
                    seq.len(),
                    self.cfg.max_position_embeddings
                );
            }
            spans.push((ids.len(), seq.len()));
            ids.extend_from_slice(seq);
            positions.extend(0..seq.len() as u32);
        }
        let n = ids.len();
        // Taken, not borrowed: rayon may run other work on this thread while a stage waits.
        let mut buffers = BUFFERS.take();
        let result = (|| {
            let Buffers { x, qkv, attn, tmp, up } = &mut buffers;
            let (x, qkv) = (sized(x, n * h), sized(qkv, n * 3 * h));
            let (attn, tmp, up) = (sized(attn, n * h), sized(tmp, n * h), sized(up, n * inter));
            self.embed(ids, positions, x)?;
            for layer in &self.layers {
                layer.qkv.forward_into(x, qkv)?;
                self.attention_packed(qkv, &spans, attn);
                layer.attn_out.forward_into(attn, tmp)?;
                add_norm(x, tmp, &layer.attn_norm);
                layer.up.forward_into(x, up)?;
                activate(self.activation, up);
                layer.down.forward_into(up, tmp)?;
                add_norm(x, tmp, &layer.out_norm);
            }
            Ok(read(x))
        })();
        BUFFERS.set(buffers);
        result.map(Some)
    }

    /// `x` = LayerNorm(word + position + token type 0) of each token.
    fn embed(&self, ids: Vec<u32>, positions: Vec<u32>, x: &mut [f32]) -> candle_core::Result<()> {
        let n = ids.len();
        let device = self.word.device();
        let ids = Tensor::from_vec(ids, n, device)?;
        let positions = Tensor::from_vec(positions, n, device)?;
        let sum = (self.word.index_select(&ids, 0)?
            + self.position.index_select(&positions, 0)?)?
        .broadcast_add(&self.token_type.get(0)?)?;
        x.copy_from_slice(&sum.flatten_all()?.to_vec1::<f32>()?);
        let h = self.cfg.hidden_size;
        x.par_chunks_mut(h * ROWS_PER_TASK).for_each(|rows| {
            rows.chunks_exact_mut(h).for_each(|row| normalize(row, &self.embed_norm));
        });
        Ok(())
    }

    /// Bidirectional multi-head attention of `qkv` `[N, 3H]` (query, key, value per row)
    /// within each `(start, len)` span, into `out` `[N, H]`. In parallel over rows.
    fn attention_packed(&self, qkv: &[f32], spans: &[(usize, usize)], out: &mut [f32]) {
        let (nh, hd) = (self.cfg.num_attention_heads, self.cfg.head_dim());
        let h = nh * hd;
        // The span of each row, so rows can be spread over threads independently.
        let row_span: Vec<(usize, usize)> =
            spans.iter().flat_map(|&span| std::iter::repeat_n(span, span.1)).collect();
        let scale = 1.0 / (hd as f32).sqrt();
        out.par_chunks_mut(h * ROWS_PER_TASK).enumerate().for_each(|(task, rows)| {
            let mut scores = Vec::new();
            for (i, out) in rows.chunks_exact_mut(h).enumerate() {
                let row = task * ROWS_PER_TASK + i;
                let (start, len) = row_span[row];
                let q = &qkv[row * 3 * h..][..h];
                scores.resize(len, 0.0);
                out.fill(0.0); // attend_one adds to its output
                for head in 0..nh {
                    let qh = &q[head * hd..][..hd];
                    let key = |j: usize| &qkv[(start + j) * 3 * h + h + head * hd..][..hd];
                    let value = |j: usize| &qkv[(start + j) * 3 * h + 2 * h + head * hd..][..hd];
                    attend_one(
                        qh,
                        key,
                        value,
                        Logits { scale, softcap: None, sink: None },
                        &mut scores,
                        &mut out[head * hd..][..hd],
                    );
                }
            }
        });
    }
}

/// `x` = LayerNorm(`x` + `add`), row by row (`H` = the norm's size), in parallel.
fn add_norm(x: &mut [f32], add: &[f32], norm: &Norm) {
    let h = norm.weight.len();
    x.par_chunks_mut(h * ROWS_PER_TASK).zip(add.par_chunks(h * ROWS_PER_TASK)).for_each(
        |(rows, adds)| {
            for (row, add) in rows.chunks_exact_mut(h).zip(adds.chunks_exact(h)) {
                for (x, a) in row.iter_mut().zip(add) {
                    *x += *a;
                }
                normalize(row, norm);
            }
        },
    );
}

/// LayerNorm of one row in place: mean, then the mean square of the differences (two
/// passes, exact where `E[x²] − mean²` cancels), each summed in 16 lanes then across them.
fn normalize(row: &mut [f32], norm: &Norm) {
    let n = row.len() as f32;
    let mean = lane_sum(row, |x| x) / n;
    let var = lane_sum(row, |x| (x - mean) * (x - mean)) / n;
    let inv = 1.0 / (var + norm.eps).sqrt();
    for ((x, w), b) in row.iter_mut().zip(&norm.weight).zip(&norm.bias) {
        *x = (*x - mean) * inv * w + b;
    }
}

/// The sum of `f(x)` over `row` in 16 interleaved partial sums (value `i` to lane
/// `i % 16`), then those in order: a fixed order that vectorizes.
fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = row.chunks_exact(16);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *lane += f(*x);
        }
    }
    for (lane, x) in lanes.iter_mut().zip(rest) {
        *lane += f(*x);
    }
    lanes.iter().sum()
}

/// The MLP's activation, in place.
fn activate(activation: Activation, xs: &mut [f32]) {
    match activation {
        Activation::Gelu => super::gelu::gelu_erf_in_place(xs),
        Activation::GeluTanh => xs.par_chunks_mut(16 * 1024).for_each(|xs| {
            // candle's `gelu`: the tanh approximation.
            const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
            for x in xs {
                let v = *x;
                *x = 0.5 * v * (1.0 + (SQRT_TWO_OVER_PI * v * (1.0 + 0.044_715 * v * v)).tanh());
            }
        }),
        Activation::Relu => xs.par_iter_mut().for_each(|x| *x = x.max(0.0)),
    }
}
