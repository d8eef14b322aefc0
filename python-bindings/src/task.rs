//! `Task`: a submitted task whose events a background reader collects, so that `result()`,
//! `events()`, `cancel()` and async iteration all work from the same log.

use std::sync::Arc;
use std::time::Duration;

use fleet_client::{ErrorKind, EventKind, TaskState, TaskStream};
use futures::StreamExt;
use parking_lot::{Condvar, Mutex};
use pyo3::exceptions::PyStopAsyncIteration;
use pyo3::prelude::*;
use tokio::sync::Notify;

use crate::backend::Backend;
use crate::errors;
use crate::event::{self, Logged};
use crate::runtime::{self, Interrupted};
use crate::schema::OutputSchema;

/// The events of one task so far, shared by its reader and every waiter.
#[derive(Default)]
pub struct TaskLog {
    state: Mutex<LogState>,
    changed: Condvar,
    changed_async: Notify,
}

#[derive(Default)]
struct LogState {
    events: Vec<Logged>,
    /// Set once the stream ended: `None` for a clean end.
    ended: Option<Option<String>>,
    /// The seq of the last `input_required` this process replied to: the log may not show
    /// the reply yet, and the request is no longer waiting.
    replied_to: u64,
}

impl TaskLog {
    fn push(&self, event: Logged) {
        self.state.lock().events.push(event);
        self.changed.notify_all();
        self.changed_async.notify_waiters();
    }

    fn end(&self, error: Option<String>) {
        self.state.lock().ended = Some(error);
        self.changed.notify_all();
        self.changed_async.notify_waiters();
    }

    /// The event at `index`, waiting up to `slice` for it; `Err` once no more will come.
    fn get_blocking(
        &self,
        index: usize,
        slice: Duration,
    ) -> Result<Option<Logged>, Option<String>> {
        let mut state = self.state.lock();
        if let Some(e) = state.events.get(index) {
            return Ok(Some(e.clone()));
        }
        if let Some(end) = &state.ended {
            return Err(end.clone());
        }
        self.changed.wait_for(&mut state, slice);
        match (state.events.get(index), &state.ended) {
            (Some(e), _) => Ok(Some(e.clone())),
            (None, Some(end)) => Err(end.clone()),
            (None, None) => Ok(None),
        }
    }

    async fn get_async(&self, index: usize) -> Result<Logged, Option<String>> {
        loop {
            let notified = self.changed_async.notified();
            {
                let state = self.state.lock();
                if let Some(e) = state.events.get(index) {
                    return Ok(e.clone());
                }
                if let Some(end) = &state.ended {
                    return Err(end.clone());
                }
            }
            notified.await;
        }
    }

    fn last(&self) -> Option<Logged> {
        self.state.lock().events.last().cloned()
    }

    /// The task's state after the events so far (each event's `state_after`, as the head
    /// moves it).
    fn state(&self) -> TaskState {
        let state = self.state.lock();
        let last = state.events.iter().rev().find_map(|e| Some((e, e.kind.state_after()?)));
        match last {
            None => TaskState::Queued,
            // Replied to from here: working again, whether the log shows it yet or not.
            Some((e, TaskState::InputRequired)) if e.seq <= state.replied_to => TaskState::Working,
            Some((_, task_state)) => task_state,
        }
    }

    /// The `input_required` event the task waits on, if it waits.
    fn waiting_for(&self) -> Option<Logged> {
        let state = self.state.lock();
        let last = state.events.iter().rev().find(|e| e.kind.state_after().is_some())?;
        let waits = matches!(last.kind, EventKind::InputRequired { .. });
        (waits && last.seq > state.replied_to).then(|| last.clone())
    }

    /// Whether the task has ended, as far as its events so far say.
    fn ended(&self) -> bool {
        self.last().and_then(|e| e.kind.state_after()).is_some_and(TaskState::is_terminal)
    }

    /// The request of seq `seq` has been replied to.
    fn replied(&self, seq: u64) {
        let mut state = self.state.lock();
        state.replied_to = state.replied_to.max(seq);
        drop(state);
        self.changed.notify_all();
        self.changed_async.notify_waiters();
    }
}

