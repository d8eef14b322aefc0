//! The `fleet-head` command line, shared by the binary and `python -m agentfleet head`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigFile, DEFAULT_LISTEN, HeadConfig};

/// The head node of an agentfleet cluster: schedules agent tasks onto workers.
#[derive(Debug, Parser)]
#[command(name = "fleet-head", version)]
pub struct Args {
    /// Async runtime threads; 0 = one on machines with 2 cpus or fewer, else one per cpu.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// A TOML file with head settings and `[[agent]]` tables.
    #[arg(long, value_name = "FILE", env = "FLEET_CONFIG")]
    config: Option<PathBuf>,
    /// Address for the gRPC and HTTP APIs [default: 127.0.0.1:7070]. Any other than
    /// loopback needs --token (or --api-key) and --join-token, or
    /// --insecure-no-credentials.
    #[arg(long, value_name = "ADDR", env = "FLEET_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Serve a non-loopback --listen address without client credentials or a join token:
    /// anyone who reaches it may run tasks, read every answer and join as a worker (for a
    /// network you alone can reach).
    #[arg(long)]
    insecure_no_credentials: bool,
    /// A web origin whose pages may call the head's HTTP APIs, e.g. https://app.example.com
    /// (repeatable, or comma-separated in the variable). Pages of other origins are refused.
    #[arg(
        long = "allowed-origin",
        value_name = "ORIGIN",
        env = "FLEET_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    allowed_origins: Vec<String>,
    /// A host name requests to a loopback head may name besides localhost and loopback
    /// addresses, e.g. a reverse proxy's (repeatable, or comma-separated in the variable);
    /// other names are refused as DNS rebinding.
    #[arg(
        long = "allowed-host",
        value_name = "HOST",
        env = "FLEET_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    allowed_hosts: Vec<String>,
    /// Client token: the gRPC client API, A2A and the OpenAI API refuse callers without
    /// it (or the API key). Needs --join-token as well.
    #[arg(long, env = "FLEET_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Another client credential, accepted wherever --token is (HTTP callers send either as
    /// `Authorization: Bearer KEY` or `X-API-Key: KEY`).
    #[arg(long, env = "FLEET_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The token workers join with (their --join-token); clients' credentials never join.
    #[arg(long, env = "FLEET_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// How often workers send heartbeats, in milliseconds [default: 500].
    #[arg(long)]
    heartbeat_interval_ms: Option<u64>,
    /// The most heartbeats a second all workers together send; a larger cluster is told a
    /// longer interval, up to a third of the worker timeout [default: 10000].
    #[arg(long)]
    max_heartbeats_per_second: Option<u32>,
    /// A worker silent this long is declared dead, in milliseconds [default: 3000].
    #[arg(long)]
    worker_timeout_ms: Option<u64>,
    /// Tasks that may wait for capacity before submits are refused [default: 100000].
    #[arg(long)]
    max_queued_tasks: Option<usize>,
    /// Bytes the inputs of tasks not yet finished (their histories, texts and files
    /// included) may hold before submits are refused [default: 1073741824, 1 GiB].
    #[arg(long)]
    max_queued_bytes: Option<usize>,
    /// Finished tasks kept for queries and replay [default: 100000].
    #[arg(long)]
    max_retained_tasks: Option<usize>,
    /// Memory finished tasks (inputs, outputs, event logs) may hold, in bytes; the oldest
    /// go first [default: 1073741824].
    #[arg(long)]
    max_retained_bytes: Option<usize>,
    /// Largest task input in bytes [default: 1048576].
    #[arg(long)]
    max_input_bytes: Option<usize>,
    /// Let push-notification webhooks target loopback, private and link-local addresses
    /// (refused by default: any client can make a config, and the head would call its own
    /// network for them).
    #[arg(long)]
    allow_private_webhooks: bool,
    /// CA certificates (a PEM file) trusted beside the system's for https:// webhooks.
    #[arg(long, value_name = "FILE")]
    webhook_ca: Option<PathBuf>,
    /// Serve gRPC and HTTP over TLS on the one port with this certificate chain (PEM);
    /// needs --tls-key. Workers and clients then connect to https://.
    #[arg(long, value_name = "FILE", env = "FLEET_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", env = "FLEET_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Sign agent cards with this private key (PKCS#8 PEM: EC P-256 for ES256, or Ed25519),
    /// so A2A clients can check a card is the operator's; the public key is served at
    /// /.well-known/jwks.json.
    #[arg(long, value_name = "FILE", env = "FLEET_CARD_SIGNING_KEY")]
    card_signing_key: Option<PathBuf>,
    /// The key that seals agents' API keys and webhooks' credentials in the store: a file
    /// of 64 hex digits (`openssl rand -hex 32`), the same on every head of a shared store.
    /// A file store without one makes `secrets.key` beside `head.redb`.
    #[arg(long, value_name = "FILE", env = "FLEET_SECRETS_KEY_FILE")]
    secrets_key_file: Option<PathBuf>,
    /// Where the head keeps tasks, their events and registered agents: `file` (survives
    /// restarts; `head.redb` under --data-dir), `memory` (a restarted head starts empty) or
    /// a `postgres://USER:PASSWORD@HOST:PORT/DB` URL (heads on one database: one leads, the
    /// others stand by and take over when it dies) [default: file].
    #[arg(long, env = "FLEET_STORE", value_name = "file|memory|postgres://...")]
    store: Option<crate::config::StoreKind>,
    /// The URL clients and workers reach this head at; standbys name it in their answers
    /// [default: http(s)://<--listen> when it is one address].
    #[arg(long, value_name = "URL", env = "FLEET_ADVERTISE")]
    advertise: Option<String>,
    /// How long the leader lease of a PostgreSQL store lasts unless renewed, in
    /// milliseconds: a standby takes over at most this long after the leader dies
    /// [default: 5000].
    #[arg(long, value_name = "MS")]
    lease_ms: Option<u64>,
    /// The directory of the file store [default: $XDG_DATA_HOME/agentfleet or
    /// ~/.local/share/agentfleet]. One head per directory.
    #[arg(long, value_name = "DIR", env = "FLEET_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// When the store syncs to the disk: `periodic` (what it accepts is in the OS's hands
    /// at once, which survives the head crashing or being killed, and on the disk within
    /// 250 ms; with PostgreSQL, commits are asynchronous: the server has them at once and
    /// its disk within ~0.6 s) or `always` (on the disk before anyone hears of it, which
    /// survives a power cut; costs a sync per group of records) [default: periodic].
    #[arg(long, value_name = "periodic|always", env = "FLEET_FSYNC")]
    fsync: Option<crate::store::Fsync>,
    /// Place tasks by load alone, ignoring which workers recently ran a task's agent or the
    /// start of its conversation (by default those are preferred: their prefix caches
    /// likely hold the prompt's start).
    #[arg(long)]
    no_prefix_affinity: bool,
    /// Agents clients may register [default: 10000].
    #[arg(long)]
    max_agents: Option<usize>,
    /// Print the address actually bound as `listening on ADDR` (useful with port 0).
    #[arg(long)]
    print_address: bool,
    /// Export OpenTelemetry traces (one per task, GenAI spans) to this OTLP/HTTP collector,
    /// e.g. http://127.0.0.1:4318 (spans go to its /v1/traces). Off by default.
    /// Without it: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
}

