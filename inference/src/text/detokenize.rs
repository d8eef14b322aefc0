//! [`Detokenizer`]: token ids to text deltas while a generation streams.
//!
//! Byte-level BPE tokens can end in the middle of a UTF-8 character, so decoding each token on
//! its own would yield U+FFFD. This follows TGI's `prefix_offset`/`read_offset` scheme: decode
//! a short window that starts a few tokens back (so decoders that treat the first token
//! specially, like SentencePiece's leading space, see context) and emit only the text past
//! what was already emitted.
//!
//! What is held back is decided on the text, not by counting tokens: a decode that ends in
//! U+FFFD may end in an unfinished character, which lossy decoding shows as one U+FFFD
//! (byte-level BPE) or one per byte, at most three (SentencePiece's byte fallback). So the
//! last three U+FFFD of the window are held and everything before them is emitted, even
//! while the window keeps growing: tokens that join the end of one character to the start of
//! the next (which a constrained or sampled generation may pick in any order) can leave
//! every token boundary of a long run inside a character. A window that still ends inside a
//! character after [`MAX_HELD`] tokens is garbage, not text: it is emitted as decoded, so a
//! model stuck on invalid bytes costs bounded work per token.

use super::Tokenizer;
use crate::Result;

/// U+FFFD that may stand for an unfinished character rather than invalid bytes: a character
/// is at most four bytes, so at most three of them can be waiting for the rest.
const UNFINISHED: usize = 3;

/// Tokens held past the emitted text before the window moves on regardless.
const MAX_HELD: usize = 64;

/// Incremental decoder state for one sequence.
#[derive(Debug, Default, Clone)]
pub struct Detokenizer {
    /// The tokens from `prefix_offset` on; older ones are dropped as the window moves.
    window: Vec<u32>,
    /// Tokens of `window` whose text was emitted in full: the context decoded before the
    /// held ones.
    read: usize,
    /// The text of the held tokens (past the context's) already emitted: all of it but what
    /// may still be an unfinished character.
    partial: String,
}

impl Detokenizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one token and returns the text it completes: possibly empty, never part of a
    /// character. Bytes that are not valid UTF-8 come out as U+FFFD once a complete character
    /// or three more follow them, or from [`finish`].
    ///
    /// [`finish`]: Detokenizer::finish
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> Result<String> {
        self.window.push(token);
        let prefix = tokenizer.decode(&self.window[..self.read])?;
        let text = tokenizer.decode(&self.window)?;
        // Decoders are not required to be prefix-stable; if this window's text does not
        // extend the context's, wait for more tokens.
        let Some(new) = past(&prefix, &text) else { return Ok(String::new()) };
        let unfinished = new.chars().rev().take_while(|&c| c == '\u{FFFD}').take(UNFINISHED);
        let hold = unfinished.count() * '\u{FFFD}'.len_utf8();
        let forced = self.window.len() - self.read > MAX_HELD;
        let stable = if forced { new } else { &new[..new.len() - hold] };
        let Some(delta) = stable.strip_prefix(self.partial.as_str()) else {
            return Ok(String::new());
        };
        let delta = delta.to_owned();
        if hold == 0 || forced {
            // Everything decoded is out: these tokens become the next window's context.
            self.window.drain(..self.read);
            self.read = self.window.len();
            self.partial.clear();
        } else {
            self.partial.push_str(&delta);
        }
        Ok(delta)
    }

    /// Returns whatever text is still held back and resets for a new sequence.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let prefix = tokenizer.decode(&self.window[..self.read])?;
        let text = tokenizer.decode(&self.window)?;
        let partial = std::mem::take(&mut self.partial);
        *self = Self::default();
        let new = past(&prefix, &text).or_else(|| text.get(prefix.len()..)).unwrap_or_default();
        let rest = new.strip_prefix(partial.as_str()).or_else(|| new.get(partial.len()..));
        Ok(rest.unwrap_or_default().to_owned())
    }
}

/// The text of a window past its context's: `text` after `prefix`. A context that ended in
/// U+FFFD (invalid bytes, or a window moved on by force inside a character that its next
/// bytes then finished) may decode otherwise within the longer window; the text resumes
/// after the context's last complete character then, so nothing after it is lost.
fn past<'t>(prefix: &str, text: &'t str) -> Option<&'t str> {
    if let Some(new) = text.strip_prefix(prefix) {
        return Some(new);
    }
    let complete = prefix.trim_end_matches('\u{FFFD}');
    if complete.len() == prefix.len() {
        return None;
    }
    let new = text.strip_prefix(complete)?;
    // What the context showed as U+FFFD was emitted as such. Its invalid bytes are still
    // U+FFFD here; the rest stood for the character now finished (one U+FFFD, or one per
    // byte), which is skipped too, so nothing is emitted twice.
    let shown = prefix[complete.len()..].chars().count();
    let invalid = new.chars().take_while(|&c| c == '\u{FFFD}').take(shown).count();
    let skip = invalid + usize::from(invalid < shown);
    Some(new.char_indices().nth(skip).map_or("", |(at, _)| &new[at..]))
}
