"""Incremental reranking on Cranfield: a re-run after a few edits reuses unchanged pairs' scores.

The rerank job (``pipelines.jobs.rerank.execute``) with BM25 candidates only (k1 1.5,
b 0.75, no stemmer, ``--top-k`` per query, default 30; no embeddings, so no
encoding), the cross-encoder ``--cross-encoder`` (default: the product's
default one, cached under ~/.cache/beam-rerank), fusion weights 'auto' (no
tuning qrels: ranked by the cross-encoder alone) and top-n 10, on Cranfield's
225 queries and 1,400 abstracts (the text alone: it already begins with the
title). All in ``--work`` (default /tmp/bench/incremental):

  1. full/    the job on the original inputs (every pair scored);
  2. edited/  the inputs after edits with a fixed seed (``--seed``): a fraction
              ``--edit-fraction`` (default 5%) of the non-empty abstracts gets a
              sentence appended (a fixed phrase plus the abstract's own first
              words, so BM25 candidates shift a little as well), the same fraction
              of the queries gets a word appended, 5 other abstracts are deleted and
              5 added (copies of other abstracts with a new id and a short phrase
              appended);
  3. inc/     the job on the edited inputs with ``previous`` = full/: the scores of
              pairs whose query and passage texts are unchanged are reused;
  4. fresh/   the job on the edited inputs from scratch (every pair scored);
  5. rerun/   the job on the edited inputs again with ``previous`` = inc/: nothing
              left to score, so its time is the job's floor (start-up, model load,
              BM25, Beam) that no reuse can remove.

Each run is its own process (``benchmarks/_common.timed_python``): its time is
reported three ways: the job's ``wall_seconds`` (the rerank stage: checks,
model inspection, the Beam pipeline, the report), the ``execute`` call as timed
around it, and the whole process (imports included). The acceptance figure is
the ratio inc / full of the job's wall_seconds (target <= 0.15).

Equality of inc and fresh: the candidates outputs (files listed in each
manifest) hold the same (query_id, doc_id) pairs, with identical ``rank`` and
``retrieval_rank`` for every pair and ``ce_score`` and ``score`` within 1e-5;
the ranked outputs hold the same top-n doc ids in the same order per query.

Reproduce (from the repo root; HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false):

  .venv/bin/python benchmarks/incremental_rerank.py [--top-k 30] [--cross-encoder DIR]
      [--work /tmp/bench/incremental] [--edit-fraction 0.05] [--seed 0] [--threads N]
      [--limit-queries N] [-- beam args]

Figures to benchmarks/results/incremental_rerank.json (``-topK`` before .json for
another --top-k; --limit-queries runs, smoke tests, go to benchmarks/results/smoke/),
a compact table to stdout. At the defaults: 225 queries x 30 BM25 candidates,
6,750 pairs per run; the edits touch 70 of 1,398 non-empty abstracts and 11 of
225 queries, with 5 abstracts deleted and 5 added (1,400 abstracts after the edits).

Figures (2-core CPU, torch; job wall_seconds):

  top-k 30, machine otherwise idle: full 197.1 s (6,750 pairs scored), inc 26.5 s
      (693 scored, 6,057 reused), fresh 200.1 s, rerun 5.0 s (0 scored):
      inc / full 0.134 (target <= 0.15), cpu seconds 0.122;
  top-k 50 (11,250 pairs; other work ran during full): full 459.3 s, inc 40.3 s
      (1,157 scored, 10,093 reused), fresh 343.0 s, rerun 5.9 s: inc / full 0.088,
      inc / fresh 0.117, cpu seconds 0.101.

In every run inc equalled fresh (same pairs, same ranks, |ce_score diff| <= 7e-7,
same top-10). About 10% of the pairs change when 5% of the abstracts and 5% of
the queries do (1 - 0.95 x 0.95), so the ratio cannot go much below 0.10 plus
the floor (0.02-0.03). Wall times swing with other load on the machine (top-k
30 beside other work: 360.8 s / 76.6 s = 0.21 and 331.9 s / 60.4 s = 0.18 with
the same pairs); ``cpu s`` (cpu seconds ratio 0.14 there), inc / fresh and the
load averages in the JSON show it.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from benchmarks._common import last_json, require_cranfield, timed_python, write_result  # noqa: E402

DEFAULT_CROSS_ENCODER = os.path.join(
    os.path.expanduser('~'), '.cache', 'beam-rerank', 'default-cross-encoder-b81759de4a03')
TOLERANCE = 1e-5
DOC_PHRASE = 'in summary, this revised abstract concerns'
ADDED_PHRASE = 'a revised copy of an earlier report .'
QUERY_WORDS = ('flow', 'wing', 'pressure', 'heat', 'shock', 'boundary', 'layer', 'supersonic')
DELETED_DOCS = 5
ADDED_DOCS = 5
RUNS = ('full', 'inc', 'fresh', 'rerun')

# The child process: one rerank job, its report and the execute call's seconds.
CHILD = r'''
import json, os, resource, sys, time
settings = json.loads(sys.argv[1])
threads = settings.pop('threads')
if threads:
  import torch
  torch.set_num_threads(threads)
from pipelines import rerank
from transforms.retrieval.bm25 import BM25Options
bm25 = BM25Options(**settings.pop('bm25'))
config = rerank.RerankJobConfig(**{
    **settings, 'bm25': bm25, 'pipeline_args': tuple(settings['pipeline_args'])})
load = os.getloadavg()[0]
cpu = resource.getrusage(resource.RUSAGE_SELF)
started = time.perf_counter()
result = rerank.execute(config)
execute_seconds = time.perf_counter() - started
after = resource.getrusage(resource.RUSAGE_SELF)
cpu_seconds = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
print(json.dumps({'execute_seconds': execute_seconds, 'execute_cpu_seconds': cpu_seconds,
                  'load_before': load, 'load_after': os.getloadavg()[0],
                  'report': result.report}, default=str))
'''


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--top-k', type=int, default=30, help='BM25 candidates per query.')
  parser.add_argument('--cross-encoder', default=DEFAULT_CROSS_ENCODER, metavar='DIR',
                      help='The cross-encoder (default: the product\'s default, cached).')
  parser.add_argument('--work', default='/tmp/bench/incremental',
                      help='Inputs and the runs\' outputs go here.')
  parser.add_argument('--edit-fraction', type=float, default=0.05,
                      help='Fraction of the abstracts and of the queries edited.')
  parser.add_argument('--seed', type=int, default=0, help='Seed of the edits.')
  parser.add_argument('--threads', type=int, default=0,
                      help='torch threads and OMP_NUM_THREADS of each run (default: the '
                      'library default).')
  parser.add_argument('--limit-queries', type=int, default=0,
                      help='Smoke test: the first N queries only (results to results/smoke/).')
  args, beam_args = parser.parse_known_args(argv)
  args.beam_args = [a for a in beam_args if a != '--']
  if args.top_k < 1:
    parser.error('--top-k must be >= 1')
  if not 0 < args.edit_fraction < 1:
    parser.error('--edit-fraction must be in (0, 1)')
  if not os.path.exists(os.path.join(args.cross_encoder, 'config.json')):
    parser.error(f'--cross-encoder {args.cross_encoder!r}: no config.json there')
  return args


def make_inputs(work: str, edit_fraction: float, seed: int, limit_queries: int) -> dict:
  """original/ and edited/ corpus and queries Parquet; what was edited."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  source = require_cranfield()
  corpus = pq.read_table(os.path.join(source, 'corpus.parquet'),
                         columns=['doc_id', 'title', 'text'])
  queries = pq.read_table(os.path.join(source, 'queries.parquet'), columns=['query_id', 'text'])
  if limit_queries:
    queries = queries.slice(0, limit_queries)
  for name in ('original', 'edited'):
    os.makedirs(os.path.join(work, name), exist_ok=True)
  pq.write_table(corpus, os.path.join(work, 'original', 'corpus.parquet'))
  pq.write_table(queries, os.path.join(work, 'original', 'queries.parquet'))

  rng = random.Random(seed)
  docs = corpus.to_pylist()
  usable = [i for i, row in enumerate(docs) if row['text'] and row['text'].strip()]
  picked = rng.sample(usable, round(edit_fraction * len(docs)) + DELETED_DOCS + ADDED_DOCS)
  n_edited = len(picked) - DELETED_DOCS - ADDED_DOCS
  edited = picked[:n_edited]
  deleted = set(picked[n_edited:n_edited + DELETED_DOCS])
  copied = picked[n_edited + DELETED_DOCS:]
  for i in edited:
    first_words = ' '.join(docs[i]['text'].split()[:8])
    docs[i] = dict(docs[i], text=f'{docs[i]["text"]} {DOC_PHRASE} {first_words} .')
  added = [dict(docs[i], doc_id=f'new-{n}', text=f'{docs[i]["text"]} {ADDED_PHRASE}')
           for n, i in enumerate(copied, start=1)]
  kept = [row for i, row in enumerate(docs) if i not in deleted] + added
  pq.write_table(pa.Table.from_pylist(kept, schema=corpus.schema),
                 os.path.join(work, 'edited', 'corpus.parquet'))

  rows = queries.to_pylist()
  edited_queries = rng.sample(range(len(rows)), max(1, round(edit_fraction * len(rows))))
  for i in edited_queries:
    rows[i] = dict(rows[i], text=f'{rows[i]["text"]} {rng.choice(QUERY_WORDS)}')
  pq.write_table(pa.Table.from_pylist(rows, schema=queries.schema),
                 os.path.join(work, 'edited', 'queries.parquet'))
  return {
      'docs': len(docs), 'docs_non_empty': len(usable), 'queries': len(rows),
      'docs_edited': sorted(docs[i]['doc_id'] for i in edited),
      'docs_deleted': sorted(docs[i]['doc_id'] for i in deleted),
      'docs_added': {row['doc_id']: docs[i]['doc_id'] for row, i in zip(added, copied)},
      'queries_edited': sorted(rows[i]['query_id'] for i in edited_queries),
      'docs_after_edits': len(kept),
      'doc_edit': f'append " {DOC_PHRASE} <its first 8 words> ."',
      'added_doc_edit': f'copy of another abstract + " {ADDED_PHRASE}"',
      'query_edit': f'append one of {", ".join(QUERY_WORDS)}',
  }


