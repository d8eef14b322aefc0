//! Paged KV memory on a CUDA device: per layer one pool `[2, slots, kv_heads, head_dim]`
//! (keys, then values) in the layout of [`crate::transformer::paged`], written and attended
//! by the kernels of `paged.cu`, one launch each per layer for every sequence of the step.
//!
//! Without the `cuda` feature [`PagedKv::new`] fails and nothing else is reachable: the
//! decoder only asks for paged KV on a CUDA device.

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

use crate::transformer::paged::{BLOCK_SIZE, BlockPool, StepPlan};

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

    /// The step's plan on the device, read by every layer's kernels.
    pub fn upload(&self, plan: &StepPlan) -> Result<DevicePlan> {
        imp::upload(&self.layers[0], plan)
    }

    /// Writes this step's keys and values `[kv_heads, T, head_dim]` of `layer` into their
    /// slots.
    pub fn write(&self, layer: usize, k: &Tensor, v: &Tensor, plan: &DevicePlan) -> Result<()> {
        let pool = &self.layers[layer];
        imp::write(pool, k, 0, plan, self.kv_heads, self.head_dim)?;
        imp::write(pool, v, 1, plan, self.kv_heads, self.head_dim)
    }

    /// Attention of `q` `[heads, T, head_dim]` over the cached positions → `[T, heads *
    /// head_dim]`.
    pub fn attend(&self, layer: usize, q: &Tensor, plan: &DevicePlan) -> Result<Tensor> {
        imp::attend(&self.layers[layer], q, plan, self.kv_heads, self.head_dim)
    }
}

pub use imp::DevicePlan;

#[cfg(not(feature = "cuda"))]
mod imp {
    use candle_core::{Result, Tensor};

    use crate::transformer::paged::StepPlan;

    /// Never made without the `cuda` feature.
    #[derive(Debug)]
    pub enum DevicePlan {}

    pub fn upload(_: &Tensor, _: &StepPlan) -> Result<DevicePlan> {
        candle_core::bail!("this build has no CUDA support (build with --features cuda)")
    }

    pub fn write(_: &Tensor, _: &Tensor, _: u32, p: &DevicePlan, _: usize, _: usize) -> Result<()> {
        match *p {}
    }

    pub fn attend(_: &Tensor, _: &Tensor, p: &DevicePlan, _: usize, _: usize) -> Result<Tensor> {
        match *p {}
    }
}

#[cfg(feature = "cuda")]
#[allow(unsafe_code)] // Launching a kernel is FFI; each launch's bounds are checked before it.
mod imp {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::{
        CpuStorage, CudaStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Storage, Tensor,
    };

    use crate::transformer::paged::StepPlan;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/paged.ptx"));
    const MODULE: &str = "fleet_paged";

    /// A step's plan in device memory.
    #[derive(Debug)]
    pub struct DevicePlan {
        data: CudaSlice<u32>,
        tokens: usize,
        /// Slots in the step's tables (bounds for the checks before each launch).
        max_slot: u32,
    }

    pub fn upload(pool: &Tensor, plan: &StepPlan) -> Result<DevicePlan> {
        let (storage, _) = pool.storage_and_layout();
        let Storage::Cuda(cuda) = &*storage else {
            candle_core::bail!("the KV pool is not on CUDA")
        };
        let data = cuda.device().clone_htod(plan.data())?;
        let tokens = plan.tokens();
        let max_slot = plan.data()[..tokens].iter().copied().max().unwrap_or(0);
        Ok(DevicePlan { data, tokens, max_slot })
    }

