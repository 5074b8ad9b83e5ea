#!/usr/bin/env bash
# Static checks, run by tests/run.sh before the suite (and so by CI): the layers (import-linter), lint and
# import order (ruff), types (mypy). Usage: bash tests/checks.sh  (needs .venv from deploy/bootstrap.sh)
#
# The package is spread over four folders (src/citeline, connectors/, ingest/, serving/: see [tool.setuptools]
# in pyproject.toml), which import-linter and mypy cannot follow; they check a copy assembled the way the
# wheel is laid out, and the paths in their messages are mapped back to the repository's.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CITELINE_VENV:-.venv}
tree=$(mktemp -d -t citeline-checks.XXXXXX)
trap 'rm -rf "$tree"' EXIT
cp -r src/citeline "$tree/citeline"
for part in connectors ingest serving; do cp -r "$part" "$tree/citeline/$part"; done
find "$tree" -name __pycache__ -prune -exec rm -rf {} +
back() { sed -E -e "s#$tree/##g" \
  -e 's#(^|[^/[:alnum:]_])citeline/(connectors|ingest|serving)/#\1\2/#g' \
  -e 's#(^|[^/[:alnum:]_])citeline/#\1src/citeline/#g'; }
status=0
echo "==> ruff (lint and import order)"
"$VENV/bin/ruff" check src connectors ingest serving tests benchmarks || status=1
echo "==> import-linter (the layers in pyproject.toml [tool.importlinter])"
(cd "$tree" && PYTHONPATH="$tree" "$OLDPWD/$VENV/bin/lint-imports" --no-cache "$OLDPWD/pyproject.toml") 2>&1 | back || status=1
echo "==> mypy (the package)"
(cd "$tree" && "$OLDPWD/$VENV/bin/mypy" --config-file "$OLDPWD/pyproject.toml" --cache-dir "$OLDPWD/.mypy_cache" -p citeline) 2>&1 | back || status=1
exit $status
