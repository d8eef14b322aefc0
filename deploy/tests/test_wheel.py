"""The wheel scripts/wheel.sh builds, as a user gets it: installed into a fresh virtualenv
on a PATH without Rust, its console commands run a head and two workers, and a task goes
through them; the sizes BENCHMARKS.md promises hold.

FLEET_WHEEL names the wheel (scripts/test.sh builds it first)."""

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

from conftest import stop, wait_for

MB = 1_000_000
WHEEL_LIMIT = 25 * MB
INSTALLED_LIMIT = 70 * MB


@pytest.fixture(scope="module")
def wheel() -> Path:
    name = os.environ.get("FLEET_WHEEL")
    assert name, "FLEET_WHEEL must name the wheel to test (scripts/wheel.sh prints its path)"
    return Path(name)


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtualenv with only the wheel installed (no index: it needs nothing else)."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    subprocess.run(
        [str(root / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index", str(wheel)],
        check=True,
    )
    yield root


RUST_TOOLS = ("cargo", "rustc", "maturin")


def clean_env(venv: Path) -> "dict[str, str]":
    """The environment of a machine with the wheel and no Rust toolchain: the virtualenv's
    bin/ and the system's folders that hold no Rust tool, nothing of cargo's or of the
    test's own virtualenv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARGO", "RUST", "FLEET_", "VIRTUAL_ENV", "PYTHON"))}
    system = [d for d in ("/usr/local/bin", "/usr/bin", "/bin") if not any(Path(d, t).exists() for t in RUST_TOOLS)]
    env["PATH"] = ":".join([str(venv / "bin"), *system])
    env["RUST_LOG"] = "warn"
    env["HOME"] = str(venv)  # nothing of this machine's ~/.cargo
    return env


def run(venv: Path, *args: str, timeout: float = 60) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(args, env=clean_env(venv), capture_output=True, text=True, timeout=timeout)


def test_wheel_is_manylinux_2_28_and_small(wheel: Path) -> None:
    assert wheel.name.endswith("-manylinux_2_28_x86_64.whl"), wheel.name
    assert "abi3" in wheel.name, wheel.name
    size = wheel.stat().st_size
    assert size <= WHEEL_LIMIT, f"the wheel is {size / MB:.1f} MB, over {WHEEL_LIMIT / MB:.0f} MB"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = z.read(entry_points).decode()
        native = next(n for n in names if n.startswith("agentfleet/_native") and n.endswith(".so"))
    for command in ("fleet-head", "fleet-worker", "fleet"):
        assert f"\n{command}=agentfleet._cli:" in "\n" + scripts, scripts
    # The extension's debug info, stripped from it, waits in debug/ beside the wheel.
    debug = wheel.parent / "debug" / (Path(native).name + ".debug")
    assert debug.exists(), f"no {debug} beside the wheel"


def test_installed_without_rust(venv: Path) -> None:
    env = clean_env(venv)
    for tool in RUST_TOOLS:
        assert shutil.which(tool, path=env["PATH"]) is None, f"{tool} is on the test's PATH"
    site = next((venv / "lib").glob("python3*/site-packages"))
    installed = sum(f.stat().st_size for f in (site / "agentfleet").rglob("*") if f.is_file())
    assert installed <= INSTALLED_LIMIT, f"installed: {installed / MB:.1f} MB, over {INSTALLED_LIMIT / MB:.0f} MB"
    native = next((site / "agentfleet").glob("_native*.so"))
    sections = subprocess.run(["readelf", "-S", "-W", str(native)], capture_output=True, text=True, check=True).stdout
    assert ".gnu_debuglink" in sections and ".debug_line" not in sections, sections


def test_console_commands_print_their_version(venv: Path) -> None:
    for command in ("fleet-head", "fleet-worker", "fleet"):
        done = run(venv, command, "--version")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"{command} 0.1.0", done.stdout


def logs(folder: Path) -> str:
    """What the nodes wrote, for a failure's message."""
    return "\n".join(f"--- {f.name}\n{f.read_text()}" for f in sorted(folder.glob("*.log")))


def test_a_head_and_two_workers_from_the_commands_run_a_task(venv: Path, tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_text('[[agent]]\nname = "echo"\nmodel = "builtin:echo"\n')
    env = clean_env(venv)

    def node(name: str, *args: str, stdout: "int | None" = None) -> "subprocess.Popen[str]":
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(args, env=env, stdout=stdout or log, stderr=log, text=True)
        log.close()
        return proc

    head = node(
        "head", "fleet-head", "--listen", "127.0.0.1:0", "--print-address", "--token", "s3cret",
        "--join-token", "j0in", "--config", str(tmp_path / "fleet.toml"), "--data-dir", str(tmp_path / "data"),
        stdout=subprocess.PIPE,
    )
    assert head.stdout is not None
    line = head.stdout.readline()
    assert line.startswith("listening on "), line + logs(tmp_path)
    address = "http://" + line.removeprefix("listening on ").strip()
    workers = [
        node(f"worker{i}", "fleet-worker", "--head", address, "--join-token", "j0in", "--name", f"w{i}",
             "--mesh-listen", "/ip4/127.0.0.1/tcp/0")
        for i in range(2)
    ]
    try:
        def joined() -> bool:
            status = run(venv, "fleet", "--head", address, "--token", "s3cret", "status")
            return status.returncode == 0 and "w0" in status.stdout and "w1" in status.stdout

        try:
            wait_for("two workers in `fleet status`", joined)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{logs(tmp_path)}") from None
        started = time.monotonic()
        done = run(venv, "fleet", "--head", address, "--token", "s3cret", "submit", "echo", "hello from the wheel")
        assert done.returncode == 0, done.stderr
        assert "hello from the wheel" in done.stdout, done.stdout
        assert time.monotonic() - started < 30
        # Without the token the head says what is missing.
        refused = run(venv, "fleet", "--head", address, "status")
        assert refused.returncode != 0 and "token" in refused.stderr.lower(), refused.stderr
    finally:
        # SIGTERM stops each worker cleanly (exit 0), as systemd and Kubernetes stop them,
        # and Ctrl-C the head, as in a terminal: no KeyboardInterrupt from Python after.
        codes = [stop(w) for w in workers] + [stop(head, how=signal.SIGINT)]
        head.stdout.close()
    assert codes == [0, 0, 0], f"{codes}\n{logs(tmp_path)}"
    assert "KeyboardInterrupt" not in logs(tmp_path), logs(tmp_path)


def test_python_api_from_the_wheel(venv: Path) -> None:
    program = (
        "import agentfleet as af\n"
        "fleet = af.init(workers=2)\n"
        "echo = fleet.agent('echo', model='builtin:echo')\n"
        "print(echo.map(['one', 'two']))\n"
        "fleet.shutdown()\n"
    )
    done = run(venv, str(venv / "bin" / "python"), "-c", program)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['one', 'two']", done.stdout
