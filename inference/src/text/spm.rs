//! SentencePiece tokenizers from GGUF metadata (`tokenizer.ggml.model = "llama"`: Gemma,
//! Llama 2, Mistral v0.1, Phi-3), built as a `tokenizers` BPE model that splits text as
//! llama.cpp's SPM tokenizer does.
//!
//! llama.cpp's SPM tokenizer starts from the text's characters and repeatedly joins the
//! adjacent pair whose joined text is a vocabulary entry of the highest score (the leftmost
//! on a tie); characters left outside the vocabulary become their UTF-8 bytes' `<0xXX>`
//! tokens. That is BPE whose merges are every way of writing a vocabulary entry as two
//! entries, ranked by the joined entry's score, with byte fallback: what Hugging Face's
//! converters build from a SentencePiece model too. The file stores scores, not merges, so
//! the merges are derived here. Spaces are written `▁`; a `▁` goes before the text only
//! where `tokenizer.ggml.add_space_prefix` says so. Control tokens (`<start_of_turn>`) and
//! user-defined ones (`\n\n`, runs of spaces, `<b>`) are matched in the text first, as
//! llama.cpp does, and never split.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper};

/// llama.cpp's token types (`llama_token_type`).
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

const SPACE: &str = "\u{2581}";

/// The tokenizer of a SentencePiece GGUF file, or what is missing or malformed.
pub(crate) fn from_gguf(md: &HashMap<String, Value>) -> Result<tokenizers::Tokenizer, String> {
    let tokens = strings(md, "tokenizer.ggml.tokens")?;
    let scores: Vec<f32> = match md.get("tokenizer.ggml.scores") {
        Some(Value::Array(values)) => {
            values.iter().map(|v| v.to_f32().map_err(|e| e.to_string())).collect()
        }
        Some(_) => Err("tokenizer.ggml.scores is not an array".to_owned()),
        None => Err("the metadata has no tokenizer.ggml.scores".to_owned()),
    }?;
    let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
        Some(Value::Array(values)) => values
            .iter()
            .map(|v| v.to_i32().map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?,
        // Without types every token is normal text.
        _ => vec![NORMAL; tokens.len()],
    };
    if scores.len() != tokens.len() || types.len() != tokens.len() {
        return Err(format!(
            "{} tokens but {} scores and {} token types",
            tokens.len(),
            scores.len(),
            types.len()
        ));
    }
    let add_space_prefix = match md.get("tokenizer.ggml.add_space_prefix") {
        Some(Value::Bool(b)) => *b,
        // llama.cpp's default for SPM vocabularies.
        _ => true,
    };
    let vocab = Vocab { tokens: &tokens, scores: &scores, types: &types };
    let ids = vocab.ids();
    let merges = vocab.merges(&ids);
    let bpe = BPE::builder()
        .vocab_and_merges(ids.into_iter().collect::<tokenizers::models::bpe::Vocab>(), merges)
        .byte_fallback(true)
        .fuse_unk(true)
        .unk_token(vocab.unknown().to_owned())
        .cache_capacity(0)
        .build()
        .map_err(|e| format!("the SentencePiece vocabulary: {e}"))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    let space = Replace::new(" ", SPACE).map_err(|e| e.to_string())?;
    let normalizer: NormalizerWrapper = if add_space_prefix {
        NormalizerSequence::new(vec![Prepend::new(SPACE.into()).into(), space.into()]).into()
    } else {
        space.into()
    };
    tokenizer.with_normalizer(Some(normalizer)).map_err(|e| e.to_string())?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        tokenizers::decoders::DecoderWrapper::Replace(
            Replace::new(SPACE, " ").map_err(|e| e.to_string())?,
        ),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    // Matched in the raw text, before the spaces become `▁`, as llama.cpp partitions it.
    let added = |kind: i32, special: bool| {
        tokens
            .iter()
            .zip(&types)
            .filter(move |(_, t)| **t == kind)
            .map(move |(text, _)| AddedToken::from(text.clone(), special).normalized(false))
            .collect::<Vec<_>>()
    };
    tokenizer.add_special_tokens(added(CONTROL, true)).map_err(|e| e.to_string())?;
    tokenizer.add_tokens(added(USER_DEFINED, false)).map_err(|e| e.to_string())?;
    Ok(tokenizer)
}

/// A GGUF file's token list with its scores and types.
struct Vocab<'a> {
    tokens: &'a [String],
    scores: &'a [f32],
    types: &'a [i32],
}

impl Vocab<'_> {
    /// Each token's id; a text listed twice keeps its first id, as llama.cpp's lookup does.
    fn ids(&self) -> HashMap<String, u32> {
        let mut ids = HashMap::with_capacity(self.tokens.len());
        for (id, text) in self.tokens.iter().enumerate() {
            ids.entry(text.clone()).or_insert(id as u32);
        }
        ids
    }

    /// Every way of joining two entries into a third (bytes aside), highest score first;
    /// equal scores in id order.
    fn merges(&self, ids: &HashMap<String, u32>) -> Vec<(String, String)> {
        let mut ranked: Vec<(f32, u32, usize, &str, &str)> = Vec::new();
        for (id, (text, kind)) in self.tokens.iter().zip(self.types).enumerate() {
            if *kind == BYTE || ids.get(text) != Some(&(id as u32)) {
                continue;
            }
            for (at, _) in text.char_indices().skip(1) {
                let (left, right) = text.split_at(at);
                let joinable = |part: &str| ids.get(part).is_some_and(|&i| self.joinable(i));
                if joinable(left) && joinable(right) {
                    ranked.push((self.scores[id], id as u32, at, left, right));
                }
            }
        }
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        ranked.into_iter().map(|(_, _, _, l, r)| (l.to_owned(), r.to_owned())).collect()
    }

    /// Whether the token with this id can be one side of a join (byte tokens stand for
    /// bytes, not their `<0xXX>` text).
    fn joinable(&self, id: u32) -> bool {
        self.types.get(id as usize).is_some_and(|t| *t != BYTE)
    }

    /// The unknown token's text: the first of type unknown, else `<unk>`.
    fn unknown(&self) -> &str {
        self.tokens
            .iter()
            .zip(self.types)
            .find(|(_, t)| **t == UNKNOWN)
            .map_or("<unk>", |(text, _)| text.as_str())
    }
}

fn strings(md: &HashMap<String, Value>, key: &str) -> Result<Vec<String>, String> {
    match md.get(key) {
        Some(Value::Array(values)) => values
            .iter()
            .map(|v| v.to_string().cloned().map_err(|_| format!("{key} holds a non-string")))
            .collect(),
        Some(_) => Err(format!("{key} is not an array")),
        None => Err(format!("the metadata has no {key}")),
    }
}
