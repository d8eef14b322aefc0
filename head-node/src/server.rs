//! Running a head: one listener serves the gRPC APIs and the HTTP routes, in clear or over
//! TLS; a background loop declares silent workers dead. Stops when the shutdown token is
//! cancelled.

use std::net::SocketAddr;
use std::sync::Arc;

use fleet_proto::local::{LocalConnector, LocalIncoming, local_pair};
use fleet_proto::pb::fleet_service_server::FleetServiceServer;
use fleet_proto::pb::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn};

use crate::api::fleet::FleetApi;
use crate::api::worker::WorkerApi;
use crate::auth::{JoinToken, Principals};
use crate::cluster::Cluster;
use crate::config::{self, HeadConfig};
use crate::{Result, http};

/// How long a stopping head waits for its connections to close. A peer cut off by the
/// network never answers the goodbye, and a head that lost its lease must not linger.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a connection may be silent before the head pings it (and how long it waits for
/// the answer before closing it).
const CLIENT_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(20);

/// The largest gRPC message accepted (inputs are limited separately and more tightly).
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// A head running in the background (used by embedded clusters and tests).
#[derive(Debug)]
pub struct HeadHandle {
    pub address: SocketAddr,
    /// Opens in-process connections to this head (for clients and workers in this process).
    pub local: LocalConnector,
    pub cluster: Arc<Cluster>,
    pub task: JoinHandle<Result<()>>,
}

/// Starts a head on `listener` in the background.
pub fn spawn(
    config: HeadConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<HeadHandle> {
    config::validate(&config)?;
    let store = crate::store::open(&config.store, config.fsync).map_err(crate::Error::Store)?;
    spawn_with_store(config, listener, shutdown, store)
}

/// [`spawn`] on a store already open (a leader's PostgreSQL store, see `crate::leader`).
pub(crate) fn spawn_with_store(
    config: HeadConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
    store: Option<Box<dyn crate::store::Store>>,
) -> Result<HeadHandle> {
    let address = listener.local_addr()?;
    // What the listener is bound to decides what is exposed, whatever the settings said.
    let config = HeadConfig { listen: address, ..config };
    config::validate(&config)?;
    let tls = tls_acceptor(&config)?;
    let cluster = Cluster::start_with(&config, store)?;
    let (local, incoming) = local_pair();
    let task =
        tokio::spawn(serve(config, cluster.clone(), listener, tls, Some(incoming), shutdown));
    Ok(HeadHandle { address, local, cluster, task })
}

/// Reads the certificate now, so a bad file fails the start instead of the first client.
pub(crate) fn tls_acceptor(config: &HeadConfig) -> Result<Option<TlsAcceptor>> {
    Ok(match crate::tls::files(&config.tls_cert, &config.tls_key)? {
        Some((cert, key)) => Some(crate::tls::acceptor(&cert, &key)?),
        None => None,
    })
}

/// Serves `routes` on `listener` (over TLS with `tls`) until `stopped` resolves.
pub(crate) async fn serve_routes(
    server: &mut tonic::transport::Server,
    routes: Routes,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    stopped: impl std::future::Future<Output = ()>,
) -> std::result::Result<(), tonic::transport::Error> {
    let server = server.add_routes(routes);
    match tls {
        Some(acceptor) => {
            server
                .serve_with_incoming_shutdown(crate::tls::incoming(listener, acceptor), stopped)
                .await
        }
        None => {
            // With our own listener tonic applies no socket options: set them here. Without
            // TCP_NODELAY every small response waits for the peer's delayed ACK (~40 ms).
            let incoming = TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(std::time::Duration::from_secs(30)));
            server.serve_with_incoming_shutdown(incoming, stopped).await
        }
    }
}

