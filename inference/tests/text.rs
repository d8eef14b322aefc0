//! The text layer: tokenizer loading (Hugging Face folder and GGUF), chat templates,
//! streaming detokenization and stop strings, all on the tiny fixture tokenizer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::quantized::gguf_file::{self, Value};
use fleet_inference::text::fixture::{self, QWEN25_CHAT_TEMPLATE};
use fleet_inference::text::{ChatTemplate, Detokenizer, StopMatcher, Tokenizer};
use fleet_inference::{ChatMessage, Error, Role};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SAMPLES: [&str; 5] = [
    "Hello world, the user and the assistant. It is 2024!",
    "café déjà vu — naïve résumé, Ærøskøbing",
    "世界你好，世界！東京は晴れ。",
    "emoji 😀🎉 and 👍🏽 family 👨\u{200d}👩\u{200d}👧 😀😀",
    "<|im_start|>user\nmixé 世界 😀<|im_end|>\n",
];

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> std::io::Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("fleet-text-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture_dir(name: &str) -> Result<(TempDir, usize), Box<dyn std::error::Error>> {
    let dir = TempDir::new(name)?;
    let vocab = fixture::write_tokenizer_files(&dir.0)?;
    Ok((dir, vocab))
}

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new(Role::System, "You are terse."),
        ChatMessage::new(Role::User, "Hi!"),
        ChatMessage::new(Role::Assistant, "Hello."),
        ChatMessage::new(Role::User, "2+2?"),
    ]
}

#[test]
fn text_types_can_be_shared_across_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<Tokenizer>();
    shared::<ChatTemplate>();
    shared::<Detokenizer>();
    shared::<StopMatcher>();
}

fn stream(tokenizer: &Tokenizer, ids: &[u32]) -> fleet_inference::Result<Vec<String>> {
    let mut detok = Detokenizer::new();
    let mut deltas = Vec::new();
    for &id in ids {
        deltas.push(detok.push(tokenizer, id)?);
    }
    deltas.push(detok.finish(tokenizer)?);
    Ok(deltas)
}

#[test]
fn fixture_tokenizer_round_trips_and_splits_characters_across_tokens() -> TestResult {
    let (dir, vocab) = fixture_dir("roundtrip")?;
    assert!(vocab <= 384, "fixture vocab {vocab} exceeds 384");
    let tok = Tokenizer::from_hf_dir(&dir.0)?;
    assert_eq!(tok.vocab_size(), vocab);
    for text in SAMPLES {
        let ids = tok.encode(text)?;
        assert_eq!(tok.decode(&ids)?, text);
    }
    // Merges make common words single tokens and specials stay whole.
    assert_eq!(tok.encode(" the")?.len(), 1);
    assert_eq!(tok.encode("<|im_end|>")?, vec![tok.token_id("<|im_end|>").ok_or("no im_end")?]);
    // And some tokens end inside a character, which is what the detokenizer must handle.
    let split = ["é", "世界", "😀", "👍🏽"].iter().any(|t| {
        tok.encode(t).is_ok_and(|ids| {
            ids.iter().any(|&id| tok.decode(&[id]).is_ok_and(|s| s.contains('\u{FFFD}')))
        })
    });
    assert!(split, "no sample splits a character across tokens");
    Ok(())
}

