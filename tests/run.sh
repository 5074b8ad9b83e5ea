#!/usr/bin/env bash
# Set up (deploy/bootstrap.sh) and run the whole test suite: unit, integration (real embedded
# PostgreSQL + pgvector, real embedder) and slow tests, after the static checks (tests/checks.sh). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/bootstrap.sh
bash deploy/system-deps.sh
# the OpenID Connect provider the sign-in tests start (npm oidc-provider, pinned by tests/support/oidc/package-lock.json)
[ -d tests/support/oidc/node_modules/oidc-provider ] || (cd tests/support/oidc && npm ci --no-audit --no-fund --loglevel=error)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
bash tests/checks.sh  # layers (import-linter), lint (ruff), types (mypy): fails the run before the suite
exec .venv/bin/python -m pytest -q "$@"
