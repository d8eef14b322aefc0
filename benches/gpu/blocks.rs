//! GGUF blocks kept on the GPU: the blocks matmul and row kernels against the dequantized
//! bf16 matrix (bit for bit, and batch-invariant), their speed beside the bf16 matmuls on a
//! 7B model's shapes, and random-weight GGUF files to load (Qwen2.5-7B's shapes as Q4_K_M,
//! and a small model of every format).

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use super::time;

use anyhow::{Context, Result};
use candle_core::quantized::gguf_file::Value as Meta;
use candle_core::quantized::{GgmlDType, QTensor, ggml_file, gguf_file};
use candle_core::{DType, Device, Tensor};
use fleet_inference::cuda::{
    dequantize_blocks, matmul_blocks, matmul_blocks_fused, matmul_xwt, rows_blocks,
};
use serde_json::{Value, json};

const FORMATS: [GgmlDType; 8] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// A small fast generator (xorshift64*): gigabytes of random blocks in seconds.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }

    /// Uniform in [0.5, 1.5).
    fn around_one(&mut self) -> f32 {
        0.5 + (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// `rows` rows of `k` random values as `dtype` blocks: random bytes in every field, the
/// f16 scales set so the weights come out with a spread like a real model's (~0.02).
fn random_blocks(dtype: GgmlDType, rows: usize, k: usize, seed: u64) -> Vec<u8> {
    let mut rng = Random(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut bytes = vec![0u8; rows * k / dtype.block_size() * dtype.type_size()];
    rng.fill(&mut bytes);
    // The f16 scale d (its offset, its size) and, where the format has one, the field at
    // `at2` as `factor` times d: Q4_1/Q5_1's minimum negative and the K-quants' dmin
    // positive, so the weights centre on zero.
    let (at, scale, second): (usize, f32, Option<(usize, f32)>) = match dtype {
        GgmlDType::Q4_0 => (0, 4e-3, None),
        GgmlDType::Q5_0 => (0, 2e-3, None),
        GgmlDType::Q4_1 => (0, 4e-3, Some((2, -7.5))),
        GgmlDType::Q5_1 => (0, 2e-3, Some((2, -15.5))),
        GgmlDType::Q8_0 => (0, 3e-4, None),
        GgmlDType::Q4K => (0, 5e-5, Some((2, 7.5))),
        GgmlDType::Q5K => (0, 2.5e-5, Some((2, 15.5))),
        GgmlDType::Q6K => (208, 2e-5, None),
        _ => return bytes,
    };
    for block in bytes.chunks_exact_mut(dtype.type_size()) {
        let d = scale * rng.around_one();
        block[at..at + 2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
        if let Some((at2, factor)) = second {
            let v = half::f16::from_f32(factor * d);
            block[at2..at2 + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    bytes
}

fn host(t: &Tensor) -> Result<Vec<u32>> {
    // Bits, so that NaNs and signed zeros compare as what they are.
    let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(values.into_iter().map(f32::to_bits).collect())
}

/// Every format: quantized weights and random blocks, multiplied at 1 to 1,000 rows against
/// the invariant bf16 matmul on their dequantized matrix (candle's CPU dequantization) and
/// against the 1,000-row call; rows read for embeddings against the dequantized rows. Then
/// the 7B shapes timed: blocks, our bf16 matmul, cuBLAS.
pub fn check_and_time(device: &Device) -> Result<Value> {
    let (k, n) = (1024, 1536);
    let x_all = Tensor::randn(0f32, 1., (1000, k), device)?.to_dtype(DType::BF16)?;
    let mut checks = Vec::new();
    for dtype in FORMATS {
        for source in ["quantized", "random_blocks"] {
            let data = if source == "quantized" {
                let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu)?;
                QTensor::quantize(&w, dtype)?.data()?.into_owned()
            } else {
                random_blocks(dtype, n, k, 3)
            };
            let q = ggml_file::qtensor_from_ggml(dtype, &data, vec![n, k], &Device::Cpu)?;
            let dense = q.dequantize(&Device::Cpu)?.to_dtype(DType::BF16)?.to_device(device)?;
            let bytes = Tensor::from_slice(&data, (n, data.len() / n), device)?;
            let full = host(&matmul_blocks(&x_all, &bytes, dtype)?)?;
            let (mut differ_from_dense, mut differ_from_full) = (Vec::new(), Vec::new());
            let mut fused_differs = Vec::new();
            for m in [1, 2, 7, 16, 63, 64, 65, 130, 255, 256, 300, 1000] {
                let x = x_all.narrow(0, 0, m)?;
                let ours = host(&matmul_blocks(&x, &bytes, dtype)?)?;
                if ours != host(&matmul_xwt(&x, &dense)?)? {
                    differ_from_dense.push(m);
                }
                if ours[..] != full[..m * n] {
                    differ_from_full.push(m);
                }
                if ours != host(&matmul_blocks_fused(&x, &bytes, dtype)?)? {
                    fused_differs.push(m);
                }
            }
            let dequantized_equal = host(&dequantize_blocks(&bytes, dtype, k)?)? == host(&dense)?;
            let ids = [0u32, 5, 1535, 17, 5];
            let rows = host(&rows_blocks(&bytes, dtype, k, &ids)?)?;
            let expected = host(&dense.index_select(&Tensor::new(&ids[..], device)?, 0)?)?;
            let out_of_range = rows_blocks(&bytes, dtype, k, &[n as u32]).is_err();
            let row = json!({
                "format": format!("{dtype:?}"), "weights": source,
                "row_counts_differing_from_dequantized_bf16": differ_from_dense,
                "row_counts_differing_from_1000_rows": differ_from_full,
                "row_counts_where_fused_differs": fused_differs,
                "dequantized_on_gpu_equal_cpu": dequantized_equal,
                "rows_equal_dequantized": rows == expected,
                "out_of_range_id_refused": out_of_range,
            });
            println!("blocks: {row}");
            checks.push(row);
        }
    }
    // Qwen2.5-7B's projections: QKV (Q4_K), gate and up (Q4_K), down (Q6_K).
    let mut timings = Vec::new();
    for (dtype, k, n, what) in [
        (GgmlDType::Q4K, 3584, 4608, "qkv"),
        (GgmlDType::Q4K, 3584, 37888, "gate_up"),
        (GgmlDType::Q6K, 18944, 3584, "down"),
    ] {
        let data = random_blocks(dtype, n, k, 11);
        let bytes = Tensor::from_slice(&data, (n, data.len() / n), device)?;
        let dense = Tensor::randn(0f32, 0.02, (n, k), device)?.to_dtype(DType::BF16)?;
        let dense_t = dense.t()?;
        let mut ms = serde_json::Map::new();
        for m in [1, 16, 64, 256, 2048, 8192] {
            let x = Tensor::randn(0f32, 1., (m, k), device)?.to_dtype(DType::BF16)?;
            let fused = time(device, || Ok(matmul_blocks_fused(&x, &bytes, dtype)?))?;
            let dequantized =
                time(device, || Ok(matmul_xwt(&x, &dequantize_blocks(&bytes, dtype, k)?)?))?;
            let ours_bf16 = time(device, || Ok(matmul_xwt(&x, &dense)?))?;
            let cublas = time(device, || Ok(x.matmul(&dense_t)?))?;
            ms.insert(
                format!("{m}_rows"),
                json!({
                    "blocks_fused_ms": fused * 1e3,
                    "blocks_dequantized_first_ms": dequantized * 1e3,
                    "ours_bf16_ms": ours_bf16 * 1e3, "cublas_bf16_ms": cublas * 1e3,
                    "blocks_fused_weight_gb_per_s": data.len() as f64 / fused / 1e9,
                    "bf16_weight_gb_per_s_cublas": (n * k * 2) as f64 / cublas / 1e9,
                }),
            );
        }
        let row = json!({"projection": what, "format": format!("{dtype:?}"), "in": k, "out": n,
                         "block_bytes": data.len(), "bf16_bytes": n * k * 2, "ms": ms});
        println!("blocks: {row}");
        timings.push(row);
    }
    Ok(json!({"checks": checks, "timings_7b_shapes": timings}))
}

/// llama.cpp's Q4_K_M rule for attn_v and ffn_down: Q6_K in the first and last eighth of
/// the layers and every third one between.
fn more_bits(layer: usize, layers: usize) -> bool {
    layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2
}

/// The shapes and tensor types of a random model file.
struct Shape {
    name: &'static str,
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    inter: usize,
    vocab: usize,
    embed: GgmlDType,
    output: GgmlDType,
    /// Layer i's formats: (Q, K, O, gate and up), (V, down).
    formats: fn(usize, usize) -> (GgmlDType, GgmlDType),
}

/// The random model files `--write-random-gguf` writes: Qwen2.5-7B's shapes with Q4_K_M's
/// tensor types (token_embd and most projections Q4_K; output, and attn_v / ffn_down of
/// `more_bits` layers, Q6_K), or a small Qwen2 whose eight layers take the eight formats
/// in turn (every block kernel in one model, small enough for the CPU reference).
const SHAPES: [Shape; 2] = [
    Shape {
        name: "qwen2.5-7b-q4km",
        hidden: 3584,
        layers: 28,
        heads: 28,
        kv_heads: 4,
        inter: 18944,
        vocab: 152_064,
        embed: GgmlDType::Q4K,
        output: GgmlDType::Q6K,
        formats: |i, layers| {
            let wide = if more_bits(i, layers) { GgmlDType::Q6K } else { GgmlDType::Q4K };
            (GgmlDType::Q4K, wide)
        },
    },
    Shape {
        name: "mixed-formats",
        hidden: 1024,
        layers: 8,
        heads: 16,
        kv_heads: 4,
        inter: 2816,
        vocab: 32_000,
        embed: GgmlDType::Q4K,
        output: GgmlDType::Q6K,
        formats: |i, _| (FORMATS[i % FORMATS.len()], FORMATS[(i + 3) % FORMATS.len()]),
    },
];

/// Writes the random-weight GGUF `shape` names (see [`SHAPES`]) to `path`. No tokenizer:
/// the benchmarks feed token ids.
pub fn write_random_gguf(shape: &str, path: &Path) -> Result<()> {
    let names: Vec<&str> = SHAPES.iter().map(|s| s.name).collect();
    let s = SHAPES
        .iter()
        .find(|s| s.name == shape)
        .with_context(|| format!("no random model {shape:?}; one of {names:?}"))?;
    let kv = s.kv_heads * (s.hidden / s.heads);
    let started = Instant::now();
    let mut seed = 100;
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut matrix = |name: String, dtype: GgmlDType, rows: usize, cols: usize| -> Result<()> {
        seed += 1;
        let data = random_blocks(dtype, rows, cols, seed);
        let q = ggml_file::qtensor_from_ggml(dtype, &data, vec![rows, cols], &Device::Cpu)?;
        tensors.push((name, q));
        Ok(())
    };
    matrix("token_embd.weight".into(), s.embed, s.vocab, s.hidden)?;
    matrix("output.weight".into(), s.output, s.vocab, s.hidden)?;
    for i in 0..s.layers {
        let (most, wide) = (s.formats)(i, s.layers);
        matrix(format!("blk.{i}.attn_q.weight"), most, s.hidden, s.hidden)?;
        matrix(format!("blk.{i}.attn_k.weight"), most, kv, s.hidden)?;
        matrix(format!("blk.{i}.attn_v.weight"), wide, kv, s.hidden)?;
        matrix(format!("blk.{i}.attn_output.weight"), most, s.hidden, s.hidden)?;
        matrix(format!("blk.{i}.ffn_gate.weight"), most, s.inter, s.hidden)?;
        matrix(format!("blk.{i}.ffn_up.weight"), most, s.inter, s.hidden)?;
        matrix(format!("blk.{i}.ffn_down.weight"), wide, s.hidden, s.inter)?;
    }
    let vector =
        |values: Tensor| -> Result<QTensor> { Ok(QTensor::quantize(&values, GgmlDType::F32)?) };
    let gains = || vector((Tensor::randn(0f32, 0.1, s.hidden, &Device::Cpu)? + 1.0)?);
    tensors.push(("output_norm.weight".into(), gains()?));
    for i in 0..s.layers {
        tensors.push((format!("blk.{i}.attn_norm.weight"), gains()?));
        tensors.push((format!("blk.{i}.ffn_norm.weight"), gains()?));
        for (name, size) in [("attn_q", s.hidden), ("attn_k", kv), ("attn_v", kv)] {
            let bias = vector(Tensor::randn(0f32, 0.02, size, &Device::Cpu)?)?;
            tensors.push((format!("blk.{i}.{name}.bias"), bias));
        }
    }
    let u32_of = |v: usize| Meta::U32(v as u32);
    let metadata = [
        ("general.architecture", Meta::String("qwen2".into())),
        ("general.name", Meta::String(format!("random {}", s.name))),
        ("qwen2.embedding_length", u32_of(s.hidden)),
        ("qwen2.block_count", u32_of(s.layers)),
        ("qwen2.attention.head_count", u32_of(s.heads)),
        ("qwen2.attention.head_count_kv", u32_of(s.kv_heads)),
        ("qwen2.feed_forward_length", u32_of(s.inter)),
        ("qwen2.context_length", u32_of(32_768)),
        ("qwen2.attention.layer_norm_rms_epsilon", Meta::F32(1e-6)),
        ("qwen2.rope.freq_base", Meta::F32(1e6)),
    ];
    let metadata: Vec<(&str, &Meta)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let file = std::fs::File::create(path).with_context(|| format!("creating {path:?}"))?;
    let mut out = BufWriter::with_capacity(8 << 20, file);
    gguf_file::write(&mut out, &metadata, &tensor_refs)?;
    out.flush()?;
    let bytes = std::fs::metadata(path)?.len();
    println!(
        "wrote {} ({:.2} GiB, {} tensors) in {:.1} s",
        path.display(),
        bytes as f64 / (1u64 << 30) as f64,
        tensor_refs.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
