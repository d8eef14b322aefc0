//! The worker's model store: what is on disk under `--models-dir`, and the loaded models
//! shared by every actor that uses them.
//!
//! A model loads on first use (or at start with `--preload`) on a blocking thread, so the
//! worker keeps serving its other agents meanwhile; every actor of the model waits on the
//! same load and then shares the one loaded model (and its engine).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_inference::{LoadOptions, Model, ModelStats};
use fleet_proto::{ErrorKind, LoadedModel, ModelOnDisk};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::{Error, Result};

/// A model being loaded or loaded: cheap to clone, awaited by every actor that uses it.
/// A failed load holds its error message.
pub type ModelHandle = Shared<BoxFuture<'static, std::result::Result<Arc<dyn Model>, LoadError>>>;

/// Why a model could not be loaded, shared by every task waiting on the load: what kind
/// of failure (an option out of range is the agent's fault, a broken file ours) and why.
#[derive(Clone, Debug)]
pub struct LoadError {
    pub kind: ErrorKind,
    pub message: Arc<str>,
}

impl LoadError {
    pub fn new(kind: ErrorKind, message: impl Into<Arc<str>>) -> Self {
        Self { kind, message: message.into() }
    }
}

impl From<Error> for LoadError {
    fn from(e: Error) -> Self {
        Self::new(e.kind(), e.to_string())
    }
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Lists the models under `dir`: GGUF files and Hugging Face folders (with a config.json,
/// or in the cache layout `models--org--name`). A model's id is its file or folder name.
pub fn scan(dir: &Path) -> Result<Vec<ModelOnDisk>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|source| Error::ModelsDir { path: dir.to_owned(), source })?;
    let mut models = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let (format, size_bytes) = if path.is_dir()
            && (path.join("config.json").is_file() || path.join("snapshots").is_dir())
        {
            ("hf", dir_size(&path))
        } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            ("gguf", std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0))
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
                .filter_map(|e| std::fs::metadata(e.path()).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

type Key = (String, BTreeMap<String, String>);

/// Distinct option sets one local model is loaded with at most: each is a copy of the
/// weights with its own engine thread, so agents that differ in engine options must not
/// multiply them without bound.
pub const MAX_COPIES_PER_MODEL: usize = 4;
/// How long a loaded model nobody uses stays loaded, unless the worker says otherwise.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(300);
/// Upper limits of the engine options an agent may set.
const MAX_SEQUENCES: usize = 1024;
const MAX_WAITING: usize = 65_536;
const MAX_PREFILL_CHUNK: usize = 16_384;
const MAX_TOKENS: usize = 1 << 20;

/// Loaded models by (id, options): loaded once, shared by all actors.
pub struct ModelStore {
    dir: Option<PathBuf>,
    device: String,
    /// Which endpoints remote models may call, and which get the worker's own API key.
    remote: Arc<crate::remote::RemotePolicy>,
    loaded: HashMap<Key, ModelHandle>,
    /// Models loaded with `--preload`: kept loaded whether used or not.
    pinned: HashSet<Key>,
    /// How long a loaded model nobody uses stays loaded.
    keep_alive: Duration,
    /// Since when each loaded model has been unused (no actor and no run holds it).
    unused_since: HashMap<Key, Instant>,
    /// Tokens generated per model at the previous report, for tokens/s.
    last_report: HashMap<String, (Instant, u64)>,
}

impl std::fmt::Debug for ModelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelStore")
            .field("dir", &self.dir)
            .field("device", &self.device)
            .field("loaded", &self.loaded.len())
            .finish()
    }
}

impl Default for ModelStore {
    fn default() -> Self {
        Self::new(None, "cpu".into())
    }
}

