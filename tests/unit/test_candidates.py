"""transforms.retrieval.candidates: supplied runs checked, deduplicated, merged,
joined with texts."""
from __future__ import annotations

import math

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.core.dead_letters import DEAD_LETTER_TAG, dead_letter
from transforms.core.texts import METRICS_NAMESPACE
from transforms.retrieval.candidates import (
  SOURCE_BM25,
  SOURCE_DENSE,
  SOURCE_SUPPLIED,
  JoinTexts,
  MergeCandidates,
  SuppliedCandidates,
)


def _counter(result, name: str) -> int:
  query = result.metrics().query(
      MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(name))
  return sum(c.committed for c in query['counters'])


def _supplied(query_id, doc_id, score):
  return {'query_id': query_id, 'doc_id': doc_id, 'retrieval_score': score,
          'source': SOURCE_SUPPLIED}


def _dense(query_id, doc_id, score):
  return {'query_id': query_id, 'doc_id': doc_id, 'retrieval_score': score,
          'source': SOURCE_DENSE}


def _bm25(query_id, doc_id, score):
  return {'query_id': query_id, 'doc_id': doc_id, 'retrieval_score': score,
          'source': SOURCE_BM25}


def _merged(query_id, doc_id, dense=None, bm25=None, supplied=None):
  return {'query_id': query_id, 'doc_id': doc_id, 'dense_score': dense,
          'bm25_score': bm25, 'supplied_score': supplied}


# ------------------------------------------------------------ SuppliedCandidates

def test_supplied_candidates_dead_letter_bad_rows():
  rows = [
      {'query_id': 'q1', 'doc_id': 'd1', 'score': 2.5},
      {'query_id': 'q1', 'doc_id': 'd2', 'score': None},   # no score: kept, unranked
      {'query_id': 'q1', 'doc_id': 'd3', 'score': -7},     # an int score
      {'query_id': None, 'doc_id': 'd1', 'score': 1.0},
      {'query_id': '  ', 'doc_id': 'd1', 'score': 1.0},
      {'query_id': 'q2', 'doc_id': None, 'score': 1.0},
      {'query_id': 'q2', 'doc_id': '', 'score': 1.0},
      {'query_id': 'q2', 'doc_id': 'd4', 'score': float('nan')},
      {'query_id': 'q2', 'doc_id': 'd5', 'score': float('inf')},
      {'query_id': 'q2', 'doc_id': 'd6', 'score': float('-inf')},
      {'query_id': 7, 'doc_id': 8, 'score': 0.5},            # integer ids
  ]
  stage = 'rerank/candidates'
  expected_dead = [
      dead_letter(stage, None, 'null_query_id: candidate has no query_id', rows[3]),
      dead_letter(stage, '  \td1', 'null_query_id: candidate has no query_id', rows[4]),
      dead_letter(stage, 'q2\tNone', 'null_doc_id: candidate has no doc_id', rows[5]),
      dead_letter(stage, 'q2\t', 'null_doc_id: candidate has no doc_id', rows[6]),
      dead_letter(stage, 'q2\td4', 'bad_score: score is nan', rows[7]),
      dead_letter(stage, 'q2\td5', 'bad_score: score is inf', rows[8]),
      dead_letter(stage, 'q2\td6', 'bad_score: score is -inf', rows[9]),
  ]
  expected = [
      _supplied('q1', 'd1', 2.5), _supplied('q1', 'd2', None),
      _supplied('q1', 'd3', -7.0), _supplied('7', '8', 0.5)]
  p = TestPipeline()
  out = p | beam.Create(rows) | SuppliedCandidates('score')
  assert_that(out['candidates'], equal_to(expected), label='Candidates')
  assert_that(out[DEAD_LETTER_TAG], equal_to(expected_dead), label='DeadLetters')
  result = p.run()
  result.wait_until_finish()
  assert _counter(result, 'rerank/supplied_candidates_in') == len(rows)
  assert '"score": NaN' in expected_dead[4]['payload']


