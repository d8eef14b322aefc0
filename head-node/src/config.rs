//! Head settings: command-line flags, an optional TOML file (`--config fleet.toml`) and the
//! agents it declares. Flags win over the file; the file wins over the defaults.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fleet_proto::{AgentSpec, DEFAULT_MAX_RETRIES, McpServer, OutputFormat, Resources, Sampling};
use serde::Deserialize;

use crate::{Error, Result};

/// The address the head listens on when neither `--listen` nor the file says.
/// Loopback: a head reachable from the network needs credentials (see [`validate`]).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

/// Everything the head needs to run.
#[derive(Clone, Debug)]
pub struct HeadConfig {
    /// Where the gRPC and HTTP APIs listen (one address for all).
    pub listen: SocketAddr,
    /// A client credential (gRPC client API, A2A, OpenAI API); `None` with no `api_key`
    /// accepts every client.
    pub token: Option<String>,
    /// Another client credential, accepted at the same doors as `token` (for handing HTTP
    /// users a key of their own).
    pub api_key: Option<String>,
    /// The token workers join with; never accepted from clients. Required whenever client
    /// credentials are: otherwise anyone could register a worker and receive task inputs.
    pub join_token: Option<String>,
    /// How often workers send heartbeats: the shortest interval; a large cluster is told a
    /// longer one (see `max_heartbeats_per_second`).
    pub heartbeat_interval: Duration,
    /// The most heartbeats a second all workers together send: past
    /// `heartbeat_interval × this` workers the interval grows with the cluster, up to a
    /// third of `worker_timeout` (see `cluster::heartbeats`).
    pub max_heartbeats_per_second: u32,
    /// A worker silent for this long is declared dead.
    pub worker_timeout: Duration,
    /// Tasks waiting for capacity; beyond this a submit is answered `resource exhausted`.
    pub max_queued_tasks: usize,
    /// The most bytes the inputs of unfinished tasks (with their options) hold; beyond it
    /// a submit is answered `resource exhausted`.
    pub max_queued_bytes: usize,
    /// Finished tasks (with their event logs) kept for GetTask/WatchTask; oldest go first.
    pub max_retained_tasks: usize,
    /// The most memory finished tasks (inputs, outputs, event logs) hold; oldest go first.
    pub max_retained_bytes: usize,
    /// The largest task input accepted, in bytes.
    pub max_input_bytes: usize,
    /// Agents clients may register; beyond it a new name is `resource exhausted`.
    pub max_agents: usize,
    /// Events buffered for one subscriber stream before it is cut off (it may resume).
    pub subscriber_buffer: usize,
    /// Whether push-notification webhooks may target loopback, private and link-local
    /// addresses (refused by default: any client can make a config).
    pub allow_private_webhooks: bool,
    /// CA certificates (PEM) trusted beside the system's for `https://` webhooks.
    pub webhook_ca: Option<std::path::PathBuf>,
    /// The certificate chain (PEM) served for TLS on the one port; with `tls_key`.
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// The private key (PKCS#8 PEM, EC P-256 or Ed25519) that signs agent cards (A2A 1.0
    /// signatures); its public key is served at `/.well-known/jwks.json`.
    pub card_signing_key: Option<std::path::PathBuf>,
    /// Where tasks, their events and registered agents are kept across restarts.
    pub store: crate::store::StoreConfig,
    /// When the file store syncs its log to the disk.
    pub fsync: crate::store::Fsync,
    /// The URL clients and workers reach this head at (standbys name the leader's).
    pub advertise: Option<String>,
    /// How long the leader lease of a shared (PostgreSQL) store lasts unless renewed.
    pub lease_ttl: Duration,
    /// Agents declared in the config file.
    pub agents: Vec<AgentSpec>,
    /// Whether placement prefers a worker that recently ran a task's agent or the start of
    /// its conversation (its prefix cache likely holds that prompt) over a less loaded one.
    pub prefix_affinity: bool,
    /// Serve on a non-loopback address without a client credential or a join token
    /// (`--insecure-no-credentials`): anyone who reaches it may run tasks and join workers.
    pub insecure_no_credentials: bool,
    /// Web origins (`https://app.example.com`) whose pages may call the head's HTTP APIs
    /// (with CORS); pages of other origins are refused.
    pub allowed_origins: Vec<String>,
    /// Host names besides loopback ones that requests to a loopback head may name (a
    /// reverse proxy's); others are refused as DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Keys of the config file's `[[principal]]`s: who holds each, in which tenant, with
    /// which role.
    pub principals: Vec<crate::auth::PrincipalKey>,
    /// Each tenant's quotas (`[[tenant]]`); tenants not listed have none.
    pub tenants: Vec<crate::quotas::TenantQuota>,
    /// The key (64 hex digits in a file) that seals agents' API keys and webhooks'
    /// credentials in the store; a file store without one makes `secrets.key`.
    pub secrets_key_file: Option<std::path::PathBuf>,
    /// What topics' logs keep (`[topics]`).
    pub topics: crate::topics::Retention,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 7070))),
            token: None,
            api_key: None,
            join_token: None,
            heartbeat_interval: Duration::from_millis(500),
            max_heartbeats_per_second: 10_000,
            worker_timeout: Duration::from_secs(3),
            max_queued_tasks: 100_000,
            max_queued_bytes: 1 << 30,
            max_retained_tasks: 100_000,
            max_retained_bytes: 1 << 30,
            max_input_bytes: 1 << 20,
            max_agents: crate::agents::DEFAULT_MAX_AGENTS,
            subscriber_buffer: 65_536,
            allow_private_webhooks: false,
            webhook_ca: None,
            tls_cert: None,
            tls_key: None,
            card_signing_key: None,
            store: crate::store::StoreConfig::Memory,
            fsync: crate::store::Fsync::Periodic,
            advertise: None,
            lease_ttl: Duration::from_secs(5),
            agents: Vec::new(),
            prefix_affinity: true,
            insecure_no_credentials: false,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            principals: Vec::new(),
            tenants: Vec::new(),
            secrets_key_file: None,
            topics: crate::topics::Retention::default(),
        }
    }
}

