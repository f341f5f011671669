"""Cross-encoder stage: the rerank pipeline vs raw ``CrossEncoder.predict``, one run.

The same (query, passage) pairs — Cranfield queries x supplied candidates (each
query's first --per-query judged docs, then other docs by id, to make --pairs) —
scored by a 1-label CrossEncoder on the packaged all-MiniLM-L6-v2 (its head is
untrained; speed is what is measured). Both sides are whole processes: start-up,
model load, Parquet reading, scoring; the pipeline also joins, ranks and writes.
The scores are compared too (max abs difference).

Both sides run the same ``--backend``: the raw side loads the model with the
product's ``transforms.backends.load_model`` (same export, same OpenVINO
config) and calls a plain ``model.predict(pairs, batch_size=32)`` inside
``inference_context`` (autocast for torch-bf16). Non-torch exports are made
once before any timing in ``--export-cache``, shared by both sides. The job's
fidelity check is part of its timed run (``--fidelity-sample 0`` after ``--``
skips it).

    .venv/bin/python benchmarks/cross_encoder.py [--pairs 1400] [--repeats 1]
        [--backend B] [--export-cache DIR] [--corpus PARQUET] [-- beam/job args]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import (  # noqa: E402
  backend_args,
  last_json,
  pre_export,
  require_cranfield,
  timed_python,
  write_result,
)

RAW = r'''
import json, resource, sys, time
import numpy as np, pyarrow.parquet as pq, torch
from transforms.models.backends import BACKENDS, inference_context, load_model
queries = dict(zip(*pq.read_table(sys.argv[1], columns=['query_id', 'text']).to_pydict().values()))
corpus = dict(zip(*pq.read_table(sys.argv[2], columns=['doc_id', 'text']).to_pydict().values()))
cands = pq.read_table(sys.argv[3]).to_pylist()
backend = BACKENDS[sys.argv[7]]
model = load_model(sys.argv[4], 'cross-encoder', backend, 'cpu', export_root=sys.argv[8] or None,
                   max_length=int(sys.argv[5]))
pairs = [(queries[c['query_id']], corpus[c['doc_id']]) for c in cands]
t = time.perf_counter()
with inference_context(backend, 'cpu'):
    scores = model.predict(pairs, batch_size=32, activation_fn=torch.nn.Identity(),
                           show_progress_bar=False)
np.save(sys.argv[6], np.asarray(scores, dtype=np.float32))
print(json.dumps({'pairs': len(pairs), 'predict_seconds': time.perf_counter() - t,
                  'self_peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def random_head_cross_encoder(directory: str) -> str:
  """A 1-label CrossEncoder on the packaged all-MiniLM-L6-v2 (seeded random
  head), saved once in ``directory``; built in a child process."""
  if os.path.exists(os.path.join(directory, 'config.json')):
    return directory
  code = ('import sys, torch; from sentence_transformers import CrossEncoder; '
          'from transforms.models.model_info import packaged_minilm_path; torch.manual_seed(0); '
          'CrossEncoder(packaged_minilm_path(), num_labels=1).save(sys.argv[1])')
  timed_python(['-c', code, directory])
  return directory


def resolve_cross_encoder(name: str | None, directory: str) -> str:
  """``None``: the random-head model below; ``default``: the product's default
  (fine-tuned, cached under ~/.cache/beam-rerank; built on first use, minutes);
  else a folder. Backends other than torch fp32 need a trained head: the jobs'
  fidelity check refuses a random head's near-constant scores on bfloat16."""
  if not name:
    return random_head_cross_encoder(directory)
  if name == 'default':
    code = ('from pipelines.jobs.default_cross_encoder import ensure_default_cross_encoder; '
            'print(ensure_default_cross_encoder()[0])')
    return timed_python(['-c', code])['stdout'].strip().splitlines()[-1]
  return name


