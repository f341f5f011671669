"""encode -> rerank -> mine on Beam's portable runner, workers in other processes.

A local job service (``apache_beam.runners.portability.local_job_service_main``)
and an external worker pool (``apache_beam.runners.worker.worker_pool_main``)
run as subprocesses on localhost; the jobs are submitted with

    --runner=PortableRunner --job_endpoint=localhost:JOB_PORT
    --environment_type=EXTERNAL --environment_config=localhost:POOL_PORT

which is how a pipeline reaches Flink or Spark job servers too: the pipeline is
sent as a Runner API proto, the job service runs it, and every DoFn (model
loading, RunInference, Parquet writes, the commit) runs in SDK worker processes
that the pool starts (``python -c 'SdkHarness(...).run()'``), never in the
process that submitted it. The job service gets no access to the project's
code (an import hook refuses ``pipelines``/``transforms``), as a Java job server would not;
the pool's workers get the repository on PYTHONPATH, as a container built with
``--setup_file`` would.

Outputs must equal the DirectRunner's: same rows, embeddings and scores within
1e-5. Runner, worker count and wall times are printed (``pytest -s``).

Worker count: the local job service runs each job with Beam's FnApiRunner,
which starts ONE SDK worker per environment; ``--direct_num_workers`` is read
only by ``FnApiRunner.run_pipeline`` (the DirectRunner path), not by
``run_via_runner_api`` (the job-service path), so more workers per job are not
possible with this job service. Splitting one stage over several worker
processes is covered by the DirectRunner's ``multi_processing`` mode
(tests/jobs/test_encode_job.py).
"""
from __future__ import annotations

import contextlib
import io
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import encode as encode_job
from pipelines import mine as mine_job
from pipelines import rerank as rerank_job
from tests.fixtures import REPO_ROOT

ATOL = 1e-5
START_TIMEOUT_S = 90
# The job service, with the project's packages made unimportable (the
# virtualenv has the project installed in editable mode, so a plain PYTHONPATH
# change would not keep them out): if the runner side needed the project's
# code, as a Java job server could not, the jobs would fail.
NO_PROJECT_CODE = '''
import importlib.abc, runpy, sys

class NoProjectCode(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('pipelines', 'transforms', 'tests'):
      raise ImportError('the job service must not import ' + name)
    return None

sys.meta_path.insert(0, NoProjectCode())
'''
JOB_SERVICE = NO_PROJECT_CODE + '''
runpy.run_module('apache_beam.runners.portability.local_job_service_main',
                 run_name='__main__', alter_sys=True)
'''


def _free_env(extra_path: str | None) -> dict[str, str]:
  env = dict(os.environ)
  env.pop('PYTHONPATH', None)
  if extra_path:
    env['PYTHONPATH'] = extra_path
  # The pool starts workers as plain `python`: this virtualenv's must come first.
  env['PATH'] = os.pathsep.join([os.path.dirname(sys.executable), env.get('PATH', '')])
  env.update(HF_HUB_OFFLINE='1', TOKENIZERS_PARALLELISM='false',
             TRANSFORMERS_VERBOSITY='error', HF_HUB_DISABLE_PROGRESS_BARS='1')
  return env


def _wait_for(predicate, what: str, procs, logs) -> None:
  deadline = time.monotonic() + START_TIMEOUT_S
  while not predicate():
    for proc, log in zip(procs, logs):
      if proc.poll() is not None:
        pytest.fail(f'{what}: a service exited ({proc.returncode}):\n'
                    + log.read_text(errors='replace')[-3000:])
    if time.monotonic() > deadline:
      pytest.fail(f'{what}: not ready in {START_TIMEOUT_S} s')
    time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> None:
  """Stops a service and everything it started (its own process group)."""
  if proc.poll() is None:
    with contextlib.suppress(ProcessLookupError):
      os.killpg(proc.pid, signal.SIGTERM)
    try:
      proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
      with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
      proc.wait(timeout=15)
  # Workers the pool started live in the pool's group; make sure none is left.
  with contextlib.suppress(ProcessLookupError):
    os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope='module')
