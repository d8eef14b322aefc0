//! A thinking model's reasoning, kept apart from its answer.
//!
//! Qwen3 (and the models trained like it: QwQ, DeepSeek-R1's distillations, SmolLM3) write
//! their reasoning between `<think>` and `</think>`, each one token. The engine lets an
//! output format bind only what follows the reasoning ([`Constraint::after_reasoning`]);
//! the generation stream reports the two apart.
//!
//! [`Constraint::after_reasoning`]: fleet_grammar::Constraint::after_reasoning

use super::{ChatTemplate, Tokenizer};

/// The tokens that open and close a model's reasoning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Markers {
    pub open: u32,
    pub close: u32,
}

/// The text of the opening and closing markers.
pub const OPEN: &str = "<think>";
pub const CLOSE: &str = "</think>";

impl Markers {
    /// The markers of a model that thinks: both are single tokens of its vocabulary and its
    /// chat template writes them (a vocabulary that merely holds them, as some base models'
    /// do, is not enough).
    pub fn of(tokenizer: &Tokenizer, template: Option<&ChatTemplate>) -> Option<Self> {
        let template = template?;
        if !template.source().contains(OPEN) {
            return None;
        }
        Some(Self { open: tokenizer.token_id(OPEN)?, close: tokenizer.token_id(CLOSE)? })
    }

    /// Whether `prompt` leaves the model inside its reasoning: a template that opens every
    /// answer's reasoning itself (Qwen3's thinking-only models, QwQ).
    pub fn opened_by(&self, prompt: &[u32]) -> bool {
        let last = |marker: u32| prompt.iter().rposition(|&t| t == marker);
        match (last(self.open), last(self.close)) {
            (Some(open), Some(close)) => open > close,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_opens_the_reasoning_when_its_last_marker_opens() {
        let m = Markers { open: 1, close: 2 };
        assert!(!m.opened_by(&[5, 6]));
        assert!(m.opened_by(&[5, 1, 7]));
        assert!(!m.opened_by(&[1, 7, 2, 9]), "an empty reasoning written by the template");
        assert!(m.opened_by(&[1, 2, 3, 1]));
    }
}
