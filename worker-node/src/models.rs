//! The worker's model store: what is on disk under `--models-dir`, and the loaded models
//! shared by every actor that uses them.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use fleet_inference::Model;
use fleet_proto::ModelOnDisk;

use crate::{Error, Result};

/// Lists the models under `dir`: GGUF files and Hugging Face folders (with a config.json).
/// A model's id is its file or folder name.
pub fn scan(dir: &Path) -> Result<Vec<ModelOnDisk>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|source| Error::ModelsDir { path: dir.to_owned(), source })?;
    let mut models = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let (format, size_bytes) = if path.is_dir() && path.join("config.json").is_file() {
            ("hf", dir_size(&path))
        } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            ("gguf", entry.metadata().map(|m| m.len()).unwrap_or(0))
        } else {
            continue;
        };
        models.push(ModelOnDisk {
            id: name.to_owned(),
            path: path.display().to_string(),
            size_bytes,
            format: format.to_owned(),
        });
    }
    models.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(models)
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Loaded models by (id, options): loaded once, shared by all actors.
#[derive(Default)]
pub struct ModelStore {
    loaded: HashMap<(String, BTreeMap<String, String>), Arc<dyn Model>>,
}

impl std::fmt::Debug for ModelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelStore").field("loaded", &self.loaded.len()).finish()
    }
}

impl ModelStore {
    /// The model `id` with `options`, loading it on first use.
    pub fn get(&mut self, id: &str, options: &BTreeMap<String, String>) -> Result<Arc<dyn Model>> {
        let key = (id.to_owned(), options.clone());
        if let Some(model) = self.loaded.get(&key) {
            return Ok(model.clone());
        }
        let model = fleet_inference::load_builtin(id, options)?;
        self.loaded.insert(key, model.clone());
        Ok(model)
    }

    /// Adds an already loaded model under `id` and `options` (preloading, tests).
    pub fn insert(&mut self, id: &str, options: &BTreeMap<String, String>, model: Arc<dyn Model>) {
        self.loaded.insert((id.to_owned(), options.clone()), model);
    }

    /// Ids of the loaded models, for heartbeats.
    pub fn loaded_ids(&self) -> Vec<String> {
        let mut ids: Vec<_> = self.loaded.keys().map(|(id, _)| id.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_gguf_files_and_hf_folders_only() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("fleet-models-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("qwen-hf"))?;
        std::fs::write(dir.join("qwen-hf/config.json"), "{}")?;
        std::fs::create_dir_all(dir.join("not-a-model"))?;
        std::fs::write(dir.join("tiny.gguf"), [0u8; 16])?;
        std::fs::write(dir.join("notes.txt"), "x")?;
        let models = scan(&dir).map_err(std::io::Error::other)?;
        let ids: Vec<_> = models.iter().map(|m| (m.id.as_str(), m.format.as_str())).collect();
        assert_eq!(ids, [("qwen-hf", "hf"), ("tiny.gguf", "gguf")]);
        std::fs::remove_dir_all(&dir)
    }
}
