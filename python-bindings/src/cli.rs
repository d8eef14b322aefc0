//! `python -m agentfleet head|worker|status|agents|tasks|logs|cancel|submit`: the same
//! command lines as `fleet-head`, `fleet-worker` and `fleet`, so a pip install is enough to
//! run a cluster node and look at the cluster; a worker started so may host Python agents.

use pyo3::prelude::*;

use crate::agent_host::AgentHost;

/// Runs `fleet-head` with `argv` (without the program name); returns its exit code.
#[pyfunction]
#[pyo3(name = "_run_head")]
pub fn run_head(py: Python<'_>, argv: Vec<String>) -> i32 {
    let args = std::iter::once("fleet-head".to_owned()).chain(argv);
    py.detach(|| fleet_head::cli::main(args))
}

/// Runs `fleet-worker` with `argv` (without the program name); returns its exit code. With
/// `agents`, the worker hosts this process's Python agents (`--import`).
#[pyfunction]
#[pyo3(name = "_run_worker")]
#[pyo3(signature = (argv, agents=None))]
pub fn run_worker(py: Python<'_>, argv: Vec<String>, agents: Option<PyRef<'_, AgentHost>>) -> i32 {
    let args = std::iter::once("fleet-worker".to_owned()).chain(argv);
    let code = agents.map(|a| a.code_agents());
    py.detach(|| fleet_worker::cli::main_with(args, code))
}

/// Runs `fleet` (status, agents, tasks, logs, cancel, submit) with `argv` (without the
/// program name); returns its exit code.
#[pyfunction]
#[pyo3(name = "_run_cli")]
pub fn run_cli(py: Python<'_>, argv: Vec<String>) -> i32 {
    let args = std::iter::once("fleet".to_owned()).chain(argv);
    py.detach(|| fleet_cli::main(args))
}
