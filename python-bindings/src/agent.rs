//! `Agent`: submit one task, many in parallel (`map`), or stream one; sync and asyncio.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fleet_client::{
    ErrorKind, EventKind, FilePart, ManyUpdate, OutputFormat, Sampling, Submission, TaskId,
    TaskOptions,
};
use futures::StreamExt;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::errors;
use crate::runtime::{self, Interrupted};
use crate::schema::OutputSchema;
use crate::task::{self, AsyncEventIterator, EventIterator, Task};

/// An agent registered on the cluster.
#[pyclass(module = "agentfleet", frozen)]
pub struct Agent {
    #[pyo3(get)]
    name: String,
    client: Backend,
    /// The output schema its answers are parsed with, if it was given one.
    schema: Option<Arc<OutputSchema>>,
    /// Whether each task carries the schema (an agent looked up by name, whose registered
    /// spec may not have it).
    schema_per_task: bool,
    /// What `options(...)` set for this handle's tasks: sampling over the agent's defaults
    /// (field by field) and the conversation.
    sampling: Sampling,
    context_id: Option<String>,
}

impl Agent {
    pub fn new(
        name: String,
        client: Backend,
        schema: Option<Arc<OutputSchema>>,
        schema_per_task: bool,
    ) -> Self {
        Self {
            name,
            client,
            schema,
            schema_per_task,
            sampling: Sampling::default(),
            context_id: None,
        }
    }

