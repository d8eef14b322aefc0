//! The [`Model`] trait and the types of a generation request and its stream.

use futures::stream::BoxStream;

use crate::Result;

/// Who said a message of a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

/// What to generate from: the conversation so far plus sampling settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerateRequest {
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
}

/// Token counts of one generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// One item of a generation stream: text deltas, then exactly one `Done`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GenerationEvent {
    Delta(String),
    Done(Usage),
}

/// A running generation. Dropping it cancels the generation.
pub type Generation = BoxStream<'static, Result<GenerationEvent>>;

/// A loaded model, shared by every agent that uses it.
pub trait Model: Send + Sync + 'static {
    /// The id the model was loaded by, e.g. `builtin:echo`.
    fn id(&self) -> &str;

    /// Starts generating. Cheap: the work happens as the stream is polled (or on the
    /// engine's own thread), never blocking the caller's async runtime.
    fn generate(&self, request: GenerateRequest) -> Result<Generation>;
}
