//! The public handle of a mesh node: [`Mesh`] and what goes in and out of it.
//!
//! The swarm lives in one spawned task ([`crate::node`]); every method here sends it a
//! command, so a `Mesh` is cheap to clone and never blocks on the network.

use std::{collections::HashMap, str::FromStr, sync::Arc, time::Duration};

use libp2p::{Multiaddr, PeerId, identity::Keypair, multiaddr::Protocol};
use parking_lot::RwLock;
use tokio::sync::{mpsc, oneshot};

use crate::activity::Activity;
use crate::calls::Calls;
use crate::{
    AgentCall, MeshError, MeshRequest, MeshResponse, Result, TopicMessage,
    codec::MAX_FRAME_CEILING,
    counters::{Counters, MeshCounters},
    node::{COMMAND_QUEUE, Command, Node, NodeShared, WantedPeers},
};

/// How a mesh node is set up. Start from `MeshConfig::default()` and change what you need.
#[derive(Clone)]
pub struct MeshConfig {
    /// Multiaddrs to listen on; `/ip4/0.0.0.0/tcp/0` by default (every interface, any port).
    pub listen: Vec<String>,
    /// How long an ask may wait for a connection, and then for its answer; also how long
    /// this node keeps an incoming call open for the worker's reply. Default 30 s.
    pub request_timeout: Duration,
    /// Largest encoded ask, answer or topic message. Default 4 MiB; every node of a cluster
    /// should use the same value.
    pub max_frame_bytes: usize,
    /// The node's identity; a fresh ed25519 key when `None`.
    pub keypair: Option<Keypair>,
    /// Incoming calls waiting for the worker; more are refused as busy. Default 1024.
    pub incoming_capacity: usize,
    /// Messages waiting per subscriber; more are dropped (counted and logged). Default 4096.
    pub subscription_capacity: usize,
    /// How long a missing topic message is waited for before the ones after it are
    /// delivered anyway. Default 2 s.
    pub gap_timeout: Duration,
    /// Connections the node keeps: its overlay links (about 2·ln of the peers) and the
    /// ones its asks and calls use. Past it, the least recently used idle ones close within
    /// a second or so; a node never holds more than twice it (further connections are
    /// refused until some close). At least 4; default 64.
    pub max_peers: usize,
    /// How long a connection made for asks stays open unused. Default 60 s.
    pub idle_timeout: Duration,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            listen: vec!["/ip4/0.0.0.0/tcp/0".to_string()],
            request_timeout: Duration::from_secs(30),
            max_frame_bytes: 4 * 1024 * 1024,
            keypair: None,
            incoming_capacity: 1024,
            subscription_capacity: 4096,
            gap_timeout: Duration::from_secs(2),
            max_peers: 64,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl std::fmt::Debug for MeshConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the keypair: only whether there is one.
        f.debug_struct("MeshConfig")
            .field("listen", &self.listen)
            .field("request_timeout", &self.request_timeout)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("keypair", &self.keypair.as_ref().map(|k| k.public().to_peer_id()))
            .field("incoming_capacity", &self.incoming_capacity)
            .field("subscription_capacity", &self.subscription_capacity)
            .field("gap_timeout", &self.gap_timeout)
            .field("max_peers", &self.max_peers)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl MeshConfig {
    fn validate(&self) -> Result<()> {
        let fail = |what: String| Err(MeshError::Config(what));
        if self.listen.is_empty() {
            return fail("no listen address".into());
        }
        if self.request_timeout.is_zero() {
            return fail("request_timeout is zero".into());
        }
        if self.max_frame_bytes == 0 || self.max_frame_bytes > MAX_FRAME_CEILING {
            return fail(format!(
                "max_frame_bytes is {}; it must be between 1 and {MAX_FRAME_CEILING}",
                self.max_frame_bytes
            ));
        }
        if self.incoming_capacity == 0 || self.subscription_capacity == 0 {
            return fail("incoming_capacity and subscription_capacity must be at least 1".into());
        }
        if self.max_peers < 4 {
            return fail(format!("max_peers is {}; it must be at least 4", self.max_peers));
        }
        if self.idle_timeout.is_zero() {
            return fail("idle_timeout is zero".into());
        }
        Ok(())
    }
}

/// A call from another worker, for the worker that owns the receiver to answer.
#[derive(Debug)]
pub struct IncomingCall {
    /// Peer id of the calling node.
    pub from: String,
    /// The call.
    pub call: AgentCall,
    /// Where the answer goes. Dropping it without sending answers the caller with
    /// [`MeshResponse::Refused`]. It closes (see `oneshot::Sender::closed`) once the caller
    /// has stopped waiting (request timeout or disconnect), so the work can be cancelled.
    pub reply: oneshot::Sender<MeshResponse>,
}

impl IncomingCall {
    /// Hands a call from `peer` to the worker without waiting: its answer's receiver, or at
    /// once the refusal to send back when the worker's queue is full (busy: the caller may
    /// retry, elsewhere or later) or gone. Never waiting keeps one busy worker from holding
    /// up a stream that also carries cancels and asks for its other agents.
    pub(crate) fn offer(
        incoming: &mpsc::Sender<IncomingCall>,
        peer: &PeerId,
        call: AgentCall,
    ) -> std::result::Result<oneshot::Receiver<MeshResponse>, MeshResponse> {
        let (reply, answer) = oneshot::channel();
        match incoming.try_send(IncomingCall { from: peer.to_string(), call, reply }) {
            Ok(()) => Ok(answer),
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%peer, "refusing a call: the queue of incoming calls is full");
                Err(MeshResponse::Refused {
                    reason: "the called node is busy (its queue of incoming calls is full); \
                             retry later"
                        .into(),
                })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(MeshResponse::Refused { reason: "the called node does not take calls".into() })
            }
        }
    }
}

