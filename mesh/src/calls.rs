//! Asks over one long-lived stream per peer: the fast path for agent calls. A node opens
//! one `/agentfleet/calls/1` stream (libp2p-stream, over the allowed connection) to each
//! peer it asks, and sends every ask to that peer on it as a numbered frame; answers come
//! back on the same stream, matched by number, in any order. Compared with request-response
//! (a new stream and protocol negotiation per ask) this saves a round trip per ask and lets
//! many asks share a write. The frames use [`crate::codec`] (u32 big-endian length, bincode).
//!
//! An asker that stops waiting (its caller was canceled, or its timeout passed) sends a
//! `Cancel` frame for its ask: the called node drops the call's reply, which tells its
//! worker (through `IncomingCall::reply` closing) to cancel the run; so does a stream that
//! ends (the asker gone). Reading never waits on the worker: a call its full queue cannot
//! take is answered `Refused` (busy) at once, so cancels and asks for the worker's other
//! agents keep flowing.
//!
//! A stream that ends (the peer went away, or was removed from the allow list, which closes
//! its connection) fails the asks waiting on it with [`MeshError::PeerGone`]. A frame over
//! the limit ends the stream; a frame that does not decode is dropped; both are counted in
//! `frames_rejected` and logged, never a panic.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::io::{ReadHalf, WriteHalf};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::activity::Activity;
use crate::counters::{self, Counters};
use crate::{IncomingCall, MeshError, MeshRequest, MeshResponse, Result, codec};

/// The protocol of the per-peer call streams.
pub(crate) const CALLS_PROTOCOL: StreamProtocol = StreamProtocol::new("/agentfleet/calls/1");

/// Frames waiting to be written on one stream at most; askers wait beyond it.
const WRITE_QUEUE: usize = 1024;
/// Answers one stream's asker waits for at most (being worked on, or written); past it this
/// node reads no more asks from it until one goes. A worker runs at most 1,024 calls, and
/// refusals are written at once, so only an asker that does not read its answers gets here.
const OPEN_ANSWERS: usize = 4096;
/// How much longer than the request timeout a called node waits for its worker's answer.
const ANSWER_GRACE: Duration = Duration::from_millis(500);

/// One frame on a call stream.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum CallFrame {
    Ask {
        id: u64,
        request: MeshRequest,
    },
    Answer {
        id: u64,
        response: MeshResponse,
    },
    /// The asker no longer waits for ask `id` (added last: frames of the first two variants
    /// encode as before).
    Cancel {
        id: u64,
    },
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<MeshResponse>>>>;

/// The asking side of one peer's stream.
struct Link {
    frames: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    next_id: AtomicU64,
}

/// The call streams of a node.
pub(crate) struct Calls {
    control: libp2p_stream::Control,
    allowed: RwLock<HashSet<PeerId>>,
    links: Mutex<HashMap<PeerId, Arc<Link>>>,
    /// One stream being opened per peer at a time: askers of a peer wait for it.
    opening: Mutex<HashMap<PeerId, Arc<tokio::sync::Mutex<()>>>>,
    incoming: mpsc::Sender<IncomingCall>,
    counters: Arc<Counters>,
    /// What each peer's connection is used for (the node closes the idle ones).
    activity: Arc<Activity>,
    max_frame: usize,
    timeout: Duration,
}

impl Calls {
    pub(crate) fn new(
        control: libp2p_stream::Control,
        incoming: mpsc::Sender<IncomingCall>,
        counters: Arc<Counters>,
        activity: Arc<Activity>,
        max_frame: usize,
        timeout: Duration,
    ) -> Result<Arc<Self>> {
        let mut accepting = control.clone();
        let streams = accepting
            .accept(CALLS_PROTOCOL)
            .map_err(|e| MeshError::Start(format!("cannot accept call streams: {e}")))?;
        let calls = Arc::new(Self {
            control,
            allowed: RwLock::default(),
            links: Mutex::default(),
            opening: Mutex::default(),
            incoming,
            counters,
            activity,
            max_frame,
            timeout,
        });
        tokio::spawn(calls.clone().accept(streams));
        Ok(calls)
    }

    /// The allow list changed: links to peers no longer on it are dropped (their asks fail
    /// when the connection closes, or at once here).
    /// Whether `peer` is on the list of peers this node may call.
    pub(crate) fn allows(&self, peer: &PeerId) -> bool {
        self.allowed.read().contains(peer)
    }