#[test]
fn eos_ids_and_special_tokens_come_from_the_config_files() -> TestResult {
    let (dir, _) = fixture_dir("eos")?;
    let tok = Tokenizer::from_hf_dir(&dir.0)?;
    let im_end = tok.token_id("<|im_end|>").ok_or("no im_end")?;
    let endoftext = tok.token_id("<|endoftext|>").ok_or("no endoftext")?;
    let mut expected = vec![im_end, endoftext];
    expected.sort_unstable();
    assert_eq!(tok.eos_ids(), expected);
    assert_eq!(tok.eos_token(), Some("<|im_end|>"));
    assert_eq!(tok.bos_token(), None);
    assert!(!tok.eos_ids().contains(&tok.token_id("<|im_start|>").ok_or("no im_start")?));

    // The list form of chat_template, AddedToken objects and a single eos id.
    let template =
        r#"{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"#;
    let config = serde_json::json!({
        "bos_token": {"content": "<|im_start|>", "special": true},
        "eos_token": {"__type": "AddedToken", "content": "<|endoftext|>"},
        "chat_template": [
            {"name": "tool_use", "template": "wrong"},
            {"name": "default", "template": template},
        ],
    });
    std::fs::write(dir.0.join("tokenizer_config.json"), config.to_string())?;
    std::fs::write(dir.0.join("generation_config.json"), r#"{"eos_token_id": 1}"#)?;
    let tok = Tokenizer::from_hf_dir(&dir.0)?;
    assert_eq!(tok.bos_token(), Some("<|im_start|>"));
    assert_eq!(tok.eos_token(), Some("<|endoftext|>"));
    let mut expected = vec![1, im_end, endoftext];
    expected.sort_unstable();
    assert_eq!(tok.eos_ids(), expected);
    let prompt = tok.chat_template().ok_or("no template")?.render(
        &[ChatMessage::new(Role::User, "a"), ChatMessage::new(Role::Assistant, "b")],
        &[],
        true,
    )?;
    assert_eq!(prompt, "<|im_start|>a<|endoftext|>b<|endoftext|>");

    // Only tokenizer.json is required.
    std::fs::remove_file(dir.0.join("tokenizer_config.json"))?;
    std::fs::remove_file(dir.0.join("generation_config.json"))?;
    let tok = Tokenizer::from_hf_dir(&dir.0)?;
    assert!(tok.chat_template().is_none());
    std::fs::write(dir.0.join("chat_template.jinja"), "{{ messages[0].content }}!")?;
    let tok = Tokenizer::from_hf_dir(&dir.0)?;
    let template = tok.chat_template().ok_or("chat_template.jinja was not read")?;
    assert_eq!(template.render(&[ChatMessage::new(Role::User, "x")], &[], true)?, "x!");
    assert_eq!(tok.eos_token(), None);
    let mut expected = vec![im_end, endoftext];
    expected.sort_unstable();
    assert_eq!(tok.eos_ids(), expected, "end-of-turn specials are found without any config");
    Ok(())
}

#[test]
fn qwen25_chatml_template_renders_the_expected_prompt() -> TestResult {
    let (dir, _) = fixture_dir("chatml")?;
    let tok = Tokenizer::from_hf_dir(&dir.0)?;
    let template = tok.chat_template().ok_or("fixture has no chat template")?;
    assert_eq!(template.source(), QWEN25_CHAT_TEMPLATE);
    let expected = "<|im_start|>system\nYou are terse.<|im_end|>\n\
                    <|im_start|>user\nHi!<|im_end|>\n\
                    <|im_start|>assistant\nHello.<|im_end|>\n\
                    <|im_start|>user\n2+2?<|im_end|>\n\
                    <|im_start|>assistant\n";
    assert_eq!(template.render(&conversation(), &[], true)?, expected);
    // The built-in ChatML fallback renders the same for a conversation with a system message.
    assert_eq!(ChatTemplate::chatml().render(&conversation(), &[], true)?, expected);

    // Without a system message Qwen2.5 adds its own; without the generation prompt none.
    let prompt = template.render(&[ChatMessage::new(Role::User, "yo")], &[], false)?;
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful \
         assistant.<|im_end|>\n<|im_start|>user\nyo<|im_end|>\n"
    );
    // The rendered prompt tokenizes with its specials as single tokens.
    let ids = tok.encode(expected)?;
    let im_start = tok.token_id("<|im_start|>").ok_or("no im_start")?;
    assert_eq!(ids.iter().filter(|&&id| id == im_start).count(), 5);
    Ok(())
}

#[test]
fn qwen25_template_lists_tools_as_python_json() -> TestResult {
    let template = ChatTemplate::new(QWEN25_CHAT_TEMPLATE, None, Some("<|im_end|>"))?;
    // Keys in sorted order: serde_json::Value here keeps maps sorted, as this input is.
    let tool = serde_json::json!({
        "function": {
            "description": "Weather in <city> & around",
            "name": "get_weather",
            "parameters": {"properties": {"city": {"type": "string"}}, "required": ["city"], "type": "object"},
        },
        "type": "function",
    });
    let prompt = template.render(
        &[ChatMessage::new(Role::User, "Paris?")],
        std::slice::from_ref(&tool),
        true,
    )?;
    let expected = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful \
        assistant.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
        You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n\
        {\"function\": {\"description\": \"Weather in <city> & around\", \"name\": \"get_weather\", \
        \"parameters\": {\"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"], \
        \"type\": \"object\"}}, \"type\": \"function\"}\n</tools>\n\n\
        For each function call, return a json object with function name and arguments within \
        <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": \
        <args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\nParis?<|im_end|>\n\
        <|im_start|>assistant\n";
    assert_eq!(prompt, expected);
    Ok(())
}

