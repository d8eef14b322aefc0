//! The fused elementwise kernels (`fused.cu`) as candle custom ops: residual add with
//! RMSNorm, and SiLU(gate) x up.
#![allow(unsafe_code)] // Kernel launches are FFI; each op checks its bounds before launching.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor,
};

use super::launch::{FUSED_MODULE, FUSED_PTX, FUSED_THREADS, grid, suffix};

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
        fn launch<T: DeviceRepr + candle_core::cuda_backend::CudaDType + candle_core::WithDType>(
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
            let cfg = grid((tokens, 1, 1), FUSED_THREADS);
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
        fn launch<T: DeviceRepr + candle_core::cuda_backend::CudaDType + candle_core::WithDType>(
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
            let cfg = grid((tokens, 1, 1), FUSED_THREADS);
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
