//! Conversions between the generated wire types ([`crate::pb`]) and the domain types
//! ([`crate::types`]). Wire → domain is fallible: a message missing a required part is a
//! [`WireError`] that the receiving edge turns into its protocol's error.

use std::sync::Arc;

use crate::pb;
use crate::task_state::TaskState;
use crate::types::*;

/// A wire message that does not form a valid domain value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("{0} is missing")]
    Missing(&'static str),
}

type Result<T> = std::result::Result<T, WireError>;

impl From<pb::Gpu> for Gpu {
    fn from(g: pb::Gpu) -> Self {
        Self { index: g.index, name: g.name, memory_bytes: g.memory_bytes }
    }
}

impl From<Gpu> for pb::Gpu {
    fn from(g: Gpu) -> Self {
        Self { index: g.index, name: g.name, memory_bytes: g.memory_bytes }
    }
}

impl From<pb::Resources> for Resources {
    fn from(r: pb::Resources) -> Self {
        Self { cpus: r.cpus, memory_bytes: r.memory_bytes, gpus: r.gpus }
    }
}

impl From<TokenLogprob> for pb::TokenLogprob {
    fn from(t: TokenLogprob) -> Self {
        Self {
            token: t.token,
            logprob: t.logprob,
            top: t
                .top
                .into_iter()
                .map(|(token, logprob)| pb::TopLogprob { token, logprob })
                .collect(),
        }
    }
}

impl From<pb::TokenLogprob> for TokenLogprob {
    fn from(t: pb::TokenLogprob) -> Self {
        Self {
            token: t.token,
            logprob: t.logprob,
            top: t.top.into_iter().map(|t| (t.token, t.logprob)).collect(),
        }
    }
}

impl From<Resources> for pb::Resources {
    fn from(r: Resources) -> Self {
        Self { cpus: r.cpus, memory_bytes: r.memory_bytes, gpus: r.gpus }
    }
}

impl From<pb::Sampling> for Sampling {
    fn from(s: pb::Sampling) -> Self {
        Self {
            temperature: s.temperature,
            top_p: s.top_p,
            max_tokens: s.max_tokens,
            seed: s.seed,
            stop: s.stop,
            presence_penalty: s.presence_penalty,
            frequency_penalty: s.frequency_penalty,
            logprobs: s.logprobs,
            thinking: s.thinking,
            format: s.format.and_then(|f| f.kind).map(|kind| match kind {
                pb::output_format::Kind::JsonObject(_) => OutputFormat::JsonObject,
                pb::output_format::Kind::JsonSchema(schema) => OutputFormat::JsonSchema(schema),
                pb::output_format::Kind::Regex(regex) => OutputFormat::Regex(regex),
                pb::output_format::Kind::Lark(lark) => OutputFormat::Lark(lark),
            }),
        }
    }
}

impl From<Sampling> for pb::Sampling {
    fn from(s: Sampling) -> Self {
        Self {
            temperature: s.temperature,
            top_p: s.top_p,
            max_tokens: s.max_tokens,
            seed: s.seed,
            stop: s.stop,
            presence_penalty: s.presence_penalty,
            frequency_penalty: s.frequency_penalty,
            logprobs: s.logprobs,
            thinking: s.thinking,
            format: s.format.map(|f| pb::OutputFormat {
                kind: Some(match f {
                    OutputFormat::JsonObject => pb::output_format::Kind::JsonObject(true),
                    OutputFormat::JsonSchema(schema) => pb::output_format::Kind::JsonSchema(schema),
                    OutputFormat::Regex(regex) => pb::output_format::Kind::Regex(regex),
                    OutputFormat::Lark(lark) => pb::output_format::Kind::Lark(lark),
                }),
            }),
        }
    }
}

impl From<pb::Turn> for Turn {
    fn from(t: pb::Turn) -> Self {
        Self {
            role: t.role,
            content: t.content,
            tool_calls: t
                .tool_calls
                .into_iter()
                .map(|c| CallMade { id: c.call_id, name: c.name, arguments: c.arguments })
                .collect(),
            tool_call_id: t.tool_call_id,
            is_error: t.is_error,
        }
    }
}

impl From<&Turn> for pb::Turn {
    fn from(t: &Turn) -> Self {
        Self {
            role: t.role.clone(),
            content: t.content.clone(),
            tool_calls: t
                .tool_calls
                .iter()
                .map(|c| pb::ToolCall {
                    call_id: c.id.clone(),
                    name: c.name.clone(),
                    arguments: c.arguments.clone(),
                    traceparent: String::new(),
                    replayed: false,
                })
                .collect(),
            tool_call_id: t.tool_call_id.clone(),
            is_error: t.is_error,
        }
    }
}

impl From<pb::TaskOptions> for TaskOptions {
    fn from(o: pb::TaskOptions) -> Self {
        Self {
            history: o.history.into_iter().map(Into::into).collect(),
            sampling: o.sampling.map(Into::into).unwrap_or_default(),
            embed: o.embed,
            // Written by the head from values; text that does not parse is dropped.
            tools: o.tools.iter().filter_map(|t| serde_json::from_str(t).ok()).collect(),
            tool_choice: match o.tool_choice.as_str() {
                "required" => ClientToolChoice::Required,
                choice => match choice.strip_prefix("function:") {
                    Some(name) => ClientToolChoice::Function(name.to_owned()),
                    None => ClientToolChoice::Auto,
                },
            },
            parallel_tool_calls: o.parallel_tool_calls,
            raw_prompt: o.raw_prompt,
            files: o.files.into_iter().map(FilePart::from).collect(),
        }
    }
}

