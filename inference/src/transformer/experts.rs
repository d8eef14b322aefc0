//! A mixture of experts in place of a layer's MLP (Qwen3-MoE, Qwen2-MoE, Mixtral-style
//! Llama, gpt-oss): a router scores every expert per token, the top `used` run, and their
//! outputs are summed with the router's weights.
//!
//! Experts run grouped: the step's tokens are sorted by the experts that chose them and
//! each expert multiplies its tokens' rows in one matmul, so its weights are read once per
//! step however many tokens chose it (a prefill of 512 tokens over 16 experts, top-4, is 16
//! matmuls of ~128 rows, not 2,048 of one). A token's result does not depend on the batch:
//! the kernels give a row the same bits whatever rows come with it, and a token adds its
//! experts' outputs in the router's order.

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

use super::config::{Activation, Experts};
use super::fused;
use super::linear::Linear;
use super::weights::{Part, WeightSource};
use crate::kernels::repack;

/// A gated MLP: `down(act(gate · x, up · x))` (SwiGLU, or gpt-oss's clamped one), gate and
/// up as one matmul where their blocks stack.
#[derive(Debug)]
struct SwiGlu {
    gate_up: GateUp,
    down: Linear,
    ff: usize,
    act: Activation,
}

#[derive(Debug)]
enum GateUp {
    Fused(Linear),
    Separate { gate: Linear, up: Linear },
}

impl SwiGlu {
    /// From the gate, up and down matrices in their file's blocks, and their biases where
    /// the family has them (gpt-oss).
    fn new(
        [gate, up, down]: [QTensor; 3],
        [gate_b, up_b, down_b]: [Option<Tensor>; 3],
        ff: usize,
        hidden: usize,
        act: Activation,
    ) -> Result<Self> {
        let pair = [gate, up];
        let gate_up = match repack::stack(&pair).ok().flatten() {
            Some(stacked) => {
                let bias = match (&gate_b, &up_b) {
                    (Some(g), Some(u)) => Some(Tensor::cat(&[g, u], 0)?),
                    _ => None,
                };
                GateUp::Fused(Linear::quantized(stacked, bias)?)
            }
            None => {
                let [gate, up] = pair;
                GateUp::Separate {
                    gate: Linear::quantized(gate, gate_b)?,
                    up: Linear::quantized(up, up_b)?,
                }
            }
        };
        let down = Linear::quantized(down, down_b)?;
        let (gate_up_out, gate_up_in) = match &gate_up {
            GateUp::Fused(m) => (m.out_features(), m.in_features()),
            GateUp::Separate { gate, up } => (gate.out_features() + up.out_features(), {
                if gate.in_features() != up.in_features() {
                    candle_core::bail!("an expert's gate and up projections differ in inputs")
                }
                gate.in_features()
            }),
        };
        if (gate_up_out, gate_up_in) != (2 * ff, hidden)
            || (down.out_features(), down.in_features()) != (hidden, ff)
        {
            candle_core::bail!(
                "an expert's projections have shapes gate+up [{gate_up_out}, {gate_up_in}] and \
                 down [{}, {}], expected [{}, {hidden}] and [{hidden}, {ff}]",
                down.out_features(),
                down.in_features(),
                2 * ff
            );
        }
        Ok(Self { gate_up, down, ff, act })
    }

    /// `rows` rows of `x` through the MLP into `out` (`rows × hidden`).
    fn forward(&self, x: &[f32], rows: usize, out: &mut [f32]) -> Result<()> {
        let ff = self.ff;
        let mut gate_up = vec![0f32; rows * 2 * ff];
        let mut hidden = vec![0f32; rows * ff];
        let (gate, up) = match &self.gate_up {
            GateUp::Fused(m) => {
                project(m, x, rows, &mut gate_up)?;
                let parts = [ff, ff];
                (fused::Part::of(&gate_up, &parts, 0), fused::Part::of(&gate_up, &parts, 1))
            }
            GateUp::Separate { gate, up } => {
                let (gs, us) = gate_up.split_at_mut(rows * ff);
                project(gate, x, rows, gs)?;
                project(up, x, rows, us)?;
                (fused::Part::whole(gs, ff), fused::Part::whole(us, ff))
            }
        };
        fused::glu(self.act, gate, up, &mut hidden);
        project(&self.down, &hidden, rows, out)
    }