/// Reads `stream` into a new log in the background; returns once the first event (which
/// carries the task id) has arrived.
/// `schema` parses its answer.
pub async fn start(
    client: Backend,
    mut stream: TaskStream,
    schema: Option<Arc<OutputSchema>>,
) -> Result<Task, fleet_client::Error> {
    let first = stream.next().await.ok_or(fleet_client::Error::StreamEnded)??;
    let log = Arc::new(TaskLog::default());
    let task = Task { id: first.task_id.to_string(), log: log.clone(), client, schema };
    log.push(Arc::new(first));
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => log.push(Arc::new(event)),
                Err(e) => return log.end(Some(e.to_string())),
            }
        }
        log.end(None);
    });
    Ok(task)
}

/// Turns the last event of a finished task into its result.
fn outcome(log: &TaskLog, stream_error: Option<String>) -> PyResult<String> {
    let Some(last) = log.last() else {
        return Err(errors::kind(ErrorKind::Internal, "the task produced no events"));
    };
    let id = last.task_id.as_str();
    match &last.kind {
        EventKind::Completed { .. } => {
            let state = log.state.lock();
            let texts = state.events.iter().filter(|e| e.attempt == last.attempt);
            Ok(texts
                .filter_map(|e| match &e.kind {
                    EventKind::TextDelta { text, .. } => Some(text.as_str()),
                    _ => None,
                })
                .collect())
        }
        EventKind::Failed { error, kind, .. } => {
            Err(errors::task_failed(kind.as_str(), id, format!("task {id} failed: {error}")))
        }
        EventKind::Canceled { reason } => {
            Err(errors::task_failed("canceled", id, format!("task {id} was canceled: {reason}")))
        }
        _ => Err(errors::unavailable(format!(
            "the stream of task {} ended before the task did: {}",
            last.task_id,
            stream_error.unwrap_or_else(|| "no reason given".into())
        ))),
    }
}

/// A completed task's answer for Python: parsed under an output schema, else its text.
pub fn answer(
    py: Python<'_>,
    task_id: &str,
    schema: Option<&OutputSchema>,
    text: String,
) -> PyResult<Py<PyAny>> {
    match schema {
        Some(schema) => schema.parse(py, task_id, &text),
        None => Ok(text.into_pyobject(py)?.into_any().unbind()),
    }
}

/// A task submitted to the cluster.
#[pyclass(module = "agentfleet", frozen)]
pub struct Task {
    #[pyo3(get)]
    id: String,
    log: Arc<TaskLog>,
    client: Backend,
    /// The output schema the answer follows and is parsed with.
    schema: Option<Arc<OutputSchema>>,
}

impl Task {
    fn iterator(&self, owns_task: bool) -> EventIterator {
        EventIterator {
            log: self.log.clone(),
            next: Mutex::new(0),
            task: self.id.clone(),
            client: self.client.clone(),
            owns_task,
        }
    }

    fn send_reply(&self, py: Python<'_>, reply: fleet_client::Reply) -> PyResult<()> {
        let (client, id) = (self.client.clone(), self.id.clone());
        // The request this process sees: a reply never answers a later one it has not seen.
        let request = self.log.waiting_for().map(|e| e.seq);
        let seq = request.unwrap_or(0);
        let replied = async move { client.reply(&id, reply, seq).await.map_err(errors::to_py) };
        runtime::block_on(py, replied)?;
        if let Some(seq) = request {
            self.log.replied(seq);
        }
        Ok(())
    }

    /// Waits (GIL released, Ctrl-C noticed) until the task ends.
    fn wait_end(&self, py: Python<'_>, timeout: Option<Duration>) -> PyResult<Option<String>> {
        let log = self.log.clone();
        let ended = async move {
            loop {
                let notified = log.changed_async.notified();
                if let Some(end) = log.state.lock().ended.clone() {
                    return end;
                }
                notified.await;
            }
        };
        match runtime::wait(py, ended, timeout)? {
            Ok(end) => Ok(end),
            Err(Interrupted::Signal(e)) => {
                self.cancel(py)?;
                Err(e)
            }
            Err(timeout) => Err(timeout.into()),
        }
    }
}

