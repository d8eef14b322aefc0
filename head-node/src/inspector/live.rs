//! The inspector's live streams, as server-sent events. Each stream has a producer task
//! writing into a small channel that the response reads; the producer ends when the page
//! goes (the channel closes), when the head stops, or when its subject ends. What an open
//! page holds on the head is that channel and one last snapshot, however long it stays.
//!
//! Lists are looked at on a tick and sent only when they changed (the task list not even
//! computed unless a task changed); a task's page follows its event log as every door
//! does (`cluster::Follow`: a page that falls behind is caught up from the log), and a
//! browser that reconnects resumes after the last event it has (`Last-Event-ID`).

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

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
/// A comment on quiet streams, so that proxies keep them open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Where a producer writes its events; false from [`send`] once the page is gone.
type Events = mpsc::Sender<Event>;

async fn send(tx: &Events, name: &str, data: &Value) -> bool {
    tx.send(Event::default().event(name).data(data.to_string())).await.is_ok()
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

/// Sends `look()`'s snapshot as `name` every `period` (or [`SHARE`] times as long as the
/// look took), when it has one that differs from the last sent (`changes_only`) or always.
async fn ticks(
    tx: Events,
    period: Duration,
    name: &'static str,
    changes_only: bool,
    mut look: impl FnMut() -> Option<Value>,
) {
    let mut last: Option<Value> = None;
    loop {
        let took = std::time::Instant::now();
        let seen = look();
        let pause = period.max(took.elapsed() * SHARE);
        if let Some(now) = seen.filter(|now| !changes_only || last.as_ref() != Some(now)) {
            if !send(&tx, name, &now).await {
                return;
            }
            last = changes_only.then_some(now);
        }
        tokio::time::sleep(pause).await;
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
    stream(&ui, move |tx| {
        ticks(tx, CLUSTER_TICK, "cluster", false, move || {
            Some(views::cluster_json(&cluster, &who, auth, &query))
        })
    })
}

/// `/ui/api/charts/live`: a point of the live charts, every second.
pub(super) async fn charts(Caller(ui): super::Caller) -> Response {
    let (cluster, who) = (ui.cluster.clone(), ui.who.clone());
    stream(&ui, move |tx| {
        ticks(tx, CLUSTER_TICK, "point", false, move || Some(pictures::chart_point(&cluster, &who)))
    })
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
    stream(&ui, move |tx| {
        ticks(tx, TIMELINE_TICK, "timeline", false, move || {
            let changes = cluster.task_changes();
            let query = params.query().ok()?;
            (seen.replace(changes) != Some(changes))
                .then(|| pictures::timeline_json(&cluster.timeline(&who, &query)))
        })
    })
}

/// `/ui/api/agents/live`: the agents and their figures, when they change.
pub(super) async fn agents(Caller(ui): super::Caller) -> Response {
    let (cluster, who) = (ui.cluster.clone(), ui.who.clone());
    stream(&ui, move |tx| {
        ticks(tx, AGENTS_TICK, "agents", true, move || Some(views::agents_json(&cluster, &who)))
    })
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
    stream(&ui, move |tx| {
        ticks(tx, TASKS_TICK, "tasks", true, move || {
            let changes = cluster.task_changes();
            (seen.replace(changes) != Some(changes))
                .then(|| views::tasks_json(&cluster, &who, &filter))
        })
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
