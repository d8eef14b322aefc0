//! A tiny Qwen2-style tokenizer for tests and benchmarks, built here so nothing is downloaded.
//!
//! It is a byte-level BPE with the 256 GPT-2 byte tokens (id = byte value), a few dozen merges
//! (common English pieces, plus some that cut UTF-8 characters apart, so streaming code meets
//! tokens that end mid-character), Qwen2's pre-tokenizer and the ChatML special tokens.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::{Value as Json, json};
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::tokenizer::{read_json, token_string};
use crate::{Error, Result};

/// The chat template Qwen2.5 instruct models ship.
pub const QWEN25_CHAT_TEMPLATE: &str = include_str!("qwen25_chat_template.jinja");

/// The special tokens, in id order after the BPE vocabulary.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Merges as raw bytes, in rank order. Each side must already be a token.
const MERGES: &[(&[u8], &[u8])] = &[
    (b" ", b"t"),
    (b"h", b"e"),
    (b" t", b"he"),
    (b" ", b"a"),
    (b"i", b"n"),
    (b"e", b"r"),
    (b"o", b"n"),
    (b" ", b"s"),
    (b"r", b"e"),
    (b" ", b"w"),
    (b"a", b"n"),
    (b" ", b"o"),
    (b" ", b"c"),
    (b"o", b"u"),
    (b"i", b"s"),
    (b"e", b"n"),
    (b"a", b"t"),
    (b"o", b"r"),
    (b"l", b"l"),
    (b"in", b"g"),
    (b"e", b"d"),
    (b" ", b"i"),
    (b" t", b"o"),
    (b" a", b"n"),
    (b" an", b"d"),
    (b" o", b"f"),
    (b" i", b"s"),
    (b" i", b"n"),
    (b"H", b"e"),
    (b"He", b"ll"),
    (b"Hell", b"o"),
    (b" w", b"or"),
    (b" wor", b"l"),
    (b" worl", b"d"),
    (b"u", b"s"),
    (b"us", b"er"),
    (b"s", b"y"),
    (b"s", b"t"),
    (b"e", b"m"),
    (b"sy", b"st"),
    (b"syst", b"em"),
    (b"s", b"s"),
    (b"a", b"ss"),
    (b"i", b"st"),
    (b"ass", b"ist"),
    (b"an", b"t"),
    (b"assist", b"ant"),
    (b"\n", b"\n"),
    (b" ", b" "),
    // "é" (C3 A9) as one token.
    (b"\xC3", b"\xA9"),
    // Part of "世" (E4 B8 96), and a token joining its last byte to the first of "界" (E7 95 8C).
    (b"\xE4", b"\xB8"),
    (b"\x96", b"\xE7"),
    // Halves of "😀" (F0 9F 98 80).
    (b"\xF0", b"\x9F"),
    (b"\x98", b"\x80"),
];

/// GPT-2's reversible byte-to-character map (printable bytes map to themselves).
pub fn byte_to_char() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for (byte, slot) in map.iter_mut().enumerate() {
        let printable = matches!(byte, 33..=126 | 161..=172 | 174..=255);
        let code = if printable {
            byte as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('\u{FFFD}'); // codes stay below 0x144
    }
    map
}

fn token_of(bytes: &[u8], map: &[char; 256]) -> String {
    bytes.iter().map(|&b| map[b as usize]).collect()
}

/// A Qwen3-style chat template: ChatML without a default system message, earlier answers
/// without their reasoning, and an empty reasoning written after the generation prompt when
/// `enable_thinking` is false (as Qwen3's own template does).
pub const QWEN3_CHAT_TEMPLATE: &str = include_str!("qwen3_chat_template.jinja");

/// Writes `tokenizer.json`, `tokenizer_config.json` and `generation_config.json` into `dir`
/// and returns the vocabulary size (special tokens included, at most 384).
pub fn write_tokenizer_files(dir: &Path) -> io::Result<usize> {
    write_files(dir, Variant::Plain)
}

/// [`write_tokenizer_files`] of a thinking model: `<think>` and `</think>` added as tokens
/// of their own (not special, as Qwen3's are) and [`QWEN3_CHAT_TEMPLATE`].
pub fn write_thinking_tokenizer_files(dir: &Path) -> io::Result<usize> {
    write_files(dir, Variant::Thinking)
}

/// [`write_tokenizer_files`] of a model that answers in harmony (gpt-oss): its special
/// tokens added and [`HARMONY_CHAT_TEMPLATE`], `<|return|>` its end of sequence.
pub fn write_harmony_tokenizer_files(dir: &Path) -> io::Result<usize> {
    write_files(dir, Variant::Harmony)
}

