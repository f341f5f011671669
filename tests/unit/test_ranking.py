"""transforms.ranking.ranked: the ranked contract's schema and deterministic order."""
from __future__ import annotations

import pyarrow as pa

from transforms.ranking.ranked import RANKED_SCHEMA, ranked_sort_key, ranking_key


def test_ranking_key_orders():
  assert ranking_key({'score': 1.0, 'retrieval_rank': None, 'doc_id': 'a'}) < ranking_key(
      {'score': 0.9, 'retrieval_rank': 1, 'doc_id': 'a'})
  # Equal scores: first-stage rank asc, a missing one last, then doc_id.
  rows = [{'score': 0.5, 'retrieval_rank': r, 'doc_id': d}
          for r, d in ((None, 'a'), (3, 'c'), (None, 'b'), (1, 'z'))]
  assert [r['doc_id'] for r in sorted(rows, key=ranking_key)] == ['z', 'c', 'a', 'b']
  assert ranked_sort_key({'query_id': 'q2', 'rank': 1}) > ranked_sort_key(
      {'query_id': 'q1', 'rank': 10})


def test_schema_has_every_signal_nullable():
  names = [f.name for f in RANKED_SCHEMA]
  assert names == ['query_id', 'doc_id', 'rank', 'score', 'retrieval_rank', 'retrieval_score',
                   'dense_score', 'bm25_score', 'supplied_score', 'ce_score',
                   'query_text_sha256', 'passage_text_sha256']
  for name in names[4:]:
    assert RANKED_SCHEMA.field(name).nullable
    assert RANKED_SCHEMA.field(name).type in (pa.int32(), pa.float32(), pa.string())
