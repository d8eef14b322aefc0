//! Constrained decoding through `load()` and `generate`: a tiny random-weight model (whose
//! unconstrained output is noise) sampled at temperature 1 follows a regex and a JSON
//! schema every time; a constrained sequence changes nothing for the others in its batch;
//! a bad format is an invalid request and the model keeps serving. On SmolLM2 (real
//! weights) answers under a schema parse and validate.

use std::path::PathBuf;

use candle_core::Device;
use fleet_inference::installed::smollm2_gguf;
use fleet_inference::text::fixture::write_tokenizer_files;
use fleet_inference::transformer::{Family, fixture};
use fleet_inference::{
    ChatMessage, Error, FinishReason, GenerateRequest, GenerationEvent, LoadOptions, LocalModel,
    Model, OutputFormat, Role, Usage, load,
};
use futures::StreamExt;
use serde_json::{Value, json};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn tiny_model(name: &str) -> Result<LocalModel> {
    let dir = std::env::temp_dir().join(format!("fleet-constrained-{name}-{}", std::process::id()));
    let cfg = fixture::tiny_config(Family::Qwen2, true);
    fixture::write_hf(&dir, &cfg, &fixture::random_weights(&cfg)?)?;
    write_tokenizer_files(&dir)?;
    Ok(load(&dir, &Device::Cpu, &LoadOptions::default())?)
}

fn request(
    text: &str,
    seed: u64,
    max_tokens: u32,
    format: Option<OutputFormat>,
) -> GenerateRequest {
    GenerateRequest {
        messages: vec![ChatMessage::new(Role::User, text)],
        max_tokens: Some(max_tokens),
        temperature: Some(1.0),
        seed: Some(seed),
        format,
        ..Default::default()
    }
}

async fn run(model: &LocalModel, request: GenerateRequest) -> Result<(String, Usage)> {
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

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "role": {"enum": ["admin", "user"]},
        },
        "required": ["name", "age", "role"],
        "additionalProperties": false,
    })
}

