//! `init()` and the `Fleet` handle: an embedded cluster (a head and local workers inside
//! this process) or a connection to a running one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_client::{AgentSpec, Client, ConnectOptions, McpServer, OutputFormat, Sampling};
use fleet_head::Cluster;
use parking_lot::Mutex;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::agent_host::AgentHost;
use crate::backend::Backend;
use crate::errors;
use crate::options;
use crate::runtime;
use crate::schema::OutputSchema;
use fleet_head::store::StoreConfig;

/// How long `init()` waits for the embedded workers to join.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The same when they preload models first: a large model takes minutes to read.
const PRELOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// The head and workers of an embedded cluster; they stop when the token is cancelled.
struct Embedded {
    shutdown: CancellationToken,
    head: tokio::task::JoinHandle<fleet_head::Result<()>>,
    cluster: Arc<Cluster>,
}

/// A connection to a cluster, and the cluster itself when it is embedded.
// `dict`: `agentfleet.tools` keeps the process's tool host on the handle.
#[pyclass(module = "agentfleet", frozen, dict)]
pub struct Fleet {
    #[pyo3(get)]
    address: String,
    /// The client token this handle presents; other processes (an OpenAI client, a second
    /// `init(address, token=...)`) need it to reach an embedded cluster.
    #[pyo3(get)]
    token: Option<String>,
    client: Backend,
    embedded: Mutex<Option<Embedded>>,
    /// The Python agents of this process, which an embedded cluster's workers host.
    agent_host: Option<Py<AgentHost>>,
}

/// What the embedded workers serve: the models dir, models to load before joining, device;
/// and which MCP servers their agents may use.
struct LocalModels {
    dir: Option<PathBuf>,
    preload: Vec<String>,
    device: String,
    /// The MCP servers the workers' agents may use.
    mcp: fleet_worker::mcp::McpPolicy,
    /// The Python agents this process defines.
    code_agents: Arc<dyn fleet_worker::code_agents::CodeAgents>,
}

