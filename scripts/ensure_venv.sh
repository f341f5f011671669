#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install what the
# project needs from its own files. Sourced by run_local.sh and run_tests.sh.
#
#   VENV=path       where the environment lives (default: .venv in the repo)
#   TORCH_SPEC=...  the torch requirement installed first when no torch is
#                   present (default: torch==2.13.0, the CPU build on this kind
#                   of machine). For a CUDA machine install the CUDA build of
#                   torch into the environment first; an installed torch is kept.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$repo_root/.venv}"
extras="${1:-test}"
python_bin="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment in $venv" >&2
  "$python_bin" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi

if ! "$venv/bin/python" -c 'import torch' >/dev/null 2>&1; then
  echo "[setup] installing ${TORCH_SPEC:-torch==2.13.0} (before anything that depends on it)" >&2
  "$venv/bin/python" -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
fi

stamp="$venv/.beam-rerank-installed"
want="$(cat "$repo_root/setup.py" | sha256sum | cut -d' ' -f1)-$extras"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing beam-rerank[$extras] and its dependencies" >&2
  "$venv/bin/python" -m pip install --quiet -e "$repo_root[$extras]"
  echo "$want" > "$stamp"
fi
