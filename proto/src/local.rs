//! The same gRPC protocol inside one process, over in-memory pipes instead of TCP: an
//! embedded cluster (head, workers and client in one process, e.g. `af.init()` in Python)
//! skips the kernel's loopback and the socket wake-ups, and still runs exactly the code a
//! real cluster runs.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use hyper_util::rt::TokioIo;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

/// Bytes buffered in each direction of one in-memory connection.
const PIPE_BYTES: usize = 4 << 20;

/// Opens in-memory connections to a head; pass it to the client or a worker instead of a URL.
#[derive(Clone, Debug)]
pub struct LocalConnector {
    tx: mpsc::UnboundedSender<DuplexStream>,
}

/// The head's side: the in-memory connections clients and workers opened.
#[derive(Debug)]
pub struct LocalIncoming {
    rx: mpsc::UnboundedReceiver<DuplexStream>,
}

/// A connector and the incoming connections it produces.
pub fn local_pair() -> (LocalConnector, LocalIncoming) {
    let (tx, rx) = mpsc::unbounded_channel();
    (LocalConnector { tx }, LocalIncoming { rx })
}

impl Stream for LocalIncoming {
    type Item = io::Result<DuplexStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

impl tower_service::Service<http::Uri> for LocalConnector {
    type Response = TokioIo<DuplexStream>;
    type Error = io::Error;
    type Future = futures::future::Ready<io::Result<Self::Response>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
        let sent = self
            .tx
            .send(theirs)
            .map_err(|_| io::Error::new(io::ErrorKind::ConnectionRefused, "the head has stopped"));
        futures::future::ready(sent.map(|()| TokioIo::new(ours)))
    }
}

/// A head in this process, as its in-process workers see it: the calls the `Join` stream
/// would carry, made directly with domain types (no encoding, no pipe). The head implements
/// it; a worker given one joins through it instead of over gRPC.
pub trait LocalHead: Send + Sync + 'static {
    /// Adds a worker; returns its connection number, the heartbeat interval and its commands
    /// (they end when the head drops the worker).
    fn join(
        &self,
        registration: crate::Registration,
    ) -> (u64, std::time::Duration, mpsc::Receiver<crate::Command>);

    fn heartbeat(&self, worker_id: &str, connection: u64, beat: crate::Heartbeat);

    /// Task events of the worker's tasks (`seq` 0: the head assigns it).
    fn events(&self, worker_id: &str, connection: u64, events: Vec<crate::TaskEvent>);

    /// The worker is leaving (or stopped); its running tasks are retried elsewhere.
    fn leave(&self, worker_id: &str, connection: u64, reason: &str);

    /// A message an agent on the worker published, for its topic's log; answered with
    /// `Command::TopicMessageStored`.
    fn store_topic_message(
        &self,
        worker_id: &str,
        connection: u64,
        request: crate::PublishRequest,
        seq: u64,
        more: Vec<String>,
    );

    /// Resolves once everything the head took so far is stored (at once without a store,
    /// or when the store stopped): a worker waiting for its event to be on record waits
    /// for this.
    fn stored(&self) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(futures::future::ready(()))
    }
}