#[pymethods]
impl Task {
    /// Waits for the task and returns its text; raises the class of its failure's kind
    /// (`af.BusyError`, `af.CanceledError`, ...), or
    /// TimeoutError after `timeout` seconds (the task keeps running).
    #[pyo3(signature = (timeout=None))]
    fn result(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        let timeout = timeout.map(Duration::from_secs_f64);
        let end = self.wait_end(py, timeout)?;
        answer(py, &self.id, self.schema.as_deref(), outcome(&self.log, end)?)
    }

    /// Waits for the task and returns the files and data it returned beside its text
    /// (`agentfleet.Artifact`s, in order); raises as `result()` does. Immediate once the
    /// task has ended (after `result()` or `await aresult()`).
    #[pyo3(signature = (timeout=None))]
    fn artifacts(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Vec<Py<PyAny>>> {
        let end = self.wait_end(py, timeout.map(Duration::from_secs_f64))?;
        outcome(&self.log, end)?;
        let returned: Vec<_> = {
            let state = self.log.state.lock();
            let attempt = state.events.last().map_or(0, |e| e.attempt);
            let artifacts = state.events.iter().filter(|e| e.attempt == attempt);
            artifacts
                .filter_map(|e| match &e.kind {
                    EventKind::Artifact(a) => Some(a.clone()),
                    _ => None,
                })
                .collect()
        };
        returned.iter().map(|a| crate::event::artifact_object(py, a)).collect()
    }

    /// Asks the cluster to cancel the task (a finished task stays as it is).
    fn cancel(&self, py: Python<'_>) -> PyResult<()> {
        let client = self.client.clone();
        let id = self.id.clone();
        runtime::block_on(py, async move { client.cancel(&id).await.map_err(errors::to_py) })
    }

    /// The task's state (`af.TaskState`): queued, scheduled, working, input-required,
    /// completed, failed or canceled (as its events so far say).
    #[getter]
    fn state(&self) -> &'static str {
        self.log.state().as_str()
    }

    /// The `af.InputRequired` event the task waits on (its `prompt` the question; `tool` and
    /// `arguments` set when a tool call waits for approval), or None when it does not wait.
    #[getter]
    fn input_request(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.log.waiting_for().map(|e| event::to_py(py, &e)).transpose()
    }

    /// Waits until the task needs input (returns its `input_required` event) or ends
    /// (returns None); TimeoutError after `timeout` seconds.
    #[pyo3(signature = (timeout=None))]
    fn wait_input(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Py<PyAny>>> {
        let log = self.log.clone();
        let waited = async move {
            loop {
                let notified = log.changed_async.notified();
                if let Some(request) = log.waiting_for() {
                    return Some(request);
                }
                if log.state.lock().ended.is_some() {
                    return None;
                }
                notified.await;
            }
        };
        match runtime::wait(py, waited, timeout.map(Duration::from_secs_f64))? {
            Ok(request) => request.map(|e| event::to_py(py, &e)).transpose(),
            Err(Interrupted::Signal(e)) => Err(e),
            Err(timeout) => Err(timeout.into()),
        }
    }

    /// Answers the question the task waits on (for an approval: "yes"/"approve" approves,
    /// anything else rejects). Raises `InvalidRequestError` when the task runs but does not wait
    /// for input, `UnsupportedError` when it has ended.
    fn reply(&self, py: Python<'_>, text: String) -> PyResult<()> {
        self.send_reply(py, fleet_client::Reply::Text(text))
    }

    /// Approves the tool call the task waits on: the call runs.
    fn approve(&self, py: Python<'_>) -> PyResult<()> {
        self.send_reply(py, fleet_client::Reply::Approve)
    }

    /// Rejects the tool call the task waits on (or declines its question); the agent's model
    /// reads `reason`.
    #[pyo3(signature = (reason=String::new()))]
    fn reject(&self, py: Python<'_>, reason: String) -> PyResult<()> {
        self.send_reply(py, fleet_client::Reply::Reject(reason))
    }

    /// Whether the task has ended.
    fn done(&self) -> bool {
        self.log.ended()
    }

    /// Iterates over the task's events from the first, waiting for new ones.
    pub fn events(&self) -> EventIterator {
        self.iterator(false)
    }

    /// An async iterator over the task's events from the first.
    fn aevents(&self) -> AsyncEventIterator {
        let log = LazyLog::new(tokio::sync::OnceCell::new_with(Some(self.log.clone())));
        AsyncEventIterator { log, submit: None, next: Arc::default() }
    }

    /// Awaits the task's text (raises like `result()`).
    fn aresult<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (log, id, schema) = (self.log.clone(), self.id.clone(), self.schema.clone());
        runtime::get()?;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let mut index = 0;
            let end = loop {
                match log.get_async(index).await {
                    Ok(_) => index += 1,
                    Err(end) => break end,
                }
            };
            let text = outcome(&log, end)?;
            Python::attach(|py| answer(py, &id, schema.as_deref(), text))
        })
    }

    /// `await task` waits for the task and gives its answer, as `await task.aresult()`.
    fn __await__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.aresult(py)?.call_method0("__await__")
    }

    fn __repr__(&self) -> String {
        format!("Task(id={:?}, state={:?})", self.id, self.log.state().as_str())
    }
}

