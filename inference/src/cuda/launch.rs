//! What the CUDA ops share: the PTX of our kernels, the step plan in device memory, and the
//! dtype suffix of a kernel's name.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig};
use candle_core::{DType, Result, Storage, Tensor};

use crate::transformer::paged::StepPlan;

pub(super) const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/paged.ptx"));
pub(super) const MODULE: &str = "fleet_paged";
pub(super) const FUSED_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
pub(super) const FUSED_MODULE: &str = "fleet_fused";
pub(super) const GEMM_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/gemm.ptx"));
pub(super) const GEMM_MODULE: &str = "fleet_gemm";
/// Threads per block of the fused kernels (THREADS in fused.cu).
pub(super) const FUSED_THREADS: u32 = 256;

/// A step's plan in device memory.
#[derive(Debug)]
pub struct DevicePlan {
    pub(super) data: CudaSlice<u32>,
    pub(super) tokens: usize,
    /// Attention tiles, and tokens in the largest.
    pub(super) tiles: usize,
    pub(super) max_tile_rows: usize,
    /// Slots in the step's tables (bounds for the checks before each launch).
    pub(super) max_slot: u32,
}

pub fn upload(pool: &Tensor, plan: &StepPlan) -> Result<DevicePlan> {
    let (storage, _) = pool.storage_and_layout();
    let Storage::Cuda(cuda) = &*storage else { candle_core::bail!("the KV pool is not on CUDA") };
    let data = cuda.device().clone_htod(plan.data())?;
    let tokens = plan.tokens();
    let max_slot = plan.data()[..tokens].iter().copied().max().unwrap_or(0);
    Ok(DevicePlan {
        data,
        tokens,
        tiles: plan.tiles(),
        max_tile_rows: plan.max_tile_rows(),
        max_slot,
    })
}

/// A launch of `blocks` (x, y, z) blocks of `threads` threads each, no dynamic shared memory.
pub(super) fn grid(blocks: (u32, u32, u32), threads: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: blocks, block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

pub(super) fn suffix(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        other => candle_core::bail!("paged KV holds f32, f16 or bf16, not {other:?}"),
    })
}
