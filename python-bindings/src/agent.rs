//! `Agent`: submit one task, many in parallel (`map`), or stream one; sync and asyncio.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fleet_client::{EventKind, ManyUpdate, Submission, TaskId, TaskState};
use futures::StreamExt;
use pyo3::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::errors::{self, TaskFailed};
use crate::runtime::{self, Interrupted};
use crate::task::{self, AsyncEventIterator, EventIterator, Task};

/// An agent registered on the cluster.
#[pyclass(module = "agentfleet", frozen)]
pub struct Agent {
    #[pyo3(get)]
    name: String,
    client: Backend,
}

impl Agent {
    pub fn new(name: String, client: Backend) -> Self {
        Self { name, client }
    }

    fn submission(&self, prompt: String, context_id: Option<String>) -> Submission {
        Submission {
            agent: self.name.clone(),
            input: prompt,
            context_id: context_id.unwrap_or_default(),
            options: None,
        }
    }
}

/// How one task of a `map` ended.
enum Ended {
    Output(String),
    Failed(String),
}

/// How long an interrupted `map` waits for the acknowledgements of what it already submitted.
const ACK_GRACE: Duration = Duration::from_secs(2);

/// Runs every prompt as a task over one multiplexed stream; returns (index, outcome) in
/// completion order. When `stop` is cancelled (Ctrl-C) it stops submitting, collects the ids
/// of everything already accepted, cancels the tasks still running, then signals `cleaned`.
async fn map_tasks(
    client: Backend,
    submissions: Vec<Submission>,
    progress: Option<Progress>,
    stop: CancellationToken,
    cleaned: tokio::sync::oneshot::Sender<()>,
) -> PyResult<Vec<(usize, Ended)>> {
    let total = submissions.len();
    let sent = Arc::new(AtomicUsize::new(0));
    let mut open: HashSet<TaskId> = HashSet::new();
    let mut acked = 0;
    let mut updates =
        client.submit_many(submissions, stop.clone(), sent.clone()).await.map_err(errors::to_py)?;
    let mut index_of = std::collections::HashMap::with_capacity(total);
    let mut text: Vec<String> = vec![String::new(); total];
    let mut attempt = vec![1u32; total];
    let mut ended = Vec::with_capacity(total);
    let mut progress = progress;
    while ended.len() < total {
        let batch = tokio::select! {
            b = updates.next() => b,
            () = stop.cancelled() => {
                // Collect the acks still due, so that every accepted task can be canceled.
                let deadline = tokio::time::Instant::now() + ACK_GRACE;
                while acked < sent.load(Ordering::SeqCst) {
                    let Ok(Some(Ok(batch))) = tokio::time::timeout_at(deadline, updates.next()).await else { break };
                    for update in batch {
                        match update {
                            ManyUpdate::Accepted { task_id, .. } => {
                                acked += 1;
                                open.insert(task_id);
                            }
                            ManyUpdate::Rejected { .. } => acked += 1,
                            ManyUpdate::Event(e) if e.kind.is_terminal() => {
                                open.remove(&e.task_id);
                            }
                            ManyUpdate::Event(_) => {}
                        }
                    }
                }
                let cancels = open.iter().map(|id| client.cancel(id.as_str()));
                futures::future::join_all(cancels).await;
                let _ = cleaned.send(());
                return Ok(Vec::new());
            }
        };
        let Some(batch) = batch else {
            return Err(errors::Unavailable::new_err(format!(
                "the cluster closed the stream after {} of {total} tasks",
                ended.len()
            )));
        };
        for update in batch.map_err(errors::to_py)? {
            match update {
                ManyUpdate::Accepted { client_ref, task_id } => {
                    acked += 1;
                    open.insert(task_id.clone());
                    index_of.insert(task_id, client_ref as usize);
                }
                ManyUpdate::Rejected { code, message, .. } => {
                    return Err(errors::from_code(code, message));
                }
                ManyUpdate::Event(e) => {
                    let Some(&i) = index_of.get(&e.task_id) else { continue };
                    if e.attempt != attempt[i] {
                        attempt[i] = e.attempt;
                        text[i].clear();
                    }
                    let outcome = match e.kind {
                        EventKind::TextDelta { text: t } => {
                            text[i].push_str(&t);
                            continue;
                        }
                        EventKind::Completed { .. } => Ended::Output(std::mem::take(&mut text[i])),
                        EventKind::Failed { error, .. } => {
                            Ended::Failed(format!("task {} failed: {error}", e.task_id))
                        }
                        EventKind::Canceled { reason } => {
                            Ended::Failed(format!("task {} was canceled: {reason}", e.task_id))
                        }
                        _ => continue,
                    };
                    open.remove(&e.task_id);
                    ended.push((i, outcome));
                }
            }
        }
        if let Some(p) = progress.as_mut() {
            p.show(ended.len(), total);
        }
    }
    if let Some(p) = progress.as_mut() {
        p.finish(ended.len(), total);
    }
    Ok(ended)
}

/// A one-line progress bar on stderr, redrawn at most ten times a second.
struct Progress {
    last: Option<Instant>,
    started: Instant,
}

