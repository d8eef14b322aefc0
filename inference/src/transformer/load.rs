//! Loading a decoder from disk: a Hugging Face folder (config.json + safetensors, sharded or
//! not) or a GGUF file. Every failure names the path and what was expected.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Device};

use super::config::{DecoderConfig, RopeScaling};
use super::decoder::Decoder;
use super::gguf::Header;
use super::linear::GpuWeights;
use super::weights::{GgufWeights, SafetensorsWeights};
use crate::{Error, Result};

/// Loads a Hugging Face folder. `quantize` turns the projections into GGUF blocks on load
/// (those whose input size is a multiple of the block size).
pub fn load_hf_dir(dir: &Path, device: &Device, quantize: Option<GgmlDType>) -> Result<Decoder> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| Error::model(&config_path, format!("expected a config.json: {e}")))?;
    let cfg = DecoderConfig::from_hf_json(&text).map_err(|e| Error::model(&config_path, e))?;
    let mut tensors = HashMap::new();
    for file in safetensors_files(dir)? {
        let part = candle_core::safetensors::load(&file, device)
            .map_err(|e| Error::model(&file, format!("not a readable safetensors file: {e}")))?;
        tensors.extend(part);
    }
    let mut source = SafetensorsWeights::new(tensors, quantize);
    Decoder::load(cfg, &mut source, device).map_err(|e| Error::model(dir, e))
}

/// The safetensors files of a folder: the index's shards, or `model.safetensors`.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::model(&index, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::model(&index, format!("not valid JSON: {e}")))?;
        let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) else {
            return Err(Error::model(&index, "expected a weight_map object"));
        };
        let mut files: Vec<PathBuf> =
            map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(Error::model(dir, "expected model.safetensors or model.safetensors.index.json"))
}

/// Reads a GGUF header, metadata and tensor index with our reader ([`Header`]); a tensor
/// type we do not read is named.
pub fn read_gguf<R: std::io::Read + std::io::Seek>(reader: &mut R) -> Result<Header, String> {
    crate::error::without_panics("GGUF", || Header::read(reader))?
}

/// Bytes a GGUF file's weights take on a CUDA GPU with `free` bytes free: their blocks'
/// where they stay as they are (IQ4 as Q8_0), else every tensor in bf16 (as [`load_gguf`] decides,
/// [`GpuWeights`]). `None` for a file that is not a readable GGUF.
pub fn gguf_gpu_weight_bytes(path: &Path, free: u64) -> Option<u64> {
    let mut file = std::fs::File::open(path).ok()?;
    let content = read_gguf(&mut file).ok()?.content;
    let mode = GpuWeights::from_env().ok()?;
    if mode.keeps_blocks(GgufWeights::bf16_bytes_of_blocks(&content), Some(free)) {
        // The blocks as held: a transcoded tensor's (listed as Q8_0) are not the file's.
        let held = |i: &candle_core::quantized::gguf_file::TensorInfo| {
            (i.shape.elem_count() / i.ggml_dtype.block_size() * i.ggml_dtype.type_size()) as u64
        };
        return Some(content.tensor_infos.values().map(held).sum());
    }
    Some(content.tensor_infos.values().map(|info| info.shape.elem_count() as u64 * 2).sum())
}

/// Free memory on the CUDA `device`, as NVML reports it (`None` when it cannot say).
fn gpu_free(device: &Device) -> Option<u64> {
    let candle_core::DeviceLocation::Cuda { gpu_id } = device.location() else { return None };
    let found = crate::gpu::detect();
    found.gpus().iter().find(|g| g.index as usize == gpu_id).map(|g| g.memory_free)
}

/// Loads a GGUF file; also returns its metadata (tokenizer, chat template). On a CUDA GPU
/// its blocks stay as they are or become bf16 as [`GpuWeights`] decides.
pub fn load_gguf(path: &Path, device: &Device) -> Result<(Decoder, HashMap<String, Value>)> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::model(path, e))?;
    let header = read_gguf(&mut file)
        .map_err(|e| Error::model(path, format!("not a readable GGUF file: {e}")))?;
    let mut cfg = DecoderConfig::from_gguf(&header.content).map_err(|e| Error::model(path, e))?;
    let metadata = header.content.metadata.clone();
    let keep_blocks = device.is_cuda() && {
        let mode = GpuWeights::from_env().map_err(|e| Error::model(path, e))?;
        mode.keeps_blocks(GgufWeights::bf16_bytes_of_blocks(&header.content), gpu_free(device))
    };
    let mut source = GgufWeights::new(header, file, device.clone(), keep_blocks);
    let table = match &mut cfg.rope.scaling {
        RopeScaling::Factors(factors) => Some(("rope_freqs.weight", factors)),
        RopeScaling::LongRope { long: true, factors, .. } => {
            Some(("rope_factors_long.weight", factors))
        }
        RopeScaling::LongRope { long: false, factors, .. } => {
            Some(("rope_factors_short.weight", factors))
        }
        _ => None,
    };
    if let Some((name, factors)) = table {
        let t = source.read(name).and_then(|q| q.dequantize(device));
        *factors = t
            .and_then(|t| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>())
            .map_err(|e| Error::model(path, e))?;
    }
    let decoder = Decoder::load(cfg, &mut source, device).map_err(|e| Error::model(path, e))?;
    Ok((decoder, metadata))
}
