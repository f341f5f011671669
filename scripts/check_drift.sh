#!/usr/bin/env bash
# Drift check: the fast tests against a fresh resolve, i.e. the newest releases
# that setup.py's ranges allow today, with no lock. CI runs it after the locked
# suite; run it by hand any day with
#
#   scripts/check_drift.sh                 # the drift subset below
#   scripts/check_drift.sh tests/          # or any pytest arguments (the whole suite)
#
# It prints the versions that differ from requirements/lock-test.txt, then the
# tests' result. Exit 0: the newest releases pass (scripts/update_lock.sh can
# move the lock to them); 1: they fail. Users are not affected either way (the
# README's commands install the lock), but a failure is a bug to fix before
# the lock moves. The environment is .venv-latest, made anew each time.
set -euo pipefail
cd "$(dirname "$0")/.."
# The modules that touch the dependencies' APIs most: Beam's coders and IO,
# sentence-transformers' encode/predict/mine_hard_negatives/trainers, bm25s,
# ir-measures, pyarrow/polars. About a third of the suite's time.
DRIFT_TESTS=(
  tests/unit/test_mining.py tests/unit/test_pseudo_queries.py tests/unit/test_parquet_sink.py
  tests/unit/test_parquet_input.py tests/unit/test_bm25.py tests/unit/test_evaluation.py
  tests/unit/test_scoring.py tests/unit/test_retrieval.py tests/unit/test_batching.py
  tests/jobs/test_train_job.py tests/test_setup_declares_imports.py
)
if [ "$#" -eq 0 ]; then set -- "${DRIFT_TESTS[@]}"; fi
venv="${VENV:-.venv-latest}"
lock=requirements/lock-test.txt
(UPGRADE=1 VENV="$venv"; source scripts/ensure_venv.sh test)
echo "== drift: a fresh resolve in $venv against $lock"
"$venv/bin/python" - "$lock" <<'EOF'
import importlib.metadata, re, sys
pinned = {}
for line in open(sys.argv[1], encoding='utf-8'):
  match = re.match(r'([A-Za-z0-9._-]+)==(\S+)', line)
  if match:
    pinned[re.sub(r'[-_.]+', '-', match[1]).lower()] = match[2]
installed = {re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(): d.version
             for d in importlib.metadata.distributions()}
moved = [(name, pinned[name], installed[name]) for name in sorted(pinned)
         if name in installed and installed[name] != pinned[name]]
new = sorted(set(installed) - set(pinned) - {'beam-rerank', 'pip', 'setuptools', 'wheel'}
             - {n for n in installed if n.startswith(('torch', 'nvidia-', 'triton'))})
for name, old, now in moved:
  print(f'   {name} {old} -> {now}')
for name in new:
  print(f'   {name} {installed[name]} (not in the lock)')
if not moved and not new:
  print('   the fresh resolve installs the locked versions')
EOF
set +e
HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false "$venv/bin/python" -m pytest -q \
  -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then rc=1; echo "pytest collected no tests (exit 5)" >&2; fi
if [ "$rc" -eq 0 ]; then
  echo "== drift: the newest releases pass these tests"
else
  echo "== drift: FAILED on the newest releases (exit $rc); the lock still installs the tested versions" >&2
fi
exit "$rc"
