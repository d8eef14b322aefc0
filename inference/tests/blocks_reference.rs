//! The GPU's reading of GGUF blocks (`src/cuda/quant.cuh`, which the blocks matmul and the
//! embedding rows kernel dequantize with) against candle's CPU dequantization, bit for bit,
//! for every format the GPU keeps as blocks. The header is built by the host C++ compiler
//! with the intrinsics it uses as plain C++ (`tests/blocks_reference/dequantize.cpp`), so
//! this runs on machines without a GPU; on a GPU `gpu --blocks` checks the kernels
//! themselves against the dequantized matrix.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::quantized::{GgmlDType, QTensor, ggml_file};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

/// Each format, the kernels' name for it, and the byte offsets of its f16 fields.
const FORMATS: [(GgmlDType, &str, &[usize]); 8] = [
    (GgmlDType::Q4_0, "q4_0", &[0]),
    (GgmlDType::Q4_1, "q4_1", &[0, 2]),
    (GgmlDType::Q5_0, "q5_0", &[0]),
    (GgmlDType::Q5_1, "q5_1", &[0, 2]),
    (GgmlDType::Q8_0, "q8_0", &[0]),
    (GgmlDType::Q4K, "q4k", &[0, 2]),
    (GgmlDType::Q5K, "q5k", &[0, 2]),
    (GgmlDType::Q6K, "q6k", &[208]),
];

/// Builds the host program once per test process.
fn program(dir: &Path) -> PathBuf {
    let source =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/blocks_reference/dequantize.cpp");
    let exe = dir.join("dequantize");
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let status = Command::new(&compiler)
        .args(["-std=c++17", "-O2", "-ffp-contract=off", "-fno-strict-aliasing", "-o"])
        .arg(&exe)
        .arg(&source)
        .status()
        .unwrap_or_else(|e| panic!("running the C++ compiler {compiler:?}: {e}"));
    assert!(status.success(), "{compiler} failed on {}", source.display());
    exe
}

/// The host program's f32 values for `rows` rows of `k` values as `name` blocks.
fn dequantized_by_header(exe: &Path, dir: &Path, name: &str, k: usize, bytes: &[u8]) -> Vec<f32> {
    let (input, output) = (dir.join(format!("{name}.in")), dir.join(format!("{name}.out")));
    std::fs::write(&input, bytes).expect("writing the blocks");
    let status = Command::new(exe).arg(name).arg(k.to_string()).arg(&input).arg(&output).status();
    assert!(status.is_ok_and(|s| s.success()), "dequantize {name} failed");
    let raw = std::fs::read(&output).expect("reading the values");
    raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// candle's CPU dequantization of the same bytes.
fn dequantized_by_candle(dtype: GgmlDType, rows: usize, k: usize, bytes: &[u8]) -> Vec<f32> {
    let q = ggml_file::qtensor_from_ggml(dtype, bytes, vec![rows, k], &Device::Cpu)
        .expect("blocks of the right length");
    let t = q.dequantize(&Device::Cpu).expect("dequantize");
    t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("values")
}

/// The header's values (read from an aligned copy, then from one 2 bytes off) against
/// candle's, each copy bit for bit.
fn assert_same_bits(what: &str, header: &[f32], candle: &[f32]) {
    assert_eq!(header.len(), 2 * candle.len(), "{what}: value counts");
    let twice = candle.iter().chain(candle);
    for (i, (a, b)) in header.iter().zip(twice).enumerate() {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "{what}: value {i} is {a} on the GPU's path, {b} on candle's"
        );
    }
}