impl Progress {
    fn show(&mut self, done: usize, total: usize) {
        if self.last.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
            return;
        }
        self.last = Some(Instant::now());
        let width = 30;
        let filled = done * width / total.max(1);
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r[{}{}] {done}/{total} tasks, {rate:.0}/s",
            "#".repeat(filled),
            " ".repeat(width - filled)
        );
        let _ = err.flush();
    }

    fn finish(&mut self, done: usize, total: usize) {
        self.last = None;
        self.show(done, total);
        let _ = writeln!(std::io::stderr());
    }
}

#[pymethods]
impl Agent {
    /// Submits one task; returns at once with a `Task`.
    #[pyo3(signature = (prompt, context_id=None))]
    fn submit(&self, py: Python<'_>, prompt: String, context_id: Option<String>) -> PyResult<Task> {
        let client = self.client.clone();
        let submission = self.submission(prompt, context_id);
        runtime::block_on(py, async move {
            let stream = client.submit(submission).await.map_err(errors::to_py)?;
            task::start(client, stream).await.map_err(errors::to_py)
        })
    }

    /// Runs one task per prompt in parallel across the cluster and returns their texts, in
    /// prompt order (or in completion order with `ordered=False`). Shows a progress bar when
    /// `progress` is true, or by default when stderr is a terminal. Raises TaskFailed if any
    /// task failed; Ctrl-C cancels the tasks still running.
    #[pyo3(signature = (prompts, *, ordered=true, progress=None, context_id=None))]
    fn map(
        &self,
        py: Python<'_>,
        prompts: Vec<String>,
        ordered: bool,
        progress: Option<bool>,
        context_id: Option<String>,
    ) -> PyResult<Vec<String>> {
        let total = prompts.len();
        if total == 0 {
            return Ok(Vec::new());
        }
        let submissions =
            prompts.into_iter().map(|p| self.submission(p, context_id.clone())).collect();
        let progress = progress
            .unwrap_or_else(|| std::io::stderr().is_terminal())
            .then(|| Progress { last: None, started: Instant::now() });
        let stop = CancellationToken::new();
        let (cleaned, cleaned_rx) = tokio::sync::oneshot::channel();
        let run = map_tasks(self.client.clone(), submissions, progress, stop.clone(), cleaned);
        let ended = match runtime::wait(py, run, None)? {
            Ok(result) => result?,
            Err(interrupted) => {
                stop.cancel();
                // The map cancels what it started; wait for it (bounded) before raising.
                let cleanup = async move { tokio::time::timeout(ACK_GRACE * 3, cleaned_rx).await };
                let _ = runtime::wait(py, cleanup, None);
                return Err(match interrupted {
                    Interrupted::Signal(e) => e,
                    other => other.into(),
                });
            }
        };
        let mut results: Vec<Option<String>> = vec![None; total];
        let mut in_completion_order = Vec::with_capacity(total);
        let mut failures = Vec::new();
        for (i, outcome) in ended {
            match outcome {
                Ended::Output(text) if ordered => results[i] = Some(text),
                Ended::Output(text) => in_completion_order.push(text),
                Ended::Failed(error) => failures.push(error),
            }
        }
        if let Some(first) = failures.first() {
            return Err(TaskFailed::new_err(format!(
                "{} of {total} tasks did not complete; first: {first}",
                failures.len()
            )));
        }
        if !ordered {
            return Ok(in_completion_order);
        }
        Ok(results.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Submits one task and iterates over its events as they arrive. Leaving the loop early
    /// (break, an exception, Ctrl-C) cancels the task.
    #[pyo3(signature = (prompt, context_id=None))]
    fn stream(
        &self,
        py: Python<'_>,
        prompt: String,
        context_id: Option<String>,
    ) -> PyResult<EventIterator> {
        Ok(EventIterator::owning(&self.submit(py, prompt, context_id)?))
    }

    /// Submits one task and awaits its text.
    #[pyo3(signature = (prompt, context_id=None))]
    fn asubmit<'py>(
        &self,
        py: Python<'py>,
        prompt: String,
        context_id: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        let submission = self.submission(prompt, context_id);
        runtime::get()?;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let outcome = fleet_client::TaskOutcome::collect(
                client.submit(submission).await.map_err(errors::to_py)?,
            )
            .await
            .map_err(errors::to_py)?;
            match outcome.state {
                TaskState::Completed => Ok(outcome.output),
                TaskState::Canceled => Err(errors::Cancelled::new_err(format!(
                    "task {} was canceled: {}",
                    outcome.task_id, outcome.error
                ))),
                _ => Err(TaskFailed::new_err(format!(
                    "task {} failed: {}",
                    outcome.task_id, outcome.error
                ))),
            }
        })
    }

    /// Submits one task (on first iteration) and yields its events: `async for ev in ...`.
    #[pyo3(signature = (prompt, context_id=None))]
    fn astream(&self, prompt: String, context_id: Option<String>) -> AsyncEventIterator {
        AsyncEventIterator::lazy(self.client.clone(), self.submission(prompt, context_id))
    }

    fn __repr__(&self) -> String {
        format!("Agent(name={:?})", self.name)
    }
}
