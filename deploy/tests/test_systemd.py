"""The systemd units (deploy/systemd/) as systemd reads them: `systemd-analyze verify`
without a warning, and `systemd-analyze security` rating their hardening, offline, in a
root of the test's own with the real binaries where the units expect them.

FLEET_BIN_DIR names the folder of fleet-head and fleet-worker (scripts/test.sh sets it)."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
# systemd's scale: 0 is locked down, 10 is unprotected; "OK" ends at 4.
MOST_EXPOSED = 2.0


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bin_dir = os.environ.get("FLEET_BIN_DIR")
    assert bin_dir, "FLEET_BIN_DIR must name the folder of fleet-head and fleet-worker"
    root = tmp_path_factory.mktemp("root")
    (root / "usr/local/bin").mkdir(parents=True)
    for binary in ("fleet-head", "fleet-worker"):
        # A copy (a hard link where it can): systemd resolves a symlink inside the root.
        try:
            os.link(Path(bin_dir) / binary, root / "usr/local/bin" / binary)
        except OSError:
            shutil.copy2(Path(bin_dir) / binary, root / "usr/local/bin" / binary)
    # The system's own units (targets the ours are wanted by), as in an installed system.
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    shutil.copytree(UNITS, root / "etc/systemd/system")
    return root


def analyze(root: Path, *args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(["systemd-analyze", *args, f"--root={root}"], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("unit", ["fleet-head.service", "fleet-worker@0.service"])
def test_unit_verifies_clean(root: Path, unit: str) -> None:
    done = analyze(root, "verify", unit)
    # systemd-analyze exits 0 on unknown keys and bad values: its warnings count too.
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


def test_a_broken_unit_is_caught(root: Path) -> None:
    """The check above sees mistakes: a misspelt key and a bad value fail it."""
    broken = (UNITS / "fleet-head.service").read_text().replace("ProtectSystem=", "ProtectSytem=").replace("Type=exec", "Type=sometimes")
    (root / "etc/systemd/system/broken.service").write_text(broken)
    done = analyze(root, "verify", "broken.service")
    assert "Unknown key 'ProtectSytem'" in done.stderr and "sometimes" in done.stderr, done.stderr


@pytest.mark.parametrize("unit", ["fleet-head.service", "fleet-worker@0.service"])
def test_unit_is_hardened(root: Path, unit: str) -> None:
    done = analyze(root, "security", "--offline=true", unit)
    assert done.returncode == 0, done.stderr
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert level, done.stdout
    assert float(level.group(1)) <= MOST_EXPOSED, done.stdout
