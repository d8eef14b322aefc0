//! The `fleet-worker` command line, shared by the binary and `python -m agentfleet worker`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::{Error, WorkerConfig};

/// A worker node of an agentfleet cluster.
#[derive(Debug, Parser)]
#[command(name = "fleet-worker", version)]
pub struct Args {
    /// Async runtime threads; 0 = one on machines with 2 cpus or fewer, else one per cpu.
    /// Model forward passes run on their own threads either way.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// The head's URL, e.g. http://10.0.0.1:7070 (https:// for a head with --tls-cert), or
    /// several separated by commas (a leader and its standbys on a shared PostgreSQL store:
    /// the worker joins whichever leads and moves on when it goes).
    #[arg(long, env = "FLEET_HEAD", value_name = "URL[,URL...]")]
    head: String,
    /// For an https:// head: trust only the CA certificates in this PEM file instead of the
    /// system's roots.
    #[arg(long, value_name = "FILE", env = "FLEET_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// The head's join token (its --join-token), if it requires one. A client token
    /// (--token) does not let a worker join.
    #[arg(long, env = "FLEET_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// A stable worker id [default: <hostname>-<random>].
    #[arg(long, env = "FLEET_WORKER_NAME")]
    name: Option<String>,
    /// Cpus to offer [default: all of this machine's].
    #[arg(long, env = "FLEET_CPUS")]
    cpus: Option<f64>,
    /// Memory to offer in MiB [default: all of this machine's].
    #[arg(long, env = "FLEET_MEMORY_MB")]
    memory_mb: Option<u64>,
    /// GPUs to offer [default: the NVIDIA GPUs this machine has, found through NVML].
    #[arg(long, env = "FLEET_GPUS")]
    gpus: Option<u32>,
    /// A label KEY=VALUE that agents can require (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Most tasks run at once.
    #[arg(long, default_value_t = 256)]
    slots: u32,
    /// A folder of models (GGUF files, Hugging Face folders) to offer.
    #[arg(long, value_name = "DIR", env = "FLEET_MODELS_DIR")]
    models_dir: Option<PathBuf>,
    /// Load this model (a file or folder name under --models-dir) before joining, instead
    /// of on first use (repeatable).
    #[arg(long = "preload", value_name = "NAME")]
    preload: Vec<String>,
    /// Seconds a loaded model stays loaded once no agent on this worker uses it (its
    /// weights, KV memory and engine thread are freed after; preloaded models stay).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    model_keep_alive: u64,
    /// Seconds a stopping worker (SIGTERM, Ctrl-C) waits for its running tasks to end
    /// before it cancels the rest, which the head retries elsewhere; it takes no new tasks
    /// meanwhile. Keep it under the stop timeout of what runs it (Kubernetes'
    /// terminationGracePeriodSeconds, systemd's TimeoutStopSec). 0 stops at once.
    #[arg(long, value_name = "SECS", env = "FLEET_DRAIN_TIMEOUT", default_value_t = 25)]
    drain_timeout: u64,
    /// Where local models run: cpu, cuda[:N] or metal[:N] (GPUs need a build with the
    /// cuda or metal feature) [default: cuda:0 in a CUDA build on a machine with a GPU,
    /// else cpu].
    #[arg(long, env = "FLEET_DEVICE")]
    device: Option<String>,
    /// Where this worker's mesh listens, as a multiaddr (repeatable, or comma-separated in
    /// the variable); agents on other workers call its agents there directly.
    #[arg(
        long = "mesh-listen",
        value_name = "MULTIADDR",
        env = "FLEET_MESH_LISTEN",
        value_delimiter = ',',
        default_value = "/ip4/0.0.0.0/tcp/0"
    )]
    mesh_listen: Vec<String>,
    /// No mesh (it wins over --mesh-listen): agents call agents through the head.
    #[arg(long)]
    no_mesh: bool,
    /// Connections this worker's mesh keeps at most: its overlay links to a few other
    /// workers (about 2·ln of the workers, for topics) and those its agents' calls use,
    /// made when a call needs one. Past it, the least recently used idle ones close; it
    /// never holds more than twice it. At least 4.
    #[arg(long, value_name = "N", env = "FLEET_MESH_MAX_PEERS", default_value_t = 64)]
    mesh_max_peers: usize,
    /// A host to which this worker may send its own OPENAI_API_KEY when an agent's
    /// base_url points there (repeatable, or comma-separated in the variable). Without it
    /// the key goes only to OPENAI_BASE_URL (or OpenAI); agents pointing elsewhere must
    /// bring their own api_key.
    #[arg(long = "key-host", value_name = "HOST", env = "FLEET_KEY_HOSTS", value_delimiter = ',')]
    key_hosts: Vec<String>,
    /// Let agents' remote models (`openai:` with a `base_url`) call loopback, private and
    /// link-local addresses (a llama.cpp or vLLM server on this machine or network). Off by
    /// default: anyone who can register an agent picks its base_url. The worker's own
    /// OPENAI_BASE_URL and --key-host hosts are allowed either way.
    #[arg(long, env = "FLEET_ALLOW_PRIVATE_MODEL_URLS")]
    allow_private_model_urls: bool,
    /// A program this worker may run as an agent's MCP server (stdio), as the agent's command
    /// names it, e.g. `/opt/mcp/filesystem-server` (repeatable, or comma-separated in the
    /// variable; `*`: any program). Anyone who can register an agent picks the command and
    /// its arguments: allow servers' own programs, not interpreters such as python3 or npx.
    #[arg(
        long = "allow-mcp-command",
        value_name = "PROGRAM",
        env = "FLEET_MCP_COMMANDS",
        value_delimiter = ','
    )]
    allow_mcp_commands: Vec<String>,
    /// A URL prefix of MCP servers (streamable HTTP) this worker's agents may reach, e.g.
    /// `https://tools.example.com/` (repeatable, or comma-separated in the variable). None
    /// unless allowed here.
    #[arg(
        long = "allow-mcp-url",
        value_name = "PREFIX",
        env = "FLEET_MCP_URLS",
        value_delimiter = ','
    )]
    allow_mcp_urls: Vec<String>,
    /// Export OpenTelemetry traces (this worker's spans of each task: the agent's run, its
    /// model calls and tool calls) to this OTLP/HTTP collector, e.g. http://127.0.0.1:4318.
    /// Off by default.
    /// Without it: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("label {s:?} must look like KEY=VALUE")),
    }
}

