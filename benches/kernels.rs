//! Quantized matmul kernels: `fleet_inference::kernels::QuantMatrix` against candle's
//! `QMatMul` and candle's f32 matmul, on Qwen2.5-0.5B shapes with Q8_0 weights (or another
//! GGUF type), for 1, 8, 32 and 512 activation rows; median time per call and the implied
//! weight streaming rate. The k-quants need `k` to be a multiple of 256, so they run on
//! `[896, 4864]` and `[4864, 1024]`.
//!
//! `cargo bench -p fleet-benches --bench kernels [-- --quick] [--dtype q4k]`
//!
//! With `--panel`: the f32 panel kernel of the encoders (`PanelMatrix`, AVX-512 only)
//! against candle's f32 matmul on all-MiniLM-L6-v2's four linear layers for a packed
//! batch's tokens (200 and 800); median time per call and GMAC/s.
//!
//! With `--attention`: the CPU attention (`attend_cpu`) instead, on SmolLM2-135M's heads
//! (9 query heads over 3 KV heads of 64), for a decode row and prompt chunks over contexts
//! of several lengths; median time per layer and per (row, head, position).
//!
//! Each call uses the next of several copies of the weights (≥ 96 MB of them, more than the
//! L3 cache), so weights come from DRAM as in a real decode step over 24 layers.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use fleet_inference::kernels::{DenseMatrix, QuantMatrix};

/// Weight bytes (of each kind) to rotate through so the caches cannot hold them.
const ROTATE_BYTES: usize = 96 << 20;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Median seconds of `f(i)` over at least 5 calls and about `budget` of time.
fn time<T>(budget: Duration, mut f: impl FnMut(usize) -> candle_core::Result<T>) -> Result<f64> {
    f(0)?;
    let (started, mut samples) = (Instant::now(), Vec::new());
    while samples.len() < 5 || (started.elapsed() < budget && samples.len() < 1000) {
        let t = Instant::now();
        f(samples.len() + 1)?;
        samples.push(t.elapsed().as_secs_f64());
    }
    Ok(median(samples))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    use GgmlDType::*;
    let known = [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K];
    let dtype = match args.iter().position(|a| a == "--dtype").and_then(|i| args.get(i + 1)) {
        Some(name) => *known
            .iter()
            .find(|d| format!("{d:?}").eq_ignore_ascii_case(name))
            .ok_or_else(|| anyhow::anyhow!("--dtype {name}: one of {known:?}"))?,
        None => Q8_0,
    };
    let budget = Duration::from_millis(if quick { 300 } else { 1500 });
    if args.iter().any(|a| a == "--attention") {
        return attention(budget);
    }
    if args.iter().any(|a| a == "--panel") {
        return panel(budget);
    }
    let d = &Device::Cpu;
    println!("threads: {} (RAYON_NUM_THREADS to change), weights {dtype:?}", rayon_threads());
    println!(
        "| weight [n×k] | m | ours ms | candle QMatMul ms | candle f32 ms | ours GB/s | vs QMatMul | vs f32 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let shapes: &[(usize, usize)] = if dtype.block_size() == 256 {
        &[(896, 4864), (4864, 1024)]
    } else {
        &[(4864, 896), (896, 4864), (151_936, 896)]
    };
    for &(n, k) in shapes {
        let q8_bytes = n * k / dtype.block_size() * dtype.type_size();
        let copies = ROTATE_BYTES.div_ceil(q8_bytes).max(1);
        let f32_copies = ROTATE_BYTES.div_ceil(n * k * 4).max(1);
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        let mut f32s = Vec::new();
        for c in 0..copies.max(f32_copies) {
            let w = Tensor::randn(0f32, 0.02, (n, k), d)?;
            if c < copies {
                let qt = QTensor::quantize(&w, dtype)?;
                ours.push(match dtype {
                    F32 => Ours::Dense(DenseMatrix::from_tensor(&w)?.context("f32 matrix")?),
                    F16 | BF16 => Ours::Dense(DenseMatrix::from_qtensor(&qt).context("half")?),
                    _ => Ours::Quant(QuantMatrix::from_qtensor(&qt)?),
                });
                theirs.push(QMatMul::from_qtensor(qt)?);
            }
            if c < f32_copies {
                f32s.push(w.t()?);
            }
        }
        for m in [1, 8, 32, 512] {
            let x = Tensor::randn(0f32, 1.0, (m, k), d)?;
            let t_ours = time(budget, |i| ours[i % copies].matmul(&x))?;
            // candle's quantized path needs minutes for the vocab projection of a long prefill.
            let slow = m * n >= 512 * 100_000;
            let t_theirs =
                if slow { f64::NAN } else { time(budget, |i| theirs[i % copies].forward(&x))? };
            let t_f32 =
                if slow { f64::NAN } else { time(budget, |i| x.matmul(&f32s[i % f32_copies]))? };
            println!(
                "| {n}×{k} | {m} | {:.3} | {:.3} | {:.3} | {:.1} | {:.1}× | {:.1}× |",
                t_ours * 1e3,
                t_theirs * 1e3,
                t_f32 * 1e3,
                q8_bytes as f64 / t_ours / 1e9,
                t_theirs / t_ours,
                t_f32 / t_ours,
            );
        }
    }
    Ok(())
}

