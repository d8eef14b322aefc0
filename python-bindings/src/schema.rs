//! Output schemas: what a task's answer must look like, given as a JSON Schema dict or a
//! pydantic model class, and how its text becomes a Python value again.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict};

use crate::errors;

/// An output schema as the cluster takes it (JSON text) and the Python side that parses
/// answers: the pydantic class (`model_validate_json`), or `json.loads` for a dict.
pub struct OutputSchema {
    pub text: String,
    model: Option<Py<PyAny>>,
}

impl OutputSchema {
    pub fn from_py(schema: &Bound<'_, PyAny>) -> PyResult<Self> {
        let py = schema.py();
        let (json, model) = if schema.hasattr("model_json_schema")? {
            (schema.call_method0("model_json_schema")?, Some(schema.clone().unbind()))
        } else if schema.is_instance_of::<PyDict>() || schema.is_instance_of::<PyBool>() {
            (schema.clone(), None)
        } else {
            return Err(PyTypeError::new_err(
                "output_schema must be a JSON Schema as a dict, or a pydantic model class",
            ));
        };
        let text = py.import("json")?.call_method1("dumps", (json,))?.extract()?;
        Ok(Self { text, model })
    }

    /// The answer of task `task_id` as a Python value. It was generated under the schema,
    /// so it parses unless max_tokens cut it off (or a remote endpoint ignored the format);
    /// the error says so.
    pub fn parse(&self, py: Python<'_>, task_id: &str, text: &str) -> PyResult<Py<PyAny>> {
        let parsed = match &self.model {
            Some(model) => model.bind(py).call_method1("model_validate_json", (text,)),
            None => py.import("json")?.call_method1("loads", (text,)),
        };
        parsed.map(Bound::unbind).map_err(|e| {
            let shown: String = text.chars().take(200).collect();
            // The agent's settings (its max_tokens) are what to change: not worth a retry.
            errors::task_failed(
                fleet_client::ErrorKind::InvalidRequest.as_str(),
                task_id,
                format!(
                    "the answer of task {task_id} does not follow its output schema (was it \
                     cut off by max_tokens? raise the agent's max_tokens): {e}; the answer \
                     begins {shown:?}"
                ),
            )
        })
    }
}