/// A harmony chat template, ours (gpt-oss's own also writes a system message and reasoning
/// effort): tools as a `functions` namespace in a developer message, each message a header
/// and a body, earlier answers as `final` messages, earlier calls as messages to their
/// function and their results as messages from it, and the generation prompt an open
/// assistant header.
pub const HARMONY_CHAT_TEMPLATE: &str = "\
{%- if tools -%}\
<|start|>developer<|message|># Tools\n\n## functions\n\nnamespace functions {\n\
{%- for tool in tools %}\n// {{ tool.function.description }}\n\
type {{ tool.function.name }} = (_: {{ tool.function.parameters | tojson }}) => any;\
{%- endfor %}\n} // namespace functions<|end|>\
{%- endif -%}\
{%- set last = namespace(call='') -%}\
{%- for message in messages -%}\
{%- if message.role == 'assistant' and message.tool_calls -%}\
{%- for call in message.tool_calls -%}\
<|start|>assistant<|channel|>commentary to=functions.{{ call.function.name }} \
<|constrain|>json<|message|>{{ call.function.arguments | tojson }}<|call|>\
{%- set last.call = call.function.name -%}\
{%- endfor -%}\
{%- elif message.role == 'assistant' -%}\
<|start|>assistant<|channel|>final<|message|>{{ message.content }}<|end|>\
{%- elif message.role == 'tool' -%}\
<|start|>functions.{{ last.call }} to=assistant<|channel|>commentary<|message|>\
{{ message.content }}<|end|>\
{%- else -%}\
<|start|>{{ message.role }}<|message|>{{ message.content }}<|end|>\
{%- endif -%}\
{%- endfor -%}\
{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}";

/// Words of harmony headers as one token each (as in gpt-oss's vocabulary), so that a
/// planted model's chain through a call's header has no token twice.
const HARMONY_WORDS: [&str; 3] = ["commentary", " to=functions.", "json"];

/// Harmony's special tokens.
const HARMONY_TOKENS: [&str; 7] = [
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|channel|>",
    "<|constrain|>",
    "<|return|>",
    "<|call|>",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Plain,
    Thinking,
    Harmony,
}

fn write_files(dir: &Path, variant: Variant) -> io::Result<usize> {
    let map = byte_to_char();
    let mut vocab: Vocab = (0..=255u8).map(|b| (token_of(&[b], &map), u32::from(b))).collect();
    let mut merges = Vec::with_capacity(MERGES.len());
    for (left, right) in MERGES {
        let (l, r) = (token_of(left, &map), token_of(right, &map));
        if !vocab.contains_key(&l) || !vocab.contains_key(&r) {
            return Err(io::Error::other(format!("fixture merge {l:?} + {r:?} lacks a side")));
        }
        let id = vocab.len() as u32;
        vocab.entry(format!("{l}{r}")).or_insert(id);
        merges.push((l, r));
    }
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(io::Error::other)?;

    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(tokenizers::normalizers::unicode::NFC))
        .map_err(io::Error::other)?;
    let split = Split::new(
        SplitPattern::Regex(QWEN2_SPLIT.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(io::Error::other)?;
    let byte_level = ByteLevel::new(false, false, false);
    tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![split.into(), byte_level.into()])));
    tokenizer.with_decoder(Some(byte_level));
    tokenizer.with_post_processor(Some(byte_level));
    let specials = SPECIAL_TOKENS.map(|t| AddedToken::from(t, true));
    tokenizer.add_special_tokens(specials).map_err(io::Error::other)?;
    match variant {
        Variant::Thinking => {
            let markers = [super::reasoning::OPEN, super::reasoning::CLOSE];
            tokenizer
                .add_tokens(markers.map(|t| AddedToken::from(t, false)))
                .map_err(io::Error::other)?;
        }
        Variant::Harmony => {
            let specials = HARMONY_TOKENS.map(|t| AddedToken::from(t, true));
            tokenizer.add_special_tokens(specials).map_err(io::Error::other)?;
            let words = HARMONY_WORDS.map(|t| AddedToken::from(t, false));
            tokenizer.add_tokens(words).map_err(io::Error::other)?;
        }
        Variant::Plain => {}
    }
    let (template, eos) = match variant {
        Variant::Plain => (QWEN25_CHAT_TEMPLATE, "<|im_end|>"),
        Variant::Thinking => (QWEN3_CHAT_TEMPLATE, "<|im_end|>"),
        Variant::Harmony => (HARMONY_CHAT_TEMPLATE, "<|return|>"),
    };
    tokenizer.save(dir.join("tokenizer.json"), true).map_err(io::Error::other)?;

    let id = |t: &str| tokenizer.token_to_id(t);
    let config = json!({
        "add_bos_token": false,
        "add_prefix_space": false,
        "bos_token": null,
        "chat_template": template,
        "eos_token": eos,
        "pad_token": "<|endoftext|>",
        "model_max_length": 32768,
        "tokenizer_class": "Qwen2Tokenizer",
    });
    let generation = json!({
        "bos_token_id": id("<|endoftext|>"),
        "eos_token_id": [id(eos), id("<|endoftext|>")],
        "pad_token_id": id("<|endoftext|>"),
    });
    for (name, value) in [("tokenizer_config.json", config), ("generation_config.json", generation)]
    {
        let text = serde_json::to_string_pretty(&value).map_err(io::Error::other)?;
        std::fs::write(dir.join(name), text)?;
    }
    Ok(tokenizer.get_vocab_size(true))
}

