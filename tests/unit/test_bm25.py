"""transforms.retrieval.bm25: tokenisation, exact BM25 top-k in Beam against bm25s
and a reference."""
from __future__ import annotations

import dataclasses
import functools
import json
import math

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.fixtures import SHARED_DIR
from transforms.retrieval.bm25 import (
    BM25Settings,
    BM25TopK,
    CorpusStats,
    Hits,
    MergeHitsFn,
    add_block_stats,
    build_query_set,
    merge_hits,
    score_block,
    term_block,
    tokenize,
)

ENGLISH_DOCS = [
    ('e01', 'Boundary layer transition on a flat plate at high Mach numbers.'),
    ('e02', 'Heat transfer in laminar flow past a heated cylinder.'),
    ('e03', 'The laminar boundary layer: heat transfer and skin friction in laminar flows.'),
    ('e04', ''),
    ('e05', 'Supersonic flow over a cone; shock waves and the flow behind the shock.'),
    ('e06', 'Transition of the boundary layer, boundary layer stability, boundary layer noise.'),
    ('e07', 'Heat transfer in laminar flow past a heated cylinder.'),  # Same text as e02.
    ('e08', '   ...   '),  # No tokens either.
    ('e09', 'Buckling of thin cylindrical shells under axial compression.'),
    ('e10', 'Running flows: measured skin friction of running boundary layers.'),
    ('e11', 'Flat plate flutter at supersonic speeds.'),
    ('e12', 'A heated flat plate in hypersonic flow: heat transfer measurements.'),
]
ENGLISH_QUERIES = [
    ('q1', 'heat transfer in laminar boundary layers'),
    ('q2', 'supersonic flow flow'),  # A repeated term counts twice.
    ('q3', 'quantum chromodynamics'),  # No term in the corpus.
    ('q4', ''),  # No tokens.
    ('q5', 'flat plate'),
    ('q6', 'the'),
    ('q7', 'heated cylinder'),  # e02 and e07 tie.
]
RUSSIAN_DOCS = [
    ('r1', 'Способ шифрования данных в облачном хранилище'),
    ('r2', 'СИСТЕМА МОНИТОРИНГА УРОЖАЯ С ПОМОЩЬЮ ДАТЧИКОВ ВЛАЖНОСТИ'),
    ('r3', 'Датчик влажности почвы для систем мониторинга'),
    ('r4', 'Биоразлагаемая упаковка для пищевых продуктов из крахмала'),
    ('r5', ''),
    ('r6', 'Платформа дистанционного обучения врачей; обучение онлайн'),
    ('r7', 'Упаковка, упаковки и упаковочные материалы: биоразлагаемые плёнки'),
    ('r8', 'Мониторинг мониторинга мониторингом: данные датчиков и хранилище данных'),
]
RUSSIAN_QUERIES = [
    ('a', 'датчики для мониторинга урожая'),
    ('b', 'биоразлагаемая упаковка'),
    ('c', 'шифрование данных'),
    ('d', 'обучение врачей онлайн'),
    ('e', 'космический корабль'),
]


def _reference_rows(queries, docs, settings: BM25Settings) -> list[dict]:
  """Brute force, pure Python: every (query, doc) in float64, rounded to float32."""
  doc_tokens = {doc_id: tokenize(text, settings.stemmer) for doc_id, text in docs}
  num_docs = len(docs)
  avg_length = sum(len(t) for t in doc_tokens.values()) / num_docs
  rows = []
  for query_id, text in queries:
    scored = []
    for doc_id, tokens in doc_tokens.items():
      score = 0.0
      for term in tokenize(text, settings.stemmer):
        tf = tokens.count(term)
        if not tf:
          continue
        df = sum(term in other for other in doc_tokens.values())
        idf = math.log(1 + (num_docs - df + 0.5) / (df + 0.5))
        norm = settings.k1 * (1 - settings.b + settings.b * len(tokens) / avg_length)
        score += idf * tf / (tf + norm)
      if score > 0:
        scored.append((-float(np.float32(score)), doc_id))
    for rank, (score, doc_id) in enumerate(sorted(scored)[:settings.top_k], start=1):
      rows.append({'query_id': query_id, 'doc_id': doc_id, 'retrieval_rank': rank,
                   'retrieval_score': -score})
  return rows


