//! The inspector's live streams, as server-sent events. Each stream has a producer task
//! writing into a small channel that the response reads; the producer ends when the page
//! goes (the channel closes), when the head stops, or when its subject ends. What an open
//! page holds on the head is that channel and one last snapshot, however long it stays.
//!
//! Lists are looked at on a tick and sent only when they changed (the task list not even
//! computed unless a task changed); a task's page follows its event log as every door
//! does (`cluster::Follow`: a page that falls behind is caught up from the log), and a
//! browser that reconnects resumes after the last event it has (`Last-Event-ID`).
//!
//! What the looks cost the head is bounded twice: each stream waits [`SHARE`] times as long
//! as its last look took, and all streams together spend at most 1/[`ALL_SHARE`] of a core
//! ([`Looks`]): a hundred open tabs slow each other's pages down, not the head.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use fleet_proto::EventKind;
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Inspector, Listing, Workers, listing, pictures, views, workers};
use crate::auth::Caller;

/// Events a stream's channel holds before its producer waits for the page to read.
const CHANNEL: usize = 16;
/// How often the cluster view is sent (its charts plot one point per tick).
const CLUSTER_TICK: Duration = Duration::from_secs(1);
/// How often the agents and task lists are looked at.
const AGENTS_TICK: Duration = Duration::from_secs(2);
const TASKS_TICK: Duration = Duration::from_millis(500);
/// How often the timeline is looked at (drawn again only when a task changed), at most.
const TIMELINE_TICK: Duration = Duration::from_secs(1);
/// A stream waits at least this many times as long as its last look took: a look at a
/// large cluster (a thousand workers, 100,000 tasks) slows the page, not the head, which
/// spends at most 1/60 of a core on each open page's looks (the lock they hold delays
/// others too: measured, a timeline of 100,000 tasks open at 1/20 cost the head 6.7% of a
/// core, at 1/40 2-4%).
const SHARE: u32 = 60;
/// All open pages' looks together take at most 1/ALL_SHARE of a core (4%), however many
/// pages are open. Measured with every page's stream open on a head at its limit of one
/// core (1,000 workers, 5,000 echo tasks/s): each by its own SHARE alone, they cost 17% of
/// its throughput; within this budget, 3-3.5% (BENCHMARKS.md).
const ALL_SHARE: u32 = 25;
/// Looks the budget lets through at once after a quiet spell: a page opened on an idle
/// head is drawn at once.
const ALL_BURST: Duration = Duration::from_secs(2);
/// A comment on quiet streams, so that proxies keep them open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Where a producer writes its events; false from [`send`] once the page is gone.
type Events = mpsc::Sender<Event>;

async fn send(tx: &Events, name: &str, data: &Value) -> bool {
    tx.send(Event::default().event(name).data(data.to_string())).await.is_ok()
}

/// The time every open page's looks may take, shared: a look waits until the looks before
/// it are paid for, each paid for by [`ALL_SHARE`] times what it took (the generic cell
/// rate algorithm, in time: `paid_until` runs ahead of now by what is owed).
#[derive(Clone, Default)]
pub struct Looks(Arc<parking_lot::Mutex<Option<Instant>>>);

impl Looks {
    /// Waits until a look may start.
    async fn turn(&self) {
        loop {
            let paid_until = *self.0.lock();
            match paid_until {
                Some(until) if until > Instant::now() => {
                    tokio::time::sleep_until(until.into()).await
                }
                _ => return,
            }
        }
    }

    /// Charges a look that took `took`.
    fn charge(&self, took: Duration) {
        let now = Instant::now();
        // Credit from a quiet spell is kept up to ALL_BURST's worth of wall time.
        let floor = now.checked_sub(ALL_BURST).unwrap_or(now);
        let mut paid_until = self.0.lock();
        let from = paid_until.map_or(floor, |until| until.max(floor));
        *paid_until = Some(from + took * ALL_SHARE);
    }
}

/// The response of a stream whose events `produce` writes.
fn stream<F, Fut>(ui: &Inspector, produce: F) -> Response
where
    F: FnOnce(Events) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(CHANNEL);
    let (page_gone, shutdown) = (tx.clone(), ui.shutdown.clone());
    let producer = produce(tx);
    tokio::spawn(async move {
        tokio::select! {
            () = producer => {}
            () = page_gone.closed() => {}
            () = shutdown.cancelled() => {}
        }
    });
    let events = ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
}

