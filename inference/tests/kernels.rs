//! `kernels::QuantMatrix` against candle's `QMatMul` on the same `QTensor`.
//!
//! Tolerance: both sides quantize each activation block to the same int8 values
//! (`round(x / d)`, `d = max|x| / 127`), so the integer dot products are identical. What
//! differs is that candle stores the activation scale `d` as f16 (relative rounding ≤ 2⁻¹¹
//! ≈ 4.9e-4 per block) where we keep f32, plus f32 summation order (~1e-6 relative). So
//! each output may differ by at most about 4.9e-4 · Σⱼ|Wᵢⱼ|·|xⱼ|; we allow 1e-3 of that sum.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use fleet_inference::Error;
use fleet_inference::kernels::QuantMatrix;
use fleet_inference::transformer::fixture;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Deterministic pseudo-random values in [-scale, scale), with a few outliers (every 97th
/// value 8 times larger).
fn values(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut v = fixture::noise(len, seed, scale);
    for x in v.iter_mut().step_by(97) {
        *x *= 8.0;
    }
    v
}

fn q8_weights(n: usize, k: usize, seed: u64) -> Result<QTensor> {
    let w = Tensor::from_vec(values(n * k, seed, 0.05), (n, k), &Device::Cpu)?;
    Ok(QTensor::quantize(&w, GgmlDType::Q8_0)?)
}

/// Checks ours against candle for `m` rows; returns the largest error relative to the bound.
fn check(qt: &Arc<QTensor>, m: usize, seed: u64) -> Result<f32> {
    let (n, k) = qt.shape().dims2()?;
    let x = Tensor::from_vec(values(m * k, seed, 1.0), (m, k), &Device::Cpu)?;
    let ours = QuantMatrix::from_qtensor(qt)?.matmul(&x)?;
    assert_eq!(ours.dims(), &[m, n]);
    let theirs = QMatMul::from_arc(qt.clone())?.forward(&x)?;
    let bound = x.abs()?.matmul(&qt.dequantize(&Device::Cpu)?.abs()?.t()?)?;
    let (ours, theirs, bound) =
        (ours.to_vec2::<f32>()?, theirs.to_vec2::<f32>()?, bound.to_vec2::<f32>()?);
    let mut worst = 0f32;
    for a in 0..m {
        for i in 0..n {
            let allowed = 1e-3 * bound[a][i] + 1e-6;
            let diff = (ours[a][i] - theirs[a][i]).abs();
            assert!(
                diff <= allowed,
                "m={m} n={n} k={k} [{a},{i}]: {} vs {}",
                ours[a][i],
                theirs[a][i]
            );
            worst = worst.max(diff / allowed);
        }
    }
    Ok(worst)
}

#[test]
fn q8_0_matches_candle_qmatmul() -> Result<()> {
    for (n, k) in [(67, 896), (133, 4864), (1001, 896)] {
        let qt = Arc::new(q8_weights(n, k, n as u64)?);
        for m in [1, 3, 8, 32, 100] {
            let worst = check(&qt, m, (m * 31 + k) as u64)?;
            eprintln!("n={n} k={k} m={m}: worst error {:.3} of the allowed", worst);
        }
    }
    Ok(())
}

#[test]
fn batched_rows_equal_single_rows() -> Result<()> {
    // Each output row must not depend on which other rows share the call (tiles, threads,
    // packed values unpacked once for many rows or in registers for one): bit for bit.
    let (n, k) = (203, 1024);
    let w = Tensor::from_vec(values(n * k, 7, 0.05), (n, k), &Device::Cpu)?;
    for dtype in fleet_inference::kernels::SUPPORTED {
        let qm = QuantMatrix::from_qtensor(&QTensor::quantize(&w, dtype)?)?;
        let x = values(37 * k, 11, 1.0);
        let mut all = vec![0f32; 37 * n];
        qm.matmul_slice(&x, &mut all)?;
        for (a, row) in x.chunks_exact(k).enumerate() {
            let mut one = vec![0f32; n];
            qm.matmul_slice(row, &mut one)?;
            for (i, (p, q)) in one.iter().zip(&all[a * n..(a + 1) * n]).enumerate() {
                assert_eq!(p.to_bits(), q.to_bits(), "{dtype:?} row {a} col {i}: {p} vs {q}");
            }
        }
    }
    Ok(())
}

#[test]
fn leading_dims_and_bytes() -> Result<()> {
    let qt = q8_weights(40, 64, 3)?;
    let qm = QuantMatrix::from_qtensor(&qt)?;
    assert_eq!((qm.rows(), qm.cols(), qm.dtype()), (40, 64, GgmlDType::Q8_0));
    assert_eq!(qm.bytes(), qt.storage_size_in_bytes());
    let x = Tensor::from_vec(values(2 * 3 * 64, 5, 1.0), (2, 3, 64), &Device::Cpu)?;
    let y = qm.matmul(&x)?;
    assert_eq!(y.dims(), &[2, 3, 40]);
    let flat = qm.matmul(&x.reshape((6, 64))?)?;
    assert_eq!(y.reshape((6, 40))?.to_vec2::<f32>()?, flat.to_vec2::<f32>()?);
    // A zero row gives zeros (no division by a zero scale).
    let z = qm.matmul(&Tensor::zeros((1, 64), candle_core::DType::F32, &Device::Cpu)?)?;
    assert!(z.flatten_all()?.to_vec1::<f32>()?.iter().all(|&v| v == 0.0));
    Ok(())
}

#[test]
fn unsupported_weights_are_an_error() -> Result<()> {
    let w = Tensor::from_vec(values(8 * 256, 1, 0.1), (8, 256), &Device::Cpu)?;
    for dtype in [GgmlDType::F32, GgmlDType::F16, GgmlDType::BF16, GgmlDType::Q8_1] {
        let qt = QTensor::quantize(&w, dtype)?;
        let err = QuantMatrix::from_qtensor(&qt).expect_err("not a block type of ours");
        assert!(matches!(err, Error::UnsupportedWeights(_)), "{err}");
    }
    let qt = QTensor::quantize(&w.reshape((2, 4, 256))?, GgmlDType::Q8_0)?;
    assert!(matches!(QuantMatrix::from_qtensor(&qt), Err(Error::UnsupportedWeights(_))));
    Ok(())
}

#[test]
fn shape_mismatch_is_an_error() -> Result<()> {
    let qm = QuantMatrix::from_qtensor(&q8_weights(16, 64, 2)?)?;
    assert!(qm.matmul(&Tensor::zeros((2, 32), candle_core::DType::F32, &Device::Cpu)?).is_err());
    assert!(qm.matmul(&Tensor::zeros((2, 64), candle_core::DType::F64, &Device::Cpu)?).is_err());
    let x = vec![0f32; 2 * 64];
    assert!(qm.matmul_slice(&x, &mut [0f32; 31]).is_err());
    assert!(qm.matmul_slice(&x[..70], &mut [0f32; 32]).is_err());
    assert!(qm.matmul_slice(&x, &mut [0f32; 32]).is_ok());
    Ok(())
}

/// Q4_0 and Q5_0 blocks become Q8_0 blocks holding exactly the same values.
#[test]
fn q4_0_and_q5_0_repack_exactly_into_q8_0() -> Result<()> {
    use fleet_inference::kernels::repack::to_q8_0;
    let w = Tensor::randn(0f32, 1.0, (48, 256), &Device::Cpu)?;
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q5_0] {
        let qt = QTensor::quantize(&w, dtype)?;
        let repacked = to_q8_0(&qt)?;
        assert_eq!(repacked.dtype(), GgmlDType::Q8_0);
        let (a, b) = (qt.dequantize(&Device::Cpu)?, repacked.dequantize(&Device::Cpu)?);
        let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "{dtype:?} changed values when repacked");
    }
    let q6 = QTensor::quantize(&w, GgmlDType::Q6K)?;
    assert!(matches!(to_q8_0(&q6), Err(Error::UnsupportedWeights(_))));
    Ok(())
}

