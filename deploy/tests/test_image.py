"""The container image scripts/image.sh builds, run as users would run it: a head and two
workers as podman containers on a podman network of the test's own, a task through them
from outside, the head's health check, a non-root user, and a clean stop on SIGTERM.

FLEET_IMAGE names the image (scripts/test.sh builds it); FLEET_BIN_DIR the folder of the
`fleet` binary the test drives the cluster with from the host.

podman runs with the settings conftest's `podman_env` gives it."""

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from conftest import podman, wait_for

TOKEN = "image-client-token"
JOIN = "image-join-token"


@pytest.fixture(scope="module")
def image() -> str:
    name = os.environ.get("FLEET_IMAGE")
    assert name, "FLEET_IMAGE must name the image to test (scripts/image.sh prints it)"
    return name


@pytest.fixture(scope="module")
def fleet_bin() -> Path:
    bin_dir = os.environ.get("FLEET_BIN_DIR")
    assert bin_dir, "FLEET_BIN_DIR must name the folder of the fleet binary"
    return Path(bin_dir) / "fleet"


class Cluster:
    def __init__(self, env: "dict[str, str]", image: str, config: Path, data: Path) -> None:
        self.env = env
        self.config = config
        self.data = data
        self.image = image
        self.suffix = uuid.uuid4().hex[:8]
        self.network = f"fleet-test-{self.suffix}"
        self.port = 0
        self.head = f"head-{self.suffix}"
        self.workers = [f"worker{i}-{self.suffix}" for i in range(2)]

    def start(self) -> None:
        done = podman(self.env, "network", "create", self.network)
        assert done.returncode == 0, done.stderr
        done = podman(
            self.env, "run", "-d", "--name", self.head, "--network", self.network,
            "--network-alias", "head", "-p", "127.0.0.1::7070",
            # The store on a folder of the host, owned by root with the container's group
            # allowed to write (as Kubernetes' fsGroup leaves a volume): the head keeps its
            # data in head/ inside, which it may make private.
            "-v", f"{self.data}:/var/lib/agentfleet",
            "-e", f"FLEET_TOKEN={TOKEN}", "-e", f"FLEET_JOIN_TOKEN={JOIN}", "-e", "RUST_LOG=warn",
            # The agents, from a config file mounted read-only, as an operator would.
            "-v", f"{self.config}:/etc/agentfleet/fleet.toml:ro", "-e", "FLEET_CONFIG=/etc/agentfleet/fleet.toml",
            self.image,
        )
        assert done.returncode == 0, done.stderr
        port = podman(self.env, "port", self.head, "7070/tcp")
        assert port.returncode == 0, port.stderr
        self.port = int(port.stdout.strip().rsplit(":", 1)[1])
        for worker in self.workers:
            done = podman(
                self.env, "run", "-d", "--name", worker, "--network", self.network, "--no-healthcheck",
                "-e", "FLEET_HEAD=http://head:7070", "-e", f"FLEET_JOIN_TOKEN={JOIN}",
                "-e", f"FLEET_WORKER_NAME={worker}", "-e", "RUST_LOG=warn",
                self.image, "fleet-worker", "--no-mesh",
            )
            assert done.returncode == 0, done.stderr

    def logs(self) -> str:
        return "\n".join(f"--- {c}\n{podman(self.env, 'logs', c).stderr}" for c in [self.head, *self.workers])

    def remove(self) -> None:
        podman(self.env, "rm", "--force", "--time", "0", self.head, *self.workers)
        podman(self.env, "network", "rm", "--force", self.network)


@pytest.fixture(scope="module")
def cluster(podman_env: "dict[str, str]", image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    config = tmp_path_factory.mktemp("config") / "fleet.toml"
    config.write_text('[[agent]]\nname = "echo"\nmodel = "builtin:echo"\n')
    config.chmod(0o644)
    config.parent.chmod(0o755)
    data = tmp_path_factory.mktemp("volume")
    os.chown(data, 0, 10001)
    data.chmod(0o2775)
    c = Cluster(podman_env, image, config, data)
    try:
        c.start()
        yield c
    finally:
        c.remove()


def fleet(fleet_bin: Path, cluster: Cluster, *args: str) -> "subprocess.CompletedProcess[str]":
    env = dict(os.environ, FLEET_HEAD=f"http://127.0.0.1:{cluster.port}", FLEET_TOKEN=TOKEN)
    return subprocess.run([str(fleet_bin), *args], env=env, capture_output=True, text=True, timeout=60)


def test_image_config(podman_env: "dict[str, str]", image: str) -> None:
    done = podman(podman_env, "image", "inspect", image)
    assert done.returncode == 0, done.stderr
    (config,) = json.loads(done.stdout)
    c = config["Config"]
    assert c["User"] == "10001:10001"
    assert c["Cmd"] == ["fleet-head"]
    assert set(c["Volumes"]) == {"/var/lib/agentfleet", "/models"}
    assert "7070/tcp" in c["ExposedPorts"]
    assert config["Healthcheck"]["Test"] == ["CMD", "fleet", "health"]
    size = int(config["Size"])
    assert size < 120_000_000, f"the image is {size / 1e6:.0f} MB"


def test_head_and_two_workers_in_containers_run_a_task(cluster: Cluster, fleet_bin: Path) -> None:
    """Also: the head's store is on the host's folder, in head/ (private to the head)."""
    def joined() -> bool:
        status = fleet(fleet_bin, cluster, "status")
        return status.returncode == 0 and all(w in status.stdout for w in cluster.workers)

    try:
        wait_for("both worker containers in `fleet status`", joined, timeout=90)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{cluster.logs()}") from None
    done = fleet(fleet_bin, cluster, "submit", "echo", "hello from a container")
    assert done.returncode == 0, done.stderr + cluster.logs()
    assert "hello from a container" in done.stdout
    store = cluster.data / "head"
    assert (store / "head.redb").is_file(), list(cluster.data.iterdir())
    assert store.stat().st_uid == 10001 and store.stat().st_mode & 0o777 == 0o700


def test_health_check_passes_on_the_head(cluster: Cluster) -> None:
    def healthy() -> bool:
        return podman(cluster.env, "healthcheck", "run", cluster.head).returncode == 0

    wait_for("the head container's health check", healthy, timeout=60)
    state = podman(cluster.env, "inspect", "--format", "{{.State.Health.Status}}", cluster.head)
    assert state.stdout.strip() == "healthy", state.stdout + state.stderr


def test_runs_as_non_root_and_stops_cleanly_on_sigterm(cluster: Cluster) -> None:
    top = podman(cluster.env, "top", cluster.head, "user", "comm")
    assert top.returncode == 0, top.stderr
    assert "fleet-head" in top.stdout and "root" not in top.stdout.split("\n", 1)[1], top.stdout
    for container in [*cluster.workers, cluster.head]:
        done = podman(cluster.env, "stop", "--time", "20", container)
        assert done.returncode == 0, done.stderr
        code = podman(cluster.env, "inspect", "--format", "{{.State.ExitCode}}", container)
        assert code.stdout.strip() == "0", f"{container} exited {code.stdout.strip()}\n{cluster.logs()}"
