//! Paged KV memory on a CUDA device: per layer one pool `[2, slots, kv_heads, head_dim]`
//! (keys, then values) in the layout of [`crate::transformer::paged`], filled and attended
//! over by the kernels of `paged.cu`: per layer, one launch rotates the step's queries and
//! keys and writes keys and values to their slots, one attends, for every sequence at once.
//!
//! Without the `cuda` feature [`PagedKv::new`] fails and nothing else is reachable: the
//! decoder only asks for paged KV on a CUDA device.

use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Result, Tensor};

use crate::transformer::paged::{BLOCK_SIZE, BlockPool, KERNEL_HEAD_DIMS, StepPlan};

/// The KV pools of every layer and the free list of their blocks.
#[derive(Debug)]
pub struct PagedKv {
    pool: Arc<BlockPool>,
    layers: Vec<Tensor>,
    kv_heads: usize,
    head_dim: usize,
}

impl PagedKv {
    /// Pools holding as many whole blocks as fit in `bytes`, in `dtype` on `device`.
    pub fn new(
        device: &Device,
        dtype: DType,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        bytes: usize,
    ) -> Result<Self> {
        if !device.is_cuda() {
            candle_core::bail!("paged KV memory is for CUDA devices, not {device:?}");
        }
        if !KERNEL_HEAD_DIMS.contains(&head_dim) {
            candle_core::bail!(
                "the GPU attention kernel is built for heads of {KERNEL_HEAD_DIMS:?} \
                 dimensions, not {head_dim}; run this model on the CPU"
            );
        }
        let block_bytes = layers * 2 * BLOCK_SIZE * kv_heads * head_dim * dtype.size_in_bytes();
        let blocks = (bytes / block_bytes.max(1)).max(1);
        let slots = blocks * BLOCK_SIZE;
        let layers = (0..layers)
            .map(|_| Tensor::zeros((2, slots, kv_heads, head_dim), dtype, device))
            .collect::<Result<_>>()?;
        Ok(Self { pool: Arc::new(BlockPool::new(blocks)), layers, kv_heads, head_dim })
    }

    pub fn pool(&self) -> &Arc<BlockPool> {
        &self.pool
    }

    /// Tokens per attention tile (the most the kernel keeps in registers at this head size).
    pub fn tile_rows(&self) -> usize {
        crate::transformer::paged::tile_rows(self.head_dim)
    }

    /// The step's plan on the device, read by every layer's kernels.
    pub fn upload(&self, plan: &StepPlan) -> Result<DevicePlan> {
        imp::upload(&self.layers[0], plan)
    }

    /// From the step's fused projection `qkv` `[T, (heads + 2 kv_heads) * head_dim]`: rotates
    /// queries and keys by `cos`/`sin` (f32 `[T, rot / 2]`), writes keys and values of
    /// `layer` into their slots and returns the queries `[T, heads, head_dim]`.
    pub fn rope_write(
        &self,
        layer: usize,
        qkv: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        rope: Rotation,
        plan: &DevicePlan,
    ) -> Result<Tensor> {
        imp::rope_write(
            &self.layers[layer],
            qkv,
            cos,
            sin,
            rope,
            plan,
            self.kv_heads,
            self.head_dim,
        )
    }

    /// Attention of `q` `[T, heads, head_dim]` over the cached positions → `[T, heads *
    /// head_dim]`.
    pub fn attend(&self, layer: usize, q: &Tensor, plan: &DevicePlan) -> Result<Tensor> {
        imp::attend(&self.layers[layer], q, plan, self.kv_heads, self.head_dim)
    }
}

/// How queries and keys are rotated: the first `dims` dimensions of each head, in NeoX
/// halves or interleaved pairs.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub dims: usize,
    pub interleaved: bool,
}

/// `x + y` (the new residual stream) and its RMSNorm times `w`, in one launch: both
/// `[T, H]`. CUDA only.
pub fn add_rms_norm(x: &Tensor, y: &Tensor, w: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    imp::add_rms_norm(x, y, w, eps)
}

/// `SiLU(gate) * up` of a fused `[T, 2I]` projection (gate first) → `[T, I]`, in one launch.
/// CUDA only.
pub fn silu_mul(gate_up: &Tensor) -> Result<Tensor> {
    imp::silu_mul(gate_up)
}

/// `x W^T` (`x` `[m, k]`, `w` `[n, k]`, f16 or bf16, `k` a multiple of 8) summed in one
/// order whatever `m` is: row `i` of the result is the same bits for any rows around it.
/// CUDA only.
pub fn matmul_xwt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    imp::matmul_xwt(x, w)
}

/// Whether [`matmul_xwt`] takes these operands.
pub fn matmul_xwt_supports(x: &Tensor, w: &Tensor) -> bool {
    imp::matmul_xwt_supports(x, w)
}