/// Every type our kernels take, against candle's dequantize-then-matmul in f64 (within the
/// activation quantization's error: half a step of each block's scale, `|w|·max|x_block|/254`
/// per value, with blocks of 32 activations for the classic types and 256 for the
/// k-quants) and, for the classic types, against candle's `QMatMul` (which quantizes
/// activations the same way; for the k-quants its int8 rounding differs from ours), for odd
/// shapes and batch sizes 1 to 512.
#[test]
fn every_supported_type_matches_candle() -> Result<()> {
    use fleet_inference::kernels::SUPPORTED;
    for dtype in SUPPORTED {
        let k_quant = dtype.block_size() == 256;
        let act_block = if k_quant { 256 } else { 32 };
        let shapes = if k_quant {
            [(67, 1280), (133, 768), (5, 256)]
        } else {
            [(67, 896), (133, 576), (5, 32)]
        };
        for (n, k) in shapes {
            let w = Tensor::from_vec(values(n * k, (n * k) as u64, 0.05), (n, k), &Device::Cpu)?;
            let qt = Arc::new(QTensor::quantize(&w, dtype)?);
            let qm = QuantMatrix::from_qtensor(&qt)?;
            assert_eq!(qm.dtype(), dtype);
            let dense = qt.dequantize(&Device::Cpu)?.to_vec2::<f32>()?;
            for m in [1, 3, 8, 32, 512] {
                if !k_quant {
                    let worst = check(&qt, m, (m * 7 + n) as u64)?;
                    assert!(worst <= 1.0, "{dtype:?}");
                }
                let x = values(m * k, (m + k) as u64, 1.0);
                let mut ours = vec![0f32; m * n];
                qm.matmul_slice(&x, &mut ours)?;
                for a in 0..m {
                    for i in 0..n {
                        let xs = &x[a * k..(a + 1) * k];
                        let exact: f64 =
                            xs.iter().zip(&dense[i]).map(|(x, w)| f64::from(x * w)).sum();
                        let bound: f64 = xs
                            .chunks(act_block)
                            .zip(dense[i].chunks(act_block))
                            .map(|(x, w)| {
                                let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
                                w.iter().map(|w| f64::from(w.abs() * amax)).sum::<f64>()
                            })
                            .sum();
                        let diff = (f64::from(ours[a * n + i]) - exact).abs();
                        assert!(
                            diff <= bound / 254.0 * 1.01 + 1e-5,
                            "{dtype:?} m={m} [{a},{i}]: {} vs {exact}",
                            ours[a * n + i]
                        );
                    }
                }
            }
            // Rows read back for embedding lookups are candle's dequantized values.
            let mut row = vec![0f32; k];
            for i in [0, n / 2, n - 1] {
                qm.row(i, &mut row);
                assert_eq!(row, dense[i], "{dtype:?} row {i}");
            }
        }
    }
    Ok(())
}