def test_supplied_candidates_without_score_column():
  rows = [{'query_id': 'q1', 'doc_id': 'd1'}, {'query_id': 'q1', 'doc_id': 'd2'}]
  with TestPipeline() as p:
    out = p | beam.Create(rows) | SuppliedCandidates(None)
    assert_that(out['candidates'], equal_to(
        [_supplied('q1', 'd1', None), _supplied('q1', 'd2', None)]), label='Candidates')
    assert_that(out[DEAD_LETTER_TAG], equal_to([]), label='DeadLetters')


# ------------------------------------------------------------ MergeCandidates

def _merge(candidates):
  p = TestPipeline()
  out = p | beam.Create(candidates) | MergeCandidates()
  return p, out


def test_supplied_rows_keep_their_score():
  candidates = [
      _supplied('q1', 'd9', 1.0), _supplied('q1', 'd3', 5.0),
      _supplied('q1', 'd7', 2.0), _supplied('q1', 'd2', 2.0),
      _supplied('q1', 'd0', None),                               # no score: kept
      _supplied('q2', 'd3', -1.0),
  ]
  expected = [
      _merged('q1', 'd3', supplied=5.0), _merged('q1', 'd2', supplied=2.0),
      _merged('q1', 'd7', supplied=2.0), _merged('q1', 'd9', supplied=1.0),
      _merged('q1', 'd0'), _merged('q2', 'd3', supplied=-1.0),
  ]
  p, out = _merge(candidates)
  assert_that(out['candidates'], equal_to(expected), label='Candidates')
  assert_that(out[DEAD_LETTER_TAG], equal_to([]), label='DeadLetters')
  p.run().wait_until_finish()


def test_duplicate_pairs_scored_once_and_dead_lettered():
  candidates = [
      _supplied('q1', 'd1', 0.5), _supplied('q1', 'd1', 0.9),   # best copy kept
      _supplied('q1', 'd1', 0.1), _supplied('q1', 'd2', 0.7),
      _supplied('q2', 'd1', 0.3),                                # other query: no dup
  ]
  reason = ('duplicate_pair: the same (query_id, doc_id) again; the copy with '
            'the best score was kept')
  expected_dead = [
      dead_letter('rerank/candidates', 'q1\td1', reason, _supplied('q1', 'd1', 0.5)),
      dead_letter('rerank/candidates', 'q1\td1', reason, _supplied('q1', 'd1', 0.1)),
  ]
  expected = [
      _merged('q1', 'd1', supplied=0.9), _merged('q1', 'd2', supplied=0.7),
      _merged('q2', 'd1', supplied=0.3)]
  p, out = _merge(candidates)
  assert_that(out['candidates'], equal_to(expected), label='Candidates')
  assert_that(out[DEAD_LETTER_TAG], equal_to(expected_dead), label='DeadLetters')
  result = p.run()
  result.wait_until_finish()
  assert _counter(result, 'rerank/duplicate_pairs') == 2
  assert _counter(result, 'rerank/union_overlap') == 0


def test_union_is_one_row_per_pair_with_every_score_and_counts_overlap():
  candidates = [
      _dense('q1', 'd1', 0.8), _dense('q1', 'd2', 0.6),
      _dense('q2', 'd5', 0.4),
      _supplied('q1', 'd3', 9.0), _supplied('q1', 'd2', 3.0),  # d2 found by both
      _supplied('q2', 'd5', 1.0),                               # found by both
      _supplied('q3', 'd9', 2.0),
      _bm25('q1', 'd2', 7.5), _bm25('q3', 'd8', 1.5),           # d2: all three
  ]
  expected = [
      _merged('q1', 'd1', dense=0.8), _merged('q1', 'd2', dense=0.6, bm25=7.5, supplied=3.0),
      _merged('q2', 'd5', dense=0.4, supplied=1.0), _merged('q1', 'd3', supplied=9.0),
      _merged('q3', 'd9', supplied=2.0), _merged('q3', 'd8', bm25=1.5),
  ]
  p, out = _merge(candidates)
  assert_that(out['candidates'], equal_to(expected), label='Candidates')
  assert_that(out[DEAD_LETTER_TAG], equal_to([]), label='DeadLetters')
  result = p.run()
  result.wait_until_finish()
  assert _counter(result, 'rerank/union_overlap') == 3
  assert _counter(result, 'rerank/duplicate_pairs') == 0