impl From<&TaskOptions> for pb::TaskOptions {
    fn from(o: &TaskOptions) -> Self {
        Self {
            history: o.history.iter().map(Into::into).collect(),
            sampling: Some(o.sampling.clone().into()),
            embed: o.embed.clone(),
            tools: o.tools.iter().map(ToString::to_string).collect(),
            tool_choice: match &o.tool_choice {
                ClientToolChoice::Auto => String::new(),
                ClientToolChoice::Required => "required".to_owned(),
                ClientToolChoice::Function(name) => format!("function:{name}"),
            },
            parallel_tool_calls: o.parallel_tool_calls,
            raw_prompt: o.raw_prompt,
            files: o.files.iter().cloned().map(pb::FilePart::from).collect(),
        }
    }
}

impl From<pb::LoadedModel> for LoadedModel {
    fn from(m: pb::LoadedModel) -> Self {
        Self {
            id: m.id,
            kv_bytes: m.kv_bytes,
            active_sequences: m.active_sequences,
            waiting_sequences: m.waiting_sequences,
            tokens_per_s: m.tokens_per_s,
            generated_tokens: m.generated_tokens,
            prompt_tokens: m.prompt_tokens,
            cached_tokens: m.cached_tokens,
            prefix_hits: m.prefix_hits,
            prefix_misses: m.prefix_misses,
            prefix_cache_bytes: m.prefix_cache_bytes,
            kv_capacity_bytes: m.kv_capacity_bytes,
            time_to_first_token: m.time_to_first_token.map(Into::into).unwrap_or_default(),
            inter_token: m.inter_token.map(Into::into).unwrap_or_default(),
        }
    }
}

impl From<pb::Latencies> for Latencies {
    fn from(l: pb::Latencies) -> Self {
        Self { upper_bounds: l.upper_bounds, counts: l.counts, sum_seconds: l.sum_seconds }
    }
}

impl From<Latencies> for pb::Latencies {
    fn from(l: Latencies) -> Self {
        Self { upper_bounds: l.upper_bounds, counts: l.counts, sum_seconds: l.sum_seconds }
    }
}

impl From<LoadedModel> for pb::LoadedModel {
    fn from(m: LoadedModel) -> Self {
        Self {
            id: m.id,
            kv_bytes: m.kv_bytes,
            active_sequences: m.active_sequences,
            waiting_sequences: m.waiting_sequences,
            tokens_per_s: m.tokens_per_s,
            generated_tokens: m.generated_tokens,
            prompt_tokens: m.prompt_tokens,
            cached_tokens: m.cached_tokens,
            prefix_hits: m.prefix_hits,
            prefix_misses: m.prefix_misses,
            prefix_cache_bytes: m.prefix_cache_bytes,
            kv_capacity_bytes: m.kv_capacity_bytes,
            time_to_first_token: Some(m.time_to_first_token.into()),
            inter_token: Some(m.inter_token.into()),
        }
    }
}

impl From<pb::AgentSpec> for AgentSpec {
    fn from(s: pb::AgentSpec) -> Self {
        let actor_state = match s.actor_state() {
            pb::ActorState::None => ActorState::None,
            pb::ActorState::PerAgent => ActorState::PerAgent,
            pb::ActorState::PerContext => ActorState::PerContext,
        };
        Self {
            name: s.name,
            model: s.model,
            instructions: s.instructions,
            description: s.description,
            tools: s.tools,
            sampling: s.sampling.map(Into::into).unwrap_or_default(),
            resources: s.resources.map(Into::into).unwrap_or_default(),
            max_retries: s.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
            labels: s.labels.into_iter().collect(),
            model_options: s.model_options.into_iter().collect(),
            max_concurrency: s.max_concurrency,
            topics: s.topics,
            mcp: s.mcp.into_iter().map(|m| McpServer { command: m.command, url: m.url }).collect(),
            tool_choice: s.tool_choice,
            requires_approval: s.requires_approval,
            ask_user: s.ask_user,
            input_timeout_ms: s.input_timeout_ms,
            tenant: s.tenant,
            public: s.public,
            call_once: s.call_once,
            actor_state,
        }
    }
}

impl From<pb::FunctionTool> for FunctionTool {
    fn from(f: pb::FunctionTool) -> Self {
        Self {
            name: f.name,
            description: f.description,
            parameters: f.parameters_json,
            timeout_ms: f.timeout_ms,
            requires_approval: f.requires_approval,
            takes_files: f.takes_files,
            call_once: f.call_once,
        }
    }
}

impl From<&FunctionTool> for pb::FunctionTool {
    fn from(f: &FunctionTool) -> Self {
        Self {
            name: f.name.clone(),
            description: f.description.clone(),
            parameters_json: f.parameters.clone(),
            timeout_ms: f.timeout_ms,
            requires_approval: f.requires_approval,
            takes_files: f.takes_files,
            call_once: f.call_once,
        }
    }
}

