//! [`Tokenizer`]: a `tokenizers` tokenizer plus what generation needs around it (the ids that
//! end a generation, the special token strings, the chat template), loaded from a Hugging
//! Face model folder or from GGUF metadata.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use serde_json::Value as Json;

use super::ChatTemplate;
use crate::{Error, Result};

/// Added tokens that end a turn in common chat formats (ChatML, Llama 3, Phi 3, Gemma).
const END_OF_TURN: [&str; 7] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<|endoftext|>",
    "<end_of_turn>",
    "<|end_of_text|>",
];

/// The pre-tokenizer of a byte-level BPE (`gpt2`) GGUF tokenizer whose `tokenizer.ggml.pre`
/// candle does not know, as llama.cpp splits it: never a space added before the text (candle's
/// default adds one, so `<|im_start|>system` became `<|im_start|>` ` system`), digits one
/// by one for SmolLM's `smollm`, and o200k's split for `gpt-4o` (gpt-oss). `None` for the
/// types candle builds right.
fn byte_level_pre_tokenizer(pre: &str) -> Option<tokenizers::PreTokenizerWrapper> {
    use tokenizers::SplitDelimiterBehavior;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::digits::Digits;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    let byte_level = ByteLevel::new(false, true, true);
    match pre {
        "qwen2" | "smaug-bpe" | "lfm2" | "llama3" => None,
        "smollm" => Some(Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()),
        "gpt-4o" => {
            let pattern = SplitPattern::Regex(O200K_SPLIT.into());
            // The pattern is a constant that compiles (tested); were it not to, GPT-2's
            // split without a space added still tokenizes.
            match Split::new(pattern, SplitDelimiterBehavior::Isolated, false) {
                Ok(split) => {
                    let byte_level = ByteLevel::new(false, true, false);
                    Some(Sequence::new(vec![split.into(), byte_level.into()]).into())
                }
                Err(_) => Some(byte_level.into()),
            }
        }
        _ => Some(byte_level.into()),
    }
}

/// o200k's pre-tokenizer split (tiktoken's, and llama.cpp's `gpt-4o`): words by case, so
/// `CamelCase` is two pieces, with their contraction (`don't` one piece), digits in threes.
const O200K_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
);