    /// The schema of a submission: the one given with it, else the agent's.
    fn schema_of(&self, given: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Arc<OutputSchema>>> {
        Ok(match given {
            Some(schema) => Some(Arc::new(OutputSchema::from_py(schema)?)),
            None => self.schema.clone(),
        })
    }

    /// Runs every submission in parallel (see [`map_tasks`]); returns how each ended, in
    /// completion order. Ctrl-C cancels what was started and re-raises; a failed task
    /// raises the first failure's class (its kind's) naming how many failed and the first reason.
    fn run_all(
        &self,
        py: Python<'_>,
        submissions: Vec<Submission>,
        progress: Option<bool>,
    ) -> PyResult<Vec<(usize, Ended)>> {
        let total = submissions.len();
        if total == 0 {
            return Ok(Vec::new());
        }
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
        let mut failures = ended.iter().filter_map(|(_, e)| match e {
            Ended::Failed(id, error, kind) => Some((id, error, *kind)),
            _ => None,
        });
        if let Some((id, first, kind)) = failures.next() {
            let message = if total == 1 {
                first.clone()
            } else {
                format!(
                    "{} of {total} tasks did not complete; first: {first}",
                    failures.count() + 1
                )
            };
            return Err(errors::task_failed(kind, id.as_str(), message));
        }
        Ok(ended)
    }

    /// Embeds `texts` in tasks of `batch` texts run in parallel; vectors in text order.
    fn embed_batches(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        batch: usize,
        progress: Option<bool>,
    ) -> PyResult<Vec<Vec<f32>>> {
        let sizes: Vec<usize> = texts.chunks(batch).map(<[String]>::len).collect();
        let mut texts = texts.into_iter();
        let submissions = sizes
            .iter()
            .map(|&n| Submission::embed(self.name.clone(), texts.by_ref().take(n).collect()))
            .collect();
        let mut batches: Vec<Option<Vec<Vec<f32>>>> = sizes.iter().map(|_| None).collect();
        for (i, outcome) in self.run_all(py, submissions, progress)? {
            let vectors = match outcome {
                Ended::Vectors(v) if v.len() == sizes[i] => v,
                Ended::Vectors(v) => {
                    return Err(errors::kind(
                        ErrorKind::Internal,
                        format!("a worker returned {} vectors for {} texts", v.len(), sizes[i]),
                    ));
                }
                // Completed with text, not vectors: the model generated instead.
                Ended::Output(..) | Ended::Failed(..) => {
                    return Err(errors::kind(
                        ErrorKind::InvalidRequest,
                        format!(
                            "agent {:?} answered without embeddings: give it an embedding \
                             model (e.g. all-MiniLM-L6-v2)",
                            self.name
                        ),
                    ));
                }
            };
            batches[i] = Some(vectors);
        }
        Ok(batches.into_iter().flatten().flatten().collect())
    }

    /// A task of this agent; it carries `schema` unless the agent's spec already has it.
    fn submission(
        &self,
        prompt: String,
        context_id: Option<String>,
        schema: Option<&OutputSchema>,
        files: Vec<FilePart>,
    ) -> Submission {
        let in_spec = !self.schema_per_task
            && matches!((schema, &self.schema), (Some(a), Some(b)) if std::ptr::eq(a, &**b));
        let format = schema.filter(|_| !in_spec).map(|s| OutputFormat::JsonSchema(s.text.clone()));
        let sampling = Sampling { format, ..self.sampling.clone() };
        let options = (sampling != Sampling::default() || !files.is_empty()).then(|| TaskOptions {
            sampling,
            files,
            ..Default::default()
        });
        Submission {
            agent: self.name.clone(),
            input: prompt,
            context_id: context_id.or_else(|| self.context_id.clone()).unwrap_or_default(),
            options,
            ..Default::default()
        }
    }
}

/// How one task of a `map` ended: its text, or the vectors of an embedding task.
enum Ended {
    Output(TaskId, String),
    Vectors(Vec<Vec<f32>>),
    /// Which task, why, and the failure's kind (`canceled` for a canceled task).
    Failed(TaskId, String, &'static str),
}

/// How long an interrupted `map` waits for the acknowledgements of what it already submitted.
const ACK_GRACE: Duration = Duration::from_secs(2);
/// Cancels in flight at once when a map is interrupted.
const CANCELS_AT_ONCE: usize = 64;

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
    let mut vectors: Vec<Option<Vec<Vec<f32>>>> = (0..total).map(|_| None).collect();
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
                // A few at a time: a thousand at once are a thousand HTTP/2 streams, and
                // those still open when the grace runs out are reset together, which a
                // server may take for a rapid-reset attack and close the connection.
                futures::stream::iter(std::mem::take(&mut open))
                    .map(|id| {
                        let client = client.clone();
                        async move { client.cancel(id.as_str()).await }
                    })
                    .buffer_unordered(CANCELS_AT_ONCE)
                    .for_each(|_| async {})
                    .await;
                let _ = cleaned.send(());
                return Ok(Vec::new());
            }
        };
        let Some(batch) = batch else {
            return Err(errors::unavailable(format!(
                "the cluster closed the stream after {} of {total} tasks",
                ended.len()
            )));
        };
        for update in batch.map_err(errors::to_py)? {
            match update {
                ManyUpdate::Accepted { client_ref, task_id, .. } => {
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
                        vectors[i] = None;
                    }
                    let outcome = match e.kind {
                        EventKind::TextDelta { text: t, .. } => {
                            text[i].push_str(&t);
                            continue;
                        }
                        EventKind::Embeddings { vectors: v } => {
                            vectors[i] = Some(v);
                            continue;
                        }
                        EventKind::Completed { .. } => match vectors[i].take() {
                            Some(v) => Ended::Vectors(v),
                            None => Ended::Output(e.task_id.clone(), std::mem::take(&mut text[i])),
                        },
                        EventKind::Failed { error, kind, .. } => Ended::Failed(
                            e.task_id.clone(),
                            format!("task {} failed: {error}", e.task_id),
                            kind.as_str(),
                        ),
                        EventKind::Canceled { reason } => Ended::Failed(
                            e.task_id.clone(),
                            format!("task {} was canceled: {reason}", e.task_id),
                            "canceled",
                        ),
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
    /// Submits one task; returns at once with a `Task`. With `output_schema` (a JSON Schema
    /// dict or a pydantic model class; default: the agent's) the answer follows the schema
    /// and `result()` returns it parsed.
    #[pyo3(signature = (prompt, context_id=None, *, output_schema=None, files=None))]
    fn submit(
        &self,
        py: Python<'_>,
        prompt: String,
        context_id: Option<String>,
        output_schema: Option<Bound<'_, PyAny>>,
        files: Option<Vec<Bound<'_, PyAny>>>,
    ) -> PyResult<Task> {
        let client = self.client.clone();
        let schema = self.schema_of(output_schema.as_ref())?;
        let submission = self.submission(prompt, context_id, schema.as_deref(), files_of(files)?);
        runtime::block_on(py, async move {
            let stream = client.submit(submission).await.map_err(errors::to_py)?;
            task::start(client, stream, schema).await.map_err(errors::to_py)
        })
    }

    /// Runs one task per prompt in parallel across the cluster and returns their texts, in
    /// prompt order (or in completion order with `ordered=False`). Shows a progress bar when
    /// `progress` is true, or by default when stderr is a terminal. Raises the class of the first
    /// failure's kind (`af.BusyError`, ...) if any task failed; Ctrl-C cancels the tasks still running. With `output_schema` (or the
    /// agent's) every answer follows the schema and comes back parsed. `context_id` is one
    /// conversation for every task, or a list of one per prompt (a swarm of actors, each
    /// with its own state).
    #[pyo3(signature = (prompts, *, ordered=true, progress=None, context_id=None, output_schema=None))]
    fn map(
        &self,
        py: Python<'_>,
        prompts: Vec<String>,
        ordered: bool,
        progress: Option<bool>,
        context_id: Option<Bound<'_, PyAny>>,
        output_schema: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let total = prompts.len();
        let schema = self.schema_of(output_schema.as_ref())?;
        let contexts: Vec<Option<String>> = match context_id {
            None => vec![None; total],
            Some(one) if one.is_instance_of::<pyo3::types::PyString>() => {
                vec![Some(one.extract()?); total]
            }
            Some(many) => {
                let many: Vec<String> = many.extract().map_err(|_| {
                    PyTypeError::new_err("context_id is a str, or a list of str (one per prompt)")
                })?;
                if many.len() != total {
                    return Err(PyValueError::new_err(format!(
                        "context_id lists {} contexts for {total} prompts: give one per prompt, \
                         or one str for all",
                        many.len()
                    )));
                }
                many.into_iter().map(Some).collect()
            }
        };
        let submissions = prompts
            .into_iter()
            .zip(contexts)
            .map(|(p, c)| self.submission(p, c, schema.as_deref(), Vec::new()))
            .collect();
        let ended = self.run_all(py, submissions, progress)?;
        let mut results: Vec<Option<(String, String)>> = vec![None; total];
        let mut in_completion_order = Vec::with_capacity(total);
        for (i, outcome) in ended {
            let answer = match outcome {
                Ended::Output(id, text) => (id.to_string(), text),
                // A task with embeddings has no text.
                Ended::Vectors(_) => (String::new(), String::new()),
                Ended::Failed(..) => continue,
            };
            if ordered {
                results[i] = Some(answer);
            } else {
                in_completion_order.push(answer);
            }
        }
        let answers = if ordered {
            results.into_iter().map(Option::unwrap_or_default).collect()
        } else {
            in_completion_order
        };
        answers
            .into_iter()
            .map(|(id, text)| task::answer(py, &id, schema.as_deref(), text))
            .collect()
    }

    /// Embeds `texts` with the agent's model (an embedding model, e.g. all-MiniLM-L6-v2) as
    /// one task and returns one L2-normalised vector per text, in order. Raises
    /// `InvalidRequestError` with the worker's reason when the model does not embed.
    fn embed(&self, py: Python<'_>, texts: Vec<String>) -> PyResult<Vec<Vec<f32>>> {
        let batch = texts.len().max(1);
        self.embed_batches(py, texts, batch, Some(false))
    }

    /// Embeds many texts in parallel: splits them into tasks of `batch_size` texts, runs the
    /// tasks across the cluster's workers at once and returns one vector per text, in
    /// order. Progress and Ctrl-C as for `map`.
    #[pyo3(signature = (texts, *, batch_size=64, progress=None))]
    fn map_embed(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        batch_size: usize,
        progress: Option<bool>,
    ) -> PyResult<Vec<Vec<f32>>> {
        if batch_size == 0 {
            return Err(PyValueError::new_err("batch_size must be at least 1"));
        }
        self.embed_batches(py, texts, batch_size, progress)
    }

    /// Awaits the vectors of `texts`, embedded as one task (as `embed`).
    fn aembed<'py>(&self, py: Python<'py>, texts: Vec<String>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        let nothing = texts.is_empty();
        let submission = Submission::embed(self.name.clone(), texts);
        runtime::get()?;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            if nothing {
                return Ok(Vec::new());
            }
            let mut stream = client.submit(submission).await.map_err(errors::to_py)?;
            let (mut vectors, mut attempt) = (None, 1);
            while let Some(event) = stream.next().await {
                let event = event.map_err(errors::to_py)?;
                if event.attempt != attempt {
                    // Retried on another worker: only the last attempt's vectors count.
                    (vectors, attempt) = (None, event.attempt);
                }
                match event.kind {
                    EventKind::Embeddings { vectors: v } => vectors = Some(v),
                    EventKind::Completed { .. } => {
                        return vectors.ok_or_else(|| {
                            errors::task_failed(
                                ErrorKind::InvalidRequest.as_str(),
                                event.task_id.as_str(),
                                format!(
                                    "task {} completed without embeddings: is the agent's \
                                     model an embedding model?",
                                    event.task_id
                                ),
                            )
                        });
                    }
                    EventKind::Failed { error, kind, .. } => {
                        let message = format!("task {} failed: {error}", event.task_id);
                        let id = event.task_id.as_str();
                        return Err(errors::task_failed(kind.as_str(), id, message));
                    }
                    EventKind::Canceled { reason } => {
                        return Err(errors::task_failed(
                            "canceled",
                            event.task_id.as_str(),
                            format!("task {} was canceled: {reason}", event.task_id),
                        ));
                    }
                    _ => {}
                }
            }
            Err(errors::unavailable("the task's stream ended before the task did"))
        })
    }

    /// Submits one task and iterates over its events as they arrive. Leaving the loop early
    /// (break, an exception, Ctrl-C) cancels the task.
    #[pyo3(signature = (prompt, context_id=None, *, output_schema=None, files=None))]
    fn stream(
        &self,
        py: Python<'_>,
        prompt: String,
        context_id: Option<String>,
        output_schema: Option<Bound<'_, PyAny>>,
        files: Option<Vec<Bound<'_, PyAny>>>,
    ) -> PyResult<EventIterator> {
        Ok(EventIterator::owning(&self.submit(py, prompt, context_id, output_schema, files)?))
    }

    /// Submits one task; awaiting it gives the `Task` once the head has accepted it (as
    /// `submit` returns it). `await task` (or `await task.aresult()`) then gives the answer.
    #[pyo3(signature = (prompt, context_id=None, *, output_schema=None, files=None))]
    fn asubmit<'py>(
        &self,
        py: Python<'py>,
        prompt: String,
        context_id: Option<String>,
        output_schema: Option<Bound<'py, PyAny>>,
        files: Option<Vec<Bound<'py, PyAny>>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        let schema = self.schema_of(output_schema.as_ref())?;
        let submission = self.submission(prompt, context_id, schema.as_deref(), files_of(files)?);
        runtime::get()?;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let stream = client.submit(submission).await.map_err(errors::to_py)?;
            task::start(client, stream, schema).await.map_err(errors::to_py)
        })
    }

    /// This agent with per-call settings, as Ray's `.options()`: its tasks sample with
    /// `sampling` (an `af.Sampling`; the fields it sets override the agent's), answer in
    /// `output_schema`, and continue conversation `context_id`, unless a call gives its
    /// own. Settings given here add to those of the handle it is called on.
    #[pyo3(signature = (*, sampling=None, output_schema=None, context_id=None, **renamed))]
    fn options(
        &self,
        sampling: Option<Bound<'_, PyAny>>,
        output_schema: Option<Bound<'_, PyAny>>,
        context_id: Option<String>,
        renamed: Option<Bound<'_, pyo3::types::PyDict>>,
    ) -> PyResult<Agent> {
        crate::options::refuse_renamed(
            "agent.options",
            crate::options::RENAMED_OPTIONS_KEYWORDS,
            renamed.as_ref(),
        )?;
        let sampling = crate::options::sampling(sampling.as_ref())?;
        let schema = self.schema_of(output_schema.as_ref())?;
        Ok(Agent {
            name: self.name.clone(),
            client: self.client.clone(),
            schema_per_task: self.schema_per_task || output_schema.is_some(),
            schema,
            sampling: self.sampling.overridden_by(&sampling),
            context_id: context_id.or_else(|| self.context_id.clone()),
        })
    }

    /// Submits one task (on first iteration) and yields its events: `async for ev in ...`.
    #[pyo3(signature = (prompt, context_id=None, *, output_schema=None, files=None))]
    fn astream(
        &self,
        prompt: String,
        context_id: Option<String>,
        output_schema: Option<Bound<'_, PyAny>>,
        files: Option<Vec<Bound<'_, PyAny>>>,
    ) -> PyResult<AsyncEventIterator> {
        let schema = self.schema_of(output_schema.as_ref())?;
        let submission = self.submission(prompt, context_id, schema.as_deref(), files_of(files)?);
        Ok(AsyncEventIterator::lazy(self.client.clone(), submission))
    }

    fn __repr__(&self) -> String {
        format!("Agent(name={:?})", self.name)
    }
}