/// `x W^T` for bf16 `x` `[m, k]` and W `[n, k]` kept as GGUF blocks of `dtype` (u8 `[n, row
/// bytes]` on the GPU): [`matmul_xwt`]'s order of summing over each block dequantized as the
/// CPU does, so the same bits as [`matmul_xwt`] on W dequantized to bf16. CUDA only.
pub fn matmul_blocks(x: &Tensor, blocks: &Tensor, dtype: GgmlDType) -> Result<Tensor> {
    imp::matmul_blocks(x, blocks, dtype)
}

/// [`matmul_blocks`] with the blocks dequantized inside the matmul's tiles at every size
/// (what it does below its switch to dequantizing W first). CUDA only.
pub fn matmul_blocks_fused(x: &Tensor, blocks: &Tensor, dtype: GgmlDType) -> Result<Tensor> {
    imp::matmul_blocks_fused(x, blocks, dtype)
}

/// All of W kept as blocks (see [`matmul_blocks`]) dequantized to bf16 `[n, k]`. CUDA only.
pub fn dequantize_blocks(blocks: &Tensor, dtype: GgmlDType, k: usize) -> Result<Tensor> {
    imp::dequantize_blocks(blocks, dtype, k)
}

/// Rows `ids` of W kept as blocks (see [`matmul_blocks`]), dequantized to bf16 `[ids, k]`.
/// CUDA only.
pub fn rows_blocks(blocks: &Tensor, dtype: GgmlDType, k: usize, ids: &[u32]) -> Result<Tensor> {
    imp::rows_blocks(blocks, dtype, k, ids)
}

/// Whether the GPU kernels read blocks of `dtype` (false in a build without CUDA).
pub fn blocks_supported(dtype: GgmlDType) -> bool {
    imp::blocks_supported(dtype)
}

pub use imp::DevicePlan;

#[cfg(not(feature = "cuda"))]
mod imp {
    use candle_core::quantized::GgmlDType;
    use candle_core::{Result, Tensor};

    use crate::transformer::paged::StepPlan;

    /// Never made without the `cuda` feature.
    #[derive(Debug)]
    pub enum DevicePlan {}

    pub fn upload(_: &Tensor, _: &StepPlan) -> Result<DevicePlan> {
        candle_core::bail!("this build has no CUDA support (build with --features cuda)")
    }

    #[allow(clippy::too_many_arguments)]
    pub fn rope_write(
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: super::Rotation,
        p: &DevicePlan,
        _: usize,
        _: usize,
    ) -> Result<Tensor> {
        match *p {}
    }

    pub fn attend(_: &Tensor, _: &Tensor, p: &DevicePlan, _: usize, _: usize) -> Result<Tensor> {
        match *p {}
    }

    pub fn add_rms_norm(_: &Tensor, _: &Tensor, _: &Tensor, _: f32) -> Result<(Tensor, Tensor)> {
        candle_core::bail!("this build has no CUDA support (build with --features cuda)")
    }

    pub fn silu_mul(_: &Tensor) -> Result<Tensor> {
        candle_core::bail!("this build has no CUDA support (build with --features cuda)")
    }

    pub fn matmul_xwt(_: &Tensor, _: &Tensor) -> Result<Tensor> {
        candle_core::bail!("this build has no CUDA support (build with --features cuda)")
    }

    pub fn matmul_xwt_supports(_: &Tensor, _: &Tensor) -> bool {
        false
    }

    pub fn matmul_blocks(_: &Tensor, _: &Tensor, _: GgmlDType) -> Result<Tensor> {
        candle_core::bail!("this build has no CUDA support (build with --features cuda)")
    }

    pub fn rows_blocks(_: &Tensor, _: GgmlDType, _: usize, _: &[u32]) -> Result<Tensor> {
        candle_core::bail!("this build has no CUDA support (build with --features cuda)")
    }

    pub fn matmul_blocks_fused(_: &Tensor, _: &Tensor, _: GgmlDType) -> Result<Tensor> {
        candle_core::bail!("this build has no CUDA support (build with --features cuda)")
    }

    pub fn dequantize_blocks(_: &Tensor, _: GgmlDType, _: usize) -> Result<Tensor> {
        candle_core::bail!("this build has no CUDA support (build with --features cuda)")
    }

    pub fn blocks_supported(_: GgmlDType) -> bool {
        false
    }
}

#[cfg(feature = "cuda")]
mod fused_ops;
#[cfg(feature = "cuda")]
mod gemm_ops;
#[cfg(feature = "cuda")]
mod launch;
#[cfg(feature = "cuda")]
mod paged_ops;
#[cfg(feature = "cuda")]
mod quant_ops;

#[cfg(feature = "cuda")]
mod imp {
    pub use super::fused_ops::{add_rms_norm, silu_mul};
    pub use super::gemm_ops::{matmul_xwt, supports as matmul_xwt_supports};
    pub use super::launch::{DevicePlan, upload};
    pub use super::paged_ops::{attend, rope_write};
    pub use super::quant_ops::{
        dequantize_blocks, matmul_blocks, matmul_blocks_fused, rows_blocks,
    };

    pub fn blocks_supported(dtype: candle_core::quantized::GgmlDType) -> bool {
        super::quant_ops::kernel_suffix(dtype).is_some()
    }
}
