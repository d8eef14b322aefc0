//! Turning subscriptions and followed tasks into gRPC response streams.

use std::pin::Pin;

use fleet_proto::pb;
use futures::Stream;
use tokio::sync::mpsc::error::TryRecvError;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::cluster::Follow;
use crate::tasks::{Delivery, Subscription};

pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::TaskEvent, Status>> + Send>>;

/// The status a multiplexed submitter (`SubmitMany`) gets when it fell too far behind (a
/// follower of one task is caught up from the task's log instead: see `cluster::Follow`).
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
pub fn task_events(follow: Follow, shutdown: CancellationToken) -> EventStream {
    let stream = futures::stream::unfold(Some(follow), move |follow| {
        let shutdown = shutdown.clone();
        async move {
            let mut follow = follow?;
            tokio::select! {
                e = follow.next() => e.map(|e| (Ok(pb::TaskEvent::from(&*e)), Some(follow))),
                () = shutdown.cancelled() => {
                    Some((Err(Status::unavailable("the head is shutting down")), None))
                }
            }
        }
    });
    Box::pin(stream)
}
