"""Shared by the deployment tests: waiting on what can be observed, stopping processes."""

import signal
import subprocess
import time
from typing import Callable


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    """Polls `check` until it holds; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def stop(proc: "subprocess.Popen[str]", timeout: float = 20, how: int = signal.SIGTERM) -> int:
    """SIGTERM (as systemd, Kubernetes and podman stop a process) or `how`; its exit code."""
    proc.send_signal(how)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{proc.args!r} did not stop within {timeout:.0f} s of SIGTERM")
