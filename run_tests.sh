#!/usr/bin/env bash
# Run the test suite: creates/reuses .venv, installs the project with its test
# extras, runs pytest. Extra arguments go to pytest (e.g. -m slow, -k encode).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_venv.sh "${EXTRAS:-test}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
set +e
"${VENV:-.venv}/bin/python" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests (exit 5): treated as a failure" >&2
  exit 1
fi
exit "$rc"
