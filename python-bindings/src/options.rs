//! The grouped options `agentfleet.Sampling` and `agentfleet.Resources` (frozen dataclasses
//! of `agentfleet/options.py`, which validate them) read into the client's types; and the
//! keyword arguments renamed by the tidy of 0.1, refused with the new spelling.

use fleet_client::{Resources, Sampling};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// `af.Sampling`'s fields, read by attribute.
#[derive(FromPyObject)]
struct SamplingFields {
    #[pyo3(attribute)]
    temperature: Option<f32>,
    #[pyo3(attribute)]
    top_p: Option<f32>,
    #[pyo3(attribute)]
    max_tokens: Option<u32>,
    #[pyo3(attribute)]
    seed: Option<u64>,
    #[pyo3(attribute)]
    stop: Vec<String>,
    #[pyo3(attribute)]
    presence_penalty: Option<f32>,
    #[pyo3(attribute)]
    frequency_penalty: Option<f32>,
    #[pyo3(attribute)]
    thinking: Option<bool>,
}

/// `af.Resources`' fields, read by attribute.
#[derive(FromPyObject)]
struct ResourceFields {
    #[pyo3(attribute)]
    num_cpus: f64,
    #[pyo3(attribute)]
    num_gpus: u32,
    #[pyo3(attribute)]
    memory: u64,
}

/// Refuses anything but an instance of `agentfleet.options.<class>`, naming what to give.
fn expect(value: &Bound<'_, PyAny>, argument: &str, class: &str) -> PyResult<()> {
    let expected = value.py().import("agentfleet.options")?.getattr(class)?;
    if value.is_instance(&expected)? {
        return Ok(());
    }
    let given = value.get_type().name().map_or_else(|_| "?".to_owned(), |n| n.to_string());
    Err(PyTypeError::new_err(format!("{argument} is an af.{class}(...), not {given}")))
}

/// `sampling=af.Sampling(...)` as the client's settings (`None`: the defaults).
pub fn sampling(value: Option<&Bound<'_, PyAny>>) -> PyResult<Sampling> {
    let Some(value) = value else { return Ok(Sampling::default()) };
    expect(value, "sampling", "Sampling")?;
    let f: SamplingFields = value.extract()?;
    Ok(Sampling {
        temperature: f.temperature,
        top_p: f.top_p,
        max_tokens: f.max_tokens,
        seed: f.seed,
        stop: f.stop,
        presence_penalty: f.presence_penalty,
        frequency_penalty: f.frequency_penalty,
        thinking: f.thinking,
        ..Sampling::default()
    })
}

/// `resources=af.Resources(...)` as the client's (`None`: none asked for).
pub fn resources(value: Option<&Bound<'_, PyAny>>) -> PyResult<Resources> {
    let Some(value) = value else { return Ok(Resources::default()) };
    expect(value, "resources", "Resources")?;
    let f: ResourceFields = value.extract()?;
    Ok(Resources { cpus: f.num_cpus, memory_bytes: f.memory, gpus: f.num_gpus })
}

/// `fleet.agent`'s keyword arguments that are now fields of `af.Sampling` (kept for one
/// release, so old code fails saying what to write instead).
const SAMPLING_KEYWORDS: [&str; 8] = [
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "thinking",
];

/// The resources keywords `fleet.agent` no longer takes, and what they became.
pub const RENAMED_AGENT_KEYWORDS: &[(&str, &str)] = &[
    ("cpus", "resources=af.Resources(num_cpus=...)"),
    ("gpus", "resources=af.Resources(num_gpus=...)"),
    ("memory_mb", "resources=af.Resources(memory=...) (in bytes: MiB * 2**20)"),
];

/// The same for `agent.options`, which sets what a task may change: resources are the
/// agent's, given when it is registered.
pub const RENAMED_OPTIONS_KEYWORDS: &[(&str, &str)] = &[
    ("cpus", "the agent's: fleet.agent(..., resources=af.Resources(num_cpus=...))"),
    ("gpus", "the agent's: fleet.agent(..., resources=af.Resources(num_gpus=...))"),
    ("memory_mb", "the agent's: fleet.agent(..., resources=af.Resources(memory=...))"),
    ("resources", "the agent's: fleet.agent(..., resources=af.Resources(...))"),
];

/// Refuses the keyword arguments of `function` beyond its own: a sampling one, or one of
/// `renamed`, with its new spelling; any other as Python refuses an unknown keyword.
pub fn refuse_renamed(
    function: &str,
    renamed: &[(&str, &str)],
    extra: Option<&Bound<'_, PyDict>>,
) -> PyResult<()> {
    let Some(extra) = extra else { return Ok(()) };
    if let Some((key, _)) = extra.iter().next() {
        let key: String = key.extract()?;
        let new = match renamed.iter().find(|(old, _)| *old == key) {
            Some((_, new)) => Some((*new).to_owned()),
            None => SAMPLING_KEYWORDS
                .contains(&key.as_str())
                .then(|| format!("sampling=af.Sampling({key}=...)")),
        };
        return Err(match new {
            Some(new) => {
                PyTypeError::new_err(format!("{function}: {key}= is now {new} (agentfleet 0.1)"))
            }
            None => PyTypeError::new_err(format!(
                "{function}() got an unexpected keyword argument '{key}'"
            )),
        });
    }
    Ok(())
}
