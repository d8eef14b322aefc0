//! The worker's link to the head: open the `Join` stream, register, send heartbeats and
//! task events up, carry out commands coming down, and reconnect with backoff when the
//! stream breaks (e.g. the head restarted). Tasks keep running while the head is away; their
//! events wait in the [`Outbox`] and go up after the rejoin. Stopping (SIGTERM) drains: the
//! worker tells the head (`Drain`), finishes its tasks within `drain_timeout`, sends their
//! events, and closes its stream, so the head sees it leave rather than get lost.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::local::LocalHead;
use fleet_proto::pb::worker_service_client::WorkerServiceClient;
use fleet_proto::{
    Command, Heartbeat, MeshAddress, Registration, TOKEN_METADATA_KEY, WorkerUpdate, pb,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tracing::{debug, info, warn};

use crate::agent_calls::AgentCaller;
use crate::config::WorkerConfig;
use crate::host::ActorHost;
use crate::models::ModelStore;
use crate::outbox::{MAX_UNACKED, Outbox};
use crate::runner::{EventSink, Outgoing};
use crate::topics::TopicBoard;
use crate::{Error, Result};

/// Events per message up the stream at most.
const BATCH: usize = 1024;
/// Agents' topic messages, lookups and publish answers waiting to go up at most.
const MESH_UPDATES: usize = 4096;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The longest pause between rounds over several heads (a standby takes over soon).
const BACKOFF_MAX_SEVERAL: Duration = Duration::from_millis(500);
/// How often a draining worker looks whether its tasks have ended.
const DRAIN_CHECK: Duration = Duration::from_millis(20);
/// How long a worker hears nothing from the head before it pings it; unanswered for as
/// long again and a second more, the connection is taken for dead and the worker dials
/// again. The head sends nothing on an idle worker's stream, so without pings a connection
/// left half open (a partition that drops packets silently) would look alive until TCP
/// gives up, ~15 minutes; so the worker redials within 5 s, about when the head (3 s by
/// default) has declared it lost, and rejoins as soon as the network lets it. Busy
/// connections never ping.
const HEAD_SILENCE: Duration = Duration::from_secs(2);
/// How long a leaving worker waits for the head to close its side of the stream.
const LEAVE_GRACE: Duration = Duration::from_secs(2);

/// Heartbeats every `every`, the first a whole interval from now (the head has just heard
/// from this worker: its welcome follows a registration, a new interval a heartbeat); late
/// ones are not made up in a burst.
fn heartbeat_ticker(every: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// A status from the head's connection with its causes: a transport failure's message alone
/// is "http2 error", which says nothing of why (a keepalive ping unanswered, a reset).
fn status_text(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(cause) => {
            let cause = fleet_proto::endpoint::describe(cause);
            if cause.starts_with(status.message()) {
                cause
            } else {
                format!("{}: {cause}", status.message())
            }
        }
        None => status.message().to_owned(),
    }
}

/// Runs the worker until `shutdown`; returns an error only for problems retrying cannot fix
/// (a rejected token, a malformed head URL).
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> Result<()> {
    // What goes up besides events and heartbeats: agents' topic messages, and the mesh's
    // lookups, topic messages and publish answers.
    let (to_head, mut updates) = mpsc::channel(MESH_UPDATES);
    if let Some(head) = config.local.clone() {
        let host = host(&config, to_head).await?;
        let event_buffer = config.event_buffer.max(1);
        let registration = registration(&config).await?;
        return run_in_process(head, registration, host, updates, event_buffer, shutdown).await;
    }
    // Several heads (a leader and its standbys): joined in turn until one takes the worker.
    let mut heads = Vec::new();
    for url in config.heads() {
        let endpoint = fleet_proto::endpoint::head_endpoint(url, config.tls_ca.as_deref())
            .map_err(|e| Error::InvalidHead(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(HEAD_SILENCE)
            .keep_alive_timeout(HEAD_SILENCE + Duration::from_secs(1));
        heads.push((url, endpoint));
    }
    if heads.is_empty() {
        return Err(Error::InvalidHead("no head URL given (--head URL[,URL...])".into()));
    }
    let mut registration = registration(&config).await?;
    // Tells the head this process apart from an earlier or later one with the same id.
    registration.incarnation = uuid::Uuid::new_v4().as_u64_pair().0.max(1);
    let mut host = host(&config, to_head.clone()).await?;
    // One sink for the worker's life: tasks outlive connections.
    let (sink, events) = mpsc::channel::<Outgoing>(config.event_buffer.max(1));
    let outbox = Outbox::start(events, MAX_UNACKED);
    if let Some(address) = join_mesh(&config, &mut host, to_head).await? {
        registration.mesh = Some(address);
    }
    let mut backoff = BACKOFF_START;
    let (mut current, mut failed_in_round) = (0, 0);
    loop {
        let (url, endpoint) = &heads[current];
        let outcome = session(
            endpoint,
            url,
            &config,
            &registration,
            &mut host,
            &mut updates,
            &outbox,
            &sink,
            &shutdown,
        )
        .await;
        if shutdown.is_cancelled() {
            host.cancel_all();
            info!("worker stopped");
            return Ok(());
        }
        // The tasks go on; the head adopts them when this worker rejoins.
        host.head_lost();
        current = (current + 1) % heads.len();
        match outcome {
            Err(Error::Rejected(message)) => return Err(Error::Rejected(message)),
            Ok(()) => {
                (backoff, failed_in_round) = (BACKOFF_START, 0);
                warn!(head = %url, "the head closed the stream; reconnecting");
            }
            Err(e) => {
                failed_in_round += 1;
                if failed_in_round < heads.len() {
                    // The next head at once: the leader may be one of the others.
                    debug!(head = %url, error = %e, "not joined; trying the next head");
                    continue;
                }
                failed_in_round = 0;
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "not connected to a head")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        // With standbys, one of them may lead any moment now: look again sooner.
        let max = if heads.len() > 1 { BACKOFF_MAX_SEVERAL } else { BACKOFF_MAX };
        backoff = (backoff * 2).min(max);
    }
}

/// A worker joined to a head in the same process: commands and events go through direct
/// calls (see `fleet_proto::local::LocalHead`). Rejoins if the head drops it.
async fn run_in_process(
    head: Arc<dyn LocalHead>,
    registration: Registration,
    mut host: ActorHost,
    mut updates: mpsc::Receiver<WorkerUpdate>,
    event_buffer: usize,
    shutdown: CancellationToken,
) -> Result<()> {
    let worker_id = registration.worker_id.clone();
    loop {
        let (connection, heartbeat_interval, mut commands) = head.join(registration.clone());
        let (event_tx, event_rx) = mpsc::channel::<Outgoing>(event_buffer);
        // Events go up from their own task: handling a command may wait for room in the
        // event buffer (a task runner emitting), and if this loop were the buffer's only
        // reader, it would wait on itself.
        tokio::spawn(forward_events(head.clone(), worker_id.clone(), connection, event_rx));
        let mut ticker = heartbeat_ticker(heartbeat_interval);
        let mut batch = Vec::with_capacity(BATCH);
        let dropped = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break false,
                n = commands.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break true;
                    }
                    for command in batch.drain(..) {
                        match command {
                            Command::HeartbeatEvery(every) => ticker = heartbeat_ticker(every),
                            command => host.handle(command, &event_tx).await,
                        }
                    }
                }
                _ = ticker.tick() => head.heartbeat(&worker_id, connection, heartbeat(&mut host)),
                Some(update) = updates.recv() => match update {
                    WorkerUpdate::StoreTopicMessage { request, seq, more } => {
                        head.store_topic_message(&worker_id, connection, request, seq, more);
                    }
                    // An in-process worker has no mesh: nothing else comes this way.
                    other => debug!(?other, "update ignored in process"),
                },
            }
        };
        host.head_lost();
        if !dropped {
            // Leave first, then cancel: the running tasks' cancel events, sent up by
            // `forward_events` on another thread, must not reach the head while this worker
            // is still joined, or it would take them for the tasks' ends (canceled) instead
            // of retrying them on another worker, as it does for a worker that left.
            head.leave(&worker_id, connection, "the worker stopped");
            host.cancel_all();
            info!("worker stopped");
            return Ok(());
        }
        host.cancel_all();
        warn!("the head dropped this worker; rejoining");
    }
}

