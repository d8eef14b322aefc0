//! Worker settings.

use std::collections::BTreeMap;
use std::path::PathBuf;

use fleet_proto::Resources;

/// Everything a worker needs to join a head.
#[derive(Clone)]
pub struct WorkerConfig {
    /// The head's URL, e.g. `http://10.0.0.1:7070`, or several separated by commas (a
    /// leader and its standbys: the worker joins whichever leads).
    pub head: String,
    /// The head's join token (its `--join-token`), if it requires one.
    pub join_token: Option<String>,
    /// For an `https://` head: trust only the CA certificates in this PEM file instead of
    /// the system's roots.
    pub tls_ca: Option<PathBuf>,
    /// A stable id; kept across reconnects.
    pub worker_id: String,
    pub resources: Resources,
    /// The GPUs it reports to the head (detected at start by `fleet-worker`).
    pub gpus: Vec<fleet_proto::Gpu>,
    pub labels: BTreeMap<String, String>,
    /// Most tasks run at once.
    pub slots: u32,
    pub models_dir: Option<PathBuf>,
    /// Models (ids under `models_dir`) to load before joining (and keep loaded).
    pub preload: Vec<String>,
    /// How long a loaded model that no agent uses stays loaded (`--model-keep-alive`).
    pub model_keep_alive: std::time::Duration,
    /// Where local models run: `cpu`, `cuda[:N]` or `metal[:N]`.
    pub device: String,
    /// Multiaddrs the worker's mesh listens on (agents on other workers call its agents
    /// there); empty = no mesh: agent calls go through the head.
    pub mesh_listen: Vec<String>,
    /// Connections the mesh keeps at most (overlay links and those its calls use); unused
    /// ones past it close (`--mesh-max-peers`).
    pub mesh_max_peers: usize,
    /// Hosts (besides `OPENAI_BASE_URL`'s) to which this worker may send its own
    /// `OPENAI_API_KEY` when an agent's `base_url` points there (`--key-host`).
    pub key_hosts: Vec<String>,
    /// Whether an agent's remote model (`base_url`) may be at a loopback, private or
    /// link-local address (`--allow-private-model-urls`); the operator's own endpoints may.
    pub allow_private_model_urls: bool,
    /// Which MCP servers agents may use here (`--allow-mcp-command`, `--allow-mcp-url`).
    pub mcp: crate::mcp::McpPolicy,
    /// Join a head in this process directly instead of over gRPC (`head` is then only a
    /// label).
    pub local: Option<std::sync::Arc<dyn fleet_proto::local::LocalHead>>,
    /// Task events buffered on the way to the head before task runners wait.
    pub event_buffer: usize,
    /// How long a stopping worker (SIGTERM) waits for its tasks to end before it cancels
    /// the rest, which the head then retries elsewhere (`--drain-timeout`).
    pub drain_timeout: std::time::Duration,
    /// The code agents (Python agents) this process hosts: told to the head at each join.
    pub code_agents: Option<std::sync::Arc<dyn crate::code_agents::CodeAgents>>,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("head", &self.head)
            .field("tls_ca", &self.tls_ca)
            .field("worker_id", &self.worker_id)
            .field("resources", &self.resources)
            .field("gpus", &self.gpus)
            .field("labels", &self.labels)
            .field("slots", &self.slots)
            .field("models_dir", &self.models_dir)
            .field("preload", &self.preload)
            .field("model_keep_alive", &self.model_keep_alive)
            .field("device", &self.device)
            .field("mesh_listen", &self.mesh_listen)
            .field("mesh_max_peers", &self.mesh_max_peers)
            .field("key_hosts", &self.key_hosts)
            .field("allow_private_model_urls", &self.allow_private_model_urls)
            .field("drain_timeout", &self.drain_timeout)
            .field("mcp", &self.mcp)
            .field("in_process", &self.local.is_some())
            .field("event_buffer", &self.event_buffer)
            .field("code_agents", &self.code_agents.as_ref().map(|c| c.names()))
            .finish_non_exhaustive()
    }
}

impl WorkerConfig {
    /// The head URLs, in the order they are tried.
    pub fn heads(&self) -> impl Iterator<Item = &str> {
        self.head.split(',').map(str::trim).filter(|u| !u.is_empty())
    }

    /// A worker with this machine's resources and a fresh id.
    pub fn new(head: impl Into<String>) -> Self {
        Self {
            head: head.into(),
            join_token: None,
            tls_ca: None,
            worker_id: default_worker_id(),
            resources: crate::resources::detect(),
            gpus: Vec::new(),
            labels: BTreeMap::new(),
            slots: 256,
            models_dir: None,
            preload: Vec::new(),
            model_keep_alive: crate::models::DEFAULT_KEEP_ALIVE,
            device: "cpu".into(),
            mesh_listen: Vec::new(),
            mesh_max_peers: 64,
            key_hosts: Vec::new(),
            allow_private_model_urls: false,
            mcp: crate::mcp::McpPolicy::default(),
            local: None,
            event_buffer: 65_536,
            drain_timeout: std::time::Duration::from_secs(25),
            code_agents: None,
        }
    }
}

/// `<hostname>-<6 hex digits>`: readable and unique among workers of one host.
pub fn default_worker_id() -> String {
    let host = crate::resources::hostname();
    let suffix = uuid_suffix();
    format!("{host}-{suffix}")
}

fn uuid_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{:06x}", h.finish() & 0xff_ffff)
}
