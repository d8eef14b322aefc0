//! A model's [`Vocabulary`] (every token as bytes, for llguidance), and the [`Constraint`]
//! of one sequence.

use std::fmt;
use std::sync::Arc;

use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory, token_bytes_from_tokenizer_json};
use serde_json::Value;

use crate::{GrammarError, OutputFormat, guarded};

type Tokenize = dyn Fn(&[u8]) -> Vec<u32> + Send + Sync;

/// What llguidance needs of a tokenizer: each token's bytes (in a trie) and the encoding of
/// text (for the literal strings of a grammar).
struct Env {
    trie: TokTrie,
    tokenize: Box<Tokenize>,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        (self.tokenize)(s)
    }
}

/// The tokens of one model as llguidance sees them. Built once per model (tens of
/// milliseconds for a 50,000-token vocabulary); formats compile against it per request.
pub struct Vocabulary {
    factory: Arc<ParserFactory>,
    size: usize,
}

impl fmt::Debug for Vocabulary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vocabulary").field("size", &self.size).finish_non_exhaustive()
    }
}

impl Vocabulary {
    /// `tokenizer_json`: the tokenizer in Hugging Face's `tokenizer.json` form (byte-level
    /// BPE or SentencePiece with byte fallback); `size`: the model's vocabulary (its logits),
    /// at least the tokenizer's; `eos`: the tokens that end a generation; `tokenize`: the
    /// tokenizer's encoding of text, without special tokens added.
    pub fn new(
        tokenizer_json: &Value,
        size: usize,
        eos: &[u32],
        tokenize: impl Fn(&[u8]) -> Vec<u32> + Send + Sync + 'static,
    ) -> Result<Self, GrammarError> {
        let mut words =
            guarded(|| token_bytes_from_tokenizer_json(tokenizer_json).map_err(|e| e.to_string()))
                .map_err(GrammarError::Vocabulary)?;
        if words.len() > size {
            return Err(GrammarError::Vocabulary(format!(
                "the tokenizer has {} tokens, more than the model's {size}",
                words.len()
            )));
        }
        if eos.is_empty() || eos.iter().any(|&t| t as usize >= size) {
            return Err(GrammarError::Vocabulary(format!(
                "end-of-sequence tokens {eos:?} are not in a vocabulary of {size}"
            )));
        }
        // Rows of the logits no token stands for: never allowed.
        words.resize(size, Vec::new());
        let size_u32 = u32::try_from(size)
            .map_err(|_| GrammarError::Vocabulary(format!("a vocabulary of {size} tokens")))?;
        let info = TokRxInfo::new(size_u32, eos[0]);
        let trie = guarded(|| Ok(TokTrie::from(&info, &words).with_eos_tokens(eos)))
            .map_err(GrammarError::Vocabulary)?;
        let env: TokEnv = Arc::new(Env { trie, tokenize: Box::new(tokenize) });
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| GrammarError::Vocabulary(e.to_string()))?;
        factory.quiet();
        Ok(Self { factory: Arc::new(factory), size })
    }

    /// The model's vocabulary size (the length of a mask).
    pub fn size(&self) -> usize {
        self.size
    }

    /// A fresh constraint for one generation in `format`.
    pub fn constrain(&self, format: &OutputFormat) -> Result<Constraint, GrammarError> {
        let parser =
            guarded(|| self.factory.create_parser(format.grammar()).map_err(|e| e.to_string()))
                .map_err(GrammarError::Invalid)?;
        let eos = self.factory.tok_env().tok_trie().eos_tokens().to_vec();
        Ok(Constraint { matcher: Matcher::new(Ok(parser)), eos, before: None })
    }
}

/// Where a thinking model's output is relative to its reasoning: the format binds only the
/// answer after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing generated yet: the model may open its reasoning or answer at once.
    MayOpen,
    /// Inside the reasoning: any token, until the closing marker.
    Reasoning,
    /// The answer: the format's tokens only.
    Answer,
}

/// The reasoning markers of a thinking model (Qwen3's `<think>` and `</think>`).
#[derive(Debug, Clone, Copy)]
struct Thinking {
    open: u32,
    close: u32,
    phase: Phase,
}

/// A harmony model's (gpt-oss's) way to its answer: any token until a header names the
/// `final` channel (`<|channel|>final<|message|>`), whose message the format binds.
#[derive(Debug, Clone)]
struct FinalChannel {
    channel: u32,
    message: u32,
    /// The tokens of the name `final`.
    name: Vec<u32>,
    /// A header's tokens since its `<|channel|>`, while in one.
    header: Option<Vec<u32>>,
    bound: bool,
}

/// What a generation may write before the format binds it.
#[derive(Debug, Clone)]
enum Before {
    Thinking(Thinking),
    FinalChannel(FinalChannel),
}

