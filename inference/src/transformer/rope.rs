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
}

impl Rope {
    pub fn new(cfg: &RopeConfig, device: &Device) -> Result<Self> {
        let inv_freq: Vec<f32> = frequencies(cfg)?.into_iter().map(|f| f as f32).collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, cfg.dims / 2), device)?;
        Ok(Self { inv_freq, dims: cfg.dims, interleaved: cfg.interleaved })
    }
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
        RopeScaling::Factors(factors) => {
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
