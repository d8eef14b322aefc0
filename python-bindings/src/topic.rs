//! Topics from Python: `fleet.publish(...)`, and `fleet.follow(...)`'s follower, iterated
//! with `for` or `async for`, which yields the messages of a topic's log; a consumer
//! group's member acknowledges each message it processed (`message.ack()`).

use std::collections::VecDeque;
use std::sync::Arc;

use futures::StreamExt;
use parking_lot::Mutex;
use pyo3::exceptions::{PyStopAsyncIteration, PyValueError};
use pyo3::prelude::*;

use crate::backend::{Backend, TopicMessages};
use crate::{errors, runtime};

/// A message of a topic's log.
#[pyclass(module = "agentfleet", frozen)]
pub struct TopicMessage {
    #[pyo3(get)]
    topic: String,
    /// The agent (or client) that published it.
    #[pyo3(get)]
    publisher: String,
    #[pyo3(get)]
    body: String,
    /// Its offset in the topic's log.
    #[pyo3(get)]
    offset: u64,
    /// When the head stored it, in seconds since the epoch.
    #[pyo3(get)]
    published_at: f64,
    /// The consumer group it was delivered in, if any.
    #[pyo3(get)]
    group: Option<String>,
    client: Backend,
}

impl TopicMessage {
    fn new(m: fleet_client::TopicMessage, group: Option<String>, client: Backend) -> Self {
        Self {
            topic: m.topic,
            publisher: m.publisher,
            body: m.body,
            offset: m.offset.unwrap_or_default(),
            published_at: m.published_at_us as f64 / 1e6,
            group,
            client,
        }
    }
}

#[pymethods]
impl TopicMessage {
    /// Acknowledges the message for its consumer group (it is not delivered to the group
    /// again); returns the group's committed offset (every message before it acknowledged)
    /// once stored.
    fn ack(&self, py: Python<'_>) -> PyResult<u64> {
        let Some(group) = self.group.clone() else {
            return Err(PyValueError::new_err(
                "this message was not delivered in a consumer group: follow with group=... to \
                 acknowledge messages",
            ));
        };
        ack(py, &self.client, &self.topic, &group, vec![self.offset])
    }

    fn __repr__(&self) -> String {
        format!(
            "TopicMessage(topic={:?}, offset={}, publisher={:?}, body={:?})",
            self.topic, self.offset, self.publisher, self.body
        )
    }
}

fn ack(
    py: Python<'_>,
    client: &Backend,
    topic: &str,
    group: &str,
    offsets: Vec<u64>,
) -> PyResult<u64> {
    let (client, topic, group) = (client.clone(), topic.to_owned(), group.to_owned());
    runtime::block_on(py, async move {
        client.ack(&topic, &group, &offsets).await.map_err(errors::to_py)
    })
}

/// Where a follower's messages come from, and those read but not yet handed out (a read
/// interrupted by Ctrl-C still lands here, so no message is skipped).
struct Inbox {
    stream: tokio::sync::Mutex<Option<TopicMessages>>,
    ready: Mutex<VecDeque<fleet_client::TopicMessage>>,
    /// Cancelled by `close()`, from any thread: a read waiting for messages ends.
    closed: tokio_util::sync::CancellationToken,
}

impl Inbox {
    /// Reads the next batch into `ready`; false once the stream has ended or was closed.
    async fn fill(&self) -> Result<bool, fleet_client::Error> {
        let mut stream = tokio::select! {
            stream = self.stream.lock() => stream,
            () = self.closed.cancelled() => return Ok(false),
        };
        if !self.ready.lock().is_empty() {
            return Ok(true);
        }
        let Some(messages) = stream.as_mut() else { return Ok(false) };
        let next = tokio::select! {
            next = messages.next() => next,
            () = self.closed.cancelled() => None,
        };
        match next {
            Some(Ok(batch)) => {
                self.ready.lock().extend(batch);
                Ok(true)
            }
            Some(Err(e)) => Err(e),
            None => {
                // Dropping the stream ends the follow (a group member leaves its group).
                *stream = None;
                Ok(false)
            }
        }
    }
}

/// A topic's messages as they are stored, from an offset or from now on; in a consumer
/// group, this member's share. Iterate it with `for` or `async for`; `close()` (or leaving
/// a `with` block) stops following, and a group's unacknowledged messages go to its other
/// members.
#[pyclass(module = "agentfleet")]
pub struct TopicFollower {
    #[pyo3(get)]
    topic: String,
    #[pyo3(get)]
    group: Option<String>,
    client: Backend,
    inbox: Arc<Inbox>,
}

impl TopicFollower {
    pub fn open(
        py: Python<'_>,
        client: Backend,
        topic: String,
        from_offset: Option<u64>,
        group: Option<String>,
    ) -> PyResult<Self> {
        let (c, t, g) = (client.clone(), topic.clone(), group.clone());
        let stream = runtime::block_on(py, async move {
            c.follow(&t, from_offset, g).await.map_err(errors::to_py)
        })?;
        let inbox = Arc::new(Inbox {
            stream: tokio::sync::Mutex::new(Some(stream)),
            ready: Mutex::new(VecDeque::new()),
            closed: tokio_util::sync::CancellationToken::new(),
        });
        Ok(Self { topic, group, client, inbox })
    }

    fn message(&self, m: fleet_client::TopicMessage) -> TopicMessage {
        TopicMessage::new(m, self.group.clone(), self.client.clone())
    }
}

#[pymethods]
impl TopicFollower {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<TopicMessage>> {
        loop {
            if let Some(m) = self.inbox.ready.lock().pop_front() {
                return Ok(Some(self.message(m)));
            }
            let inbox = self.inbox.clone();
            let more =
                runtime::block_on(py, async move { inbox.fill().await.map_err(errors::to_py) })?;
            if !more {
                return Ok(None);
            }
        }
    }

    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (inbox, group, client) = (self.inbox.clone(), self.group.clone(), self.client.clone());
        runtime::get()?;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            loop {
                if let Some(m) = inbox.ready.lock().pop_front() {
                    return Ok(TopicMessage::new(m, group, client));
                }
                if !inbox.fill().await.map_err(errors::to_py)? {
                    return Err(PyStopAsyncIteration::new_err(()));
                }
            }
        })
    }

    /// Acknowledges messages of this follower's group by offset; returns the group's
    /// committed offset once stored.
    fn ack(&self, py: Python<'_>, offsets: Vec<u64>) -> PyResult<u64> {
        let Some(group) = &self.group else {
            return Err(PyValueError::new_err(
                "this follower is in no consumer group: follow with group=... to acknowledge",
            ));
        };
        ack(py, &self.client, &self.topic, group, offsets)
    }

    /// Stops following (an iteration waiting in another thread ends); in a group, the
    /// messages this member did not acknowledge go to the group's other members.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.inbox.closed.cancel();
        let inbox = self.inbox.clone();
        runtime::block_on(py, async move {
            *inbox.stream.lock().await = None;
            inbox.ready.lock().clear();
            Ok(())
        })
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        match &self.group {
            Some(group) => format!("TopicFollower(topic={:?}, group={group:?})", self.topic),
            None => format!("TopicFollower(topic={:?})", self.topic),
        }
    }
}
