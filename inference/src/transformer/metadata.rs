//! GGUF metadata as llama.cpp names it: a model's keys under its architecture's prefix
//! (`gemma3.block_count`), integers of any width, and errors that name the key at fault.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;

/// The metadata of a file of architecture `arch`.
#[derive(Clone, Copy)]
pub(crate) struct Metadata<'a> {
    pub md: &'a HashMap<String, Value>,
    pub arch: &'a str,
}

impl Metadata<'_> {
    /// The full name of the architecture's key `k`.
    pub fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    pub fn get(&self, k: &str) -> Option<&Value> {
        self.md.get(&self.key(k))
    }

    pub fn int(&self, k: &str) -> Result<usize, String> {
        int(self.md, &self.key(k))
    }

    /// An integer the file may leave out (an error only if present and not an integer).
    pub fn optional_int(&self, k: &str) -> Result<Option<usize>, String> {
        self.get(k).map(|_| self.int(k)).transpose()
    }

    pub fn float(&self, k: &str) -> Result<f64, String> {
        float(self.md, &self.key(k))
    }

    /// A float the file may leave out (an error only if present and not a float).
    pub fn optional_float(&self, k: &str) -> Result<Option<f64>, String> {
        self.get(k).map(|_| self.float(k)).transpose()
    }

    /// A scale the file may leave out; llama.cpp reads an absent one, or 0, as "not set".
    pub fn optional_scale(&self, k: &str) -> Result<Option<f32>, String> {
        Ok(self.optional_float(k)?.map(|v| v as f32).filter(|v| *v != 0.0))
    }
}

/// Any integer-typed metadata value (writers differ in which width they use).
pub(crate) fn int(md: &HashMap<String, Value>, key: &str) -> Result<usize, String> {
    int_value(md.get(key).ok_or_else(|| format!("the metadata has no {key}"))?, key)
}

/// `value` (named `key` in errors) as an integer of any width.
pub(crate) fn int_value(value: &Value, key: &str) -> Result<usize, String> {
    let n: i128 = match value {
        Value::U8(v) => (*v).into(),
        Value::I8(v) => (*v).into(),
        Value::U16(v) => (*v).into(),
        Value::I16(v) => (*v).into(),
        Value::U32(v) => (*v).into(),
        Value::I32(v) => (*v).into(),
        Value::U64(v) => (*v).into(),
        Value::I64(v) => (*v).into(),
        _ => return Err(format!("{key} is not an integer")),
    };
    usize::try_from(n).map_err(|_| format!("{key} is out of range: {n}"))
}

pub(crate) fn float(md: &HashMap<String, Value>, key: &str) -> Result<f64, String> {
    match md.get(key) {
        Some(Value::F32(v)) => Ok((*v).into()),
        Some(Value::F64(v)) => Ok(*v),
        Some(_) => Err(format!("{key} is not a float")),
        None => Err(format!("the metadata has no {key}")),
    }
}