/// A worker this node may talk to, as the head lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its peer id (base58, as [`Mesh::peer_id`] gives it).
    pub peer_id: String,
    /// Multiaddrs it listens on (as its [`Mesh::listen_addrs`] gives them); a trailing
    /// `/p2p/<peer id>` is accepted.
    pub addrs: Vec<String>,
}

/// A running mesh node. Clones share the node; it stops on [`Mesh::shutdown`] or when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Mesh {
    shared: Arc<Shared>,
}

struct Shared {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    wanted_peers: WantedPeers,
    /// The allow list as the last `set_peers` or `change_peers` left it, parsed.
    members: parking_lot::Mutex<HashMap<PeerId, Vec<Multiaddr>>>,
    counters: Arc<Counters>,
    listen_addrs: Arc<RwLock<Vec<Multiaddr>>>,
    subscription_capacity: usize,
    calls: Arc<Calls>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh").field("peer_id", &self.shared.peer_id).finish_non_exhaustive()
    }
}

/// How long `start` waits for the listeners to report their addresses.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

impl Mesh {
    /// Starts a node: binds the listen addresses and spawns the swarm task. Returns once
    /// every listener has an address, with the receiver of incoming calls.
    pub async fn start(config: MeshConfig) -> Result<(Mesh, mpsc::Receiver<IncomingCall>)> {
        config.validate()?;
        let keypair = config.keypair.clone().unwrap_or_else(Keypair::generate_ed25519);
        let peer_id = keypair.public().to_peer_id();
        let counters = Arc::new(Counters::default());
        let listen_addrs = Arc::new(RwLock::new(Vec::new()));
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let wanted_peers = WantedPeers::default();
        let (incoming, incoming_rx) = mpsc::channel(config.incoming_capacity);
        let activity = Arc::new(Activity::default());

        let shared = NodeShared {
            counters: counters.clone(),
            listen_addrs: listen_addrs.clone(),
            wanted_peers: wanted_peers.clone(),
            incoming: incoming.clone(),
            activity: activity.clone(),
        };
        let mut node = Node::new(keypair, &config, shared, command_rx)?;
        let calls = Calls::new(
            node.stream_control(),
            incoming,
            counters.clone(),
            activity,
            config.max_frame_bytes,
            config.request_timeout,
        )?;
        let mut listen = Vec::new();
        for addr in &config.listen {
            let parsed = Multiaddr::from_str(addr)
                .map_err(|e| MeshError::Listen { addr: addr.clone(), reason: e.to_string() })?;
            listen.push((addr.clone(), parsed));
        }
        tokio::time::timeout(LISTEN_TIMEOUT, node.listen(listen)).await.map_err(|_| {
            MeshError::Listen {
                addr: config.listen.join(", "),
                reason: format!("no listen address reported within {LISTEN_TIMEOUT:?}"),
            }
        })??;
        tracing::info!(%peer_id, addrs = ?listen_addrs.read(), "mesh node listening");
        tokio::spawn(node.run());

        let shared = Shared {
            peer_id,
            commands,
            wanted_peers,
            members: parking_lot::Mutex::default(),
            counters,
            listen_addrs,
            subscription_capacity: config.subscription_capacity,
            calls,
        };
        Ok((Mesh { shared: Arc::new(shared) }, incoming_rx))
    }

