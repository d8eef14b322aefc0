//! The paged-KV kernels (`paged.cu`) as candle custom ops: rotate-and-write, and attention.
#![allow(unsafe_code)] // Kernel launches are FFI; each op checks its bounds before launching.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr, PushKernelArg};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
};

use super::launch::{DevicePlan, MODULE, PTX, grid, suffix};
use crate::transformer::paged::{KERNEL_HEAD_DIMS, tile_rows};

/// The step's fused projection into rotated queries (the output) and the pool's slots.
struct RopeWrite<'a> {
    pool: &'a Tensor,
    plan: &'a DevicePlan,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    rope: super::Rotation,
}

impl CustomOp3 for RopeWrite<'_> {
    fn name(&self) -> &'static str {
        "fleet-paged-rope-write"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("paged KV is for CUDA devices")
    }

    fn cuda_fwd(
        &self,
        qkv: &CudaStorage,
        qkv_l: &Layout,
        cos: &CudaStorage,
        cos_l: &Layout,
        sin: &CudaStorage,
        sin_l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        fn launch<T: DeviceRepr + candle_core::cuda_backend::CudaDType + candle_core::WithDType>(
            op: &RopeWrite<'_>,
            (qkv, qkv_l): (&CudaStorage, &Layout),
            cos: CudaView<'_, f32>,
            sin: CudaView<'_, f32>,
        ) -> Result<CudaStorage> {
            let dev = qkv.device().clone();
            let name = format!("rope_write_{}", suffix(T::DTYPE)?);
            let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
            let (pool_storage, pool_l) = op.pool.storage_and_layout();
            let Storage::Cuda(pool) = &*pool_storage else {
                candle_core::bail!("the KV pool is not on CUDA")
            };
            let pool = pool.as_cuda_slice::<T>()?.slice(pool_l.start_offset()..);
            let values_offset = (op.pool.elem_count() / 2) as u64;
            let tokens = op.plan.tokens as u32;
            let row = qkv_l.dims()[1] as u32;
            let qkv = qkv.as_cuda_slice::<T>()?.slice(qkv_l.start_offset()..);
            let n = (tokens * op.heads * op.head_dim) as usize;
            // SAFETY: every element of the output is written by the kernel before use.
            let q_out = unsafe { dev.alloc::<T>(n)? };
            let (rot, interleaved) = (op.rope.dims as u32, op.rope.interleaved as u32);
            let mut b = func.builder();
            // The pool is written through a shared borrow: its storage is only touched on
            // this device's one stream, in order, and no other view of it is alive.
            b.arg(&q_out).arg(&pool).arg(&qkv).arg(&cos).arg(&sin).arg(&op.plan.data);
            b.arg(&values_offset).arg(&row).arg(&op.heads).arg(&op.kv_heads);
            b.arg(&op.head_dim).arg(&rot).arg(&interleaved);
            let cfg = grid((tokens, op.heads + op.kv_heads, 1), op.head_dim / 2);
            // SAFETY: `rope_write` checked the shapes: qkv rows hold every head, cos/sin
            // T rows of rot / 2, every slot of the plan is inside the pool, and each
            // thread touches one pair of one head of one token.
            unsafe { b.launch(cfg) }.w()?;
            Ok(CudaStorage::wrap_cuda_slice(q_out, dev))
        }
        let cos = cos.as_cuda_slice::<f32>()?.slice(cos_l.start_offset()..);
        let sin = sin.as_cuda_slice::<f32>()?.slice(sin_l.start_offset()..);
        let out = match qkv.dtype() {
            DType::F32 => launch::<f32>(self, (qkv, qkv_l), cos, sin)?,
            DType::F16 => launch::<half::f16>(self, (qkv, qkv_l), cos, sin)?,
            _ => launch::<half::bf16>(self, (qkv, qkv_l), cos, sin)?,
        };
        let shape = Shape::from((self.plan.tokens, self.heads as usize, self.head_dim as usize));
        Ok((out, shape))
    }
}

#[allow(clippy::too_many_arguments)]
pub fn rope_write(
    pool: &Tensor,
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    rope: super::Rotation,
    plan: &DevicePlan,
    kv_heads: usize,
    head_dim: usize,
) -> Result<Tensor> {
    let (t, row) = qkv.dims2()?;
    let heads = (row / head_dim).saturating_sub(2 * kv_heads);
    let half = rope.dims / 2;
    if t != plan.tokens
        || row != (heads + 2 * kv_heads) * head_dim
        || heads == 0
        || qkv.dtype() != pool.dtype()
        || !qkv.is_contiguous()
        || !head_dim.is_multiple_of(2)
        || rope.dims > head_dim
        || !rope.dims.is_multiple_of(2)
        || head_dim / 2 > 1024
    {
        candle_core::bail!(
            "paged KV: expected a contiguous {:?} [{}, (heads + 2 x {kv_heads}) x {head_dim}] \
             projection and rotary dims up to {head_dim}, got {:?} {:?} and {}",
            pool.dtype(),
            plan.tokens,
            qkv.dtype(),
            qkv.dims(),
            rope.dims
        );
    }
    for table in [cos, sin] {
        if table.dims() != [t, half] || table.dtype() != DType::F32 || !table.is_contiguous() {
            candle_core::bail!("paged KV: cos/sin must be contiguous f32 [{t}, {half}]");
        }
    }
    if plan.max_slot as usize >= pool.dim(1)? {
        candle_core::bail!("paged KV: slot {} outside the pool", plan.max_slot);
    }
    let op = RopeWrite {
        pool,
        plan,
        heads: heads as u32,
        kv_heads: kv_heads as u32,
        head_dim: head_dim as u32,
        rope,
    };
    qkv.apply_op3_no_bwd(cos, sin, &op)
}