/// Checks `value` against [`person_schema`] by hand.
fn is_person(value: &Value) -> bool {
    let Some(fields) = value.as_object() else { return false };
    fields.len() == 3
        && fields.get("name").and_then(Value::as_str).is_some_and(|n| n.chars().count() <= 12)
        && fields.get("age").and_then(Value::as_i64).is_some_and(|a| (0..=150).contains(&a))
        && fields.get("role").and_then(Value::as_str).is_some_and(|r| r == "admin" || r == "user")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_weights_follow_a_regex_and_a_json_schema_every_time() -> Result<()> {
    let model = tiny_model("formats")?;
    let regex = OutputFormat::Regex("(yes|no), [0-9]{2,3}".into());
    let pattern = |s: &str| {
        let (word, digits) = s.split_once(", ").unwrap_or_default();
        (word == "yes" || word == "no")
            && (2..=3).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
    };
    let schema = OutputFormat::JsonSchema(person_schema());
    let mut runs = Vec::new();
    for seed in 0..12 {
        runs.push(run(&model, request("answer", seed, 64, Some(regex.clone()))));
        runs.push(run(&model, request("a person", seed, 96, Some(schema.clone()))));
    }
    let results = futures::future::join_all(runs).await;
    for (i, result) in results.into_iter().enumerate() {
        let (text, usage) = result?;
        assert_eq!(usage.finish_reason, FinishReason::Stop, "{text:?} ended by its length");
        if i % 2 == 0 {
            assert!(pattern(&text), "{text:?} does not match the regex");
        } else {
            let value: Value = serde_json::from_str(&text)?;
            assert!(is_person(&value), "{text} does not follow the schema");
        }
    }
    // Unconstrained, the same model and seeds write noise: the masks did the work.
    let (free, _) = run(&model, request("a person", 0, 40, None)).await?;
    assert!(serde_json::from_str::<Value>(&free).is_err(), "{free:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_constrained_sequence_changes_nothing_for_the_others() -> Result<()> {
    let model = tiny_model("neighbours")?;
    let plain = || request("tell me something", 3, 40, None);
    let (alone, _) = run(&model, plain()).await?;
    let json = OutputFormat::JsonObject;
    let (beside, constrained, _) = tokio::join!(
        run(&model, plain()),
        run(&model, request("json please", 4, 40, Some(json.clone()))),
        run(&model, request("json again", 5, 40, Some(json))),
    );
    assert_eq!(beside?.0, alone);
    let (text, usage) = constrained?;
    if usage.finish_reason == FinishReason::Stop {
        assert!(serde_json::from_str::<Value>(&text)?.is_object(), "{text}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_format_is_an_invalid_request_and_the_model_keeps_serving() -> Result<()> {
    let model = tiny_model("bad")?;
    for (format, named) in [
        (OutputFormat::JsonSchema(json!({"type": "frobnicate"})), "frobnicate"),
        (OutputFormat::Lark("start: missing".into()), "missing"),
    ] {
        match model.generate(request("x", 0, 8, Some(format))) {
            Err(Error::InvalidRequest(message)) => {
                assert!(message.contains(named), "{message}")
            }
            Err(other) => panic!("expected an invalid request, got {other}"),
            Ok(_) => panic!("a bad format was accepted"),
        }
    }
    let (_, usage) = run(&model, request("still there?", 0, 4, None)).await?;
    assert_eq!(usage.completion_tokens, 4);
    Ok(())
}

fn smollm2() -> Result<LocalModel> {
    let path: PathBuf = smollm2_gguf().map_err(|e| e.to_string())?;
    Ok(load(&path, &Device::Cpu, &LoadOptions::default())?)
}

/// 32 questions about different cities answered at once under one schema: every answer
/// parses and validates, greedy or sampled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_answers_under_a_json_schema_parse_and_validate() -> Result<()> {
    let model = smollm2()?;
    let schema = json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "country": {"type": "string", "maxLength": 40},
            // An integer in a range: a number of unbounded digits can run past max_tokens
            // (sampled at 0.7, "4423685918303858…" did), which is the model's length,
            // not a broken grammar.
            "population_millions": {"type": "integer", "minimum": 0, "maximum": 100000},
            "is_capital": {"type": "boolean"},
        },
        "required": ["city", "country", "population_millions", "is_capital"],
        "additionalProperties": false,
    });
    let cities = [
        "Paris", "Tokyo", "Lima", "Cairo", "Oslo", "Rome", "Lagos", "Quito", "Hanoi", "Dublin",
        "Madrid", "Seoul", "Nairobi", "Lisbon", "Vienna", "Prague", "Berlin", "Athens", "Bogota",
        "Manila", "Havana", "Dakar", "Kyiv", "Riga", "Bern", "Doha", "Delhi", "Sydney", "Osaka",
        "Munich", "Milan", "Porto",
    ];
    let asks = cities.iter().enumerate().map(|(i, city)| {
        let mut r = request(
            &format!("Describe the city of {city} as JSON with its country and population."),
            i as u64,
            // Room for the longest answer the schema allows (two strings of 40 characters).
            160,
            Some(OutputFormat::JsonSchema(schema.clone())),
        );
        r.temperature = Some(if i % 2 == 0 { 0.0 } else { 0.7 });
        run(&model, r)
    });
    for (city, result) in cities.iter().zip(futures::future::join_all(asks).await) {
        let (text, usage) = result?;
        assert_eq!(usage.finish_reason, FinishReason::Stop, "{city}: {text}");
        let value: Value =
            serde_json::from_str(&text).map_err(|e| format!("{city}: {text}: {e}"))?;
        let fields = value.as_object().ok_or("not an object")?;
        assert_eq!(fields.len(), 4, "{city}: {text}");
        assert!(fields["city"].is_string() && fields["country"].is_string(), "{text}");
        let population = fields["population_millions"].as_u64();
        assert!(population.is_some_and(|p| p <= 100_000), "{text}");
        assert!(fields["is_capital"].is_boolean(), "{text}");
    }
    Ok(())
}