# ------------------------------------------------------------ JoinTexts

def _text(record_id, text):
  return {'id': record_id, 'text': text, 'text_sha256': f'sha({text})'}


def test_join_texts_attaches_texts_and_dead_letters_unknown_ids():
  queries = [_text('q1', 'query one'), _text('q2', 'query two')]
  corpus = [_text('d1', 'passage one'), _text('d2', 'passage two')]
  good = [
      {'query_id': 'q1', 'doc_id': 'd1', 'retrieval_rank': 1, 'retrieval_score': 0.5},
      {'query_id': 'q1', 'doc_id': 'd2', 'retrieval_rank': 2, 'retrieval_score': 0.25},
      {'query_id': 'q2', 'doc_id': 'd1', 'retrieval_rank': None, 'retrieval_score': None},
  ]
  unknown_doc = {'query_id': 'q1', 'doc_id': 'dX', 'retrieval_rank': 3,
                 'retrieval_score': 0.1}
  unknown_query = {'query_id': 'qX', 'doc_id': 'd2', 'retrieval_rank': 1,
                   'retrieval_score': 0.9}
  both_unknown = {'query_id': 'qY', 'doc_id': 'dY', 'retrieval_rank': 1,
                  'retrieval_score': 0.9}
  texts = {'q1': 'query one', 'q2': 'query two', 'd1': 'passage one', 'd2': 'passage two'}
  expected = [dict(c, query_text=texts[c['query_id']], passage_text=texts[c['doc_id']],
                   query_text_sha256=f"sha({texts[c['query_id']]})",
                   passage_text_sha256=f"sha({texts[c['doc_id']]})")
              for c in good]
  expected_dead = [
      dead_letter('rerank/join', 'q1\tdX',
                  "unknown_doc_id: doc_id 'dX' is not in the input (or was "
                  'dead-lettered there)', unknown_doc),
      dead_letter('rerank/join', 'qY\tdY',
                  "unknown_doc_id: doc_id 'dY' is not in the input (or was "
                  'dead-lettered there)', both_unknown),
      dead_letter('rerank/join', 'qX\td2',
                  "unknown_query_id: query_id 'qX' is not in the input (or was "
                  'dead-lettered there)', dict(unknown_query, passage_text='passage two',
                                               passage_text_sha256='sha(passage two)')),
  ]
  p = TestPipeline()
  out = {
      'candidates': p | 'Candidates' >> beam.Create(
          good + [unknown_doc, unknown_query, both_unknown]),
      'queries': p | 'Queries' >> beam.Create(queries),
      'corpus': p | 'Corpus' >> beam.Create(corpus),
  } | JoinTexts()
  assert_that(out['pairs'], equal_to(expected), label='Pairs')
  assert_that(out[DEAD_LETTER_TAG], equal_to(expected_dead), label='DeadLetters')
  result = p.run()
  result.wait_until_finish()
  assert _counter(result, 'rerank/unknown_doc_id') == 2
  assert _counter(result, 'rerank/unknown_query_id') == 1


@pytest.mark.parametrize('score', [math.nan, math.inf])
def test_bad_score_reason_names_the_value(score):
  with TestPipeline() as p:
    out = p | beam.Create([{'query_id': 'q', 'doc_id': 'd', 's': score}]) | (
        SuppliedCandidates('s'))
    assert_that(
        out[DEAD_LETTER_TAG] | beam.Map(lambda d: d['reason']),
        equal_to([f'bad_score: score is {score}']))