impl ModelStore {
    /// A store of the models under `dir` (if any), loaded onto `device` (`cpu`, `cuda:N`, ...).
    pub fn new(dir: Option<PathBuf>, device: String) -> Self {
        Self {
            dir,
            device,
            remote: Arc::default(),
            loaded: HashMap::new(),
            pinned: HashSet::new(),
            keep_alive: DEFAULT_KEEP_ALIVE,
            unused_since: HashMap::new(),
            last_report: HashMap::new(),
        }
    }

    /// Unloads a model once nobody has used it for `keep_alive`.
    pub fn with_keep_alive(self, keep_alive: Duration) -> Self {
        Self { keep_alive, ..self }
    }

    /// Loads model `id` (default options) now and keeps it loaded whether used or not.
    pub fn preload(&mut self, id: &str) -> ModelHandle {
        let options = BTreeMap::new();
        self.pinned.insert((id.to_owned(), options.clone()));
        self.get(id, &options)
    }

    /// Unloads the models that no actor and no run has held for the keep-alive time (not
    /// the preloaded ones): an agent removed or placed elsewhere leaves its model's weights,
    /// KV memory and engine thread behind otherwise, for as long as the worker runs.
    /// Returns the ids unloaded.
    pub fn unload_unused(&mut self, now: Instant) -> Vec<String> {
        let mut unloaded = Vec::new();
        let (pinned, unused_since, keep_alive) =
            (&self.pinned, &mut self.unused_since, self.keep_alive);
        self.loaded.retain(|key, handle| {
            // Held by an actor or a waiting run (a handle besides ours), or by a run
            // (the model itself).
            let held = handle.strong_count() != Some(1)
                || matches!(handle.peek(), Some(Ok(model)) if Arc::strong_count(model) != 1);
            if held || pinned.contains(key) {
                unused_since.remove(key);
                return true;
            }
            let since = *unused_since.entry(key.clone()).or_insert(now);
            if now.saturating_duration_since(since) < keep_alive {
                return true;
            }
            unused_since.remove(key);
            if matches!(handle.peek(), Some(Ok(_))) {
                tracing::info!(model = %key.0, idle_s = keep_alive.as_secs(), "model unloaded, unused");
                unloaded.push(key.0.clone());
            }
            false
        });
        let loaded = &self.loaded;
        self.last_report.retain(|id, _| loaded.keys().any(|(other, _)| other == id));
        unloaded
    }

    /// Which endpoints remote models may call, and which get the worker's own API key.
    pub fn with_remote_policy(self, policy: crate::remote::RemotePolicy) -> Self {
        Self { remote: Arc::new(policy), ..self }
    }

    /// The model `id` with `options`: loaded already, loading, or starting to load now. A
    /// load that failed is tried again.
    pub fn get(&mut self, id: &str, options: &BTreeMap<String, String>) -> ModelHandle {
        let key = (id.to_owned(), options.clone());
        if let Some(handle) = self.loaded.get(&key)
            && !matches!(handle.peek(), Some(Err(_)))
        {
            return handle.clone();
        }
        let local = !id.starts_with(fleet_inference::builtin::PREFIX)
            && !id.starts_with(crate::remote::PREFIX);
        // Failed loads hold nothing; they are dropped rather than counted.
        self.loaded.retain(|(other, _), h| other != id || !matches!(h.peek(), Some(Err(_))));
        let copies = self.loaded.keys().filter(|(other, o)| other == id && o != options).count();
        if local && copies >= MAX_COPIES_PER_MODEL {
            let error = format!(
                "model {id} is already loaded with {copies} different sets of model_options, \
                 the most one worker keeps (each is a copy of the weights): give the agents \
                 that use it the same engine options"
            );
            let error = LoadError::new(ErrorKind::Unsupported, error);
            return futures::future::ready(Err(error)).boxed().shared();
        }
        let handle = self.start_loading(id, options).shared();
        self.loaded.insert(key, handle.clone());
        handle
    }

    /// Adds an already loaded model under `id` and `options` (tests).
    pub fn insert(&mut self, id: &str, options: &BTreeMap<String, String>, model: Arc<dyn Model>) {
        let ready: BoxFuture<'static, _> = futures::future::ready(Ok(model)).boxed();
        self.loaded.insert((id.to_owned(), options.clone()), ready.shared());
    }