/// Files given with a task: `agentfleet.AgentFile`s (bytes or a URL) or paths
/// (`os.PathLike`: read now, named by their file name, typed by their extension).
fn files_of(files: Option<Vec<Bound<'_, PyAny>>>) -> PyResult<Vec<FilePart>> {
    let Some(files) = files else { return Ok(Vec::new()) };
    let mut parts = Vec::with_capacity(files.len());
    for file in files {
        let py = file.py();
        if file.hasattr("media_type")? && file.hasattr("data")? {
            parts.push(FilePart {
                name: file.getattr("name")?.extract()?,
                media_type: file.getattr("media_type")?.extract()?,
                data: file.getattr("data")?.extract()?,
                url: file.getattr("url")?.extract()?,
            });
            continue;
        }
        let path: std::path::PathBuf = file.extract().map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err(format!(
                "a file is an af.AgentFile or a path (pathlib.Path), not {}",
                file.get_type().name().map_or_else(|_| "?".to_owned(), |n| n.to_string())
            ))
        })?;
        let data = std::fs::read(&path).map_err(|e| {
            pyo3::exceptions::PyOSError::new_err(format!("cannot read {}: {e}", path.display()))
        })?;
        let guessed = py.import("mimetypes")?.getattr("guess_type")?.call1((&file,))?;
        let media_type: Option<String> = guessed.get_item(0)?.extract()?;
        parts.push(FilePart {
            name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            media_type: media_type.unwrap_or_else(|| "application/octet-stream".to_owned()),
            data,
            url: String::new(),
        });
    }
    Ok(parts)
}
