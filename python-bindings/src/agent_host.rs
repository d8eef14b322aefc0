//! `AgentHost`: this process hosting Python agents (`@af.agent`) for its workers: the
//! embedded workers of `init()`, or the worker of `python -m agentfleet worker --import`.
//! The worker runs each task of a `python:NAME` agent through [`CodeAgents::run`]; this
//! hands it to Python (`agentfleet.agents` reads the runs in batches and runs each as a
//! coroutine on its event loop) and streams back what the code yields. What the code asks
//! of its context (chat, call, publish) runs on the worker's runtime and is awaited in
//! Python.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;

use fleet_client::{Artifact, ArtifactPart, ErrorKind, FilePart};
use fleet_inference::{ChatMessage, GenerateRequest, Role, ToolCall};
use fleet_worker::code_agents::{CodeAgents, CodeContext, CodeResult, CodeTask};
use fleet_worker::tool::ToolOutcome;
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use tokio::sync::{mpsc, oneshot};

use crate::errors;

/// The most runs handed to Python at once.
const BATCH: usize = 512;
/// The most text one task of a Python agent may stream (its answer is kept whole by the
/// head and in the agent's memory).
const MAX_ANSWER_BYTES: usize = 16 << 20;
/// The most one artifact may hold (the worker sends it to the head in one message).
const MAX_ARTIFACT_BYTES: usize = 8 << 20;

/// What the worker sends Python.
enum Command {
    Run(u64, Box<CodeTask>),
    Cancel(u64),
    /// The host closed: Python's reader stops.
    Close,
}

/// What Python sends back about a run, in order.
enum Out {
    Text(String),
    Artifact(Artifact),
    /// A call of the context starts: answered once the text before it is out, so the
    /// task's events keep the order in which the code did things.
    Barrier(oneshot::Sender<()>),
    /// The actor's state as the code left it (JSON), saved before the run ends well.
    State(String),
    /// A tool the code runs itself starts (a framework's tool: `ctx.tool_started`).
    LocalCall(ToolCall),
    /// ... and ends (`ctx.tool_ended`): the call's id and outcome.
    LocalResult(String, ToolOutcome),
    Done(CodeResult),
}

/// A run Python is working on.
struct Running {
    out: mpsc::UnboundedSender<Out>,
    context: CodeContext,
    /// The worker's runtime, where the context's work runs.
    runtime: tokio::runtime::Handle,
    /// The context's calls under way: stopped when the run ends.
    calls: Vec<tokio::task::AbortHandle>,
}

struct Shared {
    names: Vec<String>,
    commands: std_mpsc::Sender<Command>,
    runs: Mutex<HashMap<u64, Running>>,
    next: AtomicU64,
}

/// The native side of the Python agents this process hosts (see `agentfleet.agents`).
#[pyclass(module = "agentfleet", name = "_AgentHost", frozen)]
pub struct AgentHost {
    shared: Arc<Shared>,
    /// Held by the one reader while it waits; `None` once it has seen the host close.
    commands: Mutex<Option<std_mpsc::Receiver<Command>>>,
}

impl AgentHost {
    /// The host as the worker sees it.
    pub fn code_agents(&self) -> Arc<dyn CodeAgents> {
        Arc::new(Agents(self.shared.clone()))
    }

    /// `work` on the worker's runtime with run `run`'s context, as a Python awaitable.
    fn spawn<'py, F, Fut, T>(
        &self,
        py: Python<'py>,
        run: u64,
        work: F,
    ) -> PyResult<Bound<'py, PyAny>>
    where
        F: FnOnce(CodeContext) -> Fut,
        Fut: Future<Output = PyResult<T>> + Send + 'static,
        T: for<'a> IntoPyObject<'a> + Send + 'static,
    {
        let (barrier, reached) = oneshot::channel();
        let (context, runtime) = {
            let runs = self.shared.runs.lock();
            let Some(r) = runs.get(&run) else {
                return Err(errors::unavailable("this task has ended (canceled or failed)"));
            };
            let _ = r.out.send(Out::Barrier(barrier));
            (r.context.clone(), r.runtime.clone())
        };
        let work = work(context);
        let handle = runtime.spawn(async move {
            // The run gone meanwhile: the call still runs, and finds the task ended.
            let _ = reached.await;
            work.await
        });
        if let Some(r) = self.shared.runs.lock().get_mut(&run) {
            r.calls.retain(|c| !c.is_finished());
            r.calls.push(handle.abort_handle());
        }
        // Python no longer awaiting it (canceled, timed out) stops the call.
        let abort = AbortOnDrop(handle.abort_handle());
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let _abort = abort;
            match handle.await {
                Ok(result) => result,
                Err(e) if e.is_panic() => {
                    Err(errors::kind(ErrorKind::Internal, "the call panicked"))
                }
                Err(_) => Err(errors::unavailable("the call stopped: its task ended")),
            }
        })
    }
}

