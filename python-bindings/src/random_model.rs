//! `write_random_weight_model`: a tiny chat model with random weights as a GGUF file, so
//! local-model agents can be tried (and tested) without downloading anything. Its text is
//! meaningless: the weights are noise.

use std::path::{Path, PathBuf};

use fleet_inference::GgmlDType;
use fleet_inference::text::fixture::{gguf_tokenizer_metadata, write_tokenizer_files};
use fleet_inference::transformer::{Family, fixture};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

/// The weights' seed: every call writes the same model, so its answers repeat across runs.
const SEED: u64 = 2024;

/// Writes a random-weight Qwen2-architecture model (2 layers, hidden size 256, a 384-token
/// byte-level BPE with the Qwen2.5 chat template, Q8_0) to `path`, which must end in
/// `.gguf` (workers list GGUF files by extension). Returns the path.
#[pyfunction]
pub fn write_random_weight_model(py: Python<'_>, path: PathBuf) -> PyResult<PathBuf> {
    if !path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return Err(PyValueError::new_err(format!(
            "{} does not end in .gguf: workers only serve GGUF files by that name",
            path.display()
        )));
    }
    py.detach(|| write(&path)).map_err(|e| {
        PyOSError::new_err(format!("cannot write a random-weight model to {}: {e}", path.display()))
    })?;
    Ok(path)
}

fn write(path: &Path) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    // The GGUF embeds the tokenizer, which is built as tokenizer.json files first.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let scratch = std::env::temp_dir()
        .join(format!("agentfleet-random-model-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let written = (|| -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
        write_tokenizer_files(&scratch)?;
        let tokenizer = gguf_tokenizer_metadata(&scratch)?;
        let cfg = fixture::quantizable_config(Family::Qwen2);
        let weights = fixture::seeded_weights(&cfg, SEED)?;
        // Written aside and renamed, so a worker scanning the folder never sees half a file.
        let partial = path.with_extension("gguf.partial");
        fixture::write_gguf(&partial, &cfg, &weights, GgmlDType::Q8_0, &tokenizer)?;
        std::fs::rename(&partial, path)?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    written
}