/// The TOML file: head settings at the top level plus `[[agent]]` tables.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub listen: Option<SocketAddr>,
    pub token: Option<String>,
    pub api_key: Option<String>,
    pub join_token: Option<String>,
    pub heartbeat_interval_ms: Option<u64>,
    pub max_heartbeats_per_second: Option<u32>,
    pub worker_timeout_ms: Option<u64>,
    pub max_queued_tasks: Option<usize>,
    pub max_queued_bytes: Option<usize>,
    pub max_retained_tasks: Option<usize>,
    pub max_retained_bytes: Option<usize>,
    pub max_input_bytes: Option<usize>,
    pub max_agents: Option<usize>,
    pub subscriber_buffer: Option<usize>,
    pub allow_private_webhooks: Option<bool>,
    pub webhook_ca: Option<std::path::PathBuf>,
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    pub card_signing_key: Option<std::path::PathBuf>,
    pub secrets_key_file: Option<std::path::PathBuf>,
    /// `file` (the default: `head.redb` under `data_dir`), `memory` (keep nothing) or a
    /// `postgres://` URL (shared by a leader and its standbys).
    pub store: Option<StoreKind>,
    pub data_dir: Option<std::path::PathBuf>,
    /// `periodic` (the default) or `always`: see `--fsync`.
    #[serde(default, deserialize_with = "fsync_policy")]
    pub fsync: Option<crate::store::Fsync>,
    pub advertise: Option<String>,
    pub lease_ms: Option<u64>,
    /// `false`: place tasks by load alone, ignoring which workers' caches are warm.
    pub prefix_affinity: Option<bool>,
    pub insecure_no_credentials: Option<bool>,
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    #[serde(default, rename = "agent")]
    pub agents: Vec<AgentTable>,
    #[serde(default, rename = "principal")]
    pub principals: Vec<crate::auth::PrincipalKey>,
    #[serde(default, rename = "tenant")]
    pub tenants: Vec<crate::quotas::TenantQuota>,
    /// What topics' logs keep.
    pub topics: Option<TopicsTable>,
}

