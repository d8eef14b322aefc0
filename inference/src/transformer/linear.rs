//! A projection `x W^T + b` whose weight is dense f32 or quantized in GGUF blocks.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Result, Tensor};

use crate::kernels::{DenseMatrix, QuantMatrix};

/// The dtype activations and dense weights have on `device`: bf16 on CUDA GPUs (tensor
/// cores, half the bytes), f32 elsewhere.
pub fn compute_dtype(device: &candle_core::Device) -> candle_core::DType {
    if device.is_cuda() { candle_core::DType::BF16 } else { candle_core::DType::F32 }
}

/// How a weight matrix `[out, in]` is held.
#[derive(Debug)]
pub enum Weight {
    /// Dense weights on the CPU, through our batch-invariant kernel.
    Rows(Box<DenseMatrix>),
    /// Dense weights elsewhere (candle's matmul).
    Dense(Tensor),
    /// GGUF blocks our kernels multiply (Q8_0 on the CPU).
    Packed(Box<QuantMatrix>),
    /// Other GGUF blocks, multiplied by candle's quantized matmul.
    Quantized(QMatMul),
    /// GGUF blocks on a CUDA GPU as the file has them (u8 `[out, row bytes]`), multiplied
    /// and read as rows by our kernels ([`crate::cuda::matmul_blocks`]).
    Blocks { bytes: Tensor, dtype: GgmlDType, k: usize },
}

#[derive(Debug)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    /// The bias as f32 values, for [`Linear::forward_into`] (our CPU kernels' weights).
    bias_values: Option<Vec<f32>>,
    out_features: usize,
}

