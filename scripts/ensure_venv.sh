#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install what the
# project needs from its own files. Sourced by run_local.sh and run_tests.sh
# with the extras to install (default: test).
#
# By default the install is locked: requirements/lock-<extras>.txt (commas as
# dashes, e.g. lock-test.txt, lock-test-onnx.txt) pins every package to the
# versions that passed the tests, so the same commands install the same
# versions on any day. setup.py keeps ranges; scripts/update_lock.sh rewrites
# a lock from a fresh resolve.
#
#   UPGRADE=1       ignore the lock and resolve afresh, to try the newest
#                   releases: always a new environment, in .venv-latest unless
#                   VENV says otherwise (.venv stays locked)
#   VENV=path       where the environment lives (default: .venv in the repo);
#                   set to the environment used when this returns
#   TORCH_SPEC=...  the torch requirement installed first when no torch is
#                   present (default: torch==2.13.0, the CPU build on this kind
#                   of machine). For a CUDA machine install the CUDA build of
#                   torch into the environment first; an installed torch is
#                   kept (torch is never in a lock, for that reason).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-test}"
python_bin="${PYTHON:-python3}"
lock="$repo_root/requirements/lock-${extras//,/-}.txt"
if [ "${UPGRADE:-0}" = 1 ]; then
  venv="${VENV:-$repo_root/.venv-latest}"
  echo "[setup] UPGRADE=1: a fresh resolve of beam-rerank[$extras] (no lock) in $venv" >&2
  rm -rf "$venv"
  constraints=()
  mode=fresh
else
  venv="${VENV:-$repo_root/.venv}"
  if [ -f "$lock" ]; then
    constraints=(-c "$lock")
    mode="lock-$(sha256sum "$lock" | cut -d' ' -f1)"
  else
    echo "[setup] no lock for [$extras] ($lock): resolving afresh" >&2
    constraints=()
    mode=fresh
  fi
fi
export VENV="$venv"

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
want="$(sha256sum "$repo_root/setup.py" | cut -d' ' -f1)-$extras-$mode"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  if [ "${#constraints[@]}" -gt 0 ]; then
    echo "[setup] installing beam-rerank[$extras] with the versions of ${lock#"$repo_root/"}" >&2
  else
    echo "[setup] installing beam-rerank[$extras] and the newest versions its ranges allow" >&2
  fi
  "$venv/bin/python" -m pip install --quiet "${constraints[@]}" -e "$repo_root[$extras]"
  echo "$want" > "$stamp"
fi
