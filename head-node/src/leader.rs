//! Heads that share a PostgreSQL store: one leads, the others stand by.
//!
//! A head started on `--store postgres://...` first tries to take the leader lease
//! ([`Lease`]). While another head holds it, this one is a standby: it listens on its
//! address and answers every request with "not the leader" (gRPC `UNAVAILABLE`; HTTP 503 on
//! `/healthz`, a 307 redirect to the leader elsewhere when the leader's URL is known), so
//! that clients and workers given several heads move on to the next. Once the lease is free
//! or expired, the standby takes it, loads the store and serves as the head; workers rejoin
//! it and report their tasks, as after a restart.
//!
//! No split brain: the leader renews its lease every third of its term, puts no task on a
//! worker past its own deadline (which ends before the server's), and stops (exit with an
//! error) once it could not renew by then; and every write carries the lease epoch, refused once another head took over
//! ([`Fence`]), so a head that has not yet noticed cannot store anything — and nothing it
//! has not stored reaches a client. A leader that stops cleanly ends its lease at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tracing::{error, info, warn};

use crate::cluster::LeaseDeadline;
use crate::config::HeadConfig;
use crate::store::postgres::lease::{Acquired, Lease};
use crate::store::postgres::{Fence, PostgresStore};
use crate::{Error, Result};

/// Runs a head on the PostgreSQL store at `url`: a standby until it takes the lease, then
/// the leader until `shutdown` (Ok) or until it loses the lease (an error).
pub async fn run(
    config: HeadConfig,
    url: &str,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let pg = crate::store::postgres::parse(url).map_err(Error::Store)?;
    let address = listener.local_addr()?;
    let holder = advertised(&config, address);
    let ttl = config.lease_ttl;
    let lease = {
        let (pg, holder) = (pg.clone(), holder.clone());
        blocking(move || Lease::open(&pg, &holder, ttl)).await?.map_err(Error::Store)?
    };
    let lease = Arc::new(lease);
    let tls = crate::server::tls_acceptor(&config)?;
    let listener = listener.into_std()?;

    // Stand by until the lease is ours.
    let view = Arc::new(Mutex::new(String::new()));
    let standby_stop = CancellationToken::new();
    let standby = tokio::spawn(serve_standby(
        view.clone(),
        TcpListener::from_std(listener.try_clone()?)?,
        tls.clone(),
        standby_stop.clone(),
    ));
    let poll = (ttl / 5).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut announced = false;
    let (epoch, deadline) = loop {
        let trying = lease.clone();
        let sent = Instant::now();
        match blocking(move || trying.try_acquire()).await? {
            Ok(Acquired::Leader(epoch)) => break (epoch, LeaseDeadline::new(sent + ttl)),
            Ok(Acquired::Standby { leader, expires_in }) => {
                if !announced {
                    info!(%address, leader = %leader, "standing by: another head leads");
                    announced = true;
                }
                *view.lock() = leader;
                let wait = poll.min(expires_in).max(Duration::from_millis(20));
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => break (0, LeaseDeadline::new(sent)),
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot reach the store to take the lease; trying again");
                tokio::select! {
                    () = tokio::time::sleep(poll) => {}
                    () = shutdown.cancelled() => break (0, LeaseDeadline::new(sent)),
                }
            }
        }
    };
    standby_stop.cancel();
    // Its connections get a GOAWAY; one that lingers must not hold the leader off.
    let _ = tokio::time::timeout(Duration::from_secs(1), standby).await;
    if shutdown.is_cancelled() {
        return Ok(());
    }
    info!(%address, epoch, "took the leader lease");

    // Lead until stopped or until the lease is lost.
    let lost = CancellationToken::new();
    let fence = Fence { epoch, lost: lost.clone() };
    let store = {
        let (pg, fsync) = (pg.clone(), config.fsync);
        blocking(move || PostgresStore::open(&pg, fence, ttl, fsync))
            .await?
            .map_err(Error::Store)?
    };
    let head_stop = shutdown.child_token();
    let head = crate::server::spawn_with_store(
        config,
        TcpListener::from_std(listener)?,
        head_stop.clone(),
        Some(Box::new(store)),
    )?;
    head.cluster.lead_until(deadline.clone());
    let keeper =
        tokio::spawn(keep(lease.clone(), epoch, deadline, lost.clone(), head_stop.clone()));
    let why = tokio::select! {
        () = lost.cancelled() => Some("another head took it, or it could not be renewed in time"),
        () = head_stop.cancelled() => None,
    };
    head_stop.cancel();
    let served = head.task.await.map_err(|e| Error::Io(std::io::Error::other(e)))?;
    keeper.abort();
    if let Some(why) = why {
        error!(epoch, "lost the leader lease: {why}; stopping");
        return Err(Error::LostLease(why.into()));
    }
    // Hand over at once rather than after the lease runs out.
    match blocking(move || lease.release(epoch)).await? {
        Ok(()) => info!(epoch, "gave up the leader lease"),
        Err(e) => warn!(error = %e, "could not give up the leader lease; it runs out by itself"),
    }
    served
}

