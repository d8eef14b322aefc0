//! Rotary position embeddings. cos/sin are computed for the step's positions only, so long
//! contexts cost no tables and sequences at different positions share one call.

use candle_core::{DType, Device, Result, Tensor};

use super::config::{RopeConfig, RopeScaling};

#[derive(Debug)]
pub struct Rope {
    /// `[1, dims / 2]`
    inv_freq: Tensor,
    dims: usize,
    interleaved: bool,
    /// What cos and sin are multiplied by (YaRN's; 1 otherwise).
    magnitude: f64,
}

impl Rope {
    pub fn new(cfg: &RopeConfig, device: &Device) -> Result<Self> {
        let inv_freq: Vec<f32> = frequencies(cfg)?.into_iter().map(|f| f as f32).collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, cfg.dims / 2), device)?;
        let magnitude = magnitude(cfg);
        Ok(Self { inv_freq, dims: cfg.dims, interleaved: cfg.interleaved, magnitude })
    }
}

/// What a scaling multiplies cos and sin by: YaRN's and LongRoPE's attention temperature,
/// which scales every query-key product by its square.
pub fn magnitude(cfg: &RopeConfig) -> f64 {
    match cfg.scaling {
        RopeScaling::Yarn { factor, attn_factor, .. } => attn_factor * (1.0 + 0.1 * factor.ln()),
        RopeScaling::LongRope { attn_factor, .. } => attn_factor,
        _ => 1.0,
    }
}

/// The pair index below which YaRN keeps a frequency (it turns more than `rotations` times
/// over the original context) and above which it divides it: llama.cpp's and Hugging Face's
/// correction dimension, before rounding.
fn yarn_dim(dims: usize, original: usize, rotations: f64, theta: f64) -> f64 {
    let d = dims as f64;
    d * (original as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln())
}

/// The rotation frequency of each pair of dimensions, after any scaling.
pub fn frequencies(cfg: &RopeConfig) -> Result<Vec<f64>> {
    let d = cfg.dims;
    let mut inv_freq: Vec<f64> =
        (0..d).step_by(2).map(|i| 1.0 / cfg.theta.powf(i as f64 / d as f64)).collect();
    match &cfg.scaling {
        RopeScaling::None => {}
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_positions,
        } => {
            let old = *original_max_positions as f64;
            let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
            for f in &mut inv_freq {
                let wavelen = 2.0 * std::f64::consts::PI / *f;
                if wavelen > low_wavelen {
                    *f /= factor;
                } else if wavelen >= high_wavelen {
                    let smooth =
                        (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    *f = (1.0 - smooth) * *f / factor + smooth * *f;
                }
            }
        }
        RopeScaling::Linear(factor) => {
            for f in &mut inv_freq {
                *f /= factor;
            }
        }
        RopeScaling::Yarn { factor, original_max_positions, beta_fast, beta_slow, .. } => {
            let low = yarn_dim(d, *original_max_positions, *beta_fast, cfg.theta).floor().max(0.0);
            let high = yarn_dim(d, *original_max_positions, *beta_slow, cfg.theta)
                .ceil()
                .min(d as f64 - 1.0);
            for (pair, f) in inv_freq.iter_mut().enumerate() {
                // 1 where the frequency is kept, 0 where divided, a ramp between.
                let ramp = (pair as f64 - low) / (high - low).max(0.001);
                let kept = 1.0 - ramp.clamp(0.0, 1.0);
                *f = *f / factor * (1.0 - kept) + *f * kept;
            }
        }
        RopeScaling::Factors(factors) | RopeScaling::LongRope { factors, .. } => {
            if factors.len() != inv_freq.len() {
                candle_core::bail!(
                    "rope_freqs has {} factors, expected {}",
                    factors.len(),
                    inv_freq.len()
                );
            }
            for (f, factor) in inv_freq.iter_mut().zip(factors) {
                *f /= f64::from(*factor);
            }
        }
    }
    Ok(inv_freq)
}

impl Rope {
    /// The dimensions rotated and how, for kernels that rotate themselves.
    pub fn rotation(&self) -> crate::cuda::Rotation {
        crate::cuda::Rotation { dims: self.dims, interleaved: self.interleaved }
    }

    /// cos and sin `[T, dims / 2]` for the given positions `[T]` (u32).
    pub fn tables(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = positions.to_dtype(DType::F32)?.unsqueeze(1)?;
        let freqs = t.matmul(&self.inv_freq)?;
        if self.magnitude != 1.0 {
            return Ok(((freqs.cos()? * self.magnitude)?, (freqs.sin()? * self.magnitude)?));
        }
        Ok((freqs.cos()?, freqs.sin()?))
    }

    /// Rotates `x` `[1, heads, T, head_dim]` (contiguous) by the tables of its T positions.
    pub fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let head_dim = x.dim(3)?;
        if self.dims == head_dim {
            return self.rotate(x, cos, sin);
        }
        let rotated = self.rotate(&x.narrow(3, 0, self.dims)?.contiguous()?, cos, sin)?;
        let rest = x.narrow(3, self.dims, head_dim - self.dims)?;
        Tensor::cat(&[&rotated, &rest], 3)?.contiguous()
    }

    fn rotate(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        if self.interleaved {
            candle_nn::rotary_emb::rope_i(x, cos, sin)
        } else {
            candle_nn::rotary_emb::rope(x, cos, sin)
        }
    }
}
