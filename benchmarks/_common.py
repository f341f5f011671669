"""Shared bits of the benchmarks: where Cranfield is, timing a subprocess, peak RSS."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRANFIELD = os.environ.get(
    'CRANFIELD_DIR', os.path.join(REPO, '..', 'shared', 'datasets', 'cranfield'))


def require_cranfield() -> str:
  if not os.path.exists(os.path.join(CRANFIELD, 'corpus.parquet')):
    sys.exit(f'Cranfield not found at {CRANFIELD} (set CRANFIELD_DIR)')
  return CRANFIELD


def timed_python(code_or_args: list[str], env: dict | None = None,
                 python: str | None = None) -> dict:
  """Runs ``python ARGS`` as its own process: wall seconds, peak RSS, stdout.

  ``peak_rss_mb`` is this child's own peak resident set: ``VmHWM`` of its
  address space, written at exit by ``benchmarks/_child.py`` (which runs the
  arguments as ``python`` would), or the largest ru_maxrss of processes it
  waited for if higher; never a sum, and not floored by this (parent)
  process's size the way ``ru_maxrss`` of a child is on Linux.
  ``peak_rss_mb_wait4`` is that ru_maxrss (``os.wait4``), kept for reference;
  ``peak_rss_mb_upper_bound`` is the older whole-run RUSAGE_CHILDREN figure.
  ``python`` picks the interpreter (default: this one), e.g. another venv's.
  """
  import threading
  before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  import tempfile
  handle, rss_file = tempfile.mkstemp(prefix='bench_rss_')
  os.close(handle)
  started = time.perf_counter()
  proc = subprocess.Popen(
      [python or sys.executable, os.path.join(REPO, 'benchmarks', '_child.py'), *code_or_args],
      cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True,
      env={**os.environ, 'HF_HUB_OFFLINE': '1', 'PYTHONPATH': REPO,
           'BENCH_RSS_FILE': rss_file, **(env or {})})
  chunks: dict[str, list[str]] = {'out': [], 'err': []}
  readers = [threading.Thread(target=lambda s=stream, k=key: chunks[k].append(s.read()))
             for key, stream in (('out', proc.stdout), ('err', proc.stderr))]
  for reader in readers:
    reader.start()
  _, status, usage = os.wait4(proc.pid, 0)
  wall = time.perf_counter() - started
  for reader in readers:
    reader.join()
  proc.returncode = os.waitstatus_to_exitcode(status)
  stdout, stderr = ''.join(chunks['out']), ''.join(chunks['err'])
  if proc.returncode != 0:
    sys.stderr.write(stdout[-3000:] + stderr[-5000:])
    raise SystemExit(f'benchmark step failed (exit {proc.returncode}): {code_or_args[:3]}')
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  with open(rss_file) as handle:
    reported = [int(x) for x in handle.read().split()] or [usage.ru_maxrss]
  os.unlink(rss_file)
  return {'wall_seconds': wall, 'peak_rss_mb': max(reported) / 1024,
          'peak_rss_mb_wait4': usage.ru_maxrss / 1024,
          'peak_rss_mb_upper_bound': max(peak, before) / 1024,
          'stdout': stdout, 'stderr': stderr}


def last_json(stdout: str) -> dict:
  """The last line of a child's stdout that is a JSON object."""
  for line in reversed(stdout.strip().splitlines()):
    if line.startswith('{'):
      return json.loads(line)
  raise ValueError(f'no JSON line in: {stdout[-500:]!r}')


def pre_export(model_dir: str, kind: str, backend: str, export_cache: str | None,
               python: str | None = None) -> float:
  """Makes the backend's cached export of ``model_dir`` (OpenVINO IR) before any
  timing, in its own process, so that neither side pays for it; seconds taken
  (0 for torch backends, which need none)."""
  if backend.startswith('torch'):
    return 0.0
  code = ('import sys; from transforms.models.backends import BACKENDS, ensure_export; '
          'from transforms.models.model_info import fingerprint_model_dir; '
          'print(ensure_export(sys.argv[1], fingerprint_model_dir(sys.argv[1]), sys.argv[2], '
          'BACKENDS[sys.argv[3]], sys.argv[4] or None))')
  return timed_python(['-c', code, model_dir, kind, backend, export_cache or ''],
                      python=python)['wall_seconds']


def backend_args(backend: str, export_cache: str | None) -> list[str]:
  """The job options that select the same backend and export folder."""
  return ['--backend', backend] + (['--export-cache', export_cache] if export_cache else [])