impl From<pb::ReplyToTaskRequest> for Reply {
    fn from(r: pb::ReplyToTaskRequest) -> Self {
        match r.decision() {
            pb::ReplyDecision::Unspecified => Self::Text(r.text),
            pb::ReplyDecision::Approve => Self::Approve,
            pb::ReplyDecision::Reject => Self::Reject(r.text),
        }
    }
}

impl pb::ReplyToTaskRequest {
    /// The request that sends `reply` to task `task_id` (of context `context_id`, if set),
    /// for its request `request_seq` (0: whatever it waits on).
    pub fn new(task_id: &str, context_id: &str, reply: &Reply, request_seq: u64) -> Self {
        let (text, decision) = match reply {
            Reply::Text(text) => (text.clone(), pb::ReplyDecision::Unspecified),
            Reply::Approve => (String::new(), pb::ReplyDecision::Approve),
            Reply::Reject(reason) => (reason.clone(), pb::ReplyDecision::Reject),
        };
        Self {
            task_id: task_id.to_owned(),
            context_id: context_id.to_owned(),
            text,
            decision: decision.into(),
            request_seq,
        }
    }
}

impl From<pb::ToolInvocation> for ToolInvocation {
    fn from(i: pb::ToolInvocation) -> Self {
        Self {
            call: i.call,
            tool: i.tool,
            arguments: i.arguments_json,
            task_id: TaskId::new(i.task_id),
            context_id: i.context_id,
            timeout: std::time::Duration::from_millis(i.timeout_ms.into()),
            files: i.files.into_iter().map(FilePart::from).collect(),
        }
    }
}

impl From<ToolInvocation> for pb::ToolInvocation {
    fn from(i: ToolInvocation) -> Self {
        Self {
            call: i.call,
            tool: i.tool,
            arguments_json: i.arguments,
            task_id: i.task_id.as_str().to_owned(),
            context_id: i.context_id,
            timeout_ms: i.timeout.as_millis().try_into().unwrap_or(u32::MAX),
            files: i.files.into_iter().map(pb::FilePart::from).collect(),
        }
    }
}

impl From<&AgentSpec> for pb::AgentSpec {
    fn from(s: &AgentSpec) -> Self {
        Self {
            name: s.name.clone(),
            model: s.model.clone(),
            instructions: s.instructions.clone(),
            description: s.description.clone(),
            tools: s.tools.clone(),
            sampling: Some(s.sampling.clone().into()),
            resources: Some(s.resources.into()),
            max_retries: Some(s.max_retries),
            labels: s.labels.clone().into_iter().collect(),
            model_options: s.model_options.clone().into_iter().collect(),
            max_concurrency: s.max_concurrency,
            topics: s.topics.clone(),
            mcp: s
                .mcp
                .iter()
                .map(|m| pb::McpServer { command: m.command.clone(), url: m.url.clone() })
                .collect(),
            tool_choice: s.tool_choice.clone(),
            requires_approval: s.requires_approval.clone(),
            ask_user: s.ask_user,
            input_timeout_ms: s.input_timeout_ms,
            tenant: s.tenant.clone(),
            public: s.public,
            call_once: s.call_once.clone(),
            actor_state: match s.actor_state {
                ActorState::None => pb::ActorState::None,
                ActorState::PerAgent => pb::ActorState::PerAgent,
                ActorState::PerContext => pb::ActorState::PerContext,
            }
            .into(),
        }
    }
}

impl From<pb::Usage> for Usage {
    fn from(u: pb::Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            cached_tokens: u.cached_tokens,
            completion_tokens: u.completion_tokens,
            reasoning_tokens: u.reasoning_tokens,
            truncated: u.finish_reason() == pb::FinishReason::Length,
        }
    }
}

impl From<Usage> for pb::Usage {
    fn from(u: Usage) -> Self {
        let finish_reason =
            if u.truncated { pb::FinishReason::Length } else { pb::FinishReason::Stop };
        Self {
            prompt_tokens: u.prompt_tokens,
            cached_tokens: u.cached_tokens,
            completion_tokens: u.completion_tokens,
            reasoning_tokens: u.reasoning_tokens,
            finish_reason: finish_reason.into(),
        }
    }
}

impl From<ErrorKind> for pb::ErrorKind {
    fn from(k: ErrorKind) -> Self {
        match k {
            ErrorKind::Internal => Self::Internal,
            ErrorKind::InvalidRequest => Self::InvalidRequest,
            ErrorKind::UnknownTask => Self::UnknownTask,
            ErrorKind::UnknownAgent => Self::UnknownAgent,
            ErrorKind::Busy => Self::Busy,
            ErrorKind::Unavailable => Self::Unavailable,
            ErrorKind::Unsupported => Self::Unsupported,
            ErrorKind::NotCancelable => Self::NotCancelable,
            ErrorKind::ContentTypeNotSupported => Self::ContentTypeNotSupported,
            ErrorKind::Unauthenticated => Self::Unauthenticated,
            ErrorKind::PermissionDenied => Self::PermissionDenied,
        }
    }
}

