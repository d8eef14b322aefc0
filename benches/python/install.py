"""From nothing to a running cluster: a fresh virtualenv, `pip install` of the wheel, then
`import agentfleet` and `af.init()` (a head and 2 workers) answering one task; Ray's
`pip install ray` and `ray.init()` answering one task beside it, same machine, one run.

    python benches/python/install.py --wheel dist/agentfleet-*.whl [--rounds 3] [--skip-ray]

Both installs are offline and from a local cache, so the network is not measured: Ray's
wheels (ray==2.60.0 and its dependencies) are downloaded once before the first round
(`pip download`), then installed with `--no-index --find-links`. Each round makes new
virtualenvs and times, in separate processes:
  install: `pip install` into the fresh venv                     -> seconds
  start:   interpreter start + import + init + one task + shutdown -> seconds
Also reported: the wheel's size and what the installed package takes on disk.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = "ray==2.60.0"

AGENTFLEET_START = """
import agentfleet as af
fleet = af.init(workers=2)
assert fleet.agent("echo", model="builtin:echo").map(["hello"]) == ["hello"]
fleet.shutdown()
"""

RAY_START = """
import ray
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
@ray.remote
def echo(x):
    return x
assert ray.get(echo.remote("hello")) == "hello"
ray.shutdown()
"""


def timed(args: "list[str]") -> float:
    started = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def venv(root: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    return root / "bin" / "python"


def size_of(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def one_round(install: "list[str]", start: str, package: str) -> "tuple[float, float, int]":
    with tempfile.TemporaryDirectory() as tmp:
        python = venv(Path(tmp) / "venv")
        seconds_install = timed([str(python), "-m", "pip", "install", "--quiet", *install])
        seconds_start = timed([str(python), "-c", start])
        site = next((Path(tmp) / "venv" / "lib").glob("python3*/site-packages"))
        return seconds_install, seconds_start, size_of(site / package)


def report(name: str, rounds: "list[tuple[float, float, int]]") -> "dict[str, object]":
    install = [r[0] for r in rounds]
    start = [r[1] for r in rounds]
    total = [r[0] + r[1] for r in rounds]
    row = {
        "name": name,
        "install_s": round(statistics.median(install), 2),
        "start_s": round(statistics.median(start), 2),
        "total_s": round(statistics.median(total), 2),
        "installed_mb": round(rounds[0][2] / 1e6, 1),
        "rounds_total_s": [round(t, 2) for t in total],
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wheel", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    wheel = Path(args.wheel).resolve()
    print(json.dumps({"wheel": wheel.name, "wheel_mb": round(wheel.stat().st_size / 1e6, 1)}), flush=True)
    ray_cache = Path(tempfile.mkdtemp(prefix="ray-wheels-"))
    if not args.skip_ray:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(ray_cache), RAY], check=True)
    ours, theirs = [], []
    for _ in range(args.rounds):
        # Alternating, so both see the same state of the machine.
        ours.append(one_round(["--no-index", str(wheel)], AGENTFLEET_START, "agentfleet"))
        if not args.skip_ray:
            theirs.append(one_round(["--no-index", "--find-links", str(ray_cache), RAY], RAY_START, "ray"))
    a = report("agentfleet", ours)
    if theirs:
        r = report("ray", theirs)
        print(json.dumps({"ratio_total": round(float(r["total_s"]) / float(a["total_s"]), 1)}))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
