#!/usr/bin/env bash
# The quick start: builds the Python package, starts an embedded head + 2 workers in one
# Python process and runs a swarm of 1,000 agent jobs, streaming results.
. "$(dirname "$0")/env.sh"
cd "$root"
python_env maturin
python examples/python/swarm.py "$@"
