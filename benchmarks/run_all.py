"""The benchmark suite: every stage, pipeline (DirectRunner) vs the raw library
call on the same data, same model, same backend and threads, in one run.

Stages (each side is its own whole process; rates are items / wall seconds of
the process(es); peak RSS is each process's own, via ``os.wait4``):

- ``encode``: the encode job vs raw ``model.encode(texts, batch_size=32)``
  (``benchmarks/encode.py``), and Beam's ``MLTransform`` +
  ``SentenceTransformerEmbeddings`` (``benchmarks/encode_mltransform.py``).
- ``topk``: the product's blocked exact top-k (``ExactTopK``, a Beam pipeline)
  vs numpy (read shards, one matmul, argpartition, write) on seeded random
  normalized 384-d embeddings: corpus = size, ``--topk-queries`` queries, k=100;
  no model.
- ``cross-encoder``: the rerank job on supplied candidates vs raw
  ``CrossEncoder.predict(pairs, batch_size=32)``, pairs = size
  (``benchmarks/cross_encoder.py``).
- ``mining``: rerank (dense top-k + cross-encoder) then mine vs
  ``mine_hard_negatives`` with cross-encoder re-scoring, pairs scored per
  second (``benchmarks/mining.py``); Cranfield queries, the corpus of that size.
- ``backends``: the encode job on each of ``--compare-backends`` vs the encode
  job on torch float32, with mean/min cosine to its embeddings (run the suite
  with ``.venv-openvino/bin/python`` for OpenVINO).

Corpora: size <= 1,400 is the first rows of Cranfield; above, all of Cranfield
plus synthetic abstracts (Cranfield sentences recombined with a fixed seed,
sentence counts drawn from the real ones, ids ``syn-*``), so qrels still apply.
``--limit N`` is for smoke runs: every stage works on at most N texts/pairs
(mining: max(2, N // 10) queries on a corpus of N rows plus their positives).

    .venv/bin/python benchmarks/run_all.py [--sizes 1000,10000]
        [--stages encode,topk,cross-encoder,mining,backends] [--backend torch]
        [--compare-backends openvino] [--threads N] [--limit N] [-- beam/job args]

Prints one table and writes benchmarks/results/run_all.json (smoke runs:
benchmarks/results/smoke/run_all.json).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import cross_encoder as ce_bench  # noqa: E402
from benchmarks import encode as encode_bench  # noqa: E402
from benchmarks import mining as mining_bench  # noqa: E402
from benchmarks._common import (  # noqa: E402
  backend_args,
  last_json,
  make_corpus,
  pre_export,
  timed_python,
  write_result,
)

STAGES = ('encode', 'topk', 'cross-encoder', 'mining', 'backends')

NUMPY_TOPK = r'''
import json, os, resource, sys, time
import numpy as np, pyarrow as pa, pyarrow.parquet as pq, glob
def read(directory):
    tables = [pq.read_table(p)
              for p in sorted(glob.glob(os.path.join(directory, 'part-*.parquet')))]
    table = pa.concat_tables(tables)
    emb = table.column('embedding').combine_chunks()
    return (np.asarray(table.column('id').to_pylist()),
            emb.values.to_numpy(zero_copy_only=False).reshape(len(emb), -1).astype(np.float32))
qids, q = read(sys.argv[1])
dids, d = read(sys.argv[2])
k = int(sys.argv[3])
rows = {'query_id': [], 'doc_id': [], 'retrieval_rank': [], 'retrieval_score': []}
for lo in range(0, len(q), 1024):
    scores = q[lo:lo + 1024] @ d.T
    kk = min(k, scores.shape[1])
    top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    for i, cols in enumerate(top):
        s = scores[i, cols]
        order = np.lexsort((dids[cols], -s))
        for rank, j in enumerate(order, 1):
            rows['query_id'].append(qids[lo + i]); rows['doc_id'].append(dids[cols[j]])
            rows['retrieval_rank'].append(rank); rows['retrieval_score'].append(float(s[j]))
pq.write_table(pa.table(rows), sys.argv[4])
print(json.dumps({'queries': len(q), 'docs': len(d),
                  'self_peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def row(stage, size, backend, unit, ours, baseline, ours_rss, baseline_rss, versus, **extra):
  return {'stage': stage, 'size': size, 'backend': backend, 'unit': unit, 'versus': versus,
          'ours': ours, 'baseline': baseline, 'ratio': ours / baseline if baseline else None,
          'ours_peak_rss_mb': ours_rss, 'baseline_peak_rss_mb': baseline_rss, **extra}


def limited_corpus(corpus: str, limit: int, workdir: str, extra_ids=()) -> str:
  """At most ``limit`` rows (the last ones, so synthetic texts are exercised
  where there are any), plus the rows with ``extra_ids``."""
  if not limit:
    return corpus
  import polars as pl
  table = pl.read_parquet(corpus)
  picked = pl.concat([table.tail(limit),
                      table.filter(pl.col('doc_id').is_in(list(extra_ids)))]).unique(
      'doc_id', keep='first', maintain_order=True)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, f'limited-{limit}-{len(picked)}-{os.path.basename(corpus)}')
  picked.write_parquet(path)
  return path


def stage_encode(size, corpus, args, work, env):
  result = encode_bench.measure(
      corpus, backend=args.backend, export_cache=args.export_cache, repeats=args.repeats,
      mltransform=not args.backend.startswith('torch-'), beam_args=args.beam_args,
      workdir=os.path.join(work, 'encode'), env=env)
  rows = [row('encode', size, args.backend, 'texts/s', result['pipeline_texts_per_second'],
              result['raw_texts_per_second'], result['pipeline_peak_rss_mb'],
              result['raw_peak_rss_mb'], 'raw model.encode',
              mean_cosine=result['pipeline_vs_raw_embeddings'].get('mean_cosine'))]
  if 'mltransform_texts_per_second' in result:
    rows.append(row('encode', size, args.backend, 'texts/s', result['pipeline_texts_per_second'],
                    result['mltransform_texts_per_second'], result['pipeline_peak_rss_mb'],
                    result['mltransform_peak_rss_mb'], 'Beam MLTransform'))
  return rows, result


def stage_topk(size, args, work, env):
  import numpy as np

  from benchmarks.retrieve_scale import write_shards
  docs = min(size, args.limit) if args.limit else size
  queries = min(args.topk_queries, args.limit) if args.limit else args.topk_queries
  rng = np.random.default_rng(0)

  def normalized(n):
    m = rng.standard_normal((n, 384)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)
  d, q = normalized(docs), normalized(queries)
  directory = os.path.join(work, 'topk')
  write_shards(os.path.join(directory, 'corpus'), [f'd{i:07d}' for i in range(docs)], d, 25_000)
  write_shards(os.path.join(directory, 'queries'), [f'q{i:05d}' for i in range(queries)], q, 10_000)
  k = min(100, docs)
  raw = timed_python(['-c', NUMPY_TOPK, os.path.join(directory, 'queries'),
                      os.path.join(directory, 'corpus'), str(k),
                      os.path.join(directory, 'numpy.parquet')], env=env)
  pipe = timed_python([os.path.join('benchmarks', 'retrieve_scale.py'), '--child', '--workdir',
                       directory, '--output', os.path.join(directory, 'candidates'),
                       '--k', str(k), *args.beam_args], env=env)
  import polars as pl
  got = pl.read_parquet(os.path.join(directory, 'candidates', 'part-*.parquet'))
  want = pl.read_parquet(os.path.join(directory, 'numpy.parquet'))
  same = (got.select('query_id', 'doc_id', 'retrieval_rank').sort('query_id', 'retrieval_rank')
          .equals(want.select('query_id', 'doc_id', 'retrieval_rank')
                  .sort('query_id', 'retrieval_rank')))
  # numpy orders by float32 scores; ours is exact (float64 rescoring, ties by
  # doc_id), so rows may differ only where the two scores agree to float32
  # precision (near-ties swapped).
  joined = got.join(want.with_columns(pl.col('retrieval_rank').cast(pl.Int32)),
                    on=['query_id', 'retrieval_rank'], suffix='_numpy')
  differing = joined.filter(pl.col('doc_id') != pl.col('doc_id_numpy'))
  near_ties_only = bool(differing.is_empty() or (
      (differing['retrieval_score'].cast(pl.Float64) - differing['retrieval_score_numpy'])
      .abs().max() <= 1e-6))
  result = {'docs': docs, 'queries': queries, 'k': k, 'numpy_wall_seconds': raw['wall_seconds'],
            'pipeline_wall_seconds': pipe['wall_seconds'],
            'pipeline_child': last_json(pipe['stdout']), 'same_ranking_as_numpy': same,
            'queries_ordered_differently': differing['query_id'].n_unique(),
            'differences_are_float32_near_ties': near_ties_only,
            'numpy_peak_rss_mb': raw['peak_rss_mb'], 'pipeline_peak_rss_mb': pipe['peak_rss_mb']}
  return [row('topk', size, '-', 'queries/s', queries / pipe['wall_seconds'],
              queries / raw['wall_seconds'], pipe['peak_rss_mb'], raw['peak_rss_mb'],
              f'numpy matmul+argpartition ({queries} q x {docs} d, k={k})',
              same_as_numpy=same, queries_differing=differing['query_id'].n_unique(),
              near_ties_only=near_ties_only)], result


def stage_cross_encoder(size, corpus, args, work, env):
  pairs = min(size, args.limit) if args.limit else size
  result = ce_bench.measure(
      pairs=pairs, corpus=corpus, backend=args.backend, export_cache=args.export_cache,
      repeats=args.repeats, cross_encoder=args.cross_encoder, beam_args=args.beam_args,
      workdir=os.path.join(work, 'ce'), env=env)
  return [row('cross-encoder', size, args.backend, 'pairs/s', result['pipeline_pairs_per_second'],
              result['raw_pairs_per_second'], result['pipeline_peak_rss_mb'],
              result['raw_peak_rss_mb'], 'raw CrossEncoder.predict',
              max_abs_score_difference=result['max_abs_score_difference'])], result


def stage_mining(size, corpus, args, work, env):
  num_queries = args.mining_queries
  if args.limit:
    import polars as pl

    from benchmarks._common import require_cranfield
    num_queries = min(num_queries, max(2, args.limit // 10))
    qrels = pl.read_parquet(os.path.join(require_cranfield(), 'qrels.parquet'))
    first = pl.read_parquet(
        os.path.join(require_cranfield(), 'queries.parquet'))['query_id'][:num_queries]
    positives = qrels.filter((pl.col('relevance') >= 5) & pl.col('query_id').is_in(first.implode()))
    corpus = limited_corpus(corpus, args.limit, work, positives['doc_id'].to_list())
  result = mining_bench.measure(
      num_queries=num_queries, corpus=corpus, range_max=args.range_max,
      num_negatives=args.num_negatives, backend=args.backend, export_cache=args.export_cache,
      cross_encoder=args.cross_encoder, repeats=args.repeats, beam_args=args.beam_args,
      workdir=os.path.join(work, 'mining'), env=env)
  return [row('mining', size, args.backend, 'pairs/s', result['pipeline_pairs_per_second'],
              result['library_pairs_per_second'], result['pipeline_peak_rss_mb'],
              result['library_peak_rss_mb'],
              f'mine_hard_negatives ({result["queries"]} q, range_max {args.range_max})',
              same_negatives=result['same_query_negative_pairs'],
              library_only=result['query_negative_pairs_library_only'],
              pipeline_only=result['query_negative_pairs_pipeline_only'])], result


def stage_backends(size, corpus, args, work, env, encode_detail=None):
  from transforms.models.model_info import packaged_minilm_path
  texts = None
  outputs, runs = {}, {}
  for backend in ['torch', *args.compare_backends]:
    pre_export(packaged_minilm_path(), 'bi-encoder', backend, args.export_cache)
    out = os.path.join(work, 'backends', backend)
    run = timed_python(['-m', 'pipelines.encode', '--input', corpus, '--output', out,
                        *backend_args(backend, args.export_cache), *args.beam_args], env=env)
    with open(os.path.join(out, 'report.json')) as handle:
      report = json.load(handle)
    texts = report['texts_encoded']
    outputs[backend] = os.path.join(out, 'part-*.parquet')
    runs[backend] = {'wall_seconds': run['wall_seconds'], 'peak_rss_mb': run['peak_rss_mb'],
                     'texts_per_second': texts / run['wall_seconds'],
                     'backend_fidelity': report.get('backend_fidelity')}
    print(f'backends: encode job on {backend}: {run["wall_seconds"]:.1f}s', file=sys.stderr,
          flush=True)
  rows = []
  for backend in args.compare_backends:
    cosine = encode_bench.mean_cosine(outputs['torch'], outputs[backend])
    runs[backend]['vs_torch'] = cosine
    rows.append(row('backends', size, backend, 'texts/s', runs[backend]['texts_per_second'],
                    runs['torch']['texts_per_second'], runs[backend]['peak_rss_mb'],
                    runs['torch']['peak_rss_mb'], 'encode job on torch float32',
                    mean_cosine=cosine.get('mean_cosine'), min_cosine=cosine.get('min_cosine')))
    if encode_detail and encode_detail.get('backend') == 'torch' and (
        'mltransform_texts_per_second' in encode_detail):
      # The bar: the best CPU backend through the pipeline vs Beam's
      # MLTransform as it runs by default (torch float32), same corpus.
      rows.append(row('backends', size, backend, 'texts/s', runs[backend]['texts_per_second'],
                      encode_detail['mltransform_texts_per_second'], runs[backend]['peak_rss_mb'],
                      encode_detail['mltransform_peak_rss_mb'], 'MLTransform on torch float32'))
  return rows, {'texts': texts, 'runs': runs}


def rss_growth_rows(details: dict, sizes: list[int]) -> list[dict]:
  """Peak RSS of the encode job at the largest size vs the smallest: flat
  in corpus size means a ratio near 1."""
  encoded = [s for s in sorted(sizes) if f'encode@{s}' in details]
  if len(encoded) < 2:
    return []
  small, large = details[f'encode@{encoded[0]}'], details[f'encode@{encoded[-1]}']
  return [row('encode RSS', encoded[-1], small['backend'], 'MB',
              large['pipeline_peak_rss_mb'], small['pipeline_peak_rss_mb'],
              large['pipeline_peak_rss_mb'], small['pipeline_peak_rss_mb'],
              f'encode job peak RSS at size {encoded[0]}')]


def format_table(rows: list[dict]) -> str:
  header = ('stage', 'size', 'backend', 'versus', 'ours', 'baseline', 'ratio', 'unit',
            'RSS MB ours/base', 'check')
  lines = []
  for r in rows:
    check = ''
    if r.get('mean_cosine') is not None:
      check = f'cos {r["mean_cosine"]:.6f}'
    elif 'max_abs_score_difference' in r:
      check = f'max|d| {r["max_abs_score_difference"]:.1e}'
    elif 'same_as_numpy' in r:
      check = ('same' if r['same_as_numpy'] else
               f'{r["queries_differing"]} q: f32 near-ties' if r.get('near_ties_only') else
               'DIFFERENT')
    elif 'same_negatives' in r:
      check = f'neg same {r["same_negatives"]}, -{r["library_only"]}/+{r["pipeline_only"]}'
    lines.append((r['stage'], str(r['size']), r['backend'], r['versus'], f'{r["ours"]:.2f}',
                  f'{r["baseline"]:.2f}', f'{r["ratio"]:.3f}' if r['ratio'] else '-', r['unit'],
                  f'{r["ours_peak_rss_mb"]:.0f}/{r["baseline_peak_rss_mb"]:.0f}', check))
  widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
            for i, h in enumerate(header)]
  fmt = lambda cells: '  '.join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
  return '\n'.join([fmt(header), fmt(['-' * w for w in widths]), *map(fmt, lines)])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--sizes', default='1000,10000', help='corpus sizes (default: 1000,10000)')
  parser.add_argument('--stages', default=','.join(STAGES),
                      help=f'comma-separated subset of {",".join(STAGES)} (default: all; '
                           'backends is skipped when --compare-backends names none installed)')
  parser.add_argument('--backend', default='torch',
                      help='backend of both sides in encode, cross-encoder, mining '
                           '(default: torch)')
  parser.add_argument('--compare-backends', default=None,
                      help='backends stage: compared with torch (default: openvino where '
                           'installed, else none)')
  parser.add_argument('--export-cache', default=None,
                      help='export folder for non-torch backends (default: a fresh one under '
                           'the work folder, made before any timing)')
  parser.add_argument('--threads', type=int, default=0,
                      help='OMP_NUM_THREADS for every process (default: unset = library default, '
                           'the same for both sides)')
  parser.add_argument('--limit', type=int, default=0, help='smoke runs: at most N items per stage')
  parser.add_argument('--repeats', type=int, default=1)
  parser.add_argument('--topk-queries', type=int, default=1000)
  parser.add_argument('--mining-queries', type=int, default=225)
  parser.add_argument('--range-max', type=int, default=10)
  parser.add_argument('--num-negatives', type=int, default=3)
  parser.add_argument('--cross-encoder', default=None,
                      help='CrossEncoder folder, or "default" for the product\'s default one '
                           '(default: packaged MiniLM + random 1-label head; use a trained one '
                           'with non-torch backends)')
  parser.add_argument('--workdir', default=None)
  args, beam_args = parser.parse_known_args()
  args.beam_args = [a for a in beam_args if a != '--']
  os.environ.setdefault('HF_HUB_OFFLINE', '1')
  stages = [s.strip() for s in args.stages.split(',') if s.strip()]
  unknown = set(stages) - set(STAGES)
  if unknown:
    parser.error(f'unknown stages: {", ".join(sorted(unknown))}')
  sizes = [int(s) for s in args.sizes.split(',') if s.strip()]
  work = args.workdir or tempfile.mkdtemp(prefix='bench_all_')
  args.export_cache = args.export_cache or os.path.join(work, 'exports')
  if args.compare_backends is None:
    import importlib.util
    args.compare_backends = ['openvino'] if importlib.util.find_spec('openvino') else []
  else:
    args.compare_backends = [b for b in args.compare_backends.split(',') if b and b != 'torch']
  env = {'OMP_NUM_THREADS': str(args.threads)} if args.threads else None
  if 'mining' in stages or 'cross-encoder' in stages:
    args.cross_encoder = ce_bench.resolve_cross_encoder(
        args.cross_encoder, os.path.join(work, 'ce'))
  rows, details = [], {}
  started = time.perf_counter()
  for size in sizes:
    corpus = make_corpus(size, os.path.join(work, 'corpora'))
    small = limited_corpus(corpus, args.limit, work)
    size_work = os.path.join(work, f'size-{size}')
    for stage in stages:
      if stage == 'backends' and not args.compare_backends:
        print('backends: skipped (no --compare-backends; openvino not installed here)',
              file=sys.stderr)
        continue
      t = time.perf_counter()
      print(f'== {stage} at size {size}', file=sys.stderr, flush=True)
      if stage == 'encode':
        stage_rows, detail = stage_encode(size, small, args, size_work, env)
      elif stage == 'topk':
        stage_rows, detail = stage_topk(size, args, size_work, env)
      elif stage == 'cross-encoder':
        stage_rows, detail = stage_cross_encoder(size, corpus, args, size_work, env)
      elif stage == 'mining':
        stage_rows, detail = stage_mining(size, corpus, args, size_work, env)
      else:
        stage_rows, detail = stage_backends(size, small, args, size_work, env,
                                            details.get(f'encode@{size}'))
      detail['stage_seconds'] = time.perf_counter() - t
      rows += stage_rows
      details[f'{stage}@{size}'] = detail
      print(format_table(stage_rows), file=sys.stderr, flush=True)
  rows += rss_growth_rows(details, sizes)
  table = format_table(rows)
  result = {'sizes': sizes, 'stages': stages, 'backend': args.backend,
            'compare_backends': args.compare_backends, 'threads': args.threads or None,
            'limit': args.limit, 'repeats': args.repeats, 'beam_args': args.beam_args,
            'python': sys.executable, 'cpu_count': os.cpu_count(),
            'total_seconds': time.perf_counter() - started, 'rows': rows, 'details': details,
            'table': table}
  path = write_result('run_all', result, smoke=bool(args.limit))
  print(table)
  print(f'-> {path} ({result["total_seconds"]:.0f}s)')


if __name__ == '__main__':
  main()