    fn start_loading(
        &self,
        id: &str,
        options: &BTreeMap<String, String>,
    ) -> BoxFuture<'static, std::result::Result<Arc<dyn Model>, LoadError>> {
        let ready =
            |r: Result<Arc<dyn Model>>| futures::future::ready(r.map_err(LoadError::from)).boxed();
        if id.starts_with(fleet_inference::builtin::PREFIX) {
            return ready(fleet_inference::load_builtin(id, options).map_err(Error::from));
        }
        if id.starts_with(crate::remote::PREFIX) {
            let (id, options, policy) = (id.to_owned(), options.clone(), self.remote.clone());
            return async move {
                crate::remote::load(&id, &options, policy).await.map_err(LoadError::from)
            }
            .boxed();
        }
        let path = match self.path_of(id) {
            Ok(path) => path,
            Err(e) => return ready(Err(e)),
        };
        let kv_given = options.contains_key("kv_memory_mb");
        let (device, id, options) = (self.device.clone(), id.to_owned(), options.clone());
        async move {
            let started = Instant::now();
            tracing::info!(model = %id, path = %path.display(), "loading model");
            // Everything that touches the disk or /proc runs on the blocking pool.
            let loaded = tokio::task::spawn_blocking(move || -> Result<_> {
                if !path.exists() {
                    let dir = path.parent().unwrap_or(&path).display().to_string();
                    let id = path.file_name().unwrap_or_default().to_string_lossy();
                    return Err(Error::UnknownModel(format!(
                        "model {id:?} is not in the models dir {dir}"
                    )));
                }
                let mut load_options =
                    load_options(&options, crate::resources::detect().memory_bytes)?;
                if !kv_given && let Some(bytes) = gpu_kv_bytes(&device, &path) {
                    load_options.engine.max_kv_bytes = bytes;
                }
                let device = fleet_inference::device(&device)?;
                Ok(fleet_inference::load(&path, &device, &load_options)?)
            })
            .await;
            match loaded {
                Ok(Ok(model)) => {
                    let ms = started.elapsed().as_millis() as u64;
                    tracing::info!(model = %id, ms, "model loaded");
                    Ok(Arc::new(model) as Arc<dyn Model>)
                }
                Ok(Err(e)) => {
                    tracing::warn!(model = %id, error = %e, "model failed to load");
                    Err(LoadError::from(e))
                }
                Err(e) => Err(LoadError::new(
                    ErrorKind::Internal,
                    format!("loading model {id} panicked: {e}"),
                )),
            }
        }
        .boxed()
    }

    /// Where model `id` would be on disk (whether it is there is checked off the runtime,
    /// with the load); an error naming the folder when the id could not be in it.
    fn path_of(&self, id: &str) -> Result<PathBuf> {
        let Some(dir) = &self.dir else {
            return Err(Error::UnknownModel(format!(
                "model {id:?} is not a built-in and this worker has no --models-dir"
            )));
        };
        // The id is a plain file or folder name: nothing that could leave the models dir.
        let plain = !id.is_empty()
            && Path::new(id).components().count() == 1
            && !id.contains(['/', '\\'])
            && id != ".."
            && id != ".";
        if !plain {
            return Err(Error::UnknownModel(format!(
                "model {id:?} is not in the models dir {}",
                dir.display()
            )));
        }
        Ok(dir.join(id))
    }

    /// Ids of the loaded models, for heartbeats.
    pub fn loaded_ids(&self) -> Vec<String> {
        let mut ids: Vec<_> = self
            .loaded
            .iter()
            .filter(|(_, h)| matches!(h.peek(), Some(Ok(_))))
            .map(|((id, _), _)| id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The loaded models and their engines' figures, tokens/s since the previous report.
    pub fn report(&mut self) -> Vec<LoadedModel> {
        let now = Instant::now();
        self.unload_unused(now);
        let mut by_id: BTreeMap<String, ModelStats> = BTreeMap::new();
        for ((id, _), handle) in &self.loaded {
            if let Some(Ok(model)) = handle.peek() {
                let s = model.stats();
                let total = by_id.entry(id.clone()).or_default();
                total.kv_bytes += s.kv_bytes;
                total.kv_capacity_bytes += s.kv_capacity_bytes;
                total.active += s.active;
                total.waiting += s.waiting;
                total.generated_tokens += s.generated_tokens;
                total.prompt_tokens += s.prompt_tokens;
                total.cached_tokens += s.cached_tokens;
                total.prefix_hits += s.prefix_hits;
                total.prefix_misses += s.prefix_misses;
                total.prefix_cache_bytes += s.prefix_cache_bytes;
                total.time_to_first_token.merge(&s.time_to_first_token);
                total.inter_token.merge(&s.inter_token);
            }
        }
        let mut report = Vec::with_capacity(by_id.len());
        for (id, s) in by_id {
            let tokens_per_s = match self.last_report.get(&id) {
                Some((at, tokens)) if now > *at => {
                    s.generated_tokens.saturating_sub(*tokens) as f64
                        / now.duration_since(*at).as_secs_f64()
                }
                _ => 0.0,
            };
            self.last_report.insert(id.clone(), (now, s.generated_tokens));
            report.push(LoadedModel {
                id,
                kv_bytes: s.kv_bytes,
                active_sequences: s.active,
                waiting_sequences: s.waiting,
                tokens_per_s,
                generated_tokens: s.generated_tokens,
                prompt_tokens: s.prompt_tokens,
                cached_tokens: s.cached_tokens,
                prefix_hits: s.prefix_hits,
                prefix_misses: s.prefix_misses,
                prefix_cache_bytes: s.prefix_cache_bytes,
                kv_capacity_bytes: s.kv_capacity_bytes,
                time_to_first_token: latencies(s.time_to_first_token),
                inter_token: latencies(s.inter_token),
            });
        }
        report
    }
}

fn latencies(l: fleet_inference::latency::Latencies) -> fleet_proto::Latencies {
    fleet_proto::Latencies { upper_bounds: l.bounds, counts: l.counts, sum_seconds: l.sum_seconds }
}

/// KV memory for a model loading on a CUDA GPU when its options name none: a share of the
/// GPU's free memory once its weights are in (a GGUF's as the loader will hold them: its
/// blocks, or bf16; a folder's taken as up to 4x its files).
fn gpu_kv_bytes(device: &str, path: &std::path::Path) -> Option<usize> {
    let ordinal = match device.split_once(':') {
        Some(("cuda", n)) => n.parse::<u32>().ok()?,
        None if device == "cuda" => 0,
        _ => return None,
    };
    let detected = fleet_inference::gpu::detect();
    let gpu = detected.gpus().iter().find(|g| g.index == ordinal)?;
    let weights: u64 = if path.is_dir() {
        let files = std::fs::read_dir(path).ok()?.filter_map(|e| e.ok()?.metadata().ok());
        files.map(|m| m.len()).sum::<u64>().saturating_mul(4)
    } else {
        use fleet_inference::transformer::load::gguf_gpu_weight_bytes;
        match gguf_gpu_weight_bytes(path, gpu.memory_free) {
            Some(bytes) => bytes,
            None => std::fs::metadata(path).ok()?.len().saturating_mul(4),
        }
    };
    Some(fleet_inference::gpu::default_kv_bytes(gpu, weights))
}

/// An agent's model options for a local model: engine limits (each bounded; KV memory by
/// `memory_bytes`, this machine's) and load-time quantization.
fn load_options(options: &BTreeMap<String, String>, memory_bytes: u64) -> Result<LoadOptions> {
    let mut load = LoadOptions::default();
    // 0 means the memory could not be read: no limit then, rather than a wrong one.
    let memory_mb = match memory_bytes >> 20 {
        0 => usize::MAX,
        mb => usize::try_from(mb).unwrap_or(usize::MAX),
    };
    for (key, value) in options {
        let number = |most: usize, unit: &str| {
            value.parse::<usize>().ok().filter(|n| (1..=most).contains(n)).ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "model option {key}={value:?} must be a whole number from 1 to {most}{unit}"
                ))
            })
        };
        match key.as_str() {
            "max_sequences" => load.engine.max_sequences = number(MAX_SEQUENCES, "")?,
            "max_waiting" => load.engine.max_waiting = number(MAX_WAITING, "")?,
            "prefill_chunk" => load.engine.prefill_chunk = number(MAX_PREFILL_CHUNK, "")?,
            "kv_memory_mb" => {
                let mb = number(memory_mb, " (this machine's memory in MiB)")?;
                load.engine.max_kv_bytes = mb.saturating_mul(1 << 20);
            }
            "max_tokens" => load.default_max_tokens = number(MAX_TOKENS, "")?,
            "prefix_cache" => {
                load.engine.prefix_cache = match value.to_ascii_lowercase().as_str() {
                    "true" | "on" | "1" => true,
                    "false" | "off" | "0" => false,
                    _ => {
                        return Err(Error::InvalidConfig(format!(
                            "model option prefix_cache={value:?} must be true or false"
                        )));
                    }
                }
            }
            "quantize" => match value.to_ascii_lowercase().as_str() {
                "q8_0" => load.quantize = Some(fleet_inference::GgmlDType::Q8_0),
                "none" | "" => load.quantize = None,
                _ => {
                    return Err(Error::InvalidConfig(format!(
                        "model option quantize={value:?} is not supported: use q8_0 or none"
                    )));
                }
            },
            _ => {
                return Err(Error::InvalidConfig(format!(
                    "unknown model option {key:?} for a local model: known are max_sequences, \
                     max_waiting, prefill_chunk, kv_memory_mb, max_tokens, prefix_cache and \
                     quantize"
                )));
            }
        }
    }
    Ok(load)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_gguf_files_and_hf_folders_only() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("fleet-models-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("qwen-hf"))?;
        std::fs::write(dir.join("qwen-hf/config.json"), "{}")?;
        std::fs::create_dir_all(dir.join("models--org--cached/snapshots"))?;
        std::fs::create_dir_all(dir.join("not-a-model"))?;
        std::fs::write(dir.join("tiny.gguf"), [0u8; 16])?;
        std::fs::write(dir.join("notes.txt"), "x")?;
        let models = scan(&dir).map_err(std::io::Error::other)?;
        let ids: Vec<_> = models.iter().map(|m| (m.id.as_str(), m.format.as_str())).collect();
        assert_eq!(ids, [("models--org--cached", "hf"), ("qwen-hf", "hf"), ("tiny.gguf", "gguf")]);
        std::fs::remove_dir_all(&dir)
    }

    #[tokio::test]
    async fn a_model_nobody_uses_is_unloaded_after_its_keep_alive() {
        let keep_alive = Duration::from_secs(60);
        let mut store = ModelStore::default().with_keep_alive(keep_alive);
        let (echo, options) = ("builtin:echo", BTreeMap::new());
        let actor = store.get(echo, &options);
        let run = actor.clone().await.map_err(|e| e.to_string());
        let t0 = Instant::now();
        let hours = |h: u64| t0 + Duration::from_secs(3600 * h);
        // Held by an actor, then by a run only: stays however long.
        assert!(store.unload_unused(t0).is_empty() && store.unload_unused(hours(1)).is_empty());
        drop(actor);
        assert!(store.unload_unused(hours(2)).is_empty());
        assert_eq!(store.loaded_ids(), [echo]);
        // Nobody holds it: the keep-alive counts from when that was first seen.
        drop(run);
        assert!(store.unload_unused(hours(3)).is_empty());
        assert!(store.unload_unused(hours(3) + keep_alive / 2).is_empty());
        assert_eq!(store.unload_unused(hours(3) + keep_alive), [echo]);
        assert!(store.loaded_ids().is_empty() && store.report().is_empty());
        // Used again before its time is up: the clock starts over once it is unused again.
        let actor = store.get(echo, &options);
        let _ = actor.clone().await;
        assert!(store.unload_unused(hours(4)).is_empty());
        assert!(store.unload_unused(hours(4) + keep_alive / 2).is_empty());
        let again = actor.clone();
        assert!(store.unload_unused(hours(4) + keep_alive).is_empty(), "used: kept");
        drop((actor, again));
        assert!(store.unload_unused(hours(5)).is_empty());
        assert_eq!(store.unload_unused(hours(6)), [echo]);
        // A preloaded model stays.
        let _ = store.preload(echo).await;
        assert!(store.unload_unused(hours(7)).is_empty());
        assert!(store.unload_unused(hours(8)).is_empty());
        assert_eq!(store.loaded_ids(), [echo]);
    }

    #[tokio::test]
    async fn a_model_outside_the_models_dir_or_missing_is_a_clear_error() {
        let dir = std::env::temp_dir();
        let mut store = ModelStore::new(Some(dir.clone()), "cpu".into());
        for id in ["../etc", "missing-model.gguf", "a/b"] {
            let error = store.get(id, &BTreeMap::new()).await.err().map(|e| e.to_string());
            assert!(
                error.as_deref().is_some_and(|e| e.contains("is not in the models dir")),
                "{id}: {error:?}"
            );
        }
        let mut bare = ModelStore::default();
        let error = bare.get("x.gguf", &BTreeMap::new()).await.err().map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("no --models-dir")));
    }

    #[tokio::test]
    async fn a_model_is_loaded_with_a_bounded_number_of_option_sets() -> Result<()> {
        let mut store = ModelStore::default();
        let set = |i: usize| BTreeMap::from([("max_sequences".to_owned(), i.to_string())]);
        for i in 1..=MAX_COPIES_PER_MODEL {
            let model = fleet_inference::load_builtin("builtin:echo", &BTreeMap::new())?;
            store.insert("m.gguf", &set(i), model);
        }
        let refused = store.get("m.gguf", &set(99)).await.err().map(|e| e.to_string());
        assert!(refused.is_some_and(|e| e.contains("different sets of model_options")));
        assert!(store.get("m.gguf", &set(1)).await.is_ok(), "a loaded option set was refused");
        Ok(())
    }

    #[test]
    fn local_model_options_are_checked() {
        let options = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        let load = |k: &str, v: &str| load_options(&options(k, v), 8 << 30);
        assert_eq!(load("kv_memory_mb", "64").map(|o| o.engine.max_kv_bytes).ok(), Some(64 << 20));
        assert!(load("max_sequences", "0").is_err());
        assert!(load("quantize", "q2").is_err());
        assert!(load("temperature", "1").is_err());
        // Upper limits: no more KV memory than the machine has, no absurd batch sizes.
        let too_much = load("kv_memory_mb", "8193").err().map(|e| e.to_string());
        assert!(too_much.is_some_and(|e| e.contains("from 1 to 8192")));
        assert!(load("kv_memory_mb", "8192").is_ok());
        assert!(load("max_sequences", "1025").is_err());
        assert_eq!(load("max_waiting", "3").map(|o| o.engine.max_waiting).ok(), Some(3));
        assert!(load("max_waiting", "65537").is_err());
        assert!(load("prefill_chunk", "1000000").is_err());
        assert_eq!(load("prefix_cache", "false").map(|o| o.engine.prefix_cache).ok(), Some(false));
        assert!(load("prefix_cache", "maybe").is_err());
    }
}