def _run(queries, docs, settings: BM25Settings, block_sizes, *checks) -> None:
  """Runs ``BM25TopK`` once per corpus block size (one pipeline) and applies each
  ``check(rows)`` to each size's rows (``assert_that``; a failure fails the run)."""
  with TestPipeline() as pipeline:
    inputs = {'queries': pipeline | 'Queries' >> beam.Create(queries),
              'corpus': pipeline | 'Corpus' >> beam.Create(docs)}
    for size in block_sizes:
      rows = inputs | f'BM25_{size}' >> BM25TopK(settings, corpus_block_size=size)
      for index, check in enumerate(checks):
        assert_that(rows, check, label=f'Check{size}_{index}')


def _same_as(expected: list[dict]):
  """A matcher: exactly ``expected`` (rows compared as sorted reprs)."""
  return functools.partial(_assert_same, sorted(map(repr, map(_ordered, expected))))


def _ordered(row: dict) -> tuple:
  return (row['query_id'], row['retrieval_rank'], row['doc_id'], row['retrieval_score'])


def _assert_same(expected: list[str], rows: list[dict]) -> None:
  assert sorted(map(repr, map(_ordered, rows))) == expected


def _by_query(rows: list[dict]) -> dict[str, list[dict]]:
  out: dict[str, list[dict]] = {}
  for row in sorted(rows, key=lambda r: (r['query_id'], r['retrieval_rank'])):
    out.setdefault(row['query_id'], []).append(row)
  return out


def _assert_matches_bm25s(
    rows: list[dict], queries, docs, settings: BM25Settings, tol: float = 1e-5) -> None:
  """Positive-score hits equal bm25s (method='lucene') within ``tol``, top-k sets too."""
  import bm25s  # The test extra; imported here so the other tests run without it.
  corpus_tokens = [tokenize(text, settings.stemmer) for _, text in docs]
  doc_ids = [doc_id for doc_id, _ in docs]
  retriever = bm25s.BM25(method='lucene', k1=settings.k1, b=settings.b)
  retriever.index(corpus_tokens, show_progress=False)
  ours = _by_query(rows)
  k = min(settings.top_k, len(docs))
  for query_id, text in queries:
    tokens = tokenize(text, settings.stemmer)
    full = (retriever.get_scores(tokens) if tokens
            else np.zeros(len(docs), np.float32)).astype(np.float64)
    got = ours.get(query_id, [])
    positive = int((full > 0).sum())
    assert len(got) == min(settings.top_k, positive), query_id
    for row in got:  # Each score equals bm25s's score of that doc.
      assert abs(row['retrieval_score'] - full[doc_ids.index(row['doc_id'])]) <= tol
    scores = [row['retrieval_score'] for row in got]
    assert scores == sorted(scores, reverse=True)
    assert [r['retrieval_rank'] for r in got] == list(range(1, len(got) + 1))
    # bm25s's own top-k (it pads with score-0 docs): the positive ones, as a set.
    documents, top_scores = retriever.retrieve(
        [tokens], k=k, show_progress=False, n_threads=0, sorted=True)
    theirs = {doc_ids[i] for i, s in zip(documents[0], top_scores[0]) if s > 0}
    mine = {row['doc_id'] for row in got}
    if got:
      kth = got[-1]['retrieval_score']
      for doc_id in mine ^ theirs:  # Only near-ties at the cut may differ.
        assert abs(full[doc_ids.index(doc_id)] - kth) <= tol, (query_id, doc_id)
    else:
      assert not theirs
    np.testing.assert_allclose(
        scores, sorted((s for s in top_scores[0] if s > 0), reverse=True)[:len(scores)],
        atol=tol, rtol=0)