pub fn config(args: Args) -> Result<WorkerConfig, Error> {
    let mut config = WorkerConfig::new(args.head);
    config.join_token = args.join_token.filter(|t| !t.is_empty());
    config.tls_ca = args.tls_ca.filter(|p| !p.as_os_str().is_empty());
    if let Some(name) = args.name {
        config.worker_id = name;
    }
    if let Some(cpus) = args.cpus {
        if !(cpus.is_finite() && cpus >= 0.0) {
            return Err(Error::InvalidConfig(format!(
                "--cpus must be a non-negative number, got {cpus}"
            )));
        }
        config.resources.cpus = cpus;
    }
    if let Some(mb) = args.memory_mb {
        config.resources.memory_bytes = mb.saturating_mul(1 << 20);
    }
    let detected = fleet_inference::gpu::detect();
    match &detected {
        fleet_inference::gpu::Detected::Gpus(gpus) => {
            for gpu in gpus {
                tracing::info!("GPU {gpu}");
            }
        }
        // A CUDA build without a GPU is usually a container started without the GPU
        // (podman's --device nvidia.com/gpu=all, Kubernetes' nvidia.com/gpu limit): say so.
        fleet_inference::gpu::Detected::None(why) if fleet_inference::gpu::CUDA_BUILD => {
            tracing::warn!(
                "this worker is built for CUDA GPUs but found none ({why}); its models run on the CPU"
            )
        }
        fleet_inference::gpu::Detected::None(why) => tracing::debug!("no GPUs: {why}"),
    }
    config.resources.gpus = args.gpus.unwrap_or(detected.gpus().len() as u32);
    config.gpus = detected
        .gpus()
        .iter()
        .map(|g| fleet_proto::Gpu {
            index: g.index,
            name: g.name.clone(),
            memory_bytes: g.memory_total,
        })
        .collect();
    config.labels = args.labels.into_iter().collect::<BTreeMap<_, _>>();
    if args.slots == 0 {
        return Err(Error::InvalidConfig("--slots must be at least 1".into()));
    }
    config.slots = args.slots;
    if !args.preload.is_empty() && args.models_dir.is_none() {
        return Err(Error::InvalidConfig("--preload needs --models-dir".into()));
    }
    config.models_dir = args.models_dir;
    config.preload = args.preload;
    config.model_keep_alive = std::time::Duration::from_secs(args.model_keep_alive);
    config.drain_timeout = std::time::Duration::from_secs(args.drain_timeout);
    config.device = match args.device {
        Some(device) => device,
        None => fleet_inference::gpu::default_device(&detected).to_owned(),
    };
    if config.device.starts_with("cuda") {
        // Said now, with the reason, rather than at the first model load.
        fleet_inference::device(&config.device).map_err(|e| {
            Error::InvalidConfig(match e {
                fleet_inference::Error::InvalidRequest(why) => format!("--device: {why}"),
                other => format!("--device: {other}"),
            })
        })?;
    }
    config.mesh_listen = if args.no_mesh { Vec::new() } else { args.mesh_listen };
    config.mesh_max_peers = args.mesh_max_peers;
    config.key_hosts = args.key_hosts;
    config.allow_private_model_urls = args.allow_private_model_urls;
    config.mcp = crate::mcp::McpPolicy {
        commands: args.allow_mcp_commands,
        url_prefixes: args.allow_mcp_urls,
    };
    config.mcp.check().map_err(Error::InvalidConfig)?;
    Ok(config)
}

