//! GGUF blocks kept on the GPU (`quant.cuh`, kernels in `gemm.cu`) as candle custom ops:
//! `x W^T` with W's blocks dequantized inside the invariant matmul's tiles, and rows of W
//! dequantized (embedding lookups). The weights take the file's bytes on the card, not the
//! 3.5-4x of a bf16 copy.
#![allow(unsafe_code)] // Kernel launches are FFI; each op checks its bounds before launching.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::quantized::GgmlDType;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor,
};

use super::gemm_ops::{Kernels, WeightArg, tiles};
use super::launch::{GEMM_MODULE, GEMM_PTX, grid};

/// Threads per block of the rows kernels (THREADS_ROWS in gemm.cu).
const ROWS_THREADS: u32 = 128;
/// From this many rows of `x` on, W is dequantized to bf16 once per call and multiplied by
/// the same tile kernel on dense rows, instead of every row tile dequantizing W's blocks
/// again (m / 64 times). Both give the same bits (the same bf16 values enter the same
/// sums), so the switch does not break batch invariance; only the cost differs.
const DEQUANTIZE_FROM_ROWS: usize = 256;

/// The kernels' name for a block format they read, `None` for the others.
pub fn kernel_suffix(dtype: GgmlDType) -> Option<&'static str> {
    Some(match dtype {
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q4K => "q4k",
        GgmlDType::Q5K => "q5k",
        GgmlDType::Q6K => "q6k",
        _ => return None,
    })
}

/// Checks `blocks` as `n` rows of `k` values in `dtype`'s blocks: u8 `[n, row bytes]`,
/// contiguous, starting on an even byte (the blocks' f16 fields are read 2 bytes at once).
/// Returns the kernels' suffix and the bytes of a row.
fn check_blocks(blocks: &Tensor, dtype: GgmlDType, k: usize) -> Result<(&'static str, usize)> {
    let Some(name) = kernel_suffix(dtype) else {
        candle_core::bail!("no GPU kernel reads {dtype:?} blocks")
    };
    if !k.is_multiple_of(dtype.block_size()) || !k.is_multiple_of(8) {
        candle_core::bail!("{k} values per row are not whole {dtype:?} blocks");
    }
    let row_bytes = k / dtype.block_size() * dtype.type_size();
    let (_, width) = blocks.dims2()?;
    if blocks.dtype() != DType::U8
        || width != row_bytes
        || !blocks.is_contiguous()
        || !blocks.layout().start_offset().is_multiple_of(2)
    {
        candle_core::bail!(
            "expected contiguous u8 blocks [n, {row_bytes}] for {k} {dtype:?} values a row, got \
             {:?} {:?}",
            blocks.dtype(),
            blocks.dims()
        );
    }
    Ok((name, row_bytes))
}

struct MatmulBlocks {
    dtype: GgmlDType,
    name: &'static str,
    row_bytes: usize,
}

impl CustomOp2 for MatmulBlocks {
    fn name(&self) -> &'static str {
        "fleet-blocks-matmul"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("the {:?} blocks matmul is for CUDA devices", self.dtype)
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        x_l: &Layout,
        w: &CudaStorage,
        w_l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (m, k, n) = (x_l.dims()[0], x_l.dims()[1], w_l.dims()[0]);
        let bytes = w.as_cuda_slice::<u8>()?.slice(w_l.start_offset()..);
        let weight = WeightArg::Blocks { bytes, row_bytes: self.row_bytes as u64 };
        let names = Kernels {
            wide: format!("gemm_q_bf16_{}", self.name),
            narrow: format!("gemm_q_narrow_bf16_{}", self.name),
        };
        let out = tiles::<half::bf16>(x, x_l, (m, k, n), &names, &weight)?;
        Ok((out, Shape::from((m, n))))
    }
}

/// `x W^T` for bf16 `x` `[m, k]` and W `[n, k]` held as `dtype` blocks `[n, row bytes]`
/// (u8): the invariant matmul's order of summing, each block dequantized as the CPU does,
/// so the result is the bits [`super::matmul_xwt`] gives on W dequantized to bf16. Small
/// steps dequantize inside the tiles; from [`DEQUANTIZE_FROM_ROWS`] rows W is dequantized
/// first.
pub fn matmul_blocks(x: &Tensor, blocks: &Tensor, dtype: GgmlDType) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    if m >= DEQUANTIZE_FROM_ROWS {
        let dense = dequantize_blocks(blocks, dtype, k)?;
        return super::matmul_xwt(x, &dense);
    }
    matmul_blocks_fused(x, blocks, dtype)
}