/// Hands a connection's task events to the in-process head in batches, until every sender
/// is gone (events of an old connection reach the head with its id, which it ignores).
/// Whoever waits for an event to be stored hears once the head's store has it.
async fn forward_events(
    head: Arc<dyn LocalHead>,
    worker_id: String,
    connection: u64,
    mut events: mpsc::Receiver<Outgoing>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut waiting = Vec::new();
    while events.recv_many(&mut batch, BATCH).await > 0 {
        let events = batch
            .drain(..)
            .map(|Outgoing { event, stored }| {
                waiting.extend(stored);
                event
            })
            .collect();
        head.events(&worker_id, connection, events);
        if !waiting.is_empty() {
            let (stored, waiters) = (head.stored(), std::mem::take(&mut waiting));
            // Off this loop: the next events go up while these are being stored.
            tokio::spawn(async move {
                stored.await;
                for waiter in waiters {
                    let _ = waiter.send(());
                }
            });
        }
    }
}

fn heartbeat(host: &mut ActorHost) -> Heartbeat {
    Heartbeat {
        running_tasks: host.running_tasks() as u32,
        mesh_calls: host.local_calls().calls_from_mesh() as u32,
        actors: host.actors() as u32,
        models_loaded: host.models_loaded(),
        models: host.models_mut().report(),
    }
}

