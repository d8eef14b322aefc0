//! Riding through a head restart or a broken connection. A task's stream resumes with
//! `WatchTask` from the event after the last one seen; a batch of submissions reconnects,
//! follows its accepted tasks from their last events (on the new submission stream, all of
//! them) and submits again those the head never acknowledged. Events are never repeated
//! (they carry gapless seqs). A client given several heads moves on to the next when one is
//! unreachable or a standby. A client gives up when no head serves it for [`RESUME_LIMIT`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{Client, Error, ManyUpdate, ManyUpdates, Result, Submission, TaskStream};

/// How long a client keeps trying to reach the head again before it reports the error.
pub const RESUME_LIMIT: Duration = Duration::from_secs(60);
const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Submissions per message.
const CHUNK: usize = 256;

/// Whether a failure is one a retry may get past: the head unreachable or restarting, the
/// stream broken, or cut off for falling behind (which says to resume).
pub fn resumable(error: &Error) -> bool {
    match error {
        Error::Connect { .. } | Error::StreamEnded => true,
        Error::Status(s) => match s.code() {
            // A connection reset or refused, a stream the head's death broke off.
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => true,
            tonic::Code::ResourceExhausted => s.message().contains("resume with WatchTask"),
            tonic::Code::Internal => {
                let m = s.message();
                m.contains("h2 protocol error") || m.contains("transport error")
            }
            _ => false,
        },
        _ => false,
    }
}

/// Retries after resumable failures with growing pauses, up to [`RESUME_LIMIT`] from the
/// first failure in a row.
struct Retry {
    since: Option<Instant>,
    pause: Duration,
}

impl Retry {
    fn new() -> Self {
        Self { since: None, pause: BACKOFF_START }
    }

    /// Waits before the next try, or gives `error` back when it is final.
    async fn after(&mut self, error: Error) -> Result<()> {
        let since = *self.since.get_or_insert_with(Instant::now);
        if !resumable(&error) || since.elapsed() > RESUME_LIMIT {
            return Err(error);
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(BACKOFF_MAX);
        Ok(())
    }

    fn succeeded(&mut self) {
        self.since = None;
        self.pause = BACKOFF_START;
    }
}

/// Follows one task: `first` until it breaks, then `WatchTask` from the next seq. Without a
/// task id (a submission that broke before its first event) a failure is final: the task
/// may or may not exist.
pub(crate) fn follow(
    client: Client,
    first: TaskStream,
    task_id: Option<String>,
    from_seq: u64,
) -> TaskStream {
    struct Follow {
        client: Client,
        stream: Option<TaskStream>,
        task_id: Option<String>,
        next: u64,
        retry: Retry,
        ended: bool,
    }
    let state = Follow {
        client,
        stream: Some(first),
        task_id,
        next: from_seq.max(1),
        retry: Retry::new(),
        ended: false,
    };
    Box::pin(futures::stream::unfold(state, |mut f| async move {
        if f.ended {
            return None;
        }
        loop {
            let stream = match &mut f.stream {
                Some(stream) => stream,
                None => {
                    let id = f.task_id.clone()?;
                    match f.client.watch_once(&id, f.next).await {
                        Ok(stream) => f.stream.insert(stream),
                        Err(e) => match f.retry.after(e).await {
                            Ok(()) => continue,
                            Err(e) => {
                                f.ended = true;
                                return Some((Err(e), f));
                            }
                        },
                    }
                }
            };
            let at = f.client.head();
            let failure = match stream.next().await {
                Some(Ok(event)) => {
                    f.retry.succeeded();
                    if event.seq < f.next {
                        continue; // Seen before the reconnect.
                    }
                    f.next = event.seq + 1;
                    f.task_id.get_or_insert_with(|| event.task_id.to_string());
                    f.ended = event.kind.is_terminal();
                    if f.ended {
                        finish_reading(f.stream.take());
                    }
                    return Some((Ok(event), f));
                }
                Some(Err(e)) => e,
                None => Error::StreamEnded,
            };
            f.stream = None;
            f.client.head_failed(at, &failure);
            if f.task_id.is_none() {
                // A submission that broke before its first event: it may or may not exist.
                f.ended = true;
                return Some((Err(failure), f));
            }
            if let Err(e) = f.retry.after(failure).await {
                f.ended = true;
                return Some((Err(e), f));
            }
        }
    }))
}

/// How long a finished task's stream is read for its end before it is dropped anyway.
const STREAM_END_WAIT: Duration = Duration::from_secs(5);

/// Reads a finished task's stream to its end (the head ends it right after the terminal
/// event) in the background: dropped before, it would be reset, and the head's closing
/// frames, arriving after, would count against the connection's errors (see
/// `fleet_proto::endpoint::head_endpoint`).
fn finish_reading<S: futures::Stream + Send + Unpin + 'static>(stream: Option<S>) {
    let (Some(mut stream), Ok(runtime)) = (stream, tokio::runtime::Handle::try_current()) else {
        return;
    };
    runtime.spawn(async move {
        let _ =
            tokio::time::timeout(STREAM_END_WAIT, async { while stream.next().await.is_some() {} })
                .await;
    });
}