/// A kind the sender did not set (or one newer than this build) reads as internal.
impl From<pb::ErrorKind> for ErrorKind {
    fn from(k: pb::ErrorKind) -> Self {
        match k {
            pb::ErrorKind::Unspecified | pb::ErrorKind::Internal => Self::Internal,
            pb::ErrorKind::InvalidRequest => Self::InvalidRequest,
            pb::ErrorKind::UnknownTask => Self::UnknownTask,
            pb::ErrorKind::UnknownAgent => Self::UnknownAgent,
            pb::ErrorKind::Busy => Self::Busy,
            pb::ErrorKind::Unavailable => Self::Unavailable,
            pb::ErrorKind::Unsupported => Self::Unsupported,
            pb::ErrorKind::NotCancelable => Self::NotCancelable,
            pb::ErrorKind::ContentTypeNotSupported => Self::ContentTypeNotSupported,
            pb::ErrorKind::Unauthenticated => Self::Unauthenticated,
            pb::ErrorKind::PermissionDenied => Self::PermissionDenied,
        }
    }
}

impl From<TaskState> for pb::TaskState {
    fn from(s: TaskState) -> Self {
        match s {
            TaskState::Queued => Self::Queued,
            TaskState::Scheduled => Self::Scheduled,
            TaskState::Working => Self::Working,
            TaskState::Completed => Self::Completed,
            TaskState::Failed => Self::Failed,
            TaskState::Canceled => Self::Canceled,
            TaskState::InputRequired => Self::InputRequired,
        }
    }
}

impl TryFrom<pb::TaskState> for TaskState {
    type Error = WireError;

    fn try_from(s: pb::TaskState) -> Result<Self> {
        Ok(match s {
            pb::TaskState::Unspecified => return Err(WireError::Missing("task state")),
            pb::TaskState::Queued => Self::Queued,
            pb::TaskState::Scheduled => Self::Scheduled,
            pb::TaskState::Working => Self::Working,
            pb::TaskState::Completed => Self::Completed,
            pb::TaskState::Failed => Self::Failed,
            pb::TaskState::Canceled => Self::Canceled,
            pb::TaskState::InputRequired => Self::InputRequired,
        })
    }
}

impl From<&EventKind> for pb::task_event::Kind {
    fn from(kind: &EventKind) -> Self {
        use pb::task_event::Kind as K;
        match kind.clone() {
            EventKind::Submitted { agent } => K::Submitted(pb::Submitted { agent }),
            EventKind::Scheduled { worker_id } => K::Scheduled(pb::Scheduled { worker_id }),
            EventKind::Working => K::Working(pb::Working {}),
            EventKind::TextDelta { text, logprobs } => K::TextDelta(pb::TextDelta {
                text,
                logprobs: logprobs.into_iter().map(Into::into).collect(),
            }),
            EventKind::ReasoningDelta { text } => K::ReasoningDelta(pb::ReasoningDelta { text }),
            EventKind::ToolCall { call_id, name, arguments, traceparent, replayed } => {
                K::ToolCall(pb::ToolCall { call_id, name, arguments, traceparent, replayed })
            }
            EventKind::ToolResult { call_id, output, is_error } => {
                K::ToolResult(pb::ToolResult { call_id, output, is_error })
            }
            EventKind::Completed { usage } => {
                K::Completed(pb::Completed { usage: Some(usage.into()) })
            }
            EventKind::Failed { error, worker_id, kind } => {
                K::Failed(pb::Failed { error, worker_id, kind: pb::ErrorKind::from(kind).into() })
            }
            EventKind::Canceled { reason } => K::Canceled(pb::Canceled { reason }),
            EventKind::InputRequired { prompt, call_id, tool, arguments, deadline_us } => {
                K::InputRequired(pb::InputRequired {
                    prompt,
                    call_id,
                    tool,
                    arguments,
                    deadline_us,
                })
            }
            EventKind::InputReceived { call_id, text, rejected } => {
                K::InputReceived(pb::InputReceived { call_id, text, rejected })
            }
            EventKind::Retrying { reason, failed_attempt } => {
                K::Retrying(pb::Retrying { reason, failed_attempt })
            }
            EventKind::Embeddings { vectors } => K::Embeddings(pb::Embeddings {
                vectors: vectors.into_iter().map(|values| pb::Vector { values }).collect(),
            }),
            EventKind::Artifact(artifact) => K::Artifact(pb::Artifact {
                artifact_id: artifact.id.clone(),
                name: artifact.name.clone(),
                description: artifact.description.clone(),
                part: Some(match &artifact.part {
                    ArtifactPart::File(file) => pb::artifact::Part::File(file.clone().into()),
                    ArtifactPart::Data(json) => pb::artifact::Part::DataJson(json.clone()),
                }),
            }),
            EventKind::StateSaved { state } => {
                K::StateSaved(pb::StateSaved { state: state.to_string() })
            }
        }
    }
}