/// Starts the worker's mesh (unless it has none): calls from other workers go to the host's
/// actors, the host's agents call others and share topics through it. Returns the mesh's
/// address for the registration; what the mesh side sends the head (agent lookups, topic
/// messages, publish answers) goes to `to_head`.
async fn join_mesh(
    config: &WorkerConfig,
    host: &mut ActorHost,
    to_head: mpsc::Sender<WorkerUpdate>,
) -> Result<Option<MeshAddress>> {
    if config.mesh_listen.is_empty() {
        return Ok(None);
    }
    let settings = fleet_mesh::MeshConfig {
        listen: config.mesh_listen.clone(),
        // A call is answered when the callee's generation ends, which can take minutes.
        request_timeout: crate::tool::TOOL_CALL_TIMEOUT,
        max_peers: config.mesh_max_peers,
        ..Default::default()
    };
    let (mesh, incoming) = fleet_mesh::Mesh::start(settings)
        .await
        .map_err(|e| Error::InvalidConfig(format!("cannot start the mesh: {e}")))?;
    let address = MeshAddress { peer_id: mesh.peer_id(), addrs: mesh.listen_addrs() };
    info!(peer_id = %address.peer_id, addrs = ?address.addrs, "mesh listening");
    let local = host.local_calls();
    tokio::spawn(local.clone().serve(incoming, config.slots as usize));
    let caller = AgentCaller::new(mesh.clone(), local, to_head.clone());
    host.use_mesh(caller, TopicBoard::new(mesh, to_head));
    Ok(Some(address))
}

/// The actor host with its model store; models named by `--preload` are loaded first, so a
/// worker that joins has them ready (and a model that cannot load stops it with the reason).
async fn host(config: &WorkerConfig, to_head: mpsc::Sender<WorkerUpdate>) -> Result<ActorHost> {
    let mut store = ModelStore::new(config.models_dir.clone(), config.device.clone())
        .with_remote_policy(crate::remote::RemotePolicy {
            key_hosts: config.key_hosts.clone(),
            allow_private: config.allow_private_model_urls,
        })
        .with_keep_alive(config.model_keep_alive);
    for id in &config.preload {
        let handle = store.preload(id);
        handle
            .await
            .map_err(|reason| Error::Preload { model: id.clone(), reason: reason.to_string() })?;
    }
    Ok(ActorHost::new(store, to_head)
        .with_mcp_policy(config.mcp.clone())
        .with_code_agents(config.code_agents.clone()))
}

async fn registration(config: &WorkerConfig) -> Result<Registration> {
    // Reading the models dir (sizes of whole folders) is blocking I/O: off the runtime.
    let models = match config.models_dir.clone() {
        Some(dir) => tokio::task::spawn_blocking(move || crate::models::scan(&dir))
            .await
            .map_err(|e| Error::Internal(format!("scanning the models dir panicked: {e}")))??,
        None => Vec::new(),
    };
    Ok(Registration {
        worker_id: config.worker_id.clone(),
        hostname: crate::resources::hostname(),
        resources: config.resources,
        labels: config.labels.clone(),
        models,
        slots: config.slots,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        mesh: None,
        incarnation: 0,
        running: Vec::new(),
        gpus: config.gpus.clone(),
        python_agents: config.code_agents.as_ref().map(|c| c.names()).unwrap_or_default(),
        protocol: fleet_proto::WORKER_PROTOCOL,
    })
}

