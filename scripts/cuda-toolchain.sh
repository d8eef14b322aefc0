#!/usr/bin/env bash
# Sets up what building with `--features cuda` needs on a machine without a GPU or a CUDA
# install: nvcc, the headers and the libraries from PyPI's NVIDIA wheels (CUDA 13.0, the
# version our GPU machines' driver and PyTorch use) in a virtualenv outside the clone, and
# link-time stand-ins for the driver (libcuda.so, which only a driver install provides) and
# for the unversioned library names the linker looks for. At run time the real driver and
# libraries are used; the stand-in is never loaded (its soname is the driver's).
#
# Usage: `eval "$(scripts/cuda-toolchain.sh)"` (prints the exports of PATH, CUDA_ROOT,
# LIBRARY_PATH and CUDA_COMPUTE_CAP).
set -euo pipefail
venv="${FLEET_CUDA_VENV:-$HOME/.cache/agentfleet/cuda-venv}"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check >&2 \
    "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-crt==13.0.88" \
    "nvidia-cuda-cccl==13.0.85" "nvidia-cublas==13.0.2.14" "nvidia-curand==10.4.5.25" \
    "nvidia-cuda-nvrtc==13.0.88" "nvidia-nvvm==13.0.88"
cuda="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
stubs="$venv/stubs"
if [[ ! -f "$stubs/libcuda.so" ]]; then
    mkdir -p "$stubs"
    # Every driver entry point cuda.h names, as an empty function: enough for the linker.
    grep -oE '\bcu[A-Z][A-Za-z0-9_]*' "$cuda/include/cuda.h" | sort -u \
        | sed 's/.*/void &(void) {}/' >"$stubs/cuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/cuda_stub.c"
    for lib in "$cuda"/lib/lib*.so.*; do
        name="$(basename "$lib")"
        ln -sf "$lib" "$stubs/${name%%.so.*}.so"
    done
fi
# No GPU here to ask: build for the H100 (Hopper, 9.0) unless told otherwise.
cat <<EXPORTS
export PATH="$cuda/bin:\$PATH"
export CUDA_ROOT="$cuda"
export LIBRARY_PATH="$stubs:$cuda/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
EXPORTS