def write_result(name: str, result: dict, smoke: bool = False) -> str:
  """benchmarks/results/NAME.json; smoke runs (tiny limits) go to
  benchmarks/results/smoke/ so they never replace real figures."""
  path = os.path.join(REPO, 'benchmarks', 'results', *(['smoke'] if smoke else []), f'{name}.json')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as handle:
    json.dump(result, handle, indent=2, sort_keys=True)
  return path


def run_exact_top_k(query_dir: str, corpus_dir: str, k: int, output: str,
                    beam_args: list[str] | None = None) -> tuple[float, float]:
  """The product's blocked exact top-k (``ExactTopK``) over two embedding folders,
  written as candidate Parquet (query_id, doc_id, retrieval_rank, retrieval_score).
  Returns the pipeline's wall seconds and the seconds spent scoring blocks."""
  import apache_beam as beam
  import pyarrow as pa
  from apache_beam.options.pipeline_options import PipelineOptions

  sys.path.insert(0, REPO)
  from transforms.io.parquet_sink import CommitOutputs, ShardedOutput, WriteParquetShards
  from transforms.retrieval.dense import ExactTopK, ReadEmbeddingTables
  started = time.perf_counter()
  schema = pa.schema([('query_id', pa.string()), ('doc_id', pa.string()),
                      ('retrieval_rank', pa.int32()), ('retrieval_score', pa.float32())])
  sink = ShardedOutput(
      name='candidates', root=output, subdirectory='', schema=schema,
      key_fn=lambda r: r['query_id'], sort_key_fn=lambda r: (r['query_id'], r['retrieval_rank']))
  pipeline = beam.Pipeline(options=PipelineOptions(beam_args or []))
  candidates = {
      'queries': pipeline | 'ReadQueries' >> ReadEmbeddingTables(query_dir),
      'corpus': pipeline | 'ReadCorpus' >> ReadEmbeddingTables(corpus_dir),
  } | 'ExactTopK' >> ExactTopK(k)
  written = {'candidates': candidates | 'Write' >> WriteParquetShards(sink)}
  _ = pipeline | 'Commit' >> CommitOutputs(
      [sink], written, os.path.join(output, 'manifest.json'), {})
  result = pipeline.run()
  result.wait_until_finish()
  from apache_beam.metrics.metric import MetricsFilter
  micros = sum(c.committed or 0 for c in result.metrics().query(
      MetricsFilter().with_name('retrieve/score_microseconds'))['counters'])
  return time.perf_counter() - started, micros / 1e6


def make_corpus(size: int, directory: str, seed: int = 0) -> str:
  """A corpus Parquet (doc_id, title, text) of ``size`` rows, cached in ``directory``.

  Up to 1,400 rows: the first ``size`` Cranfield abstracts. Beyond that: all
  1,400 (so the Cranfield qrels still apply) plus synthetic abstracts: each
  takes the sentence count of a real abstract (cycling through them in a
  seeded random order, so the length distribution follows the real one) and
  fills it with sentences drawn at random (fixed seed) from all abstracts.
  Synthetic ids are ``syn-NNNNNNN``; titles are the first sentence.
  """
  import re

  import numpy as np
  import pyarrow as pa
  import pyarrow.parquet as pq
  path = os.path.join(directory, f'corpus-{size}.parquet')
  if os.path.exists(path):
    return path
  os.makedirs(directory, exist_ok=True)
  real = pq.read_table(os.path.join(require_cranfield(), 'corpus.parquet'),
                       columns=['doc_id', 'title', 'text'])
  if size <= real.num_rows:
    pq.write_table(real.slice(0, size), path)
    return path
  rng = np.random.default_rng(seed)
  split = [[s for s in re.split(r'(?<=\.)\s+', t.strip()) if s]
           for t in real.column('text').to_pylist() if t and t.strip()]
  pool = [s for doc in split for s in doc]
  counts = [len(doc) for doc in split]
  order = rng.permutation(len(counts))
  ids, titles, texts = [], [], []
  for i in range(size - real.num_rows):
    n = counts[order[i % len(order)]]
    sentences = [pool[j] for j in rng.integers(0, len(pool), n)]
    ids.append(f'syn-{i:07d}')
    titles.append(sentences[0][:200])
    texts.append(' '.join(sentences))
  synthetic = pa.table({'doc_id': ids, 'title': titles, 'text': texts},
                       schema=real.schema)
  pq.write_table(pa.concat_tables([real, synthetic]), path)
  return path


def text_without_title():
  """A polars expression: ``text`` without its leading ``title`` (stripped), or
  ``text`` unchanged when it does not begin with it."""
  import polars as pl
  text, title = pl.col('text'), pl.col('title')
  return pl.when(text.str.starts_with(title)).then(
      text.str.slice(title.str.len_chars()).str.strip_chars()).otherwise(text)
