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


def timed_python(code_or_args: list[str], env: dict | None = None) -> dict:
  """Runs ``python ARGS`` as its own process: wall seconds, peak RSS, stdout."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  started = time.perf_counter()
  proc = subprocess.run(
      [sys.executable, *code_or_args], cwd=REPO, capture_output=True, text=True,
      env={**os.environ, 'HF_HUB_OFFLINE': '1', **(env or {})})
  wall = time.perf_counter() - started
  if proc.returncode != 0:
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
    raise SystemExit(f'benchmark step failed: {code_or_args[:3]}')
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  return {'wall_seconds': wall, 'peak_rss_mb_upper_bound': max(peak, before) / 1024,
          'stdout': proc.stdout, 'stderr': proc.stderr}


def write_result(name: str, result: dict) -> str:
  path = os.path.join(REPO, 'benchmarks', 'results', f'{name}.json')
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
  from transforms.parquet_sink import CommitOutputs, ShardedOutput, WriteParquetShards
  from transforms.retrieval import ExactTopK, ReadEmbeddingTables
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