/// Starts the head and workers of an embedded cluster. Its address on 127.0.0.1 is open to
/// every local user, so it always requires `token` from clients and a random join token
/// from workers (its own workers connect in-process and need neither).
async fn start_embedded(
    workers: usize,
    models: LocalModels,
    token: String,
    data_dir: Option<PathBuf>,
) -> Result<(String, Embedded), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot listen: {e}"))?;
    // The head's store: the folder given, or none. (A temporary folder, removed with the
    // cluster, would keep nothing a memory-only head loses, and cost a disk sync per task on
    // its round trip: 747 against 306 µs on tmpfs.)
    let config = fleet_head::HeadConfig {
        token: Some(token),
        join_token: Some(fleet_head::auth::random_token()),
        store: data_dir.map_or(StoreConfig::Memory, StoreConfig::Dir),
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let head = fleet_head::spawn(config, listener, shutdown.clone()).map_err(|e| e.to_string())?;
    let url = format!("http://{}", head.address);
    // A worker that cannot start (a model that does not load) reports here, so that init()
    // raises its reason instead of waiting for it to join.
    let (failed_tx, mut failed) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..workers {
        let mut config = fleet_worker::WorkerConfig::new(url.clone());
        config.worker_id = format!("{}-local-{i}", config.worker_id);
        config.models_dir = models.dir.clone();
        config.preload = models.preload.clone();
        config.device = models.device.clone();
        config.mcp = models.mcp.clone();
        config.code_agents = Some(models.code_agents.clone());
        config.local = Some(head.cluster.clone());
        let (shutdown, failed_tx) = (shutdown.clone(), failed_tx.clone());
        tokio::spawn(async move {
            if let Err(e) = fleet_worker::run(config, shutdown).await {
                eprintln!("agentfleet: embedded worker stopped: {e}");
                let _ = failed_tx.send(e.to_string());
            }
        });
    }
    let limit = if models.preload.is_empty() { READY_TIMEOUT } else { PRELOAD_TIMEOUT };
    let started = Instant::now();
    while head.cluster.worker_count() < workers {
        if let Ok(error) = failed.try_recv() {
            shutdown.cancel();
            return Err(format!("an embedded worker could not start: {error}"));
        }
        if started.elapsed() > limit {
            shutdown.cancel();
            return Err(format!("the embedded workers did not join within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Placement prefers workers that report a model loaded, which they do in heartbeats, not
    // when they join: until every worker has reported its preloads, the first tasks would
    // all go to whichever reported first.
    let preloaded = |w: &fleet_head::cluster::WorkerInfo| {
        models.preload.iter().all(|id| w.models_loaded.contains(id))
    };
    while !head.cluster.status().workers.iter().all(preloaded) {
        if started.elapsed() > limit {
            shutdown.cancel();
            return Err(format!(
                "the embedded workers did not report their models within {limit:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok((url, Embedded { shutdown, head: head.task, cluster: head.cluster }))
}

/// This process's trace exporter and its endpoint, once an embedded cluster traces.
static TRACES: Mutex<Option<(String, fleet_telemetry::Exporter)>> = Mutex::new(None);

/// Exports the embedded cluster's traces to `endpoint` (else the OTLP variables, as the
/// binaries read them); one exporter per process, shared by its embedded clusters.
fn tracing_to(endpoint: Option<String>) -> PyResult<()> {
    let mut traces = TRACES.lock();
    match (&*traces, fleet_telemetry::resolve_endpoint(endpoint.as_deref())) {
        (Some((current, _)), Some(wanted)) if *current != wanted => {
            Err(PyValueError::new_err(format!(
                "otlp_endpoint: this process already sends traces to {current}; one endpoint \
                 per process"
            )))
        }
        (Some(_), _) | (None, None) => Ok(()),
        (None, Some(_)) => {
            let instance = format!("python-{}", std::process::id());
            let exporter = fleet_telemetry::init(endpoint.as_deref(), "agentfleet", &instance)
                .map_err(|e| PyValueError::new_err(format!("otlp_endpoint: {e}")))?;
            *traces = exporter.map(|exporter| (exporter.url().to_owned(), exporter));
            Ok(())
        }
    }
}

/// Sends the spans that ended so far, if this process traces.
fn flush_traces() {
    if let Some((_, exporter)) = &*TRACES.lock() {
        exporter.flush();
    }
}

/// The keyword arguments of `agentfleet.init`, which declares, defaults and documents them
/// (`__init__.py`); here they are only read, by name, from the dict it passes.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct InitOptions {
    workers: usize,
    models_dir: Option<PathBuf>,
    preload: Option<Vec<String>>,
    device: Option<String>,
    token: Option<String>,
    tls_ca: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    otlp_endpoint: Option<String>,
    allow_mcp_commands: Option<Vec<String>>,
    allow_mcp_urls: Option<Vec<String>>,
}

/// `agentfleet.init`'s native half: starts an embedded cluster (no `address`) or connects
/// to a running one, with the options `init` was given.
#[pyfunction]
#[pyo3(name = "_init")]
pub fn init(py: Python<'_>, address: Option<String>, options: InitOptions) -> PyResult<Fleet> {
    let InitOptions {
        workers,
        models_dir,
        preload,
        device,
        token,
        tls_ca,
        data_dir,
        otlp_endpoint,
        allow_mcp_commands,
        allow_mcp_urls,
    } = options;
    let (preload, allow_mcp_commands, allow_mcp_urls) = (
        preload.unwrap_or_default(),
        allow_mcp_commands.unwrap_or_default(),
        allow_mcp_urls.unwrap_or_default(),
    );
    let token = token.or_else(|| std::env::var("FLEET_TOKEN").ok()).filter(|t| !t.is_empty());
    if address.is_none() && workers == 0 {
        return Err(PyValueError::new_err("an embedded cluster needs at least one worker"));
    }
    if address.is_some() && (models_dir.is_some() || !preload.is_empty() || device.is_some()) {
        return Err(PyValueError::new_err(
            "models_dir, preload and device are for an embedded cluster: start the workers \
             of a running cluster with --models-dir, --preload and --device instead",
        ));
    }
    if address.is_some() && data_dir.is_some() {
        return Err(PyValueError::new_err(
            "data_dir is for an embedded cluster: start the head of a running cluster with \
             --data-dir instead",
        ));
    }
    if address.is_some() && otlp_endpoint.is_some() {
        return Err(PyValueError::new_err(
            "otlp_endpoint is for an embedded cluster: start the head and workers of a running \
             cluster with --otlp-endpoint instead",
        ));
    }
    if address.is_none() {
        tracing_to(otlp_endpoint)?;
    }
    if address.is_none() && tls_ca.is_some() {
        return Err(PyValueError::new_err(
            "tls_ca is for connecting to a running cluster at an https:// address",
        ));
    }
    if let Some(dir) = &models_dir
        && !dir.is_dir()
    {
        return Err(PyValueError::new_err(format!(
            "models_dir {} is not a directory",
            dir.display()
        )));
    }
    if !preload.is_empty() && models_dir.is_none() {
        return Err(PyValueError::new_err("preload needs models_dir: the folder of the models"));
    }
    if let Some(dir) = &models_dir
        && let Some(missing) = preload.iter().find(|id| !dir.join(id.as_str()).exists())
    {
        return Err(PyValueError::new_err(format!(
            "cannot preload {missing:?}: models_dir {} has no such file or folder",
            dir.display()
        )));
    }
    let device = device.unwrap_or_else(|| "cpu".to_owned());
    fleet_inference::device(&device).map_err(|e| PyValueError::new_err(e.to_string()))?;
    if address.is_some() && !(allow_mcp_commands.is_empty() && allow_mcp_urls.is_empty()) {
        return Err(PyValueError::new_err(
            "allow_mcp_commands and allow_mcp_urls are for an embedded cluster: start the \
             workers of a running cluster with --allow-mcp-command and --allow-mcp-url instead",
        ));
    }
    let mcp =
        fleet_worker::mcp::McpPolicy { commands: allow_mcp_commands, url_prefixes: allow_mcp_urls };
    // The embedded workers host whatever Python agents this process defines.
    let agent_host =
        if address.is_none() { Some(Py::new(py, AgentHost::new(vec!["*".into()]))?) } else { None };
    let code_agents = match &agent_host {
        Some(host) => host.get().code_agents(),
        None => AgentHost::new(Vec::new()).code_agents(),
    };
    let models = LocalModels { dir: models_dir, preload, device, mcp, code_agents };
    // An embedded cluster without a token given gets a random one.
    let token = match (&address, token) {
        (None, None) => Some(fleet_head::auth::random_token()),
        (_, token) => token,
    };
    let fleet = runtime::block_on(py, async move {
        let defaults = ConnectOptions::default();
        let options = ConnectOptions {
            token: token.clone(),
            tls_ca: tls_ca.or(defaults.tls_ca.clone()),
            ..defaults
        };
        let (url, client, embedded) = match address {
            Some(url) => {
                let client = Client::connect_with(&url, options).await.map_err(errors::to_py)?;
                (url, Backend::Remote(client), None)
            }
            None => {
                // The embedded head also listens on 127.0.0.1 for other processes; this
                // process's workers and calls reach it directly.
                let token = options.token.clone().unwrap_or_default();
                let (url, embedded) = start_embedded(workers, models, token, data_dir)
                    .await
                    .map_err(errors::unavailable)?;
                (url, Backend::Local(embedded.cluster.clone()), Some(embedded))
            }
        };
        // Fail now, not on the first submit, when the token is wrong or the head is not one.
        client.status().await.map_err(errors::to_py)?;
        Ok(Fleet { address: url, token, client, embedded: Mutex::new(embedded), agent_host })
    })?;
    Ok(fleet)
}

fn status_dict<'py>(
    py: Python<'py>,
    s: fleet_client::ClusterStatus,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let workers = PyList::empty(py);
    for w in s.workers {
        let wd = PyDict::new(py);
        wd.set_item("id", w.worker_id)?;
        wd.set_item("hostname", w.hostname)?;
        wd.set_item("address", w.address)?;
        let r = w.resources.unwrap_or_default();
        wd.set_item("resources", resources_dict(py, &r)?)?;
        wd.set_item("free", resources_dict(py, &w.free.unwrap_or_default())?)?;
        wd.set_item("labels", w.labels.into_iter().collect::<BTreeMap<_, _>>())?;
        wd.set_item("models", w.models)?;
        wd.set_item("models_loaded", w.models_loaded)?;
        wd.set_item("slots", w.slots)?;
        wd.set_item("running_tasks", w.running_tasks)?;
        wd.set_item("tasks_assigned", w.tasks_assigned)?;
        wd.set_item("last_heartbeat_ms_ago", w.last_heartbeat_ms_ago)?;
        // Stopping: it finishes its tasks and takes no new ones.
        wd.set_item("draining", w.draining)?;
        let gpus = PyList::empty(py);
        for g in w.gpus {
            let gd = PyDict::new(py);
            gd.set_item("index", g.index)?;
            gd.set_item("name", g.name)?;
            gd.set_item("memory_bytes", g.memory_bytes)?;
            gpus.append(gd)?;
        }
        wd.set_item("gpus", gpus)?;
        // What each loaded model's engine is doing, its prefix cache included.
        let engines = PyList::empty(py);
        for m in w.loaded {
            let md = PyDict::new(py);
            md.set_item("id", m.id)?;
            md.set_item("kv_bytes", m.kv_bytes)?;
            md.set_item("kv_capacity_bytes", m.kv_capacity_bytes)?;
            md.set_item("active_sequences", m.active_sequences)?;
            md.set_item("waiting_sequences", m.waiting_sequences)?;
            md.set_item("tokens_per_s", m.tokens_per_s)?;
            md.set_item("generated_tokens", m.generated_tokens)?;
            md.set_item("prompt_tokens", m.prompt_tokens)?;
            md.set_item("cached_tokens", m.cached_tokens)?;
            md.set_item("prefix_hits", m.prefix_hits)?;
            md.set_item("prefix_misses", m.prefix_misses)?;
            md.set_item("prefix_cache_bytes", m.prefix_cache_bytes)?;
            engines.append(md)?;
        }
        wd.set_item("engines", engines)?;
        workers.append(wd)?;
    }
    d.set_item("workers", workers)?;
    d.set_item("agents", s.agents)?;
    d.set_item("queued_tasks", s.queued_tasks)?;
    d.set_item("running_tasks", s.running_tasks)?;
    d.set_item("retained_tasks", s.retained_tasks)?;
    d.set_item("tasks_completed", s.tasks_completed)?;
    d.set_item("tasks_failed", s.tasks_failed)?;
    d.set_item("tasks_canceled", s.tasks_canceled)?;
    Ok(d)
}

/// One MCP server of `agent(mcp=[...])`: `{"command": ["program", ...]}` or `{"url": "..."}`.
fn mcp_server(entry: &Bound<'_, PyDict>) -> PyResult<McpServer> {
    let mut server = McpServer::default();
    for (key, value) in entry.iter() {
        match key.extract::<String>()?.as_str() {
            "command" => server.command = value.extract()?,
            "url" => server.url = value.extract()?,
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown MCP server key {other:?}: give {{\"command\": [...]}} or {{\"url\": ...}}"
                )));
            }
        }
    }
    Ok(server)
}

fn resources_dict<'py>(
    py: Python<'py>,
    r: &fleet_client::pb::Resources,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("cpus", r.cpus)?;
    d.set_item("memory_bytes", r.memory_bytes)?;
    d.set_item("gpus", r.gpus)?;
    Ok(d)
}

/// Tools given by name or as themselves (functions and `af.tool`s, by their names).
/// An agent's name: given as a string, or the object `@af.agent` marked.
fn agent_name(agent: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(name) = agent.extract::<String>() {
        return Ok(name);
    }
    match agent.getattr("__agentfleet_agent__") {
        Ok(code) => code.getattr("name")?.extract(),
        Err(_) => Err(PyValueError::new_err(
            "agent: give its name or the class or function @af.agent made an agent",
        )),
    }
}

fn tool_names(tools: &[Bound<'_, PyAny>]) -> PyResult<Vec<String>> {
    tools
        .iter()
        .map(|t| match t.extract::<String>() {
            Ok(name) => Ok(name),
            Err(_) => match t.getattr("name") {
                Ok(name) => name.extract(),
                Err(_) => t.getattr("__name__")?.extract(),
            },
        })
        .collect()
}

#[pymethods]
impl Fleet {
    /// Registers (or updates) agent `name` on model `model`; `fleet.get_agent(name)` looks
    /// one up. `name` may instead be a Python agent (`@af.agent`): registered under its
    /// name, its model `python:NAME`. `sampling` (`af.Sampling`) and `resources`
    /// (`af.Resources`) group the model's and the scheduler's settings.
    #[pyo3(signature = (
        name, model=None, *, instructions=String::new(), tools=None, description=String::new(),
        sampling=None, resources=None, max_retries=None, max_concurrency=0, labels=None,
        model_options=None, topics=Vec::new(), output_schema=None, mcp=Vec::new(),
        tool_choice=String::new(), requires_approval=Vec::new(), ask_user=false,
        input_timeout=None, call_once=Vec::new(), **renamed
    ))]
    #[allow(clippy::too_many_arguments)]
    fn agent(
        slf: &Bound<'_, Self>,
        py: Python<'_>,
        name: Bound<'_, PyAny>,
        model: Option<String>,
        instructions: String,
        tools: Option<Bound<'_, PyAny>>,
        description: String,
        sampling: Option<Bound<'_, PyAny>>,
        resources: Option<Bound<'_, PyAny>>,
        max_retries: Option<u32>,
        max_concurrency: u32,
        labels: Option<BTreeMap<String, String>>,
        model_options: Option<BTreeMap<String, String>>,
        topics: Vec<String>,
        output_schema: Option<Bound<'_, PyAny>>,
        mcp: Vec<Bound<'_, PyDict>>,
        tool_choice: String,
        requires_approval: Vec<Bound<'_, PyAny>>,
        ask_user: bool,
        input_timeout: Option<f64>,
        call_once: Vec<Bound<'_, PyAny>>,
        renamed: Option<Bound<'_, PyDict>>,
    ) -> PyResult<Agent> {
        options::refuse_renamed("fleet.agent", options::RENAMED_AGENT_KEYWORDS, renamed.as_ref())?;
        let this = slf.get();
        let (name, model, description, actor_state) = match name.extract::<String>() {
            Ok(name) => {
                let Some(model) = model else {
                    return Err(PyTypeError::new_err(format!(
                        "fleet.agent({name:?}) registers an agent and needs its model \
                         (fleet.agent({name:?}, \"MODEL\")); to look up an agent already \
                         registered, use fleet.get_agent({name:?})"
                    )));
                };
                (name, model, description, fleet_client::ActorState::None)
            }
            Err(_) => {
                if model.is_some() {
                    return Err(PyValueError::new_err(
                        "a Python agent has no model: its code chats with models through its \
                         context (ctx.chat(model=...))",
                    ));
                }
                let (program, summary, state): (String, String, String) = py
                    .import("agentfleet.agents")?
                    .call_method1("_definition", (name,))?
                    .extract()?;
                let description = if description.is_empty() { summary } else { description };
                let model = format!("{}{program}", fleet_client::PYTHON_PREFIX);
                let actor_state = match state.as_str() {
                    "agent" => fleet_client::ActorState::PerAgent,
                    "context" => fleet_client::ActorState::PerContext,
                    _ => fleet_client::ActorState::None,
                };
                (program, model, description, actor_state)
            }
        };
        let sampling = options::sampling(sampling.as_ref())?;
        let resources = options::resources(resources.as_ref())?;
        // Agents' names stay; functions (and `af.tool`s) are hosted by this process first.
        let tools: Vec<String> = match tools {
            None => Vec::new(),
            Some(tools) => {
                let hosting = py.import("agentfleet.tools")?;
                let mut names = Vec::new();
                for tool in tools.try_iter()? {
                    let tool = tool?;
                    names.push(match tool.extract::<String>() {
                        Ok(name) => name,
                        Err(_) => hosting.call_method1("_hosted_name", (slf, tool))?.extract()?,
                    });
                }
                names
            }
        };
        let mcp = mcp.iter().map(mcp_server).collect::<PyResult<Vec<_>>>()?;
        let requires_approval = tool_names(&requires_approval)?;
        let call_once = tool_names(&call_once)?;
        let input_timeout_ms = match input_timeout {
            None => 0,
            Some(s) if s > 0.0 && s <= 86_400.0 => (s * 1000.0).ceil() as u32,
            Some(s) => {
                return Err(errors::kind(
                    fleet_client::ErrorKind::InvalidRequest,
                    format!(
                        "input_timeout is in seconds, more than 0 and at most 86400 (a day): got {s}"
                    ),
                ));
            }
        };
        let schema = output_schema.map(|s| OutputSchema::from_py(&s)).transpose()?.map(Arc::new);
        let format = schema.as_ref().map(|s| OutputFormat::JsonSchema(s.text.clone()));
        let client = this.client.clone();
        let spec = AgentSpec {
            name: name.clone(),
            model,
            instructions,
            description,
            tools,
            sampling: Sampling { format, ..sampling },
            resources,
            max_retries: max_retries.unwrap_or(fleet_client::DEFAULT_MAX_RETRIES),
            labels: labels.unwrap_or_default(),
            model_options: model_options.unwrap_or_default(),
            max_concurrency,
            topics,
            mcp,
            tool_choice,
            requires_approval,
            ask_user,
            input_timeout_ms,
            // The head sets a user's agents to its tenant; an admin's are shared.
            tenant: String::new(),
            public: false,
            call_once,
            actor_state,
        };
        runtime::block_on(
            py,
            async move { client.register_agent(spec).await.map_err(errors::to_py) },
        )?;
        Ok(Agent::new(name, this.client.clone(), schema, false))
    }

    /// The agent registered as `name` (`UnknownAgentError` if there is none). `output_schema`
    /// parses its answers (its tasks carry it: the registered agent may not have it).
    #[pyo3(signature = (name, *, output_schema=None))]
    fn get_agent(
        &self,
        py: Python<'_>,
        name: String,
        output_schema: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Agent> {
        let schema = output_schema.map(|s| OutputSchema::from_py(&s)).transpose()?.map(Arc::new);
        let (client, lookup) = (self.client.clone(), name.clone());
        runtime::block_on(py, async move {
            if client.has_agent(&lookup).await.map_err(errors::to_py)? {
                Ok(())
            } else {
                Err(errors::kind(
                    fleet_client::ErrorKind::UnknownAgent,
                    format!("unknown agent {lookup:?}: register it with fleet.agent(name, model)"),
                ))
            }
        })?;
        Ok(Agent::new(name, self.client.clone(), schema, true))
    }

    /// Hosts a Python function as a tool of this cluster's agents, in this process: as a
    /// decorator (`@fleet.tool`, `@fleet.tool(timeout=5)`) or a call (`fleet.tool(fn)`).
    /// See `agentfleet.tool` for how the function becomes a tool.
    #[pyo3(signature = (
        func=None, *, name=None, description=None, timeout=None, requires_approval=false,
        idempotent=true
    ))]
    #[allow(clippy::too_many_arguments)]
    fn tool<'py>(
        slf: &Bound<'py, Self>,
        py: Python<'py>,
        func: Option<Bound<'py, PyAny>>,
        name: Option<String>,
        description: Option<String>,
        timeout: Option<f64>,
        requires_approval: bool,
        idempotent: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kwargs = PyDict::new(py);
        kwargs.set_item("name", name)?;
        kwargs.set_item("description", description)?;
        kwargs.set_item("timeout", timeout)?;
        kwargs.set_item("requires_approval", requires_approval)?;
        kwargs.set_item("idempotent", idempotent)?;
        py.import("agentfleet.tools")?.call_method("_fleet_tool", (slf, func), Some(&kwargs))
    }

    /// The native host of the Python agents an embedded cluster's workers run (`None` for a
    /// connection: Python workers host them there).
    fn _agent_host(&self, py: Python<'_>) -> Option<Py<AgentHost>> {
        self.agent_host.as_ref().map(|h| h.clone_ref(py))
    }

    /// The native tool host of this process on this cluster (`agentfleet.tools` opens it
    /// once per handle).
    fn _open_tool_host(&self) -> PyResult<crate::tool_host::ToolHost> {
        crate::tool_host::ToolHost::open(&self.client)
    }

    /// Workers, resources, models and load, as plain Python objects.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let client = self.client.clone();
        let status =
            runtime::block_on(py, async move { client.status().await.map_err(errors::to_py) })?;
        status_dict(py, status)
    }

    /// The conversations the cluster keeps in context `context_id`: each agent's turns
    /// (user inputs, answers, tool calls and results), oldest first, as plain Python
    /// objects; with `agent`, that agent's only. Any worker continues them.
    #[pyo3(signature = (context_id, agent=None))]
    fn context<'py>(
        &self,
        py: Python<'py>,
        context_id: String,
        agent: Option<String>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let client = self.client.clone();
        let conversations = runtime::block_on(py, async move {
            let agents = match agent {
                Some(agent) => vec![agent],
                None => client
                    .list_conversations(&context_id, "", 1000)
                    .await
                    .map_err(errors::to_py)?
                    .conversations
                    .into_iter()
                    .map(|c| c.agent)
                    .collect(),
            };
            let mut conversations = Vec::with_capacity(agents.len());
            for agent in agents {
                let c =
                    client.get_conversation(&context_id, &agent).await.map_err(errors::to_py)?;
                conversations.push(c);
            }
            Ok::<_, PyErr>(conversations)
        })?;
        let d = PyDict::new(py);
        for c in conversations {
            let turns = PyList::empty(py);
            for t in c.turns {
                let td = PyDict::new(py);
                td.set_item("role", t.role)?;
                td.set_item("content", t.content)?;
                if !t.tool_calls.is_empty() {
                    let calls = PyList::empty(py);
                    for call in t.tool_calls {
                        let cd = PyDict::new(py);
                        cd.set_item("id", call.call_id)?;
                        cd.set_item("name", call.name)?;
                        cd.set_item("arguments", call.arguments)?;
                        calls.append(cd)?;
                    }
                    td.set_item("tool_calls", calls)?;
                }
                if !t.tool_call_id.is_empty() {
                    td.set_item("tool_call_id", t.tool_call_id)?;
                }
                turns.append(td)?;
            }
            d.set_item(c.agent, turns)?;
        }
        Ok(d)
    }

    /// The conversations the cluster keeps (in `context_id`, with `agent`, when given), the
    /// most recently continued first: dicts of `context_id`, `agent`, `turns`, `bytes` and
    /// `updated_at` (seconds since the epoch).
    #[pyo3(signature = (context_id=None, agent=None, limit=100))]
    fn contexts<'py>(
        &self,
        py: Python<'py>,
        context_id: Option<String>,
        agent: Option<String>,
        limit: u32,
    ) -> PyResult<Bound<'py, PyList>> {
        let client = self.client.clone();
        let (context_id, agent) = (context_id.unwrap_or_default(), agent.unwrap_or_default());
        let listed = runtime::block_on(py, async move {
            client.list_conversations(&context_id, &agent, limit).await.map_err(errors::to_py)
        })?;
        let out = PyList::empty(py);
        for c in listed.conversations {
            let d = PyDict::new(py);
            d.set_item("context_id", c.context_id)?;
            d.set_item("agent", c.agent)?;
            d.set_item("turns", c.turns)?;
            d.set_item("bytes", c.bytes)?;
            d.set_item("updated_at", c.updated_at_us as f64 / 1e6)?;
            out.append(d)?;
        }
        Ok(out)
    }

    /// Forgets the conversations of `context_id` (with `agent` only, when given): its next
    /// task starts anew. Returns how many there were; deleting again returns 0.
    #[pyo3(signature = (context_id, agent=None))]
    fn delete_context(
        &self,
        py: Python<'_>,
        context_id: String,
        agent: Option<String>,
    ) -> PyResult<u32> {
        let client = self.client.clone();
        let agent = agent.unwrap_or_default();
        runtime::block_on(py, async move {
            client.delete_conversation(&context_id, &agent).await.map_err(errors::to_py)
        })
    }

    /// The state `agent`'s actor keeps (`@af.agent(state=True)`; in conversation
    /// `context_id` with `per_context=True`), as stored by the head: a dict. `UnknownTaskError`
    /// before its first save (the head files it so). `agent` is a name or the decorated class or function.
    #[pyo3(signature = (agent, context_id=None))]
    fn actor_state<'py>(
        &self,
        py: Python<'py>,
        agent: &Bound<'py, PyAny>,
        context_id: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let agent = agent_name(agent)?;
        let client = self.client.clone();
        let context_id = context_id.unwrap_or_default();
        let info = runtime::block_on(py, async move {
            client.actor_state(&agent, &context_id).await.map_err(errors::to_py)
        })?;
        let json = py.import("json")?;
        json.call_method1("loads", (info.state,))
    }

    /// The actor states the head keeps (of `agent`, in `context_id`, when given), the most
    /// recently saved first: dicts of `agent`, `context_id`, `version`, `bytes`,
    /// `updated_at` (seconds since the epoch) and `last_task`.
    #[pyo3(signature = (agent=None, context_id=None, limit=100))]
    fn actor_states<'py>(
        &self,
        py: Python<'py>,
        agent: Option<&Bound<'py, PyAny>>,
        context_id: Option<String>,
        limit: u32,
    ) -> PyResult<Bound<'py, PyList>> {
        let agent = agent.map(agent_name).transpose()?.unwrap_or_default();
        let client = self.client.clone();
        let context_id = context_id.unwrap_or_default();
        let listed = runtime::block_on(py, async move {
            client.list_actor_states(&agent, &context_id, limit).await.map_err(errors::to_py)
        })?;
        let out = PyList::empty(py);
        for a in listed {
            let d = PyDict::new(py);
            d.set_item("agent", a.agent)?;
            d.set_item("context_id", a.context_id)?;
            d.set_item("version", a.version)?;
            d.set_item("bytes", a.bytes)?;
            d.set_item("updated_at", a.updated_at_us as f64 / 1e6)?;
            d.set_item("last_task", a.last_task)?;
            out.append(d)?;
        }
        Ok(out)
    }

    /// Publishes `message` on `topic` as `publisher` (default "client"); returns its offset
    /// in the topic's log once the head has stored it. A list of messages is published in
    /// order in one write (at most 10,000) and returns their offsets.
    #[pyo3(signature = (topic, message, *, publisher=None))]
    fn publish<'py>(
        &self,
        py: Python<'py>,
        topic: String,
        message: &Bound<'py, PyAny>,
        publisher: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (bodies, many) = match message.extract::<String>() {
            Ok(one) => (vec![one], false),
            Err(_) => match message.extract::<Vec<String>>() {
                Ok(list) if !list.is_empty() => (list, true),
                _ => {
                    return Err(PyValueError::new_err(
                        "message must be a str or a non-empty list of str",
                    ));
                }
            },
        };
        let count = bodies.len() as u64;
        let client = self.client.clone();
        let publisher = publisher.unwrap_or_default();
        let first = runtime::block_on(py, async move {
            client.publish(&topic, &publisher, bodies).await.map_err(errors::to_py)
        })?;
        if many {
            Ok(PyList::new(py, first..first + count)?.into_any())
        } else {
            Ok(first.into_pyobject(py)?.into_any())
        }
    }

    /// Follows `topic`'s log: from `from_offset` (an offset retention let go reads from
    /// the oldest kept), else from the next message published. With `group`, this follower
    /// is a member of that consumer group: the group's members share the messages (each to
    /// one of them) and acknowledge them (`message.ack()`); a message not acknowledged when
    /// its member leaves goes to another, and a group resumes where it stands (a new group
    /// starts at `from_offset`, else at the oldest message kept).
    #[pyo3(signature = (topic, *, from_offset=None, group=None))]
    fn follow(
        &self,
        py: Python<'_>,
        topic: String,
        from_offset: Option<u64>,
        group: Option<String>,
    ) -> PyResult<crate::topic::TopicFollower> {
        crate::topic::TopicFollower::open(py, self.client.clone(), topic, from_offset, group)
    }

    /// Whether this handle runs the cluster itself (started by `init()` without an address).
    #[getter]
    fn embedded(&self) -> bool {
        self.embedded.lock().is_some()
    }

    /// Stops hosting tools, and stops the embedded cluster (the rest is a no-op for a
    /// connection to a running cluster).
    fn shutdown(slf: &Bound<'_, Self>, py: Python<'_>) -> PyResult<()> {
        py.import("agentfleet.tools")?.call_method1("_close", (slf,))?;
        py.import("agentfleet.agents")?.call_method1("_close", (slf,))?;
        let Some(embedded) = slf.get().embedded.lock().take() else { return Ok(()) };
        embedded.shutdown.cancel();
        runtime::block_on(py, async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), embedded.head).await;
            Ok(())
        })?;
        py.detach(flush_traces);
        Ok(())
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(
        slf: &Bound<'_, Self>,
        py: Python<'_>,
        _args: &Bound<'_, pyo3::types::PyTuple>,
    ) -> PyResult<bool> {
        Self::shutdown(slf, py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let kind = if self.embedded() { "embedded" } else { "connected" };
        format!("Fleet(address={:?}, {kind})", self.address)
    }
}
