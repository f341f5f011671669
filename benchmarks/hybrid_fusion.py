"""Hybrid retrieval (dense + BM25) and score fusion on Cranfield and CACM: the issue's figures.

Every figure comes from the rerank job (``pipelines.jobs.rerank.execute``) on a real
collection under ``$DATASETS_DIR`` (default ``../shared/datasets``), with the
packaged all-MiniLM-L6-v2 embeddings of the texts (corpus) and of the
queries, made by the encode job into ``WORK/<collection>/corpus_emb`` and
``query_emb`` (made here when missing). BM25: k1 1.5, b 0.75, the texts,
the product's tokens (``transforms.retrieval.bm25.tokenize``), no stemming unless
``--stemmer english``. Metrics: linear-gain nDCG@10, MRR@10, Recall@100
(ir-measures), averaged over the judged queries in scope, a query without
results counting 0.

Split protocol: odd query ids tune, even ids are reported. ``WORK/<collection>/
qrels_odd.parquet`` / ``qrels_even.parquet`` (made here when missing) hold the
judgments of each half; every query is ranked, the fusion weights are tuned on
the odd judgments (``tune_qrels``) and the metrics are taken on the even ones
(tuning queries excluded by the job as well).

Runs (``--runs``, comma-separated; rows printed: dense, bm25, retrieval = the fused
first stage, and with a cross-encoder ce and final):

  split_linear      (a) dense + BM25, no cross-encoder, linear fusion, weights 'auto'
  split_rrf         (b) the same with RRF (k 60), weights 'auto'
  all_equal_linear  (c) every query, full qrels, no tuning, linear 'dense=0.5,bm25=0.5'
  all_equal_rrf     (c) the same with RRF
  split_linear_ce   (d) (a) plus --cross-encoder DIR (final fusion 'auto' too), with
                    --ce-top-k candidates per source (default 20: CPU scoring is ~30
                    pairs/s), so its Recall@100 is over at most 2 x ce-top-k candidates

Before the runs, an independent reference for the BM25 row: ``bm25s``
(method='lucene', same k1, b, tokens and texts, over the docs the job
indexes: empty docs and every copy of a repeated id are left out, as the job
dead-letters them), its positive-score top-k per query ordered by (score desc,
doc_id asc), scored with ir-measures on the even ids and on all judged queries;
and one for the dense row: brute force (numpy) over the same embeddings. Both
are printed next to the job's rows, and each run's BM25 candidates
(``bm25_score``) are compared with the bm25s lists query by query.

Figures go to WORK/<collection>/hybrid_fusion.json (-title, -english, -topK before
.json for other settings; runs of earlier invocations with the same settings and
other --runs are kept, each with its own settings), a compact table to stdout;
each run's job output to WORK/<collection>/runs[-notitle...]/<run>.

Title: in both collections the text already begins with the title (Cranfield's
abstracts repeat it, CACM's text is title + newline + abstract), so "title + text"
counts the title twice (``--with-title``). By default the text is indexed and
encoded alone: that is the setting whose figures match the issue's reference numbers
(Cranfield BM25 0.5065 on even ids; CACM dense 0.447 / Recall@100 0.745, as in
the CACM README); with the title twice, Cranfield BM25 is 0.5204.

Reproduce (from the repo root; HF_HUB_OFFLINE=1):

  # Cranfield (a)-(c): BM25 0.50-0.51, hybrid auto >= 0.565 on even ids; all 225, equal weights
  .venv/bin/python benchmarks/hybrid_fusion.py --collection cranfield
  # Cranfield (d): hybrid + cross-encoder, auto fusion, >= the hybrid
  .venv/bin/python benchmarks/hybrid_fusion.py --collection cranfield \\
      --runs split_linear_ce --cross-encoder CE_DIR [--ce-top-k 20]
  # CACM (a)-(c): hybrid auto >= 0.52 on even ids (dense 0.445, BM25 0.403 there)
  .venv/bin/python benchmarks/hybrid_fusion.py --collection cacm
  # The bm25s / numpy references alone (no rerank job)
  .venv/bin/python benchmarks/hybrid_fusion.py --collection cranfield --reference-only
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
DATASETS = os.environ.get('DATASETS_DIR', os.path.join(REPO, '..', 'shared', 'datasets'))
COLLECTIONS = ('cranfield', 'cacm')
MEASURES = ('nDCG@10', 'RR@10', 'R@100')
SHOWN = ('nDCG@10', 'MRR@10', 'Recall@100')
STAGES = ('dense', 'bm25', 'supplied', 'retrieval', 'ce', 'final')
EQUAL = 'dense=0.5,bm25=0.5'
RUNS = {
    'split_linear': {'fusion': 'linear', 'fusion_weights': 'auto', 'split': True},
    'split_rrf': {'fusion': 'rrf', 'fusion_weights': 'auto', 'split': True},
    'all_equal_linear': {'fusion': 'linear', 'fusion_weights': EQUAL, 'split': False},
    'all_equal_rrf': {'fusion': 'rrf', 'fusion_weights': EQUAL, 'split': False},
    'split_linear_ce': {'fusion': 'linear', 'fusion_weights': 'auto', 'split': True, 'ce': True},
}
DEFAULT_RUNS = ('split_linear', 'split_rrf', 'all_equal_linear', 'all_equal_rrf')
# The issue's acceptance figures (nDCG@10 on even ids, auto fusion = split_linear).
TARGETS = {
    'cranfield': {'bm25_range': (0.50, 0.51), 'hybrid_min': 0.565},
    'cacm': {'hybrid_min': 0.52},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--collection', required=True, choices=COLLECTIONS)
  parser.add_argument('--work', default='/tmp/bench',
                      help='Embeddings, splits, run folders and the JSON go to WORK/COLLECTION.')
  parser.add_argument('--cross-encoder', default=None, metavar='DIR',
                      help='A cross-encoder for the split_linear_ce run (added to --runs).')
  parser.add_argument('--ce-top-k', type=int, default=20,
                      help='Candidates per source (dense, BM25) of the cross-encoder run.')
  parser.add_argument('--top-k', type=int, default=100,
                      help='Candidates per source (dense, BM25) of the other runs.')
  parser.add_argument('--stemmer', choices=('none', 'english'), default='none',
                      help='BM25 stemmer, job and reference alike (default: none).')
  parser.add_argument('--with-title', action='store_true',
                      help='Put the title in front of the text (again: the texts already '
                      'begin with it), for BM25 and for the corpus embeddings '
                      '(WORK/COLLECTION/corpus_emb; text only: corpus_emb_notitle).')
  parser.add_argument('--runs', default=None,
                      help=f'Comma-separated, of {", ".join(RUNS)} (default: '
                      f'{",".join(DEFAULT_RUNS)}, plus split_linear_ce with --cross-encoder).')
  parser.add_argument('--reference-only', action='store_true',
                      help='Only the bm25s and numpy references, no rerank job.')
  args = parser.parse_args(argv)
  if args.top_k < 1 or args.ce_top_k < 1:
    parser.error('--top-k and --ce-top-k must be >= 1')
  if args.runs is None:
    runs = list(DEFAULT_RUNS) + (['split_linear_ce'] if args.cross_encoder else [])
  else:
    runs = [name.strip() for name in args.runs.split(',') if name.strip()]
    unknown = [name for name in runs if name not in RUNS]
    if unknown:
      parser.error(f'unknown run(s) {unknown}; known: {", ".join(RUNS)}')
  if any(RUNS[name].get('ce') for name in runs) and not args.cross_encoder:
    parser.error('split_linear_ce needs --cross-encoder DIR')
  args.runs = [] if args.reference_only else runs
  args.stemmer = None if args.stemmer == 'none' else args.stemmer
  return args


@dataclasses.dataclass(frozen=True)
class Paths:
  source: str
  work: str
  corpus: str
  queries: str
  qrels: str
  qrels_odd: str
  qrels_even: str
  corpus_emb: str
  query_emb: str


def paths_for(collection: str, work: str, title: bool) -> Paths:
  source = os.path.join(DATASETS, collection)
  here = os.path.join(work, collection)
  return Paths(
      source=source, work=here,
      corpus=os.path.join(source, 'corpus.parquet'),
      queries=os.path.join(source, 'queries.parquet'),
      qrels=os.path.join(source, 'qrels.parquet'),
      qrels_odd=os.path.join(here, 'qrels_odd.parquet'),
      qrels_even=os.path.join(here, 'qrels_even.parquet'),
      corpus_emb=os.path.join(here, 'corpus_emb' if title else 'corpus_emb_notitle'),
      query_emb=os.path.join(here, 'query_emb'))


def prepare(paths: Paths, title: bool) -> dict:
  """Embeddings and qrels halves, made when missing; the split sizes."""
  import polars as pl
  if not os.path.exists(paths.corpus):
    sys.exit(f'{paths.corpus} not found (set DATASETS_DIR)')
  os.makedirs(paths.work, exist_ok=True)
  seconds = {}
  for directory, source, kwargs in (
      (paths.corpus_emb, paths.corpus, {'title_column': 'title' if title else None}),
      (paths.query_emb, paths.queries, {'id_column': 'query_id'})):
    if not os.path.exists(os.path.join(directory, 'manifest.json')):
      from pipelines import encode
      started = time.perf_counter()
      encode.execute(encode.EncodeJobConfig(input=source, output=directory, **kwargs))
      seconds[os.path.basename(directory)] = time.perf_counter() - started
  qrels = pl.read_parquet(paths.qrels).with_columns(
      pl.col('query_id').cast(pl.String), pl.col('doc_id').cast(pl.String))
  number = pl.col('query_id').cast(pl.Int64, strict=True)
  halves = {'odd': qrels.filter(number % 2 == 1), 'even': qrels.filter(number % 2 == 0)}
  for name, path in (('odd', paths.qrels_odd), ('even', paths.qrels_even)):
    if not os.path.exists(path):
      halves[name].write_parquet(path)
  queries = pl.read_parquet(paths.queries, columns=['query_id'])['query_id'].cast(pl.Int64)
  return {
      'queries': len(queries),
      'queries_odd': int((queries % 2 == 1).sum()),
      'queries_even': int((queries % 2 == 0).sum()),
      'judged_all': qrels['query_id'].n_unique(),
      'judged_odd': halves['odd']['query_id'].n_unique(),
      'judged_even': halves['even']['query_id'].n_unique(),
      'encode_seconds_this_run': seconds,
  }


def _measures():
  import ir_measures
  return [ir_measures.parse_measure(name) for name in MEASURES]


def score_run(ranked: dict[str, list[str]], qrels_path: str) -> dict:
  """Mean metrics of ``{query_id: [doc_id, ...] in rank order}`` over the judged
  queries of ``qrels_path`` (a query without results counts 0)."""
  import ir_measures
  import polars as pl
  qrels = pl.read_parquet(qrels_path)
  qrel_rows = [ir_measures.Qrel(str(q), str(d), int(r))
               for q, d, r in qrels.select('query_id', 'doc_id', 'relevance').iter_rows()]
  judged = sorted({row.query_id for row in qrel_rows})
  run_rows = [ir_measures.ScoredDoc(q, d, float(-rank))  # Ranks as scores: no re-tie-breaking.
              for q in judged for rank, d in enumerate(ranked.get(q, []), start=1)]
  sums = {str(m): 0.0 for m in _measures()}
  for value in ir_measures.iter_calc(_measures(), qrel_rows, run_rows):
    sums[str(value.measure)] += value.value
  return {'queries': len(judged),
          **{shown: sums[name] / len(judged) for name, shown in zip(MEASURES, SHOWN)}}


def _top(doc_ids: np.ndarray, scores: np.ndarray, k: int, positive: bool) -> list[str]:
  """Top ``k`` of one query by (score desc, doc_id asc)."""
  order = np.lexsort((doc_ids, -scores))[:k]
  if positive:
    order = order[scores[order] > 0]
  return doc_ids[order].tolist()


def reference_bm25(paths: Paths, stemmer: str | None, top_k: int, title: bool
                   ) -> tuple[dict, dict[str, list[tuple[str, float]]]]:
  """bm25s (method='lucene') on the product's tokens: metrics on even ids and all,
  and the ranked ``(doc_id, score)`` lists per query.

  The corpus is the one the job indexes, after its input validation
  (``transforms.texts``): a doc whose (title +) text is null, empty or blank is
  left out (Cranfield docs 471 and 995), and so is every copy of a doc id that
  occurs more than once (CACM has two docs '28'); the job dead-letters them, so
  they count neither in N nor in avgdl.
  """
  import collections

  import bm25s
  import pyarrow.parquet as pq

  from transforms.core.texts import join_title
  from transforms.retrieval.bm25 import tokenize
  started = time.perf_counter()
  corpus = pq.read_table(paths.corpus).to_pylist()
  copies = collections.Counter(str(row['doc_id']) for row in corpus)
  texts = [join_title(row.get('title'), row['text'], '\n') if title else row['text']
           for row in corpus]
  kept = [i for i, row in enumerate(corpus)
          if copies[str(row['doc_id'])] == 1 and texts[i] is not None and texts[i].strip()]
  left_out = sorted({str(corpus[i]['doc_id']) for i in range(len(corpus))} -
                    {str(corpus[i]['doc_id']) for i in kept})
  doc_ids = np.array([str(corpus[i]['doc_id']) for i in kept])
  texts = [texts[i] for i in kept]
  queries = pq.read_table(paths.queries).to_pylist()
  retriever = bm25s.BM25(method='lucene', k1=1.5, b=0.75)
  retriever.index([tokenize(text, stemmer) for text in texts], show_progress=False)
  position = {doc_id: i for i, doc_id in enumerate(doc_ids.tolist())}
  lists = {}
  for row in queries:
    tokens = tokenize(row['text'], stemmer)
    scores = np.asarray(retriever.get_scores(tokens) if tokens
                        else np.zeros(len(doc_ids), np.float32))
    top = _top(doc_ids, scores, top_k, positive=True)
    lists[str(row['query_id'])] = [(d, float(scores[position[d]])) for d in top]
  ranked = {q: [d for d, _ in hits] for q, hits in lists.items()}
  return {
      'library': f'bm25s {bm25s.__version__} method=lucene k1=1.5 b=0.75',
      'stemmer': stemmer, 'title': title, 'top_k': top_k,
      'docs': len(doc_ids), 'doc_ids_left_out': left_out,
      'even': score_run(ranked, paths.qrels_even),
      'all': score_run(ranked, paths.qrels),
      'seconds': time.perf_counter() - started,
  }, lists


def compare_bm25_lists(output: str, reference: dict[str, list[tuple[str, float]]]) -> dict:
  """The job's BM25 candidates (rows with ``bm25_score``, by score desc, doc_id asc)
  against the bm25s lists: identical lists, and the largest score difference."""
  import glob

  import polars as pl
  files = sorted(glob.glob(os.path.join(output, 'candidates', '*.parquet')))
  if not files:
    return {'compared': False, 'why': 'no candidates output'}
  rows = pl.read_parquet(files, columns=['query_id', 'doc_id', 'bm25_score']).filter(
      pl.col('bm25_score').is_not_null()).sort(
          ['query_id', 'bm25_score', 'doc_id'], descending=[False, True, False])
  ours = {q: list(zip(group['doc_id'].to_list(), group['bm25_score'].to_list()))
          for (q,), group in rows.group_by('query_id', maintain_order=True)}
  identical, max_diff, differing = 0, 0.0, []
  for query_id, theirs in reference.items():
    mine = ours.get(query_id, [])
    their_score = dict(theirs)
    for doc_id, score in mine:
      if doc_id in their_score:
        max_diff = max(max_diff, abs(score - their_score[doc_id]))
    if [d for d, _ in mine] == [d for d, _ in theirs]:
      identical += 1
    else:
      differing.append(query_id)
  return {'compared': True, 'queries': len(reference), 'identical_lists': identical,
          'differing_queries': differing[:20],
          'max_abs_score_diff_common_docs': max_diff}


def reference_dense(paths: Paths, top_k: int) -> dict:
  """Brute-force cosine top-k over the same embedding shards (numpy)."""
  import glob

  import polars as pl
  started = time.perf_counter()

  def load(directory):
    frame = pl.read_parquet(sorted(glob.glob(os.path.join(directory, 'part-*.parquet'))))
    vectors = np.array(frame['embedding'].to_list(), dtype=np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return np.array([str(x) for x in frame['id'].to_list()]), vectors
  doc_ids, docs = load(paths.corpus_emb)
  query_ids, queries = load(paths.query_emb)
  scores = (queries @ docs.T).astype(np.float32)
  ranked = {q: _top(doc_ids, scores[i], top_k, positive=False) for i, q in enumerate(query_ids)}
  return {'top_k': top_k, 'even': score_run(ranked, paths.qrels_even),
          'all': score_run(ranked, paths.qrels), 'seconds': time.perf_counter() - started}


def rerank_config(**fields):
  """``RerankJobConfig(**fields)``, with a clear message when the job lacks a field."""
  from pipelines import rerank
  known = {field.name for field in dataclasses.fields(rerank.RerankJobConfig)}
  missing = sorted(set(fields) - known - {'doc_title_column'})
  if missing:
    raise SystemExit(f'pipelines.jobs.rerank.RerankJobConfig has no field(s) {missing} yet '
                     '(the hybrid/fusion options); only --reference-only can run')
  from transforms.core.texts import TextColumns
  from transforms.retrieval.bm25 import BM25Options
  fields = dict(fields)
  fields['columns'] = TextColumns(doc_title=fields.pop('doc_title_column'))
  fields['bm25'] = BM25Options(**fields.pop('bm25'))
  return rerank.RerankJobConfig(**fields)


def run_one(name: str, paths: Paths, args: argparse.Namespace, title: bool, suffix: str,
            bm25_lists: dict[str, list[tuple[str, float]]]) -> dict:
  """One rerank job run: its settings, metrics per stage and fusion decisions."""
  from pipelines import rerank
  spec = RUNS[name]
  top_k = args.ce_top_k if spec.get('ce') else args.top_k
  output = os.path.join(paths.work, 'runs' + suffix, name)
  shutil.rmtree(output, ignore_errors=True)
  settings = {
      'queries': paths.queries, 'corpus': paths.corpus, 'output': output,
      'doc_title_column': 'title' if title else None,
      'query_embeddings': paths.query_emb, 'corpus_embeddings': paths.corpus_emb,
      'top_k': top_k,
      'bm25': {'enabled': True, 'k1': 1.5, 'b': 0.75, 'stemmer': args.stemmer or 'none'},
      'fusion': spec['fusion'],
      'fusion_weights': spec['fusion_weights'],
      'tune_qrels': paths.qrels_odd if spec['split'] else None,
      'qrels': paths.qrels_even if spec['split'] else paths.qrels,
      'cross_encoder': args.cross_encoder if spec.get('ce') else 'none',
  }
  config = rerank_config(**settings)
  print(f'\n== {name}: rerank job ({spec["fusion"]}, weights {spec["fusion_weights"]}, '
        f'{"odd tune / even reported" if spec["split"] else "all queries, no tuning"}, '
        f'top-k {top_k} per source'
        f'{", cross-encoder " + args.cross_encoder if spec.get("ce") else ""})', flush=True)
  started = time.perf_counter()
  result = rerank.execute(config)
  seconds = time.perf_counter() - started
  report = result.report
  evaluated = report.get('evaluation') or {}
  return {
      'settings': settings,
      'wall_seconds': seconds,
      'queries_evaluated': evaluated.get('queries_evaluated'),
      'metrics': evaluated.get('metrics') or {},
      'fusion': report.get('fusion'),
      'pairs_scored': report.get('pairs_scored'),
      'bm25_vs_bm25s': compare_bm25_lists(output, bm25_lists) if top_k == args.top_k
      else {'compared': False, 'why': f'top-k {top_k} here, {args.top_k} in the reference'},
      'note': (f'cross-encoder run: {top_k} candidates per source (CPU scoring ~30 pairs/s), '
               f'so Recall@100 is over at most {2 * top_k} candidates') if spec.get('ce') else None,
  }


def _decision_line(label: str, decision: dict | None) -> str:
  if not decision:
    return f'  {label}: -'
  weights = decision.get('weights')
  if isinstance(weights, dict):
    weights = ', '.join(f'{k}={v:.3g}' if isinstance(v, (int, float)) else f'{k}={v}'
                        for k, v in weights.items())
  return (f'  {label}: {decision.get("method")} [{weights}]'
          f'{" FELL BACK" if decision.get("fell_back") else ""}: {decision.get("reason")}')


def _row(label: str, values: dict) -> str:
  cells = ''.join(f'{values[m]:>12.4f}' if isinstance(values.get(m), (int, float))
                  else f'{"-":>12}' for m in SHOWN)
  return f'  {label:<28}{cells}'


def print_table(collection: str, result: dict) -> None:
  print(f'\n==== {collection}: hybrid fusion figures '
        f'(stemmer {result["settings"]["stemmer"] or "none"}, '
        f'{"title + text" if result["settings"]["title"] else "text only"})')
  split = result['split']
  print(f'  split: {split["judged_odd"]} judged odd-id queries tune, '
        f'{split["judged_even"]} judged even-id queries reported ({split["judged_all"]} judged)')
  print(f'  {"":<28}' + ''.join(f'{m:>12}' for m in SHOWN))
  ref = result['reference']
  print(_row('bm25s reference (even)', ref['bm25']['even']))
  print(_row('numpy dense reference (even)', ref['dense']['even']))
  print(_row('bm25s reference (all)', ref['bm25']['all']))
  print(_row('numpy dense reference (all)', ref['dense']['all']))
  for name, run in sorted(result['runs'].items(), key=lambda item: list(RUNS).index(item[0])):
    scope = 'even' if run['settings']['tune_qrels'] else 'all'
    print(f'  -- {name} ({run["queries_evaluated"]} queries, {scope}; '
          f'{run["wall_seconds"]:.0f} s)')
    for stage in STAGES:
      if stage in run['metrics']:
        print(_row(f'{stage}', run['metrics'][stage]))
    fusion = run.get('fusion') or {}
    print(_decision_line('fusion first stage', fusion.get('first_stage')))
    if fusion.get('final'):
      print(_decision_line('fusion final', fusion.get('final')))
    if run.get('note'):
      print(f'  note: {run["note"]}')
  for line in result.get('checks', []):
    print(f'  check: {line}')


def checks(collection: str, result: dict) -> list[str]:
  """The BM25 row against bm25s, the dense row against numpy, and the issue's targets."""
  lines = []
  ref = result['reference']
  for name, run in result['runs'].items():
    scope = 'even' if run['settings']['tune_qrels'] else 'all'
    for stage, reference in (('bm25', ref['bm25']), ('dense', ref['dense'])):
      ours = run['metrics'].get(stage, {}).get('nDCG@10')
      theirs = reference[scope]['nDCG@10']
      if ours is not None and run['settings']['top_k'] == reference['top_k']:
        lines.append(f'{name} {stage} nDCG@10 {ours:.4f} vs reference {theirs:.4f} '
                     f'({scope}; diff {ours - theirs:+.4f})')
    lists = run.get('bm25_vs_bm25s') or {}
    if lists.get('compared'):
      lines.append(f'{name} BM25 lists equal to bm25s: {lists["identical_lists"]}/'
                   f'{lists["queries"]} queries, max |score diff| '
                   f'{lists["max_abs_score_diff_common_docs"]:.2g}')
    expected = result['split']['judged_even' if scope == 'even' else 'judged_all']
    if run['queries_evaluated'] is not None and run['queries_evaluated'] != expected:
      lines.append(f'{name}: {run["queries_evaluated"]} queries evaluated, expected {expected}')
  target = TARGETS[collection]
  hybrid = result['runs'].get('split_linear', {}).get('metrics', {})
  if 'bm25_range' in target and 'bm25' in hybrid:
    low, high = target['bm25_range']
    value = hybrid['bm25']['nDCG@10']
    lines.append(f'target BM25 even nDCG@10 in [{low}, {high}]: {value:.4f} '
                 f'{"ok" if low <= round(value, 2) <= high else "MISSED"}')
  if 'retrieval' in hybrid:
    value = hybrid['retrieval']['nDCG@10']
    lines.append(f'target hybrid (linear auto) even nDCG@10 >= {target["hybrid_min"]}: '
                 f'{value:.4f} {"ok" if value >= target["hybrid_min"] else "MISSED"}')
  ce_run = result['runs'].get('split_linear_ce', {})
  with_ce = ce_run.get('metrics', {})
  if 'final' in with_ce and 'retrieval' in with_ce:
    final, base = with_ce['final']['nDCG@10'], with_ce['retrieval']['nDCG@10']
    lines.append(f'target hybrid + CE final {final:.4f} >= its hybrid first stage {base:.4f} '
                 f'(same candidates, top-k {ce_run["settings"]["top_k"]} per source): '
                 f'{"ok" if final >= base else "MISSED"}')
    top_k = result['settings']['top_k']
    if 'retrieval' in hybrid and ce_run['settings']['top_k'] != top_k:
      lines.append(f'  (split_linear at top-k {top_k}: hybrid '
                   f'{hybrid["retrieval"]["nDCG@10"]:.4f}; fewer candidates change the '
                   'per-query normalisation, so the two hybrids differ)')
  return lines


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  os.environ.setdefault('HF_HUB_OFFLINE', '1')
  title = args.with_title
  paths = paths_for(args.collection, args.work, title)
  split = prepare(paths, title)
  settings = {'stemmer': args.stemmer, 'title': title, 'top_k': args.top_k}
  suffix = ''.join(part for part, on in (
      ('-title', title), (f'-{args.stemmer}', args.stemmer not in (None, 'none')),
      (f'-top{args.top_k}', args.top_k != 100)) if on)
  json_path = os.path.join(paths.work, f'hybrid_fusion{suffix}.json')
  previous = {}
  if os.path.exists(json_path):
    with open(json_path) as handle:
      previous = json.load(handle)
    if previous.get('settings') != settings:
      previous = {}  # Other settings: earlier runs do not belong with these.
  bm25_reference, bm25_lists = reference_bm25(paths, args.stemmer, args.top_k, title)
  result = {
      'collection': args.collection, 'settings': settings, 'split': split,
      'reference': {'bm25': bm25_reference, 'dense': reference_dense(paths, args.top_k)},
      'runs': dict(previous.get('runs', {})),
      'grading': 'linear-gain nDCG (ir-measures), stored relevance; mean over judged queries',
  }
  for run in result['runs'].values():  # Earlier runs: compared with this reference.
    output = run['settings']['output']
    if run['settings']['top_k'] == args.top_k and os.path.isdir(output):
      run['bm25_vs_bm25s'] = compare_bm25_lists(output, bm25_lists)
  for name in args.runs:
    result['runs'][name] = run_one(name, paths, args, title, suffix, bm25_lists)
  result['checks'] = checks(args.collection, result)
  result['written'] = time.strftime('%Y-%m-%d %H:%M:%S')
  with open(json_path, 'w') as handle:
    json.dump(result, handle, indent=2, sort_keys=True, default=str)
  print_table(args.collection, result)
  print(f'\n-> {json_path}')


if __name__ == '__main__':
  main()