    fn suffix(dtype: DType) -> Result<&'static str> {
        Ok(match dtype {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            other => candle_core::bail!("paged KV holds f32, f16 or bf16, not {other:?}"),
        })
    }

    /// Checks shared by both kernels: contiguous inputs of the pool's dtype, the step's
    /// shape, and slots inside the pool.
    fn check(pool: &Tensor, x: &Tensor, heads: usize, plan: &DevicePlan) -> Result<()> {
        let (h, t, _) = x.dims3()?;
        if h != heads || t != plan.tokens || x.dtype() != pool.dtype() || !x.is_contiguous() {
            candle_core::bail!(
                "paged KV: expected contiguous {:?} [{heads}, {}, hd], got {:?} {:?}",
                pool.dtype(),
                plan.tokens,
                x.dtype(),
                x.dims()
            );
        }
        if plan.max_slot as usize >= pool.dim(1)? {
            candle_core::bail!("paged KV: slot {} outside the pool", plan.max_slot);
        }
        Ok(())
    }

    struct WriteKv<'a> {
        plan: &'a DevicePlan,
        part: usize,
        kv_heads: u32,
        head_dim: u32,
    }

    impl InplaceOp2 for WriteKv<'_> {
        fn name(&self) -> &'static str {
            "fleet-paged-write-kv"
        }

        fn cpu_fwd(
            &self,
            _: &mut CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<()> {
            candle_core::bail!("paged KV is for CUDA devices")
        }

        fn cuda_fwd(
            &self,
            dst: &mut CudaStorage,
            dst_l: &Layout,
            src: &CudaStorage,
            src_l: &Layout,
        ) -> Result<()> {
            fn launch<T: DeviceRepr + candle_core::cuda_backend::CudaDType>(
                op: &WriteKv<'_>,
                dst: &mut CudaStorage,
                dst_l: &Layout,
                src: &CudaStorage,
                src_l: &Layout,
                name: &str,
            ) -> Result<()> {
                let dev = dst.device().clone();
                let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
                let part = dst_l.shape().elem_count() / 2;
                let pool = dst.as_cuda_slice_mut::<T>()?;
                let mut pool = pool.slice_mut(dst_l.start_offset() + op.part * part..);
                let src = src.as_cuda_slice::<T>()?.slice(src_l.start_offset()..);
                let tokens = op.plan.tokens as u32;
                let mut b = func.builder();
                b.arg(&mut pool).arg(&src).arg(&op.plan.data);
                b.arg(&tokens).arg(&op.kv_heads).arg(&op.head_dim);
                let cfg = LaunchConfig {
                    grid_dim: (tokens, 1, 1),
                    block_dim: (op.kv_heads * op.head_dim, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: `write` checked the shapes: `src` holds kv_heads * T * head_dim
                // elements, every slot in the plan is inside the pool's half being written,
                // and one thread per element stays inside both.
                unsafe { b.launch(cfg) }.w()?;
                Ok(())
            }
            let name = format!("write_kv_{}", suffix(dst.dtype())?);
            match dst.dtype() {
                DType::F32 => launch::<f32>(self, dst, dst_l, src, src_l, &name),
                DType::F16 => launch::<half::f16>(self, dst, dst_l, src, src_l, &name),
                _ => launch::<half::bf16>(self, dst, dst_l, src, src_l, &name),
            }
        }
    }

    pub fn write(
        pool: &Tensor,
        x: &Tensor,
        part: usize,
        plan: &DevicePlan,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<()> {
        check(pool, x, kv_heads, plan)?;
        if kv_heads * head_dim > 1024 {
            candle_core::bail!("paged KV: {kv_heads} x {head_dim} values per token exceed a block");
        }
        let op = WriteKv { plan, part, kv_heads: kv_heads as u32, head_dim: head_dim as u32 };
        pool.inplace_op2(x, &op)
    }

    struct Attend<'a> {
        plan: &'a DevicePlan,
        heads: u32,
        kv_heads: u32,
        head_dim: u32,
    }

    impl InplaceOp3 for Attend<'_> {
        fn name(&self) -> &'static str {
            "fleet-paged-attention"
        }

        fn cpu_fwd(
            &self,
            _: &mut CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<()> {
            candle_core::bail!("paged attention is for CUDA devices")
        }

        fn cuda_fwd(
            &self,
            dst: &mut CudaStorage,
            _: &Layout,
            q: &CudaStorage,
            q_l: &Layout,
            pool: &CudaStorage,
            pool_l: &Layout,
        ) -> Result<()> {
            fn launch<T: DeviceRepr + candle_core::cuda_backend::CudaDType>(
                op: &Attend<'_>,
                out: &mut CudaStorage,
                q: (&CudaStorage, &Layout),
                pool: (&CudaStorage, &Layout),
                name: &str,
            ) -> Result<()> {
                let dev = out.device().clone();
                let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
                let half = pool.1.shape().elem_count() / 2;
                let all = pool.0.as_cuda_slice::<T>()?;
                let keys = all.slice(pool.1.start_offset()..pool.1.start_offset() + half);
                let values = all.slice(pool.1.start_offset() + half..);
                let q = q.0.as_cuda_slice::<T>()?.slice(q.1.start_offset()..);
                let out = out.as_cuda_slice_mut::<T>()?;
                let tokens = op.plan.tokens as u32;
                let scale = 1.0 / (op.head_dim as f32).sqrt();
                let mut b = func.builder();
                b.arg(out).arg(&q).arg(&keys).arg(&values).arg(&op.plan.data);
                b.arg(&tokens).arg(&op.heads).arg(&op.kv_heads).arg(&op.head_dim).arg(&scale);
                let cfg = LaunchConfig {
                    grid_dim: (tokens, op.heads, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: `attend` checked q's shape and the plan's slots against the pool;
                // head_dim is a multiple of 32 of at most 256 (the kernel's per-lane arrays),
                // and the output holds T * heads * head_dim elements.
                unsafe { b.launch(cfg) }.w()?;
                Ok(())
            }
            let name = format!("paged_attention_{}", suffix(dst.dtype())?);
            match dst.dtype() {
                DType::F32 => launch::<f32>(self, dst, (q, q_l), (pool, pool_l), &name),
                DType::F16 => launch::<half::f16>(self, dst, (q, q_l), (pool, pool_l), &name),
                _ => launch::<half::bf16>(self, dst, (q, q_l), (pool, pool_l), &name),
            }
        }
    }

    pub fn attend(
        pool: &Tensor,
        q: &Tensor,
        plan: &DevicePlan,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<Tensor> {
        let heads = q.dim(0)?;
        check(pool, q, heads, plan)?;
        if !head_dim.is_multiple_of(32) || head_dim > 256 || !heads.is_multiple_of(kv_heads) {
            candle_core::bail!(
                "paged attention takes head_dim a multiple of 32 up to 256 and heads a multiple \
                 of kv_heads, not {head_dim} and {heads}/{kv_heads}"
            );
        }
        let out = Tensor::zeros((plan.tokens, heads * head_dim), q.dtype(), q.device())?;
        let op = Attend {
            plan,
            heads: heads as u32,
            kv_heads: kv_heads as u32,
            head_dim: head_dim as u32,
        };
        out.inplace_op3(q, pool, &op)?;
        Ok(out)
    }
}
