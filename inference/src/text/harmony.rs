//! OpenAI's harmony format (gpt-oss): an answer is a series of messages, each a header and
//! a body, `<|channel|>analysis<|message|>…<|end|><|start|>assistant<|channel|>final
//! <|message|>…<|return|>`. The `analysis` channel is the model's reasoning, `final` (and
//! `commentary`, its preambles) what the user reads; a message addressed to a function
//! (`<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{…}<|call|>`) is a
//! tool call; headers and the tokens between messages are neither. [`Channels`] sorts a
//! generation's tokens so, one at a time.
//!
//! `<|end|>` ends a message, not the answer: a harmony vocabulary's generation ends at
//! `<|return|>` or `<|call|>` ([`Tokenizer`] knows, see [`Harmony::turn_ends`]).

use fleet_grammar::HarmonyTokens;

use super::{ChatTemplate, Tokenizer};

/// Text of harmony's special tokens.
pub const START: &str = "<|start|>";
pub const END: &str = "<|end|>";
pub const MESSAGE: &str = "<|message|>";
pub const CHANNEL: &str = "<|channel|>";
pub const RETURN: &str = "<|return|>";
pub const CALL: &str = "<|call|>";
pub const CONSTRAIN: &str = "<|constrain|>";

/// The ids of a harmony vocabulary's special tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Harmony {
    start: u32,
    end: u32,
    message: u32,
    channel: u32,
    ret: u32,
    call: u32,
    constrain: Option<u32>,
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
            constrain: id(CONSTRAIN),
        })
    }

    /// The tokens a grammar of tool calls writes; `in_analysis`: the prompt opened an
    /// `analysis` message.
    pub fn grammar_tokens(&self, in_analysis: bool) -> HarmonyTokens {
        HarmonyTokens {
            start: self.start,
            end: self.end,
            message: self.message,
            channel: self.channel,
            constrain: self.constrain,
            in_analysis,
        }
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
    /// The arguments of a tool call (a message addressed to a function).
    Call,
}

/// A header's tokens: the role's (after `<|start|>`, perhaps with a recipient) and the
/// channel's (after `<|channel|>`: its name, perhaps a recipient and a content type).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Header {
    role: Vec<u32>,
    channel: Option<Vec<u32>>,
}

/// A generation's position in the format.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Header(Header),
    Message(Side),
}

/// A tool call a generation made: the function's name and its arguments (the message's
/// text, JSON when the model wrote it well).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub name: String,
    pub arguments: String,
}

/// Sorts a harmony generation's tokens into reasoning, answer, tool calls and neither.
/// What it holds (a header's tokens, a call's arguments) is bounded by the model's context.
#[derive(Debug, Clone)]
pub struct Channels {
    tokens: Harmony,
    state: State,
    /// Only the `final` channel is the answer (an output format binds it): every other
    /// message is reasoning.
    final_only: bool,
    /// The call being written: its function and the argument tokens so far.
    call: Option<(String, Vec<u32>)>,
    /// Calls whose message ended, in order, not yet taken.
    done: Vec<Call>,
}