/// Our matrix for the benchmarked dtype: the dense kernel for F32/F16/BF16, else blocks.
enum Ours {
    Dense(DenseMatrix),
    Quant(QuantMatrix),
}

impl Ours {
    fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Ours::Dense(m) => m.matmul(x),
            Ours::Quant(m) => m.matmul(x),
        }
    }
}

/// The panel kernel against candle's f32 matmul (with bias, as BERT's layers run) on
/// all-MiniLM-L6-v2's shapes: QKV fused, attention output, MLP up and down.
fn panel(budget: Duration) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    {
        use fleet_inference::kernels::PanelMatrix;
        let d = &Device::Cpu;
        println!("threads: {}; f32 weights [n×k] with bias", rayon_threads());
        println!(
            "| weight [n×k] | m | panel ms | candle ms | panel GMAC/s | candle GMAC/s | ratio |"
        );
        println!("|---|---|---|---|---|---|---|");
        for (n, k) in [(1152, 384), (384, 384), (1536, 384), (384, 1536)] {
            let w = Tensor::randn(0f32, 0.05, (n, k), d)?;
            let b = Tensor::randn(0f32, 0.05, n, d)?;
            let values = w.flatten_all()?.to_vec1::<f32>()?;
            let Some(ours) = PanelMatrix::new(&values, n, k, Some(&b.to_vec1::<f32>()?)) else {
                println!("this CPU has no AVX-512F: no panel kernel");
                return Ok(());
            };
            let linear = candle_nn::Linear::new(w, Some(b));
            for m in [200, 800] {
                let x = Tensor::randn(0f32, 1.0, (m, k), d)?;
                let t_ours = time(budget, |_| ours.forward(&x))?;
                let t_candle = time(budget, |_| linear.forward(&x))?;
                let gmac = (m * n * k) as f64 / 1e9;
                println!(
                    "| {n}×{k} | {m} | {:.3} | {:.3} | {:.1} | {:.1} | {:.2}× |",
                    t_ours * 1e3,
                    t_candle * 1e3,
                    gmac / t_ours,
                    gmac / t_candle,
                    t_candle / t_ours
                );
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = budget;
    Ok(())
}

/// `attend_cpu` for one sequence: `rows` new tokens after `cached` positions.
fn attention(budget: Duration) -> Result<()> {
    use fleet_inference::transformer::attention::{AttendJob, Scores, attend_cpu};
    let (heads, kv_heads, hd) = (9, 3, 64);
    println!("threads: {}; 9 query heads over 3 KV heads of 64", rayon_threads());
    println!("| rows | cached positions | µs per layer | ns per (row, head, position) |");
    println!("|---|---|---|---|");
    for (rows, cached) in [(1, 400), (1, 2000), (32, 0), (32, 400), (32, 2000), (256, 0)] {
        let capacity = cached + rows;
        let q = Tensor::randn(0f32, 1.0, (heads, rows, hd), &Device::Cpu)?;
        let keys = Tensor::randn(0f32, 1.0, (kv_heads, capacity, hd), &Device::Cpu)?;
        let values = Tensor::randn(0f32, 1.0, (kv_heads, capacity, hd), &Device::Cpu)?;
        let jobs = [AttendJob { token: 0, n: rows, pos: cached, keys, values }];
        let secs = time(budget, |_| attend_cpu(&q, &jobs, kv_heads, Scores::plain(hd)))?;
        // Row i sees cached + i + 1 positions.
        let seen = (rows * cached + rows * (rows + 1) / 2) * heads;
        println!("| {rows} | {cached} | {:.1} | {:.2} |", secs * 1e6, secs * 1e9 / seen as f64);
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