#[test]
fn every_format_dequantizes_to_the_cpu_bits() {
    let dir = std::env::temp_dir().join(format!("fleet-blocks-reference-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let exe = program(&dir);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (rows, k) = (5, 768);
    for (dtype, name, halves) in FORMATS {
        // Blocks as a quantizer writes them, from normal weights with an outlier per row...
        let mut values: Vec<f32> = (0..rows * k).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
        for r in 0..rows {
            values[r * k + (r * 37) % k] = 7.5;
        }
        let w = Tensor::from_vec(values, (rows, k), &Device::Cpu).expect("weights");
        let q = QTensor::quantize(&w, dtype).expect("quantize");
        let quantized = q.data().expect("blocks").into_owned();
        let header = dequantized_by_header(&exe, &dir, name, k, &quantized);
        assert_same_bits(
            &format!("{name}, quantized"),
            &header,
            &dequantized_by_candle(dtype, rows, k, &quantized),
        );
        // ...and random bytes in every field (every bit pattern of scales, nibbles and high
        // bits), with finite f16 scales.
        let mut bytes: Vec<u8> = (0..quantized.len()).map(|_| rng.random()).collect();
        for block in bytes.chunks_exact_mut(dtype.type_size()) {
            for &at in halves {
                let h = half::f16::from_f32(rng.random::<f32>() * 0.02 - 0.01);
                block[at..at + 2].copy_from_slice(&h.to_le_bytes());
            }
        }
        let header = dequantized_by_header(&exe, &dir, name, k, &bytes);
        assert_same_bits(
            &format!("{name}, random bytes"),
            &header,
            &dequantized_by_candle(dtype, rows, k, &bytes),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a GGUF's weights take on a GPU, as the worker sizes KV memory by it: the blocks as
/// held where they stay (a GPU short of memory: the file less its header, or twice that for
/// IQ4 blocks held as Q8_0), every tensor in bf16 where they would not.
#[test]
fn gpu_weight_bytes_follow_the_blocks_decision() {
    use fleet_inference::transformer::load::gguf_gpu_weight_bytes;
    use fleet_inference::transformer::{Family, fixture};
    let cfg = fixture::quantizable_config(Family::Qwen2);
    let weights = fixture::random_weights(&cfg).expect("weights");
    let path = std::env::temp_dir().join(format!("fleet-gpu-bytes-{}.gguf", std::process::id()));
    fixture::write_gguf(&path, &cfg, &weights, GgmlDType::Q4K, &[]).expect("a GGUF");
    let file = std::fs::metadata(&path).expect("the file").len();
    let params: u64 = weights.iter().map(|(_, _, t)| t.elem_count() as u64).sum();
    // A GPU with room for the bf16 form takes it; one without keeps the file's blocks.
    assert_eq!(gguf_gpu_weight_bytes(&path, 1 << 40), Some(2 * params));
    let held = gguf_gpu_weight_bytes(&path, 1 << 10).expect("a size");
    assert!(held <= file && file - held < 16 << 10, "{held} of a {file}-byte file");
    assert_eq!(gguf_gpu_weight_bytes(Path::new("/nonexistent.gguf"), 1 << 40), None);
    let iq4 = fleet_inference::transformer::gguf::Transcoded::Iq4Nl;
    fixture::write_gguf(&path, &cfg, &weights, iq4, &[]).expect("a GGUF");
    let file = std::fs::metadata(&path).expect("the file").len();
    let held = gguf_gpu_weight_bytes(&path, 1 << 10).expect("a size");
    assert!(held > file * 17 / 10, "{held} of a {file}-byte IQ4_NL file");
    let _ = std::fs::remove_file(&path);
}

/// On the CPU, IQ4_NL, IQ4_XS and MXFP4 files take about their own size in memory: the
/// kernels hold their blocks as 4-bit codes, not as the Q8_0 the reader transcodes them to
/// (which would take 1.9× the file).
#[test]
fn the_cpu_holds_table_types_at_about_their_files_size() {
    use fleet_inference::transformer::gguf::Transcoded;
    use fleet_inference::transformer::load::load_gguf;
    use fleet_inference::transformer::{Family, fixture};
    let path = std::env::temp_dir().join(format!("fleet-cpu-bytes-{}.gguf", std::process::id()));
    for (family, kind) in [
        (Family::Qwen2, Transcoded::Iq4Nl),
        (Family::Granite, Transcoded::Iq4Xs),
        (Family::GptOss, Transcoded::Mxfp4),
    ] {
        let cfg = fixture::quantizable_config(family);
        let weights = fixture::random_weights(&cfg).expect("weights");
        fixture::write_gguf(&path, &cfg, &weights, kind, &[]).expect("a GGUF");
        let file = std::fs::metadata(&path).expect("the file").len() as usize;
        let (decoder, _) = load_gguf(&path, &Device::Cpu).expect("the model loads");
        let held = decoder.weight_bytes();
        assert!(
            held <= file * 11 / 10,
            "{}: {held} bytes held for a {file}-byte file",
            kind.name()
        );
    }
    let _ = std::fs::remove_file(&path);
}