#[pymethods]
impl AgentHost {
    /// A host of the Python agents `names` (`["*"]`: whatever this process defines).
    #[new]
    pub fn new(names: Vec<String>) -> Self {
        let (commands, rx) = std_mpsc::channel();
        let shared = Arc::new(Shared {
            names,
            commands,
            runs: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        });
        Self { shared, commands: Mutex::new(Some(rx)) }
    }

    /// The next runs and cancellations, at least one (waits): `("run", run, program, agent,
    /// task_id, context_id, attempt, input, history, instructions, files, state)` with
    /// `history` a list of `(role, content)`, `files` of `(name, media_type, data, url)` and
    /// `state` the actor's stored state as JSON (None: the task keeps none), or `("cancel",
    /// run)`; `None` once the host is closed.
    fn next_batch<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyList>>> {
        let batch = py.detach(|| {
            let mut commands = self.commands.lock();
            let rx = commands.as_ref()?;
            let mut batch = vec![rx.recv().ok()?];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            if batch.iter().any(|c| matches!(c, Command::Close)) {
                // From now on runs cannot be sent; those sent fail rather than wait.
                commands.take();
                fail_all(&self.shared);
                return None;
            }
            Some(batch)
        });
        let Some(batch) = batch else { return Ok(None) };
        let list = PyList::empty(py);
        for command in batch {
            let item = match command {
                Command::Close => continue,
                Command::Cancel(run) => PyTuple::new(
                    py,
                    ["cancel".into_pyobject(py)?.into_any(), run.into_pyobject(py)?.into_any()],
                )?,
                Command::Run(run, task) => {
                    let history = PyList::empty(py);
                    for m in &task.history {
                        history.append((m.role.as_str(), m.content.as_str()))?;
                    }
                    let files = crate::event::file_tuples(py, &task.files)?;
                    PyTuple::new(
                        py,
                        [
                            "run".into_pyobject(py)?.into_any(),
                            run.into_pyobject(py)?.into_any(),
                            task.program.into_pyobject(py)?.into_any(),
                            task.agent.into_pyobject(py)?.into_any(),
                            task.task_id.into_pyobject(py)?.into_any(),
                            task.context_id.into_pyobject(py)?.into_any(),
                            task.attempt.into_pyobject(py)?.into_any(),
                            task.input.into_pyobject(py)?.into_any(),
                            history.into_any(),
                            task.instructions.into_pyobject(py)?.into_any(),
                            files.into_any(),
                            task.state.as_deref().into_pyobject(py)?.into_any(),
                        ],
                    )?
                }
            };
            list.append(item)?;
        }
        Ok(Some(list))
    }

    /// Streams `text` as part of run `run`'s answer; false once the run has ended (the text
    /// is dropped, and a generator should stop).
    fn text(&self, run: u64, text: String) -> bool {
        match self.shared.runs.lock().get(&run) {
            Some(running) => running.out.send(Out::Text(text)).is_ok(),
            None => false,
        }
    }

    /// Returns an artifact beside run `run`'s text: a file (`data` or `url`, with
    /// `media_type`) or, with `json`, data; false once the run has ended.
    #[pyo3(signature = (run, name, description, media_type, data, url, json))]
    #[allow(clippy::too_many_arguments)]
    fn artifact(
        &self,
        run: u64,
        name: String,
        description: String,
        media_type: String,
        data: Option<Vec<u8>>,
        url: String,
        json: Option<String>,
    ) -> PyResult<bool> {
        let part = match json {
            Some(json) => {
                serde_json::from_str::<serde_json::Value>(&json).map_err(|e| {
                    errors::kind(
                        ErrorKind::InvalidRequest,
                        format!("an artifact's data is not JSON: {e}"),
                    )
                })?;
                ArtifactPart::Data(json)
            }
            None => {
                let data = data.unwrap_or_default();
                if !url.is_empty() && !data.is_empty() {
                    return Err(errors::kind(
                        ErrorKind::InvalidRequest,
                        "an artifact's file has bytes or a URL, not both",
                    ));
                }
                ArtifactPart::File(FilePart { name: name.clone(), media_type, data, url })
            }
        };
        let artifact = Artifact { id: String::new(), name, description, part };
        if artifact.size() > MAX_ARTIFACT_BYTES {
            return Err(errors::kind(
                ErrorKind::InvalidRequest,
                format!(
                    "an artifact holds at most {} MiB, this one {} bytes: store it elsewhere and \
                 return its URL (af.AgentFile(url=...))",
                    MAX_ARTIFACT_BYTES >> 20,
                    artifact.size()
                ),
            ));
        }
        Ok(match self.shared.runs.lock().get(&run) {
            Some(running) => running.out.send(Out::Artifact(artifact)).is_ok(),
            None => false,
        })
    }

