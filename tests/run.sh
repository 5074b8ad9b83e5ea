#!/usr/bin/env bash
# Set up (deploy/bootstrap.sh) and run the whole test suite: unit, integration (real embedded
# PostgreSQL + pgvector, real embedder) and slow tests. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/bootstrap.sh
bash deploy/system-deps.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q "$@"