/// What a caller of [`Client::submit_all`] can see and steer while it runs.
#[derive(Debug, Clone, Default)]
pub struct SubmitControl {
    /// Cancel to stop submitting (what was accepted goes on).
    pub stop: tokio_util::sync::CancellationToken,
    /// One more than the highest client ref handed to the head so far (with refs
    /// 0, 1, 2, …: how many were submitted).
    pub sent: Arc<AtomicUsize>,
}

/// One task of a batch: the seq its next event must have, and whether it has ended.
struct Followed {
    next: u64,
    done: bool,
}

/// Runs [`Client::submit_all`]: one multiplexed stream per connection, watches for the
/// tasks a lost connection left behind.
pub(crate) fn submit_all(
    client: Client,
    items: Vec<(u64, Submission)>,
    control: SubmitControl,
) -> ManyUpdates {
    let (out, updates) = mpsc::channel::<Result<Vec<ManyUpdate>>>(64);
    tokio::spawn(async move {
        if let Err(e) = drive(client, items, control, &out).await {
            let _ = out.send(Err(e)).await;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(updates))
}

async fn drive(
    client: Client,
    items: Vec<(u64, Submission)>,
    control: SubmitControl,
    out: &mpsc::Sender<Result<Vec<ManyUpdate>>>,
) -> Result<()> {
    // Each submission under a key of its own, so that one sent again after a broken
    // connection (its answer lost with it) finds the task it made instead of a second.
    let batch = uuid::Uuid::new_v4();
    let keyed = items.into_iter().map(|(client_ref, mut submission)| {
        if submission.idempotency_key.is_empty() {
            submission.idempotency_key = format!("{batch}-{client_ref}");
        }
        (client_ref, submission)
    });
    let mut pending: BTreeMap<u64, Submission> = keyed.collect();
    let mut tasks: HashMap<String, Followed> = HashMap::new();
    let mut retry = Retry::new();
    loop {
        let unfinished = tasks.values().any(|t| !t.done);
        let stopped = control.stop.is_cancelled();
        if !unfinished && (pending.is_empty() || stopped) {
            return Ok(());
        }
        let at = client.head();
        let failure =
            match connection(&client, &mut pending, &mut tasks, &control, out, &mut retry).await {
                Ok(()) => continue,
                Err(e) => e,
            };
        client.head_failed(at, &failure);
        if out.is_closed() {
            return Ok(());
        }
        retry.after(failure).await?;
    }
}

/// One connection's worth, over one multiplexed stream: follow what is unfinished from
/// its next event, submit what is pending, forward the updates; returns when all is done or
/// the stream fails. Following all tasks on the one stream (rather than a `WatchTask` call
/// each) keeps a resumed batch of any size to one stream and one failure.
async fn connection(
    client: &Client,
    pending: &mut BTreeMap<u64, Submission>,
    tasks: &mut HashMap<String, Followed>,
    control: &SubmitControl,
    out: &mpsc::Sender<Result<Vec<ManyUpdate>>>,
    retry: &mut Retry,
) -> Result<()> {
    let (sender, mut many) = client.submit_many().await?;
    let watches: Vec<(String, u64)> =
        tasks.iter().filter(|(_, t)| !t.done).map(|(id, t)| (id.clone(), t.next)).collect();
    let items: Vec<(u64, Submission)> = if control.stop.is_cancelled() {
        Vec::new()
    } else {
        pending.iter().map(|(r, s)| (*r, s.clone())).collect()
    };
    let feeder = sender.clone();
    let feeding = control.clone();
    tokio::spawn(async move {
        for chunk in watches.chunks(CHUNK) {
            if feeder.watch(chunk.to_vec()).await.is_err() {
                return;
            }
        }
        for chunk in items.chunks(CHUNK) {
            // Counted before the stop is checked and the chunk sent: a caller stopping
            // now waits for (and cancels) these tasks too, rather than reading a count
            // that misses a chunk already on its way.
            let high = chunk.last().map_or(0, |(r, _)| *r as usize + 1);
            let before = feeding.sent.fetch_max(high, Ordering::SeqCst);
            if feeding.stop.is_cancelled() {
                feeding.sent.fetch_min(before, Ordering::SeqCst);
                return;
            }
            if feeder.send(chunk.to_vec()).await.is_err() {
                return;
            }
        }
    });
    loop {
        let unfinished = tasks.values().any(|t| !t.done);
        if !unfinished && (pending.is_empty() || control.stop.is_cancelled()) {
            // Half-closed: the head ends the stream, read to its end rather than reset.
            drop(sender);
            finish_reading(Some(many));
            return Ok(());
        }
        // The sender is held until then, so the head does not end the stream early.
        let batch = match many.next().await {
            Some(Ok(batch)) => batch,
            Some(Err(e)) => return Err(e),
            None => return Err(Error::StreamEnded),
        };
        let refused = batch
            .iter()
            .any(|u| matches!(u, ManyUpdate::Rejected { code: tonic::Code::Unavailable, .. }));
        let mut forward = Vec::new();
        for update in batch {
            // Submitted before under its key: its events come after a watch from the start.
            // Sent aside: the head may be waiting for this reader before it reads more.
            if let ManyUpdate::Accepted { client_ref, task_id, existing: true } = &update
                && pending.contains_key(client_ref)
            {
                let (sender, task_id) = (sender.clone(), task_id.to_string());
                tokio::spawn(async move { sender.watch([(task_id, 1)]).await });
            }
            take(update, pending, tasks, &mut forward);
        }
        if !forward.is_empty() {
            retry.succeeded();
            if out.send(Ok(forward)).await.is_err() {
                return Ok(()); // The caller went away.
            }
        }
        if refused {
            return Err(Error::Status(tonic::Status::unavailable(
                "the head refused new work for now",
            )));
        }
    }
}

/// Takes one update into the batch's state; passes on what the caller has not seen.
fn take(
    update: ManyUpdate,
    pending: &mut BTreeMap<u64, Submission>,
    tasks: &mut HashMap<String, Followed>,
    forward: &mut Vec<ManyUpdate>,
) {
    match &update {
        ManyUpdate::Accepted { client_ref, task_id, .. } => {
            if pending.remove(client_ref).is_none() {
                return;
            }
            tasks.insert(task_id.to_string(), Followed { next: 1, done: false });
        }
        // A head that cannot take work for now (its store failing): submitted again after
        // the next reconnect, as if the connection had failed.
        ManyUpdate::Rejected { code: tonic::Code::Unavailable, .. } => return,
        ManyUpdate::Rejected { client_ref, .. } => {
            if pending.remove(client_ref).is_none() {
                return;
            }
        }
        ManyUpdate::Event(event) => {
            let Some(task) = tasks.get_mut(event.task_id.as_str()) else { return };
            if event.seq < task.next {
                return;
            }
            task.next = event.seq + 1;
            task.done = event.kind.is_terminal();
        }
    }
    forward.push(update);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use fleet_proto::{EventKind, TaskEvent, TaskId};

    use super::*;

    /// A follower done with a task (its terminal event seen, its stream dropped) still
    /// reads the head's stream to its end: dropped early, the stream would be reset and the
    /// head's closing frames counted against the connection (h2 closes it past 1,024).
    #[tokio::test]
    async fn a_finished_task_s_stream_is_read_to_its_end() {
        let endpoint = tonic::transport::Endpoint::from_static("http://127.0.0.1:9");
        let client =
            Client::over(vec![endpoint.connect_lazy()], 0, crate::ConnectOptions::default())
                .expect("client");
        let (tx, mut rx) = mpsc::channel::<TaskEvent>(4);
        let ended = Arc::new(AtomicBool::new(false));
        let seen = ended.clone();
        let head: TaskStream = Box::pin(futures::stream::poll_fn(move |cx| {
            let next = rx.poll_recv(cx);
            if let std::task::Poll::Ready(None) = next {
                seen.store(true, Ordering::SeqCst);
            }
            next.map(|e| e.map(Ok))
        }));
        let event = |seq, kind| TaskEvent {
            task_id: TaskId::new("t"),
            seq,
            attempt: 1,
            timestamp_us: 0,
            kind,
        };
        let mut followed = follow(client, head, Some("t".into()), 1);
        tx.send(event(1, EventKind::Working)).await.expect("sent");
        tx.send(event(2, EventKind::Completed { usage: Default::default() })).await.expect("sent");
        for _ in 0..2 {
            assert!(matches!(followed.next().await, Some(Ok(_))));
        }
        drop(followed);
        drop(tx); // the head ends the stream after the terminal event
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ended.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the stream was dropped before its end");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