def run_job(name: str, work: str, inputs: str, previous: str | None,
            args: argparse.Namespace) -> dict:
  """One rerank job in its own process: times, pairs scored and reused."""
  output = os.path.join(work, name)
  shutil.rmtree(output, ignore_errors=True)
  settings = {
      'queries': os.path.join(work, inputs, 'queries.parquet'),
      'corpus': os.path.join(work, inputs, 'corpus.parquet'),
      'output': output, 'previous': previous,
      'cross_encoder': args.cross_encoder,
      'bm25': {'enabled': True, 'k1': 1.5, 'b': 0.75, 'stemmer': 'none'},
      'top_k': args.top_k, 'top_n': 10, 'fusion': 'linear', 'fusion_weights': 'auto',
      'pipeline_args': args.beam_args, 'threads': args.threads,
  }
  print(f'== {name}: rerank on {inputs}/ (top-k {args.top_k}'
        f'{", previous " + os.path.basename(previous) + "/" if previous else ""}) ...',
        flush=True)
  env = {'TOKENIZERS_PARALLELISM': 'false'}
  if args.threads:
    env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
  timed = timed_python(['-c', CHILD, json.dumps(settings)], env=env)
  child = last_json(timed['stdout'])
  report = child['report']
  run = {
      'inputs': inputs, 'previous': previous, 'output': output,
      'job_wall_seconds': report['wall_seconds'],
      'pipeline_seconds': report['pipeline_seconds'],
      'execute_seconds': child['execute_seconds'],
      'execute_cpu_seconds': child['execute_cpu_seconds'],
      'load_average_1min': [child['load_before'], child['load_after']],
      'process_seconds': timed['wall_seconds'],
      'peak_rss_mb': timed['peak_rss_mb'],
      'pairs_scored': report['pairs_scored'],
      'pairs_reused': report['pairs_reused'],
      'candidates_ranked': report['candidates_ranked'],
      'queries_ranked': report['queries_ranked'],
      'scoring_time_saved': report['scoring_time_saved'],
      'pairs_per_second': report['pairs_per_second'],
      'previous_in_report': report.get('previous'),
      'dead_letters': report['dead_letters'],
  }
  print(f'   {run["job_wall_seconds"]:.1f} s (job), {run["pairs_scored"]:,} scored, '
        f'{run["pairs_reused"]:,} reused', flush=True)
  ignored = (report.get('previous') or {}).get('ignored')
  if previous and ignored:
    print(f'   WARNING: the job did not reuse {previous}: {ignored}', flush=True)
  return run