    fn weight_bytes(&self) -> usize {
        let gate_up = match &self.gate_up {
            GateUp::Fused(m) => m.weight_bytes(),
            GateUp::Separate { gate, up } => gate.weight_bytes() + up.weight_bytes(),
        };
        gate_up + self.down.weight_bytes()
    }
}

/// Qwen2-MoE's shared expert: every token runs it, scaled by `σ(w · x)`.
#[derive(Debug)]
struct Shared {
    mlp: SwiGlu,
    /// `w` as a one-row projection.
    gate: Linear,
}

/// One layer's experts and their router.
#[derive(Debug)]
pub struct MixtureOfExperts {
    router: Linear,
    experts: Vec<SwiGlu>,
    used: usize,
    renormalize: bool,
    shared: Option<Shared>,
    hidden: usize,
}

/// The experts a token runs and their weights, in the router's order.
type Choice = Vec<(usize, f32)>;

impl MixtureOfExperts {
    /// Layer `layer`'s router and experts (and shared expert) from `src`, the experts'
    /// activation `act`.
    pub fn load(
        spec: &Experts,
        hidden: usize,
        act: Activation,
        src: &mut impl WeightSource,
        layer: usize,
    ) -> Result<Self> {
        let router = src.linear(Part::Router(layer), spec.biases)?;
        if (router.out_features(), router.in_features()) != (spec.count, hidden) {
            candle_core::bail!(
                "the router has shape [{}, {}], expected [{}, {hidden}]",
                router.out_features(),
                router.in_features(),
                spec.count
            );
        }
        let parts = [Part::ExpertGates(layer), Part::ExpertUps(layer), Part::ExpertDowns(layer)];
        let [gates, ups, downs] = parts.map(|p| src.experts(p, spec.count));
        // Biases `[experts, out]`, a row each.
        let biases = if spec.biases {
            let mut rows = Vec::with_capacity(3);
            for (part, out) in parts.into_iter().zip([spec.ff, spec.ff, hidden]) {
                let all = src.dense(part, true)?.to_dtype(DType::F32)?;
                if all.dims() != [spec.count, out] {
                    candle_core::bail!(
                        "{} has shape {:?}, expected [{}, {out}]",
                        part.gguf_name(),
                        all.dims(),
                        spec.count
                    );
                }
                rows.push(all);
            }
            Some(rows)
        } else {
            None
        };
        let experts = gates?
            .into_iter()
            .zip(ups?)
            .zip(downs?)
            .enumerate()
            .map(|(e, ((g, u), d))| {
                let row = |i: usize| biases.as_ref().map(|rows| rows[i].get(e)).transpose();
                SwiGlu::new([g, u, d], [row(0)?, row(1)?, row(2)?], spec.ff, hidden, act)
            })
            .collect::<Result<Vec<_>>>()?;
        let shared = match spec.shared_ff {
            None => None,
            Some(ff) => {
                let mlp = SwiGlu::new(
                    [
                        src.blocks(Part::SharedGate(layer))?,
                        src.blocks(Part::SharedUp(layer))?,
                        src.blocks(Part::SharedDown(layer))?,
                    ],
                    [None, None, None],
                    ff,
                    hidden,
                    act,
                )?;
                let w = src.dense(Part::SharedRouter(layer), false)?;
                if w.elem_count() != hidden {
                    candle_core::bail!(
                        "the shared expert's gate has shape {:?}, expected [{hidden}]",
                        w.dims()
                    );
                }
                let gate = Linear::dense(w.reshape((1, hidden))?.to_dtype(DType::F32)?, None)?;
                Some(Shared { mlp, gate })
            }
        };
        Ok(Self { router, experts, used: spec.used, renormalize: spec.renormalize, shared, hidden })
    }

    /// Bytes of every expert's weights, the router's and the shared expert's.
    pub fn weight_bytes(&self) -> usize {
        let shared =
            self.shared.as_ref().map_or(0, |s| s.mlp.weight_bytes() + s.gate.weight_bytes());
        self.router.weight_bytes()
            + self.experts.iter().map(SwiGlu::weight_bytes).sum::<usize>()
            + shared
    }

