"""Cross-encoder stage: the rerank pipeline vs raw ``CrossEncoder.predict``, one run.

The same (query, passage) pairs — Cranfield queries x supplied candidates (each
query's first --per-query judged docs, then other docs by id, to make --pairs) —
scored by a 1-label CrossEncoder on the packaged all-MiniLM-L6-v2 (its head is
untrained; speed is what is measured). Both sides are whole processes: start-up,
model load, Parquet reading, scoring; the pipeline also joins, ranks and writes.
The scores are compared too (max abs difference).

    .venv/bin/python benchmarks/cross_encoder.py [--pairs 1400] [--repeats 1] [-- beam args]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import require_cranfield, timed_python, write_result  # noqa: E402

RAW = r'''
import json, sys, time
import numpy as np, pyarrow.parquet as pq, torch
from sentence_transformers import CrossEncoder
queries = dict(zip(*pq.read_table(sys.argv[1], columns=['query_id', 'text']).to_pydict().values()))
corpus = dict(zip(*pq.read_table(sys.argv[2], columns=['doc_id', 'text']).to_pydict().values()))
cands = pq.read_table(sys.argv[3]).to_pylist()
model = CrossEncoder(sys.argv[4], device='cpu', max_length=int(sys.argv[5]))
pairs = [(queries[c['query_id']], corpus[c['doc_id']]) for c in cands]
t = time.perf_counter()
scores = model.predict(pairs, batch_size=32, activation_fn=torch.nn.Identity(), show_progress_bar=False)
np.save(sys.argv[6], np.asarray(scores, dtype=np.float32))
print(json.dumps({'pairs': len(pairs), 'predict_seconds': time.perf_counter() - t}))
'''


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--pairs', type=int, default=1400)
  parser.add_argument('--max-length', type=int, default=256)
  parser.add_argument('--repeats', type=int, default=1)
  args, beam_args = parser.parse_known_args()
  os.environ.setdefault('HF_HUB_OFFLINE', '1')
  cranfield = require_cranfield()
  import numpy as np
  import polars as pl
  import torch
  from sentence_transformers import CrossEncoder

  from transforms.model_info import packaged_minilm_path
  work = tempfile.mkdtemp(prefix='bench_ce_')
  ce_dir = os.path.join(work, 'ce')
  torch.manual_seed(0)
  CrossEncoder(packaged_minilm_path(), num_labels=1).save(ce_dir)
  corpus = pl.read_parquet(os.path.join(cranfield, 'corpus.parquet')).filter(
      pl.col('text').str.strip_chars() != '')
  queries = pl.read_parquet(os.path.join(cranfield, 'queries.parquet'))
  qrels = pl.read_parquet(os.path.join(cranfield, 'qrels.parquet'))
  judged = qrels.join(corpus.select('doc_id'), on='doc_id').sort('query_id', 'doc_id')
  per_query = max(1, args.pairs // queries.height + 1)
  rows = []
  doc_ids = corpus['doc_id'].to_list()
  for i, query_id in enumerate(queries['query_id'].to_list()):
    docs = judged.filter(pl.col('query_id') == query_id)['doc_id'].to_list()[:per_query]
    j = i
    while len(docs) < per_query:
      if doc_ids[j % len(doc_ids)] not in docs:
        docs.append(doc_ids[j % len(doc_ids)])
      j += 7
    rows += [{'query_id': query_id, 'doc_id': d} for d in docs]
  candidates = pl.DataFrame(rows[:args.pairs])
  candidates_path = os.path.join(work, 'candidates.parquet')
  candidates.write_parquet(candidates_path)
  q_path, c_path = os.path.join(cranfield, 'queries.parquet'), os.path.join(cranfield, 'corpus.parquet')
  raw_runs, pipe_runs = [], []
  for _ in range(args.repeats):
    raw = timed_python(['-c', RAW, q_path, c_path, candidates_path, ce_dir,
                        str(args.max_length), os.path.join(work, 'raw.npy')])
    raw_runs.append({'wall_seconds': raw['wall_seconds'],
                     **json.loads(raw['stdout'].strip().splitlines()[-1])})
    out = os.path.join(work, 'ranked')
    pipe = timed_python(['-m', 'pipelines.rerank', '--queries', q_path, '--corpus', c_path,
                         '--candidates', candidates_path, '--cross-encoder', ce_dir,
                         '--max-length', str(args.max_length), '--top-n', '1000',
                         '--output', out, *beam_args])
    with open(os.path.join(out, 'report.json')) as handle:
      report = json.load(handle)
    pipe_runs.append({'wall_seconds': pipe['wall_seconds'], 'pairs': report['pairs_scored'],
                      'padding_fraction': report['padding_fraction']})
  got = pl.read_parquet(os.path.join(work, 'ranked', 'candidates', 'part-*.parquet'))
  raw_scores = candidates.with_columns(raw=pl.Series(np.load(os.path.join(work, 'raw.npy'))))
  joined = raw_scores.join(got, on=['query_id', 'doc_id'])
  n = raw_runs[0]['pairs']
  raw_rate = n / statistics.median(r['wall_seconds'] for r in raw_runs)
  pipe_rate = pipe_runs[0]['pairs'] / statistics.median(r['wall_seconds'] for r in pipe_runs)
  result = {
      'pairs': n, 'max_length': args.max_length, 'beam_args': beam_args,
      'raw_pairs_per_second': raw_rate,
      'pipeline_pairs_per_second': pipe_rate,
      'ratio_pipeline_over_raw': pipe_rate / raw_rate,
      'raw_predict_only_pairs_per_second': n / statistics.median(
          r['predict_seconds'] for r in raw_runs),
      'pipeline_padding_fraction': pipe_runs[0]['padding_fraction'],
      'pairs_compared': joined.height,
      'max_abs_score_difference': float((joined['raw'] - joined['score']).abs().max()),
      'raw_runs': raw_runs, 'pipeline_runs': pipe_runs,
  }
  print(json.dumps(result, indent=2))
  print('->', write_result('cross_encoder', result))


if __name__ == '__main__':
  main()
