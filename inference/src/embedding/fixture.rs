//! Finds the real sentence-transformers/all-MiniLM-L6-v2 folder for tests and benchmarks
//! (see [`crate::installed`]).

pub use crate::installed::minilm_dir;