impl Linear {
    /// Dense weights: on the CPU f16/bf16 stay half precision on our kernel; elsewhere
    /// candle's matmul in the device's compute dtype ([`compute_dtype`]).
    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let out_features = weight.dim(0)?;
        let dtype = compute_dtype(weight.device());
        let (weight, bias) = match DenseMatrix::from_tensor(&weight)? {
            Some(rows) => (Weight::Rows(Box::new(rows)), bias),
            None => {
                let bias = bias.map(|b| b.to_dtype(dtype)).transpose()?;
                (Weight::Dense(weight.to_dtype(dtype)?), bias)
            }
        };
        Self::new(weight, bias, out_features)
    }

    fn new(weight: Weight, bias: Option<Tensor>, out_features: usize) -> Result<Self> {
        let on_slices = matches!(weight, Weight::Rows(_) | Weight::Packed(_));
        let bias_values = match &bias {
            Some(b) if on_slices => Some(b.to_dtype(candle_core::DType::F32)?.to_vec1()?),
            _ => None,
        };
        Ok(Self { weight, bias, bias_values, out_features })
    }

    /// Quantized blocks stay quantized (in our kernels' layout where they apply); F16/BF16
    /// tensors stay half precision on our dense kernel; F32 ones become dense f32.
    pub fn quantized(weight: QTensor, bias: Option<Tensor>) -> Result<Self> {
        let out_features = weight.shape().dims().first().copied().unwrap_or(0);
        if let Some(rows) = DenseMatrix::from_qtensor(&weight) {
            return Self::new(Weight::Rows(Box::new(rows)), bias, out_features);
        }
        // On a CUDA GPU blocks given here become bf16 (cuBLAS's matmul, 3.5-4x the memory
        // of a 4-bit file); the loaders keep them as blocks with `gpu_blocks` where
        // [`GpuWeights`] says so.
        if weight.device().is_cuda() {
            let dense = weight.dequantize(&weight.device())?;
            return Self::dense(dense, bias);
        }
        // Our kernels are CPU-only; elsewhere candle's QMatMul runs the blocks.
        if weight.device().is_cpu() {
            let packed = QuantMatrix::from_qtensor(&weight).or_else(|_| {
                crate::kernels::repack::to_q8_0(&weight).and_then(|q| QuantMatrix::from_qtensor(&q))
            });
            if let Ok(packed) = packed {
                return Self::new(Weight::Packed(Box::new(packed)), bias, out_features);
            }
        }
        let weight = match QMatMul::from_qtensor(weight)? {
            QMatMul::QTensor(q) => Weight::Quantized(QMatMul::QTensor(q)),
            QMatMul::Tensor(t) | QMatMul::TensorF16(t) => {
                return Self::dense(t.to_dtype(candle_core::DType::F32)?, bias);
            }
        };
        Self::new(weight, bias, out_features)
    }

    /// GGUF blocks (on any device) kept as they are on the CUDA `device`, for our kernels:
    /// only for a dtype [`crate::cuda::blocks_supported`] takes.
    pub fn gpu_blocks(weight: &QTensor, bias: Option<Tensor>, device: &Device) -> Result<Self> {
        let dtype = weight.dtype();
        let (out, k) = weight.shape().dims2()?;
        if !device.is_cuda() || !crate::cuda::blocks_supported(dtype) {
            candle_core::bail!("{dtype:?} blocks are kept as they are only on CUDA GPUs");
        }
        let data = weight.data()?;
        let row_bytes = k / dtype.block_size() * dtype.type_size();
        if data.len() != out * row_bytes {
            candle_core::bail!(
                "{dtype:?} weight [{out}, {k}] holds {} bytes, expected {}",
                data.len(),
                out * row_bytes
            );
        }
        let bytes = Tensor::from_slice(&data, (out, row_bytes), device)?;
        let bias =
            bias.map(|b| b.to_device(device)?.to_dtype(compute_dtype(device))).transpose()?;
        Self::new(Weight::Blocks { bytes, dtype, k }, bias, out)
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Dense projections of the same input (off the CPU) as one: a single matmul where there
    /// were several, outputs side by side in `parts` order. `None` unless every part is a
    /// dense off-CPU weight (the CPU kernels batch their rows already).
    pub fn stack(parts: &[&Linear]) -> Result<Option<Linear>> {
        let Some(first) = parts.first() else { return Ok(None) };
        let weight = match &first.weight {
            Weight::Dense(_) => {
                let dense = parts.iter().map(|p| match &p.weight {
                    Weight::Dense(w) => Some(w.clone()),
                    _ => None,
                });
                let Some(weights) = dense.collect::<Option<Vec<_>>>() else { return Ok(None) };
                Weight::Dense(Tensor::cat(&weights, 0)?)
            }
            // Blocks of one type and row length: rows of bytes, stacked as they are.
            &Weight::Blocks { dtype, k, .. } => {
                let blocks = parts.iter().map(|p| match &p.weight {
                    Weight::Blocks { bytes, dtype: d, k: pk } if *d == dtype && *pk == k => {
                        Some(bytes.clone())
                    }
                    _ => None,
                });
                let Some(bytes) = blocks.collect::<Option<Vec<_>>>() else { return Ok(None) };
                Weight::Blocks { bytes: Tensor::cat(&bytes, 0)?, dtype, k }
            }
            _ => return Ok(None),
        };
        let bias_dtype = parts.iter().find_map(|p| p.bias.as_ref().map(Tensor::dtype));
        let bias = match bias_dtype {
            Some(dtype) => {
                let biases = parts
                    .iter()
                    .map(|p| match &p.bias {
                        Some(b) => Ok(b.clone()),
                        None => Tensor::zeros(p.out_features, dtype, parts_device(parts)),
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some(Tensor::cat(&biases, 0)?)
            }
            None => None,
        };
        let out_features = parts.iter().map(|p| p.out_features).sum();
        Linear::new(weight, bias, out_features).map(Some)
    }

    /// Bytes the weight takes in memory.
    pub fn weight_bytes(&self) -> usize {
        match &self.weight {
            Weight::Rows(m) => m.bytes(),
            Weight::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Weight::Packed(m) => m.bytes(),
            Weight::Quantized(QMatMul::QTensor(q)) => q.storage_size_in_bytes(),
            Weight::Quantized(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                t.elem_count() * t.dtype().size_in_bytes()
            }
            Weight::Blocks { bytes, .. } => bytes.elem_count(),
        }
    }

    /// Whether [`Linear::rows`] can read this weight's rows (an embedding table kept in its
    /// matmul form instead of a second, f32 copy).
    pub fn has_rows(&self) -> bool {
        matches!(self.weight, Weight::Rows(_) | Weight::Packed(_) | Weight::Blocks { .. })
    }

    /// The weight's rows `ids` `[ids, in]` (embedding lookups): f32 on the CPU, bf16 on a
    /// GPU (the activations' dtype there); only where [`Linear::has_rows`].
    pub fn rows(&self, ids: &[u32]) -> Result<Tensor> {
        if let Weight::Blocks { bytes, dtype, k } = &self.weight {
            return crate::cuda::rows_blocks(bytes, *dtype, *k, ids);
        }
        let k = match &self.weight {
            Weight::Rows(m) => m.cols(),
            Weight::Packed(m) => m.cols(),
            _ => candle_core::bail!("this weight's rows cannot be read"),
        };
        let mut out = vec![0f32; ids.len() * k];
        for (row, &id) in out.chunks_exact_mut(k).zip(ids) {
            let id = id as usize;
            if id >= self.out_features {
                candle_core::bail!(
                    "token id {id} is outside the vocabulary of {}",
                    self.out_features
                );
            }
            match &self.weight {
                Weight::Rows(m) => m.row(id, row),
                Weight::Packed(m) => m.row(id, row),
                _ => {}
            }
        }
        Tensor::from_vec(out, (ids.len(), k), &candle_core::Device::Cpu)
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        match &self.weight {
            Weight::Rows(m) => m.cols(),
            Weight::Packed(m) => m.cols(),
            Weight::Dense(t) => t.dims().get(1).copied().unwrap_or(0),
            Weight::Quantized(QMatMul::QTensor(q)) => q.shape().dims().get(1).copied().unwrap_or(0),
            Weight::Quantized(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                t.dims().get(1).copied().unwrap_or(0)
            }
            Weight::Blocks { k, .. } => *k,
        }
    }

    /// Whether [`Linear::forward_into`] can run this projection (our CPU kernels' weights).
    pub fn runs_on_slices(&self) -> bool {
        matches!(self.weight, Weight::Rows(_) | Weight::Packed(_))
    }

    /// `out = x Wᵀ + b` for row-major f32 rows `x` `[m, in]` into `out` `[m, out]`, where
    /// [`Linear::runs_on_slices`]: [`Linear::forward`] without tensors, the same bits.
    pub fn forward_into(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        match &self.weight {
            Weight::Rows(m) => m.matmul_slice(x, out).map_err(candle_core::Error::msg)?,
            Weight::Packed(m) => m.matmul_slice(x, out)?,
            _ => candle_core::bail!("this projection's weight is not on our CPU kernels"),
        }
        if let Some(b) = &self.bias_values {
            for row in out.chunks_exact_mut(b.len()) {
                for (y, b) in row.iter_mut().zip(b) {
                    *y += b;
                }
            }
        }
        Ok(())
    }

    /// `x` `[tokens, in]` → `[tokens, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Rows(m) => m.matmul(x)?,
            Weight::Dense(w) if x.device().is_cuda() => gpu_matmul(x, w)?,
            Weight::Dense(w) => x.matmul(&w.t()?)?,
            Weight::Packed(m) => m.matmul(x)?,
            Weight::Quantized(q) => q.forward(x)?,
            Weight::Blocks { bytes, dtype, .. } => crate::cuda::matmul_blocks(x, bytes, *dtype)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// The device of the stacked parts' weights.
fn parts_device<'a>(parts: &[&'a Linear]) -> &'a Device {
    match parts.first().map(|p| &p.weight) {
        Some(Weight::Dense(w) | Weight::Blocks { bytes: w, .. }) => w.device(),
        _ => &Device::Cpu,
    }
}