fn build_config(args: &Args) -> anyhow::Result<HeadConfig> {
    let mut config = HeadConfig::default();
    let (mut store, mut data_dir) = (None, None);
    if let Some(path) = &args.config {
        let file = ConfigFile::load(path)?;
        (store, data_dir) = (file.store.clone(), file.data_dir.clone());
        file.apply(&mut config);
    }
    config.store = crate::config::store_config(
        args.store.clone().or(store),
        args.data_dir.clone().or(data_dir),
    )?;
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = &args.advertise {
        config.advertise = Some(v.clone());
    }
    if let Some(v) = args.fsync {
        config.fsync = v;
    }
    if let Some(v) = args.lease_ms {
        config.lease_ttl = Duration::from_millis(v);
    }
    if let Some(v) = &args.token {
        config.token = Some(v.clone());
    }
    if let Some(v) = &args.api_key {
        config.api_key = Some(v.clone());
    }
    if let Some(v) = &args.join_token {
        config.join_token = Some(v.clone());
    }
    if let Some(v) = args.heartbeat_interval_ms {
        config.heartbeat_interval = Duration::from_millis(v);
    }
    if let Some(v) = args.max_heartbeats_per_second {
        config.max_heartbeats_per_second = v;
    }
    if let Some(v) = args.worker_timeout_ms {
        config.worker_timeout = Duration::from_millis(v);
    }
    if let Some(v) = args.max_queued_bytes {
        config.max_queued_bytes = v;
    }
    if let Some(v) = args.max_queued_tasks {
        config.max_queued_tasks = v;
    }
    if let Some(v) = args.max_retained_tasks {
        config.max_retained_tasks = v;
    }
    if let Some(v) = args.max_retained_bytes {
        config.max_retained_bytes = v;
    }
    if let Some(v) = args.max_input_bytes {
        config.max_input_bytes = v;
    }
    if let Some(v) = args.max_agents {
        config.max_agents = v;
    }
    if args.allow_private_webhooks {
        config.allow_private_webhooks = true;
    }
    if args.no_prefix_affinity {
        config.prefix_affinity = false;
    }
    if args.insecure_no_credentials {
        config.insecure_no_credentials = true;
    }
    config.allowed_origins.extend(args.allowed_origins.iter().cloned());
    config.allowed_hosts.extend(args.allowed_hosts.iter().cloned());
    if let Some(v) = &args.webhook_ca {
        config.webhook_ca = Some(v.clone());
    }
    if let Some(v) = &args.tls_cert {
        config.tls_cert = Some(v.clone());
    }
    if let Some(v) = &args.tls_key {
        config.tls_key = Some(v.clone());
    }
    if let Some(v) = &args.card_signing_key {
        config.card_signing_key = Some(v.clone());
    }
    if let Some(v) = &args.secrets_key_file {
        config.secrets_key_file = Some(v.clone());
    }
    crate::config::validate(&config)?;
    // Read the certificate here too, so a bad file is a settings error (exit 2).
    if let Some((cert, key)) = crate::tls::files(&config.tls_cert, &config.tls_key)? {
        crate::tls::acceptor(&cert, &key)?;
    }
    Ok(config)
}

