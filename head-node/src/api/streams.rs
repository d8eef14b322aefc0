//! Turning subscriptions into gRPC response streams.

use std::pin::Pin;

use fleet_proto::pb;
use futures::Stream;
use tokio::sync::mpsc::error::TryRecvError;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::tasks::{Delivery, Subscription};

pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::TaskEvent, Status>> + Send>>;

/// The status a subscriber gets when it fell too far behind.
pub fn cut_off() -> Status {
    Status::resource_exhausted(
        "this stream fell too far behind and was cut off: resume with WatchTask from the last seq received",
    )
}

/// The next delivery, or `None` when the subscription ended; a cut-off subscription ends
/// once what was buffered before the cut has been read.
pub async fn next(sub: &mut Subscription) -> Option<Delivery> {
    match sub.rx.try_recv() {
        Ok(d) => Some(d),
        Err(TryRecvError::Disconnected) => None,
        Err(TryRecvError::Empty) if sub.was_cut() => None,
        Err(TryRecvError::Empty) => sub.rx.recv().await,
    }
}

/// The events of one task until its terminal event (or the head shuts down).
pub fn task_events(sub: Subscription, shutdown: CancellationToken) -> EventStream {
    let stream = futures::stream::unfold(Some(sub), move |sub| {
        let shutdown = shutdown.clone();
        async move {
            let mut sub = sub?;
            loop {
                let delivery = tokio::select! {
                    d = next(&mut sub) => d,
                    () = shutdown.cancelled() => return Some((Err(Status::unavailable("the head is shutting down")), None)),
                };
                match delivery {
                    Some(Delivery::Event(e)) => {
                        let end = e.kind.is_terminal();
                        return Some((Ok(pb::TaskEvent::from(&*e)), (!end).then_some(sub)));
                    }
                    Some(_) => continue,
                    None if sub.was_cut() => return Some((Err(cut_off()), None)),
                    None => return None,
                }
            }
        }
    });
    Box::pin(stream)
}