    pub(crate) fn set_allowed(&self, peers: HashSet<PeerId>) {
        let gone: Vec<Arc<Link>> = {
            let mut links = self.links.lock();
            let gone = links.keys().filter(|p| !peers.contains(p)).copied().collect::<Vec<_>>();
            gone.iter().filter_map(|p| links.remove(p)).collect()
        };
        *self.allowed.write() = peers;
        for link in gone {
            // Dropping the senders fails the waiting asks with PeerGone.
            link.pending.lock().clear();
        }
    }

    /// Asks `peer` and waits for the answer, up to the request timeout (the wait for a
    /// connection included).
    pub(crate) async fn ask(
        self: &Arc<Self>,
        peer: PeerId,
        request: MeshRequest,
        connected: impl std::future::Future<Output = bool>,
    ) -> Result<MeshResponse> {
        if !self.allowed.read().contains(&peer) {
            return Err(MeshError::UnknownPeer(peer.to_string()));
        }
        let timeout = self.timeout;
        // The peer's connection (made for this ask if there was none) stays open while the
        // ask waits.
        let _in_use = self.activity.ask(peer);
        let asked = async {
            let link = self.link(peer, connected).await?;
            let id = link.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            link.pending.lock().insert(id, tx);
            let is_call = matches!(request, MeshRequest::Call(_));
            // From here on, stopping before the answer (this future dropped by a canceled
            // caller, or the timeout below, even while the frame waits for room in the write
            // queue) forgets the ask and tells the peer to cancel the call.
            let mut waiting =
                Waiting { link: link.clone(), id, max_frame: self.max_frame, answered: false };
            let frame = codec::frame(&CallFrame::Ask { id, request }, self.max_frame)?;
            if link.frames.send(frame).await.is_err() {
                waiting.answered = true;
                link.pending.lock().remove(&id);
                return Err(MeshError::PeerGone(peer.to_string()));
            }
            if is_call {
                counters::add(&self.counters.calls_sent, 1);
            }
            let answer = rx.await.map_err(|_| MeshError::PeerGone(peer.to_string()));
            waiting.answered = true;
            Ok((answer, link, id))
        };
        match tokio::time::timeout(timeout, asked).await {
            Ok(Ok((answer, _, _))) => answer,
            Ok(Err(e)) => Err(e),
            Err(_) => Err(MeshError::Timeout { peer: peer.to_string(), after: timeout }),
        }
    }