/// F16 and BF16 weights stay half precision (half the bytes of f32) and multiply exactly as
/// an f32 matrix of the same values does: the same bits, batched or alone, within f32
/// rounding of the f64 product, and rows read back as candle dequantizes them.
#[test]
fn half_precision_weights_match_their_f32_values() -> Result<()> {
    use fleet_inference::kernels::DenseMatrix;
    for dtype in [GgmlDType::F16, GgmlDType::BF16] {
        for (n, k) in [(67, 896), (133, 577), (5, 3)] {
            let w = Tensor::from_vec(values(n * k, (n + k) as u64, 0.05), (n, k), &Device::Cpu)?;
            let qt = QTensor::quantize(&w, dtype)?;
            let half = DenseMatrix::from_qtensor(&qt).ok_or("a half-precision matrix")?;
            assert_eq!(half.bytes(), n * k * 2, "{dtype:?}");
            let dense = qt.dequantize(&Device::Cpu)?;
            let full = DenseMatrix::from_tensor(&dense)?.ok_or("an f32 matrix")?;
            assert_eq!(full.bytes(), n * k * 4);
            let dense = dense.to_vec2::<f32>()?;
            let m = 40;
            let x = values(m * k, (m * k) as u64, 1.0);
            let (mut ours, mut f32s) = (vec![0f32; m * n], vec![0f32; m * n]);
            half.matmul_slice(&x, &mut ours)?;
            full.matmul_slice(&x, &mut f32s)?;
            let differ = ours.iter().zip(&f32s).position(|(a, b)| a.to_bits() != b.to_bits());
            assert_eq!(differ, None, "{dtype:?} [{n}, {k}]: not the f32 matrix's bits");
            for a in [0, 17, m - 1] {
                let mut alone = vec![0f32; n];
                half.matmul_slice(&x[a * k..(a + 1) * k], &mut alone)?;
                assert!(alone == ours[a * n..(a + 1) * n], "{dtype:?} row {a}: alone differs");
                for i in 0..n {
                    let xs = &x[a * k..(a + 1) * k];
                    let exact: f64 =
                        xs.iter().zip(&dense[i]).map(|(x, w)| f64::from(*x) * f64::from(*w)).sum();
                    let size: f64 =
                        xs.iter().zip(&dense[i]).map(|(x, w)| f64::from((x * w).abs())).sum();
                    let diff = (f64::from(ours[a * n + i]) - exact).abs();
                    assert!(
                        diff <= 1e-5 * size + 1e-6,
                        "{dtype:?} [{a},{i}]: {} vs {exact}",
                        ours[a * n + i]
                    );
                }
            }
            let mut row = vec![0f32; k];
            for i in [0, n / 2, n - 1] {
                half.row(i, &mut row);
                assert_eq!(row, dense[i], "{dtype:?} row {i}");
            }
        }
    }
    Ok(())
}