def portable_services(tmp_path_factory):
  """A job service and a worker pool on free localhost ports."""
  root = tmp_path_factory.mktemp('portable_services')
  port_file = root / 'job_service.port'
  job_log, pool_log = root / 'job_service.log', root / 'worker_pool.log'
  procs = []
  try:
    with open(job_log, 'wb') as handle:
      procs.append(subprocess.Popen(
          [sys.executable, '-c', JOB_SERVICE, '--port', '0', '--port_file', str(port_file)],
          cwd=root, env=_free_env(None), stdout=handle, stderr=subprocess.STDOUT,
          start_new_session=True))
    with open(pool_log, 'wb') as handle:
      procs.append(subprocess.Popen(
          [sys.executable, '-m', 'apache_beam.runners.worker.worker_pool_main',
           '--service_port', '0'],
          cwd=REPO_ROOT, env=_free_env(str(REPO_ROOT)), stdout=handle,
          stderr=subprocess.STDOUT, start_new_session=True))
    logs = [job_log, pool_log]
    _wait_for(port_file.exists, 'job service', procs, logs)
    pool_address = re.compile(r'Started worker pool servicer at port: (\S+:\d+)')
    _wait_for(lambda: pool_address.search(pool_log.read_text(errors='replace')),
              'worker pool', procs, logs)
    job_port = int(port_file.read_text())
    pool = pool_address.search(pool_log.read_text()).group(1)
    yield {
        'args': ['--runner=PortableRunner', f'--job_endpoint=localhost:{job_port}',
                 '--environment_type=EXTERNAL', f'--environment_config={pool}'],
        'pool_log': pool_log, 'job_log': job_log,
    }
  finally:
    for proc in reversed(procs):
      _stop(proc)


@pytest.fixture(scope='module')
def collection(tmp_path_factory):
  from tests.fixtures import CORPUS, QRELS, QUERIES, write_parquet
  root = tmp_path_factory.mktemp('portable_data')
  # Supplied candidates beside the dense ones (the union is scored), one with
  # an unknown doc id (a dead letter).
  supplied = [('q1', 'd05', 3.0), ('q2', 'd04', 2.0), ('q3', 'd10', 1.5),
              ('q4', 'd03', 1.0), ('q4', 'nope', 0.5)]
  return {
      'corpus': write_parquet(root / 'corpus.parquet', {
          'doc_id': list(CORPUS), 'text': list(CORPUS.values())}),
      'queries': write_parquet(root / 'queries.parquet', {
          'query_id': list(QUERIES), 'text': list(QUERIES.values())}),
      'qrels': write_parquet(root / 'qrels.parquet', {
          'query_id': [r[0] for r in QRELS], 'doc_id': [r[1] for r in QRELS],
          'relevance': [r[2] for r in QRELS]},
          pa.schema([('query_id', pa.string()), ('doc_id', pa.string()),
                     ('relevance', pa.int32())])),
      'candidates': write_parquet(root / 'candidates.parquet', {
          'query_id': [c[0] for c in supplied], 'doc_id': [c[1] for c in supplied],
          'score': [c[2] for c in supplied]},
          pa.schema([('query_id', pa.string()), ('doc_id', pa.string()),
                     ('score', pa.float64())])),
  }


def _run_chain(out: pathlib.Path, collection, bi_encoder, cross_encoder,
               beam_args) -> dict[str, float]:
  """encode (queries, corpus) -> rerank -> mine into ``out``; seconds per job."""
  jobs = [
      ('encode queries', encode_job, [
          '--input', collection['queries'], '--id-column', 'query_id',
          '--model', bi_encoder, '--output', out / 'query_emb']),
      ('encode corpus', encode_job, [
          '--input', collection['corpus'], '--model', bi_encoder,
          '--rows-per-shard', '4', '--output', out / 'corpus_emb']),
      ('rerank', rerank_job, [
          '--queries', collection['queries'], '--corpus', collection['corpus'],
          '--query-embeddings', out / 'query_emb', '--corpus-embeddings', out / 'corpus_emb',
          '--candidates', collection['candidates'], '--cross-encoder', cross_encoder,
          '--top-k', '6', '--top-n', '4', '--output', out / 'ranked']),
      ('mine', mine_job, [
          '--ranked', out / 'ranked', '--queries', collection['queries'],
          '--corpus', collection['corpus'], '--qrels', collection['qrels'],
          '--format', 'labeled-pair,triplet,n-tuple,distill', '--num-negatives', '2',
          '--dev-fraction', '0.3', '--output', out / 'pairs']),
  ]
  seconds = {}
  for name, job, argv in jobs:
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
      job.run([str(a) for a in argv] + list(beam_args))
    seconds[name] = time.perf_counter() - started
  return seconds