    /// The open link to `peer`, or a new stream once a connection to it exists.
    async fn link(
        self: &Arc<Self>,
        peer: PeerId,
        connected: impl std::future::Future<Output = bool>,
    ) -> Result<Arc<Link>> {
        if let Some(link) = self.links.lock().get(&peer) {
            return Ok(link.clone());
        }
        let turn = self.opening.lock().entry(peer).or_default().clone();
        let _turn = turn.lock().await;
        if let Some(link) = self.links.lock().get(&peer) {
            return Ok(link.clone());
        }
        // `connected` has the node connect (it knows whether a connection is being made
        // already); opening a stream before that would dial a second one.
        let opened = async {
            if !connected.await {
                // Dropped from the list while this waited (a worker that died, kept listed
                // for the head's grace): the caller asks the head where the agent is now.
                if !self.allows(&peer) {
                    return Err(MeshError::UnknownPeer(peer.to_string()));
                }
                return Err(MeshError::PeerGone(peer.to_string()));
            }
            let mut pause = Duration::from_millis(50);
            loop {
                match self.control.clone().open_stream(peer, CALLS_PROTOCOL).await {
                    Ok(stream) => return Ok(stream),
                    // The connection went as it was to be used (the peer stopping or
                    // restarting): a listed peer is waited for until the ask's timeout.
                    Err(libp2p_stream::OpenStreamError::Io(_))
                        if self.allowed.read().contains(&peer) =>
                    {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                    Err(libp2p_stream::OpenStreamError::Io(_)) => {
                        return Err(MeshError::PeerGone(peer.to_string()));
                    }
                    Err(e) => {
                        return Err(MeshError::Remote(format!("cannot open a call stream: {e}")));
                    }
                }
            }
        };
        let result = opened.await;
        self.opening.lock().remove(&peer);
        let stream = result?;
        let (reader, writer) = stream.split();
        let (frames, queue) = mpsc::channel(WRITE_QUEUE);
        let link =
            Arc::new(Link { frames, pending: Pending::default(), next_id: AtomicU64::new(1) });
        tokio::spawn(write_frames(writer, queue));
        tokio::spawn(self.clone().read_answers(peer, reader, link.clone()));
        self.links.lock().insert(peer, link.clone());
        Ok(link)
    }

    /// Reads the answers on a stream this node opened until it ends.
    async fn read_answers(
        self: Arc<Self>,
        peer: PeerId,
        mut reader: ReadHalf<Stream>,
        link: Arc<Link>,
    ) {
        loop {
            match self.read_frame(&peer, &mut reader).await {
                Some(Ok(CallFrame::Answer { id, response })) => {
                    if let Some(waiting) = link.pending.lock().remove(&id) {
                        let _ = waiting.send(response);
                    }
                }
                Some(Ok(CallFrame::Ask { .. } | CallFrame::Cancel { .. })) => {
                    self.reject(&peer, "an ask on a stream for answers")
                }
                Some(Err(())) => {}
                None => break,
            }
        }
        let mut links = self.links.lock();
        if links.get(&peer).is_some_and(|l| Arc::ptr_eq(l, &link)) {
            links.remove(&peer);
        }
        drop(links);
        link.pending.lock().clear();
        tracing::debug!(%peer, "call stream to peer ended");
    }

    /// Accepts the streams peers open to ask this node.
    async fn accept(self: Arc<Self>, mut streams: libp2p_stream::IncomingStreams) {
        while let Some((peer, stream)) = streams.next().await {
            tokio::spawn(self.clone().serve(peer, stream));
        }
    }

    /// Answers the asks on one peer's stream: each call goes to the worker, and its answer
    /// is written back when it comes, while later asks keep being read.
    async fn serve(self: Arc<Self>, peer: PeerId, stream: Stream) {
        let (mut reader, writer) = stream.split();
        let (frames, queue) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(write_frames(writer, queue));
        // Calls given to the worker and not answered yet: sending on (or dropping) the
        // sender drops that call's reply receiver, so its worker cancels the run.
        let open: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>> = Arc::default();
        let answers = Arc::new(tokio::sync::Semaphore::new(OPEN_ANSWERS));
        while let Some(read) = self.read_frame(&peer, &mut reader).await {
            let (id, request) = match read {
                Ok(CallFrame::Ask { id, request }) => (id, request),
                Ok(CallFrame::Cancel { id }) => {
                    if open.lock().remove(&id).is_some() {
                        counters::add(&self.counters.calls_canceled, 1);
                    }
                    continue;
                }
                Ok(CallFrame::Answer { .. }) => {
                    self.reject(&peer, "an answer on a stream for asks");
                    continue;
                }
                Err(()) => continue,
            };
            let answer = match request {
                MeshRequest::Ping => Answer::Now(MeshResponse::Pong),
                MeshRequest::Call(call) => {
                    counters::add(&self.counters.calls_received, 1);
                    match IncomingCall::offer(&self.incoming, &peer, call) {
                        Ok(answer) => Answer::Later(answer),
                        Err(refusal) => Answer::Now(refusal),
                    }
                }
            };
            let answer = match answer {
                Answer::Now(response) => {
                    drop(self.activity.answer(peer));
                    // Written without waiting: with the write queue full the asker is not
                    // reading, and times out instead.
                    if let Some(frame) = answer_frame(id, response, self.max_frame) {
                        let _ = frames.try_send(frame);
                    }
                    continue;
                }
                Answer::Later(answer) => answer,
            };
            let Ok(slot) = answers.clone().acquire_owned().await else { break };
            let (cancel, canceled) = oneshot::channel();
            open.lock().insert(id, cancel);
            // A little past the asker's own timeout, so the asker sees its timeout rather than
            // a race with this refusal; by then nobody waits for the answer.
            let (frames, max_frame) = (frames.clone(), self.max_frame);
            let timeout = self.timeout + ANSWER_GRACE;
            let open = open.clone();
            let in_use = self.activity.answer(peer);
            tokio::spawn(async move {
                let (_slot, _in_use) = (slot, in_use);
                let answered = tokio::select! {
                    answered = tokio::time::timeout(timeout, answer) => answered,
                    // The asker gave up: dropping `answer` cancels the worker's run; nobody
                    // reads an answer now.
                    _ = canceled => return,
                };
                open.lock().remove(&id);
                let response = match answered {
                    Ok(Ok(response)) => response,
                    Ok(Err(_)) => refused("the called node dropped the call without answering"),
                    Err(_) => refused("the called node did not answer within the request timeout"),
                };
                if let Some(frame) = answer_frame(id, response, max_frame) {
                    let _ = frames.send(frame).await;
                }
            });
        }
        // The asker is gone (its stream ended): nobody waits for these calls any more, and
        // dropping their cancel senders cancels their runs.
        open.lock().clear();
        tracing::debug!(%peer, "call stream from peer ended");
    }

    /// The next frame: `None` when the stream ended (or sent a frame over the limit, which
    /// ends it), `Some(Err(()))` for a frame that did not decode (dropped).
    async fn read_frame(
        &self,
        peer: &PeerId,
        reader: &mut ReadHalf<Stream>,
    ) -> Option<std::result::Result<CallFrame, ()>> {
        let mut len = [0u8; 4];
        reader.read_exact(&mut len).await.ok()?;
        let len = u32::from_be_bytes(len) as usize;
        if len > self.max_frame {
            self.reject(
                peer,
                &format!(
                    "a {len}-byte frame, over the {}-byte limit; closing the stream",
                    self.max_frame
                ),
            );
            return None;
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).await.ok()?;
        match codec::decode::<CallFrame>(&body, self.max_frame) {
            Ok(frame) => Some(Ok(frame)),
            Err(e) => {
                self.reject(peer, &e.to_string());
                Some(Err(()))
            }
        }
    }

    fn reject(&self, peer: &PeerId, what: &str) {
        counters::add(&self.counters.frames_rejected, 1);
        tracing::warn!(%peer, "call frame rejected: {what}");
    }
}

/// An ask sent and not yet answered: dropped before its answer (the asker's future dropped,
/// or timed out), it forgets the ask and sends the peer a `Cancel` frame for it.
struct Waiting {
    link: Arc<Link>,
    id: u64,
    max_frame: usize,
    answered: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        self.link.pending.lock().remove(&self.id);
        // Best effort without waiting (this is a drop): with the write queue full the frame
        // is not sent, and the call ends at the peer's own timeout instead.
        if let Ok(frame) = codec::frame(&CallFrame::Cancel { id: self.id }, self.max_frame) {
            let _ = self.link.frames.try_send(frame);
        }
    }
}