# Tokenisation.

def test_tokenize_unicode_lowercase_letters_and_digits():
  text = 'Heat-Transfer at MACH_3, 42 times: Привет, МИР! Ёжик_x2 αβγ'
  assert tokenize(text) == [
      'heat', 'transfer', 'at', 'mach', '3', '42', 'times', 'привет', 'мир', 'ёжик', 'x2', 'αβγ']
  assert tokenize('') == [] and tokenize(None) == [] and tokenize(' _ ,. __ ') == []


def test_tokenize_stemmers():
  assert tokenize('Running flows, measured FLOWING', 'english') == [
      'run', 'flow', 'measur', 'flow']
  assert tokenize('Поездки, поездка и ПОЕЗДКОЙ', 'russian') == [
      'поездк', 'поездк', 'и', 'поездк']
  # No stemming by default, and the stemmer is applied after lower-casing.
  assert tokenize('Поездки') == ['поездки']
  with pytest.raises(ValueError):
    tokenize('x', 'klingon')


def test_settings_validate():
  assert BM25Settings() == BM25Settings(k1=1.5, b=0.75, stemmer=None, top_k=100)
  for bad in ({'b': 1.5}, {'k1': -1}, {'top_k': 0}, {'stemmer': 'german'}):
    with pytest.raises(ValueError):
      BM25Settings(**bad)
  with pytest.raises(dataclasses.FrozenInstanceError):
    BM25Settings().k1 = 2.0  # type: ignore[misc]


# Scoring without Beam.

def _blocked(queries, docs, settings, sizes):
  """Top-k per query from blocks of ``sizes`` docs, merged by ``MergeHitsFn``."""
  tokenized = [(q, tokenize(t, settings.stemmer)) for q, t in queries]
  query_set = build_query_set(tokenized)
  blocks, start = [], 0
  for size in sizes:
    blocks.append(term_block(docs[start:start + size], query_set.vocabulary, settings.stemmer))
    start += size
  assert start == len(docs)
  stats = CorpusStats()
  for block in blocks:
    stats = add_block_stats(stats, block)
  fn = MergeHitsFn(settings.top_k)
  merged: dict[str, Hits] = {}
  for block in reversed(blocks):
    for query_id, hits in score_block(block, query_set, stats, settings):
      merged[query_id] = fn.add_input(merged.get(query_id), hits)
  return {q: (list(h.doc_ids), h.scores.tolist()) for q, h in merged.items()}


def test_stats_count_empty_docs_and_only_query_terms():
  query_set = build_query_set([('q', ['heat', 'flow', 'heat']), ('p', ['zzz'])])
  assert query_set.vocabulary == ('flow', 'heat', 'zzz')
  assert query_set.term_counts.toarray().tolist() == [[0, 0, 1], [1, 2, 0]]  # ids sorted
  block = term_block(ENGLISH_DOCS, query_set.vocabulary)
  stats = add_block_stats(CorpusStats(), block)
  assert stats.num_docs == 12
  assert stats.total_length == sum(len(tokenize(t)) for _, t in ENGLISH_DOCS)
  # 'flow': e02 e05 e07 e12 ('flows' is another token); 'heat': e02 e03 e07 e12.
  assert stats.doc_freqs.tolist() == [4, 4, 0]
  with pytest.raises(ValueError, match='duplicate query ids'):
    build_query_set([('q', ['a']), ('q', ['b'])])


