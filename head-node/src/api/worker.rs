//! The workers' side of the control plane (`fleet.v1.WorkerService/Join`): registration,
//! heartbeats and task events up; batched commands down.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::{Registration, WorkerUpdate, pb};
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info_span, warn};

use crate::cluster::Cluster;
use crate::workers::{COMMAND_BUFFER, CommandStream as Queue};

/// How long a worker has to send its registration after opening the stream.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Commands per message down the stream at most.
const BATCH: usize = 512;

/// Implements `WorkerService` over the shared [`Cluster`].
#[derive(Debug, Clone)]
pub struct WorkerApi {
    cluster: Arc<Cluster>,
    shutdown: CancellationToken,
}

impl WorkerApi {
    pub fn new(cluster: Arc<Cluster>, shutdown: CancellationToken) -> Self {
        Self { cluster, shutdown }
    }
}

fn validate(r: &Registration) -> Result<(), Status> {
    use fleet_proto::{OLDEST_WORKER_PROTOCOL, WORKER_PROTOCOL};
    if !(OLDEST_WORKER_PROTOCOL..=WORKER_PROTOCOL).contains(&r.protocol) {
        let order = if r.protocol > WORKER_PROTOCOL {
            "upgrade the head first (heads before workers)"
        } else {
            "upgrade the worker"
        };
        return Err(Status::failed_precondition(format!(
            "worker {} (agentfleet {}) speaks worker protocol {}; this head (agentfleet {}) \
             serves protocols {OLDEST_WORKER_PROTOCOL} to {WORKER_PROTOCOL}: {order}",
            r.worker_id,
            if r.version.is_empty() { "of unknown version" } else { &r.version },
            r.protocol,
            env!("CARGO_PKG_VERSION"),
        )));
    }
    let id_ok = !r.worker_id.is_empty()
        && r.worker_id.len() <= 128
        && r.worker_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if !id_ok {
        return Err(Status::invalid_argument(
            "worker_id must be 1 to 128 characters of letters, digits, '-', '_', '.' or ':'",
        ));
    }
    if r.slots == 0 {
        return Err(Status::invalid_argument("slots must be at least 1"));
    }
    if !r.resources.cpus.is_finite() || r.resources.cpus < 0.0 {
        return Err(Status::invalid_argument("resources.cpus must be a non-negative number"));
    }
    if let Some(mesh) = &r.mesh {
        // The head forwards these to every worker; keep them small and well formed.
        let addrs_ok = !mesh.addrs.is_empty()
            && mesh.addrs.len() <= 32
            && mesh.addrs.iter().all(|a| a.starts_with('/') && a.len() <= 256);
        if mesh.peer_id.is_empty() || mesh.peer_id.len() > 128 || !addrs_ok {
            return Err(Status::invalid_argument(
                "mesh needs a peer_id and 1 to 32 multiaddrs (each starting with '/', at most 256 bytes)",
            ));
        }
    }
    Ok(())
}