/// `[topics]`: what each topic's log keeps (the oldest messages go first), and the bounds
/// over all topics.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsTable {
    pub retain_messages: Option<usize>,
    pub retain_bytes: Option<usize>,
    pub retain_seconds: Option<u64>,
    pub max_bytes: Option<usize>,
    pub max_topics: Option<usize>,
}

/// What kind of store a head keeps its state in: `file`, `memory` or a `postgres://` URL.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum StoreKind {
    /// A file under the data directory: tasks and agents survive restarts.
    File,
    /// Nothing kept: a restarted head starts empty.
    Memory,
    /// A PostgreSQL database heads share (a standby takes over when the leader dies).
    Postgres(String),
}

impl std::str::FromStr for StoreKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "file" => Ok(Self::File),
            "memory" => Ok(Self::Memory),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Self::Postgres(url.to_owned()))
            }
            other => Err(format!(
                "unknown store {other:?}: give file, memory or a postgres://USER@HOST:PORT/DB URL"
            )),
        }
    }
}

impl TryFrom<String> for StoreKind {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

/// Reads `fsync = "periodic" | "always"`.
fn fsync_policy<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<crate::store::Fsync>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

/// The store `kind` and `dir` name; a file store needs a directory (given or the user's
/// data folder).
pub fn store_config(
    kind: Option<StoreKind>,
    dir: Option<std::path::PathBuf>,
) -> Result<crate::store::StoreConfig> {
    use crate::store::StoreConfig;
    match kind.unwrap_or(StoreKind::File) {
        StoreKind::Memory => Ok(StoreConfig::Memory),
        StoreKind::Postgres(url) => {
            crate::store::postgres::parse(&url).map_err(|e| Error::InvalidConfig(e.message))?;
            Ok(StoreConfig::Postgres(url))
        }
        StoreKind::File => {
            dir.or_else(StoreConfig::default_dir).map(StoreConfig::Dir).ok_or_else(|| {
                Error::InvalidConfig(
                    "no data directory: HOME is not set; give --data-dir or --store memory".into(),
                )
            })
        }
    }
}

/// One `[[agent]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentTable {
    pub name: String,
    pub model: String,
    #[serde(default)]
    pub instructions: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub max_concurrency: u32,
    #[serde(default)]
    pub topics: Vec<String>,
    /// MCP servers whose tools the agent may call: `{ command = [...] }` or `{ url = "..." }`.
    #[serde(default)]
    pub mcp: Vec<McpTable>,
    /// Whether each task's first reply must call a tool: "auto", "required" or a tool's name.
    #[serde(default)]
    pub tool_choice: String,
    /// Tools whose every call waits for a person's approval.
    #[serde(default)]
    pub requires_approval: Vec<String>,
    /// Tools a retried task never calls twice for one step (not idempotent).
    #[serde(default)]
    pub call_once: Vec<String>,
    /// A Python agent's stored state (`ctx.state`): "agent" (one per agent) or "context"
    /// (one per conversation); unset: none.
    #[serde(default)]
    pub state: StateTable,
    /// The agent may ask the client questions (the built-in `ask_user` tool).
    #[serde(default)]
    pub ask_user: bool,
    /// How long a task waits for an answer or an approval, in seconds (default 900).
    #[serde(default)]
    pub input_timeout_s: Option<f64>,
    #[serde(default)]
    pub resources: ResourcesTable,
    #[serde(default)]
    pub sampling: SamplingTable,
    /// A JSON Schema the agent's answers follow (constrained decoding on local models).
    #[serde(default)]
    pub output_schema: Option<toml::Value>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub model_options: std::collections::BTreeMap<String, toml::Value>,
    /// The tenant whose agent it is (none: shared by every tenant).
    #[serde(default)]
    pub tenant: String,
    /// Listed on the public agent card.
    #[serde(default)]
    pub public: bool,
}

