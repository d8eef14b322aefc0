//! The libp2p stack of a mesh node: TCP + noise + yamux, and one behaviour made of an allow
//! list, a bound on connections, identify, request-response for asks and gossipsub for
//! topics.

use std::{sync::Arc, time::Duration};

use libp2p::{
    Swarm, SwarmBuilder, allow_block_list, connection_limits, gossipsub, identify, identity, noise,
    request_response::{self, ProtocolSupport},
    swarm::NetworkBehaviour,
    tcp, yamux,
};

use crate::{
    MeshError, Result,
    codec::{CALL_PROTOCOL, MeshCodec},
    counters::Counters,
};

/// The identify protocol version string: peers with another one are still served, but it
/// names the mesh in logs and tools.
const IDENTIFY_PROTOCOL: &str = "/agentfleet/mesh/1";

/// Inbound request-response streams per connection (this node asks over the call streams of
/// [`crate::calls`], and only answers this protocol); one over it is dropped by libp2p.
const MAX_CALL_STREAMS: usize = 1024;

/// How long a new connection may take from the TCP connect to a muxed, authenticated
/// connection (either side) before it is dropped and the dialer tries again: a handshake of
/// a round trip or two between cluster nodes, so a stalled one is retried well before an
/// asker's request timeout instead of after libp2p's default of 10 s.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);

/// gossipsub frames carry the signature, key, topic and sequence number on top of our
/// payload, so its limit is the frame limit plus this much.
const GOSSIP_OVERHEAD: usize = 64 * 1024;

/// How often gossipsub maintains its mesh (grafts, prunes, gossip about recent messages):
/// a node whose neighbours just connected forwards topic messages once grafted, so sooner
/// than libp2p's default of a second. One topic (the carrier) keeps each beat cheap.
const GOSSIP_HEARTBEAT: Duration = Duration::from_millis(300);

/// The behaviour of a mesh node. The allow list comes first: any behaviour denying a
/// connection closes it, and it is the one that does.
#[derive(NetworkBehaviour)]
pub(crate) struct MeshBehaviour {
    pub(crate) allow: allow_block_list::Behaviour<allow_block_list::AllowedPeers>,
    /// The hard bound: twice `max_peers` connections (the node closes unused ones well
    /// before), two per peer (a pair's crossing dials, until one closes).
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) identify: identify::Behaviour,
    pub(crate) call: request_response::Behaviour<MeshCodec>,
    pub(crate) gossip: gossipsub::Behaviour,
    /// The per-peer call streams (see [`crate::calls`]).
    pub(crate) streams: libp2p_stream::Behaviour,
}

/// What the stack needs from the configuration.
pub(crate) struct StackSettings {
    pub(crate) request_timeout: Duration,
    pub(crate) max_frame_bytes: usize,
    pub(crate) max_peers: usize,
}

fn behaviour(
    key: &identity::Keypair,
    settings: &StackSettings,
    counters: Arc<Counters>,
) -> std::result::Result<MeshBehaviour, Box<dyn std::error::Error + Send + Sync>> {
    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
            .with_agent_version(format!("fleet-mesh/{}", env!("CARGO_PKG_VERSION"))),
    );

    let call = request_response::Behaviour::with_codec(
        MeshCodec::new(settings.max_frame_bytes, counters),
        [(CALL_PROTOCOL, ProtocolSupport::Inbound)],
        request_response::Config::default()
            .with_request_timeout(settings.request_timeout)
            .with_max_concurrent_streams(MAX_CALL_STREAMS),
    );

    // A node publishes straight to every connected peer (flood_publish: its overlay
    // neighbours, a handful in a small cluster, all of them), and each forwards to its
    // gossipsub mesh of 4 to 8 of its own, so a message crosses the overlay in a few hops
    // with each node sending it a bounded number of times. They must satisfy
    // mesh_outbound_min <= mesh_n_low <= mesh_n <= mesh_n_high and 2 * mesh_outbound_min <= mesh_n.
    let gossip_config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        .flood_publish(true)
        .heartbeat_interval(GOSSIP_HEARTBEAT)
        .mesh_n(6)
        .mesh_n_low(4)
        .mesh_n_high(8)
        .mesh_outbound_min(2)
        .max_transmit_size(settings.max_frame_bytes + GOSSIP_OVERHEAD)
        .build()?;
    let gossip = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(key.clone()),
        gossip_config,
    )?;

    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(u32::try_from(2 * settings.max_peers).ok())
        .with_max_established_per_peer(Some(2));
    Ok(MeshBehaviour {
        allow: allow_block_list::Behaviour::default(),
        limits: connection_limits::Behaviour::new(limits),
        identify,
        call,
        gossip,
        streams: libp2p_stream::Behaviour::new(),
    })
}

/// Builds the swarm. Connections never idle out on libp2p's own timer (a call stream would
/// keep them alive anyway): the node closes those nobody uses itself (see `crate::node`).
pub(crate) fn build_swarm(
    key: identity::Keypair,
    settings: &StackSettings,
    counters: Arc<Counters>,
) -> Result<Swarm<MeshBehaviour>> {
    let start_error = |e: &dyn std::fmt::Display| MeshError::Start(e.to_string());
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, || {
            let mut config = yamux::Config::default();
            config.set_max_num_streams(MAX_CALL_STREAMS + 64);
            config
        })
        .map_err(|e| start_error(&e))?
        .with_behaviour(|key| behaviour(key, settings, counters))
        .map_err(|e| start_error(&e))?
        // u64::MAX seconds is clamped by the swarm: in effect, never.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(u64::MAX)))
        .with_connection_timeout(CONNECT_TIMEOUT)
        .build();
    Ok(swarm)
}