impl From<pb::task_event::Kind> for EventKind {
    fn from(kind: pb::task_event::Kind) -> Self {
        use pb::task_event::Kind as K;
        match kind {
            K::Submitted(e) => Self::Submitted { agent: e.agent },
            K::Scheduled(e) => Self::Scheduled { worker_id: e.worker_id },
            K::Working(_) => Self::Working,
            K::TextDelta(e) => Self::TextDelta {
                text: e.text,
                logprobs: e.logprobs.into_iter().map(Into::into).collect(),
            },
            K::ReasoningDelta(e) => Self::ReasoningDelta { text: e.text },
            K::StateSaved(e) => Self::StateSaved { state: e.state.into() },
            K::ToolCall(e) => Self::ToolCall {
                call_id: e.call_id,
                name: e.name,
                arguments: e.arguments,
                traceparent: e.traceparent,
                replayed: e.replayed,
            },
            K::ToolResult(e) => {
                Self::ToolResult { call_id: e.call_id, output: e.output, is_error: e.is_error }
            }
            K::Completed(e) => {
                Self::Completed { usage: e.usage.map(Into::into).unwrap_or_default() }
            }
            K::Failed(e) => {
                Self::Failed { kind: e.kind().into(), error: e.error, worker_id: e.worker_id }
            }
            K::Canceled(e) => Self::Canceled { reason: e.reason },
            K::InputRequired(e) => Self::InputRequired {
                prompt: e.prompt,
                call_id: e.call_id,
                tool: e.tool,
                arguments: e.arguments,
                deadline_us: e.deadline_us,
            },
            K::InputReceived(e) => {
                Self::InputReceived { call_id: e.call_id, text: e.text, rejected: e.rejected }
            }
            K::Retrying(e) => Self::Retrying { reason: e.reason, failed_attempt: e.failed_attempt },
            K::Embeddings(e) => {
                Self::Embeddings { vectors: e.vectors.into_iter().map(|v| v.values).collect() }
            }
            K::Artifact(a) => Self::Artifact(Arc::new(Artifact {
                id: a.artifact_id,
                name: a.name,
                description: a.description,
                part: match a.part {
                    Some(pb::artifact::Part::File(file)) => ArtifactPart::File(file.into()),
                    Some(pb::artifact::Part::DataJson(json)) => ArtifactPart::Data(json),
                    // A peer that sent none: empty data, not a lost event.
                    None => ArtifactPart::Data("null".to_owned()),
                },
            })),
        }
    }
}

impl From<&TaskEvent> for pb::TaskEvent {
    fn from(e: &TaskEvent) -> Self {
        Self {
            task_id: e.task_id.as_str().to_owned(),
            seq: e.seq,
            attempt: e.attempt,
            timestamp_us: e.timestamp_us,
            kind: Some((&e.kind).into()),
        }
    }
}

impl TryFrom<pb::TaskEvent> for TaskEvent {
    type Error = WireError;

    fn try_from(e: pb::TaskEvent) -> Result<Self> {
        if e.task_id.is_empty() {
            return Err(WireError::Missing("task event task_id"));
        }
        Ok(Self {
            task_id: TaskId::new(e.task_id),
            seq: e.seq,
            attempt: e.attempt,
            timestamp_us: e.timestamp_us,
            kind: e.kind.ok_or(WireError::Missing("task event kind"))?.into(),
        })
    }
}

impl From<pb::ModelOnDisk> for ModelOnDisk {
    fn from(m: pb::ModelOnDisk) -> Self {
        Self { id: m.id, path: m.path, size_bytes: m.size_bytes, format: m.format }
    }
}

impl From<ModelOnDisk> for pb::ModelOnDisk {
    fn from(m: ModelOnDisk) -> Self {
        Self { id: m.id, path: m.path, size_bytes: m.size_bytes, format: m.format }
    }
}

impl TryFrom<pb::WorkerMessage> for WorkerUpdate {
    type Error = WireError;

    fn try_from(m: pb::WorkerMessage) -> Result<Self> {
        use pb::worker_message::Kind;
        Ok(match m.kind.ok_or(WireError::Missing("worker message kind"))? {
            Kind::Register(r) => Self::Register(Registration {
                worker_id: r.worker_id,
                hostname: r.hostname,
                resources: r.resources.map(Into::into).unwrap_or_default(),
                labels: r.labels.into_iter().collect(),
                models: r.models.into_iter().map(Into::into).collect(),
                slots: r.slots,
                version: r.version,
                mesh: r.mesh.map(Into::into),
                incarnation: r.incarnation,
                running: r
                    .running
                    .into_iter()
                    .map(|t| (TaskId::new(t.task_id), t.attempt))
                    .collect(),
                gpus: r.gpus.into_iter().map(Into::into).collect(),
                python_agents: r.python_agents,
                protocol: r.protocol,
            }),
            Kind::Heartbeat(h) => Self::Heartbeat(Heartbeat {
                running_tasks: h.running_tasks,
                mesh_calls: h.mesh_calls,
                actors: h.actors,
                models_loaded: h.models_loaded,
                models: h.models.into_iter().map(Into::into).collect(),
            }),
            Kind::Events(batch) => Self::Events(
                batch.events.into_iter().map(TaskEvent::try_from).collect::<Result<_>>()?,
            ),
            Kind::Locate(l) => Self::Locate(LocateRequest {
                request_id: l.request_id,
                agent: l.agent,
                context_id: l.context_id,
                caller_task: l.caller_task,
            }),
            Kind::TopicMessages(m) => {
                Self::TopicMessages(m.messages.into_iter().map(Into::into).collect())
            }
            Kind::Published(p) => {
                // A worker from before kinds: its failures were all the mesh's.
                let kind = match p.kind() {
                    pb::ErrorKind::Unspecified => ErrorKind::Unavailable,
                    kind => kind.into(),
                };
                Self::Published {
                    request_id: p.request_id,
                    result: if p.error.is_empty() { Ok(p.seq) } else { Err((kind, p.error)) },
                }
            }
            Kind::StoreTopicMessage(m) => Self::StoreTopicMessage {
                request: PublishRequest {
                    request_id: m.request_id,
                    topic: m.topic,
                    publisher: m.publisher,
                    body: m.body,
                },
                seq: m.seq,
                more: m.more_bodies,
            },
            Kind::Drain(d) => Self::Drain { reason: d.reason },
        })
    }
}

