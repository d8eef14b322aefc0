//! `ToolHost`: this process hosting Python functions as tools of the cluster's agents. The
//! native half registers them with the head and hands each call to Python
//! (`agentfleet.tools` runs them); an embedded cluster's head is called directly, a running
//! cluster's over the `HostTools` stream, opened again (tools registered again) when it
//! breaks.

use std::collections::VecDeque;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use fleet_client::{Client, FunctionTool, HostCommand};
use futures::StreamExt;
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::backend::Backend;
use crate::{errors, runtime};

/// The longest wait between attempts to reach the head again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

type Registration = std::result::Result<Vec<String>, String>;

enum Link {
    /// An embedded cluster's head, called directly.
    Local(fleet_head::cluster::ToolHost),
    /// A running cluster's, through the task that holds the stream.
    Remote(mpsc::UnboundedSender<Control>),
}

enum Control {
    Register(Vec<FunctionTool>, oneshot::Sender<Registration>),
    Answer(u64, String, bool),
}

/// The native side of a process hosting tools (see `agentfleet.tools`).
#[pyclass(module = "agentfleet", name = "_ToolHost", frozen)]
pub struct ToolHost {
    /// None once closed.
    link: Mutex<Option<Link>>,
    calls: Mutex<std_mpsc::Receiver<HostCommand>>,
    stop: CancellationToken,
}

impl ToolHost {
    /// Starts hosting on `backend`'s cluster.
    pub fn open(backend: &Backend) -> PyResult<Self> {
        let rt = runtime::get()?;
        let stop = CancellationToken::new();
        let (tx, rx) = std_mpsc::channel();
        let link = match backend {
            Backend::Local(cluster) => {
                let (host, mut calls) = cluster
                    .host_tools(&fleet_head::auth::Principal::operator())
                    .map_err(|e| errors::to_py(fleet_client::Error::Status(e.into())))?;
                let stop = stop.clone();
                rt.spawn(async move {
                    loop {
                        let command = tokio::select! {
                            c = calls.next() => c,
                            () = stop.cancelled() => None,
                        };
                        let Some(command) = command else { return };
                        if tx.send(local_command(command)).is_err() {
                            return;
                        }
                    }
                });
                Link::Local(host)
            }
            Backend::Remote(client) => {
                let (control, controls) = mpsc::unbounded_channel();
                rt.spawn(remote(client.clone(), controls, tx, stop.clone()));
                Link::Remote(control)
            }
        };
        Ok(Self { link: Mutex::new(Some(link)), calls: Mutex::new(rx), stop })
    }
}

fn local_command(command: fleet_head::tools::HostCommand) -> HostCommand {
    match command {
        fleet_head::tools::HostCommand::Invoke(i) => HostCommand::Invoke(i),
        fleet_head::tools::HostCommand::Canceled { call } => HostCommand::Canceled { call },
    }
}

