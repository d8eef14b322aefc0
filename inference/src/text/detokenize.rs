//! [`Detokenizer`]: token ids to text deltas while a generation streams.
//!
//! Byte-level BPE tokens can end in the middle of a UTF-8 character, so decoding each token on
//! its own would yield U+FFFD. This follows TGI's `prefix_offset`/`read_offset` scheme: decode
//! a short window that starts a few tokens back (so decoders that treat the first token
//! specially, like SentencePiece's leading space, see context), emit only the text past what
//! was already emitted, and hold back while the window's text ends in U+FFFD — for at most
//! the three tokens a character's first bytes can span: beyond that the bytes held are not
//! the start of a character but invalid, and come out as U+FFFD (a model stuck on invalid
//! bytes would otherwise stream nothing until its end, decoding an ever longer window).

use super::Tokenizer;
use crate::Result;

/// Tokens that may be the start of an unfinished character: UTF-8 characters are at most four
/// bytes, and every byte-level token carries at least one.
const UNFINISHED: usize = 3;

/// Incremental decoder state for one sequence.
#[derive(Debug, Default, Clone)]
pub struct Detokenizer {
    /// The tokens from `prefix_offset` on; older ones are dropped as the window moves.
    window: Vec<u32>,
    /// Tokens of `window` already emitted: the context decoded before the new ones.
    read: usize,
}

impl Detokenizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one token and returns the text it completes: possibly empty, never part of a
    /// character. Bytes that are not valid UTF-8 come out as U+FFFD once a complete character
    /// or three more tokens follow them, or from [`finish`].
    ///
    /// [`finish`]: Detokenizer::finish
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> Result<String> {
        self.window.push(token);
        let prefix = tokenizer.decode(&self.window[..self.read])?;
        let text = tokenizer.decode(&self.window)?;
        if text.ends_with('\u{FFFD}') {
            // Too many tokens held to be one unfinished character: all but the last few
            // are invalid bytes; emit those.
            let held = self.window.len() - self.read;
            if held > UNFINISHED {
                let upto = self.window.len() - UNFINISHED;
                let text = tokenizer.decode(&self.window[..upto])?;
                return Ok(self.emit(&prefix, &text, upto));
            }
            return Ok(String::new());
        }
        Ok(self.emit(&prefix, &text, self.window.len()))
    }

    /// The text of the window's first `upto` tokens past the emitted `prefix`, which those
    /// tokens then become (or nothing, holding on, if `text` does not extend `prefix`).
    fn emit(&mut self, prefix: &str, text: &str, upto: usize) -> String {
        if text.len() <= prefix.len() {
            return String::new();
        }
        // Decoders are not required to be prefix-stable; if this window's text does not
        // extend the emitted prefix at a character boundary, wait for more context.
        let Some(delta) = text.strip_prefix(prefix) else { return String::new() };
        let delta = delta.to_owned();
        // The old context is no longer needed: the emitted tokens become the next prefix.
        self.window.drain(..self.read);
        self.read = upto - self.read;
        delta
    }

    /// Returns whatever text is still held back and resets for a new sequence.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let prefix = tokenizer.decode(&self.window[..self.read])?;
        let text = tokenizer.decode(&self.window)?;
        *self = Self::default();
        let rest = text.strip_prefix(prefix.as_str()).or_else(|| text.get(prefix.len()..));
        Ok(rest.unwrap_or_default().to_owned())
    }
}