/// Renews the lease every third of its term; cancels `lost` once it was not renewed
/// before this head's deadline (measured from before the last renewal that succeeded was
/// sent, so it ends before the server's expiry) or another head holds it.
async fn keep(
    lease: Arc<Lease>,
    epoch: i64,
    leads: Arc<LeaseDeadline>,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let ttl = lease.ttl();
    let mut deadline = Instant::now() + ttl;
    loop {
        tokio::select! {
            () = tokio::time::sleep(ttl / 3) => {}
            () = stop.cancelled() => return,
        }
        let sent = Instant::now();
        let renewing = lease.clone();
        let renewal =
            tokio::time::timeout_at(deadline, blocking(move || renewing.renew(epoch))).await;
        match renewal {
            Ok(Ok(Ok(true))) => {
                deadline = sent + ttl;
                leads.extend(deadline);
            }
            Ok(Ok(Ok(false))) => {
                warn!(epoch, "another head holds the lease now");
                lost.cancel();
                return;
            }
            Ok(Ok(Err(e))) => warn!(error = %e, "could not renew the leader lease"),
            Ok(Err(e)) => warn!(error = %e, "could not renew the leader lease"),
            Err(_) => {} // Past the deadline: said below.
        }
        if Instant::now() >= deadline {
            warn!(epoch, "the leader lease ran out before it could be renewed");
            lost.cancel();
            return;
        }
    }
}

/// The URL this head names as the leader: `--advertise`, else its listen address when that
/// is one address (not 0.0.0.0), else none.
fn advertised(config: &HeadConfig, address: SocketAddr) -> String {
    if let Some(url) = &config.advertise {
        return url.trim_end_matches('/').to_owned();
    }
    if address.ip().is_unspecified() {
        return String::new();
    }
    let scheme = if config.tls_cert.is_some() { "https" } else { "http" };
    format!("{scheme}://{address}")
}

/// Runs a blocking store call off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Io(std::io::Error::other(e)))
}

/// Answers everything with "not the leader" until `stop`.
async fn serve_standby(
    leader: Arc<Mutex<String>>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: CancellationToken,
) {
    let router = axum::Router::new().fallback(not_the_leader).with_state(leader);
    let mut server = tonic::transport::Server::builder().accept_http1(true);
    let served = crate::server::serve_routes(
        &mut server,
        Routes::from(router),
        listener,
        tls,
        stop.cancelled_owned(),
    )
    .await;
    if let Err(e) = served {
        warn!(error = %e, "the standby listener failed");
    }
}

async fn not_the_leader(State(leader): State<Arc<Mutex<String>>>, request: Request) -> Response {
    let leader = leader.lock().clone();
    let message = if leader.is_empty() {
        "this head is a standby; another head leads (it advertises no URL: see its --advertise)"
            .to_owned()
    } else {
        format!("this head is a standby; the leader is {leader}")
    };
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return tonic::Status::unavailable(message).into_http::<Body>();
    }
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let body = serde_json::json!({
        "status": "standby",
        "leader": leader,
        "error": {"message": message, "type": "standby", "code": 503},
    });
    if request.uri().path() == "/healthz" || leader.is_empty() {
        let retry = [(header::RETRY_AFTER, "1")];
        return (StatusCode::SERVICE_UNAVAILABLE, retry, axum::Json(body)).into_response();
    }
    let location = format!("{leader}{path}");
    (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)], axum::Json(body))
        .into_response()
}
