//! Writes the planted thinking model of the reasoning tests (a tiny Qwen3 Hugging Face folder
//! that answers `<think>REASONING</think>ANSWER` by rote: `fixture::write_thinking_model`),
//! for test suites outside Rust (the official OpenAI and A2A clients' tests). `cargo test`
//! builds it into `target/<profile>/examples/`.
//!
//!     write_thinking_model DIR REASONING ANSWER

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, reasoning, answer] = args.as_slice() else {
        eprintln!("usage: write_thinking_model DIR REASONING ANSWER");
        return ExitCode::from(2);
    };
    match fleet_inference::transformer::fixture::write_thinking_model(
        dir.as_ref(),
        reasoning,
        answer,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("write_thinking_model: {e}");
            ExitCode::FAILURE
        }
    }
}
