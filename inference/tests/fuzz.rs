//! Fuzz targets for what a model file can hold (see `fleet_testkit::fuzz`; `FLEET_FUZZ_CASES`
//! cases each, 10,000 by default). Models come from operators, but a downloaded file is
//! outside input all the same: a bad one must be refused with an error, never panic or hang.
//!
//! - `gguf_files`: a tiny GGUF (Qwen2 shapes, tokenizer and chat template in its metadata),
//!   mutated, through the header and metadata reader, the config, the tokenizer and the
//!   template;
//! - `tokenizer_json`: a byte-level BPE `tokenizer.json`, mutated, loaded and used;
//! - `chat_templates`: templates assembled from Jinja fragments (loops, recursion, filters,
//!   the functions chat templates call), compiled and rendered.

use std::io::Cursor;
use std::path::Path;

use fleet_inference::text::{ChatTemplate, Tokenizer, fixture as text_fixture};
use fleet_inference::transformer::{DecoderConfig, Family, fixture};
use fleet_inference::{ChatMessage, GgmlDType, Role};
use fleet_testkit::fuzz::{config, mutated};
use proptest::prelude::*;

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fleet-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new(Role::System, "be brief"),
        ChatMessage::new(Role::User, "hello"),
        ChatMessage::new(Role::Assistant, "hi"),
        ChatMessage::new(Role::User, "and now?"),
    ]
}

/// A tiny GGUF with a tokenizer and a chat template in its metadata.
fn gguf_seed() -> Vec<u8> {
    let dir = scratch("gguf-seed");
    let cfg = fixture::tiny_config(Family::Qwen2, true);
    let weights = fixture::random_weights(&cfg).expect("random weights");
    text_fixture::write_tokenizer_files(&dir).expect("tokenizer files");
    let mut extra = text_fixture::gguf_tokenizer_metadata(&dir).expect("tokenizer metadata");
    let template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}";
    extra.push((
        "tokenizer.chat_template".into(),
        candle_core::quantized::gguf_file::Value::String(template.into()),
    ));
    let path = dir.join("tiny.gguf");
    fixture::write_gguf(&path, &cfg, &weights, GgmlDType::Q8_0, &extra).expect("write gguf");
    let bytes = std::fs::read(&path).expect("read gguf");
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn gguf_files(bytes in mutated(vec![gguf_seed()])) {
        let Ok(header) = fleet_inference::transformer::load::read_gguf(&mut Cursor::new(bytes)) else {
            return Ok(());
        };
        let content = header.content;
        let _ = DecoderConfig::from_gguf(&content);
        if let Ok(tokenizer) = Tokenizer::from_gguf(&content.metadata) {
            if let Ok(ids) = tokenizer.encode("hello world") {
                let _ = tokenizer.decode(&ids);
            }
            if let Some(template) = tokenizer.chat_template() {
                let _ = template.render(&conversation(), &[], true);
            }
        }
    }
}

fn tokenizer_seed() -> Vec<u8> {
    let dir = scratch("tokenizer-seed");
    text_fixture::write_tokenizer_files(&dir).expect("tokenizer files");
    let bytes = std::fs::read(dir.join("tokenizer.json")).expect("read tokenizer.json");
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

#[test]
fn tokenizer_json() {
    let dir = scratch("tokenizer");
    let path = dir.join("tokenizer.json");
    let mut runner = proptest::test_runner::TestRunner::new(config());
    let outcome = runner.run(&mutated(vec![tokenizer_seed()]), |bytes| {
        std::fs::write(&path, bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        if let Ok(tokenizer) = Tokenizer::from_hf_dir(Path::new(&dir))
            && let Ok(ids) = tokenizer.encode("hello wörld <|im_end|>")
        {
            let _ = tokenizer.decode(&ids);
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

/// Pieces real chat templates are made of, and some that only a hostile one would use.
const FRAGMENTS: &[&str] = &[
    "{% for m in messages %}",
    "{% endfor %}",
    "{% if m.role == 'user' %}",
    "{% elif add_generation_prompt %}",
    "{% else %}",
    "{% endif %}",
    "{{ m.content }}",
    "{{ m['role'] | upper }}",
    "{{ bos_token }}",
    "{{ eos_token }}",
    "<|im_start|>",
    "<|im_end|>\n",
    "{{ messages | tojson }}",
    "{{ tools | tojson(indent=2) }}",
    "{% set ns = namespace(x=0) %}",
    "{% set ns.x = ns.x + 1 %}",
    "{{ raise_exception('bad role') }}",
    "{{ strftime_now('%Y-%m-%d') }}",
    "{{ m.content.strip().split('</think>')[-1] }}",
    "{% for i in range(100000) %}",
    "{% for j in range(100000) %}{{ j }}",
    "{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}",
    "{{ messages[-1].content * 100000 }}",
    "{% raw %}",
    "{% endraw %}",
    "{{",
    "}}",
    "{%",
    "%}",
    "{# note #}",
    "text ",
];

fn template() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(FRAGMENTS), 0..12).prop_map(|f| f.concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn chat_templates(source in template()) {
        if let Ok(template) = ChatTemplate::new(&source, Some("<s>"), Some("</s>")) {
            let tools = [serde_json::json!({"type": "function", "function": {"name": "f"}})];
            let _ = template.render(&conversation(), &tools, true);
        }
    }
}
