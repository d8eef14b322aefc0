//! OpenAI's harmony format (gpt-oss): an answer is a series of messages, each a header and
//! a body, `<|channel|>analysis<|message|>…<|end|><|start|>assistant<|channel|>final
//! <|message|>…<|return|>`. The `analysis` channel is the model's reasoning, `final` (and
//! `commentary`, its preambles and tool calls) what the user reads; headers and the tokens
//! between messages are neither. [`Channels`] sorts a generation's tokens so, one at a time.
//!
//! `<|end|>` ends a message, not the answer: a harmony vocabulary's generation ends at
//! `<|return|>` or `<|call|>` ([`Tokenizer`] knows, see [`Harmony::turn_ends`]).

use super::{ChatTemplate, Tokenizer};

/// Text of harmony's special tokens.
pub const START: &str = "<|start|>";
pub const END: &str = "<|end|>";
pub const MESSAGE: &str = "<|message|>";
pub const CHANNEL: &str = "<|channel|>";
pub const RETURN: &str = "<|return|>";
pub const CALL: &str = "<|call|>";

/// The ids of a harmony vocabulary's special tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Harmony {
    start: u32,
    end: u32,
    message: u32,
    channel: u32,
    ret: u32,
    call: u32,
}

impl Harmony {
    /// The tokens of a model that answers in harmony: its vocabulary holds them all and its
    /// chat template writes channels.
    pub fn of(tokenizer: &Tokenizer, template: Option<&ChatTemplate>) -> Option<Self> {
        if !template?.source().contains(CHANNEL) {
            return None;
        }
        Self::in_vocabulary(tokenizer)
    }

    /// The tokens, where the vocabulary holds every one.
    pub fn in_vocabulary(tokenizer: &Tokenizer) -> Option<Self> {
        let id = |t: &str| tokenizer.token_id(t);
        Some(Self {
            start: id(START)?,
            end: id(END)?,
            message: id(MESSAGE)?,
            channel: id(CHANNEL)?,
            ret: id(RETURN)?,
            call: id(CALL)?,
        })
    }

    /// `<|channel|>` and `<|message|>`, between which a header names its channel.
    pub fn header_marks(&self) -> (u32, u32) {
        (self.channel, self.message)
    }

    /// The tokens that end a harmony answer: `<|return|>`, and `<|call|>` (a tool call
    /// waits for its result).
    pub fn turn_ends(&self) -> [u32; 2] {
        [self.ret, self.call]
    }

    fn special(&self, token: u32) -> bool {
        [self.start, self.end, self.message, self.channel, self.ret, self.call].contains(&token)
    }
}

/// Where a token of a harmony generation belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A header, or a token between messages: no text of either.
    Hidden,
    Reasoning,
    Answer,
}

/// A generation's position in the format.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// In a header: its tokens since `<|channel|>` (the channel's name, and perhaps a
    /// recipient and a content type), or `None` before it.
    Header(Option<Vec<u32>>),
    Message(Side),
}

/// Sorts a harmony generation's tokens into reasoning, answer and neither.
#[derive(Debug, Clone)]
pub struct Channels {
    tokens: Harmony,
    state: State,
    /// Only the `final` channel is the answer (an output format binds it): every other
    /// message is reasoning.
    final_only: bool,
}

impl Channels {
    /// Following a generation that continues `prompt` (which the template ends in a header,
    /// `<|start|>assistant`, or in a message's body); `final_only`: only the `final` channel
    /// is the answer, other channels' messages are reasoning.
    pub fn new(tokens: Harmony, prompt: &[u32], tokenizer: &Tokenizer, final_only: bool) -> Self {
        let mut channels = Self { tokens, state: State::Header(None), final_only };
        let from = prompt.iter().rposition(|&t| t == tokens.start).unwrap_or(prompt.len());
        for &token in &prompt[from..] {
            channels.push(token, tokenizer);
        }
        channels
    }

    /// Whether the generation is in a message of the `analysis` channel.
    pub fn reasoning(&self) -> bool {
        self.state == State::Message(Side::Reasoning)
    }

    /// Whether the generation is in a message the user reads (the prompt opened `final`).
    pub fn answering(&self) -> bool {
        self.state == State::Message(Side::Answer)
    }

    /// Whether `token`, next, would be no text of either side (for its logprobs: they are
    /// the answer's alone).
    pub fn hidden(&self, token: u32) -> bool {
        !matches!(self.state, State::Message(_)) || self.tokens.special(token)
    }