/// The response of a stream of `look()`'s snapshots (see [`ticks`]), under the pages'
/// shared budget.
fn ticking(
    ui: &Inspector,
    period: Duration,
    name: &'static str,
    changes_only: bool,
    look: impl FnMut() -> Option<Value> + Send + 'static,
) -> Response {
    let looks = ui.looks.clone();
    stream(ui, move |tx| ticks(tx, looks, period, name, changes_only, look))
}

/// Sends `look()`'s snapshot as `name` every `period` (or [`SHARE`] times as long as the
/// look took, and when `looks` lets it), when it has one that differs from the last sent
/// (`changes_only`) or always. A look's time counts its snapshot's JSON text too.
async fn ticks(
    tx: Events,
    looks: Looks,
    period: Duration,
    name: &'static str,
    changes_only: bool,
    mut look: impl FnMut() -> Option<Value>,
) {
    let mut last: Option<String> = None;
    loop {
        looks.turn().await;
        let started = Instant::now();
        let seen = look().map(|now| now.to_string());
        let took = started.elapsed();
        looks.charge(took);
        if let Some(now) = seen.filter(|now| !changes_only || last.as_ref() != Some(now)) {
            if tx.send(Event::default().event(name).data(now.as_str())).await.is_err() {
                return;
            }
            last = changes_only.then_some(now);
        }
        tokio::time::sleep(period.max(took * SHARE)).await;
    }
}

/// `/ui/api/cluster/live?q=&group=&sort=&offset=&limit=`: the cluster view with a page of
/// workers, every second.
pub(super) async fn cluster(Caller(ui): super::Caller, query: Workers) -> Response {
    let query = match workers(query) {
        Ok(query) => query,
        Err(refused) => return refused.into_response(),
    };
    let (cluster, who, auth) = (ui.cluster.clone(), ui.who.clone(), ui.clients.required());
    ticking(&ui, CLUSTER_TICK, "cluster", false, move || {
        Some(views::cluster_json(&cluster, &who, auth, &query))
    })
}

/// `/ui/api/charts/live`: a point of the live charts, every second.
pub(super) async fn charts(Caller(ui): super::Caller) -> Response {
    let (cluster, who) = (ui.cluster.clone(), ui.who.clone());
    ticking(&ui, CLUSTER_TICK, "point", false, move || Some(pictures::chart_point(&cluster, &who)))
}

/// `/ui/api/timeline/live?window_s=&by=&agent=`: the timeline, again each tick a task
/// changed (the page moves the running bars' ends and the window with its own clock in
/// between).
pub(super) async fn timeline(
    Caller(ui): super::Caller,
    query: pictures::TimelineListing,
) -> Response {
    let params = match pictures::timeline_params(query) {
        Ok(params) => params,
        Err(refused) => return refused.into_response(),
    };
    let (cluster, who) = (ui.cluster.clone(), ui.who.clone());
    let mut seen = None;
    ticking(&ui, TIMELINE_TICK, "timeline", false, move || {
        let changes = cluster.task_changes();
        let query = params.query().ok()?;
        (seen.replace(changes) != Some(changes))
            .then(|| pictures::timeline_json(&cluster.timeline(&who, &query)))
    })
}

/// `/ui/api/agents/live`: the agents and their figures, when they change.
pub(super) async fn agents(Caller(ui): super::Caller) -> Response {
    let (cluster, who) = (ui.cluster.clone(), ui.who.clone());
    ticking(&ui, AGENTS_TICK, "agents", true, move || Some(views::agents_json(&cluster, &who)))
}

/// `/ui/api/tasks/live?agent=&state=&worker=&q=&after=&limit=`: a page of tasks, when a
/// task changed.
pub(super) async fn tasks(Caller(ui): super::Caller, query: Listing) -> Response {
    let filter = match listing(query) {
        Ok(filter) => filter,
        Err(refused) => return refused.into_response(),
    };
    let (cluster, who) = (ui.cluster.clone(), ui.who.clone());
    let mut seen = None;
    ticking(&ui, TASKS_TICK, "tasks", true, move || {
        let changes = cluster.task_changes();
        (seen.replace(changes) != Some(changes)).then(|| views::tasks_json(&cluster, &who, &filter))
    })
}

