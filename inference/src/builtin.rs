//! Models that need no weights. `builtin:echo` streams the last user message (or tool
//! result) back word by word, optionally with a delay per word (model option
//! `token_delay_ms`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream;

use crate::model::{
    FinishReason, GenerateRequest, Generation, GenerationEvent, Model, Role, Usage,
};
use crate::{Error, Result};

/// The prefix of built-in model ids.
pub const PREFIX: &str = "builtin:";

/// The full ids of all built-in models.
pub fn ids() -> Vec<&'static str> {
    vec!["builtin:echo"]
}

/// Loads the built-in model `name` (the part after [`PREFIX`]).
pub fn load(name: &str, options: &BTreeMap<String, String>) -> Result<Arc<dyn Model>> {
    match name {
        "echo" => Ok(Arc::new(Echo::from_options(options)?)),
        _ => Err(Error::UnknownModel { id: format!("{PREFIX}{name}"), known: ids().join(", ") }),
    }
}

/// Echoes the last user message back, one word (with the whitespace before it) per delta.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    token_delay: Duration,
}

impl Echo {
    pub fn new(token_delay: Duration) -> Self {
        Self { token_delay }
    }

    /// Reads `token_delay_ms` (a non-negative number, fractions allowed); other options are
    /// rejected so that typos do not pass silently.
    pub fn from_options(options: &BTreeMap<String, String>) -> Result<Self> {
        let mut echo = Self::default();
        for (key, value) in options {
            match key.as_str() {
                "token_delay_ms" => {
                    let ms: f64 = value
                        .trim()
                        .parse()
                        .ok()
                        .filter(|ms: &f64| ms.is_finite() && *ms >= 0.0 && *ms <= 3_600_000.0)
                        .ok_or_else(|| Error::InvalidOption {
                            key: key.clone(),
                            value: value.clone(),
                            expected: "a number of milliseconds between 0 and 3600000",
                        })?;
                    echo.token_delay = Duration::from_secs_f64(ms / 1000.0);
                }
                _ => {
                    return Err(Error::InvalidOption {
                        key: key.clone(),
                        value: value.clone(),
                        expected: "builtin:echo knows only token_delay_ms",
                    });
                }
            }
        }
        Ok(echo)
    }
}

/// Splits `text` into words, each carrying the whitespace before it, so the deltas join
/// back to exactly `text`.
pub fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut start = 0;
    let mut in_word = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if in_word {
                words.push(text[start..i].to_owned());
                start = i;
                in_word = false;
            }
        } else {
            in_word = true;
        }
    }
    if start < text.len() {
        words.push(text[start..].to_owned());
    }
    words
}

impl Model for Echo {
    fn id(&self) -> &str {
        "builtin:echo"
    }

    fn generates_in_place(&self) -> bool {
        true
    }

    fn generate(&self, request: GenerateRequest) -> Result<Generation> {
        if request.format.is_some() {
            return Err(Error::InvalidRequest(
                "builtin:echo repeats its input and follows no output format: use a local model"
                    .into(),
            ));
        }
        if !request.tools.is_empty() && request.tool_choice != crate::ToolChoice::Auto {
            // It never calls a tool, so it cannot honour a call that must be made.
            return Err(Error::InvalidRequest(
                "builtin:echo repeats its input and never calls tools: use a local model".into(),
            ));
        }
        // A raw prompt, or the latest user message or tool result: after a tool call, echo
        // answers with what the tool returned.
        let (text, prompt_tokens) = match &request.prompt {
            Some(prompt) => (prompt.as_str(), prompt.split_whitespace().count()),
            None => {
                let last_user = request
                    .messages
                    .iter()
                    .rev()
                    .find(|m| matches!(m.role, Role::User | Role::Tool))
                    .ok_or_else(|| {
                        Error::InvalidRequest("the conversation has no user message".into())
                    })?;
                let words =
                    request.messages.iter().map(|m| m.content.split_whitespace().count()).sum();
                (last_user.content.as_str(), words)
            }
        };
        let mut words = split_words(text);
        let mut finish_reason = FinishReason::Stop;
        if let Some(max) = request.max_tokens
            && words.len() > max as usize
        {
            words.truncate(max as usize);
            finish_reason = FinishReason::Length;
        }
        let usage = Usage {
            prompt_tokens: u32::try_from(prompt_tokens).unwrap_or(u32::MAX),
            cached_tokens: 0,
            reasoning_tokens: 0,
            completion_tokens: u32::try_from(words.len()).unwrap_or(u32::MAX),
            finish_reason,
        };
        let done = stream::once(async move { Ok(GenerationEvent::Done(usage)) });
        let delay = self.token_delay;
        if delay.is_zero() {
            let deltas = stream::iter(words.into_iter().map(|w| Ok(GenerationEvent::Delta(w))));
            return Ok(deltas.chain(done).boxed());
        }
        let deltas = stream::iter(words).then(move |w| async move {
            tokio::time::sleep(delay).await;
            Ok(GenerationEvent::Delta(w))
        });
        Ok(deltas.chain(done).boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ChatMessage;
    use futures::TryStreamExt;

    fn request(text: &str) -> GenerateRequest {
        GenerateRequest {
            messages: vec![
                ChatMessage::new(Role::System, "be brief"),
                ChatMessage::new(Role::User, text),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn words_join_back_to_the_input() {
        for text in ["hello world", "  lead and trail  ", "", "one", "a\n b\tc", "ünï cödé ✓"]
        {
            assert_eq!(split_words(text).concat(), text);
        }
        assert_eq!(split_words("hello big world"), ["hello", " big", " world"]);
    }

    #[tokio::test]
    async fn echo_streams_words_then_usage() -> Result<()> {
        let events: Vec<_> =
            Echo::default().generate(request("hello big world"))?.try_collect().await?;
        assert_eq!(
            events,
            [
                GenerationEvent::Delta("hello".into()),
                GenerationEvent::Delta(" big".into()),
                GenerationEvent::Delta(" world".into()),
                GenerationEvent::Done(Usage {
                    prompt_tokens: 5,
                    completion_tokens: 3,
                    ..Default::default()
                }),
            ]
        );
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn echo_waits_between_words_when_asked() -> Result<()> {
        let options = BTreeMap::from([("token_delay_ms".to_owned(), "10".to_owned())]);
        let echo = Echo::from_options(&options)?;
        let started = tokio::time::Instant::now();
        let events: Vec<_> = echo.generate(request("a b c"))?.try_collect().await?;
        assert_eq!(events.len(), 4);
        assert_eq!(started.elapsed(), Duration::from_millis(30));
        Ok(())
    }

    #[test]
    fn bad_options_are_rejected() {
        let bad = BTreeMap::from([("token_delay_ms".to_owned(), "-1".to_owned())]);
        assert!(matches!(Echo::from_options(&bad), Err(Error::InvalidOption { .. })));
        let typo = BTreeMap::from([("token_delay".to_owned(), "1".to_owned())]);
        assert!(matches!(Echo::from_options(&typo), Err(Error::InvalidOption { .. })));
    }

    #[test]
    fn max_tokens_truncates() -> Result<()> {
        let mut req = request("a b c d");
        req.max_tokens = Some(2);
        let events =
            futures::executor::block_on(Echo::default().generate(req)?.try_collect::<Vec<_>>())?;
        assert_eq!(events.len(), 3);
        Ok(())
    }

    #[test]
    fn unknown_builtin_is_a_clear_error() {
        let err =
            crate::load_builtin("builtin:nope", &BTreeMap::new()).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("unknown model \"builtin:nope\": known models are builtin:echo")
        );
    }
}
