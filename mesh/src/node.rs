//! The swarm task: owns the libp2p swarm and every piece of per-peer state, and takes
//! [`Command`]s from the [`crate::Mesh`] handle.
//!
//! Asks go over the call streams of [`crate::calls`]; this task still answers calls that
//! arrive on the request-response protocol. Nothing here waits on the worker: such a call is
//! handed over through a bounded channel with a oneshot for the answer, and the libp2p
//! response channel waits in a map until that oneshot completes (polled alongside the
//! swarm). A 100 ms tick drives redials, the closing of connections whose peer never
//! identified itself or that nobody uses, held publishes and gap timeouts.
//!
//! Connections: a node stays connected to its few overlay neighbours ([`crate::overlay`]),
//! which carry the topics, and connects to any other listed peer when an ask needs it. A
//! connection no ask or call has used for the idle timeout is closed, and so are the
//! least recently used ones, sooner, when the node holds more than its bound.
//!
//! Topics: every node subscribes to one gossipsub topic, the carrier, and every topic
//! message travels on it with its topic inside, so a message reaches every node through the
//! overlay, each node forwarding it to a bounded number of neighbours (gossipsub's mesh), and
//! each node hands it to its own subscribers of the topic. Gossip per topic would need each
//! topic's subscribers to be neighbours; the carrier needs only the overlay to be connected.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use futures::{StreamExt, stream::FuturesUnordered};
use libp2p::{
    Multiaddr, PeerId, Swarm,
    core::ConnectedPoint,
    gossipsub::{self, IdentTopic, PublishError},
    identify, identity,
    request_response::{self, ResponseChannel},
    swarm::{
        ConnectionId, DialError, ListenError, SwarmEvent,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use parking_lot::RwLock;
use tokio::sync::{
    mpsc::{self, error::TrySendError},
    oneshot,
};

use crate::{
    IncomingCall, MeshConfig, MeshError, MeshRequest, MeshResponse, Result, TopicMessage,
    activity::Activity,
    behaviour::{MeshBehaviour, MeshBehaviourEvent, StackSettings, build_swarm},
    codec,
    counters::{self, Counters},
    messages::GossipFrame,
    overlay,
    reorder::Reorder,
};

const TICK: Duration = Duration::from_millis(100);
const REDIAL_FIRST: Duration = Duration::from_millis(250);
const REDIAL_MAX: Duration = Duration::from_secs(3);
/// After a peer is added, how long it may take to connect before its subscriptions are
/// taken as known.
const CONNECT_GRACE: Duration = Duration::from_secs(2);
/// After a peer connects, how long its subscriptions may take to arrive.
const SUBSCRIPTION_GRACE: Duration = Duration::from_secs(1);
/// How long a new connection may go without the peer identifying itself before it is
/// closed and redialed. Identify is one round trip; a connection that has not completed it
/// by then is stuck (an identify stream that failed is not retried for minutes), and the
/// peer would stay connected but never ready.
const IDENTIFY_GRACE: Duration = Duration::from_secs(3);
/// (topic, publisher) pairs whose messages a node numbers at most (see
/// [`MeshError::TooManyPublishers`]); with every node so bounded, so are the ordering streams
/// a subscriber keeps.
pub const MAX_PUBLISHERS: usize = 65_536;
/// How long a publish that found no remote subscriber waits for one while peers settle.
const PUBLISH_HOLD: Duration = Duration::from_secs(2);
/// After the listeners report their first address, how long to wait for the rest of a
/// wildcard listener's burst (one address per interface).
const LISTEN_SETTLE: Duration = Duration::from_millis(50);
/// The gossipsub topic every node subscribes to and every topic message travels on.
const CARRIER: &str = "/agentfleet/topics/1";
/// How long a connection must have gone unused before it is closed to keep the node under
/// its bound (sooner than the idle timeout).
const EVICT_AFTER: Duration = Duration::from_secs(1);

/// What the handle asks the swarm task to do.
/// The allow list a node is asked to take: only the latest matters, so it waits in one slot
/// (replaced by each `set_peers`) instead of queuing; [`Command::PeersChanged`] says to look.
pub(crate) type WantedPeers = Arc<parking_lot::Mutex<Option<Vec<(PeerId, Vec<Multiaddr>)>>>>;

/// How many commands wait for the node at most: those with an answer wait for room, so a
/// busy node slows its callers instead of queuing without bound.
pub(crate) const COMMAND_QUEUE: usize = 1024;

pub(crate) enum Command {
    PeersChanged,
    /// An ask waits for this peer: connect to it if not connected.
    Connect {
        peer: PeerId,
    },
    Publish {
        topic: String,
        publisher: String,
        body: String,
        reply: oneshot::Sender<Result<u64>>,
    },
    Subscribe {
        topic: String,
        sender: mpsc::Sender<TopicMessage>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<String>>,
    },
    Neighbours {
        reply: oneshot::Sender<Vec<String>>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// An allowed peer.
struct PeerState {
    addrs: Vec<Multiaddr>,
    /// An overlay neighbour: kept connected (dialed by the smaller peer id), never closed
    /// as idle.
    overlay: bool,
    /// Since when it has had a connection.
    connected_at: Option<Instant>,
    /// Open connections, each with whether it is the one both sides prefer (dialed by the
    /// smaller peer id).
    connections: Vec<(ConnectionId, bool)>,
    /// Set once the peer identified itself on a connection: it allows us too.
    ready_since: Option<Instant>,
    /// Since when the peer has had a connection without identifying itself on it.
    unidentified_since: Option<Instant>,
    /// Until then (or until it takes the carrier), this node's publishes wait for an overlay
    /// neighbour: published before it takes the carrier, a message would skip it.
    settling_until: Instant,
    /// Its subscription to the carrier has arrived: published messages go to it.
    on_carrier: bool,
    redial_at: Option<Instant>,
    backoff: Duration,
}

impl PeerState {
    fn new(addrs: Vec<Multiaddr>, now: Instant) -> Self {
        Self {
            addrs,
            overlay: false,
            connected_at: None,
            connections: Vec::new(),
            ready_since: None,
            unidentified_since: None,
            settling_until: now + CONNECT_GRACE,
            on_carrier: false,
            redial_at: None,
            backoff: REDIAL_FIRST,
        }
    }

    /// Whether this node (re)connects to the peer: an overlay neighbour whose link it dials,
    /// or a peer an ask of this node waits for.
    fn dials(&self, local_is_smaller: bool, asking: bool) -> bool {
        (self.overlay && local_is_smaller) || asking
    }

    fn schedule_redial(&mut self, now: Instant) {
        if self.redial_at.is_none() {
            self.redial_at = Some(now + self.backoff);
            self.backoff = (self.backoff * 2).min(REDIAL_MAX);
        }
    }
}

/// A publish that found no remote subscriber, held while peers settle.
struct HeldPublish {
    seq: u64,
    bytes: Vec<u8>,
    reply: oneshot::Sender<Result<u64>>,
    deadline: Instant,
}

/// The worker's answer to incoming call `id`. Also ends (with no answer) when its
/// `abandon` sender is dropped, which drops the receiver and so tells the worker, through
/// its reply sender, that nobody waits for the answer any more.
struct PendingReply {
    id: u64,
    answer: oneshot::Receiver<MeshResponse>,
    abandon: oneshot::Receiver<()>,
}

impl Future for PendingReply {
    type Output = (u64, Option<MeshResponse>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(answer) = Pin::new(&mut this.answer).poll(cx) {
            return Poll::Ready((this.id, answer.ok()));
        }
        Pin::new(&mut this.abandon).poll(cx).map(|_| (this.id, None))
    }
}

/// An incoming call handed to the worker.
struct InboundCall {
    peer: PeerId,
    channel: ResponseChannel<MeshResponse>,
    /// Dropped to abandon the [`PendingReply`].
    _abandon: oneshot::Sender<()>,
}

/// What the node shares with the handle and the call streams.
pub(crate) struct NodeShared {
    pub(crate) counters: Arc<Counters>,
    pub(crate) listen_addrs: Arc<RwLock<Vec<Multiaddr>>>,
    pub(crate) wanted_peers: WantedPeers,
    pub(crate) incoming: mpsc::Sender<IncomingCall>,
    pub(crate) activity: Arc<Activity>,
}

pub(crate) struct Node {
    swarm: Swarm<MeshBehaviour>,
    local: PeerId,
    local_name: String,
    /// This incarnation, sent with every topic message.
    epoch: u64,
    max_frame: usize,
    counters: Arc<Counters>,
    listen_addrs: Arc<RwLock<Vec<Multiaddr>>>,
    commands: mpsc::Receiver<Command>,
    wanted_peers: WantedPeers,
    incoming: mpsc::Sender<IncomingCall>,
    peers: HashMap<PeerId, PeerState>,
    /// What each peer's connection is used for.
    activity: Arc<Activity>,
    /// Connections the node keeps before closing idle ones early.
    max_peers: usize,
    idle_timeout: Duration,
    carrier: IdentTopic,
    /// Incoming calls handed to the worker, by local id.
    inbound: HashMap<u64, InboundCall>,
    next_inbound: u64,
    replies: FuturesUnordered<PendingReply>,
    publish_seq: HashMap<(String, String), u64>,
    held: HashMap<String, VecDeque<HeldPublish>>,
    subscribers: HashMap<String, Vec<mpsc::Sender<TopicMessage>>>,
    reorder: Reorder,
}

impl Node {
    /// A handle to open and accept the per-peer call streams.
    pub(crate) fn stream_control(&self) -> libp2p_stream::Control {
        self.swarm.behaviour().streams.new_control()
    }

    pub(crate) fn new(
        keypair: identity::Keypair,
        config: &MeshConfig,
        shared: NodeShared,
        commands: mpsc::Receiver<Command>,
    ) -> Result<Self> {
        let NodeShared { counters, listen_addrs, wanted_peers, incoming, activity } = shared;
        let settings = StackSettings {
            request_timeout: config.request_timeout,
            max_frame_bytes: config.max_frame_bytes,
            max_peers: config.max_peers,
        };
        let mut swarm = build_swarm(keypair, &settings, counters.clone())?;
        let carrier = IdentTopic::new(CARRIER);
        swarm
            .behaviour_mut()
            .gossip
            .subscribe(&carrier)
            .map_err(|e| MeshError::Start(format!("cannot subscribe to the topic carrier: {e}")))?;
        let local = *swarm.local_peer_id();
        let epoch = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or_default();
        Ok(Self {
            swarm,
            local,
            local_name: local.to_string(),
            epoch,
            max_frame: config.max_frame_bytes,
            counters,
            listen_addrs,
            commands,
            wanted_peers,
            incoming,
            peers: HashMap::new(),
            activity,
            max_peers: config.max_peers,
            idle_timeout: config.idle_timeout,
            carrier,
            inbound: HashMap::new(),
            next_inbound: 0,
            replies: FuturesUnordered::new(),
            publish_seq: HashMap::new(),
            held: HashMap::new(),
            subscribers: HashMap::new(),
            reorder: Reorder::new(config.gap_timeout),
        })
    }

    /// Starts the listeners and waits until each has reported an address.
    pub(crate) async fn listen(&mut self, addrs: Vec<(String, Multiaddr)>) -> Result<()> {
        let mut pending = HashMap::new();
        for (text, addr) in addrs {
            let id = self
                .swarm
                .listen_on(addr)
                .map_err(|e| MeshError::Listen { addr: text.clone(), reason: e.to_string() })?;
            pending.insert(id, text);
        }
        while !pending.is_empty() {
            match self.swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { listener_id, address } => {
                    pending.remove(&listener_id);
                    self.listen_addrs.write().push(address);
                }
                SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                    if let Some(addr) = pending.remove(&listener_id) {
                        let reason = match reason {
                            Ok(()) => "the listener closed".to_string(),
                            Err(e) => e.to_string(),
                        };
                        return Err(MeshError::Listen { addr, reason });
                    }
                }
                SwarmEvent::ListenerError { listener_id, error } => {
                    if let Some(addr) = pending.remove(&listener_id) {
                        return Err(MeshError::Listen { addr, reason: error.to_string() });
                    }
                }
                event => self.on_swarm_event(event),
            }
        }
        while let Ok(event) =
            tokio::time::timeout(LISTEN_SETTLE, self.swarm.select_next_some()).await
        {
            self.on_swarm_event(event);
        }
        Ok(())
    }

    pub(crate) async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { done }) => {
                        self.stop();
                        // Drop the swarm (closing every connection) before saying it is done.
                        drop(self);
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => self.on_command(command),
                    // Every handle is gone.
                    None => return self.stop(),
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some((id, answer)) = self.replies.next(), if !self.replies.is_empty() => {
                    self.on_reply(id, answer);
                }
                _ = tick.tick() => self.on_tick(Instant::now()),
            }
        }
    }

    fn stop(&mut self) {
        for (_, queue) in self.held.drain() {
            for held in queue {
                let _ = held.reply.send(Err(MeshError::Stopped));
            }
        }
        tracing::info!(peer_id = %self.local, "mesh node stopped");
    }

    fn on_command(&mut self, command: Command) {
        let now = Instant::now();
        // Whatever the command, a new allow list goes first: its nudge may not have fit in
        // a full queue, and a command after it (an ask's wait for its peer) expects it.
        let wanted = self.wanted_peers.lock().take();
        if let Some(peers) = wanted {
            self.set_peers(peers, now);
        }
        match command {
            Command::PeersChanged => {}
            Command::Connect { peer } => {
                if self.peers.get(&peer).is_some_and(|state| state.connections.is_empty()) {
                    self.dial(peer, now);
                }
            }
            Command::Publish { topic, publisher, body, reply } => {
                self.publish(topic, publisher, body, reply, now);
            }
            Command::Subscribe { topic, sender } => self.subscribe(topic, sender),
            Command::ConnectedPeers { reply } => {
                let ready = self
                    .peers
                    .iter()
                    .filter(|(_, state)| state.ready_since.is_some())
                    .map(|(peer, _)| peer.to_string())
                    .collect();
                let _ = reply.send(ready);
            }
            Command::Neighbours { reply } => {
                let neighbours = self
                    .peers
                    .iter()
                    .filter(|(_, state)| state.overlay)
                    .map(|(peer, _)| peer.to_string())
                    .collect();
                let _ = reply.send(neighbours);
            }
            // Handled by the loop, which has to end.
            Command::Shutdown { done } => {
                let _ = done.send(());
            }
        }
    }

    // ---- peers and connections ----

    fn set_peers(&mut self, peers: Vec<(PeerId, Vec<Multiaddr>)>, now: Instant) {
        let wanted: HashMap<PeerId, Vec<Multiaddr>> =
            peers.into_iter().filter(|(peer, _)| *peer != self.local).collect();
        let removed: Vec<PeerId> =
            self.peers.keys().filter(|peer| !wanted.contains_key(peer)).copied().collect();
        for peer in removed {
            self.remove_peer(peer);
        }
        let neighbours =
            overlay::neighbours(self.local, wanted.keys().copied(), overlay::cap(self.max_peers));
        let mut to_dial = Vec::new();
        for (peer, addrs) in wanted {
            let is_new = !self.peers.contains_key(&peer);
            if is_new {
                self.swarm.behaviour_mut().allow.allow_peer(peer);
            }
            let state =
                self.peers.entry(peer).or_insert_with(|| PeerState::new(addrs.clone(), now));
            let moved = state.addrs != addrs;
            state.addrs = addrs;
            state.overlay = neighbours.contains(&peer);
            // One connection per pair: only the smaller peer id dials an overlay link (asks
            // dial whoever asks; a crossing pair of dials keeps the one both ends prefer).
            if state.connections.is_empty()
                && (moved || state.redial_at.is_none())
                && state.dials(self.local < peer, self.activity.is_asking(&peer))
            {
                to_dial.push(peer);
            }
        }
        for peer in to_dial {
            self.dial(peer, now);
        }
        tracing::info!(peers = self.peers.len(), neighbours = neighbours.len(), "peer list set");
    }

    fn remove_peer(&mut self, peer: PeerId) {
        // Also closes every connection to it.
        self.swarm.behaviour_mut().allow.disallow_peer(peer);
        if self.peers.remove(&peer).is_none() {
            return;
        }
        tracing::info!(%peer, "peer removed from the peer list");
    }

    fn dial(&mut self, peer: PeerId, now: Instant) {
        let Some(state) = self.peers.get_mut(&peer) else { return };
        state.redial_at = None;
        if state.addrs.is_empty() {
            tracing::warn!(%peer, "no address to dial the peer at; waiting for it to dial us");
            return;
        }
        // From a port of its own, not the listening one (libp2p's default, for NAT hole
        // punching, which a cluster does not need): a dial socket bound to the listening
        // port failed with "address already in use" on every retry in CI, so the peer never
        // connected.
        let opts = DialOpts::peer_id(peer)
            .addresses(state.addrs.clone())
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .allocate_new_port()
            .build();
        match self.swarm.dial(opts) {
            Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {}
            Err(error) => {
                tracing::warn!(%peer, %error, "cannot dial peer; retrying");
                state.schedule_redial(now);
            }
        }
    }

    fn on_connected(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        endpoint: &ConnectedPoint,
        now: Instant,
    ) {
        let local_is_smaller = self.local < peer;
        // Not allowed: the allow list closes it.
        let Some(state) = self.peers.get_mut(&peer) else { return };
        state.redial_at = None;
        state.connected_at.get_or_insert(now);
        if state.ready_since.is_none() && state.unidentified_since.is_none() {
            state.unidentified_since = Some(now);
        }
        state.connections.push((connection, endpoint.is_dialer() == local_is_smaller));
        if state.connections.len() > 1 {
            // Both sides dialed after all (e.g. a redial crossing an incoming connection).
            // Keep the one both ends prefer, so each closes the same one.
            let keep = state
                .connections
                .iter()
                .find(|(_, preferred)| *preferred)
                .or(state.connections.first())
                .map(|(id, _)| *id);
            for (id, _) in &state.connections {
                if Some(*id) != keep {
                    tracing::debug!(%peer, connection = %id, "closing a duplicate connection");
                    self.swarm.close_connection(*id);
                }
            }
        }
    }

    fn on_disconnected(&mut self, peer: PeerId, connection: ConnectionId, now: Instant) {
        let local_is_smaller = self.local < peer;
        let asking = self.activity.is_asking(&peer);
        let Some(state) = self.peers.get_mut(&peer) else { return };
        state.connections.retain(|(id, _)| *id != connection);
        if !state.connections.is_empty() {
            return;
        }
        state.unidentified_since = None;
        state.connected_at = None;
        state.on_carrier = false;
        if state.ready_since.take().is_some() {
            tracing::debug!(%peer, "peer disconnected");
        }
        if state.dials(local_is_smaller, asking) {
            state.schedule_redial(now);
        } else {
            self.activity.forget(&peer);
        }
    }

    fn on_identified(&mut self, peer: PeerId, now: Instant) {
        let Some(state) = self.peers.get_mut(&peer) else { return };
        if state.ready_since.is_none() && !state.connections.is_empty() {
            state.ready_since = Some(now);
            state.unidentified_since = None;
            state.settling_until = now + SUBSCRIPTION_GRACE;
            state.backoff = REDIAL_FIRST;
            tracing::info!(%peer, "peer connected");
        }
    }

    /// A peer that could not identify itself on a new connection would stay connected but
    /// never ready (identify retries only every few minutes): the connection is closed, and
    /// the side that dials redials.
    fn on_identify_failed(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        error: &impl std::fmt::Display,
    ) {
        let Some(state) = self.peers.get(&peer) else { return };
        if state.ready_since.is_some() {
            tracing::debug!(%peer, %error, "a periodic identify failed");
            return;
        }
        tracing::warn!(%peer, %error, "the peer did not identify itself on a new connection; closing it to connect again");
        self.swarm.close_connection(connection);
    }

    /// Closes the connections of peers that have been connected for [`IDENTIFY_GRACE`]
    /// without identifying themselves (see [`Self::on_identify_failed`]).
    fn close_unidentified(&mut self, now: Instant) {
        let stuck: Vec<PeerId> = self
            .peers
            .iter_mut()
            .filter(|(_, s)| s.unidentified_since.is_some_and(|at| now >= at + IDENTIFY_GRACE))
            .map(|(peer, state)| {
                state.unidentified_since = None;
                *peer
            })
            .collect();
        for peer in stuck {
            tracing::warn!(%peer, grace = ?IDENTIFY_GRACE, "connected but not identified in time; closing the connection to connect again");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Closes the connections nobody uses: an overlay link is always kept, and so is a
    /// connection with an ask waiting on it or a call being answered; the others close once
    /// idle for the idle timeout, or, while the node holds more than `max_peers`, the least
    /// recently used ones that have been idle for a moment.
    fn close_unused(&mut self, now: Instant) {
        let answering: HashSet<PeerId> = self.inbound.values().map(|call| call.peer).collect();
        let mut connected = 0;
        let mut idle = Vec::new();
        let mut evictable = Vec::new();
        for (peer, state) in &self.peers {
            let Some(connected_at) = state.connected_at else { continue };
            connected += 1;
            if state.overlay || answering.contains(peer) {
                continue;
            }
            if self.activity.idle_for(peer, connected_at, now, self.idle_timeout) {
                idle.push(*peer);
            } else if let Some(last) = self.activity.last_use(peer, connected_at)
                && now >= last + EVICT_AFTER
            {
                evictable.push((last, *peer));
            }
        }
        let over = (connected - idle.len()).saturating_sub(self.max_peers);
        evictable.sort_unstable();
        let evicted = evictable.into_iter().take(over).map(|(_, peer)| peer);
        let closing: Vec<PeerId> = idle.into_iter().chain(evicted).collect();
        for peer in closing {
            tracing::debug!(%peer, "closing an unused connection");
            counters::add(&self.counters.connections_closed, 1);
            let _ = self.swarm.disconnect_peer_id(peer);
            // Not counted again while it closes.
            if let Some(state) = self.peers.get_mut(&peer) {
                state.connected_at = None;
            }
        }
    }

    // ---- incoming calls ----

    fn on_request(
        &mut self,
        peer: PeerId,
        request: MeshRequest,
        channel: ResponseChannel<MeshResponse>,
    ) {
        let call = match request {
            MeshRequest::Ping => return self.respond(peer, channel, MeshResponse::Pong),
            MeshRequest::Call(call) => call,
        };
        counters::add(&self.counters.calls_received, 1);
        match IncomingCall::offer(&self.incoming, &peer, call) {
            Ok(answer) => {
                let id = self.next_inbound;
                self.next_inbound += 1;
                let (abandon_tx, abandon) = oneshot::channel();
                self.inbound.insert(id, InboundCall { peer, channel, _abandon: abandon_tx });
                self.replies.push(PendingReply { id, answer, abandon });
            }
            Err(refusal) => self.respond(peer, channel, refusal),
        }
    }

    fn on_reply(&mut self, id: u64, answer: Option<MeshResponse>) {
        // Absent when the caller stopped waiting (swept on the tick).
        let Some(InboundCall { peer, channel, .. }) = self.inbound.remove(&id) else { return };
        let response = match answer {
            Some(response) => match codec::encoded_len(&response) {
                Ok(len) if len <= self.max_frame => response,
                Ok(len) => MeshResponse::Refused {
                    reason: format!(
                        "the answer of {len} bytes is over the {}-byte frame limit",
                        self.max_frame
                    ),
                },
                Err(e) => MeshResponse::Refused { reason: e.to_string() },
            },
            None => MeshResponse::Refused {
                reason: "the called node dropped the call without answering".into(),
            },
        };
        self.respond(peer, channel, response);
    }

    fn respond(
        &mut self,
        peer: PeerId,
        channel: ResponseChannel<MeshResponse>,
        response: MeshResponse,
    ) {
        if self.swarm.behaviour_mut().call.send_response(channel, response).is_err() {
            tracing::debug!(%peer, "the caller stopped waiting before the answer");
        }
    }

    fn on_call_event(&mut self, event: request_response::Event<MeshRequest, MeshResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.on_request(peer, request, channel);
                }
                // This node asks over the call streams (`crate::calls`), never here.
                request_response::Message::Response { .. } => {}
            },
            request_response::Event::OutboundFailure { .. } => {}
            request_response::Event::InboundFailure { peer, error, .. } => match error {
                request_response::InboundFailure::Io(error)
                    if error.kind() == std::io::ErrorKind::InvalidInput =>
                {
                    tracing::warn!(%peer, %error, "could not send an answer");
                }
                request_response::InboundFailure::Timeout => {
                    tracing::info!(%peer, "an incoming call was not answered within the request timeout");
                }
                error => tracing::debug!(%peer, %error, "incoming call failed"),
            },
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    // ---- topics ----

    /// Subscribes locally: the node takes every topic's messages (on the carrier) already.
    fn subscribe(&mut self, topic: String, sender: mpsc::Sender<TopicMessage>) {
        self.subscribers.entry(topic).or_default().push(sender);
    }

    fn publish(
        &mut self,
        topic: String,
        publisher: String,
        body: String,
        reply: oneshot::Sender<Result<u64>>,
        now: Instant,
    ) {
        let key = (topic, publisher);
        // Each pair's numbering is kept for good (subscribers order by it), so new pairs are
        // what is bounded: clients choose publisher names.
        if !self.publish_seq.contains_key(&key) && self.publish_seq.len() >= MAX_PUBLISHERS {
            let _ = reply.send(Err(MeshError::TooManyPublishers { limit: MAX_PUBLISHERS }));
            return;
        }
        let seq = self.publish_seq.get(&key).copied().unwrap_or(0) + 1;
        let (topic, publisher) = key;
        let frame = GossipFrame {
            epoch: self.epoch,
            message: TopicMessage { topic, publisher, seq, body, node: self.local_name.clone() },
        };
        let bytes = match codec::encode(&frame, self.max_frame) {
            Ok(bytes) => bytes,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let message = frame.message;
        self.publish_seq.insert((message.topic.clone(), message.publisher.clone()), seq);
        counters::add(&self.counters.messages_published, 1);
        let topic = message.topic.clone();
        self.deliver(message);

        let held = HeldPublish { seq, bytes, reply, deadline: now + PUBLISH_HOLD };
        match self.held.get_mut(&topic) {
            // Behind earlier held messages, to keep publishing order.
            Some(queue) => queue.push_back(held),
            None => {
                if let Some(held) = self.publish_remote(&topic, held, now) {
                    self.held.insert(topic, VecDeque::from([held]));
                }
            }
        }
    }

    /// Hands a message to gossipsub. Returns it when it should be held for subscribers that
    /// may still appear; otherwise the publisher has its answer.
    fn publish_remote(
        &mut self,
        topic: &str,
        held: HeldPublish,
        now: Instant,
    ) -> Option<HeldPublish> {
        // A neighbour that is connecting would miss the message (flood publishing sends it
        // to the peers on the carrier now; forwarding to it waits for gossipsub's mesh).
        let settling =
            self.peers.values().any(|p| p.overlay && !p.on_carrier && now < p.settling_until);
        if settling && now < held.deadline {
            return Some(held);
        }
        let carrier = self.carrier.clone();
        let result = self.swarm.behaviour_mut().gossip.publish(carrier, held.bytes.clone());
        let seq = held.seq;
        let outcome = match result {
            Ok(_) => Ok(seq),
            Err(PublishError::NoPeersSubscribedToTopic) => {
                Err(MeshError::NoSubscribers { topic: topic.to_string(), seq })
            }
            Err(PublishError::MessageTooLarge) => Err(MeshError::Codec(format!(
                "message {seq} on topic {topic} is too large for gossipsub once framed"
            ))),
            Err(error) => {
                tracing::warn!(%topic, seq, %error, "gossipsub did not take a message");
                Err(MeshError::Publish { topic: topic.to_string(), seq, reason: error.to_string() })
            }
        };
        let _ = held.reply.send(outcome);
        None
    }

    /// Retries a topic's held messages in order.
    fn flush_held(&mut self, topic: &str, now: Instant) {
        let Some(mut queue) = self.held.remove(topic) else { return };
        while let Some(held) = queue.pop_front() {
            if let Some(held) = self.publish_remote(topic, held, now) {
                queue.push_front(held);
                break;
            }
        }
        if !queue.is_empty() {
            self.held.insert(topic.to_string(), queue);
        }
    }

    fn on_gossip_message(&mut self, message: gossipsub::Message, now: Instant) {
        // Strict validation guarantees a signed source.
        let Some(source) = message.source else { return };
        if !self.peers.contains_key(&source) {
            // Forwarded by a peer from a node we do not list (peer lists differ for a moment).
            tracing::debug!(node = %source, "dropping a topic message from a node not in the peer list");
            return;
        }
        if message.topic != self.carrier.hash() {
            tracing::debug!(node = %source, topic = %message.topic, "dropping a gossip message off the carrier");
            return;
        }
        let mut frame: GossipFrame = match codec::decode(&message.data, self.max_frame) {
            Ok(frame) => frame,
            Err(error) => return self.reject_gossip(source, &error.to_string()),
        };
        if !self.subscribers.contains_key(&frame.message.topic) {
            return;
        }
        frame.message.node = source.to_string();
        counters::add(&self.counters.messages_received, 1);
        let mut ready = Vec::new();
        let skipped = self.reorder.accept(frame.epoch, frame.message, now, &mut ready);
        counters::add(&self.counters.gaps_skipped, skipped);
        for message in ready {
            self.deliver(message);
        }
    }

    fn reject_gossip(&self, source: PeerId, reason: &str) {
        counters::add(&self.counters.frames_rejected, 1);
        tracing::warn!(node = %source, %reason, "dropping a malformed topic message");
    }

    /// Hands a message to this node's subscribers of its topic.
    fn deliver(&mut self, message: TopicMessage) {
        let Some(senders) = self.subscribers.get_mut(&message.topic) else { return };
        let counters = &self.counters;
        senders.retain(|sender| match sender.try_send(message.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                counters::add(&counters.messages_dropped, 1);
                tracing::warn!(topic = %message.topic, seq = message.seq, "a subscriber is not keeping up; dropping a message for it");
                true
            }
            Err(TrySendError::Closed(_)) => false,
        });
        if senders.is_empty() {
            self.unsubscribe(&message.topic);
        }
    }

    fn unsubscribe(&mut self, topic: &str) {
        self.subscribers.remove(topic);
        self.reorder.forget_topic(topic);
    }

    fn on_gossip_event(&mut self, event: gossipsub::Event, now: Instant) {
        match event {
            gossipsub::Event::Message { message, .. } => self.on_gossip_message(message, now),
            gossipsub::Event::Subscribed { peer_id, topic, .. } => {
                tracing::debug!(peer = %peer_id, %topic, "peer subscribed");
                if topic == self.carrier.hash()
                    && let Some(state) = self.peers.get_mut(&peer_id)
                {
                    state.on_carrier = true;
                }
                // A peer that takes topic messages: held ones can go.
                let held: Vec<String> = self.held.keys().cloned().collect();
                for topic in held {
                    self.flush_held(&topic, now);
                }
            }
            gossipsub::Event::Unsubscribed { peer_id, topic } => {
                tracing::debug!(peer = %peer_id, %topic, "peer unsubscribed");
                if topic == self.carrier.hash()
                    && let Some(state) = self.peers.get_mut(&peer_id)
                {
                    state.on_carrier = false;
                }
            }
            gossipsub::Event::GossipsubNotSupported { peer_id } => {
                tracing::warn!(peer = %peer_id, "peer does not speak gossipsub; it gets no topic messages");
            }
            gossipsub::Event::SlowPeer { peer_id, failed_messages } => {
                tracing::warn!(
                    peer = %peer_id,
                    priority = failed_messages.priority,
                    non_priority = failed_messages.non_priority,
                    "topic messages to a slow peer were dropped"
                );
            }
        }
    }

    // ---- swarm events and the tick ----

    fn on_swarm_event(&mut self, event: SwarmEvent<MeshBehaviourEvent>) {
        let now = Instant::now();
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::debug!(%address, "listening");
                self.listen_addrs.write().push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.write().retain(|a| *a != address);
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                self.on_connected(peer_id, connection_id, &endpoint, now);
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, .. } => {
                self.on_disconnected(peer_id, connection_id, now);
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } => {
                let (local_is_smaller, asking) =
                    (self.local < peer, self.activity.is_asking(&peer));
                if let Some(state) = self.peers.get_mut(&peer)
                    && state.connections.is_empty()
                    && state.dials(local_is_smaller, asking)
                {
                    tracing::debug!(%peer, %error, "dialing peer failed; retrying");
                    state.schedule_redial(now);
                }
            }
            SwarmEvent::IncomingConnectionError { peer_id, error, send_back_addr, .. } => {
                if matches!(error, ListenError::Denied { .. }) {
                    tracing::info!(peer = ?peer_id, from = %send_back_addr, "refused a connection from a node not in the peer list");
                } else {
                    tracing::debug!(peer = ?peer_id, %error, "incoming connection failed");
                }
            }
            SwarmEvent::Behaviour(MeshBehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                ..
            })) => self.on_identified(peer_id, now),
            SwarmEvent::Behaviour(MeshBehaviourEvent::Identify(identify::Event::Error {
                peer_id,
                connection_id,
                error,
            })) => self.on_identify_failed(peer_id, connection_id, &error),
            SwarmEvent::Behaviour(MeshBehaviourEvent::Call(event)) => self.on_call_event(event),
            SwarmEvent::Behaviour(MeshBehaviourEvent::Gossip(event)) => {
                self.on_gossip_event(event, now);
            }
            _ => {}
        }
    }

    fn on_tick(&mut self, now: Instant) {
        let mut due = Vec::new();
        for (peer, state) in &mut self.peers {
            if !state.connections.is_empty() || state.redial_at.is_none_or(|at| at > now) {
                continue;
            }
            if state.dials(self.local < *peer, self.activity.is_asking(peer)) {
                due.push(*peer);
            } else {
                // Nobody needs it any more (the ask gave up, or it left the overlay).
                state.redial_at = None;
                state.backoff = REDIAL_FIRST;
            }
        }
        for peer in due {
            self.dial(peer, now);
        }
        self.close_unidentified(now);
        self.close_unused(now);

        let held: Vec<String> = self.held.keys().cloned().collect();
        for topic in held {
            self.flush_held(&topic, now);
        }

        let mut ready = Vec::new();
        let expired = self.reorder.expire(now, &mut ready);
        counters::add(&self.counters.gaps_skipped, expired.skipped);
        for message in ready {
            self.deliver(message);
        }

        // Calls whose caller stopped waiting (timeout, disconnect) cannot be answered:
        // dropping them closes the worker's reply sender.
        self.inbound.retain(|_, call| call.channel.is_open());
        let gone: Vec<String> = self
            .subscribers
            .iter_mut()
            .filter_map(|(topic, senders)| {
                senders.retain(|s| !s.is_closed());
                senders.is_empty().then(|| topic.clone())
            })
            .collect();
        for topic in gone {
            self.unsubscribe(&topic);
        }
    }
}
