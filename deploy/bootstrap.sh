#!/usr/bin/env bash
# Set up citeline for development on a fresh machine: a virtual environment in .venv with citeline
# (editable) and all its extras (local, server, train, documents, test: what the demo and the whole suite need),
# installed with deploy/constraints.txt (the pinned CPU torch). Idempotent: re-running skips what is
# already installed (a stamp records the hash of pyproject.toml and deploy/constraints.txt).
#
#   bash deploy/bootstrap.sh          # .venv with citeline[local,server,train,documents,test]
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
want=$(cat pyproject.toml deploy/constraints.txt | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import citeline" 2>/dev/null; then
  exit 0
fi

echo "==> creating $VENV and installing citeline (first time: a few minutes)" >&2
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip_quiet() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 | grep -v "is ignored: it is neither" >&2 || true; }
# torch first, at the version deploy/constraints.txt pins (the CPU build; an unpinned torch pulls CUDA packages)
pip_quiet -c deploy/constraints.txt torch
pip_quiet -c deploy/constraints.txt -e ".[local,server,train,documents,test]"
torch_pin=$(sed -n 's/^torch==//p' deploy/constraints.txt)
"$VENV/bin/python" -c "import citeline, torch, sys; v = torch.__version__; assert v.split('+')[0] == sys.argv[1], v" \
  "$torch_pin" || { echo "installation failed: see the pip output above" >&2; exit 1; }
echo "$want" > "$stamp"
