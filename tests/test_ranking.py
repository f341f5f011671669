"""transforms.ranking: per-query ranking by cross-encoder score, deterministic ties."""
from __future__ import annotations

import random

import apache_beam as beam
import pyarrow as pa
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.ranking import (
    ALL_TAG,
    RANKED_SCHEMA,
    RankPerQuery,
    rank_candidates,
    ranked_sort_key,
    ranking_key,
)


def _scored(query_id, doc_id, score, retrieval_score=None, retrieval_rank=None, **extra):
  return dict(query_id=query_id, doc_id=doc_id, score=score,
              retrieval_score=retrieval_score, retrieval_rank=retrieval_rank,
              query_text='q', passage_text='p', num_tokens=3, truncated=False, **extra)


SCORED_Q1 = [
    _scored('q1', 'd5', 0.5, 0.9, 1),
    _scored('q1', 'd1', 2.0, 0.1, 5),
    _scored('q1', 'd4', 0.5, 0.3, 3),     # ties d5 on score, lower retrieval score
    _scored('q1', 'd2', 0.5, 0.3, 4),     # ties d4 on both: doc_id decides
    _scored('q1', 'd3', 0.5, None, None),  # no retrieval score: last of the tie
    _scored('q1', 'd0', -1.0, 0.95, 2),
]
EXPECTED_ORDER_Q1 = ['d1', 'd5', 'd2', 'd4', 'd3', 'd0']


def test_rank_candidates_breaks_ties_by_retrieval_score_then_doc_id():
  for seed in range(5):
    shuffled = SCORED_Q1[:]
    random.Random(seed).shuffle(shuffled)
    ranked = rank_candidates('q1', shuffled)
    assert [r['doc_id'] for r in ranked] == EXPECTED_ORDER_Q1
  assert [r['rank'] for r in ranked] == [1, 2, 3, 4, 5, 6]
  assert ranked[0] == {'query_id': 'q1', 'doc_id': 'd1', 'rank': 1, 'score': 2.0,
                       'retrieval_rank': 5, 'retrieval_score': 0.1}
  assert ranked[4] == {'query_id': 'q1', 'doc_id': 'd3', 'rank': 5, 'score': 0.5,
                       'retrieval_rank': None, 'retrieval_score': None}
  # The rows fit the ranked contract as they are.
  table = pa.Table.from_pylist(ranked, schema=RANKED_SCHEMA)
  assert table.column('rank').to_pylist() == [1, 2, 3, 4, 5, 6]


def test_ranking_key_orders():
  assert ranking_key({'score': 1.0, 'retrieval_score': None, 'doc_id': 'a'}) < ranking_key(
      {'score': 0.9, 'retrieval_score': 5.0, 'doc_id': 'a'})
  assert ranked_sort_key({'query_id': 'q2', 'rank': 1}) > ranked_sort_key(
      {'query_id': 'q1', 'rank': 10})


def test_rank_candidates_empty():
  assert rank_candidates('q', []) == []


def test_rank_per_query_keeps_top_n():
  scored = SCORED_Q1 + [_scored('q2', 'd9', 0.1, 0.2, 1), _scored('q2', 'd8', 0.3, 0.1, 2)]
  all_rows = rank_candidates('q1', SCORED_Q1) + [
      {'query_id': 'q2', 'doc_id': 'd8', 'rank': 1, 'score': 0.3,
       'retrieval_rank': 2, 'retrieval_score': 0.1},
      {'query_id': 'q2', 'doc_id': 'd9', 'rank': 2, 'score': 0.1,
       'retrieval_rank': 1, 'retrieval_score': 0.2}]
  top = [r for r in all_rows if r['rank'] <= 3]
  assert len(top) == 5
  with TestPipeline() as p:
    ranked = p | beam.Create(scored) | RankPerQuery(3)
    assert_that(ranked['top'], equal_to(top), label='Top')
    assert_that(ranked[ALL_TAG], equal_to(all_rows), label='All')
