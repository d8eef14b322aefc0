"""Shared by the deployment tests: waiting on what can be observed, stopping processes,
running podman."""

import os
import resource
import signal
import subprocess
import time
from typing import Callable

import pytest


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


# This machine's podman runs containers with runc and with the open-file and process limits
# the machine allows (its cgroups are in a hybrid layout crun refuses, and podman's default
# limits are above the machine's hard ones): the tests say so in a containers.conf of their
# own (CONTAINERS_CONF), which changes nothing in the images.
@pytest.fixture(scope="module")
def podman_env(tmp_path_factory: pytest.TempPathFactory) -> "dict[str, str]":
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nofile = 65536 if nofile == resource.RLIM_INFINITY else min(nofile, 65536)
    nproc = 4096 if nproc == resource.RLIM_INFINITY else min(nproc, 4096)
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(
        f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        '[engine]\nruntime = "runc"\n'
    )
    return dict(os.environ, CONTAINERS_CONF=str(conf))


def podman(env: "dict[str, str]", *args: str, timeout: float = 120) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout)