    /// Run `run` ended: well (`error` None, with the actor's `state` as JSON when it
    /// changed) or failing with `error`.
    #[pyo3(signature = (run, error=None, state=None))]
    fn finish(&self, run: u64, error: Option<String>, state: Option<String>) {
        if let Some(running) = self.shared.runs.lock().get(&run) {
            if let (None, Some(state)) = (&error, state) {
                let _ = running.out.send(Out::State(state));
            }
            let _ = running.out.send(Out::Done(error.map_or(Ok(()), Err)));
        }
    }

    /// Awaitable: stores the actor's `state` (JSON) for its key's next task; resolves once
    /// the head has stored it.
    fn save<'py>(&self, py: Python<'py>, run: u64, state: String) -> PyResult<Bound<'py, PyAny>> {
        self.spawn(py, run, move |context| async move {
            context
                .save_state(state, true)
                .await
                .map_err(|e| errors::kind(ErrorKind::InvalidRequest, e))
        })
    }

    /// Awaitable: model `model`'s answer (text) to `messages` (`(role, content)` pairs).
    #[pyo3(signature = (run, model, messages, max_tokens=None, temperature=None, top_p=None, seed=None, stop=Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn chat<'py>(
        &self,
        py: Python<'py>,
        run: u64,
        model: String,
        messages: Vec<(String, String)>,
        max_tokens: Option<u32>,
        temperature: Option<f32>,
        top_p: Option<f32>,
        seed: Option<u64>,
        stop: Vec<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let messages = messages
            .into_iter()
            .map(|(role, content)| Ok(ChatMessage::new(role_of(&role)?, content)))
            .collect::<PyResult<Vec<_>>>()?;
        let request = GenerateRequest {
            messages,
            max_tokens,
            temperature,
            top_p,
            seed,
            stop,
            ..Default::default()
        };
        self.spawn(py, run, move |context| async move {
            context.chat(&model, request).await.map_err(|(kind, message)| chat_error(kind, message))
        })
    }

    /// Awaitable: `(output, is_error)` of calling `tool` (an agent or one of the agent's
    /// tools) with JSON `arguments`.
    fn call<'py>(
        &self,
        py: Python<'py>,
        run: u64,
        tool: String,
        arguments: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.spawn(py, run, move |context| async move {
            let outcome = context.call(&tool, arguments).await;
            Ok((outcome.output, outcome.is_error))
        })
    }

    /// Awaitable: `(output, is_error)` of publishing `messages` on `topic` in one step (the
    /// output says the offsets: "published on TOPIC at offset N", or "published K messages
    /// on TOPIC at offsets N to M").
    fn publish<'py>(
        &self,
        py: Python<'py>,
        run: u64,
        topic: String,
        messages: Vec<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.spawn(py, run, move |context| async move {
            let outcome = context.publish(&topic, &messages).await;
            Ok((outcome.output, outcome.is_error))
        })
    }

    /// Awaitable: `(status, body, chunks)` answering `body`, a `POST /v1/chat/completions`
    /// request, from this worker's models (see [`crate::model_api`]); `chunks` (a stream's
    /// events) is set when the request streams and started well.
    fn openai_chat<'py>(
        &self,
        py: Python<'py>,
        run: u64,
        body: Vec<u8>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.spawn(py, run, move |context| async move {
            Ok(crate::model_api::chat_completions(context, body).await)
        })
    }

    /// A tool the code runs itself starts (`name`, JSON `arguments`): the task's events
    /// show the call; returns its id, for [`AgentHost::tool_ended`].
    fn tool_started(&self, run: u64, name: String, arguments: String) -> PyResult<String> {
        if arguments.len() > MAX_ARTIFACT_BYTES {
            return Err(too_big("a call's arguments", arguments.len()));
        }
        let runs = self.shared.runs.lock();
        let Some(running) = runs.get(&run) else {
            return Err(errors::unavailable("this task has ended (canceled or failed)"));
        };
        let id = running.context.local_call_id();
        let call = ToolCall { id: id.clone(), name, arguments };
        let _ = running.out.send(Out::LocalCall(call));
        Ok(id)
    }

    /// The tool the code ran itself (`call_id`, from `tool_started`) answered `output`;
    /// false once the run has ended.
    #[pyo3(signature = (run, call_id, output, is_error=false))]
    fn tool_ended(
        &self,
        run: u64,
        call_id: String,
        output: String,
        is_error: bool,
    ) -> PyResult<bool> {
        if output.len() > MAX_ARTIFACT_BYTES {
            return Err(too_big("a call's output", output.len()));
        }
        let outcome = ToolOutcome { output, is_error };
        Ok(match self.shared.runs.lock().get(&run) {
            Some(running) => running.out.send(Out::LocalResult(call_id, outcome)).is_ok(),
            None => false,
        })
    }

    /// Stops hosting: `next_batch` returns `None`; runs still open fail.
    fn close(&self) {
        let _ = self.shared.commands.send(Command::Close);
        fail_all(&self.shared);
    }
}