@pytest.fixture(scope='module')
def runs(tmp_path_factory, portable_services, collection, tiny_bi_encoder_dir,
         tiny_cross_encoder_dir):
  root = tmp_path_factory.mktemp('portable_runs')
  models = (tiny_bi_encoder_dir, tiny_cross_encoder_dir)
  direct = _run_chain(root / 'direct', collection, *models, [])
  pool_log = portable_services['pool_log']
  workers_before = pool_log.read_text(errors='replace').count('Starting worker with command')
  portable = _run_chain(
      root / 'portable', collection, *models, portable_services['args'])
  workers = pool_log.read_text(errors='replace').count(
      'Starting worker with command') - workers_before
  print('\n[portable] runner PortableRunner -> local job service (FnApiRunner), '
        'environment EXTERNAL (worker pool at '
        f"{portable_services['args'][-1].split('=', 1)[1]})")
  print(f'[portable] SDK worker processes started by the pool: {workers} '
        f'for {len(portable)} jobs ({workers / len(portable):.0f} per job)')
  print(f"[portable] {'job':<16}{'DirectRunner s':>16}{'PortableRunner s':>18}")
  for name in direct:
    print(f'[portable] {name:<16}{direct[name]:>16.1f}{portable[name]:>18.1f}')
  print(f"[portable] {'total':<16}{sum(direct.values()):>16.1f}"
        f'{sum(portable.values()):>18.1f}')
  files = [p.relative_to(root / 'direct') for p in (root / 'direct').rglob('*')
           if p.is_file() and p.name != 'report.json']
  identical = sum((root / 'direct' / f).read_bytes() == (root / 'portable' / f).read_bytes()
                  for f in files if (root / 'portable' / f).is_file())
  print(f'[portable] byte-identical to the DirectRunner: {identical} of {len(files)} '
        'files (every file but report.json)')
  return {'direct': root / 'direct', 'portable': root / 'portable',
          'workers': workers, 'jobs': len(portable)}


def _folders(root: pathlib.Path) -> list[str]:
  """Every folder under ``root`` that holds part files, relative to ``root``."""
  return sorted({str(p.parent.relative_to(root)) for p in root.rglob('part-*.parquet')
                 if '.staging' not in p.parts})


def _rows(folder: pathlib.Path) -> list[dict]:
  rows = []
  for path in sorted(folder.glob('part-*.parquet')):
    rows.extend(pq.read_table(str(path)).to_pylist())
  return rows


def _same(got, want, where: str) -> None:
  if isinstance(want, float):
    assert isinstance(got, float) and abs(got - want) <= ATOL, (where, got, want)
  elif isinstance(want, list):
    assert isinstance(got, list) and len(got) == len(want), where
    if want and isinstance(want[0], float):
      np.testing.assert_allclose(
          np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=0, atol=ATOL,
          err_msg=where)
    else:
      for i, (g, w) in enumerate(zip(got, want)):
        _same(g, w, f'{where}[{i}]')
  elif isinstance(want, dict):
    assert sorted(got) == sorted(want), where
    for key in want:
      _same(got[key], want[key], f'{where}.{key}')
  else:
    assert got == want, (where, got, want)


def test_workers_ran_in_separate_processes(runs, portable_services):
  # Each job asked the external pool for its SDK worker: the DoFns ran there.
  assert runs['workers'] >= runs['jobs']
  job_log = portable_services['job_log'].read_text(errors='replace')
  assert job_log.count('Completed job') == runs['jobs']
  assert 'must not import' not in job_log


def test_the_job_service_hook_keeps_project_code_out():
  result = subprocess.run(
      [sys.executable, '-c', NO_PROJECT_CODE + 'import transforms.io.parquet_sink'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
  assert result.returncode != 0
  assert 'the job service must not import transforms' in result.stderr


def test_same_output_folders(runs):
  direct, portable = _folders(runs['direct']), _folders(runs['portable'])
  assert direct == portable
  assert {'query_emb', 'corpus_emb', 'corpus_emb/dead_letter', 'ranked',
          'ranked/candidates', 'ranked/dead_letter', 'pairs/triplet/train'} <= set(direct)


@pytest.mark.parametrize('job', ['query_emb', 'corpus_emb', 'ranked', 'pairs'])
def test_rows_equal_the_direct_runner(runs, job):
  compared = 0
  for folder in _folders(runs['direct'] / job):
    want = _rows(runs['direct'] / job / folder)
    got = _rows(runs['portable'] / job / folder)
    assert len(got) == len(want), folder
    _same(got, want, f'{job}/{folder}')
    compared += len(want)
  assert compared > 0


def test_manifests_equal_the_direct_runner(runs):
  import json
  for job in ('query_emb', 'corpus_emb', 'ranked', 'pairs'):
    want = json.loads((runs['direct'] / job / 'manifest.json').read_text())
    got = json.loads((runs['portable'] / job / 'manifest.json').read_text())
    _same(got, want, f'{job}/manifest.json')


def test_counters_reach_the_report(runs):
  """Metrics come back through the job service (portable metrics)."""
  import json
  for job, key in (('corpus_emb', 'texts_encoded'), ('ranked', 'pairs_scored')):
    want = json.loads((runs['direct'] / job / 'report.json').read_text())
    got = json.loads((runs['portable'] / job / 'report.json').read_text())
    assert got[key] == want[key] > 0, job
