"""transforms.retrieval.dense: exact blocked dense top-k against brute force."""
from __future__ import annotations

import functools

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from tests.fixtures import brute_force_top_k
from transforms.graphs.encode import embedding_schema, embeddings_to_table
from transforms.retrieval.dense import (
    EmbeddingBlock,
    ExactTopK,
    MergeTopKFn,
    TopK,
    block_top_k,
    candidate_pairs,
    l2_normalize,
    merge_top_k,
    table_to_matrix,
    tables_to_blocks,
    top_k_rows,
)


def _blocked_rows(query_ids, queries, doc_ids, docs, k, sizes, merge='fold'):
  """Top-k rows computed block by block (corpus split by ``sizes``) and merged."""
  assert sum(sizes) == len(doc_ids)
  query_ids = np.array(query_ids, dtype=str)
  partials, start = [], 0
  for size in sizes:
    block = EmbeddingBlock(
        ids=np.array(doc_ids[start:start + size], dtype=str),
        matrix=docs[start:start + size])
    partials.append(block_top_k(query_ids, queries, block, k))
    start += size
  if merge == 'fold':
    merged = functools.reduce(lambda a, b: merge_top_k(a, b, k), partials)
  elif merge == 'reverse':
    merged = functools.reduce(lambda a, b: merge_top_k(a, b, k), partials[::-1])
  else:  # The CombineFn: per-bundle accumulators, then merged.
    fn = MergeTopKFn(k)
    accumulators = []
    for chunk in (partials[0::2], partials[1::2]):
      accumulator = fn.create_accumulator()
      for partial in chunk:
        accumulator = fn.add_input(accumulator, partial)
      accumulators.append(accumulator)
    accumulators.insert(1, fn.create_accumulator())  # An empty bundle.
    merged = fn.extract_output(fn.merge_accumulators(accumulators))
  return list(top_k_rows(merged))


def _random_case(seed=0, num_queries=5, num_docs=23, dim=16):
  rng = np.random.default_rng(seed)
  queries = rng.standard_normal((num_queries, dim)).astype(np.float32)
  docs = rng.standard_normal((num_docs, dim)).astype(np.float32)
  # Doc ids in an order unrelated to their position (and to score order).
  doc_ids = [f'doc-{i:02d}' for i in rng.permutation(num_docs)]
  query_ids = [f'q{i}' for i in range(num_queries)]
  return query_ids, queries, doc_ids, docs


SPLITS = {
    'one_block': [23],
    'singletons': [1] * 23,
    'blocks_smaller_than_k': [3] * 7 + [2],
    'uneven': [7, 1, 15],
    'big_then_small': [20, 2, 1],
}


@pytest.mark.parametrize('merge', ['fold', 'reverse', 'combine_fn'])
@pytest.mark.parametrize('split', sorted(SPLITS))
def test_blocked_top_k_equals_brute_force(split, merge):
  query_ids, queries, doc_ids, docs = _random_case()
  expected = brute_force_top_k(query_ids, queries, doc_ids, docs, 5)
  assert _blocked_rows(query_ids, queries, doc_ids, docs, 5, SPLITS[split], merge) == expected


def test_exact_ties_across_blocks_break_by_doc_id():
  # Integer vectors: every score is exact, and docs sharing a vector tie
  # exactly. The tied copies sit in different blocks, in an order that is not
  # doc_id order, and the tie straddles the k-th place.
  base = {
      'a': [3, 0, 0, 0], 'b': [2, 2, 0, 0], 'c': [0, 1, 1, 0], 'd': [1, 0, 0, 1]}
  layout = [('z9', 'b'), ('m1', 'a'), ('c0', 'c'), ('a5', 'b'), ('k2', 'a'),
            ('b7', 'b'), ('x1', 'd'), ('a1', 'a'), ('q0', 'c')]
  doc_ids = [doc_id for doc_id, _ in layout]
  docs = np.array([base[v] for _, v in layout], dtype=np.float32)
  queries = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=np.float32)
  query_ids = ['q-a', 'q-ab', 'q-zero']
  for k in (1, 2, 4, 9, 12):
    expected = brute_force_top_k(query_ids, queries, doc_ids, docs, k)
    for sizes in ([9], [1] * 9, [2, 2, 2, 2, 1], [4, 5], [1, 8]):
      got = _blocked_rows(query_ids, queries, doc_ids, docs, k, sizes)
      assert got == expected, (k, sizes)
  # Spelled out for one case: q-a scores a* = 3, b* = 2, d = 1, c = 0.
  top4 = [r for r in _blocked_rows(query_ids, queries, doc_ids, docs, 4, [2, 2, 2, 2, 1])
          if r['query_id'] == 'q-a']
  assert [(r['doc_id'], r['retrieval_rank'], r['retrieval_score']) for r in top4] == [
      ('a1', 1, 3.0), ('k2', 2, 3.0), ('m1', 3, 3.0), ('a5', 4, 2.0)]