impl From<WorkerUpdate> for pb::WorkerMessage {
    fn from(u: WorkerUpdate) -> Self {
        use pb::worker_message::Kind;
        let kind = match u {
            WorkerUpdate::Register(r) => Kind::Register(pb::Register {
                worker_id: r.worker_id,
                hostname: r.hostname,
                resources: Some(r.resources.into()),
                labels: r.labels.into_iter().collect(),
                models: r.models.into_iter().map(Into::into).collect(),
                slots: r.slots,
                version: r.version,
                mesh: r.mesh.map(Into::into),
                incarnation: r.incarnation,
                running: r
                    .running
                    .into_iter()
                    .map(|(task_id, attempt)| pb::RunningTask {
                        task_id: task_id.as_str().to_owned(),
                        attempt,
                    })
                    .collect(),
                gpus: r.gpus.into_iter().map(Into::into).collect(),
                python_agents: r.python_agents,
                protocol: r.protocol,
            }),
            WorkerUpdate::Heartbeat(h) => Kind::Heartbeat(pb::Heartbeat {
                running_tasks: h.running_tasks,
                mesh_calls: h.mesh_calls,
                actors: h.actors,
                models_loaded: h.models_loaded,
                models: h.models.into_iter().map(Into::into).collect(),
            }),
            WorkerUpdate::Events(events) => {
                Kind::Events(pb::WorkerEvents { events: events.iter().map(Into::into).collect() })
            }
            WorkerUpdate::Locate(l) => Kind::Locate(pb::Locate {
                request_id: l.request_id,
                agent: l.agent,
                context_id: l.context_id,
                caller_task: l.caller_task,
            }),
            WorkerUpdate::TopicMessages(messages) => Kind::TopicMessages(pb::TopicMessages {
                messages: messages.into_iter().map(Into::into).collect(),
            }),
            WorkerUpdate::Published { request_id, result } => Kind::Published(match result {
                Ok(seq) => pb::Published { request_id, seq, ..Default::default() },
                Err((kind, error)) => pb::Published {
                    request_id,
                    seq: 0,
                    error,
                    kind: pb::ErrorKind::from(kind).into(),
                },
            }),
            WorkerUpdate::StoreTopicMessage { request, seq, more } => {
                Kind::StoreTopicMessage(pb::StoreTopicMessage {
                    request_id: request.request_id,
                    topic: request.topic,
                    publisher: request.publisher,
                    body: request.body,
                    seq,
                    more_bodies: more,
                })
            }
            WorkerUpdate::Drain { reason } => Kind::Drain(pb::Drain { reason }),
        };
        Self { kind: Some(kind) }
    }
}

impl From<&Command> for pb::Command {
    fn from(c: &Command) -> Self {
        use pb::command::Kind;
        let kind = match c {
            Command::PlaceActor { spec, version, functions } => Kind::PlaceActor(pb::PlaceActor {
                spec: Some(spec.as_ref().into()),
                spec_version: *version,
                functions: functions.iter().map(Into::into).collect(),
            }),
            Command::RunTask(t) => Kind::RunTask(pb::RunTask {
                task_id: t.task_id.as_str().to_owned(),
                agent: t.agent.clone(),
                attempt: t.attempt,
                input: t.input.clone(),
                context_id: t.context_id.clone(),
                options: t.options.as_deref().map(Into::into),
                depth: t.depth,
                traceparent: t.traceparent.clone(),
                conversation: t.conversation.iter().map(Into::into).collect(),
                steps: t.steps.iter().map(Into::into).collect(),
                actor: t
                    .actor
                    .as_ref()
                    .map(|a| pb::StoredState { state: a.state.to_string(), version: a.version }),
            }),
            Command::CancelTask { task_id, reason } => Kind::CancelTask(pb::CancelTask {
                task_id: task_id.as_str().to_owned(),
                reason: reason.clone(),
            }),
            Command::StopActor { agent } => Kind::StopActor(pb::StopActor { agent: agent.clone() }),
            Command::ToolReply { task_id, call_id, output, is_error } => {
                Kind::ToolReply(pb::ToolReply {
                    task_id: task_id.as_str().to_owned(),
                    call_id: call_id.clone(),
                    output: output.clone(),
                    is_error: *is_error,
                })
            }
            Command::MeshPeers(MeshPeers::All(peers)) => Kind::MeshPeers(pb::MeshPeers {
                peers: peers.iter().cloned().map(Into::into).collect(),
                changes: false,
                left: Vec::new(),
            }),
            Command::MeshPeers(MeshPeers::Changes { joined, left }) => {
                Kind::MeshPeers(pb::MeshPeers {
                    peers: joined.iter().cloned().map(Into::into).collect(),
                    changes: true,
                    left: left.clone(),
                })
            }
            Command::Located { request_id, result } => Kind::Located(match result {
                Ok(peer) => pb::Located {
                    request_id: *request_id,
                    worker_id: peer.worker_id.clone(),
                    address: Some(peer.address.clone().into()),
                    error: String::new(),
                },
                Err(error) => pb::Located {
                    request_id: *request_id,
                    error: error.clone(),
                    ..Default::default()
                },
            }),
            Command::FollowTopic { topic, follow } => {
                Kind::FollowTopic(pb::FollowTopic { topic: topic.clone(), follow: *follow })
            }
            Command::Publish(p) => Kind::Publish(pb::Publish {
                request_id: p.request_id,
                topic: p.topic.clone(),
                publisher: p.publisher.clone(),
                body: p.body.clone(),
            }),
            Command::Acked { up_to } => Kind::Acked(pb::Acked { up_to: *up_to }),
            Command::HeartbeatEvery(every) => Kind::HeartbeatEvery(pb::HeartbeatEvery {
                interval_ms: u32::try_from(every.as_millis()).unwrap_or(u32::MAX),
            }),
            Command::TopicMessageStored { request_id, result } => {
                Kind::TopicMessageStored(match result {
                    Ok(offset) => pb::TopicMessageStored {
                        request_id: *request_id,
                        offset: *offset,
                        ..Default::default()
                    },
                    Err((kind, error)) => pb::TopicMessageStored {
                        request_id: *request_id,
                        offset: 0,
                        error: error.clone(),
                        kind: pb::ErrorKind::from(*kind).into(),
                    },
                })
            }
        };
        Self { kind: Some(kind) }
    }
}