    /// Connects to `peer` unless connected already, and waits until it is (false if the
    /// node stopped first, or the peer was taken off the list); the caller bounds the wait.
    async fn connected(&self, peer: PeerId) -> bool {
        if self.send(Command::Connect { peer }).await.is_err() {
            return false;
        }
        let listed = peer;
        let peer = peer.to_string();
        loop {
            // A peer taken off the list will not be connected: stop waiting for it.
            if !self.shared.calls.allows(&listed) {
                return false;
            }
            let (reply, answer) = oneshot::channel();
            if self.send(Command::ConnectedPeers { reply }).await.is_err() {
                return false;
            }
            match answer.await {
                Ok(peers) if peers.contains(&peer) => return true,
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(_) => return false,
            }
        }
    }

    /// This node's peer id (base58).
    pub fn peer_id(&self) -> String {
        self.shared.peer_id.to_string()
    }

    /// The addresses the node listens on, ports resolved; a wildcard listener shows one
    /// address per interface as libp2p reports them.
    pub fn listen_addrs(&self) -> Vec<String> {
        self.shared.listen_addrs.read().iter().map(ToString::to_string).collect()
    }

    /// Makes the allow list exactly `peers` (this node itself is left out). New peers are
    /// allowed; the node connects to those that are its overlay neighbours (see
    /// [`crate::overlay`]; the side with the smaller peer id dials, so each pair has one
    /// connection) and to the others only when it asks them. Removed ones are disconnected
    /// and refused, and asks waiting on them fail with [`MeshError::PeerGone`]. Entries with
    /// an invalid peer id or address are logged and left out.
    pub fn set_peers(&self, peers: Vec<Peer>) {
        let mut members = self.shared.members.lock();
        *members = peers.into_iter().filter_map(parse_peer).collect();
        self.take_members(&members);
    }

    /// Changes the allow list: `joined` added (or their addresses replaced), `left` (peer
    /// ids) removed, as [`Self::set_peers`] would with the whole new list. Only the change is
    /// parsed: the head sends a list once and then changes, and a thousand workers' joins
    /// would otherwise parse the list a million times.
    pub fn change_peers(&self, joined: Vec<Peer>, left: &[String]) {
        let mut members = self.shared.members.lock();
        for peer in left {
            if let Ok(peer) = PeerId::from_str(peer) {
                members.remove(&peer);
            }
        }
        members.extend(joined.into_iter().filter_map(parse_peer));
        self.take_members(&members);
    }

    /// Hands the node (and the call streams) the allow list.
    fn take_members(&self, members: &HashMap<PeerId, Vec<Multiaddr>>) {
        let own = self.shared.peer_id;
        let allowed = members.keys().copied().filter(|p| *p != own).collect();
        self.shared.calls.set_allowed(allowed);
        let list = members.iter().map(|(peer, addrs)| (*peer, addrs.clone())).collect();
        *self.shared.wanted_peers.lock() = Some(list);
        // A full queue is fine: the node takes the new list before its next command.
        let _ = self.shared.commands.try_send(Command::PeersChanged);
    }

    /// Asks a peer and waits for its answer. A peer that is allowed but not connected is
    /// connected to, up to the request timeout; the answer is then waited for up to the
    /// request timeout too. The connection stays open while asks use it, and closes once
    /// unused for the idle timeout.
    pub async fn ask(&self, peer_id: &str, request: MeshRequest) -> Result<MeshResponse> {
        let peer =
            PeerId::from_str(peer_id).map_err(|_| MeshError::UnknownPeer(peer_id.to_string()))?;
        // This node is never on its own allow list: asking itself is an unknown peer.
        let calls = self.shared.calls.clone();
        calls.ask(peer, request, self.connected(peer)).await
    }

    /// Publishes `body` on `topic` as `publisher` and returns its sequence number (per topic
    /// and publisher on this node, from 1). Subscribers on this node always get it; the
    /// message goes to every node of the mesh by gossip, and each hands it to its own
    /// subscribers of the topic. If the node has no connected peer to pass it on to, the
    /// result is [`MeshError::NoSubscribers`] (with the seq); while overlay neighbours are
    /// still connecting, the message is held for up to two seconds for them. Other gossipsub
    /// failures are [`MeshError::Publish`]. Messages from one publisher go out in publishing
    /// order.
    pub async fn publish(&self, topic: &str, publisher: &str, body: String) -> Result<u64> {
        let (reply, result) = oneshot::channel();
        self.send(Command::Publish {
            topic: topic.to_string(),
            publisher: publisher.to_string(),
            body,
            reply,
        })
        .await?;
        result.await.map_err(|_| MeshError::Stopped)?
    }

