//! `agentfleet._native`: the PyO3 core of the `agentfleet` Python package.
//!
//! - [`fleet`]: `init()`'s native half (an embedded head + local workers, or a connection
//!   to a running cluster) and the `Fleet` handle (agents, status, shutdown);
//! - [`agent`]: `Agent` with `submit`, `map`, `stream`, `asubmit`, `astream`, `options`,
//!   and `embed`, `map_embed`, `aembed` for embedding models;
//! - [`options`]: `af.Sampling` and `af.Resources` read into the client's types;
//! - [`task`]: `Task` (result, cancel, events, awaitable) and the event iterators;
//! - [`event`]: `Event` and its subclass per kind (`TextDelta`, `ToolCall`, ...);
//! - [`tool_host`]: this process hosting Python functions as the agents' tools;
//! - [`agent_host`]: this process hosting Python agents (`@af.agent`) for its workers;
//! - [`errors`]: the exception hierarchy and the mapping from the client's errors;
//! - [`backend`]: what the classes talk to: gRPC, or an embedded head directly;
//! - [`runtime`]: the one tokio runtime and the blocking-wait helper that releases the GIL
//!   and still notices Ctrl-C;
//! - [`cli`]: the console commands' entry points (`fleet-head`, `fleet-worker`, `fleet`);
//! - [`random_model`]: `write_random_weight_model`, a tiny random-weight GGUF for trying
//!   local-model agents without a download.
//!
//! Only this crate knows PyO3.

mod agent;
mod agent_host;
mod backend;
mod cli;
mod errors;
mod event;
mod fleet;
mod model_api;
mod options;
mod random_model;
mod runtime;
mod schema;
mod task;
mod tool_host;
mod topic;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(fleet::init, m)?)?;
    m.add_function(wrap_pyfunction!(cli::run_head, m)?)?;
    m.add_function(wrap_pyfunction!(cli::run_worker, m)?)?;
    m.add_function(wrap_pyfunction!(cli::run_cli, m)?)?;
    m.add_function(wrap_pyfunction!(random_model::write_random_weight_model, m)?)?;
    m.add_class::<fleet::Fleet>()?;
    m.add_class::<agent::Agent>()?;
    m.add_class::<task::Task>()?;
    m.add_class::<task::EventIterator>()?;
    m.add_class::<task::AsyncEventIterator>()?;
    event::register(m)?;
    m.add_class::<tool_host::ToolHost>()?;
    m.add_class::<agent_host::AgentHost>()?;
    m.add_class::<model_api::Chunks>()?;
    m.add_class::<topic::TopicFollower>()?;
    m.add_class::<topic::TopicMessage>()?;
    errors::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
