//! `x W^T` with a fixed order of summing (`gemm.cu`) as a candle custom op: the GPU
//! projections whose result must not depend on how many rows share the step.
#![allow(unsafe_code)] // Kernel launches are FFI; the op checks its bounds before launching.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaDevice;
use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, DeviceRepr, LaunchArgs, PushKernelArg,
};
use candle_core::{CpuStorage, CudaStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::launch::{GEMM_MODULE, GEMM_PTX, grid, suffix};

/// Columns of `in` per chunk (CHUNK in gemm.cu).
const CHUNK: usize = 256;
/// Rows and outputs per block (TILE in gemm.cu).
const TILE: usize = 64;
/// From this many 64 x 64 tiles on (two per SM of an H100), a block walks every chunk;
/// below, a block takes one chunk and a second launch adds them: the same sums in the same
/// order, only the parallelism differs.
const WALK_ALL_FROM_TILES: usize = 264;
/// Most bytes of per-chunk partial sums at once; larger steps are cut into row slices.
const PARTIAL_BYTES: usize = 64 << 20;
/// Steps of up to this many rows run on the narrow kernel (NARROW_ROWS in gemm.cu): the
/// same sums, W streamed a chunk per warp.
const NARROW_ROWS: usize = 16;
/// Outputs per block of the narrow kernel (4 warps of 16).
const NARROW_TILE: usize = 64;

struct MatmulXwt;

impl CustomOp2 for MatmulXwt {
    fn name(&self) -> &'static str {
        "fleet-invariant-matmul"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("the invariant matmul is for CUDA devices")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        x_l: &Layout,
        w: &CudaStorage,
        w_l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        fn launch<T: DeviceRepr + candle_core::cuda_backend::CudaDType + candle_core::WithDType>(
            (x, x_l): (&CudaStorage, &Layout),
            (w, w_l): (&CudaStorage, &Layout),
        ) -> Result<CudaStorage> {
            let ws = w.as_cuda_slice::<T>()?.slice(w_l.start_offset()..);
            let names = Kernels {
                wide: format!("gemm_xwt_{}", suffix(T::DTYPE)?),
                narrow: format!("gemm_xwt_narrow_{}", suffix(T::DTYPE)?),
            };
            let (m, k, n) = (x_l.dims()[0], x_l.dims()[1], w_l.dims()[0]);
            tiles::<T>(x, x_l, (m, k, n), &names, &WeightArg::Dense(ws))
        }
        let out = match x.dtype() {
            DType::F16 => launch::<half::f16>((x, x_l), (w, w_l))?,
            _ => launch::<half::bf16>((x, x_l), (w, w_l))?,
        };
        Ok((out, Shape::from((x_l.dims()[0], w_l.dims()[0]))))
    }
}

/// How the kernel reads W: dense rows of the activations' type, or GGUF blocks.
pub(super) enum WeightArg<'a, T> {
    Dense(CudaView<'a, T>),
    Blocks { bytes: CudaView<'a, u8>, row_bytes: u64 },
}

/// W's arguments to the tile kernel: its rows, and for blocks the bytes a row takes.
fn push_weight<'a, 'c: 'a, T>(b: &mut LaunchArgs<'a>, w: &'a WeightArg<'c, T>) {
    match w {
        WeightArg::Dense(ws) => {
            b.arg(ws);
        }
        WeightArg::Blocks { bytes, row_bytes } => {
            b.arg(bytes).arg(row_bytes);
        }
    }
}

/// The tile kernels of one weight form (gemm.cu): 64-row tiles, and the narrow one for
/// steps of up to [`NARROW_ROWS`] rows. Both sum in one order, so their rows are the same
/// bits.
pub(super) struct Kernels {
    pub(super) wide: String,
    pub(super) narrow: String,
}

/// `x W^T` by the tile kernels `gemm` (gemm.cu) over `x` `[m, k]` and `W` `[n, k]`: the
/// narrow kernel for a few rows, else one launch where the tiles are many, else one chunk
/// per block; with one chunk per block, `sum_chunks` adds them.
pub(super) fn tiles<
    T: DeviceRepr + candle_core::cuda_backend::CudaDType + candle_core::WithDType,
