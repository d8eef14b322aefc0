//! Sentence embeddings with BERT-family encoders (such as all-MiniLM-L6-v2), read from a
//! sentence-transformers model folder: tokenize, run the texts through the encoder,
//! mean-pool over real tokens, L2-normalise.
//!
//! On the CPU the texts of every caller go to one thread per model ([`batcher`]), which
//! packs whatever is waiting into passes of real tokens only (no padding) and runs them
//! one at a time, each using every core. Other devices run padded batches per call.
//!
//! - [`Embedder`]: loads a folder and embeds texts;
//! - [`batcher`]: the CPU thread that forms packed passes across callers;
//! - [`bert`]: the encoder's forward pass, padded;
//! - `packed`: the same pass on the CPU without padding, on buffers it reuses;
//! - [`pooling`]: mean pooling and normalisation;
//! - `gelu`: the exact GELU, vectorised and in parallel;
//! - [`fixture`]: finds the real all-MiniLM-L6-v2 weights for tests and benchmarks.

pub mod batcher;
pub mod bert;
pub mod fixture;
mod gelu;
mod packed;
pub mod pooling;
mod weights;

use std::cmp::Reverse;
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams};

use self::batcher::Batcher;
use self::bert::{Bert, BertConfig};
use self::weights::Weights;
use crate::{Error, Result};

/// Texts per padded forward pass (devices other than the CPU): large enough to keep the
/// matmuls efficient, small enough that padding to the longest text of a batch and the
/// `[B, heads, T, T]` scores stay modest.
pub const BATCH_SIZE: usize = 64;

/// A BERT-family sentence encoder with its tokenizer.
pub struct Embedder {
    model: Arc<Bert>,
    tokenizer: Tokenizer,
    max_seq_length: usize,
    device: Device,
    /// The packing thread, on the CPU.
    batcher: Option<Batcher>,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("config", self.model.config())
            .field("max_seq_length", &self.max_seq_length)
            .finish_non_exhaustive()
    }
}

/// The one key of sentence-transformers' `sentence_bert_config.json` that matters here.
#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

impl Embedder {
    /// Loads `config.json`, `model.safetensors`, `tokenizer.json` and (if present)
    /// `sentence_bert_config.json` from `dir`. Reads everything into memory; nothing is
    /// downloaded.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::model(dir, "no such model directory"));
        }
        let cfg = BertConfig::read(&dir.join("config.json"))?;
        let max_seq_length = read_max_seq_length(&dir.join("sentence_bert_config.json"))?
            .unwrap_or(cfg.max_position_embeddings)
            .min(cfg.max_position_embeddings);
        let tokenizer = read_tokenizer(&dir.join("tokenizer.json"), max_seq_length, &cfg)?;
        let model = Bert::new(&cfg, &Weights::read(&dir.join("model.safetensors"), device)?)?;
        let model = Arc::new(model);
        let batcher = match device {
            Device::Cpu => Some(Batcher::start(Arc::clone(&model))?),
            _ => None,
        };
        Ok(Self { model, tokenizer, max_seq_length, device: device.clone(), batcher })
    }

    /// The length of each embedding.
    pub fn dimensions(&self) -> usize {
        self.model.config().hidden_size
    }

    /// Tokens per text (special tokens included) beyond which texts are truncated.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    pub fn model(&self) -> &Bert {
        &self.model
    }

    /// The token ids of each text, with `[CLS]`/`[SEP]`, truncated to `max_seq_length`.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::Embedding(format!("tokenizing: {e}")))?;
        Ok(encodings.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// One unit-length vector per text, in input order. Blocks until done: on the CPU the
    /// texts join whatever other callers have waiting on the model's packing thread.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let ids = self.tokenize(texts)?;
        if let Some(batcher) = &self.batcher {
            return batcher.embed(ids);
        }
        self.embed_padded(&ids)
    }

    /// Embeds `ids` in padded batches of [`BATCH_SIZE`] on the calling thread: the path of
    /// devices other than the CPU, and the reference the packed path is tested against.
    pub fn embed_padded(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        // Longest first, so each batch pads to a length close to all of its texts'.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| Reverse(ids[i].len()));
        let mut out = vec![Vec::new(); ids.len()];
        for chunk in order.chunks(BATCH_SIZE) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            let rows = self
                .embed_tokens(&batch)
                .map_err(|e| Error::Embedding(crate::error::first_line(&e)))?;
            for (&i, row) in chunk.iter().zip(rows) {
                out[i] = row;
            }
        }
        Ok(out)
    }

    /// One forward pass over `batch` padded to its longest sequence, pooled and normalised.
    fn embed_tokens(&self, batch: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let t = batch.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch.len() * t);
        let mut mask = Vec::with_capacity(batch.len() * t);
        for seq in batch {
            ids.extend_from_slice(seq);
            // Padding id 0 is never attended to or pooled, so its value does not matter.
            ids.resize(ids.len() + t - seq.len(), 0);
            mask.extend((0..t).map(|j| if j < seq.len() { 1f32 } else { 0. }));
        }
        let shape = (batch.len(), t);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        // Single-sentence inputs are all segment 0.
        let hidden = self.model.forward(&ids, &ids.zeros_like()?, &mask)?;
        pooling::l2_normalize(&pooling::mean_pool(&hidden, &mask)?)?.to_vec2()
    }
}

fn read_max_seq_length(path: &Path) -> Result<Option<usize>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::model(path, format!("cannot read: {e}"))),
    };
    let cfg: SentenceBertConfig = serde_json::from_str(&text)
        .map_err(|e| Error::model(path, format!("invalid json: {e}")))?;
    Ok(cfg.max_seq_length)
}

fn read_tokenizer(path: &Path, max_length: usize, cfg: &BertConfig) -> Result<Tokenizer> {
    let bytes = std::fs::read(path).map_err(|e| Error::model(path, format!("cannot read: {e}")))?;
    let mut tokenizer =
        crate::error::without_panics("tokenizer.json", || Tokenizer::from_bytes(bytes))
            .map_err(|e| Error::model(path, e))?
            .map_err(|e| Error::model(path, format!("not a valid tokenizer: {e}")))?;
    crate::text::tokenizer::without_word_cache(&mut tokenizer)
        .map_err(|e| Error::model(path, format!("not a valid tokenizer: {e}")))?;
    // The file may carry its own padding and truncation (all-MiniLM-L6-v2's pads every text
    // to 128); batches are padded here instead, and truncation follows max_seq_length.
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams { max_length, ..Default::default() }))
        .map_err(|e| Error::model(path, format!("cannot truncate to {max_length} tokens: {e}")))?;
    let size = tokenizer.get_vocab_size(true);
    if size > cfg.vocab_size {
        let reason = format!("has {size} tokens but the model's vocab_size is {}", cfg.vocab_size);
        return Err(Error::model(path, reason));
    }
    Ok(tokenizer)
}
