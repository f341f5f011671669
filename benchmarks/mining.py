"""Hard-negative mining with cross-encoder re-scoring: our chain vs
``sentence_transformers.util.mine_hard_negatives``, pairs scored per second.

Same data, models, backend and settings on both sides, each a whole process
(start-up, model loads, Parquet I/O, encoding the corpus and queries, dense
top-k, cross-encoder scoring, mining, writing):

- library: one process calls ``mine_hard_negatives(dataset, model,
  corpus=corpus, cross_encoder=ce, range_max=R, num_negatives=K,
  absolute_margin=M, sampling_strategy='top', output_format='triplet',
  batch_size=32)`` on (query, positive) pairs and writes the triplets. With a
  margin set it re-scores, per query, its top ``R + max_positives + 1`` dense
  candidates (sentence-transformers >= 6.3: one place for a corpus text equal
  to the query) with one ``cross_encoder.predict`` call each, then all (query,
  positive) pairs in one more call (read from its source,
  sentence_transformers/util/hard_negatives.py). The pairs it scores are
  counted by wrapping ``predict``: queries x (R + max_positives + 1) + positives.
- ours: ``rerank --model MINILM --cross-encoder CE --top-k R+max_positives+1
  --candidates positives.parquet`` (dense top-k unioned with the positives,
  scored in length-sorted batches across queries), then ``mine --ranked ...
  --qrels ... --range-max R --num-negatives K --absolute-margin M --format
  triplet``. Pairs scored = the rerank report's ``pairs_scored``; seconds = both
  jobs' wall times.

Positives are the qrels rows with relevance >= --min-relevance (default 5: on
Cranfield exactly one per query, the question's source paper), so
max_positives is 1. The cross-encoder's own activation (sigmoid for 1 label)
is used on both sides (``--activation model``), so margins mean the same. The
cross-encoder is the packaged all-MiniLM-L6-v2 with a seeded random 1-label
head unless --cross-encoder is given (speed, not quality, is measured). The
mined (query, negative) pairs of both sides are compared (overlap).

    .venv/bin/python benchmarks/mining.py [--queries 225] [--range-max 10]
        [--num-negatives 3] [--absolute-margin 0] [--backend B] [-- beam/job args]
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
import pyarrow as pa, pyarrow.parquet as pq
from datasets import Dataset
from sentence_transformers.util import mine_hard_negatives
from transforms.models.backends import BACKENDS, inference_context, load_model
from transforms.models.model_info import packaged_minilm_path
(queries_path, corpus_path, positives_path, ce_dir, backend_name, export_root,
 range_max, num_negatives, margin, output, cache_folder, warm_up) = sys.argv[1:13]
backend = BACKENDS[backend_name]
export_root = export_root or None
queries = dict(zip(*pq.read_table(queries_path, columns=['query_id', 'text']).to_pydict().values()))
table = pq.read_table(corpus_path, columns=['doc_id', 'text'])
docs = {i: t for i, t in zip(table.column('doc_id').to_pylist(), table.column('text').to_pylist())
        if t and t.strip()}
positives = pq.read_table(positives_path).to_pylist()
dataset = Dataset.from_dict({'query': [queries[p['query_id']] for p in positives],
                             'positive': [docs[p['doc_id']] for p in positives]})
model = load_model(packaged_minilm_path(), 'bi-encoder', backend, 'cpu', export_root=export_root)
cross_encoder = load_model(ce_dir, 'cross-encoder', backend, 'cpu', export_root=export_root)
counts = {'pairs': 0, 'calls': 0}
predict = cross_encoder.predict
def counted(inputs, *args, **kwargs):
    counts['pairs'] += len(inputs)
    counts['calls'] += 1
    return predict(inputs, *args, **kwargs)
cross_encoder.predict = counted
t = time.perf_counter()
with inference_context(backend, 'cpu'):
    mined = mine_hard_negatives(
        dataset, model, corpus=list(docs.values()),
        cross_encoder=None if warm_up == '1' else cross_encoder,
        range_max=int(range_max), num_negatives=int(num_negatives),
        absolute_margin=float(margin), sampling_strategy='top', output_format='triplet',
        batch_size=32, verbose=False, cache_folder=cache_folder or None)
    if warm_up == '1':  # only filled the embedding cache; nothing to report
        sys.exit(0)
mine_seconds = time.perf_counter() - t
mined.to_parquet(output)
print(json.dumps({'pairs_scored': counts['pairs'], 'predict_calls': counts['calls'],
                  'rows': len(mined), 'mine_seconds': mine_seconds,
                  'self_peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def prepare(workdir: str, corpus: str, num_queries: int, min_relevance: int) -> dict:
  """First ``num_queries`` queries with a positive in ``corpus``; positives Parquet."""
  import polars as pl
  cranfield = require_cranfield()
  docs = pl.read_parquet(corpus).filter(pl.col('text').str.strip_chars() != '').select('doc_id')
  qrels = pl.read_parquet(os.path.join(cranfield, 'qrels.parquet'))
  positives = qrels.filter(pl.col('relevance') >= min_relevance).join(docs, on='doc_id')
  queries = pl.read_parquet(os.path.join(cranfield, 'queries.parquet'))
  queries = queries.filter(pl.col('query_id').is_in(positives['query_id'].unique().implode()))
  queries = queries.head(num_queries)
  positives = positives.filter(pl.col('query_id').is_in(queries['query_id'].implode())).sort(
      pl.col('query_id').cast(pl.Int64), 'doc_id')
  paths = {'queries': os.path.join(workdir, 'queries.parquet'),
           'positives': os.path.join(workdir, 'positives.parquet'),
           'qrels': os.path.join(cranfield, 'qrels.parquet')}
  queries.write_parquet(paths['queries'])
  positives.select('query_id', 'doc_id').write_parquet(paths['positives'])
  paths['num_queries'] = queries.height
  paths['num_positives'] = positives.height
  paths['max_positives'] = int(positives.group_by('query_id').len()['len'].max())
  return paths


def measure(*, num_queries: int = 225, corpus: str | None = None, range_max: int = 10,
            num_negatives: int = 3, absolute_margin: float = 0.0, min_relevance: int = 5,
            backend: str = 'torch', export_cache: str | None = None,
            cross_encoder: str | None = None, repeats: int = 1, beam_args: list[str] = (),
            workdir: str | None = None, env: dict | None = None,
            precomputed_embeddings: bool = False) -> dict:
  import polars as pl

  from benchmarks.cross_encoder import resolve_cross_encoder
  from transforms.models.model_info import packaged_minilm_path
  work = workdir or tempfile.mkdtemp(prefix='bench_mining_')
  os.makedirs(work, exist_ok=True)
  corpus = corpus or os.path.join(require_cranfield(), 'corpus.parquet')
  data = prepare(work, corpus, num_queries, min_relevance)
  ce_dir = resolve_cross_encoder(cross_encoder, os.path.join(work, 'ce'))
  minilm = packaged_minilm_path()
  export_seconds = (pre_export(minilm, 'bi-encoder', backend, export_cache) +
                    pre_export(ce_dir, 'cross-encoder', backend, export_cache))
  top_k = range_max + data['max_positives'] + 1  # as mine_hard_negatives (>= 6.3)
  lib_out = os.path.join(work, 'library-triplets.parquet')
  raw_args = [data['queries'], corpus, data['positives'], ce_dir, backend, export_cache or '',
              str(range_max), str(num_negatives), str(absolute_margin), lib_out]
  cache_folder, candidates_args = '', ['--model', minilm]
  if precomputed_embeddings:
    # Both sides start from embeddings made beforehand (not timed): the
    # library from its own embedding cache, ours from encode outputs.
    cache_folder = os.path.join(work, 'st-embedding-cache')
    timed_python(['-c', RAW, *raw_args, cache_folder, '1'], env=env)
    emb = {name: os.path.join(work, 'embeddings', name) for name in ('queries', 'corpus')}
    for name, pattern, id_column in (('queries', data['queries'], 'query_id'),
                                     ('corpus', corpus, 'doc_id')):
      timed_python(['-m', 'pipelines.encode', '--input', pattern, '--output', emb[name],
                    '--model', minilm, '--id-column', id_column,
                    *backend_args(backend, export_cache), *beam_args], env=env)
    candidates_args = ['--query-embeddings', emb['queries'], '--corpus-embeddings', emb['corpus']]
  lib_runs, ours_runs = [], []
  for repeat in range(repeats):
    lib = timed_python(['-c', RAW, *raw_args, cache_folder, '0'], env=env)
    lib_runs.append({'wall_seconds': lib['wall_seconds'], 'peak_rss_mb': lib['peak_rss_mb'],
                     **last_json(lib['stdout'])})
    ranked, pairs_dir = os.path.join(work, 'ranked'), os.path.join(work, 'pairs')
    rerank = timed_python([
        '-m', 'pipelines.rerank', '--queries', data['queries'], '--corpus', corpus,
        *candidates_args, '--cross-encoder', ce_dir, '--top-k', str(top_k),
        '--candidates', data['positives'], '--activation', 'model', '--top-n', '1',
        *backend_args(backend, export_cache), '--output', ranked, *beam_args], env=env)
    with open(os.path.join(ranked, 'report.json')) as handle:
      report = json.load(handle)
    mine = timed_python([
        '-m', 'pipelines.mine', '--ranked', ranked, '--queries', data['queries'],
        '--corpus', corpus, '--qrels', data['qrels'], '--min-relevance', str(min_relevance),
        '--range-max', str(range_max), '--num-negatives', str(num_negatives),
        '--absolute-margin', str(absolute_margin), '--format', 'triplet',
        '--output', pairs_dir, *beam_args], env=env)
    ours_runs.append({
        'wall_seconds': rerank['wall_seconds'] + mine['wall_seconds'],
        'rerank_wall_seconds': rerank['wall_seconds'], 'mine_wall_seconds': mine['wall_seconds'],
        'pairs_scored': report['pairs_scored'],
        'peak_rss_mb': max(rerank['peak_rss_mb'], mine['peak_rss_mb']),
        'rerank_peak_rss_mb': rerank['peak_rss_mb'], 'mine_peak_rss_mb': mine['peak_rss_mb']})
    print(f'mining repeat {repeat + 1} ({backend}): mine_hard_negatives '
          f'{lib["wall_seconds"]:.1f}s, rerank+mine {rerank["wall_seconds"]:.1f}+'
          f'{mine["wall_seconds"]:.1f}s', file=sys.stderr, flush=True)
  lib_triplets = pl.read_parquet(lib_out)
  ours = pl.read_parquet(os.path.join(work, 'pairs', 'triplet', 'train', '*.parquet'))
  lib_set = set(zip(lib_triplets[lib_triplets.columns[0]].to_list(),
                    lib_triplets[lib_triplets.columns[2]].to_list()))
  our_set = set(zip(ours['anchor'].to_list(), ours['negative'].to_list()))
  lib_pairs, our_pairs = lib_runs[0]['pairs_scored'], ours_runs[0]['pairs_scored']
  lib_rate = lib_pairs / statistics.median(r['wall_seconds'] for r in lib_runs)
  our_rate = our_pairs / statistics.median(r['wall_seconds'] for r in ours_runs)
  return {
      'queries': data['num_queries'], 'positives': data['num_positives'],
      'max_positives': data['max_positives'], 'range_max': range_max,
      'num_negatives': num_negatives, 'absolute_margin': absolute_margin,
      'min_relevance': min_relevance, 'top_k': top_k, 'backend': backend,
      'corpus': corpus, 'cross_encoder': ce_dir, 'beam_args': list(beam_args),
      'precomputed_embeddings': precomputed_embeddings,
      'export_seconds_before_timing': export_seconds,
      'library_pairs_scored': lib_pairs, 'pipeline_pairs_scored': our_pairs,
      'library_pairs_per_second': lib_rate, 'pipeline_pairs_per_second': our_rate,
      'ratio_pipeline_over_library': our_rate / lib_rate,
      'library_predict_calls': lib_runs[0]['predict_calls'],
      'library_triplets': lib_triplets.height, 'pipeline_triplets': ours.height,
      'same_query_negative_pairs': len(lib_set & our_set),
      'query_negative_pairs_library_only': len(lib_set - our_set),
      'query_negative_pairs_pipeline_only': len(our_set - lib_set),
      'library_peak_rss_mb': max(r['peak_rss_mb'] for r in lib_runs),
      'pipeline_peak_rss_mb': max(r['peak_rss_mb'] for r in ours_runs),
      'library_runs': lib_runs, 'pipeline_runs': ours_runs,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--queries', type=int, default=225, help='first N queries (default: 225)')
  parser.add_argument('--range-max', type=int, default=10)
  parser.add_argument('--num-negatives', type=int, default=3)
  parser.add_argument('--absolute-margin', type=float, default=0.0,
                      help='a margin is what makes mine_hard_negatives re-score (default: 0)')
  parser.add_argument('--min-relevance', type=int, default=5)
  parser.add_argument('--corpus', default=None, help='corpus Parquet (default: Cranfield)')
  parser.add_argument('--cross-encoder', default=None,
                      help='CrossEncoder folder, or "default" for the product\'s default one '
                           '(default: packaged MiniLM + random 1-label head; use a trained one '
                           'with non-torch backends)')
  parser.add_argument('--backend', default='torch')
  parser.add_argument('--export-cache', default=None)
  parser.add_argument('--repeats', type=int, default=1)
  parser.add_argument(
      '--precomputed-embeddings', action='store_true',
      help='both sides start from query/corpus embeddings made before timing (the library '
      'from its cache_folder, ours from encode outputs): measures retrieval, re-scoring and '
      'mining without the (identical) encoding cost')
  args, beam_args = parser.parse_known_args()
  os.environ.setdefault('HF_HUB_OFFLINE', '1')
  result = measure(num_queries=args.queries, corpus=args.corpus, range_max=args.range_max,
                   num_negatives=args.num_negatives, absolute_margin=args.absolute_margin,
                   min_relevance=args.min_relevance, backend=args.backend,
                   export_cache=args.export_cache, cross_encoder=args.cross_encoder,
                   repeats=args.repeats, beam_args=[a for a in beam_args if a != '--'],
                   precomputed_embeddings=args.precomputed_embeddings)
  print(json.dumps({k: v for k, v in result.items() if not k.endswith('_runs')}, indent=2))
  name = 'mining' if args.backend == 'torch' else f'mining-{args.backend}'
  name += '-precomputed' if args.precomputed_embeddings else ''
  print('->', write_result(name, result, smoke=args.queries < 50))


if __name__ == '__main__':
  main()
