"""The evaluate job: ranked + qrels -> nDCG/MRR/Recall per stage."""
from __future__ import annotations

import dataclasses
import io
import logging
from typing import Iterable, Optional

import polars as pl
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines import common
from transforms.core.settings import REQUIRED, setting
from transforms.io.parquet_input import check_parquet_input
from transforms.io.parquet_sink import read_manifest, write_json
from transforms.ranking import evaluation

PROG = 'beam-rerank evaluate'


logger = logging.getLogger(__name__)


def _write_bytes(data: bytes, path: str) -> None:
  with FileSystems.create(
      path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
    handle.write(data)


def evaluate_ranked(
    ranked_dir: str, qrels_pattern: str, metric_names: Iterable[str],
    output_dir: str, query_ids: Optional[Iterable[str]] = None) -> dict:
  """Computes, writes and prints the metrics of a rerank output folder.

  Averages over the judged queries among ``query_ids`` (default: every query
  the run read, ranked or not), less the queries its manifest says fusion
  weights were tuned on. A judged query with no result counts as 0.
  """
  measures = evaluation.parse_measures(metric_names)
  qrels_input = check_parquet_input(
      qrels_pattern, '--qrels',
      {'query_id': 'id', 'doc_id': 'id', 'relevance': 'int'})
  qrels = evaluation.read_qrels(qrels_input.files)
  manifest = read_manifest(ranked_dir, '--ranked')
  ranked, which = evaluation.read_ranked(ranked_dir, manifest)
  tuning = set(evaluation.tuning_query_ids(manifest))
  if query_ids is not None:
    query_ids = list(query_ids)
  else:
    query_ids = evaluation.run_query_ids(ranked_dir, manifest, ranked)
    if query_ids is None:
      query_ids = ranked['query_id'].unique().to_list()
      logger.warning(
          'evaluate: warning: %s was written before rerank recorded its queries without '
          'candidates: a judged query it returned nothing for cannot be counted (as 0), '
          'so the metrics average over the judged queries that have results', ranked_dir)
  scope = evaluation.query_scope(qrels, query_ids, tuning)
  excluded = len(evaluation.query_scope(qrels, query_ids)) - len(scope)
  if excluded and not scope:
    logger.warning(
        'evaluate: warning: every judged query was a tuning query (%d): no held-out '
        'query is left to report on; the metrics below are empty', excluded)
  without = evaluation.queries_without_results(ranked, scope)
  metrics = evaluation.evaluate_stages(ranked, qrels, measures, scope)
  queries = len(scope)
  report = {
      'ranked': ranked_dir,
      'rows_evaluated': which,
      'qrels': qrels_pattern,
      'queries_evaluated': queries,
      'queries_without_results': len(without),
      'query_ids_without_results': without[:100],
      'tuning_queries_excluded': excluded,
      'metrics': {
          stage: dict(zip(group['measure'].to_list(), group['value'].to_list()))
          for (stage,), group in metrics.group_by('stage', maintain_order=True)
      },
  }
  write_json(report, FileSystems.join(output_dir, 'metrics.json'))
  buffer = io.BytesIO()
  metrics.write_parquet(buffer)
  _write_bytes(buffer.getvalue(), FileSystems.join(output_dir, 'metrics.parquet'))
  if tuning:
    scope_words = (f'{queries:,} held-out queries; '
                   f'{excluded:,} tuning queries excluded')
  else:
    scope_words = f'{queries:,} judged queries'
  scope_words += f'; {len(without):,} with no result, counted as 0'
  png = evaluation.plot_report(
      metrics, ranked.filter(~pl.col('query_id').is_in(list(tuning))), qrels,
      f'{ranked_dir} ({scope_words})')
  _write_bytes(png, FileSystems.join(output_dir, 'metrics.png'))
  print(f'\n== metrics ({scope_words}, {which} rows; '
        'linear-gain nDCG, relevance > 0 relevant)')
  print(evaluation.metrics_table(metrics))
  print(f'  written: {FileSystems.join(output_dir, "metrics.json")}, metrics.parquet, metrics.png')
  return report


@dataclasses.dataclass(frozen=True)
class EvaluateJobConfig:
  """The evaluate job's options (the command line's, one field per option)."""
  ranked: str = setting(
      REQUIRED, 'Output folder of the rerank job.', metavar='DIR')
  qrels: str = setting(
      REQUIRED, 'Parquet qrels: query_id, doc_id, relevance (int; > 0 is relevant).',
      metavar='GLOB')
  output: Optional[str] = setting(
      None, 'Where metrics.json/.parquet/.png go (default: the --ranked folder).', metavar='DIR')
  metrics: str = setting(
      ','.join(evaluation.DEFAULT_MEASURES), 'Comma-separated ir-measures names (default: '
      '%(default)s; MRR@k and Recall@k spellings work too).')


@dataclasses.dataclass(frozen=True)
class EvaluateResult:
  """``metrics``: ``{stage: {measure: value}}`` (stages as in
  ``evaluation.STAGES``, e.g. ``'retrieval'``, ``'final'``); ``report`` is
  metrics.json."""
  queries_evaluated: int
  metrics: dict[str, dict[str, float]]
  report: dict


def execute(job: EvaluateJobConfig) -> EvaluateResult:
  """Evaluates a rerank output folder against ``job.qrels``."""
  common.output_manifest(job.ranked, '--ranked', 'ranked', 'rerank')
  report = evaluate_ranked(
      job.ranked, job.qrels, job.metrics.split(','), job.output or job.ranked)
  return EvaluateResult(
      queries_evaluated=report['queries_evaluated'], metrics=report['metrics'], report=report)