def test_near_ties_below_float32_resolution_are_exact():
  # Docs that differ from each other by ~1 ulp: float32 matrix products order
  # them differently from the float64 reference (checked below, so the case
  # really tests the rescoring), the blocked result must not.
  rng = np.random.default_rng(0)
  dim, num_docs, k = 64, 200, 10
  v = rng.standard_normal(dim).astype(np.float32)
  v /= np.linalg.norm(v)
  docs = (v + rng.standard_normal((num_docs, dim)).astype(np.float32) * 3e-7).astype(
      np.float32)
  queries = (v + rng.standard_normal((3, dim)).astype(np.float32) * 1e-3).astype(
      np.float32)
  doc_ids = [f'd{i:03d}' for i in range(num_docs)]
  query_ids = ['q0', 'q1', 'q2']
  expected = brute_force_top_k(query_ids, queries, doc_ids, docs, k)

  naive = queries @ docs.T  # float32 products
  naive_rows = []
  for i, query_id in enumerate(query_ids):
    order = sorted(range(num_docs), key=lambda j: (-naive[i, j], doc_ids[j]))[:k]
    naive_rows += [(query_id, doc_ids[j]) for j in order]
  assert naive_rows != [(r['query_id'], r['doc_id']) for r in expected]

  for sizes in ([200], [7] * 28 + [4], [1] * 200, [150, 50]):
    assert _blocked_rows(query_ids, queries, doc_ids, docs, k, sizes) == expected


def _superset_check(scores, k, margin):
  rows, cols = candidate_pairs(scores, k, margin)
  got = set(zip(rows.tolist(), cols.tolist()))
  kth = np.sort(scores, axis=1)[:, -k]
  want = set(zip(*[a.tolist() for a in np.nonzero(scores >= (kth - margin)[:, None])]))
  return got, want


@pytest.mark.parametrize('num_docs', [1024, 1037, 3001])
def test_candidate_pairs_cover_top_k_and_margin(num_docs):
  # Blocks this wide take the group-maximum path (16 slabs; 1037 and 3001
  # leave tail columns outside the slabs).
  rng = np.random.default_rng(num_docs)
  scores = rng.standard_normal((6, num_docs)).astype(np.float32)
  scores[1, :] = 0.5                       # a row of exact ties
  scores[2, ::3] = 2.0                     # many ties above the rest
  scores[3, -5:] = 9.0                     # the best scores in the tail
  for k in (1, 10, 64):
    for margin in (np.zeros(6), np.full(6, 1e-3)):
      got, want = _superset_check(scores, k, margin)
      assert want <= got
    assert len(got) < 6 * num_docs or k == 64  # not everything (except tie rows)


def test_candidate_pairs_rows_are_sorted():
  scores = np.random.default_rng(1).standard_normal((9, 2048)).astype(np.float32)
  rows, _ = candidate_pairs(scores, 100, np.zeros(9))
  assert np.all(np.diff(rows) >= 0)
  assert np.bincount(rows).min() >= 100


@pytest.mark.parametrize('sizes', [[3001], [1500, 1501], [1024, 977, 1000]])
def test_wide_blocks_equal_brute_force_with_ties(sizes):
  rng = np.random.default_rng(7)
  dim, num_docs, k = 32, 3001, 100
  docs = rng.standard_normal((num_docs, dim)).astype(np.float32)
  docs[10:40] = docs[5]                    # exact ties straddling ranks
  v = docs[100] / np.linalg.norm(docs[100])
  docs[200:260] = (v + rng.standard_normal((60, dim)).astype(np.float32) * 3e-7)
  queries = rng.standard_normal((4, dim)).astype(np.float32)
  queries[1] = docs[5]
  queries[2] = v
  doc_ids = [f'd{i:05d}' for i in rng.permutation(num_docs)]
  query_ids = ['q0', 'q1', 'q2', 'q3']
  expected = brute_force_top_k(query_ids, queries, doc_ids, docs, k)
  assert _blocked_rows(query_ids, queries, doc_ids, docs, k, sizes) == expected