/// Serves `listener` (over TLS with `tls`; in-process connections from `local` never) until
/// `shutdown` is cancelled.
async fn serve(
    config: HeadConfig,
    cluster: Arc<Cluster>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    local: Option<LocalIncoming>,
    shutdown: CancellationToken,
) -> Result<()> {
    let address = listener.local_addr()?;
    let (clients, workers) = (Principals::of(&config), JoinToken::of(&config));
    if !address.ip().is_loopback() {
        if !clients.required() {
            warn!(%address, "no client token: anyone who can reach this address can submit");
        }
        if config.join_token.is_none() {
            warn!(%address, "no join token: anyone who can reach this address can join as a worker");
        }
        if tls.is_none() && (clients.required() || config.join_token.is_some()) {
            warn!(%address, "no TLS: tokens and task data cross the network in clear text (set --tls-cert and --tls-key)");
        }
    }
    let fleet = FleetServiceServer::new(FleetApi::new(cluster.clone(), shutdown.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let worker_api = WorkerServiceServer::new(WorkerApi::new(cluster.clone(), shutdown.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let fleet = InterceptedService::new(fleet, clients.clone());
    let worker_api = InterceptedService::new(worker_api, workers);
    let routes = Routes::from(http::router(cluster.clone(), &config, clients, shutdown.clone())?)
        .add_service(fleet)
        .add_service(worker_api);

    let cluster_for_close = cluster.clone();
    let detector =
        tokio::spawn(detect_silent_workers(cluster, config.worker_timeout, shutdown.clone()));
    let mut server = tonic::transport::Server::builder()
        .accept_http1(true)
        .initial_connection_window_size(8 << 20)
        .initial_stream_window_size(4 << 20)
        // Streams a client may reset before the head takes them up, past which the
        // connection is closed (the rapid-reset defence). h2's default of 20 closed the
        // connection of a client that canceled a burst of its own requests (a Ctrl-C during
        // a map); 1,024 still bounds the work a reset flood makes.
        .http2_max_pending_accept_reset_streams(Some(1024))
        // A client that vanished without a word (a pulled cable, a host gone: packets
        // dropped silently) leaves its connection half open, its streams' subscriptions
        // open and its buffers full; TCP's own keepalive takes minutes to notice. A ping
        // unanswered for as long again closes it. Any frame read resets the wait, so busy
        // connections never ping.
        .http2_keepalive_interval(Some(CLIENT_KEEP_ALIVE))
        .http2_keepalive_timeout(Some(CLIENT_KEEP_ALIVE));
    let in_process = local.map(|local| {
        let server = server.clone().add_routes(routes.clone());
        tokio::spawn(server.serve_with_incoming_shutdown(local, shutdown.clone().cancelled_owned()))
    });
    let stopped = shutdown.clone().cancelled_owned();
    let over = if tls.is_some() { "over TLS" } else { "in clear" };
    info!(%address, "head listening (gRPC and HTTP {over})");
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!("inspector at {scheme}://{address}/ui/");
    let draining = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN).await;
    };
    let served = tokio::select! {
        served = serve_routes(&mut server, routes, listener, tls, stopped) => served,
        () = draining => {
            warn!("connections still open {DRAIN:?} after the stop (peers gone silent?): closing them");
            Ok(())
        }
    };
    shutdown.cancel();
    if let Some(in_process) = in_process {
        let _ = in_process.await;
    }
    let _ = detector.await;
    let closing = cluster_for_close.clone();
    let _ = tokio::task::spawn_blocking(move || {
        closing.close_store(std::time::Duration::from_secs(10))
    })
    .await;
    served.map_err(|e| crate::Error::Io(std::io::Error::other(e)))?;
    info!("head stopped");
    Ok(())
}

/// Declares workers dead once they are silent for `timeout`; checks four times per timeout
/// (and lets topics' messages past their age go).
async fn detect_silent_workers(
    cluster: Arc<Cluster>,
    timeout: std::time::Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval((timeout / 4).max(std::time::Duration::from_millis(20)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                cluster.sweep_silent_workers(timeout);
                cluster.sweep_topics();
            }
            () = shutdown.cancelled() => return,
        }
    }
}