def make_candidates(corpus_path: str, queries_path: str, qrels_path: str, pairs: int,
                    output: str) -> str:
  """``pairs`` (query_id, doc_id) rows: per query its judged docs present in the
  corpus first, then other docs at a stride; queries in order."""
  import polars as pl
  corpus = pl.read_parquet(corpus_path).filter(pl.col('text').str.strip_chars() != '')
  queries = pl.read_parquet(queries_path)
  qrels = pl.read_parquet(qrels_path)
  judged = qrels.join(corpus.select('doc_id'), on='doc_id').sort('query_id', 'doc_id')
  per_query = max(1, pairs // queries.height + 1)
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
    if len(rows) >= pairs:
      break
  pl.DataFrame(rows[:pairs]).write_parquet(output)
  return output


def measure(*, pairs: int, corpus: str | None = None, backend: str = 'torch',
            export_cache: str | None = None, max_length: int = 256, repeats: int = 1,
            cross_encoder: str | None = None, beam_args: list[str] = (),
            workdir: str | None = None, env: dict | None = None) -> dict:
  import numpy as np
  import polars as pl
  cranfield = require_cranfield()
  work = workdir or tempfile.mkdtemp(prefix='bench_ce_')
  os.makedirs(work, exist_ok=True)
  ce_dir = resolve_cross_encoder(cross_encoder, os.path.join(work, 'ce'))
  q_path = os.path.join(cranfield, 'queries.parquet')
  c_path = corpus or os.path.join(cranfield, 'corpus.parquet')
  candidates_path = make_candidates(c_path, q_path, os.path.join(cranfield, 'qrels.parquet'),
                                    pairs, os.path.join(work, 'candidates.parquet'))
  export_seconds = pre_export(ce_dir, 'cross-encoder', backend, export_cache)
  raw_runs, pipe_runs = [], []
  for repeat in range(repeats):
    raw = timed_python(['-c', RAW, q_path, c_path, candidates_path, ce_dir,
                        str(max_length), os.path.join(work, 'raw.npy'), backend,
                        export_cache or ''], env=env)
    raw_runs.append({'wall_seconds': raw['wall_seconds'], 'peak_rss_mb': raw['peak_rss_mb'],
                     **last_json(raw['stdout'])})
    out = os.path.join(work, 'ranked')
    pipe = timed_python(['-m', 'pipelines.rerank', '--queries', q_path, '--corpus', c_path,
                         '--candidates', candidates_path, '--cross-encoder', ce_dir,
                         '--max-length', str(max_length), '--top-n', '1000',
                         *backend_args(backend, export_cache),
                         '--output', out, *beam_args], env=env)
    with open(os.path.join(out, 'report.json')) as handle:
      report = json.load(handle)
    pipe_runs.append({'wall_seconds': pipe['wall_seconds'], 'pairs': report['pairs_scored'],
                      'padding_fraction': report['padding_fraction'],
                      'peak_rss_mb': pipe['peak_rss_mb'],
                      'backend_fidelity': report.get('backend_fidelity')})
    print(f'cross-encoder repeat {repeat + 1} ({backend}): raw {raw["wall_seconds"]:.1f}s, '
          f'pipeline {pipe["wall_seconds"]:.1f}s', file=sys.stderr, flush=True)
  candidates = pl.read_parquet(candidates_path)
  got = pl.read_parquet(os.path.join(work, 'ranked', 'candidates', 'part-*.parquet'))
  raw_scores = candidates.with_columns(raw=pl.Series(np.load(os.path.join(work, 'raw.npy'))))
  joined = raw_scores.join(got, on=['query_id', 'doc_id'])
  n = raw_runs[0]['pairs']
  raw_rate = n / statistics.median(r['wall_seconds'] for r in raw_runs)
  pipe_rate = pipe_runs[0]['pairs'] / statistics.median(r['wall_seconds'] for r in pipe_runs)
  return {
      'pairs': n, 'max_length': max_length, 'backend': backend, 'beam_args': list(beam_args),
      'cross_encoder': ce_dir, 'export_seconds_before_timing': export_seconds,
      'raw_pairs_per_second': raw_rate,
      'pipeline_pairs_per_second': pipe_rate,
      'ratio_pipeline_over_raw': pipe_rate / raw_rate,
      'raw_predict_only_pairs_per_second': n / statistics.median(
          r['predict_seconds'] for r in raw_runs),
      'pipeline_padding_fraction': pipe_runs[0]['padding_fraction'],
      'raw_peak_rss_mb': max(r['peak_rss_mb'] for r in raw_runs),
      'pipeline_peak_rss_mb': max(r['peak_rss_mb'] for r in pipe_runs),
      'pairs_compared': joined.height,
      'max_abs_score_difference': float((joined['raw'] - joined['score']).abs().max()),
      'raw_runs': raw_runs, 'pipeline_runs': pipe_runs,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--pairs', type=int, default=1400)
  parser.add_argument('--max-length', type=int, default=256)
  parser.add_argument('--repeats', type=int, default=1)
  parser.add_argument('--corpus', default=None, help='corpus Parquet (default: Cranfield)')
  parser.add_argument('--cross-encoder', default=None,
                      help='CrossEncoder folder, or "default" for the product\'s default one '
                           '(default: packaged MiniLM + random 1-label head; use a trained one '
                           'with non-torch backends)')
  parser.add_argument('--backend', default='torch', help='run by both sides (default: torch)')
  parser.add_argument('--export-cache', default=None,
                      help='export folder for non-torch backends, shared by both sides')
  args, beam_args = parser.parse_known_args()
  os.environ.setdefault('HF_HUB_OFFLINE', '1')
  result = measure(pairs=args.pairs, corpus=args.corpus, backend=args.backend,
                   export_cache=args.export_cache, max_length=args.max_length,
                   repeats=args.repeats, cross_encoder=args.cross_encoder,
                   beam_args=[a for a in beam_args if a != '--'])
  print(json.dumps(result, indent=2))
  name = 'cross_encoder' if args.backend == 'torch' else f'cross_encoder-{args.backend}'
  print('->', write_result(name, result, smoke=args.pairs < 200))


if __name__ == '__main__':
  main()