impl TryFrom<pb::Command> for Command {
    type Error = WireError;

    fn try_from(c: pb::Command) -> Result<Self> {
        use pb::command::Kind;
        Ok(match c.kind.ok_or(WireError::Missing("command kind"))? {
            Kind::PlaceActor(p) => Command::PlaceActor {
                spec: Arc::new(p.spec.ok_or(WireError::Missing("place_actor spec"))?.into()),
                version: p.spec_version,
                functions: p.functions.into_iter().map(Into::into).collect(),
            },
            Kind::RunTask(t) => Command::RunTask(TaskAssignment {
                task_id: TaskId::new(t.task_id),
                agent: t.agent,
                attempt: t.attempt,
                input: t.input,
                context_id: t.context_id,
                options: t.options.map(|o| Arc::new(o.into())),
                depth: t.depth,
                traceparent: t.traceparent,
                conversation: t.conversation.into_iter().map(Into::into).collect(),
                steps: t.steps.into_iter().map(Into::into).collect(),
                actor: t.actor.map(|a| StoredState { state: a.state.into(), version: a.version }),
            }),
            Kind::CancelTask(c) => {
                Command::CancelTask { task_id: TaskId::new(c.task_id), reason: c.reason }
            }
            Kind::StopActor(s) => Command::StopActor { agent: s.agent },
            Kind::ToolReply(r) => Command::ToolReply {
                task_id: TaskId::new(r.task_id),
                call_id: r.call_id,
                output: r.output,
                is_error: r.is_error,
            },
            Kind::MeshPeers(m) => {
                let peers = m.peers.into_iter().map(Into::into).collect();
                Command::MeshPeers(if m.changes {
                    MeshPeers::Changes { joined: peers, left: m.left }
                } else {
                    MeshPeers::All(peers)
                })
            }
            Kind::Located(l) => Command::Located {
                request_id: l.request_id,
                result: if l.error.is_empty() {
                    Ok(MeshPeer {
                        worker_id: l.worker_id,
                        address: l.address.map(Into::into).unwrap_or_default(),
                    })
                } else {
                    Err(l.error)
                },
            },
            Kind::FollowTopic(f) => Command::FollowTopic { topic: f.topic, follow: f.follow },
            Kind::Publish(p) => Command::Publish(PublishRequest {
                request_id: p.request_id,
                topic: p.topic,
                publisher: p.publisher,
                body: p.body,
            }),
            Kind::Acked(a) => Command::Acked { up_to: a.up_to },
            // Floored as the welcome's interval is: a zero would spin the worker's timer.
            Kind::HeartbeatEvery(h) => Command::HeartbeatEvery(std::time::Duration::from_millis(
                u64::from(h.interval_ms.max(10)),
            )),
            Kind::TopicMessageStored(t) => {
                let kind = match t.kind() {
                    pb::ErrorKind::Unspecified => ErrorKind::Unavailable,
                    kind => kind.into(),
                };
                Command::TopicMessageStored {
                    request_id: t.request_id,
                    result: if t.error.is_empty() { Ok(t.offset) } else { Err((kind, t.error)) },
                }
            }
        })
    }
}

impl From<pb::TopicMessage> for TopicMessage {
    fn from(m: pb::TopicMessage) -> Self {
        Self {
            topic: m.topic,
            publisher: m.publisher,
            seq: m.seq,
            body: m.body,
            worker_id: m.worker_id,
            offset: m.offset,
            published_at_us: m.published_at_us,
        }
    }
}

impl From<TopicMessage> for pb::TopicMessage {
    fn from(m: TopicMessage) -> Self {
        Self {
            topic: m.topic,
            publisher: m.publisher,
            seq: m.seq,
            body: m.body,
            worker_id: m.worker_id,
            offset: m.offset,
            published_at_us: m.published_at_us,
        }
    }
}