/// One MCP server of an agent.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpTable {
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub url: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesTable {
    #[serde(default)]
    pub cpus: f64,
    #[serde(default)]
    pub memory_mb: u64,
    #[serde(default)]
    pub gpus: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingTable {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub max_tokens: Option<u32>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Vec<String>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Whether a thinking model reasons before it answers (unset: the model's default).
    pub thinking: Option<bool>,
}

/// What a Python agent's stored state belongs to, as the config file names it.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StateTable {
    #[default]
    None,
    Agent,
    Context,
}

impl From<AgentTable> for AgentSpec {
    fn from(t: AgentTable) -> Self {
        let model_options = t
            .model_options
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    toml::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect();
        AgentSpec {
            name: t.name,
            model: t.model,
            instructions: t.instructions,
            description: t.description,
            tools: t.tools,
            sampling: Sampling {
                temperature: t.sampling.temperature,
                top_p: t.sampling.top_p,
                max_tokens: t.sampling.max_tokens,
                seed: t.sampling.seed,
                stop: t.sampling.stop,
                presence_penalty: t.sampling.presence_penalty,
                frequency_penalty: t.sampling.frequency_penalty,
                logprobs: None,
                thinking: t.sampling.thinking,
                // TOML values are JSON values (a datetime becomes its string).
                format: t
                    .output_schema
                    .map(|schema| OutputFormat::JsonSchema(toml_to_json(schema).to_string())),
            },
            resources: Resources {
                cpus: t.resources.cpus,
                memory_bytes: t.resources.memory_mb.saturating_mul(1 << 20),
                gpus: t.resources.gpus,
            },
            max_retries: t.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
            labels: t.labels,
            model_options,
            max_concurrency: t.max_concurrency,
            topics: t.topics,
            mcp: t.mcp.into_iter().map(|m| McpServer { command: m.command, url: m.url }).collect(),
            tool_choice: t.tool_choice,
            requires_approval: t.requires_approval,
            ask_user: t.ask_user,
            // A value out of range becomes one the registration refuses (over a day).
            input_timeout_ms: t.input_timeout_s.map_or(0, |s| {
                if s > 0.0 { (s * 1000.0).ceil().min(u32::MAX as f64) as u32 } else { u32::MAX }
            }),
            tenant: t.tenant,
            public: t.public,
            call_once: t.call_once,
            actor_state: match t.state {
                StateTable::None => fleet_proto::ActorState::None,
                StateTable::Agent => fleet_proto::ActorState::PerAgent,
                StateTable::Context => fleet_proto::ActorState::PerContext,
            },
        }
    }
}

fn toml_to_json(value: toml::Value) -> serde_json::Value {
    match value {
        toml::Value::String(s) => s.into(),
        toml::Value::Integer(i) => i.into(),
        toml::Value::Float(f) => f.into(),
        toml::Value::Boolean(b) => b.into(),
        toml::Value::Datetime(d) => d.to_string().into(),
        toml::Value::Array(items) => items.into_iter().map(toml_to_json).collect(),
        toml::Value::Table(t) => t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect(),
    }
}

impl ConfigFile {
    /// Parses a config file's text; errors name the file and the line.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            Error::Config {
                path: path.to_owned(),
                line,
                message: e.message().trim_end_matches('.').to_owned(),
            }
        })
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_owned(),
            line: None,
            message: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Applies the file over `config`.
    pub fn apply(self, config: &mut HeadConfig) {
        let ms = Duration::from_millis;
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if self.token.is_some() {
            config.token = self.token;
        }
        if self.api_key.is_some() {
            config.api_key = self.api_key;
        }
        if self.join_token.is_some() {
            config.join_token = self.join_token;
        }
        if let Some(v) = self.heartbeat_interval_ms {
            config.heartbeat_interval = ms(v);
        }
        if let Some(v) = self.max_heartbeats_per_second {
            config.max_heartbeats_per_second = v;
        }
        if let Some(v) = self.worker_timeout_ms {
            config.worker_timeout = ms(v);
        }
        if let Some(v) = self.max_queued_tasks {
            config.max_queued_tasks = v;
        }
        if let Some(v) = self.max_queued_bytes {
            config.max_queued_bytes = v;
        }
        if let Some(v) = self.max_retained_tasks {
            config.max_retained_tasks = v;
        }
        if let Some(v) = self.max_retained_bytes {
            config.max_retained_bytes = v;
        }
        if let Some(v) = self.max_input_bytes {
            config.max_input_bytes = v;
        }
        if let Some(v) = self.max_agents {
            config.max_agents = v;
        }
        if let Some(v) = self.subscriber_buffer {
            config.subscriber_buffer = v;
        }
        if self.advertise.is_some() {
            config.advertise = self.advertise;
        }
        if let Some(v) = self.lease_ms {
            config.lease_ttl = ms(v);
        }
        if let Some(v) = self.fsync {
            config.fsync = v;
        }
        if let Some(v) = self.allow_private_webhooks {
            config.allow_private_webhooks = v;
        }
        if let Some(v) = self.prefix_affinity {
            config.prefix_affinity = v;
        }
        if let Some(v) = self.insecure_no_credentials {
            config.insecure_no_credentials = v;
        }
        config.allowed_origins.extend(self.allowed_origins);
        config.allowed_hosts.extend(self.allowed_hosts);
        if self.webhook_ca.is_some() {
            config.webhook_ca = self.webhook_ca;
        }
        if self.tls_cert.is_some() {
            config.tls_cert = self.tls_cert;
        }
        if self.tls_key.is_some() {
            config.tls_key = self.tls_key;
        }
        if self.card_signing_key.is_some() {
            config.card_signing_key = self.card_signing_key;
        }
        if self.secrets_key_file.is_some() {
            config.secrets_key_file = self.secrets_key_file;
        }
        config.agents.extend(self.agents.into_iter().map(AgentSpec::from));
        config.principals.extend(self.principals);
        config.tenants.extend(self.tenants);
        if let Some(t) = self.topics {
            let r = &mut config.topics;
            r.messages = t.retain_messages.unwrap_or(r.messages);
            r.bytes = t.retain_bytes.unwrap_or(r.bytes);
            r.age = t.retain_seconds.map_or(r.age, Duration::from_secs);
            r.max_bytes = t.max_bytes.unwrap_or(r.max_bytes);
            r.max_topics = t.max_topics.unwrap_or(r.max_topics);
        }
    }
}

