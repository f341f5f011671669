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
    # What the cross-encoder saw, for reuse by a later run (rerank --previous).
    pa.field('query_text_sha256', pa.string()),
    pa.field('passage_text_sha256', pa.string()),
])


def ranking_key(row: dict) -> tuple:
  """Final score desc, then first-stage rank asc (none last), then doc_id asc.

  Ties on the final score keep the first stage's order, so a final ranking
  by the first stage alone is exactly the first stage.
  """
  retrieval_rank = row.get('retrieval_rank')
  return (
      -row['score'],
      retrieval_rank if retrieval_rank is not None else math.inf,
      row['doc_id'])


def ranked_sort_key(row: dict) -> tuple:
  return (row['query_id'], row['rank'])