    /// The layer's output for the rows `x` (`T × hidden`, norm'd) into `out` (`T × hidden`).
    pub fn forward(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        let hs = self.hidden;
        let t = x.len() / hs;
        let mut logits = vec![0f32; t * self.experts.len()];
        project(&self.router, x, t, &mut logits)?;
        let choices: Vec<Choice> =
            logits.chunks_exact(self.experts.len()).map(|l| self.choose(l)).collect();
        // The tokens (and their slot) that chose each expert.
        let mut groups: Vec<Vec<(usize, usize)>> = vec![Vec::new(); self.experts.len()];
        for (token, choice) in choices.iter().enumerate() {
            for (slot, (e, _)) in choice.iter().enumerate() {
                groups[*e].push((token, slot));
            }
        }
        // Experts run side by side on the pool's threads (each matmul splitting further
        // where a thread is free): a decode step's four small experts would otherwise be
        // eight matmuls each split two ways and joined.
        let ran: Vec<(usize, Vec<f32>)> = groups
            .par_iter()
            .enumerate()
            .filter(|(_, slots)| !slots.is_empty())
            .map(|(e, slots)| {
                let mut rows = Vec::with_capacity(slots.len() * hs);
                for &(token, _) in slots {
                    rows.extend_from_slice(&x[token * hs..][..hs]);
                }
                let mut result = vec![0f32; slots.len() * hs];
                self.experts[e].forward(&rows, slots.len(), &mut result)?;
                Ok((e, result))
            })
            .collect::<Result<_>>()?;
        // Each token's experts' outputs, slot by slot: `[T, used, hidden]`.
        let mut outputs = vec![0f32; t * self.used * hs];
        for (e, result) in &ran {
            for (&(token, slot), y) in groups[*e].iter().zip(result.chunks_exact(hs)) {
                outputs[(token * self.used + slot) * hs..][..hs].copy_from_slice(y);
            }
        }
        for ((out, choice), ys) in
            out.chunks_exact_mut(hs).zip(&choices).zip(outputs.chunks_exact(self.used * hs))
        {
            for (slot, ((_, w), y)) in choice.iter().zip(ys.chunks_exact(hs)).enumerate() {
                for (o, y) in out.iter_mut().zip(y) {
                    *o = if slot == 0 { w * y } else { *o + w * y };
                }
            }
        }
        if let Some(shared) = &self.shared {
            let mut ys = vec![0f32; t * hs];
            shared.mlp.forward(x, t, &mut ys)?;
            let mut gates = vec![0f32; t];
            project(&shared.gate, x, t, &mut gates)?;
            for ((out, y), g) in out.chunks_exact_mut(hs).zip(ys.chunks_exact(hs)).zip(gates) {
                let g = 1.0 / (1.0 + (-g).exp());
                for (o, y) in out.iter_mut().zip(y) {
                    *o += y * g;
                }
            }
        }
        Ok(())
    }

    /// The `used` experts with the highest router probabilities (ties to the lower index),
    /// with their probabilities (a softmax over every expert), renormalized to sum to 1
    /// where the family does.
    fn choose(&self, logits: &[f32]) -> Choice {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f64 = exps.iter().map(|&e| f64::from(e)).sum();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        let mut chosen: Choice =
            order[..self.used].iter().map(|&e| (e, (f64::from(exps[e]) / sum) as f32)).collect();
        if self.renormalize {
            let total: f32 = chosen.iter().map(|(_, w)| w).sum();
            chosen.iter_mut().for_each(|(_, w)| *w /= total);
        }
        chosen
    }
}

/// `rows` rows of `x` through `l` into `out`: on our kernels where the weight is on them,
/// else through candle's matmul.
fn project(l: &Linear, x: &[f32], rows: usize, out: &mut [f32]) -> Result<()> {
    if l.runs_on_slices() {
        return l.forward_into(x, out);
    }
    let y = l.forward(&Tensor::from_slice(x, (rows, l.in_features()), &Device::Cpu)?)?;
    let y: Vec<f32> = y.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    out.copy_from_slice(&y);
    Ok(())
}