/// Whether the page's task view (state, sub-tasks, timings) moves with this event.
fn moves_the_view(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Scheduled { .. }
            | EventKind::ToolCall { .. }
            | EventKind::ToolResult { .. }
            | EventKind::Retrying { .. }
            | EventKind::InputRequired { .. }
            | EventKind::InputReceived { .. }
    ) || kind.is_terminal()
}

/// `/ui/api/tasks/{id}/live`: the task, then its events from the first (or after the
/// browser's `Last-Event-ID`) as they are stored, with the task again after each event
/// that moves it; `end` after the last.
pub(super) async fn task(
    Caller(ui): super::Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let first = match views::detail(&ui.cluster, &ui.who, &id) {
        Ok(view) => view,
        // Not found: a status, so that the browser does not reconnect.
        Err(refused) => return refused.into_response(),
    };
    let mut follow = match ui.cluster.follow(&ui.who, &id, after.saturating_add(1)) {
        Ok(follow) => follow,
        Err(e) => return super::Refused::from(e).into_response(),
    };
    let (cluster, who) = (ui.cluster.clone(), ui.who.clone());
    stream(&ui, move |tx| async move {
        if !send(&tx, "task", &first).await {
            return;
        }
        while let Some(event) = follow.next().await {
            let frame = Event::default()
                .event("event")
                .id(event.seq.to_string())
                .data(views::event_json(&event).to_string());
            if tx.send(frame).await.is_err() {
                return;
            }
            if moves_the_view(&event.kind)
                && let Ok(view) = views::detail(&cluster, &who, &id)
                && !send(&tx, "task", &view).await
            {
                return;
            }
        }
        send(&tx, "end", &json!({})).await;
    })
}

/// `/ui/api/topics/{name}/live`: a topic's log, its latest [`TOPIC_BACKLOG`] messages and
/// then each one as it is stored. A topic refused (a bad name, another tenant's) is
/// answered with a status, so that the browser does not retry it forever.
pub(super) async fn topic(Caller(ui): super::Caller, Path(name): Path<String>) -> Response {
    if !crate::agents::valid_name(&name) {
        let refused = crate::Error::InvalidArgument(
            "a topic is 1 to 64 letters, digits, '-', '_' or '.'".into(),
        );
        return super::Refused::from(refused).into_response();
    }
    let from = match ui.cluster.topic_end(&ui.who, &name) {
        Ok(end) => end.saturating_sub(TOPIC_BACKLOG),
        Err(e) => return super::Refused::from(e).into_response(),
    };
    let mut follower = match ui.cluster.follow_log(&ui.who, &name, Some(from), None).await {
        Ok(follower) => follower,
        Err(e) => return super::Refused::from(e).into_response(),
    };
    stream(&ui, move |tx| async move {
        loop {
            for m in follower.next().await {
                let data = json!({
                    "topic": m.topic, "publisher": m.publisher, "offset": m.offset,
                    "body": m.body, "at_us": m.published_at_us,
                });
                if !send(&tx, "message", &data).await {
                    return;
                }
            }
        }
    })
}

/// Messages of a topic's log a page opening it is shown before the live ones.
const TOPIC_BACKLOG: u64 = 50;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pages_looks_together_take_at_most_their_share_of_the_head() {
        let looks = Looks::default();
        // A quiet head lets a burst of looks through at once...
        let started = Instant::now();
        for _ in 0..3 {
            looks.turn().await;
            looks.charge(Duration::from_millis(20));
        }
        assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
        // ...and then every page waits for all of them: 60 ms of looks and 100 ms more are
        // paid for by 25 times as long, less the 2 s of credit (4 s - 2 s from the start).
        looks.turn().await;
        looks.charge(Duration::from_millis(100));
        looks.turn().await;
        let expected = Duration::from_millis(160) * ALL_SHARE - ALL_BURST;
        assert!(started.elapsed() >= expected, "waited {:?}", started.elapsed());
        // Another stream's turn is the same.
        let other = looks.clone();
        let asked = Instant::now();
        looks.charge(Duration::from_millis(10));
        other.turn().await;
        assert!(asked.elapsed() >= Duration::from_millis(240), "{:?}", asked.elapsed());
    }
}