@pytest.mark.parametrize('sizes', [[12], [1] * 12, [2] * 6, [3] * 4, [5, 7], [11, 1]])
def test_blocks_give_the_same_result(sizes):
  settings = BM25Settings(top_k=3)
  one = _blocked(ENGLISH_QUERIES, ENGLISH_DOCS, settings, [12])
  assert _blocked(ENGLISH_QUERIES, ENGLISH_DOCS, settings, sizes) == one
  expected = _by_query(_reference_rows(ENGLISH_QUERIES, ENGLISH_DOCS, settings))
  assert one == {q: ([r['doc_id'] for r in rows], [r['retrieval_score'] for r in rows])
                 for q, rows in expected.items()}


def test_merge_hits_orders_by_score_then_doc_id():
  a = Hits(np.array(['d', 'b'], dtype=str), np.array([2.0, 1.0], np.float32))
  b = Hits(np.array(['a', 'cc', 'c'], dtype=str), np.array([2.0, 1.0, 1.0], np.float32))
  merged = merge_hits(a, b, 4)
  assert merged.doc_ids.tolist() == ['a', 'd', 'b', 'c']
  assert merge_hits(b, a, 4).doc_ids.tolist() == ['a', 'd', 'b', 'c']
  fn = MergeHitsFn(2)
  accumulator = fn.merge_accumulators([fn.add_input(fn.create_accumulator(), a),
                                       fn.create_accumulator(), fn.add_input(None, b)])
  assert fn.extract_output(accumulator).doc_ids.tolist() == ['a', 'd']


# Beam.

def _check_english(rows: list[dict]) -> None:
  by_query = _by_query(rows)
  # No shared term, or no tokens at all: no rows.
  assert 'q3' not in by_query and 'q4' not in by_query
  # Tied docs (same text) order by doc_id.
  assert [r['doc_id'] for r in by_query['q7'][:2]] == ['e02', 'e07']
  assert by_query['q7'][0]['retrieval_score'] == by_query['q7'][1]['retrieval_score']


def test_english_matches_bm25s_and_reference_for_any_block_size():
  settings = BM25Settings(top_k=4)
  expected = _reference_rows(ENGLISH_QUERIES, ENGLISH_DOCS, settings)
  _assert_matches_bm25s(expected, ENGLISH_QUERIES, ENGLISH_DOCS, settings)
  _check_english(expected)
  _run(ENGLISH_QUERIES, ENGLISH_DOCS, settings, (1000, 1, 2, 3), _same_as(expected),
       _check_english, functools.partial(
           _assert_matches_bm25s, queries=ENGLISH_QUERIES, docs=ENGLISH_DOCS,
           settings=settings))


def test_all_positive_hits_match_bm25s_with_large_k():
  settings = BM25Settings(top_k=100, k1=1.2, b=0.5)
  expected = _reference_rows(ENGLISH_QUERIES, ENGLISH_DOCS, settings)
  _run(ENGLISH_QUERIES, ENGLISH_DOCS, settings, (5,), _same_as(expected), functools.partial(
      _assert_matches_bm25s, queries=ENGLISH_QUERIES, docs=ENGLISH_DOCS, settings=settings))


def test_repeated_query_term_counts_per_occurrence():
  settings = BM25Settings(top_k=10)
  once = _blocked([('q', 'supersonic')], ENGLISH_DOCS, settings, [12])
  twice = _blocked([('q', 'supersonic supersonic')], ENGLISH_DOCS, settings, [12])
  assert once['q'][0] == twice['q'][0]
  np.testing.assert_allclose(twice['q'][1], 2 * np.array(once['q'][1]), rtol=1e-7)


def test_empty_docs_count_in_corpus_statistics():
  settings = BM25Settings(top_k=5)
  with_empty = _blocked([('q', 'boundary layer')], ENGLISH_DOCS, settings, [12])
  non_empty = [d for d in ENGLISH_DOCS if tokenize(d[1])]
  without = _blocked([('q', 'boundary layer')], non_empty, settings, [len(non_empty)])
  assert with_empty['q'][0] == without['q'][0]
  assert with_empty['q'][1] != without['q'][1]  # N and avgdl differ.
  expected = _by_query(_reference_rows([('q', 'boundary layer')], ENGLISH_DOCS, settings))
  assert with_empty['q'][1] == [r['retrieval_score'] for r in expected['q']]


