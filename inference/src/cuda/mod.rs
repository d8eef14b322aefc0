//! Paged KV memory on a CUDA device: per layer one pool `[2, slots, kv_heads, head_dim]`
//! (keys, then values) in the layout of [`crate::transformer::paged`], filled and attended
//! over by the kernels of `paged.cu`: per layer, one launch rotates the step's queries and
//! keys and writes keys and values to their slots, one attends, for every sequence at once.
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
}

#[cfg(feature = "cuda")]
#[allow(unsafe_code)] // Launching a kernel is FFI; each launch's bounds are checked before it.
mod imp {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::{
        CpuStorage, CudaStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Storage,
        Tensor,
    };

    use crate::transformer::paged::StepPlan;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/paged.ptx"));
    const MODULE: &str = "fleet_paged";
    const FUSED_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
    const FUSED_MODULE: &str = "fleet_fused";
    /// Threads per block of the fused kernels (THREADS in fused.cu).
    const FUSED_THREADS: u32 = 256;

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
            fn launch<
                T: DeviceRepr + candle_core::cuda_backend::CudaDType + candle_core::WithDType,
            >(
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
                let cfg = LaunchConfig {
                    grid_dim: (tokens, op.heads + op.kv_heads, 1),
                    block_dim: (op.head_dim / 2, 1, 1),
                    shared_mem_bytes: 0,
                };
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
            let shape =
                Shape::from((self.plan.tokens, self.heads as usize, self.head_dim as usize));
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
            fn launch<
                T: DeviceRepr + candle_core::cuda_backend::CudaDType + candle_core::WithDType,
            >(
                op: &Attend<'_>,
                q: &CudaStorage,
                q_l: &Layout,
            ) -> Result<CudaStorage> {
                let dev = q.device().clone();
                let name = format!("paged_attention_{}", suffix(T::DTYPE)?);
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
        if !head_dim.is_multiple_of(32) || head_dim > 256 || !heads.is_multiple_of(kv_heads) {
            candle_core::bail!(
                "paged attention takes head_dim a multiple of 32 up to 256 and heads a multiple \
                 of kv_heads, not {head_dim} and {heads}/{kv_heads}"
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

    struct AddRmsNorm {
        eps: f32,
    }

    impl CustomOp3 for AddRmsNorm {
        fn name(&self) -> &'static str {
            "fleet-add-rms-norm"
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
            candle_core::bail!("the fused add and RMSNorm is for CUDA devices")
        }

        fn cuda_fwd(
            &self,
            x: &CudaStorage,
            x_l: &Layout,
            y: &CudaStorage,
            y_l: &Layout,
            w: &CudaStorage,
            w_l: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            fn launch<
                T: DeviceRepr + candle_core::cuda_backend::CudaDType + candle_core::WithDType,
            >(
                eps: f32,
                (x, x_l): (&CudaStorage, &Layout),
                (y, y_l): (&CudaStorage, &Layout),
                (w, w_l): (&CudaStorage, &Layout),
            ) -> Result<CudaStorage> {
                let dev = x.device().clone();
                let name = format!("add_rms_norm_{}", suffix(T::DTYPE)?);
                let func = dev.get_or_load_custom_func(&name, FUSED_MODULE, FUSED_PTX)?;
                let (tokens, hidden) = (x_l.dims()[0] as u32, x_l.dims()[1] as u32);
                let xs = x.as_cuda_slice::<T>()?.slice(x_l.start_offset()..);
                let ys = y.as_cuda_slice::<T>()?.slice(y_l.start_offset()..);
                let ws = w.as_cuda_slice::<T>()?.slice(w_l.start_offset()..);
                // SAFETY: every element of the output is written by the kernel before use.
                let out = unsafe { dev.alloc::<T>(2 * (tokens * hidden) as usize)? };
                let mut b = func.builder();
                b.arg(&out).arg(&xs).arg(&ys).arg(&ws).arg(&tokens).arg(&hidden).arg(&eps);
                let cfg = LaunchConfig {
                    grid_dim: (tokens, 1, 1),
                    block_dim: (FUSED_THREADS, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: `add_rms_norm` checked that x and y are contiguous [T, H] and w [H];
                // block t touches row t of each and of both output halves.
                unsafe { b.launch(cfg) }.w()?;
                Ok(CudaStorage::wrap_cuda_slice(out, dev))
            }
            let (x, y, w) = ((x, x_l), (y, y_l), (w, w_l));
            let out = match x.0.dtype() {
                DType::F32 => launch::<f32>(self.eps, x, y, w)?,
                DType::F16 => launch::<half::f16>(self.eps, x, y, w)?,
                _ => launch::<half::bf16>(self.eps, x, y, w)?,
            };
            let dims = x.1.dims();
            Ok((out, Shape::from((2, dims[0], dims[1]))))
        }
    }

    pub fn add_rms_norm(x: &Tensor, y: &Tensor, w: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
        let (t, h) = x.dims2()?;
        let same = y.dims() == [t, h] && w.dims() == [h];
        let dtypes = y.dtype() == x.dtype() && w.dtype() == x.dtype();
        if !same || !dtypes || !x.is_contiguous() || !y.is_contiguous() || !w.is_contiguous() {
            candle_core::bail!(
                "add_rms_norm: expected contiguous [T, H] x and y and [H] w of one dtype, got \
                 {:?} {:?}, {:?} {:?}, {:?} {:?}",
                x.dims(),
                x.dtype(),
                y.dims(),
                y.dtype(),
                w.dims(),
                w.dtype()
            );
        }
        let out = x.apply_op3_no_bwd(y, w, &AddRmsNorm { eps })?;
        Ok((out.get(0)?, out.get(1)?))
    }

    struct SiluMul;

    impl CustomOp1 for SiluMul {
        fn name(&self) -> &'static str {
            "fleet-silu-mul"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            candle_core::bail!("the fused SiLU and product is for CUDA devices")
        }

        fn cuda_fwd(&self, gu: &CudaStorage, gu_l: &Layout) -> Result<(CudaStorage, Shape)> {
            fn launch<
                T: DeviceRepr + candle_core::cuda_backend::CudaDType + candle_core::WithDType,
            >(
                gu: &CudaStorage,
                gu_l: &Layout,
            ) -> Result<CudaStorage> {
                let dev = gu.device().clone();
                let name = format!("silu_mul_{}", suffix(T::DTYPE)?);
                let func = dev.get_or_load_custom_func(&name, FUSED_MODULE, FUSED_PTX)?;
                let (tokens, inter) = (gu_l.dims()[0] as u32, gu_l.dims()[1] as u32 / 2);
                let src = gu.as_cuda_slice::<T>()?.slice(gu_l.start_offset()..);
                // SAFETY: every element of the output is written by the kernel before use.
                let out = unsafe { dev.alloc::<T>((tokens * inter) as usize)? };
                let mut b = func.builder();
                b.arg(&out).arg(&src).arg(&inter);
                let cfg = LaunchConfig {
                    grid_dim: (tokens, 1, 1),
                    block_dim: (FUSED_THREADS, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: `silu_mul` checked the input is contiguous [T, 2I]; block t reads
                // row t and writes row t of the [T, I] output.
                unsafe { b.launch(cfg) }.w()?;
                Ok(CudaStorage::wrap_cuda_slice(out, dev))
            }
            let out = match gu.dtype() {
                DType::F32 => launch::<f32>(gu, gu_l)?,
                DType::F16 => launch::<half::f16>(gu, gu_l)?,
                _ => launch::<half::bf16>(gu, gu_l)?,
            };
            let dims = gu_l.dims();
            Ok((out, Shape::from((dims[0], dims[1] / 2))))
        }
    }

    pub fn silu_mul(gate_up: &Tensor) -> Result<Tensor> {
        let (_, width) = gate_up.dims2()?;
        if !width.is_multiple_of(2) || !gate_up.is_contiguous() {
            candle_core::bail!("silu_mul: expected a contiguous [T, 2I], got {:?}", gate_up.dims());
        }
        gate_up.apply_op1_no_bwd(&SiluMul)
    }
}