impl Channels {
    /// Following a generation that continues `prompt` (which the template ends in a header,
    /// `<|start|>assistant`, or in a message's body); `final_only`: only the `final` channel
    /// is the answer, other channels' messages are reasoning.
    pub fn new(tokens: Harmony, prompt: &[u32], tokenizer: &Tokenizer, final_only: bool) -> Self {
        let mut channels = Self {
            tokens,
            state: State::Header(Header::default()),
            final_only,
            call: None,
            done: Vec::new(),
        };
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
    /// the answer's alone; a call's arguments are not text).
    pub fn hidden(&self, token: u32) -> bool {
        !matches!(self.state, State::Message(Side::Answer | Side::Reasoning))
            || self.tokens.special(token)
    }

    /// The side of `token`, the generation's next one. A call's message that ends waits in
    /// [`take_calls`](Self::take_calls).
    pub fn push(&mut self, token: u32, tokenizer: &Tokenizer) -> Side {
        let t = self.tokens;
        let state = std::mem::replace(&mut self.state, State::Header(Header::default()));
        let (next, side) = match state {
            State::Message(side) if !t.special(token) => {
                if let Some((_, arguments)) = &mut self.call {
                    arguments.push(token);
                }
                (State::Message(side), side)
            }
            // A message ends; what follows is the next header, or nothing.
            State::Message(_) => {
                self.end_call(tokenizer);
                (State::Header(Header::default()), Side::Hidden)
            }
            State::Header(_) if token == t.start => {
                (State::Header(Header::default()), Side::Hidden)
            }
            State::Header(mut header) if token == t.channel => {
                header.channel = Some(Vec::new());
                (State::Header(header), Side::Hidden)
            }
            State::Header(header) if token == t.message => {
                let side = self.open(&header, tokenizer);
                (State::Message(side), Side::Hidden)
            }
            State::Header(mut header) => {
                // Harmony's markers are no part of a header (`<|constrain|>` is).
                let part = header.channel.as_mut().unwrap_or(&mut header.role);
                if !t.special(token) {
                    part.push(token);
                }
                (State::Header(header), Side::Hidden)
            }
        };
        self.state = next;
        side
    }

    /// The calls made so far whose messages ended; with `end`, the generation's end, also
    /// the one it ended in (`<|call|>` ends a generation, and ends the call's message).
    pub fn take_calls(&mut self, tokenizer: &Tokenizer, end: bool) -> Vec<Call> {
        if end {
            self.end_call(tokenizer);
        }
        std::mem::take(&mut self.done)
    }

    /// The side of a message with `header`: a recipient makes it a call.
    fn open(&mut self, header: &Header, tokenizer: &Tokenizer) -> Side {
        let text = |ids: &[u32]| tokenizer.decode(ids).unwrap_or_default();
        let role = text(&header.role);
        let channel = header.channel.as_deref().map(text).unwrap_or_default();
        // A message to the assistant (a tool's answer) is no call.
        let to = recipient(&channel).or_else(|| recipient(&role)).filter(|&to| to != "assistant");
        if let Some(to) = to {
            let name = to.strip_prefix("functions.").unwrap_or(to);
            self.call = Some((name.to_owned(), Vec::new()));
            return Side::Call;
        }
        match channel_name(&channel) {
            "analysis" => Side::Reasoning,
            "final" => Side::Answer,
            _ if self.final_only => Side::Reasoning,
            // Every other channel is the user's to read: `commentary`'s preambles.
            _ => Side::Answer,
        }
    }

    fn end_call(&mut self, tokenizer: &Tokenizer) {
        if let Some((name, arguments)) = self.call.take() {
            let arguments = tokenizer.decode(&arguments).unwrap_or_default();
            self.done.push(Call { name, arguments });
        }
    }
}

/// A header's channel name: its text after `<|channel|>` up to a space (a recipient, ` to=…`)
/// or a special token (`<|constrain|>`).
fn channel_name(header: &str) -> &str {
    let end = header.find(|c: char| c.is_whitespace() || c == '<').unwrap_or(header.len());
    &header[..end]
}

/// The recipient a header part names (` to=functions.add`), up to a space or a special
/// token.
fn recipient(part: &str) -> Option<&str> {
    let at = part.find("to=")?;
    if at > 0 && !part[..at].ends_with(char::is_whitespace) {
        return None;
    }
    let to = &part[at + 3..];
    let end = to.find(|c: char| c.is_whitespace() || c == '<').unwrap_or(to.len());
    Some(&to[..end]).filter(|to| !to.is_empty())
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

    /// The calls `output` makes after `prompt`, and its answer.
    fn calls(tokenizer: &Tokenizer, prompt: &str, output: &str) -> (Vec<Call>, String) {
        let harmony = Harmony::of(tokenizer, tokenizer.chat_template()).expect("harmony");
        let prompt = tokenizer.encode(prompt).expect("encodes");
        let mut channels = Channels::new(harmony, &prompt, tokenizer, false);
        let (mut calls, mut answer) = (Vec::new(), Vec::new());
        for token in tokenizer.encode(output).expect("encodes") {
            // A generation ends at `<|call|>` (its end of sequence): the engine never
            // hands it on.
            if harmony.turn_ends().contains(&token) {
                break;
            }
            if channels.push(token, tokenizer) == Side::Answer {
                answer.push(token);
            }
            calls.extend(channels.take_calls(tokenizer, false));
        }
        calls.extend(channels.take_calls(tokenizer, true));
        (calls, tokenizer.decode(&answer).expect("decodes"))
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
                Side::Hidden | Side::Call => hidden += 1,
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
        // A tool call in commentary (recipient, content type) is neither.
        let output = "<|channel|>commentary to=functions.add <|constrain|>json<|message|>\
                      {\"a\":6}<|call|>";
        let (reasoning, answer, _) = sides(&tokenizer, prompt, output);
        assert_eq!((reasoning.as_str(), answer.as_str()), ("", ""));
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
    fn a_message_to_a_function_is_a_call_with_the_recipient_in_either_part_of_its_header() {
        let tokenizer = tokenizer("calls");
        let prompt = "<|start|>user<|message|>add 6 and 7<|end|><|start|>assistant";
        let call =
            |name: &str, arguments: &str| Call { name: name.into(), arguments: arguments.into() };
        // The recipient after the channel, the generation ending in `<|call|>`.
        let output = "<|channel|>analysis<|message|>add them<|end|><|start|>assistant\
                      <|channel|>commentary to=functions.add <|constrain|>json<|message|>\
                      {\"a\":6,\"b\":7}<|call|>";
        let (found, answer) = calls(&tokenizer, prompt, output);
        assert_eq!((found, answer.as_str()), (vec![call("add", "{\"a\":6,\"b\":7}")], ""));
        // After the role, the content type after a space; a preamble first is the answer's.
        let output = "<|channel|>commentary<|message|>Adding.<|end|>\
                      <|start|>assistant to=functions.add<|channel|>commentary json<|message|>\
                      {}<|call|>";
        let (found, answer) = calls(&tokenizer, prompt, output);
        assert_eq!((found, answer.as_str()), (vec![call("add", "{}")], "Adding."));
        // A message to the assistant (a tool's result) or a channel named `to` is no call;
        // a recipient outside `functions` keeps its whole name.
        assert!(recipient("functions.add to=assistant").is_some_and(|to| to == "assistant"));
        assert_eq!(recipient("analysisto=x"), None);
        let output =
            "<|channel|>commentary to=browser.search <|constrain|>json<|message|>{}<|end|>";
        assert_eq!(calls(&tokenizer, prompt, output).0, vec![call("browser.search", "{}")]);
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