/// Runs `fleet-head` with `args` (the first is the program name); returns the exit code:
/// 0 after a clean shutdown (Ctrl-C), 2 for bad settings, 1 for other failures.
pub fn main<I, T>(args: I) -> i32
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
    let config = match build_config(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("fleet-head: {e:#}");
            return 2;
        }
    };
    let instance = config.advertise.clone().unwrap_or_else(|| config.listen.to_string());
    // Dropped after the runtime stops: the spans of a clean shutdown are sent.
    let _exporter =
        match fleet_telemetry::init(args.otlp_endpoint.as_deref(), "fleet-head", &instance) {
            Ok(exporter) => exporter,
            Err(e) => {
                eprintln!("fleet-head: --otlp-endpoint: {e}");
                return 2;
            }
        };
    let result = runtime(args.threads).map_err(anyhow::Error::from).and_then(|rt| {
        let result = rt.block_on(run(config, args.print_address));
        // A store call stuck on a connection the network cut (a lease renewal, a write)
        // would hold a plain drop of the runtime forever: the head has stopped, so go.
        rt.shutdown_timeout(std::time::Duration::from_secs(2));
        result
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("fleet-head: {e:#}");
            // A store that cannot be opened is a setting to fix (another --data-dir).
            let store = matches!(e.downcast_ref::<crate::Error>(), Some(crate::Error::Store(_)));
            if store { 2 } else { 1 }
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

/// One runtime thread on machines with two cpus or fewer: there, waking a second thread
/// costs more than it gives (measured in BENCHMARKS.md).
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

async fn run(config: HeadConfig, print_address: bool) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (default {DEFAULT_LISTEN}; change it with --listen)",
            config.listen
        )
    })?;
    if print_address {
        println!("listening on {}", listener.local_addr()?);
    }
    let shutdown = CancellationToken::new();
    stop_on_signal(shutdown.clone()).context("cannot handle SIGINT and SIGTERM")?;
    if let crate::store::StoreConfig::Postgres(url) = &config.store {
        let url = url.clone();
        return Ok(crate::leader::run(config, &url, listener, shutdown).await?);
    }
    let head = crate::spawn(config, listener, shutdown)?;
    head.task.await??;
    Ok(())
}

/// Cancels `shutdown` on Ctrl-C (SIGINT) or SIGTERM, which is how systemd, Kubernetes and
/// podman stop a process: either way the head stops cleanly. The handlers are installed
/// when this is called (not when a task first runs), so a signal during the start counts.
fn stop_on_signal(shutdown: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        shutdown.cancel();
    });
    Ok(())
}