    /// Subscribes to a topic: every message published on it anywhere on the mesh (this
    /// node's own included), in order per (publishing node, publisher). The receiver closes
    /// when the mesh stops; dropping it unsubscribes.
    pub async fn subscribe(&self, topic: &str) -> mpsc::Receiver<TopicMessage> {
        let (sender, receiver) = mpsc::channel(self.shared.subscription_capacity);
        // A stopped node drops the sender: the receiver ends at once.
        let _ = self.send(Command::Subscribe { topic: topic.to_string(), sender }).await;
        receiver
    }

    /// Peers that are connected and have identified themselves (so they allow this node too).
    pub async fn connected_peers(&self) -> Vec<String> {
        let (reply, peers) = oneshot::channel();
        if self.send(Command::ConnectedPeers { reply }).await.is_err() {
            return Vec::new();
        }
        peers.await.unwrap_or_default()
    }

    /// The node's overlay neighbours: the peers it stays connected to, which carry topic
    /// messages (see [`Self::set_peers`]).
    pub async fn neighbours(&self) -> Vec<String> {
        let (reply, peers) = oneshot::channel();
        if self.send(Command::Neighbours { reply }).await.is_err() {
            return Vec::new();
        }
        peers.await.unwrap_or_default()
    }

    /// What went through this node so far.
    pub fn counters(&self) -> MeshCounters {
        self.shared.counters.snapshot()
    }

    /// Stops the node: pending asks fail with [`MeshError::Stopped`], connections close,
    /// subscriptions and the incoming-call receiver end. Returns once the swarm is dropped.
    pub async fn shutdown(&self) {
        let (done, stopped) = oneshot::channel();
        if self.send(Command::Shutdown { done }).await.is_ok() {
            let _ = stopped.await;
        }
    }

    /// Queues a command, waiting for room (the node's queue is bounded).
    async fn send(&self, command: Command) -> Result<()> {
        self.shared.commands.send(command).await.map_err(|_| MeshError::Stopped)
    }
}

/// A listed peer's id and addresses, parsed; None (logged) when its id is not a peer id.
fn parse_peer(peer: Peer) -> Option<(PeerId, Vec<Multiaddr>)> {
    let Ok(peer_id) = PeerId::from_str(&peer.peer_id) else {
        tracing::warn!(peer = %peer.peer_id, "ignoring a peer whose id is not a libp2p peer id");
        return None;
    };
    let addrs = peer.addrs.iter().filter_map(|a| parse_peer_addr(a, &peer_id)).collect();
    Some((peer_id, addrs))
}

/// Parses one of a peer's addresses, dropping a `/p2p/<id>` suffix that names it.
fn parse_peer_addr(addr: &str, peer: &PeerId) -> Option<Multiaddr> {
    let mut parsed = match Multiaddr::from_str(addr) {
        Ok(parsed) => parsed,
        Err(error) => {
            tracing::warn!(%peer, addr, %error, "ignoring a peer address that is not a multiaddr");
            return None;
        }
    };
    if let Some(Protocol::P2p(id)) = parsed.iter().last() {
        if id != *peer {
            tracing::warn!(%peer, addr, "ignoring a peer address that names another peer");
            return None;
        }
        parsed.pop();
    }
    Some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new peer list whose nudge found the node's command queue full is still taken
    /// before the next command: an ask right after it reaches a peer only that list names.
    #[tokio::test(flavor = "current_thread")]
    async fn a_peer_list_whose_nudge_found_the_queue_full_is_taken_first() {
        let config = || MeshConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            request_timeout: Duration::from_secs(5),
            ..MeshConfig::default()
        };
        let (a, _a_calls) = Mesh::start(config()).await.expect("mesh a");
        let (b, _b_calls) = Mesh::start(config()).await.expect("mesh b");
        let peer = |m: &Mesh| Peer { peer_id: m.peer_id(), addrs: m.listen_addrs() };
        b.set_peers(vec![peer(&a), peer(&b)]);
        // a's node runs on this thread: it reads no command until this test yields, which an
        // unconstrained loop over sends that find room never does.
        let mut fillers = Vec::new();
        tokio::task::unconstrained(async {
            while a.shared.commands.capacity() > 0 {
                fillers.push(a.subscribe("filler").await);
            }
        })
        .await;
        a.set_peers(vec![peer(&a), peer(&b)]);
        assert_eq!(a.shared.commands.capacity(), 0, "the nudge found room: nothing tested");
        let answer = a.ask(&b.peer_id(), MeshRequest::Ping).await;
        assert!(matches!(answer, Ok(MeshResponse::Pong)), "{answer:?}");
    }
}