/// One connection: returns Ok when the head ended the stream, Err when it failed.
#[allow(clippy::too_many_arguments)]
async fn session(
    endpoint: &Endpoint,
    url: &str,
    config: &WorkerConfig,
    registration: &Registration,
    host: &mut ActorHost,
    updates: &mut mpsc::Receiver<WorkerUpdate>,
    outbox: &Arc<Outbox>,
    sink: &EventSink,
    shutdown: &CancellationToken,
) -> Result<()> {
    // Until joined, a stop ends the session at once: with no head to tell, there is no
    // drain (tasks left from an earlier session are canceled, and run again elsewhere).
    let channel = tokio::select! {
        c = endpoint.connect() => c.map_err(|e| {
            Error::Unreachable(format!("{url}: {}", fleet_proto::endpoint::describe(&e)))
        })?,
        () = shutdown.cancelled() => return Ok(()),
    };
    let mut client = WorkerServiceClient::new(channel).max_decoding_message_size(64 << 20);

    let (heartbeat_tx, heartbeat_rx) = mpsc::channel::<Heartbeat>(4);
    let (update_tx, update_rx) = mpsc::channel::<WorkerUpdate>(1024);
    // What it runs, and what it has events of that the head may not have stored.
    let mut registration = registration.clone();
    let mut running = host.running_list();
    running.extend(outbox.tasks());
    registration.running = running.into_iter().collect();
    let first = pb::WorkerMessage::from(WorkerUpdate::Register(registration.clone()));
    // Events go up from the last one the head has, which the welcome says.
    let (resume_tx, resume_rx) = tokio::sync::oneshot::channel::<u64>();
    // Cancelled to end the stream up (after what waits in it), when the worker leaves.
    let closing = CancellationToken::new();
    let outbound = futures::stream::once(async move { first }).chain(upward(
        heartbeat_rx,
        update_rx,
        outbox.clone(),
        resume_rx,
        closing.clone(),
    ));

    let mut request = tonic::Request::new(outbound);
    if let Some(token) = &config.join_token {
        let value = fleet_proto::bearer(token)
            .parse()
            .map_err(|_| Error::InvalidConfig("the join token must be printable ASCII".into()))?;
        request.metadata_mut().insert(TOKEN_METADATA_KEY, value);
    }
    let joined = tokio::select! {
        joined = client.join(request) => joined,
        () = shutdown.cancelled() => return Ok(()),
    };
    let mut inbound = match joined {
        Ok(response) => response.into_inner(),
        Err(status)
            if status.code() == tonic::Code::Unauthenticated
                || status.code() == tonic::Code::InvalidArgument =>
        {
            return Err(Error::Rejected(status.message().to_owned()));
        }
        // A head older than this worker's protocol: another head may be upgraded already,
        // and this one will be; the worker retries (with the backoff) and says why.
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
            warn!(head = %url, "{}", status.message());
            return Err(Error::Unreachable(format!("{url}: {}", status.message())));
        }
        Err(status) => return Err(Error::Unreachable(format!("{url}: {}", status_text(&status)))),
    };
    let welcome = tokio::select! {
        welcome = inbound.message() => welcome,
        () = shutdown.cancelled() => return Ok(()),
    };
    let heartbeat_interval = match welcome {
        Ok(Some(pb::HeadMessage { kind: Some(pb::head_message::Kind::Welcome(w)) })) => {
            outbox.ack(w.resume_after);
            let _ = resume_tx.send(w.resume_after);
            Duration::from_millis(u64::from(w.heartbeat_interval_ms.max(10)))
        }
        Ok(_) => {
            return Err(Error::Protocol(
                "the head did not answer the registration with a welcome".into(),
            ));
        }
        Err(status) if status.code() == tonic::Code::Unauthenticated => {
            return Err(Error::Rejected(status.message().to_owned()));
        }
        Err(status) => return Err(Error::Unreachable(status_text(&status))),
    };
    info!(head = %url, worker_id = %registration.worker_id, waiting = outbox.len(), "joined the head");

    let mut ticker = heartbeat_ticker(heartbeat_interval);
    // Set once stopping: when the tasks still running are canceled.
    let mut drain_until: Option<tokio::time::Instant> = None;
    // Made once: a sleep made in the loop would start over with every message from the
    // head (an ack per batch of events), and a streaming task would hold off the deadline.
    let mut drain_check = tokio::time::interval(DRAIN_CHECK);
    // Checks in a row that found nothing left: a task leaves the running set just before
    // its last event reaches the outbox, so "nothing left" must hold twice.
    let mut idle_checks = 0;
    loop {
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(pb::HeadMessage { kind: Some(pb::head_message::Kind::Commands(batch)) })) => {
                    for command in batch.commands {
                        match Command::try_from(command) {
                            Ok(Command::Acked { up_to }) => outbox.ack(up_to),
                            Ok(Command::HeartbeatEvery(every)) => {
                                debug!(every_ms = every.as_millis(), "heartbeat interval changed");
                                ticker = heartbeat_ticker(every);
                            }
                            Ok(command) => host.handle(command, sink).await,
                            Err(e) => warn!(error = %e, "malformed command dropped"),
                        }
                    }
                }
                Ok(Some(_)) => debug!("unexpected message from the head ignored"),
                Ok(None) => return Ok(()),
                Err(status) => return Err(Error::Unreachable(status_text(&status))),
            },
            () = shutdown.cancelled(), if drain_until.is_none() => {
                let running = host.running_tasks();
                info!(running, drain_timeout_s = config.drain_timeout.as_secs(), "stopping: draining");
                drain_until = Some(tokio::time::Instant::now() + config.drain_timeout);
                let drain = WorkerUpdate::Drain { reason: "the worker is stopping".into() };
                if update_tx.send(drain).await.is_err() {
                    return Err(Error::Unreachable("the stream to the head closed".into()));
                }
            }
            _ = drain_check.tick(), if drain_until.is_some() => {
                let idle = host.running_tasks() == 0
                    && host.local_calls().calls_from_mesh() == 0
                    && sink.capacity() == sink.max_capacity()
                    && outbox.is_empty();
                idle_checks = if idle { idle_checks + 1 } else { 0 };
                if idle_checks >= 2 || drain_until.is_some_and(|t| tokio::time::Instant::now() >= t) {
                    break;
                }
            }
            _ = ticker.tick() => {
                if heartbeat_tx.try_send(heartbeat(host)).is_err() {
                    debug!("heartbeat skipped: the previous one is still waiting to be sent");
                }
            }
            Some(update) = updates.recv() => {
                // Waits when many updates are on their way up; their senders wait with them.
                if update_tx.send(update).await.is_err() {
                    return Err(Error::Unreachable("the stream to the head closed".into()));
                }
            }
        }
    }
    leave(host, closing, &mut inbound).await;
    Ok(())
}