def _read(output: str, name: str, columns: list[str]):
  import polars as pl

  from transforms.io.parquet_sink import committed_files
  files = committed_files(output, name, '--output')
  return pl.read_parquet(files, columns=columns)


def compare(inc: str, fresh: str) -> dict:
  """inc/ vs fresh/: candidate pairs, ranks, scores, and the ranked top-n."""
  import polars as pl
  columns = ['query_id', 'doc_id', 'rank', 'retrieval_rank', 'ce_score', 'score',
             'retrieval_score', 'bm25_score', 'query_text_sha256', 'passage_text_sha256']
  a = _read(inc, 'candidates', columns)
  b = _read(fresh, 'candidates', columns)
  keys = ['query_id', 'doc_id']
  joined = a.join(b, on=keys, how='inner', suffix='_fresh')
  only_inc = a.join(b, on=keys, how='anti').height
  only_fresh = b.join(a, on=keys, how='anti').height

  def differing(column: str) -> int:
    return joined.filter(
        pl.col(column).ne_missing(pl.col(f'{column}_fresh'))).height

  def max_diff(column: str) -> float:
    value = (pl.col(column).cast(pl.Float64) - pl.col(f'{column}_fresh').cast(pl.Float64)).abs()
    result = joined.select(value.max()).item()
    return float(result) if result is not None else 0.0

  def top(output: str) -> dict:
    frame = _read(output, 'ranked', ['query_id', 'doc_id', 'rank']).sort('query_id', 'rank')
    return {q: group['doc_id'].to_list()
            for (q,), group in frame.group_by('query_id', maintain_order=True)}
  top_inc, top_fresh = top(inc), top(fresh)
  differing_top = sorted(q for q in set(top_inc) | set(top_fresh)
                         if top_inc.get(q) != top_fresh.get(q))
  result = {
      'candidates_inc': a.height, 'candidates_fresh': b.height,
      'pairs_only_in_inc': only_inc, 'pairs_only_in_fresh': only_fresh,
      'rank_differs': differing('rank'),
      'retrieval_rank_differs': differing('retrieval_rank'),
      'max_abs_ce_score_diff': max_diff('ce_score'),
      'max_abs_score_diff': max_diff('score'),
      'max_abs_retrieval_score_diff': max_diff('retrieval_score'),
      'hashes_differ': differing('query_text_sha256') + differing('passage_text_sha256'),
      'ranked_queries_inc': len(top_inc), 'ranked_queries_fresh': len(top_fresh),
      'ranked_top_n_differs': len(differing_top),
      'ranked_top_n_differing_queries': differing_top[:20],
      'tolerance': TOLERANCE,
  }
  result['equal'] = (
      only_inc == 0 and only_fresh == 0 and a.height == b.height and a.height > 0 and
      result['rank_differs'] == 0 and result['retrieval_rank_differs'] == 0 and
      result['max_abs_ce_score_diff'] <= TOLERANCE and
      result['max_abs_score_diff'] <= TOLERANCE and
      not differing_top and len(top_inc) == len(top_fresh))
  return result