/// A tokenizer with its generation metadata.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos_ids: Vec<u32>,
    /// The id a raw prompt starts with, for models that want one (Gemma's `<bos>`): what
    /// `add_bos_token` says. Chat templates write their own.
    prompt_bos: Option<u32>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    chat_template: Option<ChatTemplate>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("eos_ids", &self.eos_ids)
            .field("prompt_bos", &self.prompt_bos)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` (required), `tokenizer_config.json` (special tokens and the chat
    /// template; `chat_template.jinja` when the config has none) and `generation_config.json`
    /// (extra end-of-generation ids) from a Hugging Face model folder.
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer> {
        let path = dir.join("tokenizer.json");
        let expected = "Hugging Face tokenizer.json";
        let bytes = read(&path, expected)?;
        let mut inner = crate::error::without_panics("tokenizer.json", || {
            tokenizers::Tokenizer::from_bytes(&bytes)
        })
        .map_err(|e| invalid(&path, expected, e))?
        .map_err(|e| invalid(&path, expected, e.to_string()))?;

        let config = read_json_if_exists(&dir.join("tokenizer_config.json"), "JSON object")?;
        let config = config.as_ref();
        let bos_token = config.and_then(|c| token_string(c.get("bos_token")));
        let eos_token = config.and_then(|c| token_string(c.get("eos_token")));
        let mut source = config.and_then(|c| template_source(c.get("chat_template")));
        if source.is_none() {
            let jinja = dir.join("chat_template.jinja");
            if jinja.exists() {
                let bytes = read(&jinja, "Jinja chat template")?;
                let text = String::from_utf8(bytes)
                    .map_err(|e| invalid(&jinja, "UTF-8 Jinja chat template", e.to_string()))?;
                source = Some(text);
            }
        }
        let chat_template = source
            .map(|s| ChatTemplate::new(&s, bos_token.as_deref(), eos_token.as_deref()))
            .transpose()?;

        let mut eos_ids: Vec<u32> = Vec::new();
        let generation = read_json_if_exists(&dir.join("generation_config.json"), "JSON object")?;
        match generation.as_ref().and_then(|g| g.get("eos_token_id")) {
            Some(Json::Array(ids)) => eos_ids.extend(ids.iter().filter_map(json_id)),
            Some(id) => eos_ids.extend(json_id(id)),
            None => {}
        }
        without_word_cache(&mut inner).map_err(|e| invalid(&path, expected, e))?;
        let add_bos = config.and_then(|c| c.get("add_bos_token")).and_then(Json::as_bool);
        let prompt_bos = match (add_bos, &bos_token) {
            (Some(true), Some(bos)) => inner.token_to_id(bos),
            _ => None,
        };
        let specials = Specials { eos_ids, prompt_bos, bos_token, eos_token };
        Self::assemble(inner, specials, chat_template).map_err(|e| invalid(&path, expected, e))
    }

    /// Builds the tokenizer from GGUF metadata (llama.cpp's `tokenizer.ggml.*` keys, BPE
    /// `gpt2` models) with candle's [`TokenizerFromGguf`], plus `tokenizer.chat_template` and
    /// the bos/eos/eot/eom ids. Integer values of any width are accepted.
    pub fn from_gguf(metadata: &HashMap<String, Value>) -> Result<Tokenizer> {
        let kind = match metadata.get("tokenizer.ggml.model") {
            Some(Value::String(kind)) => kind.as_str(),
            _ => "gpt2",
        };
        let inner = match kind {
            "gpt2" => {
                // candle wants a whole `Content`; hand it only the tokenizer keys.
                let content = gguf_file::Content {
                    magic: gguf_file::VersionedMagic::GgufV3,
                    metadata: metadata
                        .iter()
                        .filter(|(k, _)| k.starts_with("tokenizer.ggml."))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    tensor_infos: HashMap::new(),
                    tensor_data_offset: 0,
                };
                let mut inner = tokenizers::Tokenizer::from_gguf(&content).map_err(|e| {
                    // candle appends a backtrace when RUST_BACKTRACE is set: keep the message
                    // line.
                    let message = e.to_string();
                    Error::GgufTokenizerBuild(message.lines().next().unwrap_or_default().into())
                })?;
                let pre = match metadata.get("tokenizer.ggml.pre") {
                    Some(Value::String(pre)) => pre.as_str(),
                    _ => "gpt2",
                };
                if let Some(pre_tokenizer) = byte_level_pre_tokenizer(pre) {
                    inner.with_pre_tokenizer(Some(pre_tokenizer));
                }
                without_word_cache(&mut inner).map_err(Error::GgufTokenizerBuild)?;
                inner
            }
            // Built without a word cache.
            "llama" => super::spm::from_gguf(metadata).map_err(Error::GgufTokenizerBuild)?,
            other => {
                return Err(Error::GgufTokenizerBuild(format!(
                    "tokenizer model {other:?} is not supported (supported: gpt2, llama)"
                )));
            }
        };

        let id_of = |key: &str| gguf_id(metadata, key);
        let bos_id = id_of("tokenizer.ggml.bos_token_id")?;
        let eos_id = id_of("tokenizer.ggml.eos_token_id")?;
        let mut eos_ids: Vec<u32> = eos_id.into_iter().collect();
        eos_ids.extend(id_of("tokenizer.ggml.eot_token_id")?);
        eos_ids.extend(id_of("tokenizer.ggml.eom_token_id")?);
        let token = |id: Option<u32>| id.and_then(|id| inner.id_to_token(id));
        let (bos_token, eos_token) = (token(bos_id), token(eos_id));

        let key = "tokenizer.chat_template";
        let chat_template = match metadata.get(key) {
            None => None,
            Some(Value::String(source)) => {
                Some(ChatTemplate::new(source, bos_token.as_deref(), eos_token.as_deref())?)
            }
            Some(other) => {
                let reason = format!("expected a string, found {:?}", other.value_type());
                return Err(Error::GgufTokenizer { key: key.into(), reason });
            }
        };
        // llama.cpp's default: a BOS before SentencePiece prompts, none before byte-level ones.
        let add_bos = match metadata.get("tokenizer.ggml.add_bos_token") {
            Some(Value::Bool(b)) => *b,
            _ => kind == "llama",
        };
        let prompt_bos = if add_bos { bos_id } else { None };
        let specials = Specials { eos_ids, prompt_bos, bos_token, eos_token };
        Self::assemble(inner, specials, chat_template).map_err(Error::GgufTokenizerBuild)
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        specials: Specials,
        chat_template: Option<ChatTemplate>,
    ) -> std::result::Result<Tokenizer, String> {
        let Specials { mut eos_ids, prompt_bos, bos_token, eos_token } = specials;
        eos_ids.extend(eos_token.as_deref().and_then(|t| inner.token_to_id(t)));
        let added = inner.get_added_tokens_decoder();
        for (id, token) in &added {
            if token.special && END_OF_TURN.contains(&token.content.as_str()) {
                eos_ids.push(*id);
            }
        }
        // A harmony vocabulary (gpt-oss) ends a message at `<|end|>` and its answer at
        // `<|return|>` or `<|call|>`, whatever the file names its end of sequence (as
        // llama.cpp does).
        let harmony = [super::harmony::CHANNEL, super::harmony::RETURN, super::harmony::CALL]
            .map(|t| inner.token_to_id(t));
        if let [Some(_), Some(ret), Some(call)] = harmony {
            let end = inner.token_to_id(super::harmony::END);
            eos_ids.retain(|id| Some(*id) != end);
            eos_ids.extend([ret, call]);
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        Ok(Tokenizer { inner, eos_ids, prompt_bos, bos_token, eos_token, chat_template })
    }

    /// Token ids of `text`, adding no special tokens (chat templates write those).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding =
            self.inner.encode_fast(text, false).map_err(|e| Error::Tokenize(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids of a raw prompt (a completion's, not a chat's): [`Self::encode`] after the
    /// BOS the model wants in front, as llama.cpp does.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self.prompt_bos.into_iter().collect();
        ids.extend(self.encode(text)?);
        Ok(ids)
    }

    /// The text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::Tokenize(e.to_string()))
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of one token (as it appears in the vocabulary, e.g. `<|im_end|>`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Every id that ends a generation, sorted and without duplicates.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// The special ids and strings beside the vocabulary.
struct Specials {
    eos_ids: Vec<u32>,
    prompt_bos: Option<u32>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

/// Rebuilds a BPE model without its word cache. `tokenizers` 0.23 keeps the words a BPE
/// model has split in a thread-local map keyed by model instance and never removes a dropped
/// instance's words: each tokenizer loaded leaves up to 10,000 words behind on every thread
/// that used it. A worker loads and unloads models (`--model-keep-alive`) while its threads
/// live on, so that grew without bound (the million-case fuzz run of `tokenizer.json` ended
/// at 850 MiB). Splitting a word anew costs little beside a forward pass (BENCHMARKS.md).
pub(crate) fn without_word_cache(
    inner: &mut tokenizers::Tokenizer,
) -> std::result::Result<(), String> {
    let tokenizers::ModelWrapper::BPE(bpe) = inner.get_model() else {
        return Ok(());
    };
    // The rebuild runs tokenizers' BPE builder again, which panics on some malformed
    // vocabularies (found by `tests/fuzz.rs`): a panic is the file's error.
    let rebuilt = crate::error::without_panics("BPE model", || rebuilt_without_cache(bpe))??;
    inner.with_model(rebuilt);
    Ok(())
}

fn rebuilt_without_cache(
    bpe: &tokenizers::models::bpe::BPE,
) -> std::result::Result<tokenizers::models::bpe::BPE, String> {
    use tokenizers::models::bpe::Vocab;
    // The merges, in rank order, are only reachable through the model's serialized form.
    let serialized = serde_json::to_value(bpe).map_err(|e| e.to_string())?;
    let merges = serialized.get("merges").cloned().unwrap_or_default();
    let merges: Vec<(String, String)> =
        serde_json::from_value(merges).map_err(|e| format!("the BPE merges: {e}"))?;
    let mut builder = tokenizers::models::bpe::BPE::builder()
        .vocab_and_merges(bpe.get_vocab().into_iter().collect::<Vocab>(), merges)
        .cache_capacity(0)
        .fuse_unk(bpe.fuse_unk)
        .byte_fallback(bpe.byte_fallback)
        .ignore_merges(bpe.ignore_merges);
    if let Some(dropout) = bpe.dropout {
        builder = builder.dropout(dropout);
    }
    if let Some(unk) = &bpe.unk_token {
        builder = builder.unk_token(unk.clone());
    }
    if let Some(prefix) = &bpe.continuing_subword_prefix {
        builder = builder.continuing_subword_prefix(prefix.clone());
    }
    if let Some(suffix) = &bpe.end_of_word_suffix {
        builder = builder.end_of_word_suffix(suffix.clone());
    }
    builder.build().map_err(|e| format!("the BPE model: {e}"))
}

fn invalid(path: &Path, expected: &'static str, reason: String) -> Error {
    Error::InvalidFile { path: path.to_owned(), expected, reason }
}

pub(crate) fn read(path: &Path, expected: &'static str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::ReadFile {
        path: PathBuf::from(path),
        expected,
        reason: e.to_string(),
    })
}

pub(crate) fn read_json(path: &Path, expected: &'static str) -> Result<Json> {
    let bytes = read(path, expected)?;
    serde_json::from_slice(&bytes).map_err(|e| invalid(path, expected, e.to_string()))
}

/// Optional files: absent is fine, present but unreadable or corrupt is an error.
fn read_json_if_exists(path: &Path, expected: &'static str) -> Result<Option<Json>> {
    if path.exists() { read_json(path, expected).map(Some) } else { Ok(None) }
}

/// `"<s>"` or an AddedToken object `{"content": "<s>", ...}`; `null` means none.
pub(crate) fn token_string(value: Option<&Json>) -> Option<String> {
    match value? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// A template string, or the list form `[{"name": "default", "template": ...}, ...]`, where
/// the `default` entry is the chat template (the first entry when none is named so).
fn template_source(value: Option<&Json>) -> Option<String> {
    match value? {
        Json::String(s) => Some(s.clone()),
        Json::Array(list) => {
            let named = |n: &Json| n.get("name").and_then(Json::as_str) == Some("default");
            let entry = list.iter().find(|e| named(e)).or_else(|| list.first())?;
            entry.get("template")?.as_str().map(str::to_owned)
        }
        _ => None,
    }
}

fn json_id(value: &Json) -> Option<u32> {
    value.as_u64().and_then(|id| u32::try_from(id).ok())
}

/// A token id stored under `key` as any integer type; absent is `None`.
fn gguf_id(metadata: &HashMap<String, Value>, key: &str) -> Result<Option<u32>> {
    let Some(value) = metadata.get(key) else { return Ok(None) };
    let id = match *value {
        Value::U8(v) => Some(u64::from(v)),
        Value::U16(v) => Some(u64::from(v)),
        Value::U32(v) => Some(u64::from(v)),
        Value::U64(v) => Some(v),
        Value::I8(v) => u64::try_from(v).ok(),
        Value::I16(v) => u64::try_from(v).ok(),
        Value::I32(v) => u64::try_from(v).ok(),
        Value::I64(v) => u64::try_from(v).ok(),
        _ => None,
    };
    match id.and_then(|id| u32::try_from(id).ok()) {
        Some(id) => Ok(Some(id)),
        None => Err(Error::GgufTokenizer {
            key: key.to_owned(),
            reason: match value {
                Value::Array(_) | Value::String(_) => {
                    format!("expected a token id, found {:?}", value.value_type())
                }
                scalar => format!("expected a token id (a non-negative integer), found {scalar:?}"),
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    use super::*;

    /// The pieces `pre` splits `text` into, as text.
    fn pieces(pre: &str, text: &str) -> Vec<String> {
        let Some(pre_tokenizer) = byte_level_pre_tokenizer(pre) else { return vec![] };
        let mut s = PreTokenizedString::from(text);
        pre_tokenizer.pre_tokenize(&mut s).expect("pre-tokenizes");
        s.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(_, (start, end), _)| text[start..end].to_owned())
            .collect()
    }

    #[test]
    fn gpt_4o_splits_words_by_case_with_their_contractions_and_digits_in_threes() {
        assert_eq!(
            pieces("gpt-4o", "don't parseHTTPRequest 12345 a/b\n\n  x"),
            ["don't", " parse", "HTTPRequest", " ", "123", "45", " a", "/b", "\n\n", " ", " x"]
        );
        // GPT-2's split, which the file's vocabulary was not made with.
        assert_ne!(
            pieces("gpt2", "don't parseHTTPRequest"),
            pieces("gpt-4o", "don't parseHTTPRequest")
        );
    }
}
