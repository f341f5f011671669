#!/usr/bin/env bash
# Rewrite the locks (requirements/lock-<extras>.txt) from a fresh resolve.
#
#   scripts/update_lock.sh                 # the three locks: test, test,openvino, test,onnx
#   scripts/update_lock.sh test            # one of them
#   NO_TESTS=1 scripts/update_lock.sh      # write without testing (not for main)
#
# For each extras set: a new virtual environment resolved afresh from setup.py's
# ranges (UPGRADE=1), the tests for it (the suite for `test`, the backend tests
# for a backend extra), then `pip freeze` into the lock. A lock is written only
# when its tests pass, so a lock always names versions that passed. torch is
# left out of every lock: it is installed first, the build the machine needs
# (TORCH_SPEC in scripts/ensure_venv.sh). Commit the changed locks with the
# versions that moved in the message.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -eq 0 ]; then set -- test test,openvino test,onnx; fi
status=0
for extras in "$@"; do
  lock="requirements/lock-${extras//,/-}.txt"
  venv=".venv-lock-${extras//,/-}"
  echo "== $extras -> $lock (fresh resolve in $venv)"
  tests=()
  case "$extras" in
    *openvino*) tests=(tests/jobs/test_backends.py); export REQUIRE_OPENVINO=1 ;;
    *onnx*) tests=(tests/jobs/test_backends.py); export REQUIRE_ONNX=1 ;;
  esac
  if [ "${NO_TESTS:-0}" = 1 ]; then
    (UPGRADE=1 VENV="$venv"; source scripts/ensure_venv.sh "$extras")
  elif ! UPGRADE=1 VENV="$venv" EXTRAS="$extras" ./run_tests.sh -q "${tests[@]}"; then
    echo "!! $extras: the tests fail on a fresh resolve; $lock left as it was" >&2
    status=1
    unset REQUIRE_OPENVINO REQUIRE_ONNX
    continue
  fi
  unset REQUIRE_OPENVINO REQUIRE_ONNX
  mkdir -p requirements
  {
    echo "# The versions beam-rerank[$extras] was tested with; pip constraints."
    echo "# Written by scripts/update_lock.sh on $(date -u +%Y-%m-%d) from a fresh resolve,"
    echo "# $("$venv/bin/python" --version), $(uname -m). torch is not pinned here (see"
    echo "# scripts/ensure_venv.sh). Do not edit by hand: run the script again."
    "$venv/bin/python" -m pip freeze --exclude-editable \
      | grep -v -i -E '^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)==' \
      | grep -v '^#' | LC_ALL=C sort -f
  } > "$lock.tmp"
  mv "$lock.tmp" "$lock"
  rm -rf "$venv"
  echo "== wrote $lock"
done
exit "$status"
