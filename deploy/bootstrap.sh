#!/usr/bin/env bash
# Set up citeline for development on a fresh machine: a virtual environment in .venv with the
# pinned CPU torch, citeline (editable) and its test extras. Idempotent: re-running skips what is
# already installed (a stamp records the hash of pyproject.toml).
#
#   bash deploy/bootstrap.sh          # .venv with citeline[test]
#
# Environment: PYTHON (default python3, must be >= 3.11), CITELINE_VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${CITELINE_VENV:-.venv}

"$PYTHON" - <<'PY' || { echo "citeline needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

stamp="$VENV/.citeline-installed"
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import citeline" 2>/dev/null; then
  exit 0
fi

echo "==> creating $VENV and installing citeline (first time: a few minutes)" >&2
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip_quiet() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 | grep -v "is ignored: it is neither" >&2 || true; }
# torch first and pinned: the CPU build of exactly this version; an unpinned torch pulls CUDA packages.
pip_quiet "torch==2.13.0"
pip_quiet -e ".[test]"
"$VENV/bin/python" -c "import citeline, torch; assert torch.__version__.startswith('2.13.0'), torch.__version__" \
  || { echo "installation failed: see the pip output above" >&2; exit 1; }
echo "$want" > "$stamp"