/// Checks settings that would make the head misbehave.
pub fn validate(config: &HeadConfig) -> Result<()> {
    let bad = |message: &str| Err(Error::InvalidConfig(message.to_owned()));
    if config.heartbeat_interval.is_zero() {
        return bad("heartbeat interval must be above zero");
    }
    if config.max_heartbeats_per_second == 0 {
        return bad("max heartbeats per second must be above zero");
    }
    if config.worker_timeout <= config.heartbeat_interval {
        return bad("worker timeout must be longer than the heartbeat interval");
    }
    if config.lease_ttl < Duration::from_millis(300) || config.lease_ttl > Duration::from_secs(600)
    {
        return bad("the lease must last between 300 ms and 600 s (--lease-ms)");
    }
    if config.max_input_bytes == 0 || config.subscriber_buffer == 0 || config.max_agents == 0 {
        return bad("max input bytes, max agents and subscriber buffer must be above zero");
    }
    if config.agents.len() > config.max_agents {
        return bad(&format!(
            "the config file declares {} agents, more than max agents ({})",
            config.agents.len(),
            config.max_agents
        ));
    }
    crate::tls::files(&config.tls_cert, &config.tls_key)?;
    if let Some(path) = &config.card_signing_key {
        crate::a2a::signing::CardSigner::load(path).map_err(Error::InvalidConfig)?;
    }
    if config.token.as_deref().is_some_and(str::is_empty) {
        return bad("the client token must not be empty");
    }
    if config.api_key.as_deref().is_some_and(str::is_empty) {
        return bad("the API key must not be empty");
    }
    if config.join_token.as_deref().is_some_and(str::is_empty) {
        return bad("the join token must not be empty");
    }
    let clients = [&config.token, &config.api_key];
    let any_client = clients.iter().any(|c| c.is_some()) || !config.principals.is_empty();
    if any_client && config.join_token.is_none() {
        return bad(
            "client credentials (--token, --api-key, [[principal]]) need a worker join token \
             as well: set --join-token (FLEET_JOIN_TOKEN) on the head and its workers, so \
             that a client's credential cannot register a worker",
        );
    }
    check_principals(config)?;
    if clients.iter().any(|c| c.is_some() && *c == &config.join_token) {
        return bad("the join token must differ from the client credentials (--token, --api-key)");
    }
    let credentials = any_client && config.join_token.is_some();
    if !config.listen.ip().is_loopback() && !credentials && !config.insecure_no_credentials {
        return bad(&format!(
            "listening on {} (not loopback) needs a client credential and a join token: \
             anyone who reaches that address could run tasks, read every answer and join as \
             a worker. Set --token (or --api-key) and --join-token, listen on 127.0.0.1, or \
             pass --insecure-no-credentials to serve without them",
            config.listen
        ));
    }
    config.agents.iter().try_for_each(crate::agents::validate)
}

