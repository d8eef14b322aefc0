//! Which NVIDIA GPUs this machine has, through NVML. The library is loaded at run time, so a
//! build without CUDA, or a machine without the driver, simply finds none.

use std::fmt;

/// One GPU as NVML reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub index: u32,
    pub name: String,
    pub memory_total: u64,
    pub memory_free: u64,
}

impl fmt::Display for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        write!(
            f,
            "cuda:{} {} ({:.1} GiB, {:.1} GiB free)",
            self.index,
            self.name,
            gib(self.memory_total),
            gib(self.memory_free)
        )
    }
}

/// What [`detect`] found: the GPUs, or why there are none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    Gpus(Vec<Gpu>),
    /// No GPU can be used here, and why (no driver, NVML failed, zero devices).
    None(String),
}

impl Detected {
    pub fn gpus(&self) -> &[Gpu] {
        match self {
            Detected::Gpus(g) => g,
            Detected::None(_) => &[],
        }
    }
}

/// Asks NVML for the GPUs; never fails (what went wrong is in [`Detected::None`]).
pub fn detect() -> Detected {
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(nvml) => nvml,
        Err(e) => return Detected::None(format!("no NVIDIA driver found (NVML: {e})")),
    };
    let count = match nvml.device_count() {
        Ok(n) => n,
        Err(e) => return Detected::None(format!("NVML cannot count GPUs: {e}")),
    };
    let gpus: Vec<Gpu> = (0..count)
        .filter_map(|index| {
            let device = nvml.device_by_index(index).ok()?;
            let memory = device.memory_info().ok()?;
            Some(Gpu {
                index,
                name: device.name().unwrap_or_else(|_| "unknown GPU".into()),
                memory_total: memory.total,
                memory_free: memory.free,
            })
        })
        .collect();
    if gpus.is_empty() {
        return Detected::None("the NVIDIA driver reports no GPUs".into());
    }
    Detected::Gpus(gpus)
}

/// Whether this build can run models on CUDA GPUs (the `cuda` feature).
pub const CUDA_BUILD: bool = cfg!(feature = "cuda");

/// The device local models run on when none is named: the first GPU in a CUDA build on a
/// machine that has one, else the CPU.
pub fn default_device(detected: &Detected) -> &'static str {
    if CUDA_BUILD && !detected.gpus().is_empty() { "cuda:0" } else { "cpu" }
}

/// KV memory for a model on a GPU when none was asked for: half of what is free once
/// `weight_bytes` more are taken, at least 256 MiB.
pub fn default_kv_bytes(gpu: &Gpu, weight_bytes: u64) -> usize {
    let left = gpu.memory_free.saturating_sub(weight_bytes);
    (left / 2).max(256 << 20) as usize
}