/// The chat template of Meta-Llama-3-8B-Instruct, verbatim.
const LLAMA3_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}\
{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] \
| trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}\
{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

#[test]
fn llama3_template_renders_the_expected_prompt() -> TestResult {
    let template =
        ChatTemplate::new(LLAMA3_TEMPLATE, Some("<|begin_of_text|>"), Some("<|eot_id|>"))?;
    let mut messages = conversation();
    messages[1].content = "  Hi!\n".into(); // the template trims message content
    let expected = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>\
                    <|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>\
                    <|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>\
                    <|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>\
                    <|start_header_id|>assistant<|end_header_id|>\n\n";
    assert_eq!(template.render(&messages, &[], true)?, expected);
    let without = template.render(&messages, &[], false)?;
    assert_eq!(
        without,
        expected.trim_end_matches("<|start_header_id|>assistant<|end_header_id|>\n\n")
    );
    Ok(())
}

#[test]
fn templates_get_python_methods_loop_controls_and_hf_helpers() -> TestResult {
    let source = "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}\
        [{{ m.content.strip().upper() }}|{{ m.content.startswith(' a') }}]{% endfor %}\
        {{ strftime_now('%Y') | length }} {{ date_string | length }} {{ tools is defined }}";
    let template = ChatTemplate::new(source, None, None)?;
    let messages = [ChatMessage::new(Role::System, "skip"), ChatMessage::new(Role::User, " ab ")];
    assert_eq!(template.render(&messages, &[], false)?, "[AB|True]4 11 False");

    let raising = ChatTemplate::new(
        "{% if messages[0].role != 'user' %}{{ raise_exception('roles must alternate') }}{% endif %}",
        None,
        None,
    )?;
    let err = raising.render(&messages, &[], true).err().ok_or("raise_exception did not fail")?;
    assert!(matches!(err, Error::TemplateRender(_)), "{err:?}");
    assert!(err.to_string().contains("roles must alternate"), "{err}");
    Ok(())
}

#[test]
fn bad_template_syntax_is_an_error_naming_the_problem() -> TestResult {
    let err = ChatTemplate::new("{% for m in messages %}{{ m.content }}", None, None)
        .err()
        .ok_or("unclosed for loop was accepted")?;
    assert!(matches!(err, Error::TemplateSyntax(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.starts_with("chat template does not parse"), "{message}");
    assert!(message.contains("endfor") || message.contains("end of input"), "{message}");

    // A bad template inside tokenizer_config.json fails the load the same way.
    let (dir, _) = fixture_dir("badtemplate")?;
    let config = serde_json::json!({"chat_template": "{{ oops", "eos_token": "<|im_end|>"});
    std::fs::write(dir.0.join("tokenizer_config.json"), config.to_string())?;
    let err = Tokenizer::from_hf_dir(&dir.0).err().ok_or("bad template was accepted")?;
    assert!(matches!(err, Error::TemplateSyntax(_)), "{err:?}");
    Ok(())
}

#[test]
fn missing_or_corrupt_files_are_errors_naming_the_path() -> TestResult {
    let dir = TempDir::new("missing")?;
    let err = Tokenizer::from_hf_dir(&dir.0).err().ok_or("empty folder was accepted")?;
    let message = err.to_string();
    assert!(matches!(err, Error::ReadFile { .. }), "{err:?}");
    assert!(message.contains(&*dir.0.join("tokenizer.json").to_string_lossy()), "{message}");
    assert!(message.starts_with("cannot read Hugging Face tokenizer.json /"), "{message}");

    std::fs::write(dir.0.join("tokenizer.json"), "{\"model\": {\"type\": \"BPE\", ")?;
    let err = Tokenizer::from_hf_dir(&dir.0).err().ok_or("corrupt tokenizer.json was accepted")?;
    let message = err.to_string();
    assert!(matches!(err, Error::InvalidFile { .. }), "{err:?}");
    assert!(
        message.contains("tokenizer.json is not a valid Hugging Face tokenizer.json"),
        "{message}"
    );

    // Optional files may be absent, but a corrupt one is reported rather than ignored.
    let (dir, _) = fixture_dir("corrupt-config")?;
    std::fs::write(dir.0.join("tokenizer_config.json"), "{not json")?;
    let err = Tokenizer::from_hf_dir(&dir.0).err().ok_or("corrupt config was accepted")?;
    assert!(err.to_string().contains("tokenizer_config.json is not a valid JSON object"), "{err}");

    // tokenizers panics on a malformed decoder (found by tests/fuzz.rs): an error here.
    let (dir, _) = fixture_dir("bad-decoder")?;
    let path = dir.0.join("tokenizer.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    json["decoder"] = serde_json::json!("DECODER");
    let text = json.to_string().replace("\"DECODER\"", "{\"type\" \"ByteLevel\"}");
    std::fs::write(&path, text)?;
    let err = Tokenizer::from_hf_dir(&dir.0).err().ok_or("a malformed decoder was accepted")?;
    assert!(matches!(err, Error::InvalidFile { .. }), "{err:?}");

    // Two tokens sharing an id: tokenizers' BPE builder panics when the model is rebuilt
    // without its word cache (found by tests/fuzz.rs): loads or is an error, never a panic.
    // Which of the two the id reads back as follows a hash map's order, random per map:
    // loaded 64 times, both orders come up.
    let (dir, _) = fixture_dir("shared-id")?;
    let path = dir.0.join("tokenizer.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let vocab = &mut json["model"]["vocab"];
    vocab["l"] = vocab["\u{120}worl"].clone();
    std::fs::write(&path, json.to_string())?;
    for _ in 0..64 {
        if let Err(err) = Tokenizer::from_hf_dir(&dir.0) {
            assert!(matches!(err, Error::InvalidFile { .. }), "{err:?}");
        }
    }

    // A template that loops over large strings stops at the prompt limit.
    let greedy = "{% for i in range(10000) %}{{ messages[0].content * 10000 }}{% endfor %}";
    let err = ChatTemplate::new(greedy, None, None)?
        .render(&conversation(), &[], true)
        .err()
        .ok_or("a 1 GB prompt was rendered")?;
    assert!(err.to_string().contains("the prompt grew past 64 MiB"), "{err}");

    let err = fixture::gguf_tokenizer_metadata(&TempDir::new("nogguf")?.0)
        .err()
        .ok_or("metadata from an empty folder")?;
    assert!(matches!(err, Error::ReadFile { .. }), "{err:?}");
    Ok(())
}

#[test]
fn detokenizer_streams_multibyte_text_without_splitting_characters() -> TestResult {
    let (dir, _) = fixture_dir("detok")?;
    let tok = Tokenizer::from_hf_dir(&dir.0)?;
    let mut held_back = 0;
    for text in SAMPLES {
        let ids = tok.encode(text)?;
        let deltas = stream(&tok, &ids)?;
        for delta in &deltas {
            assert!(!delta.contains('\u{FFFD}'), "delta {delta:?} of {text:?} splits a character");
        }
        held_back += deltas.iter().filter(|d| d.is_empty()).count();
        assert_eq!(deltas.concat(), tok.decode(&ids)?);
        assert_eq!(deltas.concat(), text);
    }
    assert!(held_back > 0, "no token was ever held back: the samples do not exercise splitting");

    // Every prompt of a conversation streams back exactly, specials included.
    let prompt = ChatTemplate::chatml().render(&conversation(), &[], true)?;
    assert_eq!(stream(&tok, &tok.encode(&prompt)?)?.concat(), prompt);

    // Invalid UTF-8 from the model (a lone 0xFF byte token) comes out as U+FFFD with the
    // next complete character, exactly as a full decode shows it.
    let ids = [tok.encode("ok ")?, vec![255], tok.encode("é")?].concat();
    let deltas = stream(&tok, &ids)?;
    assert_eq!(deltas.concat(), tok.decode(&ids)?);
    assert_eq!(deltas.concat(), "ok \u{FFFD}é");
    let ids = [tok.encode("ok ")?, vec![255]].concat();
    let deltas = stream(&tok, &ids)?;
    assert_eq!(deltas[deltas.len() - 2..], ["", "\u{FFFD}"], "held until finish");

    // A model stuck on invalid bytes is not held back until it ends: beyond the three
    // U+FFFD that could be a character's first bytes, they come out as they arrive.
    let ok = tok.encode("ok ")?;
    let ids = [ok.clone(), vec![255; 12], tok.encode("é")?].concat();
    let deltas = stream(&tok, &ids)?;
    assert_eq!(deltas.concat(), tok.decode(&ids)?);
    let held: Vec<&str> = deltas[ok.len()..ok.len() + 12].iter().map(|d| d.as_str()).collect();
    assert_eq!(held[..3], ["", "", ""], "a character's first bytes are held");
    assert!(held[3..].iter().all(|d| *d == "\u{FFFD}"), "{held:?}");
    // And a four-byte character in single-byte tokens still comes out whole.
    let emoji: Vec<u32> = "😀".bytes().map(u32::from).collect();
    let deltas = stream(&tok, &[ok, emoji].concat())?;
    assert_eq!(deltas[deltas.len() - 5..], ["", "", "", "😀", ""]);
    Ok(())
}

#[test]
fn detokenizer_streams_tokens_that_join_characters_in_any_order() -> TestResult {
    // A sampled or constrained generation may spell text in tokens the tokenizer would not
    // choose: here single bytes and the fixture's token joining the end of "世" (E4 B8 96) to
    // the start of "界" (E7 95 8C), so that four tokens in a row end inside a character.
    let (dir, _) = fixture_dir("joined")?;
    let tok = Tokenizer::from_hf_dir(&dir.0)?;
    let joined = tok.encode("世界")?.get(1).copied().ok_or("no joining token")?;
    assert_eq!(tok.decode(&[0xE4, 0xB8, joined])?, "世\u{FFFD}");
    let ok = tok.encode("ok ")?;
    let world = [0xE4, 0xB8, joined, 0x95, 0x8C];
    let ids = [ok.clone(), world.to_vec(), world.to_vec(), tok.encode("!")?].concat();
    let deltas = stream(&tok, &ids)?;
    assert_eq!(deltas.concat(), "ok 世界世界!");
    let world_deltas = &deltas[ok.len()..ok.len() + world.len()];
    assert_eq!(world_deltas, ["", "", "世", "", "界"], "each character once it is whole");

    // A window that never reaches a character's end is emitted as decoded after 64 tokens;
    // a character finished across that boundary then costs the U+FFFD already shown, and
    // nothing after it is lost.
    let ids = [ok.clone(), vec![0xFF; 63], vec![0xE4, 0xB8, 0x96], tok.encode("界!")?].concat();
    let deltas = stream(&tok, &ids)?;
    assert_eq!(deltas[ok.len() + 64], "\u{FFFD}".repeat(3), "the three held come out");
    assert_eq!(deltas.concat(), format!("ok {}界!", "\u{FFFD}".repeat(64)));
    assert_eq!(deltas.last().map(String::as_str), Some(""), "streamed, not held to the end");
    Ok(())
}

#[test]
fn stop_strings_spanning_deltas_stop_and_never_leak() {
    let mut stop = StopMatcher::new(vec!["STOP".into()]);
    assert_eq!(stop.push("abc S"), ("abc ".into(), false));
    assert_eq!(stop.push("TO"), (String::new(), false));
    assert_eq!(stop.push("P and more"), (String::new(), true));
    assert!(stop.stopped());
    assert_eq!(stop.push("later"), (String::new(), true));
    assert_eq!(stop.finish(), "");

    // A partial match that fails is released.
    let mut stop = StopMatcher::new(vec!["STOP".into()]);
    assert_eq!(stop.push("xST"), ("x".into(), false));
    assert_eq!(stop.push("Ox"), ("STOx".into(), false));
    assert_eq!(stop.push("ST"), (String::new(), false));
    assert_eq!(stop.finish(), "ST", "finish flushes the held text when no stop came");

    // Text before the stop in the same delta is emitted; the earliest stop wins.
    let mut stop = StopMatcher::new(vec!["</s>".into(), "\n\n".into(), String::new()]);
    assert_eq!(stop.push("one\n\ntwo</s>"), ("one".into(), true));

    // Multi-byte stop strings hold back whole characters only.
    let mut stop = StopMatcher::new(vec!["世界!".into()]);
    assert_eq!(stop.push("日世"), ("日".into(), false));
    assert_eq!(stop.push("界"), (String::new(), false));
    assert_eq!(stop.push("?"), ("世界?".into(), false));
    assert_eq!(stop.push("世界"), (String::new(), false));
    assert_eq!(stop.push("!"), (String::new(), true));
}

#[test]
fn stop_strings_work_on_detokenized_token_streams() -> TestResult {
    let (dir, _) = fixture_dir("stopstream")?;
    let tok = Tokenizer::from_hf_dir(&dir.0)?;
    let text = "Hello world, café 世界 😀<|im_end|>ignored";
    let ids = tok.encode(text)?;
    for stops in [vec!["<|im_end|>"], vec!["界 😀<"], vec!["😀<|im"]] {
        let stop_at = stops.iter().filter_map(|s| text.find(s)).min().ok_or("stop not in text")?;
        let mut matcher = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut detok = Detokenizer::new();
        let (mut out, mut stopped) = (String::new(), false);
        for &id in &ids {
            let (safe, hit) = matcher.push(&detok.push(&tok, id)?);
            out.push_str(&safe);
            if hit {
                stopped = true;
                break;
            }
        }
        assert!(stopped, "{stops:?} did not stop");
        assert_eq!(out, text[..stop_at], "{stops:?}");
    }

    // No stop string in the stream: everything comes out once finished.
    let mut matcher = StopMatcher::new(vec!["never".into(), "世界!".into()]);
    let mut detok = Detokenizer::new();
    let mut out = String::new();
    for &id in &ids {
        let (safe, hit) = matcher.push(&detok.push(&tok, id)?);
        assert!(!hit);
        out.push_str(&safe);
    }
    let (safe, hit) = matcher.push(&detok.finish(&tok)?);
    assert!(!hit);
    out.push_str(&safe);
    out.push_str(&matcher.finish());
    assert_eq!(out, text);
    Ok(())
}

fn gguf_round_trip(dir: &Path) -> Result<HashMap<String, Value>, Box<dyn std::error::Error>> {
    // Through a real GGUF file, as a model fixture writer would do it.
    let metadata = fixture::gguf_tokenizer_metadata(dir)?;
    let refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let path = dir.join("tokenizer.gguf");
    gguf_file::write(&mut std::fs::File::create(&path)?, &refs, &[])?;
    let content = gguf_file::Content::read(&mut std::fs::File::open(&path)?)?;
    Ok(content.metadata)
}

#[test]
fn gguf_metadata_builds_the_same_tokenizer_as_the_hf_folder() -> TestResult {
    let (dir, vocab) = fixture_dir("gguf")?;
    let hf = Tokenizer::from_hf_dir(&dir.0)?;
    let mut metadata = gguf_round_trip(&dir.0)?;
    let gguf = Tokenizer::from_gguf(&metadata)?;
    assert_eq!(gguf.vocab_size(), vocab);
    for text in SAMPLES.iter().chain(&["", " \n\n  x", "I'LL don't 12345"]) {
        let ids = hf.encode(text)?;
        assert_eq!(gguf.encode(text)?, ids, "{text:?}");
        assert_eq!(gguf.decode(&ids)?, *text);
    }
    assert_eq!(gguf.eos_ids(), hf.eos_ids());
    assert_eq!(gguf.eos_token(), Some("<|im_end|>"));
    assert_eq!(gguf.bos_token(), Some("<|endoftext|>"));
    let template = gguf.chat_template().ok_or("gguf lost the chat template")?;
    assert_eq!(template.source(), QWEN25_CHAT_TEMPLATE);

    // Token ids of any integer width are accepted, eot adds an end id, negatives are refused.
    metadata.insert("tokenizer.ggml.eos_token_id".into(), Value::I64(5));
    metadata.insert("tokenizer.ggml.eot_token_id".into(), Value::U16(7));
    let tok = Tokenizer::from_gguf(&metadata)?;
    assert!(tok.eos_ids().contains(&5) && tok.eos_ids().contains(&7), "{:?}", tok.eos_ids());
    metadata.insert("tokenizer.ggml.eos_token_id".into(), Value::I32(-1));
    let err = Tokenizer::from_gguf(&metadata).err().ok_or("negative id accepted")?;
    assert!(matches!(err, Error::GgufTokenizer { .. }), "{err:?}");
    assert!(err.to_string().contains("tokenizer.ggml.eos_token_id"), "{err}");

    metadata.remove("tokenizer.ggml.tokens");
    let err = Tokenizer::from_gguf(&metadata).err().ok_or("no tokens accepted")?;
    assert!(matches!(err, Error::GgufTokenizerBuild(_)), "{err:?}");
    assert!(err.to_string().contains("tokenizer.ggml.tokens"), "{err}");
    Ok(())
}
