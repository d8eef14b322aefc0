//! `fleet-head`: runs the head node of an agentfleet cluster.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use fleet_head::config::{ConfigFile, DEFAULT_LISTEN, HeadConfig};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// The head node of an agentfleet cluster: schedules agent tasks onto workers.
#[derive(Debug, Parser)]
#[command(name = "fleet-head", version)]
struct Args {
    /// Async runtime threads; 0 = one on machines with 2 cpus or fewer, else one per cpu.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// A TOML file with head settings and `[[agent]]` tables.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address for the gRPC and HTTP APIs [default: 0.0.0.0:7070].
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Cluster token workers and clients must present.
    #[arg(long, env = "FLEET_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How often workers send heartbeats, in milliseconds [default: 500].
    #[arg(long)]
    heartbeat_interval_ms: Option<u64>,
    /// A worker silent this long is declared dead, in milliseconds [default: 3000].
    #[arg(long)]
    worker_timeout_ms: Option<u64>,
    /// Tasks that may wait for capacity before submits are refused [default: 100000].
    #[arg(long)]
    max_queued_tasks: Option<usize>,
    /// Finished tasks kept for queries and replay [default: 100000].
    #[arg(long)]
    max_retained_tasks: Option<usize>,
    /// Largest task input in bytes [default: 1048576].
    #[arg(long)]
    max_input_bytes: Option<usize>,
    /// Print the address actually bound as `listening on ADDR` (useful with port 0).
    #[arg(long)]
    print_address: bool,
}

fn build_config(args: &Args) -> anyhow::Result<HeadConfig> {
    let mut config = HeadConfig::default();
    if let Some(path) = &args.config {
        ConfigFile::load(path)?.apply(&mut config);
    }
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = &args.token {
        config.token = Some(v.clone());
    }
    if let Some(v) = args.heartbeat_interval_ms {
        config.heartbeat_interval = Duration::from_millis(v);
    }
    if let Some(v) = args.worker_timeout_ms {
        config.worker_timeout = Duration::from_millis(v);
    }
    if let Some(v) = args.max_queued_tasks {
        config.max_queued_tasks = v;
    }
    if let Some(v) = args.max_retained_tasks {
        config.max_retained_tasks = v;
    }
    if let Some(v) = args.max_input_bytes {
        config.max_input_bytes = v;
    }
    fleet_head::config::validate(&config)?;
    Ok(config)
}

fn main() -> anyhow::Result<()> {
    let threads = std::env::args()
        .skip_while(|a| a != "--threads")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    match runtime(threads) {
        Ok(runtime) => runtime.block_on(real_main()),
        Err(e) => {
            eprintln!("fleet-head: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

/// One runtime thread on machines with two cpus or fewer: there, waking a second thread
/// costs more than it gives (measured in BENCHMARKS.md).
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = if threads == 0 && cpus <= 2 {
        1
    } else if threads == 0 {
        cpus
    } else {
        threads
    };
    if threads == 1 {
        return tokio::runtime::Builder::new_current_thread().enable_all().build();
    }
    tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
}

async fn real_main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = match build_config(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("fleet-head: {e:#}");
            std::process::exit(2);
        }
    };
    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (default {DEFAULT_LISTEN}; change it with --listen)",
            config.listen
        )
    })?;
    if args.print_address {
        println!("listening on {}", listener.local_addr()?);
    }
    let shutdown = CancellationToken::new();
    let head = fleet_head::spawn(config, listener, shutdown.clone())?;
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        signal.cancel();
    });
    head.task.await??;
    Ok(())
}
