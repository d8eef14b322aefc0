//! The AG-UI door: `POST /agui/{agent}` takes a `RunAgentInput` and answers with the run's
//! AG-UI events over server-sent events, so a CopilotKit or `@ag-ui/client` frontend talks
//! to any agent of the cluster with nothing but the URL.
//!
//! A thin adapter from AG-UI to the cluster's one task API ([`TaskRun`]):
//! - a run is one task: the client's messages its conversation (AG-UI clients send the whole
//!   thread every run, so the head keeps no copy of it), the client's tools its frontend
//!   tools ([`input`]);
//! - the task's events become AG-UI's ([`events`]). A call of a frontend tool ends the run
//!   with the call pending; the client runs it and sends its result in the next run;
//! - a question or an approval the agent asks for ends the run with an interrupt whose id
//!   names the task and the request; the task waits (until its input deadline), and the
//!   run whose `resume` answers the interrupt replies to it and streams the rest of the
//!   same task;
//! - a client that goes away mid-run cancels the task, as on every other door.
//!
//! Refusals before the stream starts (a malformed input, an unknown agent, no credential)
//! are HTTP errors with a JSON body of the OpenAI door's shape (AG-UI defines none); once
//! the stream has started, failures are `RUN_ERROR`.

pub mod events;
pub mod input;

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::{Stream, StreamExt, stream};
use serde_json::Value;

use crate::auth::{Principal, Principals};
use crate::cluster::{Cluster, NewTask};
use crate::openai::errors::ApiError;
use crate::openai::{BodyLimit, JsonBody, or_405};
use crate::run::TaskRun;
use events::Translator;
use input::RunInput;

/// The AG-UI protocol version this door speaks (`RUN_STARTED.protocolVersion`).
pub const PROTOCOL_VERSION: &str = "1.0";

/// Shared by the AG-UI handlers.
#[derive(Clone, Debug)]
pub struct Agui {
    pub cluster: Arc<Cluster>,
    /// Client credentials, required as `Authorization: Bearer KEY` (or `X-API-Key`).
    pub clients: Principals,
    /// Who the request is from (a handler's state acts as the request's principal).
    pub who: Principal,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl crate::auth::ActsAs for Agui {
    fn acting_as(&self, who: Principal) -> Self {
        Self { who, ..self.clone() }
    }
}

impl BodyLimit for Agui {
    fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }
}

impl Agui {
    /// `routes` behind the API key when one is set, refused in the OpenAI door's shape.
    pub(crate) fn behind_auth(self, routes: Router<Self>, door: &'static str) -> Router {
        let auth = crate::auth::HttpAuth {
            principals: self.clients.clone(),
            door,
            render: crate::openai::refusal,
        };
        routes
            .route_layer(axum::middleware::from_fn_with_state(auth, crate::auth::http))
            .with_state(self)
    }

    /// Starts a task of `agent` (404 when there is none) on a conversation a web client
    /// sent whole: `history`, the last message `input`, and the client's `tools`.
    pub(crate) fn start(
        &self,
        agent: String,
        input: String,
        history: Vec<fleet_proto::Turn>,
        tools: Vec<Value>,
    ) -> Result<TaskRun, ApiError> {
        if self.cluster.agent(&self.who, &agent).is_none() {
            return Err(crate::Error::UnknownAgent(agent).into());
        }
        let options = fleet_proto::TaskOptions { history, tools, ..Default::default() };
        let task = NewTask {
            agent,
            input,
            options: Some(Arc::new(options)),
            traceparent: crate::traceparent::incoming(),
            ..Default::default()
        };
        Ok(TaskRun::start(&self.cluster, &self.who, task)?)
    }
}

/// A stream of SSE events with comment lines while it is quiet (a model loading, a slow
/// tool), so proxies keep it open.
pub(crate) fn sse(events: impl Stream<Item = Event> + Send + 'static) -> Response {
    let events = events.map(Ok::<_, Infallible>);
    let keep_alive = KeepAlive::new().interval(crate::openai::chat::KEEP_ALIVE);
    Sse::new(events).keep_alive(keep_alive).into_response()
}

/// One SSE event of JSON `data`.
pub(crate) fn data(event: &Value) -> Event {
    Event::default().data(event.to_string())
}

/// The route, behind the API key when one is set.
pub fn router(agui: Agui) -> Router {
    agui.behind_auth(Router::new().route("/agui/{agent}", or_405(post(run))), "agui")
}

/// `POST /agui/{agent}`: a new run of `agent`, or the continuation of an interrupted one.
async fn run(
    crate::auth::Caller(door): crate::auth::Caller<Agui>,
    Path(agent): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let input = RunInput::parse(&body)?;
    let run = match &input.resume {
        Some(resume) => {
            let id = &resume.interrupt;
            let task = door.cluster.task(&door.who, &id.task_id)?;
            if task.agent != agent {
                return Err(ApiError::invalid(
                    "resume[0].interruptId",
                    format!(
                        "interrupt {} is agent {:?}'s, not {agent:?}: resume it at /agui/{}",
                        id.to_wire(),
                        task.agent,
                        task.agent
                    ),
                ));
            }
            // Followed before the reply, so nothing the reply sets off is missed; from the
            // interrupt itself, which the translator takes as the run's start.
            let run = TaskRun::resume(&door.cluster, &door.who, &id.task_id, id.seq)?;
            if let Err(e) =
                door.cluster.reply(&door.who, &id.task_id, "", resume.reply.clone(), id.seq)
            {
                // Cancelling an interrupt that no longer waits (its deadline passed, the task
                // was cancelled, or a retry asks again under a new seq): the run shows what
                // became of the task, which is how the client lets the interrupt go (the
                // official client refuses to answer an expired one, and a refusal here would
                // leave its thread stuck on it). An answer that is refused is the request's
                // error, saying why: a second answer is not taken for the first.
                let waits_here = door.cluster.task(&door.who, &id.task_id).is_ok_and(|t| {
                    t.state == fleet_proto::TaskState::InputRequired && t.events == id.seq
                });
                if !resume.cancelled || waits_here {
                    // Not this request's to cancel: it still waits, or has ended.
                    run.keep();
                    return Err(e.into());
                }
            }
            run
        }
        None => {
            door.start(agent, input.input.clone(), input.history.clone(), input.tools.clone())?
        }
    };
    tracing::debug!(task_id = %run.task_id, thread_id = %input.thread_id, run_id = %input.run_id, "AG-UI run");
    let resumed_at = input.resume.as_ref().map(|r| r.interrupt.seq);
    Ok(stream_run(run.asking(), &input, resumed_at))
}

/// The run's events: `RUN_STARTED`, the task's events translated, the run's end.
fn stream_run(run: TaskRun, input: &RunInput, resumed_at: Option<u64>) -> Response {
    let task_id = run.task_id.as_str();
    let translator = match resumed_at {
        Some(seq) => Translator::resumed(&input.thread_id, &input.run_id, task_id, seq),
        None => Translator::new(&input.thread_id, &input.run_id, task_id),
    };
    let started = translator.started(input.parent_run_id.as_deref());
    let events = stream::once(async move { started })
        .chain(crate::run::translated(run, translator))
        .map(|e| data(&e));
    sse(events)
}