def print_table(result: dict) -> None:
  runs = result['runs']
  print(f'\n==== incremental rerank, Cranfield: {result["edits"]["queries"]} queries, '
        f'BM25 top-k {result["settings"]["top_k"]}, top-n 10 '
        f'(cross-encoder {os.path.basename(result["settings"]["cross_encoder"])})')
  edits = result['edits']
  print(f'  edits (seed {result["settings"]["seed"]}): {len(edits["docs_edited"])} abstracts '
        f'and {len(edits["queries_edited"])} queries edited, {len(edits["docs_deleted"])} '
        f'abstracts deleted, {len(edits["docs_added"])} added')
  header = (f'  {"run":<7}{"job s":>9}{"execute s":>11}{"process s":>11}{"pipeline s":>12}'
            f'{"cpu s":>9}{"scored":>9}{"reused":>9}{"ranked":>9}')
  print(header)
  for name in RUNS:
    run = runs.get(name)
    if not run:
      continue
    print(f'  {name:<7}{run["job_wall_seconds"]:>9.1f}{run["execute_seconds"]:>11.1f}'
          f'{run["process_seconds"]:>11.1f}{run["pipeline_seconds"]:>12.1f}'
          f'{run["execute_cpu_seconds"]:>9.1f}{run["pairs_scored"]:>9,}{run["pairs_reused"]:>9,}{run["candidates_ranked"]:>9,}')
  ratios = result['ratios']
  print(f'  ratio inc / full (job wall_seconds): {ratios["job"]:.3f} (target <= 0.15: '
        f'{"ok" if ratios["job"] <= 0.15 else "MISSED"}); execute {ratios["execute"]:.3f}, '
        f'process {ratios["process"]:.3f}; inc / fresh {ratios["inc_vs_fresh"]:.3f}')
  print(f'  floor (rerun, nothing scored) / full: {ratios["floor"]:.3f}; pairs scored inc / '
        f'full: {ratios["pairs_scored"]:.3f}; expected inc / full = floor + pairs x (1 - floor) '
        f'= {ratios["expected"]:.3f}; cpu seconds inc / full {ratios["cpu"]:.3f}')
  rates = result['scoring_rates']
  print(f'  scoring rate (pairs / (job s - floor s)): full {rates["full"]:.1f}, inc '
        f'{rates["inc"]:.1f}, fresh {rates["fresh"]:.1f} pairs/s')
  check = result['equality']
  print(f'  inc == fresh: {"yes" if check["equal"] else "NO"} ({check["candidates_inc"]:,} vs '
        f'{check["candidates_fresh"]:,} candidates; only-in-inc {check["pairs_only_in_inc"]}, '
        f'only-in-fresh {check["pairs_only_in_fresh"]}; rank differs '
        f'{check["rank_differs"]}, retrieval_rank differs {check["retrieval_rank_differs"]}; '
        f'max |ce_score diff| {check["max_abs_ce_score_diff"]:.2g}, max |score diff| '
        f'{check["max_abs_score_diff"]:.2g}; top-n differs for '
        f'{check["ranked_top_n_differs"]} queries)')


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  os.environ.setdefault('HF_HUB_OFFLINE', '1')
  os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
  work = args.work
  os.makedirs(work, exist_ok=True)
  started = time.perf_counter()
  edits = make_inputs(work, args.edit_fraction, args.seed, args.limit_queries)
  runs = {
      'full': run_job('full', work, 'original', None, args),
      'inc': run_job('inc', work, 'edited', os.path.join(work, 'full'), args),
      'fresh': run_job('fresh', work, 'edited', None, args),
      'rerun': run_job('rerun', work, 'edited', os.path.join(work, 'inc'), args),
  }
  full, inc = runs['full'], runs['inc']
  floor = runs['rerun']['job_wall_seconds']
  floor_ratio = floor / full['job_wall_seconds']
  pairs_ratio = inc['pairs_scored'] / max(full['pairs_scored'], 1)
  result = {
      'settings': {'top_k': args.top_k, 'top_n': 10, 'cross_encoder': args.cross_encoder,
                   'edit_fraction': args.edit_fraction, 'seed': args.seed,
                   'threads': args.threads or None, 'limit_queries': args.limit_queries or None,
                   'beam_args': args.beam_args, 'work': work,
                   'candidates': 'BM25 only (k1 1.5, b 0.75, no stemmer), text alone',
                   'fusion_weights': 'auto (no tune_qrels: ranked by the cross-encoder)'},
      'edits': edits,
      'runs': runs,
      'ratios': {
          'job': inc['job_wall_seconds'] / full['job_wall_seconds'],
          'execute': inc['execute_seconds'] / full['execute_seconds'],
          'process': inc['process_seconds'] / full['process_seconds'],
          'cpu': inc['execute_cpu_seconds'] / full['execute_cpu_seconds'],
          # The same-size from-scratch run on the edited inputs, as a second baseline.
          'inc_vs_fresh': inc['job_wall_seconds'] / runs['fresh']['job_wall_seconds'],
          'floor': floor_ratio,
          'pairs_scored': pairs_ratio,
          # If every scored pair cost the same as in the full run.
          'expected': floor_ratio + pairs_ratio * (1 - floor_ratio),
      },
      # Pairs per second of scoring, the floor (rerun) taken off each run's time.
      'scoring_rates': {
          name: runs[name]['pairs_scored'] / max(runs[name]['job_wall_seconds'] - floor, 1e-9)
          for name in ('full', 'inc', 'fresh')},
      'target_ratio': 0.15,
      'equality': compare(inc['output'], runs['fresh']['output']),
      'benchmark_seconds': time.perf_counter() - started,
      'written': time.strftime('%Y-%m-%d %H:%M:%S'),
  }
  result['meets_target'] = result['ratios']['job'] <= 0.15 and result['equality']['equal']
  print_table(result)
  name = 'incremental_rerank' + (f'-top{args.top_k}' if args.top_k != 30 else '')
  print('->', write_result(name, result, smoke=bool(args.limit_queries)))


if __name__ == '__main__':
  main()
