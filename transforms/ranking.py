"""Per-query ranking by cross-encoder score, with deterministic ties."""
from __future__ import annotations

import math
from typing import Iterable

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from transforms.texts import METRICS_NAMESPACE

ALL_TAG = 'all'

RANKED_SCHEMA = pa.schema([
    pa.field('query_id', pa.string(), nullable=False),
    pa.field('doc_id', pa.string(), nullable=False),
    pa.field('rank', pa.int32(), nullable=False),
    pa.field('score', pa.float32(), nullable=False),
    pa.field('retrieval_rank', pa.int32()),
    pa.field('retrieval_score', pa.float32()),
])


def ranking_key(row: dict) -> tuple:
  """Cross-encoder score desc, then retrieval score desc, then doc_id asc."""
  retrieval = row.get('retrieval_score')
  return (
      -row['score'],
      -(retrieval if retrieval is not None else -math.inf),
      row['doc_id'])


def rank_candidates(query_id: str, scored: Iterable[dict]) -> list[dict]:
  """One query's scored pairs -> ranked contract rows, rank 1 first."""
  ordered = sorted(scored, key=ranking_key)
  return [{
      'query_id': query_id,
      'doc_id': row['doc_id'],
      'rank': rank,
      'score': row['score'],
      'retrieval_rank': row.get('retrieval_rank'),
      'retrieval_score': row.get('retrieval_score'),
  } for rank, row in enumerate(ordered, start=1)]


class _RankFn(beam.DoFn):
  def __init__(self, top_n: int):
    self._top_n = top_n
    self._queries = Metrics.counter(METRICS_NAMESPACE, 'rerank/queries_ranked')

  def process(self, keyed):
    query_id, scored = keyed
    self._queries.inc()
    for row in rank_candidates(query_id, scored):
      yield beam.pvalue.TaggedOutput(ALL_TAG, row)
      if row['rank'] <= self._top_n:
        yield row


class RankPerQuery(beam.PTransform):
  """Scored pairs -> ``{'top': top-n rows per query, 'all': every row ranked}``."""
  def __init__(self, top_n: int):
    super().__init__()
    self._top_n = top_n

  def expand(self, scored):
    ranked = (
        scored
        | 'KeyByQuery' >> beam.WithKeys(lambda row: row['query_id'])
        | 'GroupByQuery' >> beam.GroupByKey()
        | 'RankQuery' >> beam.ParDo(_RankFn(self._top_n)).with_outputs(
            ALL_TAG, main='top'))
    return {'top': ranked.top, ALL_TAG: ranked[ALL_TAG]}


def ranked_sort_key(row: dict) -> tuple:
  return (row['query_id'], row['rank'])