/// Runs `fleet-worker` with `args` (the first is the program name); returns the exit code:
/// 0 after a clean shutdown (Ctrl-C), 2 when the settings or the head's answer rule out
/// retrying (bad flags, a rejected token).
pub fn main<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    main_with(args, None)
}

/// [`main`] in a process that hosts code agents (`python -m agentfleet worker --import`).
pub fn main_with<I, T>(
    args: I,
    code_agents: Option<std::sync::Arc<dyn crate::code_agents::CodeAgents>>,
) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    init_tracing();
    let threads = args.threads;
    let otlp = args.otlp_endpoint.clone();
    // Kept until the runtime stops: the spans of a clean shutdown are sent.
    let mut exporter = None;
    let result = config(args).and_then(|mut config| {
        config.code_agents = code_agents;
        exporter = fleet_telemetry::init(otlp.as_deref(), "fleet-worker", &config.worker_id)
            .map_err(|e| Error::InvalidConfig(format!("--otlp-endpoint: {e}")))?;
        let runtime = runtime(threads)
            .map_err(|e| Error::InvalidConfig(format!("cannot start the async runtime: {e}")))?;
        runtime.block_on(async {
            let shutdown = CancellationToken::new();
            stop_on_signal(shutdown.clone()).map_err(|e| {
                Error::InvalidConfig(format!("cannot handle SIGINT and SIGTERM: {e}"))
            })?;
            crate::run(config, shutdown).await
        })
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("fleet-worker: {e}");
            2
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); a no-op if already set up.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// One runtime thread on machines with two cpus or fewer (see `fleet_head::cli::runtime`).
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    match if threads == 0 && cpus <= 2 {
        1
    } else if threads == 0 {
        cpus
    } else {
        threads
    } {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    }
}

/// Cancels `shutdown` on Ctrl-C (SIGINT) or SIGTERM, which is how systemd, Kubernetes and
/// podman stop a process: either way the worker drains and stops cleanly. A second signal
/// stops it at once (the head retries what it still ran). The handlers are installed when
/// this is called (not when a task first runs), so a signal during the start counts.
fn stop_on_signal(shutdown: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        for stop in [true, false] {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            if stop {
                shutdown.cancel();
            } else {
                eprintln!("fleet-worker: stopped at once (a second signal while draining)");
                std::process::exit(130);
            }
        }
    });
    Ok(())
}