/// [`matmul_blocks`] with W's blocks dequantized inside the tiles, whatever the rows.
pub fn matmul_blocks_fused(x: &Tensor, blocks: &Tensor, dtype: GgmlDType) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    let (name, row_bytes) = check_blocks(blocks, dtype, k)?;
    // The kernel loads 8 activations (16 bytes) at once: a view starting elsewhere is copied.
    let x = x.contiguous()?;
    let x = if x.layout().start_offset().is_multiple_of(8) { x } else { x.copy()? };
    if x.dtype() != DType::BF16 {
        candle_core::bail!("the blocks matmul takes bf16 activations, not {:?}", x.dtype());
    }
    if m == 0 {
        return Tensor::zeros((0, blocks.dim(0)?), DType::BF16, x.device());
    }
    x.apply_op2_no_bwd(blocks, &MatmulBlocks { dtype, name, row_bytes })
}

/// Rows of W dequantized to bf16: rows `ids` in order (the op with two inputs: blocks and
/// ids), or all of them (one input).
struct DequantizedRows {
    name: &'static str,
    row_bytes: usize,
    k: usize,
}

impl DequantizedRows {
    fn launch(
        &self,
        w: &CudaStorage,
        w_l: &Layout,
        ids: Option<(&CudaStorage, &Layout)>,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = w.device().clone();
        let bytes = w.as_cuda_slice::<u8>()?.slice(w_l.start_offset()..);
        let (kernel, count) = match ids {
            Some((_, ids_l)) => ("rows_bf16", ids_l.dims()[0]),
            None => ("dequantize_bf16", w_l.dims()[0]),
        };
        let ids = ids.map(|(s, l)| s.as_cuda_slice::<u32>().map(|s| s.slice(l.start_offset()..)));
        let ids = ids.transpose()?;
        let func =
            dev.get_or_load_custom_func(&format!("{kernel}_{}", self.name), GEMM_MODULE, GEMM_PTX)?;
        // SAFETY: every element of the output is written by the kernel before use.
        let out = unsafe { dev.alloc::<half::bf16>(count * self.k)? };
        let (row_bytes, k) = (self.row_bytes as u64, self.k as u32);
        let mut b = func.builder();
        b.arg(&out).arg(&bytes);
        if let Some(ids) = &ids {
            b.arg(ids);
        }
        b.arg(&row_bytes).arg(&k);
        // SAFETY: `rows_blocks` and `dequantize_blocks` checked the blocks' shape, and every
        // id against their rows; block i reads row ids[i] (or row i) and writes row i of the
        // [count, k] output, k a multiple of 8 (16-byte stores into an aligned allocation).
        unsafe { b.launch(grid((count as u32, 1, 1), ROWS_THREADS)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((count, self.k))))
    }
}

impl CustomOp2 for DequantizedRows {
    fn name(&self) -> &'static str {
        "fleet-blocks-rows"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("reading rows of blocks this way is for CUDA devices")
    }

    fn cuda_fwd(
        &self,
        w: &CudaStorage,
        w_l: &Layout,
        ids: &CudaStorage,
        ids_l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.launch(w, w_l, Some((ids, ids_l)))
    }
}

impl CustomOp1 for DequantizedRows {
    fn name(&self) -> &'static str {
        "fleet-blocks-dequantize"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("dequantizing blocks this way is for CUDA devices")
    }

    fn cuda_fwd(&self, w: &CudaStorage, w_l: &Layout) -> Result<(CudaStorage, Shape)> {
        self.launch(w, w_l, None)
    }
}

/// Rows `ids` of W (`[n, k]` as `dtype` blocks, u8 `[n, row bytes]` on a CUDA device),
/// dequantized as the CPU does and rounded to bf16: `[ids, k]`.
pub fn rows_blocks(blocks: &Tensor, dtype: GgmlDType, k: usize, ids: &[u32]) -> Result<Tensor> {
    let (name, row_bytes) = check_blocks(blocks, dtype, k)?;
    let n = blocks.dim(0)?;
    if let Some(id) = ids.iter().find(|&&id| id as usize >= n) {
        candle_core::bail!("token id {id} is outside the vocabulary of {n}");
    }
    if ids.is_empty() {
        return Tensor::zeros((0, k), DType::BF16, blocks.device());
    }
    let ids = Tensor::new(ids, blocks.device())?;
    blocks.apply_op2_no_bwd(&ids, &DequantizedRows { name, row_bytes, k })
}

/// All of W (`[n, k]` as `dtype` blocks, u8 `[n, row bytes]` on a CUDA device) dequantized
/// as the CPU does and rounded to bf16: `[n, k]`.
pub fn dequantize_blocks(blocks: &Tensor, dtype: GgmlDType, k: usize) -> Result<Tensor> {
    let (name, row_bytes) = check_blocks(blocks, dtype, k)?;
    if blocks.dim(0)? == 0 {
        return Tensor::zeros((0, k), DType::BF16, blocks.device());
    }
    blocks.apply_op1_no_bwd(&DequantizedRows { name, row_bytes, k })
}
