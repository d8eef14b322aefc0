//! The package's one tokio runtime, and waiting on it from Python without holding the GIL
//! while still noticing Ctrl-C.

use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyRuntimeError, PyTimeoutError};
use pyo3::prelude::*;

/// How often a blocked call wakes up to let Python handle signals.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The runtime all clients, embedded heads and workers of this process run on.
pub fn get() -> PyResult<&'static tokio::runtime::Runtime> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("agentfleet")
        .enable_all()
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the async runtime: {e}")))?;
    let rt = RUNTIME.get_or_init(|| rt);
    let _ = pyo3_async_runtimes::tokio::init_with_runtime(rt);
    Ok(rt)
}

/// What ended a blocking wait other than the future's own result.
pub enum Interrupted {
    /// Python raised (Ctrl-C is `KeyboardInterrupt`); the caller cleans up and re-raises.
    Signal(PyErr),
    Timeout,
}

impl From<Interrupted> for PyErr {
    fn from(i: Interrupted) -> Self {
        match i {
            Interrupted::Signal(e) => e,
            Interrupted::Timeout => PyTimeoutError::new_err("timed out waiting for the task"),
        }
    }
}

/// Runs `fut` on the runtime and waits for it with the GIL released, checking for signals
/// every 50 ms. The future keeps running if the wait is interrupted.
pub fn wait<F>(
    py: Python<'_>,
    fut: F,
    timeout: Option<Duration>,
) -> PyResult<Result<F::Output, Interrupted>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let rt = get()?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    // Behind a mutex only so the detached closure may borrow it; there is one reader.
    let rx = parking_lot::Mutex::new(rx);
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let slice = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(SIGNAL_CHECK),
            None => SIGNAL_CHECK,
        };
        match py.detach(|| rx.lock().recv_timeout(slice)) {
            Ok(value) => return Ok(Ok(value)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(PyRuntimeError::new_err("the runtime dropped a pending call"));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Err(e) = py.check_signals() {
            return Ok(Err(Interrupted::Signal(e)));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Err(Interrupted::Timeout));
        }
    }
}

/// [`wait`] for calls that have nothing to clean up when interrupted.
pub fn block_on<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + 'static,
{
    wait(py, fut, None)?.map_err(PyErr::from)?
}
