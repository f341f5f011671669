"""Crash safety: jobs killed with SIGKILL mid-run, then re-run.

The contract (DESIGN.md, README): outputs are staged under ``OUTPUT/.staging``
and moved into place by one commit step; ``manifest.json`` is written last, so
a folder with a manifest is complete, and a re-run after a crash yields
complete files, byte-identical to an uninterrupted run.

Each job runs as a subprocess (``python -m pipelines.JOB``, the same command a
user or scheduler runs) and is killed at a point found by polling the output
folder, not by a guessed sleep:

* ``staging``: the first staged shard file exists (inference done, shards
  being written, nothing committed yet);
* ``commit``: the first shard has been moved into its final place (the commit
  step is running; its manifest is not written yet).

Reference runs happen in this process; every file of the re-run output is
compared byte for byte with them. ``report.json`` is the only file allowed to
differ, and only in the fields in ``VOLATILE_REPORT_FIELDS`` (wall-clock
timings and the output path); manifests are compared whole.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from pipelines import common
from pipelines import encode as encode_job
from pipelines import rerank as rerank_job
from tests.fixtures import REPO_ROOT
from transforms.core.errors import UserInputError

# report.json fields that legitimately differ between two runs of the same job
# on the same inputs: timings and the output folder itself. Everything else
# (every Parquet file, manifest.json, the rest of report.json) must be equal.
VOLATILE_REPORT_FIELDS = (
    'output', 'wall_seconds', 'pipeline_seconds', 'texts_per_second',
    'pairs_per_second')
NUM_TEXTS = 400
NUM_QUERIES = 24
WORDS = ['wing', 'flow', 'pressure', 'bread', 'river', 'delta', 'yeast', 'cloud',
         'крыло', 'хлеб', 'река', 'давление', 'обучение', 'врач']


def _texts(prefix: str, count: int, offset: int) -> dict[str, str]:
  return {
      f'{prefix}{i:04d}': f'{prefix} {i}: ' + ' '.join(
          WORDS[(i * 7 + j * (offset + 3)) % len(WORDS)] for j in range(3 + (i * 5) % 40))
      for i in range(count)}


@pytest.fixture(scope='module')
def data(tmp_path_factory, tiny_bi_encoder_dir, tiny_cross_encoder_dir):
  from tests.fixtures import write_parquet
  root = tmp_path_factory.mktemp('crash_data')
  corpus = _texts('d', NUM_TEXTS, 1)
  queries = _texts('q', NUM_QUERIES, 2)
  return {
      'corpus': write_parquet(root / 'corpus.parquet', {
          'doc_id': list(corpus), 'text': list(corpus.values())}),
      'queries': write_parquet(root / 'queries.parquet', {
          'query_id': list(queries), 'text': list(queries.values())}),
      'bi_encoder': tiny_bi_encoder_dir,
      'cross_encoder': tiny_cross_encoder_dir,
  }


def _encode_args(data, out) -> list[str]:
  # Two rows per shard: 200 shard files, so staging and commit take long
  # enough to be caught in the middle.
  return ['--input', data['corpus'], '--model', data['bi_encoder'],
          '--rows-per-shard', '2', '--output', str(out)]


def _rerank_args(data, query_emb, corpus_emb, out) -> list[str]:
  return ['--queries', data['queries'], '--corpus', data['corpus'],
          '--query-embeddings', str(query_emb), '--corpus-embeddings', str(corpus_emb),
          '--cross-encoder', data['cross_encoder'], '--top-k', '20', '--top-n', '5',
          '--rows-per-shard', '2', '--output', str(out)]


def _in_process(job, argv) -> dict:
  with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    return job.run([str(a) for a in argv])


def _env() -> dict[str, str]:
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(
      [str(REPO_ROOT)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
  env.update(HF_HUB_OFFLINE='1', TOKENIZERS_PARALLELISM='false')
  return env


def _command(job: str, argv) -> list[str]:
  return [sys.executable, '-m', f'pipelines.{job}', *[str(a) for a in argv]]


def _run_to_end(job: str, argv, log: pathlib.Path) -> None:
  with open(log, 'wb') as handle:
    code = subprocess.run(
        _command(job, argv), cwd=REPO_ROOT, env=_env(), stdout=handle,
        stderr=subprocess.STDOUT, timeout=240).returncode
  assert code == 0, log.read_text(errors='replace')[-3000:]


def _final_parts(out: pathlib.Path) -> list[pathlib.Path]:
  """Shard files in their published places (not under .staging)."""
  return sorted(p for p in out.rglob('part-*.parquet')
                if '.staging' not in p.relative_to(out).parts)


def _staging_started(out: pathlib.Path) -> bool:
  staging = out / '.staging'
  return staging.is_dir() and any(files for _, _, files in os.walk(staging))


def _commit_started(out: pathlib.Path):
  """A kill condition: the first shard that was not in ``out`` before the run
  is in its final place (or the run got to its manifest)."""
  before = set(_final_parts(out))
  old_manifest = (out / 'manifest.json').read_bytes() if (
      out / 'manifest.json').exists() else None

  def started(out: pathlib.Path) -> bool:
    try:
      if (out / 'manifest.json').read_bytes() != old_manifest:
        return True
    except FileNotFoundError:
      pass
    return bool(set(_final_parts(out)) - before)
  return started


def _run_and_kill(job: str, argv, out: pathlib.Path, kill_when, log: pathlib.Path,
                  timeout: float = 240) -> float:
  """Starts the job, SIGKILLs it (its whole process group) as soon as
  ``kill_when(out)`` holds; returns the seconds it ran."""
  started = time.monotonic()
  with open(log, 'wb') as handle:
    proc = subprocess.Popen(
        _command(job, argv), cwd=REPO_ROOT, env=_env(), stdout=handle,
        stderr=subprocess.STDOUT, start_new_session=True)
    try:
      while not kill_when(out):
        if proc.poll() is not None:
          pytest.fail(f'{job} ended (exit {proc.returncode}) before the kill point:\n'
                      + log.read_text(errors='replace')[-3000:])
        if time.monotonic() - started > timeout:
          pytest.fail(f'{job}: kill point not reached in {timeout} s')
        time.sleep(0.0005)
      _kill_group(proc)
    finally:
      if proc.poll() is None:
        _kill_group(proc)
      proc.wait(timeout=60)
  # 0 only if it finished between the last poll and the kill (then the
  # folder must be complete: _published_state checks it against its manifest).
  assert proc.returncode in (-signal.SIGKILL, 0), log.read_text(errors='replace')[-3000:]
  return time.monotonic() - started


def _kill_group(proc: subprocess.Popen) -> None:
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except ProcessLookupError:
    pass


def _snapshot(out: pathlib.Path) -> dict[str, bytes]:
  """Every file under ``out`` by relative path (report.json without its
  volatile fields); leftovers such as ``.staging/`` or ``*.tmp`` show up too."""
  files = {}
  for path in sorted(p for p in out.rglob('*') if p.is_file()):
    name = str(path.relative_to(out))
    data = path.read_bytes()
    if name == 'report.json':
      report = json.loads(data)
      for field in VOLATILE_REPORT_FIELDS:
        report.pop(field, None)
      data = json.dumps(report, sort_keys=True).encode()
    files[name] = data
  return files


def _assert_identical(got: pathlib.Path, want: pathlib.Path) -> None:
  got_files, want_files = _snapshot(got), _snapshot(want)
  assert sorted(got_files) == sorted(want_files)
  different = [name for name in want_files if got_files[name] != want_files[name]]
  assert not different, f'files differ from the uninterrupted run: {different}'


def _published_state(out: pathlib.Path) -> dict:
  """What a reader sees in ``out`` after a kill, checked for consistency.

  With a manifest: exactly the files it lists, with its row counts. Without:
  the folder is not a result (jobs that read it must refuse it); any shard in
  a final place is a whole, readable Parquet file (moves are renames).
  """
  parts = _final_parts(out)
  for path in parts:
    pq.read_table(str(path))  # Never a truncated file.
  manifest_path = out / 'manifest.json'
  if not manifest_path.exists():
    return {'manifest': False, 'final_shards': len(parts)}
  manifest = json.loads(manifest_path.read_text())
  listed = {}
  for output in manifest['outputs'].values():
    directory = out / output['directory']
    for entry in output['files']:
      listed[directory / entry['path']] = entry['rows']
  assert sorted(listed) == [p for p in parts]
  for path, rows in listed.items():
    assert pq.read_metadata(str(path)).num_rows == rows
  return {'manifest': True, 'final_shards': len(parts)}


# ------------------------------------------------------------------ references

@pytest.fixture(scope='module')
def reference(tmp_path_factory, data):
  """Uninterrupted in-process runs: corpus and query embeddings, ranked."""
  root = tmp_path_factory.mktemp('crash_reference')
  corpus_emb, query_emb, ranked = root / 'corpus_emb', root / 'query_emb', root / 'ranked'
  _in_process(encode_job, _encode_args(data, corpus_emb))
  _in_process(encode_job, ['--input', data['queries'], '--id-column', 'query_id',
                           '--model', data['bi_encoder'], '--output', str(query_emb)])
  _in_process(rerank_job, _rerank_args(data, query_emb, corpus_emb, ranked))
  return {'corpus_emb': corpus_emb, 'query_emb': query_emb, 'ranked': ranked}


# ------------------------------------------------------------------ encode

def test_encode_killed_twice_then_rerun_is_byte_identical(tmp_path, data, reference):
  out = tmp_path / 'emb'
  args = _encode_args(data, out)
  n_shards = len(_final_parts(reference['corpus_emb']))
  assert n_shards == NUM_TEXTS // 2 + 1  # 200 embedding shards + 1 dead-letter shard
  # The folder holds an earlier, complete result (another input, 2 shards).
  shutil.copytree(reference['query_emb'], out)
  old_manifest = (out / 'manifest.json').read_bytes()

  # 1. Killed while shards are being staged: the earlier result is untouched.
  seconds = _run_and_kill('encode', args, out, _staging_started, tmp_path / 'kill1.log')
  state = _published_state(out)
  staged = sum(len(files) for _, _, files in os.walk(out / '.staging'))
  print(f'\n[crash] encode kill 1 (staging) after {seconds:.1f} s: {state}, '
        f'{staged} staged files left')
  assert state == {'manifest': True, 'final_shards': 2}
  assert (out / 'manifest.json').read_bytes() == old_manifest
  assert common.embedding_manifest(str(out), '--corpus-embeddings')['row_count'] == NUM_QUERIES

  # 2. The same command, over the leftovers, killed once the commit has begun
  #    (the old manifest is removed first: from then on the folder is no result).
  seconds = _run_and_kill('encode', args, out, _commit_started(out), tmp_path / 'kill2.log')
  state = _published_state(out)
  print(f'[crash] encode kill 2 (commit) after {seconds:.1f} s: {state} '
        f'(the new result has {n_shards} shards)')
  if not state['manifest']:
    # Not a result: the jobs that take embeddings refuse the folder.
    with pytest.raises(UserInputError, match='no manifest.json'):
      common.embedding_manifest(str(out), '--corpus-embeddings')

  # 3. The same command to the end: byte-identical to the uninterrupted run,
  #    no shard of the earlier result and no staging left.
  _run_to_end('encode', args, tmp_path / 'rerun.log')
  assert not (out / '.staging').exists()
  _assert_identical(out, reference['corpus_emb'])


def test_encode_previous_same_as_output_recovers_from_a_cut_off_commit(
    tmp_path, data, reference):
  # What a kill during the commit leaves (shards, no manifest), re-run with
  # --previous OUT --output OUT, as run_local.sh and rerank --model do: a
  # warning, everything re-encoded, the same bytes as an uninterrupted run.
  out = tmp_path / 'emb'
  shutil.copytree(reference['corpus_emb'], out)
  (out / 'manifest.json').unlink()
  err = io.StringIO()
  with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
    report = encode_job.run([str(a) for a in _encode_args(data, out) + ['--previous', out]])
  assert 'has no manifest.json: an earlier run did not finish; re-encoding every row' in (
      err.getvalue())
  assert report['embeddings_reused'] == 0
  _assert_identical(out, reference['corpus_emb'])


def test_encode_rerun_into_the_same_output_changes_nothing(tmp_path, data, reference):
  out = tmp_path / 'emb'
  shutil.copytree(reference['corpus_emb'], out)
  _in_process(encode_job, _encode_args(data, out))
  _assert_identical(out, reference['corpus_emb'])


# ------------------------------------------------------------------ rerank

def test_rerank_killed_then_rerun_is_byte_identical(tmp_path, data, reference):
  out = tmp_path / 'ranked'
  args = _rerank_args(data, reference['query_emb'], reference['corpus_emb'], out)
  seconds = _run_and_kill('rerank', args, out, _staging_started, tmp_path / 'kill.log')
  state = _published_state(out)
  print(f'\n[crash] rerank kill (staging) after {seconds:.1f} s: {state}')
  assert state == {'manifest': False, 'final_shards': 0}
  _run_to_end('rerank', args, tmp_path / 'rerun.log')
  assert not (out / '.staging').exists()
  _assert_identical(out, reference['ranked'])
  manifest = json.loads((out / 'manifest.json').read_text())
  assert manifest['outputs']['ranked']['rows'] == NUM_QUERIES * 5


def test_rerank_rerun_into_the_same_output_changes_nothing(tmp_path, data, reference):
  out = tmp_path / 'ranked'
  shutil.copytree(reference['ranked'], out)
  _in_process(rerank_job, _rerank_args(
      data, reference['query_emb'], reference['corpus_emb'], out))
  _assert_identical(out, reference['ranked'])
