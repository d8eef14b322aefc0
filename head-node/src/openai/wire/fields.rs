//! The fields of a request body, read with errors that name them.

use serde_json::{Map, Value};

use super::super::errors::ApiError;

/// The fields of a request body, read with errors that name them.
pub(super) struct Fields<'a> {
    object: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    pub(super) fn of(body: &'a Value) -> Result<Self, ApiError> {
        match body {
            Value::Object(object) => Ok(Self { object }),
            _ => Err(ApiError::malformed("the body must be a JSON object")),
        }
    }

    /// A field's value; `null` counts as absent, as OpenAI treats it.
    pub(super) fn get(&self, name: &str) -> Option<&'a Value> {
        self.object.get(name).filter(|v| !v.is_null())
    }

    pub(super) fn string(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::invalid(name, format!("{name} must be a string"))),
        }
    }

    pub(super) fn required_string(&self, name: &str) -> Result<&'a str, ApiError> {
        match self.string(name)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(ApiError::invalid(name, format!("{name} is required"))),
        }
    }

    pub(super) fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::invalid(name, format!("{name} must be true or false"))),
        }
    }

    pub(super) fn number(&self, name: &str) -> Result<Option<f64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| ApiError::invalid(name, format!("{name} must be a number"))),
        }
    }

    /// An integer field; values beyond i64 come back as `i64::MAX`.
    pub(super) fn integer(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
                Ok(Some(n.as_i64().unwrap_or(i64::MAX)))
            }
            Some(_) => Err(ApiError::invalid(name, format!("{name} must be an integer"))),
        }
    }
}

/// Fails when a field this server does not implement is set to something other than its
/// neutral value (clients often send the neutral value explicitly).
pub(super) fn refuse_if(set: bool, name: &str, what_to_do: &str) -> Result<(), ApiError> {
    if set {
        return Err(ApiError::unsupported(name, format!("{name} is not supported: {what_to_do}")));
    }
    Ok(())
}