type CommandStream = Pin<Box<dyn Stream<Item = Result<pb::HeadMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for WorkerApi {
    type JoinStream = CommandStream;

    async fn join(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        let address = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(REGISTER_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no registration within 10 s of joining"))??
            .ok_or_else(|| Status::invalid_argument("the stream ended before the registration"))?;
        let registration = match WorkerUpdate::try_from(first) {
            Ok(WorkerUpdate::Register(r)) => r,
            Ok(_) => {
                return Err(Status::invalid_argument(
                    "the first message on Join must be a registration",
                ));
            }
            Err(e) => return Err(Status::invalid_argument(e.to_string())),
        };
        validate(&registration)?;
        let worker_id = registration.worker_id.clone();
        let (connection, commands, resume_after) =
            self.cluster.worker_joined(registration, address);
        let heartbeat_interval = self.cluster.heartbeat_interval_of(&worker_id);

        let span = info_span!("worker", worker_id = %worker_id, connection);
        let cluster = self.cluster.clone();
        let shutdown = self.shutdown.clone();
        let cut = commands.cut.clone();
        let reader = async move {
            let reason = loop {
                let message = tokio::select! {
                    m = inbound.message() => m,
                    () = shutdown.cancelled() => break "the head is shutting down".to_owned(),
                    () = cut.cancelled() => break format!(
                        "it stopped reading its commands ({COMMAND_BUFFER} were waiting)"
                    ),
                };
                let update = match message {
                    Ok(Some(m)) => WorkerUpdate::try_from(m),
                    Ok(None) => break "the worker closed its stream".to_owned(),
                    Err(status) => break format!("the stream broke: {}", status.message()),
                };
                match update {
                    Ok(WorkerUpdate::Heartbeat(beat)) => {
                        cluster.heartbeat(&worker_id, connection, beat)
                    }
                    Ok(WorkerUpdate::Events(events)) => {
                        cluster.worker_events(&worker_id, connection, events)
                    }
                    Ok(WorkerUpdate::Locate(request)) => {
                        cluster.locate(&worker_id, connection, request)
                    }
                    Ok(WorkerUpdate::TopicMessages(messages)) => {
                        cluster.topic_messages(&worker_id, connection, messages)
                    }
                    Ok(WorkerUpdate::Published { request_id, result }) => {
                        cluster.published(&worker_id, request_id, result)
                    }
                    Ok(WorkerUpdate::StoreTopicMessage { request, seq, more }) => {
                        cluster.store_agent_message(&worker_id, connection, request, seq, more)
                    }
                    Ok(WorkerUpdate::Drain { reason }) => {
                        cluster.worker_draining(&worker_id, connection, &reason)
                    }
                    Ok(WorkerUpdate::Register(_)) => {
                        warn!("second registration on one stream ignored")
                    }
                    Err(e) => warn!(error = %e, "malformed message from worker dropped"),
                }
            };
            debug!(reason, "worker stream ended");
            // Removing the worker drops what was still queued for it.
            cluster.worker_lost(&worker_id, connection, &reason);
        };
        tokio::spawn(reader.instrument(span));

        let welcome = pb::HeadMessage {
            kind: Some(pb::head_message::Kind::Welcome(pb::Welcome {
                worker_id: String::new(),
                heartbeat_interval_ms: u32::try_from(heartbeat_interval.as_millis())
                    .unwrap_or(u32::MAX),
                resume_after,
            })),
        };
        // Cut off, the stream ends at once (what was queued is dropped with it: the worker
        // is handled as lost) with RESOURCE_EXHAUSTED; dropped otherwise, it just ends.
        let cut = commands.cut.clone();
        let stream = futures::stream::once(async move { Ok(welcome) })
            .chain(command_batches(commands.clone()))
            .take_until(commands.cut.cancelled_owned())
            .chain(futures::stream::once(async move { cut.is_cancelled() }).filter_map(
                |cut| async move {
                    cut.then(|| {
                        Err(Status::resource_exhausted(format!(
                            "this worker stopped reading its commands ({COMMAND_BUFFER} were \
                             waiting); join again"
                        )))
                    })
                },
            ))
            .take_until(self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Batches whatever commands are waiting into one message, so a burst of tasks costs a
/// few frames rather than one each. Ends when the head drops the worker.
fn command_batches(commands: Queue) -> impl Stream<Item = Result<pb::HeadMessage, Status>> + Send {
    let mut buf = Vec::with_capacity(BATCH);
    futures::stream::poll_fn(move |cx| {
        buf.clear();
        match commands.poll_recv_many(cx, &mut buf, BATCH) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(0) => std::task::Poll::Ready(None),
            std::task::Poll::Ready(_) => std::task::Poll::Ready(Some(Ok(pb::HeadMessage {
                kind: Some(pb::head_message::Kind::Commands(pb::Commands {
                    commands: buf.iter().map(pb::Command::from).collect(),
                })),
            }))),
        }
    })
}