impl From<pb::MeshAddress> for MeshAddress {
    fn from(a: pb::MeshAddress) -> Self {
        Self { peer_id: a.peer_id, addrs: a.addrs }
    }
}

impl From<MeshAddress> for pb::MeshAddress {
    fn from(a: MeshAddress) -> Self {
        Self { peer_id: a.peer_id, addrs: a.addrs }
    }
}

impl From<pb::MeshPeer> for MeshPeer {
    fn from(p: pb::MeshPeer) -> Self {
        Self { worker_id: p.worker_id, address: p.address.map(Into::into).unwrap_or_default() }
    }
}

impl From<MeshPeer> for pb::MeshPeer {
    fn from(p: MeshPeer) -> Self {
        Self { worker_id: p.worker_id, address: Some(p.address.into()) }
    }
}

impl From<pb::FilePart> for FilePart {
    fn from(f: pb::FilePart) -> Self {
        Self { name: f.name, media_type: f.media_type, data: f.data, url: f.url }
    }
}

impl From<FilePart> for pb::FilePart {
    fn from(f: FilePart) -> Self {
        Self { name: f.name, media_type: f.media_type, data: f.data, url: f.url }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_the_wire() {
        let event = TaskEvent {
            task_id: TaskId::new("t-1"),
            seq: 7,
            attempt: 2,
            timestamp_us: 42,
            kind: EventKind::Completed {
                usage: Usage {
                    prompt_tokens: 3,
                    cached_tokens: 2,
                    completion_tokens: 4,
                    reasoning_tokens: 3,
                    truncated: true,
                },
            },
        };
        let wire = pb::TaskEvent::from(&event);
        assert_eq!(TaskEvent::try_from(wire), Ok(event));
    }

    #[test]
    fn artifacts_round_trip_through_the_wire() {
        let file = FilePart {
            name: "chart.png".into(),
            media_type: "image/png".into(),
            data: (0..=255).collect(),
            url: String::new(),
        };
        for part in [ArtifactPart::File(file), ArtifactPart::Data(r#"{"rows":[1,2]}"#.into())] {
            let artifact = Artifact {
                id: "artifact-1".into(),
                name: "chart".into(),
                description: "by month".into(),
                part,
            };
            let event = TaskEvent {
                task_id: TaskId::new("t-1"),
                seq: 3,
                attempt: 1,
                timestamp_us: 42,
                kind: EventKind::Artifact(Arc::new(artifact)),
            };
            let wire = pb::TaskEvent::from(&event);
            assert_eq!(TaskEvent::try_from(wire), Ok(event));
        }
    }

    #[test]
    fn a_registration_keeps_its_gpus_through_the_wire() {
        let gpus = vec![
            Gpu { index: 0, name: "NVIDIA H100 80GB HBM3".into(), memory_bytes: 85_520_809_984 },
            Gpu { index: 1, name: "NVIDIA A100-SXM4-40GB".into(), memory_bytes: 42_949_672_960 },
        ];
        let registration = Registration { worker_id: "w".into(), gpus, ..Default::default() };
        let wire = pb::WorkerMessage::from(WorkerUpdate::Register(registration.clone()));
        match WorkerUpdate::try_from(wire) {
            Ok(WorkerUpdate::Register(back)) => assert_eq!(back, registration),
            other => panic!("expected the registration back, got {other:?}"),
        }
    }

    #[test]
    fn a_refused_publish_keeps_its_kind_through_the_wire() {
        let refused = WorkerUpdate::Published {
            request_id: 7,
            result: Err((ErrorKind::Busy, "too many publishers".into())),
        };
        let wire = pb::WorkerMessage::from(refused);
        match WorkerUpdate::try_from(wire) {
            Ok(WorkerUpdate::Published { request_id: 7, result: Err((kind, _)) }) => {
                assert_eq!(kind, ErrorKind::Busy);
            }
            other => panic!("expected the refusal back, got {other:?}"),
        }
        // A worker from before kinds sent only the text: the mesh failed.
        let old = pb::Published { request_id: 8, seq: 0, error: "gone".into(), kind: 0 };
        let wire = pb::WorkerMessage { kind: Some(pb::worker_message::Kind::Published(old)) };
        match WorkerUpdate::try_from(wire) {
            Ok(WorkerUpdate::Published { result: Err((kind, _)), .. }) => {
                assert_eq!(kind, ErrorKind::Unavailable);
            }
            other => panic!("expected the refusal back, got {other:?}"),
        }
    }

    #[test]
    fn an_event_without_a_kind_is_rejected() {
        let wire = pb::TaskEvent { task_id: "t".into(), ..Default::default() };
        assert_eq!(TaskEvent::try_from(wire), Err(WireError::Missing("task event kind")));
    }

    #[test]
    fn agent_spec_defaults_max_retries() {
        let spec = AgentSpec::from(pb::AgentSpec { name: "a".into(), ..Default::default() });
        assert_eq!(spec.max_retries, DEFAULT_MAX_RETRIES);
        // A Rust client's default spec says the same as the wire's.
        assert_eq!(AgentSpec::default().max_retries, DEFAULT_MAX_RETRIES);
    }
}