/// Attention of the queries (the input) over the pool's keys and values.
struct Attend<'a> {
    pool: &'a Tensor,
    plan: &'a DevicePlan,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
}

impl CustomOp1 for Attend<'_> {
    fn name(&self) -> &'static str {
        "fleet-paged-attention"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("paged attention is for CUDA devices")
    }

    fn cuda_fwd(&self, q: &CudaStorage, q_l: &Layout) -> Result<(CudaStorage, Shape)> {
        fn launch<T: DeviceRepr + candle_core::cuda_backend::CudaDType + candle_core::WithDType>(
            op: &Attend<'_>,
            q: &CudaStorage,
            q_l: &Layout,
        ) -> Result<CudaStorage> {
            let dev = q.device().clone();
            // Tiles of one row (a decode step) take the kernel that keeps one row in
            // registers; both compute a row the same way, bit for bit.
            let rows = if op.plan.max_tile_rows <= 1 { 1 } else { tile_rows(op.head_dim as usize) };
            let name = format!("paged_attention_{}_d{}_r{rows}", suffix(T::DTYPE)?, op.head_dim);
            let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
            let (pool_storage, pool_l) = op.pool.storage_and_layout();
            let Storage::Cuda(pool) = &*pool_storage else {
                candle_core::bail!("the KV pool is not on CUDA")
            };
            let half = op.pool.elem_count() / 2;
            let all = pool.as_cuda_slice::<T>()?;
            let keys = all.slice(pool_l.start_offset()..pool_l.start_offset() + half);
            let values = all.slice(pool_l.start_offset() + half..);
            let q = q.as_cuda_slice::<T>()?.slice(q_l.start_offset()..);
            let tokens = op.plan.tokens as u32;
            // SAFETY: every element of the output is written by the kernel before use.
            let out = unsafe { dev.alloc::<T>((tokens * op.heads * op.head_dim) as usize)? };
            let scale = 1.0 / (op.head_dim as f32).sqrt();
            let mut b = func.builder();
            b.arg(&out).arg(&q).arg(&keys).arg(&values).arg(&op.plan.data);
            b.arg(&tokens).arg(&op.heads).arg(&op.kv_heads).arg(&scale);
            let cfg = grid((op.plan.tiles as u32, op.heads, 1), 128);
            // SAFETY: `attend` checked q's shape, the plan's slots against the pool and its
            // tiles against the kernel's rows; the kernel is built for this head_dim, and
            // the output holds T * heads * head_dim elements.
            unsafe { b.launch(cfg) }.w()?;
            Ok(CudaStorage::wrap_cuda_slice(out, dev))
        }
        let out = match q.dtype() {
            DType::F32 => launch::<f32>(self, q, q_l)?,
            DType::F16 => launch::<half::f16>(self, q, q_l)?,
            _ => launch::<half::bf16>(self, q, q_l)?,
        };
        let shape = Shape::from((self.plan.tokens, (self.heads * self.head_dim) as usize));
        Ok((out, shape))
    }
}

pub fn attend(
    pool: &Tensor,
    q: &Tensor,
    plan: &DevicePlan,
    kv_heads: usize,
    head_dim: usize,
) -> Result<Tensor> {
    let (t, heads, hd) = q.dims3()?;
    if t != plan.tokens || hd != head_dim || q.dtype() != pool.dtype() || !q.is_contiguous() {
        candle_core::bail!(
            "paged attention: expected contiguous {:?} queries [{}, heads, {head_dim}], got \
             {:?} {:?}",
            pool.dtype(),
            plan.tokens,
            q.dtype(),
            q.dims()
        );
    }
    if !KERNEL_HEAD_DIMS.contains(&head_dim) || !heads.is_multiple_of(kv_heads) {
        candle_core::bail!(
            "paged attention takes head_dim in {KERNEL_HEAD_DIMS:?} and heads a multiple of \
             kv_heads, not {head_dim} and {heads}/{kv_heads}"
        );
    }
    if plan.max_tile_rows > tile_rows(head_dim) {
        candle_core::bail!(
            "paged attention: a tile of {} rows, the kernel holds {}",
            plan.max_tile_rows,
            tile_rows(head_dim)
        );
    }
    let op = Attend {
        pool,
        plan,
        heads: heads as u32,
        kv_heads: kv_heads as u32,
        head_dim: head_dim as u32,
    };
    q.apply_op1_no_bwd(&op)
}