def _check_russian(stemmer: str | None, rows: list[dict]) -> None:
  by_query = _by_query(rows)
  assert 'e' not in by_query
  # Stemmed, 'упаковка' also matches 'упаковки' and 'биоразлагаемая' 'биоразлагаемые'.
  assert by_query['b'][0]['doc_id'] == ('r7' if stemmer else 'r4')


@pytest.mark.parametrize('stemmer', [None, 'russian'])
def test_russian_matches_bm25s(stemmer):
  settings = BM25Settings(top_k=3, stemmer=stemmer)
  expected = _reference_rows(RUSSIAN_QUERIES, RUSSIAN_DOCS, settings)
  _run(RUSSIAN_QUERIES, RUSSIAN_DOCS, settings, (1000, 2), _same_as(expected),
       functools.partial(_check_russian, stemmer), functools.partial(
           _assert_matches_bm25s, queries=RUSSIAN_QUERIES, docs=RUSSIAN_DOCS,
           settings=settings))


def test_seed_samples_with_stemmer_match_bm25s():
  folder = SHARED_DIR / 'seed_samples'
  if not (folder / 'ru_patent_queries_candidates.jsonl').exists():
    pytest.skip(f'no seed samples at {folder}')
  queries, texts = [], []
  with open(folder / 'ru_patent_queries_candidates.jsonl', encoding='utf-8') as handle:
    for line in handle:
      row = json.loads(line)
      queries.append(row['query'])
      texts.extend(row['candidates'])
  with open(folder / 'ru_instruction_query_passage_pairs.jsonl', encoding='utf-8') as handle:
    for line in handle:
      row = json.loads(line)
      queries.append(row['query'])
      texts.append(row['passage'])
  docs = [(f'doc{i:02d}', text) for i, text in enumerate(texts)]
  query_pairs = [(f'q{i:02d}', text) for i, text in enumerate(queries)]
  settings = BM25Settings(top_k=5, stemmer='russian')
  _run(query_pairs, docs, settings, (4,), functools.partial(
      _assert_matches_bm25s, queries=query_pairs, docs=docs, settings=settings),
      lambda rows: len(_by_query(rows)) >= 8 or _fail('too few queries with hits'))


def _fail(message: str) -> None:
  raise AssertionError(message)


def test_counters_and_empty_corpus():
  pipeline = TestPipeline()
  rows = {'queries': pipeline | 'Queries' >> beam.Create(ENGLISH_QUERIES),
          'corpus': pipeline | 'Corpus' >> beam.Create(ENGLISH_DOCS)
          } | BM25TopK(BM25Settings(top_k=2), corpus_block_size=5)
  assert_that(rows | beam.Map(lambda r: r['query_id']) | beam.Distinct(),
              equal_to(['q1', 'q2', 'q5', 'q6', 'q7']))
  empty = {'queries': pipeline | 'Queries2' >> beam.Create(ENGLISH_QUERIES),
           'corpus': pipeline | 'NoDocs' >> beam.Create([])
           } | 'EmptyCorpus' >> BM25TopK(BM25Settings(top_k=2))
  assert_that(empty, equal_to([]), label='NoRows')
  result = pipeline.run()
  result.wait_until_finish()

  def counter(name):
    found = result.metrics().query(MetricsFilter().with_name(name))['counters']
    return sum(c.committed or c.attempted or 0 for c in found)
  assert counter('rerank/bm25_docs_tokenized') == 12
  assert counter('rerank/bm25_empty_docs') == 2
  assert counter('rerank/bm25_docs_scored') == 12
  assert counter('rerank/bm25_corpus_blocks') == 3
  assert counter('rerank/bm25_queries') == 14
