"""Exact dense top-100 at scale: 100,000 docs x 384-d, 1,000 queries, no model.

Writes synthetic normalized embedding shards in the product's contract, runs the
product's blocked top-k (``ExactTopK``) as a Beam pipeline in a child process
(DirectRunner in_memory; its own peak RSS, VmHWM, is the run's), then checks the
result against brute force (numpy over all embeddings, same ties rule) and times
one numpy matmul of the same size in this process.

    .venv/bin/python benchmarks/retrieve_scale.py [--docs 100000] [--queries 1000] [-- beam args]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_shards(directory: str, ids: list[str], matrix: np.ndarray, rows_per_shard: int):
  import pyarrow.parquet as pq

  from transforms.graphs.encode import embedding_schema, embeddings_to_table
  os.makedirs(directory, exist_ok=True)
  schema = embedding_schema(matrix.shape[1], 'float32', {'kind': 'embeddings'})
  num_shards = -(-len(ids) // rows_per_shard)
  for shard in range(num_shards):
    lo, hi = shard * rows_per_shard, min(len(ids), (shard + 1) * rows_per_shard)
    rows = [{'id': ids[i], 'embedding': matrix[i], 'text_sha256': ''} for i in range(lo, hi)]
    pq.write_table(embeddings_to_table(rows, schema),
                   os.path.join(directory, f'part-{shard:05d}-of-{num_shards:05d}.parquet'))


def child(args, beam_args) -> None:
  """The pipeline: shards -> ExactTopK -> candidate Parquet."""
  from benchmarks._common import run_exact_top_k
  seconds, score_seconds = run_exact_top_k(
      os.path.join(args.workdir, 'queries'), os.path.join(args.workdir, 'corpus'),
      args.k, args.output, beam_args)
  with open('/proc/self/status') as handle:  # this process's own peak (Linux)
    peak_kb = next(int(line.split()[1]) for line in handle if line.startswith('VmHWM:'))
  print(json.dumps({'wall_seconds': seconds, 'score_seconds': score_seconds,
                    'peak_rss_mb': peak_kb / 1024}))


def brute_force(queries: np.ndarray, docs: np.ndarray, doc_ids: np.ndarray, k: int):
  """Float64 scores rounded to float32; order by score desc, doc_id asc."""
  ids_out, scores_out = [], []
  for lo in range(0, len(queries), 100):
    scores = (queries[lo:lo + 100].astype(np.float64)
              @ docs.astype(np.float64).T).astype(np.float32)
    for row in scores:
      kth = np.partition(row, len(row) - k)[len(row) - k]
      candidates = np.flatnonzero(row >= kth)
      order = np.lexsort((doc_ids[candidates], -row[candidates]))[:k]
      ids_out.append(doc_ids[candidates][order])
      scores_out.append(row[candidates][order])
  return ids_out, scores_out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--docs', type=int, default=100_000)
  parser.add_argument('--queries', type=int, default=1_000)
  parser.add_argument('--dim', type=int, default=384)
  parser.add_argument('--k', type=int, default=100)
  parser.add_argument(
      '--warm-memory-gb', type=float, default=4.0,
      help='Touch this much memory in a throw-away process first (default: %(default)s; 0 = '
      "don't). On this kind of VM the host backs guest memory on its first touch (measured "
      '~2.3 ms/MB: a fresh process\'s 250 MB score buffer took 0.6 s to fault in, 0.02 s '
      'after a warm-up); a machine in service has long touched its memory.')
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--workdir', default=None)
  parser.add_argument('--output', default=None)
  args, beam_args = parser.parse_known_args()
  if args.child:
    child(args, beam_args)
    return

  import subprocess

  import polars as pl
  workdir = args.workdir or tempfile.mkdtemp(prefix='retrieve_scale_')
  rng = np.random.default_rng(0)
  def normalized(n):
    m = rng.standard_normal((n, args.dim)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)
  docs, queries = normalized(args.docs), normalized(args.queries)
  doc_ids = np.array([f'd{i:07d}' for i in rng.permutation(args.docs)])
  query_ids = np.array([f'q{i:05d}' for i in range(args.queries)])
  docs[1] = docs[0]  # an exact tie, broken by doc_id
  write_shards(os.path.join(workdir, 'corpus'), list(doc_ids), docs, 25_000)
  write_shards(os.path.join(workdir, 'queries'), list(query_ids), queries, 10_000)
  output = os.path.join(workdir, 'candidates')

  warm_seconds = 0.0
  if args.warm_memory_gb > 0:
    started = time.perf_counter()
    subprocess.run([sys.executable, '-c', (
        'import numpy as np\n'
        'held = [np.ones(2**28, np.float32) '
        f'for _ in range({max(1, round(args.warm_memory_gb))})]')],
        check=True)
    warm_seconds = time.perf_counter() - started
  started = time.perf_counter()
  proc = subprocess.run(
      [sys.executable, __file__, '--child', '--workdir', workdir, '--output', output,
       '--k', str(args.k), *beam_args], capture_output=True, text=True)
  wall = time.perf_counter() - started
  if proc.returncode:
    sys.exit(proc.stderr[-4000:])
  child_report = json.loads(proc.stdout.strip().splitlines()[-1])
  # The child's own VmHWM: RUSAGE_CHILDREN would also count the warm-up process.
  peak_rss_mb = child_report['peak_rss_mb']
  pipeline_seconds = child_report['wall_seconds']
  score_seconds = child_report['score_seconds']

  got = pl.read_parquet(os.path.join(output, 'part-*.parquet')).sort('query_id', 'retrieval_rank')
  want_ids, want_scores = brute_force(queries, docs, doc_ids, args.k)
  got_ids = got.group_by('query_id', maintain_order=True).agg('doc_id', 'retrieval_score')
  mismatches = 0
  max_score_diff = 0.0
  for query_id, ids, scores in got_ids.iter_rows():
    index = int(query_id[1:])
    if list(ids) != list(want_ids[index]):
      mismatches += 1
    max_score_diff = max(
        max_score_diff, float(np.abs(np.array(scores, np.float32) - want_scores[index]).max()))
  matmul_times = []
  for _ in range(3):
    t = time.perf_counter()
    _ = queries @ docs.T
    matmul_times.append(time.perf_counter() - t)
  macs = args.queries * args.docs * args.dim
  # The first call allocates and first touches its output, as the pipeline's
  # first block does its score buffer; the later calls reuse freed memory.
  matmul = min(matmul_times)
  matmul_first = matmul_times[0]
  result = {
      'docs': args.docs, 'queries': args.queries, 'dim': args.dim, 'k': args.k,
      'beam_args': beam_args,
      'warm_memory_gb': args.warm_memory_gb,
      'warm_memory_seconds': warm_seconds,
      'queries_checked': got_ids.height,
      'queries_not_equal_to_brute_force': mismatches,
      'max_abs_score_difference': max_score_diff,
      'child_process_wall_seconds': wall,
      'pipeline_run_seconds': pipeline_seconds,
      'peak_rss_mb': peak_rss_mb,
      'pipeline_macs_per_second_whole_run': macs / wall,
      'pipeline_macs_per_second_pipeline_run': macs / pipeline_seconds,
      'numpy_matmul_seconds': matmul,
      'numpy_matmul_macs_per_second': macs / matmul,
      'ratio_pipeline_run_over_matmul': (macs / pipeline_seconds) / (macs / matmul),
      'block_scoring_seconds': score_seconds,
      'block_scoring_macs_per_second': macs / score_seconds,
      'ratio_block_scoring_over_matmul': matmul / score_seconds,
      'numpy_matmul_first_call_seconds': matmul_first,
      'ratio_block_scoring_over_first_matmul_call': matmul_first / score_seconds,
  }
  from benchmarks._common import write_result
  path = write_result('retrieve_scale', result)
  print(json.dumps(result, indent=2))
  print(f'-> {path}')


if __name__ == '__main__':
  main()
