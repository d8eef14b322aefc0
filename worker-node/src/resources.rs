//! What this machine has: cpus, memory, hostname.

use fleet_proto::Resources;

/// Detects cpus and memory (Linux `/proc/meminfo`; 0 where unknown). GPUs are counted by
/// the command line (NVML, `fleet_inference::gpu`), which may be overridden with `--gpus`.
pub fn detect() -> Resources {
    let cpus = std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0);
    Resources { cpus, memory_bytes: total_memory().unwrap_or(0), gpus: 0 }
}

fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The host name, or `worker` when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect()
}