def test_k_larger_than_corpus_returns_every_doc():
  query_ids, queries, doc_ids, docs = _random_case(num_docs=4)
  got = _blocked_rows(query_ids, queries, doc_ids, docs, 10, [1, 3])
  assert got == brute_force_top_k(query_ids, queries, doc_ids, docs, 4)
  assert [r['retrieval_rank'] for r in got if r['query_id'] == 'q0'] == [1, 2, 3, 4]


def test_block_top_k_pads_short_results():
  block = EmbeddingBlock(ids=np.array(['b', 'a']), matrix=np.eye(2, dtype=np.float32))
  top = block_top_k(np.array(['q']), np.array([[1.0, 1.0]], np.float32), block, 3)
  assert top.doc_ids.tolist() == [['a', 'b']]
  assert top.scores.tolist() == [[1.0, 1.0]]
  other = TopK(query_ids=np.array(['q']), doc_ids=np.array([['c', '', '']]),
               scores=np.array([[0.5, -np.inf, -np.inf]], np.float32))
  merged = merge_top_k(top, other, 4)
  assert merged.doc_ids.tolist() == [['a', 'b', 'c', '']]
  assert list(top_k_rows(merged)) == [
      {'query_id': 'q', 'doc_id': 'a', 'retrieval_rank': 1, 'retrieval_score': 1.0},
      {'query_id': 'q', 'doc_id': 'b', 'retrieval_rank': 2, 'retrieval_score': 1.0},
      {'query_id': 'q', 'doc_id': 'c', 'retrieval_rank': 3, 'retrieval_score': 0.5},
  ]


def test_merge_top_k_refuses_different_query_blocks():
  a = TopK(np.array(['q1']), np.array([['d']]), np.array([[1.0]], np.float32))
  b = TopK(np.array(['q2']), np.array([['d']]), np.array([[1.0]], np.float32))
  with pytest.raises(ValueError, match='different query blocks'):
    merge_top_k(a, b, 1)


# ------------------------------------------------------------ Arrow inputs

def _table(ids, matrix, precision='float32'):
  schema = embedding_schema(matrix.shape[1], precision, {'test': True})
  return embeddings_to_table(
      [{'id': i, 'embedding': row, 'text_sha256': 'x'} for i, row in zip(ids, matrix)],
      schema)


def test_table_to_matrix_and_blocks():
  matrix = np.arange(12, dtype=np.float32).reshape(4, 3)
  table = _table(['a', 'b', 'c', 'd'], matrix)
  np.testing.assert_array_equal(table_to_matrix(table), matrix)
  np.testing.assert_array_equal(
      table_to_matrix(_table(['a', 'b', 'c', 'd'], matrix, 'float16')), matrix)
  blocks = list(tables_to_blocks(table, 3, normalize=False))
  assert [b.ids.tolist() for b in blocks] == [['a', 'b', 'c'], ['d']]
  np.testing.assert_array_equal(blocks[1].matrix, matrix[3:])
  normalized = list(tables_to_blocks(table, 10, normalize=True))[0].matrix
  np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize('query_groups', [1, 3])
def test_exact_top_k_pipeline_equals_brute_force(query_groups):
  """Also with queries split into groups (separate side inputs and branches)."""
  query_ids, queries, doc_ids, docs = _random_case(seed=3, num_queries=5, num_docs=11, dim=8)
  expected = brute_force_top_k(query_ids, queries, doc_ids, docs, 3)
  with TestPipeline() as p:
    query_tables = p | 'Queries' >> beam.Create([
        _table(query_ids[:2], queries[:2]), _table(query_ids[2:], queries[2:]),
        _table([], np.zeros((0, 8), np.float32))])
    corpus_tables = p | 'Corpus' >> beam.Create([
        _table(doc_ids[:6], docs[:6]), _table(doc_ids[6:], docs[6:])])
    rows = {'queries': query_tables, 'corpus': corpus_tables} | ExactTopK(
        3, corpus_block_size=4, query_block_size=2, query_groups=query_groups)
    assert_that(rows, equal_to(expected))