enum Answer {
    Now(MeshResponse),
    Later(oneshot::Receiver<MeshResponse>),
}

/// The frame of an answer; one too big to send becomes a refusal saying so.
fn answer_frame(id: u64, response: MeshResponse, max_frame: usize) -> Option<Vec<u8>> {
    codec::frame(&CallFrame::Answer { id, response }, max_frame)
        .or_else(|e| {
            let response = refused(&e.to_string());
            codec::frame(&CallFrame::Answer { id, response }, max_frame)
        })
        .ok()
}

fn refused(reason: &str) -> MeshResponse {
    MeshResponse::Refused { reason: reason.to_owned() }
}

/// Writes queued frames, flushing once the queue is empty so a burst shares writes.
async fn write_frames(mut writer: WriteHalf<Stream>, mut queue: mpsc::Receiver<Vec<u8>>) {
    while let Some(frame) = queue.recv().await {
        if writer.write_all(&frame).await.is_err() {
            return;
        }
        while let Ok(frame) = queue.try_recv() {
            if writer.write_all(&frame).await.is_err() {
                return;
            }
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Peers of the version before `Cancel` existed read and write the same bytes: the new
    /// variant went last, so the first two keep their numbers.
    #[test]
    fn frames_before_cancel_encode_as_they_did() -> anyhow::Result<()> {
        let ask = CallFrame::Ask { id: 7, request: MeshRequest::Ping };
        assert_eq!(codec::encode(&ask, 1024)?, [0, 7, 1]);
        let answer = CallFrame::Answer { id: 7, response: MeshResponse::Pong };
        assert_eq!(codec::encode(&answer, 1024)?, [1, 7, 1]);
        assert_eq!(codec::encode(&CallFrame::Cancel { id: 7 }, 1024)?, [2, 7]);
        let decoded = codec::decode::<CallFrame>(&[2, 7], 1024)?;
        assert!(matches!(decoded, CallFrame::Cancel { id: 7 }), "{decoded:?}");
        Ok(())
    }
}
