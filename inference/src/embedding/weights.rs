//! A safetensors checkpoint read into memory, looked up by Hugging Face name with the
//! shape checked, so a wrong or damaged file is an error naming the file and the tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// The tensors of one checkpoint, all names relative to the encoder (`embeddings.…`,
/// `encoder.…`) whatever prefix the file stores them under.
#[derive(Debug)]
pub(crate) struct Weights {
    path: PathBuf,
    prefix: String,
    tensors: HashMap<String, Tensor>,
}

/// Every BERT checkpoint has this tensor; what precedes it is the prefix (`""` for a bare
/// `BertModel`, `"bert."` for the task heads' checkpoints).
const ANCHOR: &str = "embeddings.word_embeddings.weight";

impl Weights {
    pub(crate) fn read(path: &Path, device: &Device) -> Result<Self> {
        // Read, not mmap: the workspace forbids unsafe code, and these models are small.
        let bytes =
            std::fs::read(path).map_err(|e| Error::model(path, format!("cannot read: {e}")))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)
            .map_err(|e| Error::model(path, format!("not a valid safetensors file: {e}")))?;
        let prefix = tensors
            .keys()
            .filter_map(|k| k.strip_suffix(ANCHOR))
            .min_by_key(|p| p.len())
            .ok_or_else(|| {
                Error::model(path, format!("no tensor named {ANCHOR} or bert.{ANCHOR}"))
            })?
            .to_owned();
        Ok(Self { path: path.to_owned(), prefix, tensors })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The tensor `name` as f32, which must have exactly `shape`.
    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = format!("{}{name}", self.prefix);
        let tensor = self.tensors.get(&full).ok_or_else(|| {
            Error::model(&self.path, format!("missing tensor {full} (expected shape {shape:?})"))
        })?;
        if tensor.dims() != shape {
            let reason = format!("tensor {full} has shape {:?}, expected {shape:?}", tensor.dims());
            return Err(Error::model(&self.path, reason));
        }
        tensor.to_dtype(DType::F32).map_err(|e| {
            Error::model(&self.path, format!("tensor {full} is not a float tensor: {e}"))
        })
    }
}