def test_corpus_blocks_gather_rows_across_tables():
  """Small tables are gathered into blocks of the block size; within a bundle
  at most one smaller block remains, and every row arrives once."""
  from transforms.retrieval.dense import _ToCorpusBlocksFn
  rng = np.random.default_rng(5)
  sizes = [3, 1, 0, 7, 2, 5]
  ids = [f'd{i:02d}' for i in range(sum(sizes))]
  matrix = rng.standard_normal((len(ids), 4)).astype(np.float32)
  tables, start = [], 0
  for size in sizes:
    tables.append(_table(ids[start:start + size], matrix[start:start + size]))
    start += size
  fn = _ToCorpusBlocksFn(block_size=4, normalize=False)
  fn.start_bundle()
  blocks = [block for table in tables for block in fn.process(table)]
  blocks += [windowed.value for windowed in fn.finish_bundle()]
  assert [len(b.ids) for b in blocks] == [4, 4, 4, 4, 2]
  assert [i for b in blocks for i in b.ids] == ids
  np.testing.assert_array_equal(np.concatenate([b.matrix for b in blocks]), matrix)
  assert list(fn.finish_bundle()) == []  # nothing is emitted twice


def _close_to(expected, atol):
  """Matcher: same (query_id, doc_id, rank) rows, scores within ``atol``."""
  def match(actual):
    def key(r):
      return (r['query_id'], r['retrieval_rank'])
    actual, wanted = sorted(actual, key=key), sorted(expected, key=key)
    if [(r['query_id'], r['doc_id'], r['retrieval_rank']) for r in actual] != [
        (r['query_id'], r['doc_id'], r['retrieval_rank']) for r in wanted]:
      raise BeamAssertException(f'rows differ: {actual} != {wanted}')
    for a, w in zip(actual, wanted):
      if abs(a['retrieval_score'] - w['retrieval_score']) > atol:
        raise BeamAssertException(f'score differs: {a} vs {w}')
  return match


def test_exact_top_k_normalizes_to_cosine():
  query_ids, queries, doc_ids, docs = _random_case(seed=5, num_queries=4, num_docs=9, dim=8)
  scale = np.arange(1, 10, dtype=np.float32)[:, None] * 3.5
  docs = docs * scale  # Norms from ~3 to ~30: dot order != cosine order.
  queries = queries * 7.0
  cosine = (queries.astype(np.float64) @ docs.astype(np.float64).T) / np.outer(
      np.linalg.norm(queries.astype(np.float64), axis=1),
      np.linalg.norm(docs.astype(np.float64), axis=1))
  expected = []
  for i, query_id in enumerate(query_ids):
    order = sorted(range(len(doc_ids)), key=lambda j: (-cosine[i, j], doc_ids[j]))[:4]
    expected += [{'query_id': query_id, 'doc_id': doc_ids[j], 'retrieval_rank': r,
                  'retrieval_score': float(cosine[i, j])}
                 for r, j in enumerate(order, start=1)]
  dot_top = brute_force_top_k(query_ids, queries, doc_ids, docs, 4)
  assert [r['doc_id'] for r in dot_top] != [r['doc_id'] for r in expected]
  # Exactly: brute force over the float32-normalized vectors.
  exact = brute_force_top_k(
      query_ids, l2_normalize(queries), doc_ids, l2_normalize(docs), 4)
  with TestPipeline() as p:
    rows = {
        'queries': p | 'Queries' >> beam.Create([_table(query_ids, queries)]),
        'corpus': p | 'Corpus' >> beam.Create([
            _table(doc_ids[:5], docs[:5]), _table(doc_ids[5:], docs[5:])]),
    } | ExactTopK(4, corpus_block_size=2, query_block_size=3, normalize=True)
    assert_that(rows, _close_to(expected, 1e-6), label='CosineOrder')
    assert_that(rows, equal_to(exact), label='ExactOnNormalized')