/// How GGUF blocks are held on a CUDA GPU (`FLEET_GPU_WEIGHTS`): as the file has them, read
/// by our kernels (the file's bytes on the card), or dequantized to bf16 at load (cuBLAS's
/// matmuls: 3.5-4x the memory of a 4-bit file, and on an H100 1.5-2.2x the blocks' speed,
/// BENCHMARKS.md). `auto` (the default) takes bf16 when the model's weights in bf16 take at
/// most half the GPU's free memory (the rest is for KV memory), else blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuWeights {
    Auto,
    Blocks,
    Bf16,
}

impl GpuWeights {
    /// `FLEET_GPU_WEIGHTS`: `auto` (or unset), `blocks` or `bf16`.
    pub fn from_env() -> Result<Self> {
        Self::parse(std::env::var("FLEET_GPU_WEIGHTS").as_deref().unwrap_or(""))
    }

    fn parse(value: &str) -> Result<Self> {
        match value {
            "" | "auto" => Ok(Self::Auto),
            "blocks" => Ok(Self::Blocks),
            "bf16" => Ok(Self::Bf16),
            other => candle_core::bail!(
                "FLEET_GPU_WEIGHTS is {other:?}; use auto, blocks (GGUF blocks kept as they are) \
                 or bf16 (dequantized at load)"
            ),
        }
    }