/// Principals have distinct names and keys, and no key is the join token; tenants' quotas
/// are declared once each.
fn check_principals(config: &HeadConfig) -> Result<()> {
    let bad = |message: String| Err(Error::InvalidConfig(message));
    let mut names = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    let join = config.join_token.as_deref().map(|t| crate::auth::key_sha256(t.as_bytes()));
    for key in &config.principals {
        let name = key.principal.name();
        if !names.insert(name) {
            return bad(format!("two [[principal]]s are named {name:?}: names are unique"));
        }
        if !keys.insert(key.key_sha256) {
            return bad(format!("principal {name:?} has the key of another: keys are unique"));
        }
        if join == Some(key.key_sha256) {
            return bad(format!("principal {name:?}'s key is the join token: they must differ"));
        }
    }
    let mut tenants = std::collections::HashSet::new();
    for tenant in &config.tenants {
        if !tenants.insert(tenant.name.as_str()) {
            return bad(format!("two [[tenant]]s are named {:?}", tenant.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_and_settings_are_read() -> Result<()> {
        let text = r#"
            listen = "127.0.0.1:9000"
            worker_timeout_ms = 4000

            [[agent]]
            name = "echo"
            model = "builtin:echo"
            instructions = "repeat"
            max_retries = 2
            resources = { cpus = 0.5, memory_mb = 10 }
            model_options = { token_delay_ms = 5 }
        "#;
        let mut config = HeadConfig::default();
        ConfigFile::parse(text, Path::new("fleet.toml"))?.apply(&mut config);
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.worker_timeout, Duration::from_secs(4));
        let agent = &config.agents[0];
        assert_eq!((agent.name.as_str(), agent.max_retries), ("echo", 2));
        assert_eq!(agent.resources.memory_bytes, 10 << 20);
        assert_eq!(agent.model_options["token_delay_ms"], "5");
        Ok(())
    }

    #[test]
    fn an_output_schema_is_read_as_json() -> Result<()> {
        let text = r#"
            [[agent]]
            name = "extractor"
            model = "SmolLM2-135M-Instruct.Q4_1.gguf"
            output_schema = { type = "object", required = ["city"], properties = { city = { type = "string", maxLength = 40 } } }
        "#;
        let mut config = HeadConfig::default();
        ConfigFile::parse(text, Path::new("fleet.toml"))?.apply(&mut config);
        let Some(OutputFormat::JsonSchema(schema)) = &config.agents[0].sampling.format else {
            panic!("no schema: {:?}", config.agents[0].sampling);
        };
        let schema: serde_json::Value = serde_json::from_str(schema).unwrap_or_default();
        assert_eq!(
            schema,
            serde_json::json!({"type": "object", "required": ["city"],
                "properties": {"city": {"type": "string", "maxLength": 40}}})
        );
        crate::agents::validate(&config.agents[0])
    }

    #[test]
    fn mcp_servers_are_read() -> Result<()> {
        let text = r#"
            [[agent]]
            name = "researcher"
            model = "builtin:echo"
            mcp = [
                { command = ["npx", "-y", "@modelcontextprotocol/server-filesystem", "/data"] },
                { url = "https://tools.example.com/mcp" },
            ]
        "#;
        let mut config = HeadConfig::default();
        ConfigFile::parse(text, Path::new("fleet.toml"))?.apply(&mut config);
        let mcp = &config.agents[0].mcp;
        assert_eq!(mcp.len(), 2);
        assert_eq!(mcp[0].command[..2], ["npx".to_owned(), "-y".to_owned()]);
        assert_eq!(
            (mcp[0].url.as_str(), mcp[1].url.as_str()),
            ("", "https://tools.example.com/mcp")
        );
        crate::agents::validate(&config.agents[0])
    }

    #[test]
    fn a_malformed_file_names_the_line() {
        let text = "listen = \"127.0.0.1:1\"\n\n[[agent]]\nname = \"a\"\nmodel = 3\n";
        let err = ConfigFile::parse(text, Path::new("fleet.toml")).err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.starts_with("fleet.toml:5:"), "{err}");
    }

    #[test]
    fn the_fsync_policy_is_read_and_a_wrong_one_named() -> Result<()> {
        let mut config = HeadConfig::default();
        ConfigFile::parse("fsync = \"always\"\n", Path::new("f.toml"))?.apply(&mut config);
        assert_eq!(config.fsync, crate::store::Fsync::Always);
        let err = ConfigFile::parse("fsync = \"sometimes\"\n", Path::new("f.toml"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("give periodic or always"), "{err}");
        Ok(())
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err =
            ConfigFile::parse("[[agent]]\nname='a'\nmodel='m'\nmodle='x'\n", Path::new("f.toml"));
        assert!(err.is_err());
    }

    #[test]
    fn client_credentials_need_a_separate_join_token() {
        let with = |token: Option<&str>, api_key: Option<&str>, join: Option<&str>| {
            validate(&HeadConfig {
                token: token.map(Into::into),
                api_key: api_key.map(Into::into),
                join_token: join.map(Into::into),
                ..HeadConfig::default()
            })
            .map_err(|e| e.to_string())
        };
        assert!(with(None, None, None).is_ok(), "an open cluster (loopback development)");
        assert!(with(None, None, Some("j")).is_ok());
        assert!(with(Some("t"), Some("k"), Some("j")).is_ok());
        let missing = with(Some("t"), None, None).err().unwrap_or_default();
        assert!(missing.contains("--join-token"), "{missing}");
        assert!(with(None, Some("k"), None).is_err());
        let same = with(Some("t"), None, Some("t")).err().unwrap_or_default();
        assert!(same.contains("must differ"), "{same}");
        assert!(with(None, Some("k"), Some("k")).is_err());
        assert!(with(Some("t"), None, Some("")).is_err());
    }

    #[test]
    fn the_default_is_loopback_and_the_network_needs_credentials_or_the_flag() {
        assert!(HeadConfig::default().listen.ip().is_loopback());
        let on_network = |token: Option<&str>, join: Option<&str>, insecure: bool| {
            validate(&HeadConfig {
                listen: SocketAddr::from(([0, 0, 0, 0], 7070)),
                token: token.map(Into::into),
                join_token: join.map(Into::into),
                insecure_no_credentials: insecure,
                ..HeadConfig::default()
            })
            .map_err(|e| e.to_string())
        };
        let open = on_network(None, None, false).err().unwrap_or_default();
        assert!(open.contains("--insecure-no-credentials"), "{open}");
        assert!(on_network(None, Some("j"), false).is_err(), "workers' token alone");
        assert!(on_network(Some("t"), Some("j"), false).is_ok());
        assert!(on_network(None, None, true).is_ok());
    }
}
