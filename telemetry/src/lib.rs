//! agentfleet's OpenTelemetry traces: one trace per task across the head, its workers, their
//! models and the agents they call, exported over OTLP/HTTP (protobuf) and named after the
//! GenAI semantic conventions (`invoke_agent`, `chat`, `embeddings`, `execute_tool`).
//!
//! Off unless [`init`] is given an endpoint; while off, [`Span::start`] is one atomic load
//! and returns an empty span, so the code that marks spans costs nothing. One exporter per
//! process (the head, a worker, or a Python process embedding both): its tracer is global,
//! like OpenTelemetry's own, so actors and the cluster state need no handle passed down.
//!
//! Processes hand the trace on as a W3C `traceparent` string (in `RunTask`, in mesh calls,
//! from HTTP headers and gRPC metadata): [`Span::start`] takes the parent's, and
//! [`Span::traceparent`] gives this span's to its children.

mod export;
mod span;

pub use export::{Error, Exporter, init, resolve_endpoint, traces_endpoint};
pub use opentelemetry::trace::SpanKind;
pub use opentelemetry::{KeyValue, StringValue, Value};
pub use span::{Span, normalized, valid_traceparent};

/// The attribute names spans carry: the GenAI semantic conventions' (written out: the
/// conventions crate deprecated its GenAI names when they moved to a repository of their
/// own), and agentfleet's.
pub mod attr {
    pub const ERROR_TYPE: &str = "error.type";
    pub const GEN_AI_AGENT_NAME: &str = "gen_ai.agent.name";
    pub const GEN_AI_CONVERSATION_ID: &str = "gen_ai.conversation.id";
    pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
    pub const GEN_AI_PROVIDER_NAME: &str = "gen_ai.provider.name";
    pub const GEN_AI_REQUEST_MAX_TOKENS: &str = "gen_ai.request.max_tokens";
    pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
    pub const GEN_AI_REQUEST_TEMPERATURE: &str = "gen_ai.request.temperature";
    pub const GEN_AI_RESPONSE_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
    pub const GEN_AI_TOOL_CALL_ID: &str = "gen_ai.tool.call.id";
    pub const GEN_AI_TOOL_NAME: &str = "gen_ai.tool.name";
    pub const GEN_AI_TOOL_TYPE: &str = "gen_ai.tool.type";
    pub const GEN_AI_USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
    pub const GEN_AI_USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
    /// The task (or mesh call) a span belongs to.
    pub const TASK_ID: &str = "agentfleet.task.id";
    /// The attempt of the task (it grows when a lost worker's task is retried).
    pub const ATTEMPT: &str = "agentfleet.task.attempt";
    /// How the task ended: completed, failed or canceled.
    pub const TASK_STATE: &str = "agentfleet.task.state";
    /// The worker a span ran on (or a task was scheduled to).
    pub const WORKER: &str = "agentfleet.worker";
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub const CACHED_TOKENS: &str = "agentfleet.usage.cached_tokens";
    /// `gen_ai.provider.name` of models served by the cluster itself.
    pub const PROVIDER: &str = "agentfleet";
}

/// The GenAI operation names (`gen_ai.operation.name`, and the first word of span names).
pub mod op {
    pub const INVOKE_AGENT: &str = "invoke_agent";
    pub const CHAT: &str = "chat";
    pub const EMBEDDINGS: &str = "embeddings";
    pub const EXECUTE_TOOL: &str = "execute_tool";
    pub const TEXT_COMPLETION: &str = "text_completion";
}
