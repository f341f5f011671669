"""The ranked contract: its schema and deterministic order (ranks come from ``stage_fusion``)."""
from __future__ import annotations

import math

import pyarrow as pa

ALL_TAG = 'all'

RANKED_SCHEMA = pa.schema([
    pa.field('query_id', pa.string(), nullable=False),
    pa.field('doc_id', pa.string(), nullable=False),
    pa.field('rank', pa.int32(), nullable=False),
    pa.field('score', pa.float32(), nullable=False),
    pa.field('retrieval_rank', pa.int32()),
    pa.field('retrieval_score', pa.float32()),
    pa.field('dense_score', pa.float32()),
    pa.field('bm25_score', pa.float32()),
    pa.field('supplied_score', pa.float32()),
    pa.field('ce_score', pa.float32()),
])


def ranking_key(row: dict) -> tuple:
  """Final score desc, then retrieval score desc, then doc_id asc."""
  retrieval = row.get('retrieval_score')
  return (
      -row['score'],
      -(retrieval if retrieval is not None else -math.inf),
      row['doc_id'])


def ranked_sort_key(row: dict) -> tuple:
  return (row['query_id'], row['rank'])