/// Which tokens may come next in one generation, and the tokens chosen so far.
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
    eos: Vec<u32>,
    before: Option<Before>,
}

impl fmt::Debug for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Constraint").field("stopped", &self.matcher.is_stopped()).finish()
    }
}

impl Constraint {
    /// The format binds the answer of a thinking model, not its reasoning: the first token
    /// may also be `open`; from `open` to `close` any token goes (an end-of-sequence token
    /// too: the model may stop while it thinks, as it may run out of tokens there).
    /// `inside`: the prompt already opened the reasoning (a template that starts every
    /// answer thinking).
    pub fn after_reasoning(mut self, open: u32, close: u32, inside: bool) -> Self {
        let phase = if inside { Phase::Reasoning } else { Phase::MayOpen };
        self.before = Some(Before::Thinking(Thinking { open, close, phase }));
        self
    }

    /// The format binds a harmony model's `final` message only: any token goes (analysis,
    /// headers, an end-of-sequence token) until a header `channel` `name` … `message`,
    /// whose tokens `name` begins with (`final`, perhaps then ` <|constrain|>json`).
    /// `bound`: the prompt already opened the final message.
    pub fn in_final_channel(
        mut self,
        channel: u32,
        message: u32,
        name: Vec<u32>,
        bound: bool,
    ) -> Self {
        let gate = FinalChannel { channel, message, name, header: None, bound };
        self.before = Some(Before::FinalChannel(gate));
        self
    }

    /// The tokens allowed next; `None` while any token is (inside a model's reasoning).
    /// The end-of-sequence tokens are allowed once the output is complete (and only they
    /// once nothing can follow).
    pub fn mask(&mut self) -> Result<Option<Mask>, String> {
        let free = match &self.before {
            Some(Before::Thinking(t)) => t.phase == Phase::Reasoning,
            Some(Before::FinalChannel(gate)) => !gate.bound,
            None => false,
        };
        if free {
            return Ok(None);
        }
        let matcher = &mut self.matcher;
        let mut allowed = guarded(|| matcher.compute_mask_or_eos().map_err(|e| e.to_string()))?;
        if let Some(Before::Thinking(Thinking { open, phase: Phase::MayOpen, .. })) = self.before
            && (open as usize) < allowed.len()
        {
            allowed.allow_token(open);
        }
        if allowed.is_zero() {
            return Err("no token can continue the output in its format".into());
        }
        Ok(Some(Mask(allowed)))
    }

    /// Follows the chosen token; `true` once the output is complete (an end-of-sequence
    /// token, or a token after which the format allows nothing more).
    pub fn commit(&mut self, token: u32) -> Result<bool, String> {
        if self.eos.contains(&token) {
            return Ok(true);
        }
        if let Some(Before::FinalChannel(gate)) = &mut self.before
            && !gate.bound
        {
            gate.follow(token);
            return Ok(false);
        }
        if let Some(Before::Thinking(thinking)) = &mut self.before {
            match thinking.phase {
                Phase::MayOpen if token == thinking.open => {
                    thinking.phase = Phase::Reasoning;
                    return Ok(false);
                }
                Phase::Reasoning => {
                    if token == thinking.close {
                        thinking.phase = Phase::Answer;
                    }
                    return Ok(false);
                }
                Phase::MayOpen | Phase::Answer => thinking.phase = Phase::Answer,
            }
        }
        let matcher = &mut self.matcher;
        guarded(|| matcher.consume_token(token).map_err(|e| e.to_string()))?;
        Ok(self.matcher.is_stopped())
    }
}

impl FinalChannel {
    /// Follows a token written before the final message: headers are read for its name.
    fn follow(&mut self, token: u32) {
        if token == self.channel {
            self.header = Some(Vec::new());
        } else if token == self.message {
            let header = self.header.take();
            self.bound = header.is_some_and(|h| h.starts_with(&self.name));
        } else if let Some(header) = &mut self.header {
            // A header's name is a few tokens: past the name's length it only has to be
            // known that it began with it.
            if header.len() < self.name.len() {
                header.push(token);
            }
        }
    }
}

/// A set of allowed tokens.
#[derive(Debug, Clone)]
pub struct Mask(SimpleVob);

impl Mask {
    pub fn allows(&self, token: u32) -> bool {
        (token as usize) < self.0.len() && self.0.is_allowed(token)
    }

    /// Sets the logit of every token not allowed to minus infinity.
    pub fn apply(&self, logits: &mut [f32]) {
        for (token, logit) in logits.iter_mut().enumerate() {
            if !u32::try_from(token).is_ok_and(|t| self.allows(t)) {
                *logit = f32::NEG_INFINITY;
            }
        }
    }

    /// How many tokens are allowed.
    pub fn count(&self) -> usize {
        self.0.num_set()
    }
}