>(
    x: &CudaStorage,
    x_l: &Layout,
    (m, k, n): (usize, usize, usize),
    gemm: &Kernels,
    w: &WeightArg<'_, T>,
) -> Result<CudaStorage> {
    let dev = x.device().clone();
    let chunks = k.div_ceil(CHUNK);
    let tiles = m.div_ceil(TILE) * n.div_ceil(TILE);
    let xs = x.as_cuda_slice::<T>()?.slice(x_l.start_offset()..);
    // SAFETY: every element of the output is written (by the matmul when a block walks
    // every chunk, else by the sum) before use.
    let mut out = unsafe { dev.alloc::<T>(m * n)? };
    let (nu, ku) = (n as u32, k as u32);
    if m <= NARROW_ROWS && (chunks == 1 || chunks * m * n * 4 <= PARTIAL_BYTES) {
        let narrow = dev.get_or_load_custom_func(&gemm.narrow, GEMM_MODULE, GEMM_PTX)?;
        // SAFETY: with several chunks, each chunk's m * n sums are written before the sum
        // reads them.
        let partial = unsafe { dev.alloc::<f32>(if chunks == 1 { 1 } else { chunks * m * n })? };
        let mu = m as u32;
        let mut b = narrow.builder();
        b.arg(&out).arg(&partial).arg(&xs);
        push_weight(&mut b, w);
        b.arg(&mu).arg(&nu).arg(&ku);
        let cfg = grid((n.div_ceil(NARROW_TILE) as u32, chunks as u32, 1), 128);
        // SAFETY: as for the tile kernel below: x [m <= 16, k] and W's n rows of k checked
        // by the callers, k a multiple of 8, loads and stores bounded by m, n and k; block
        // (i, z) writes partial elements z * m * n + (r * n + c), r < m, c < n, only when
        // there are several chunks (the allocation then holds chunks * m * n).
        unsafe { b.launch(cfg) }.w()?;
        if chunks > 1 {
            sum_chunks::<T>(&dev, &mut out.slice_mut(..), &partial, m * n, chunks)?;
        }
        return Ok(CudaStorage::wrap_cuda_slice(out, dev));
    }
    let gemm = dev.get_or_load_custom_func(&gemm.wide, GEMM_MODULE, GEMM_PTX)?;
    if tiles >= WALK_ALL_FROM_TILES || chunks == 1 {
        let (mu, per_block) = (m as u32, chunks as u32);
        let mut b = gemm.builder();
        b.arg(&out).arg(&out).arg(&xs);
        push_weight(&mut b, w);
        b.arg(&mu).arg(&nu).arg(&ku).arg(&per_block);
        let cfg = grid((m.div_ceil(TILE) as u32, n.div_ceil(TILE) as u32, 1), 128);
        // SAFETY: the callers checked x [m, k] and W's n rows of k contiguous, k a multiple
        // of 8 and x's start 16-byte aligned (the kernel loads 8 elements at once); loads
        // and stores are bounded by m, n and k. With one chunk group the kernel never
        // touches `partial`.
        unsafe { b.launch(cfg) }.w()?;
        return Ok(CudaStorage::wrap_cuda_slice(out, dev));
    }
    // Row slices whose partial sums fit the budget, in whole tiles.
    let slice = (PARTIAL_BYTES / (chunks * n * 4)).max(TILE) / TILE * TILE;
    // SAFETY: each slice's groups * rows * n elements are written by its blocks before the
    // sum reads them.
    let partial = unsafe { dev.alloc::<f32>(chunks * slice.min(m) * n)? };
    for start in (0..m).step_by(slice) {
        let rows = slice.min(m - start);
        let x_rows = xs.slice(start * k..);
        let mut out_rows = out.slice_mut(start * n..);
        let (mu, one) = (rows as u32, 1u32);
        let mut b = gemm.builder();
        b.arg(&mut out_rows).arg(&partial).arg(&x_rows);
        push_weight(&mut b, w);
        b.arg(&mu).arg(&nu).arg(&ku).arg(&one);
        let cfg = grid((rows.div_ceil(TILE) as u32, n.div_ceil(TILE) as u32, chunks as u32), 128);
        // SAFETY: as above, for `rows` rows from `start`; block z writes partial elements
        // z * rows * n + i, i < rows * n, inside the allocation.
        unsafe { b.launch(cfg) }.w()?;
        sum_chunks::<T>(&dev, &mut out_rows, &partial, rows * n, chunks)?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// `out[i]` = the `groups` partial sums of element `i` (`mn` elements a group) added in
/// group order.
fn sum_chunks<T: DeviceRepr + candle_core::cuda_backend::CudaDType + candle_core::WithDType>(
    dev: &CudaDevice,
    out: &mut CudaViewMut<'_, T>,
    partial: &CudaSlice<f32>,
    mn: usize,
    groups: usize,
) -> Result<()> {
    let sum = dev.get_or_load_custom_func(
        &format!("sum_chunks_{}", suffix(T::DTYPE)?),
        GEMM_MODULE,
        GEMM_PTX,
    )?;
    let (mn_u, groups_u) = (mn as u64, groups as u32);
    let mut b = sum.builder();
    b.arg(out).arg(partial).arg(&mn_u).arg(&groups_u);
    let cfg = grid((mn.div_ceil(256) as u32, 1, 1), 256);
    // SAFETY: thread i reads partial[z * mn + i] for z < groups and writes out[i], i < mn;
    // the callers allocated both that large.
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}

/// Whether [`matmul_xwt`] takes `x` and `w`: f16 or bf16 alike, `in` a multiple of 8.
pub fn supports(x: &Tensor, w: &Tensor) -> bool {
    matches!(x.dtype(), DType::F16 | DType::BF16)
        && x.dtype() == w.dtype()
        && x.dims().len() == 2
        && w.dims().len() == 2
        && x.dims()[1] == w.dims()[1]
        && x.dims()[1].is_multiple_of(8)
}

pub fn matmul_xwt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    // The kernel loads 8 elements (16 bytes) at once: a view starting elsewhere is copied.
    let aligned = |t: &Tensor| -> Result<Tensor> {
        let t = t.contiguous()?;
        if t.layout().start_offset().is_multiple_of(8) { Ok(t) } else { t.copy() }
    };
    let (x, w) = (aligned(x)?, aligned(w)?);
    if !supports(&x, &w) {
        candle_core::bail!(
            "the invariant matmul takes f16 or bf16 x [m, k] and W [n, k] alike, k a multiple \
             of 8, not {:?} {:?} and {:?} {:?}",
            x.dtype(),
            x.dims(),
            w.dtype(),
            w.dims()
        );
    }
    if x.dim(0)? == 0 {
        return Tensor::zeros((0, w.dim(0)?), x.dtype(), x.device());
    }
    x.apply_op2_no_bwd(&w, &MatmulXwt)
}