/// Holds the `HostTools` stream of a running cluster: registers, forwards calls and
/// answers, and when the stream breaks opens it again and registers every tool again.
async fn remote(
    client: Client,
    mut controls: mpsc::UnboundedReceiver<Control>,
    calls: std_mpsc::Sender<HostCommand>,
    stop: CancellationToken,
) {
    let mut tools: Vec<FunctionTool> = Vec::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        let opened = tokio::select! {
            opened = client.host_tools() => opened,
            () = stop.cancelled() => return,
        };
        let (sender, mut commands) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                debug!(error = %e, "cannot open the tool host stream; trying again");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        // Registrations waiting for the head's answer, in order; `None`: a registration
        // again of tools already known.
        let mut waiting: VecDeque<Option<(Vec<FunctionTool>, oneshot::Sender<Registration>)>> =
            VecDeque::new();
        if !tools.is_empty() && sender.register(&tools).await.is_ok() {
            waiting.push_back(None);
        }
        loop {
            tokio::select! {
                control = controls.recv() => match control {
                    None => return,
                    Some(Control::Register(new, reply)) => {
                        if sender.register(&new).await.is_err() {
                            let _ = reply.send(Err("the connection to the head broke".into()));
                            break;
                        }
                        waiting.push_back(Some((new, reply)));
                    }
                    Some(Control::Answer(call, output, is_error)) => {
                        if sender.answer(call, output, is_error).await.is_err() {
                            break;
                        }
                    }
                },
                command = commands.next() => match command {
                    Some(Ok(HostCommand::Registered(result))) => {
                        backoff = Duration::from_millis(100);
                        match (waiting.pop_front().flatten(), result) {
                            (Some((new, reply)), Ok(names)) => {
                                tools.retain(|t| !new.iter().any(|n| n.name == t.name));
                                tools.extend(new);
                                let _ = reply.send(Ok(names));
                            }
                            (Some((_, reply)), Err(error)) => {
                                let _ = reply.send(Err(error));
                            }
                            (None, Err(error)) => {
                                warn!(%error, "the head refused this process's tools again");
                            }
                            (None, Ok(_)) => {}
                        }
                    }
                    Some(Ok(command)) => {
                        if calls.send(command).is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        debug!(error = %e, "the tool host stream broke; opening it again");
                        break;
                    }
                    None => break,
                },
                () = stop.cancelled() => return,
            }
        }
        for (_, reply) in waiting.into_iter().flatten() {
            let _ = reply.send(Err("the connection to the head broke; register again".into()));
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[pymethods]
impl ToolHost {
    /// Registers tools given as `(name, description, parameters_json, timeout_ms,
    /// requires_approval, takes_files, call_once)`; returns their names. Raises
    /// `InvalidRequestError` with the head's reason when it refuses them.
    #[allow(clippy::type_complexity)]
    fn register(
        &self,
        py: Python<'_>,
        tools: Vec<(String, String, String, u32, bool, bool, bool)>,
    ) -> PyResult<Vec<String>> {
        let tools: Vec<FunctionTool> = tools
            .into_iter()
            .map(
                |(
                    name,
                    description,
                    parameters,
                    timeout_ms,
                    requires_approval,
                    takes_files,
                    call_once,
                )| FunctionTool {
                    name,
                    description,
                    parameters,
                    timeout_ms,
                    requires_approval,
                    takes_files,
                    call_once,
                },
            )
            .collect();
        let closed = || errors::unavailable("this tool host is closed");
        let link = match &*self.link.lock() {
            None => return Err(closed()),
            Some(Link::Local(host)) => Link::Local(host.clone()),
            Some(Link::Remote(control)) => Link::Remote(control.clone()),
        };
        let result = match link {
            Link::Local(host) => py.detach(|| host.register(tools)).map_err(|e| e.to_string()),
            Link::Remote(control) => {
                let (reply, answer) = oneshot::channel();
                if control.send(Control::Register(tools, reply)).is_err() {
                    return Err(errors::unavailable("this tool host is closed"));
                }
                runtime::block_on(py, async move {
                    answer.await.map_err(|_| errors::unavailable("this tool host is closed"))
                })?
            }
        };
        result.map_err(|e| errors::kind(fleet_client::ErrorKind::InvalidRequest, e))
    }

    /// The next call for this process: `("invoke", call, tool, arguments_json, task_id,
    /// context_id, timeout_s, files)` (`files` the calling task's, as `(name, media_type,
    /// data, url)`, for a tool that takes them) or `("canceled", call)`; `None` once the host is closed.
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let command = py.detach(|| self.calls.lock().recv().ok());
        let Some(command) = command else { return Ok(None) };
        let tuple = match command {
            HostCommand::Invoke(i) => PyTuple::new(
                py,
                [
                    "invoke".into_pyobject(py)?.into_any(),
                    i.call.into_pyobject(py)?.into_any(),
                    i.tool.into_pyobject(py)?.into_any(),
                    i.arguments.into_pyobject(py)?.into_any(),
                    i.task_id.as_str().into_pyobject(py)?.into_any(),
                    i.context_id.into_pyobject(py)?.into_any(),
                    i.timeout.as_secs_f64().into_pyobject(py)?.into_any(),
                    crate::event::file_tuples(py, &i.files)?.into_any(),
                ],
            )?,
            HostCommand::Canceled { call } => PyTuple::new(
                py,
                ["canceled".into_pyobject(py)?.into_any(), call.into_pyobject(py)?.into_any()],
            )?,
            HostCommand::Registered(_) => return Ok(Some(PyTuple::empty(py))),
        };
        Ok(Some(tuple))
    }

    /// The result of call `call`: its text, and whether it reports an error.
    fn answer(&self, py: Python<'_>, call: u64, output: String, is_error: bool) {
        py.detach(|| match &*self.link.lock() {
            Some(Link::Local(host)) => host.answer(call, output, is_error),
            Some(Link::Remote(control)) => {
                let _ = control.send(Control::Answer(call, output, is_error));
            }
            None => {}
        })
    }

    /// Stops hosting: `next` returns `None`, the head answers calls still open with an
    /// error.
    fn close(&self) {
        self.stop.cancel();
        self.link.lock().take();
    }
}