/// The llama.cpp `tokenizer.*` GGUF metadata for the tokenizer in `dir` (a byte-level BPE
/// `tokenizer.json` with Qwen2 pre-tokenization, plus its `tokenizer_config.json`), so a GGUF
/// fixture can embed the same tokenizer.
pub fn gguf_tokenizer_metadata(dir: &Path) -> Result<Vec<(String, Value)>> {
    let path = dir.join("tokenizer.json");
    let expected = "byte-level BPE tokenizer.json";
    let json = read_json(&path, expected)?;
    let bad = |reason: &str| Error::InvalidFile {
        path: path.clone(),
        expected,
        reason: reason.to_owned(),
    };

    // id -> (token, llama.cpp token type: 1 normal, 3 control, 4 user defined)
    let mut by_id: HashMap<u64, (String, u32)> = HashMap::new();
    let vocab = json.pointer("/model/vocab").and_then(Json::as_object);
    for (token, id) in vocab.ok_or_else(|| bad("model.vocab is not an object"))? {
        let id = id.as_u64().ok_or_else(|| bad("a model.vocab id is not an integer"))?;
        by_id.insert(id, (token.clone(), 1));
    }
    let added = json.get("added_tokens").and_then(Json::as_array).map_or(&[][..], Vec::as_slice);
    for token in added {
        let id = token.get("id").and_then(Json::as_u64);
        let content = token.get("content").and_then(Json::as_str);
        let (Some(id), Some(content)) = (id, content) else {
            return Err(bad("an added_tokens entry lacks id or content"));
        };
        let special = token.get("special").and_then(Json::as_bool).unwrap_or(false);
        by_id.insert(id, (content.to_owned(), if special { 3 } else { 4 }));
    }
    let count = by_id.len() as u64;
    let mut tokens = Vec::with_capacity(by_id.len());
    let mut types = Vec::with_capacity(by_id.len());
    for id in 0..count {
        let (token, kind) = by_id.remove(&id).ok_or_else(|| bad("token ids are not contiguous"))?;
        tokens.push(Value::String(token));
        types.push(Value::I32(kind as i32));
    }

    // Merges come as "a b" strings (old format) or ["a", "b"] pairs (new); GGUF wants "a b".
    let merges = json.pointer("/model/merges").and_then(Json::as_array);
    let mut gguf_merges = Vec::new();
    for merge in merges.ok_or_else(|| bad("model.merges is not a list"))? {
        let text = match merge {
            Json::String(s) => s.clone(),
            Json::Array(pair) => match (pair.first(), pair.get(1)) {
                (Some(Json::String(a)), Some(Json::String(b))) => format!("{a} {b}"),
                _ => return Err(bad("a model.merges pair is not two strings")),
            },
            _ => return Err(bad("a model.merges entry is neither a string nor a pair")),
        };
        gguf_merges.push(Value::String(text));
    }

    let config_path = dir.join("tokenizer_config.json");
    let config = read_json(&config_path, "JSON object")?;
    let id_of = |token: Option<String>| -> Option<u32> {
        let token = token?;
        tokens.iter().position(|t| matches!(t, Value::String(s) if *s == token)).map(|i| i as u32)
    };
    let endoftext = id_of(Some("<|endoftext|>".into()));
    let eos = id_of(token_string(config.get("eos_token")));
    // Qwen configs have no bos token; llama.cpp then uses <|endoftext|>.
    let bos = id_of(token_string(config.get("bos_token"))).or(endoftext);
    let pad = id_of(token_string(config.get("pad_token"))).or(endoftext);

    let mut out = vec![
        ("tokenizer.ggml.model".to_owned(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".to_owned(), Value::String("qwen2".into())),
        ("tokenizer.ggml.tokens".to_owned(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".to_owned(), Value::Array(types)),
        ("tokenizer.ggml.merges".to_owned(), Value::Array(gguf_merges)),
        ("tokenizer.ggml.add_bos_token".to_owned(), Value::Bool(false)),
    ];
    for (key, id) in [("eos", eos), ("bos", bos), ("padding", pad)] {
        if let Some(id) = id {
            out.push((format!("tokenizer.ggml.{key}_token_id"), Value::U32(id)));
        }
    }
    if let Some(Json::String(template)) = config.get("chat_template") {
        out.push(("tokenizer.chat_template".to_owned(), Value::String(template.clone())));
    }
    Ok(out)
}
