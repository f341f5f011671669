"""The loop job's named steps below its ``execute``: writing the query splits,
checking what was mined, and the report's table."""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional, Sequence

import polars as pl

from transforms.core.errors import UserInputError
from transforms.io.parquet_input import check_parquet_input
from transforms.io.parquet_sink import MANIFEST_NAME, committed_files, read_json
from transforms.ranking import evaluation
from transforms.training.splits import (
    MIN_DEV_QUERIES,
    loop_dev_share,
    mine_dev_fraction,
    split_query_ids,
)

PROG = 'beam-rerank loop'
logger = logging.getLogger(__name__)


# Row key -> label of the printed table, in order.
TABLE_ROWS = {
    'first_stage': 'first stage (dense + BM25)',
    'dense': 'dense, base bi-encoder',
    'bm25': 'BM25',
    'bi_encoder_dense': 'dense, fine-tuned bi-encoder',
    'bi_encoder_first_stage': 'fine-tuned dense + BM25',
    'cross_encoder': 'fine-tuned CE alone',
    'final': 'final (first stage + CE)',
}


def _write_parquet(frame: pl.DataFrame, path: str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  frame.write_parquet(path)
  return path


def write_splits(job: Any, splits_dir: str) -> tuple[dict, dict[str, list[str]]]:
  """The loop's config ``job`` -> split qrels (train, dev, test, tune = train+dev)
  and the tune queries as Parquet under ``splits_dir``; returns their paths and the split ids."""
  qrels = evaluation.read_qrels(check_parquet_input(
      job.qrels, '--qrels', {'query_id': 'id', 'doc_id': 'id', 'relevance': 'int'}).files)
  queries_input = check_parquet_input(job.queries, '--queries', {
      job.columns.query_id: 'id', job.columns.query_text: 'string'})
  queries = evaluation.read_parquet_files(
      queries_input.files, [job.columns.query_id, job.columns.query_text])
  if qrels.height == 0:
    raise UserInputError(f'--qrels {job.qrels!r} holds no judgments')
  test_ids = None
  if job.test_queries:
    test_input = check_parquet_input(
        job.test_queries, '--test-queries', {job.columns.query_id: 'id'})
    test_ids = evaluation.read_parquet_files(
        test_input.files, [job.columns.query_id])[job.columns.query_id].cast(pl.String).to_list()
  judged = qrels['query_id'].to_list()
  known = set(queries[job.columns.query_id].cast(pl.String).to_list())
  test_check = None
  if test_ids is not None:
    given = set(test_ids)
    test_check = {'given': len(given), 'not_in_queries': len(given - known),
                  'not_judged': len(given - set(judged))}
    for key, what in (('not_in_queries', 'are not in --queries'),
                      ('not_judged', 'have no judgment in --qrels')):
      if test_check[key]:
        logger.warning('%s: warning: %d of the %d --test-queries ids %s: they are not test '
                       'queries', PROG, test_check[key], len(given), what)
  splits = split_query_ids(judged, job.test_fraction, job.dev_fraction, test_ids)
  dev_share = loop_dev_share(judged, job.test_fraction, job.dev_fraction, test_ids)
  requested = mine_dev_fraction(job.test_fraction, job.dev_fraction, test_ids is not None)
  if dev_share != requested:
    logger.info('[loop] the dev split takes %d queries (hash < %g instead of %g): the '
                "final stage's fusion guard needs %d", len(splits['dev']), dev_share,
                requested, MIN_DEV_QUERIES)
  for name in ('train', 'test'):
    if not splits[name]:
      raise UserInputError(
          f'no judged query falls in the {name} split ({qrels["query_id"].n_unique():,} '
          'judged queries; change --test-fraction or --test-queries, or judge more queries)')
  if not splits['dev'] and job.dev_fraction > 0:
    logger.warning('%s: warning: no judged query falls in the dev split; training '
                   'keeps its last step', PROG)
  tune_ids = splits['train'] + splits['dev']
  paths = {}
  for name, ids in (*splits.items(), ('tune', tune_ids)):
    paths[name] = _write_parquet(
        qrels.filter(pl.col('query_id').is_in(ids)),
        os.path.join(splits_dir, f'{name}.parquet'))
  for name, ids in (('queries_tune', tune_ids), ('queries_eval', splits['dev'] + splits['test'])):
    paths[name] = _write_parquet(
        queries.filter(pl.col(job.columns.query_id).cast(pl.String).is_in(ids)),
        os.path.join(splits_dir, f'{name}.parquet'))
  missing = {name: sum(q not in known for q in ids) for name, ids in splits.items()}
  if missing['test']:
    logger.warning('%s: warning: %d test queries are judged but not in --queries',
                   PROG, missing['test'])
  return {'files': paths, 'judged_not_in_queries': missing,
          'mine_dev_fraction': dev_share, 'test_queries_check': test_check}, splits


def _mined_query_ids(pairs_dir: str) -> dict[str, set[str]]:
  """``{split: query ids}`` over every format's ``*-ids`` outputs of a mine run."""
  manifest = read_json(os.path.join(pairs_dir, MANIFEST_NAME))
  found: dict[str, set[str]] = {'train': set(), 'dev': set()}
  for name in manifest['outputs']:
    if not name.endswith('-ids'):
      continue
    split = name.rsplit('/', 1)[1][:-len('-ids')]
    files = committed_files(pairs_dir, name, '--pairs', manifest)
    if files:
      ids = evaluation.read_parquet_files(files, ['query_id'])['query_id']
      found[split] |= set(ids.cast(pl.String).to_list())
  return found


def check_mined_splits(pairs_dir: str, splits: Mapping[str, Sequence[str]]) -> dict[str, int]:
  """Raises unless the mined judged queries of each split are the loop's (no
  test query, dev rows only of dev queries); returns queries mined per split."""
  mined = _mined_query_ids(pairs_dir)
  judged = {q: name for name, ids in splits.items() for q in ids}
  for split, ids in mined.items():
    wrong = sorted(q for q in ids if q in judged and judged[q] != split)
    if wrong:
      raise AssertionError(
          f'the mined {split} split holds {len(wrong)} queries of other splits, e.g. '
          f'{[(q, judged[q]) for q in wrong[:3]]}')
  return {
      **{f'judged_{split}': sum(q in judged for q in ids) for split, ids in mined.items()},
      **{f'pseudo_{split}': sum(q not in judged for q in ids) for split, ids in mined.items()},
  }


def first_stage_decision(rerank_report: Mapping) -> dict:
  """A rerank report's first-stage fusion decision ({} without one)."""
  return (rerank_report.get('fusion') or {}).get('first_stage') or {}


def first_stage_bm25_share(rerank_report: Mapping) -> float:
  """The BM25 share of a rerank run's first-stage fusion as tuned (and guarded):
  its BM25 weight over dense + BM25; 1 or 0 when it fell back to BM25 or to
  dense alone (0 without a fusion decision)."""
  weights = first_stage_decision(rerank_report).get('weights') or {}
  dense, lexical = float(weights.get('dense', 0)), float(weights.get('bm25', 0))
  return lexical / (dense + lexical) if dense + lexical > 0 else 0.0


def first_stage_weights_text(rerank_report: Mapping) -> Optional[str]:
  """A rerank run's first-stage fusion weights as ``--first-stage-weights`` takes
  them (``'dense=0.55,bm25=0.45'``; ``'dense=1'`` after a fallback); None
  without a first-stage decision."""
  weights = {s: float(w) for s, w in (
      first_stage_decision(rerank_report).get('weights') or {}).items() if float(w) > 0}
  return ','.join(f'{s}={w!r}' for s, w in weights.items()) or None


def check_tuning(result: Any, splits: Mapping[str, Sequence[str]]) -> None:
  tuned = set(evaluation.tuning_query_ids(read_json(
      os.path.join(result.output_dir, MANIFEST_NAME))))
  leaked = tuned & set(splits['test'])
  if leaked:
    raise AssertionError(f'fusion was tuned on {len(leaked)} test queries')


def metrics_table(runs: Mapping[str, Any]) -> dict[str, dict[str, float]]:
  """The rows of ``TABLE_ROWS`` the runs have: ``{row: {measure: value}}``."""
  sources = {
      'first_stage': ('base', 'retrieval'), 'dense': ('base', 'dense'),
      'bm25': ('base', 'bm25'), 'bi_encoder_dense': ('bi-encoder', 'dense'),
      'bi_encoder_first_stage': ('bi-encoder', 'retrieval'),
      'cross_encoder': ('cross-encoder', 'ce'), 'final': ('cross-encoder', 'final'),
  }
  table = {}
  for row, (run, stage) in sources.items():
    metrics = (runs[run].metrics or {}) if run in runs else {}
    if stage in metrics and not (row == 'bi_encoder_first_stage' and 'bm25' not in metrics):
      table[row] = dict(metrics[stage])
  return table


def fusion_reasons(report: Mapping) -> dict[str, str]:
  """The fusion decisions a loop report holds, one line each: the first stage as
  tuned on train + dev, then each rerank run's final ranking (tuned on dev)."""
  reasons = {}
  tuning = (report.get('first_stage_tuning') or {}).get('first_stage') or {}
  if tuning.get('reason'):
    reasons['first stage (train + dev queries)'] = tuning['reason']
  for name, fusion in (report.get('fusion') or {}).items():
    final = (fusion or {}).get('final') or {}
    if final.get('reason'):
      reasons[f'final, {name} (dev queries)'] = final['reason']
  return reasons


def row_labels(table: Mapping[str, object]) -> dict[str, str]:
  """The printed label of each row (the first stage is dense alone without BM25;
  with both models the cross-encoder reranks the fine-tuned bi-encoder's)."""
  labels = {row: TABLE_ROWS[row] for row in table}
  if 'first_stage' in labels and 'bm25' not in table:
    labels['first_stage'] = 'first stage (dense)'
  if 'bi_encoder_dense' in table:
    first = 'fine-tuned dense + BM25' if 'bm25' in table else 'fine-tuned dense'
    if 'bi_encoder_first_stage' in labels:
      labels['bi_encoder_first_stage'] = first
    for row, label in (('cross_encoder', 'fine-tuned CE alone (on {})'),
                       ('final', 'final ({} + CE)')):
      if row in labels:
        labels[row] = label.format(first)
  return labels


def candidate_depth_note(measures: Sequence[str], top_k: int, bm25: bool) -> Optional[str]:
  """A line under the table for the measures whose cutoff passes the reranked
  depth: they count only each query's candidates, not a deeper retrieval
  (None when every cutoff is within ``top_k``)."""
  deep = [m for m in dict.fromkeys(measures)
          if m.partition('@')[2].isdigit() and int(m.partition('@')[2]) > top_k]
  if not deep:
    return None
  source = f'the dense and BM25 top {top_k}' if bm25 else f'the dense top {top_k}'
  return (f'{", ".join(evaluation.display_name(m) for m in deep)}: over the reranked '
          f'candidates only ({source}); --rerank-top-k for deeper lists')


def format_table(table: Mapping[str, Mapping[str, float]], title: str) -> str:
  """The loop's table: one line per row, one column per measure."""
  measures = list(dict.fromkeys(m for values in table.values() for m in values))
  labels = row_labels(table)
  width = max(len(label) for label in labels.values())
  lines = [f'\n== {title}',
           f'  {"":<{width}}' + ''.join(
               f'{evaluation.display_name(m):>12}' for m in measures)]
  for row, values in table.items():
    lines.append(f'  {labels[row]:<{width}}' + ''.join(
        f'{values[m]:>12.4f}' if m in values else f'{"-":>12}' for m in measures))
  return '\n'.join(lines)