/// Ends a drained session: ends the stream up (after the events ready to go) and waits,
/// briefly, for the head to close its side, so both ends see a clean close. Tasks still
/// running (the drain timed out) are canceled only after: their cancel events never reach
/// the head, which retries them on other workers as those of a worker that left.
async fn leave(
    host: &ActorHost,
    closing: CancellationToken,
    inbound: &mut tonic::Streaming<pb::HeadMessage>,
) {
    let left = host.running_tasks();
    if left > 0 {
        warn!(tasks = left, "drain timeout: leaving with tasks running; the head retries them");
    }
    closing.cancel();
    let closed = async { while let Ok(Some(_)) = inbound.message().await {} };
    let _ = tokio::time::timeout(LEAVE_GRACE, closed).await;
    host.cancel_all();
    info!("left the head");
}

/// What the stream up reads from.
struct Upward {
    heartbeats: mpsc::Receiver<Heartbeat>,
    updates: mpsc::Receiver<WorkerUpdate>,
    outbox: Arc<Outbox>,
    added: tokio::sync::watch::Receiver<u64>,
    /// Ends the stream, after what is ready to go up.
    closing: CancellationToken,
    /// Until the welcome: the number of the last event the head has.
    resume: Option<tokio::sync::oneshot::Receiver<u64>>,
    /// The number of the last event sent.
    cursor: u64,
}

/// The stream up: after the welcome, heartbeats and the mesh side's updates as they come,
/// and the outbox's events from the last one the head has, packed into one message so that
/// a burst of events costs a few frames rather than one each.
fn upward(
    heartbeats: mpsc::Receiver<Heartbeat>,
    updates: mpsc::Receiver<WorkerUpdate>,
    outbox: Arc<Outbox>,
    resume: tokio::sync::oneshot::Receiver<u64>,
    closing: CancellationToken,
) -> impl futures::Stream<Item = pb::WorkerMessage> + Send {
    let added = outbox.watch();
    let state =
        Upward { heartbeats, updates, outbox, added, closing, resume: Some(resume), cursor: 0 };
    futures::stream::unfold(state, |mut up| async move {
        if let Some(resume) = up.resume.take() {
            // No welcome: the connection failed and nothing goes up.
            up.cursor = resume.await.ok()?;
        }
        let message = tokio::select! {
            biased;
            Some(beat) = up.heartbeats.recv() => WorkerUpdate::Heartbeat(beat),
            Some(update) = up.updates.recv() => update,
            events = up.outbox.after(up.cursor, BATCH, &mut up.added) => {
                up.cursor = events.last()?.seq;
                WorkerUpdate::Events(events)
            }
            // Last in line: whatever was ready went up first.
            () = up.closing.cancelled() => return None,
        };
        Some((pb::WorkerMessage::from(message), up))
    })
}