fn fail_all(shared: &Shared) {
    for (_, running) in shared.runs.lock().drain() {
        let _ = running.out.send(Out::Done(Err("the process's agent host closed".into())));
    }
}

fn role_of(name: &str) -> PyResult<Role> {
    Ok(match name {
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        other => {
            return Err(errors::kind(
                ErrorKind::InvalidRequest,
                format!("a message's role is system, user, assistant or tool, not {other:?}"),
            ));
        }
    })
}

fn chat_error(kind: ErrorKind, message: String) -> PyErr {
    errors::kind(kind, message)
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The host as the worker calls it.
struct Agents(Arc<Shared>);

/// Ends a run Python still works on when the worker drops it (the task canceled).
struct Abandon {
    shared: Arc<Shared>,
    run: u64,
    done: bool,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(running) = self.shared.runs.lock().remove(&self.run) {
            for call in running.calls {
                call.abort();
            }
        }
        if !self.done {
            let _ = self.shared.commands.send(Command::Cancel(self.run));
        }
    }
}

impl CodeAgents for Agents {
    fn names(&self) -> Vec<String> {
        self.0.names.clone()
    }

    fn run(&self, task: CodeTask, context: CodeContext) -> BoxFuture<'static, CodeResult> {
        let shared = self.0.clone();
        let run = shared.next.fetch_add(1, Ordering::Relaxed);
        let (out, mut outs) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Handle::current();
        let running = Running { out, context: context.clone(), runtime, calls: Vec::new() };
        shared.runs.lock().insert(run, running);
        let sent = shared.commands.send(Command::Run(run, Box::new(task)));
        let abandon = Abandon { shared, run, done: false };
        async move {
            // The whole guard moves into the run (not only the field it sets).
            let mut abandon = abandon;
            if sent.is_err() {
                abandon.done = true;
                return Err("this process no longer hosts Python agents".to_owned());
            }
            let mut streamed = 0;
            while let Some(out) = outs.recv().await {
                match out {
                    Out::Text(text) => {
                        streamed += text.len();
                        if streamed > MAX_ANSWER_BYTES {
                            return Err(too_much());
                        }
                        context.text(text).await;
                    }
                    Out::Artifact(artifact) => {
                        streamed += artifact.size();
                        if streamed > MAX_ANSWER_BYTES {
                            return Err(too_much());
                        }
                        context.artifact(artifact).await;
                    }
                    Out::Barrier(reached) => {
                        let _ = reached.send(());
                    }
                    Out::LocalCall(call) => {
                        streamed += call.arguments.len();
                        if streamed > MAX_ANSWER_BYTES {
                            return Err(too_much());
                        }
                        context.local_call_started(call).await;
                    }
                    Out::LocalResult(call_id, outcome) => {
                        streamed += outcome.output.len();
                        if streamed > MAX_ANSWER_BYTES {
                            return Err(too_much());
                        }
                        context.local_call_ended(call_id, outcome).await;
                    }
                    // Saved before the run's end is reported: the head stores it first.
                    Out::State(state) => context.save_state(state, false).await?,
                    Out::Done(result) => {
                        abandon.done = true;
                        return result;
                    }
                }
            }
            abandon.done = true;
            Err("the process's agent host closed".to_owned())
        }
        .boxed()
    }
}

/// Refuses `what` of `size` bytes, over what one event carries.
fn too_big(what: &str, size: usize) -> PyErr {
    errors::kind(
        ErrorKind::InvalidRequest,
        format!("{what} holds at most {} MiB, this one {size} bytes", MAX_ARTIFACT_BYTES >> 20),
    )
}

/// Why a task that streamed too much fails.
fn too_much() -> String {
    format!(
        "the agent streamed more than {} MiB (text and artifacts), the most one task may \
         answer: return less, or store the rest elsewhere and answer where it is",
        MAX_ANSWER_BYTES >> 20
    )
}
