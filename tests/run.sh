#!/usr/bin/env bash
# Set up (deploy/bootstrap.sh) and run the whole test suite: unit, integration (real embedded
# PostgreSQL + pgvector, real embedder) and slow tests, after the static checks (tests/checks.sh). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/bootstrap.sh
bash deploy/system-deps.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
bash tests/checks.sh  # layers (import-linter), lint (ruff), types (mypy): fails the run before the suite
exec .venv/bin/python -m pytest -q "$@"