    /// The side of `token`, the generation's next one.
    pub fn push(&mut self, token: u32, tokenizer: &Tokenizer) -> Side {
        let t = self.tokens;
        let state = std::mem::replace(&mut self.state, State::Header(None));
        let (next, side) = match state {
            State::Message(side) if !t.special(token) => (State::Message(side), side),
            // A message ends; what follows is the next header, or nothing.
            State::Message(_) => (State::Header(None), Side::Hidden),
            State::Header(_) if token == t.start => (State::Header(None), Side::Hidden),
            State::Header(_) if token == t.channel => {
                (State::Header(Some(Vec::new())), Side::Hidden)
            }
            State::Header(name) if token == t.message => {
                let name = match name.map(|ids| tokenizer.decode(&ids)) {
                    Some(Ok(text)) => channel_name(&text).to_owned(),
                    _ => String::new(),
                };
                let side = match name.as_str() {
                    "analysis" => Side::Reasoning,
                    "final" => Side::Answer,
                    _ if self.final_only => Side::Reasoning,
                    // Every other channel is the user's to read: `commentary`'s preambles and
                    // tool calls (which come as text, not parsed calls).
                    _ => Side::Answer,
                };
                (State::Message(side), Side::Hidden)
            }
            State::Header(Some(mut ids)) if !t.special(token) => {
                ids.push(token);
                (State::Header(Some(ids)), Side::Hidden)
            }
            State::Header(name) => (State::Header(name), Side::Hidden),
        };
        self.state = next;
        side
    }
}

/// A header's channel name: its text after `<|channel|>` up to a space (a recipient, ` to=…`)
/// or a special token (`<|constrain|>`).
fn channel_name(header: &str) -> &str {
    let end = header.find(|c: char| c.is_whitespace() || c == '<').unwrap_or(header.len());
    &header[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::fixture::write_harmony_tokenizer_files;

    fn tokenizer(name: &str) -> Tokenizer {
        let dir = std::env::temp_dir().join(format!("fleet-harmony-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        write_harmony_tokenizer_files(&dir).expect("writes the tokenizer");
        let tokenizer = Tokenizer::from_hf_dir(&dir).expect("reads the tokenizer");
        std::fs::remove_dir_all(&dir).ok();
        tokenizer
    }

    /// The text of each side of `output`, generated after `prompt`.
    fn sides(tokenizer: &Tokenizer, prompt: &str, output: &str) -> (String, String, usize) {
        sides_of(tokenizer, prompt, output, false)
    }

    fn sides_of(
        tokenizer: &Tokenizer,
        prompt: &str,
        output: &str,
        final_only: bool,
    ) -> (String, String, usize) {
        let harmony = Harmony::of(tokenizer, tokenizer.chat_template()).expect("harmony");
        let prompt = tokenizer.encode(prompt).expect("encodes");
        let mut channels = Channels::new(harmony, &prompt, tokenizer, final_only);
        let (mut reasoning, mut answer, mut hidden) = (vec![], vec![], 0);
        for token in tokenizer.encode(output).expect("encodes") {
            match channels.push(token, tokenizer) {
                Side::Reasoning => reasoning.push(token),
                Side::Answer => answer.push(token),
                Side::Hidden => hidden += 1,
            }
        }
        let text = |ids: &[u32]| tokenizer.decode(ids).expect("decodes");
        (text(&reasoning), text(&answer), hidden)
    }

    #[test]
    fn analysis_is_reasoning_and_final_is_the_answer_headers_neither() {
        let tokenizer = tokenizer("sides");
        let prompt = "<|start|>user<|message|>What is six times seven?<|end|><|start|>assistant";
        let output = "<|channel|>analysis<|message|>the user wants 6*7<|end|>\
                      <|start|>assistant<|channel|>final<|message|>It is 42.<|return|>";
        let (reasoning, answer, hidden) = sides(&tokenizer, prompt, output);
        assert_eq!((reasoning.as_str(), answer.as_str()), ("the user wants 6*7", "It is 42."));
        assert!(hidden >= 10, "headers and markers: {hidden}");
        // A preamble and a tool call in commentary (recipient, content type) are the user's.
        let output = "<|channel|>commentary to=functions.add <|constrain|>json<|message|>\
                      {\"a\":6}<|call|>";
        assert_eq!(sides(&tokenizer, prompt, output).1, "{\"a\":6}");
        // Where only the final channel is the answer (an output format binds it), a
        // preamble is reasoning.
        let output = "<|channel|>commentary<|message|>Let me add.<|end|>\
                      <|start|>assistant<|channel|>final<|message|>42<|return|>";
        let (reasoning, answer, _) = sides_of(&tokenizer, prompt, output, true);
        assert_eq!((reasoning.as_str(), answer.as_str()), ("Let me add.", "42"));
        // A prompt that opens the final message itself (no reasoning asked for).
        let opened = format!("{prompt}<|channel|>final<|message|>");
        assert_eq!(sides(&tokenizer, &opened, "Sure.").1, "Sure.");
    }

    #[test]
    fn a_harmony_vocabulary_ends_the_answer_at_return_or_call_not_at_end() {
        let tokenizer = tokenizer("ends");
        let harmony = Harmony::in_vocabulary(&tokenizer).expect("harmony tokens");
        let id = |t: &str| tokenizer.token_id(t).expect("a token");
        assert!(!tokenizer.eos_ids().contains(&id(END)), "{:?}", tokenizer.eos_ids());
        for end in harmony.turn_ends() {
            assert!(tokenizer.eos_ids().contains(&end));
        }
    }
}