    /// Whether blocks are kept, for a model whose quantized matrices take `bf16_bytes` in
    /// bf16, with `free` bytes free on its GPU (`None`: unknown, and blocks are kept).
    pub fn keeps_blocks(self, bf16_bytes: u64, free: Option<u64>) -> bool {
        match self {
            Self::Blocks => true,
            Self::Bf16 => false,
            Self::Auto => free.is_none_or(|free| bf16_bytes > free / 2),
        }
    }
}

/// Whether GPU matmuls whose sum is longer than their output run on our kernel that sums
/// every row in one order, so a token's result does not depend on what shares the step
/// (default; `FLEET_GPU_BATCH_INVARIANT=0` gives them to cuBLAS). cuBLAS picks its kernel, and
/// how it splits the sum, by shape: measured on an H100 (BENCHMARKS.md), a row of the
/// 4864 -> 896 projection came out differently in calls of 48 rows than of 64, and in almost
/// any two calls above 64 rows; the decoder's other shapes (sum shorter than the output)
/// never differed.
fn gpu_batch_invariant() -> bool {
    static INVARIANT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *INVARIANT.get_or_init(|| std::env::var("FLEET_GPU_BATCH_INVARIANT").map_or(true, |v| v != "0"))
}

/// `x W^T` on a GPU.
fn gpu_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (out, k) = w.dims2()?;
    if k > out && gpu_batch_invariant() && crate::cuda::matmul_xwt_supports(x, w) {
        return crate::cuda::matmul_xwt(x, w);
    }
    x.matmul(&w.t()?)
}

#[cfg(test)]
mod tests {
    use super::GpuWeights;

    #[test]
    fn gpu_weights_parse_and_decide() {
        let gib = 1u64 << 30;
        assert_eq!(GpuWeights::parse("").ok(), Some(GpuWeights::Auto));
        assert_eq!(GpuWeights::parse("blocks").ok(), Some(GpuWeights::Blocks));
        assert_eq!(GpuWeights::parse("bf16").ok(), Some(GpuWeights::Bf16));
        let err = GpuWeights::parse("q4").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("auto, blocks") && err.contains("\"q4\""), "{err}");
        // A 7B model: 15 GiB in bf16. An 80 GB card takes it as bf16, a 24 GB one keeps
        // the blocks (bf16 would leave less than half for KV memory); unknown: blocks.
        let auto = GpuWeights::Auto;
        assert!(!auto.keeps_blocks(15 * gib, Some(78 * gib)));
        assert!(auto.keeps_blocks(15 * gib, Some(23 * gib)));
        assert!(auto.keeps_blocks(15 * gib, None));
        assert!(GpuWeights::Blocks.keeps_blocks(gib, Some(80 * gib)));
        assert!(!GpuWeights::Bf16.keeps_blocks(80 * gib, Some(gib)));
    }
}