/// Events of one task as they arrive; Ctrl-C while waiting cancels the task.
#[pyclass(module = "agentfleet")]
pub struct EventIterator {
    log: Arc<TaskLog>,
    next: Mutex<usize>,
    task: String,
    client: Backend,
    /// Set for `agent.stream(...)`: nobody else holds the task, so abandoning the iterator
    /// (a `break`, or Ctrl-C landing between two events) cancels it.
    owns_task: bool,
}

impl EventIterator {
    /// The iterator of `agent.stream(...)`, which cancels its task when dropped early.
    pub fn owning(task: &Task) -> Self {
        task.iterator(true)
    }
}

impl Drop for EventIterator {
    fn drop(&mut self) {
        let finished = self.log.ended();
        if self.owns_task
            && !finished
            && let Ok(rt) = runtime::get()
        {
            let (client, id) = (self.client.clone(), self.task.clone());
            rt.spawn(async move { client.cancel(&id).await });
        }
    }
}

#[pymethods]
impl EventIterator {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let index = *self.next.lock();
        loop {
            let log = self.log.clone();
            match py.detach(|| log.get_blocking(index, Duration::from_millis(50))) {
                Ok(Some(event)) => {
                    *self.next.lock() = index + 1;
                    return event::to_py(py, &event).map(Some);
                }
                Ok(None) => {}
                Err(None) => return Ok(None),
                Err(Some(error)) => return Err(errors::unavailable(error)),
            }
            if let Err(interrupt) = py.check_signals() {
                let (client, id) = (self.client.clone(), self.task.clone());
                let _ = runtime::block_on(py, async move {
                    client.cancel(&id).await.map_err(errors::to_py)
                });
                return Err(interrupt);
            }
        }
    }
}

/// Where an async iterator's events come from: a task already submitted, or one submitted
/// on the first `__anext__` (so that `agent.astream(...)` needs no `await` itself).
type LazyLog = Arc<tokio::sync::OnceCell<Arc<TaskLog>>>;

/// Events of one task for `async for`.
#[pyclass(module = "agentfleet")]
pub struct AsyncEventIterator {
    log: LazyLog,
    submit: Option<(Backend, fleet_client::Submission)>,
    next: Arc<Mutex<usize>>,
}

impl AsyncEventIterator {
    /// An iterator that submits `submission` when first polled.
    pub fn lazy(client: Backend, submission: fleet_client::Submission) -> Self {
        Self { log: LazyLog::default(), submit: Some((client, submission)), next: Arc::default() }
    }
}

#[pymethods]
impl AsyncEventIterator {
    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (log, next, submit) = (self.log.clone(), self.next.clone(), self.submit.clone());
        runtime::get()?;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let log = log
                .get_or_try_init(|| async move {
                    let (client, submission) = submit.ok_or(fleet_client::Error::StreamEnded)?;
                    let stream = client.submit(submission).await?;
                    Ok::<_, fleet_client::Error>(start(client, stream, None).await?.log)
                })
                .await
                .map_err(errors::to_py)?;
            let index = *next.lock();
            match log.get_async(index).await {
                Ok(event) => {
                    *next.lock() = index + 1;
                    Python::attach(|py| event::to_py(py, &event))
                }
                Err(None) => Err(PyStopAsyncIteration::new_err(())),
                Err(Some(error)) => Err(errors::unavailable(error)),
            }
        })
    }
}
