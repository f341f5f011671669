"""Cross-encoder scoring: CrossEncoderHandler and ScorePairs agree with CrossEncoder.predict."""
from __future__ import annotations

import itertools

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from tests.fixtures import CORPUS, QUERIES, predict
from transforms.core.dead_letters import DEAD_LETTER_TAG
from transforms.core.texts import METRICS_NAMESPACE
from transforms.models.cross_encoder import CrossEncoderHandler
from transforms.models.inference_settings import InferenceSettings
from transforms.models.model_info import fingerprint_model_dir, inspect_cross_encoder
from transforms.ranking.scoring import ScorePairs

LONG_PASSAGE = ' '.join(f'sentence {i} about shock waves and wings.' for i in range(30))


def _pairs() -> list[dict]:
  docs = ['d01', 'd02', 'd04', 'd06', 'd08', 'd11']
  pairs = [
      {'query_id': q, 'doc_id': d, 'query_text': QUERIES[q], 'passage_text': CORPUS[d],
       'retrieval_rank': None, 'retrieval_score': None}
      for q, d in itertools.product(sorted(QUERIES), docs)]
  pairs.append({'query_id': 'q1', 'doc_id': 'long', 'query_text': QUERIES['q1'],
                'passage_text': LONG_PASSAGE, 'retrieval_rank': 7,
                'retrieval_score': 0.5})
  return pairs


def _scores_match(expected: dict, atol: float = 1e-4):
  """Matcher: every pair once, the input fields kept, scores within ``atol``."""
  def match(actual):
    got = {(r['query_id'], r['doc_id']): r for r in actual}
    if len(got) != len(actual) or set(got) != set(expected):
      raise BeamAssertException(f'pairs differ: {sorted(got)} vs {sorted(expected)}')
    for key, row in got.items():
      if abs(row['score'] - expected[key]) > atol:
        raise BeamAssertException(f'{key}: score {row["score"]} != {expected[key]}')
      if not isinstance(row['score'], float) or not isinstance(row['num_tokens'], int):
        raise BeamAssertException(f'{key}: types {row}')
  return match


def _score_pipeline(model_dir, pairs, max_length, activation='identity',
                    max_tokens_per_batch=256):
  p = TestPipeline()
  settings = InferenceSettings(
      device='cpu', max_tokens_per_batch=max_tokens_per_batch, max_batch_size=8,
      sort_window=100)
  out = p | beam.Create(pairs) | ScorePairs(
      model_dir, fingerprint_model_dir(model_dir), max_length, settings,
      activation=activation)
  return p, out


@pytest.mark.parametrize('activation, max_length', [
    ('identity', 512), ('identity', 24), ('sigmoid', 512)])
def test_score_pairs_equals_predict(tiny_cross_encoder_dir, activation, max_length):
  pairs = _pairs()
  kwargs = {} if max_length == 512 else {'max_length': max_length}
  reference = predict(
      tiny_cross_encoder_dir, [(r['query_text'], r['passage_text']) for r in pairs],
      activation, **kwargs)
  expected = {(r['query_id'], r['doc_id']): float(s) for r, s in zip(pairs, reference)}
  if activation == 'sigmoid':
    assert all(0 < s < 1 for s in expected.values())
  else:
    assert any(s < 0 for s in expected.values()) or any(s > 1 for s in expected.values())
  p, out = _score_pipeline(tiny_cross_encoder_dir, pairs, max_length, activation)
  assert_that(out['scored'], _scores_match(expected), label='Scores')
  assert_that(out[DEAD_LETTER_TAG], equal_to([]), label='NoDeadLetters')
  result = p.run()
  result.wait_until_finish()
  counters = {c.key.metric.name: c.committed for c in result.metrics().query(
      MetricsFilter().with_namespace(METRICS_NAMESPACE))['counters']}
  assert counters['rerank/pairs_scored'] == len(pairs)
  assert counters.get('rerank/texts_truncated', 0) == sum(
      _num_tokens(tiny_cross_encoder_dir, r) > max_length for r in pairs)
  assert counters['rerank/batches'] >= 2


def _num_tokens(model_dir, record) -> int:
  from transformers import AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(model_dir)
  return len(tokenizer(record['query_text'], record['passage_text'])['input_ids'])


def test_score_pairs_keeps_input_fields(tiny_cross_encoder_dir):
  pairs = _pairs()[:3] + _pairs()[-1:]
  lengths = [_num_tokens(tiny_cross_encoder_dir, r) for r in pairs]
  assert lengths[0] <= 24 < lengths[-1]
  p, out = _score_pipeline(tiny_cross_encoder_dir, pairs, 24)
  stripped = out['scored'] | beam.Map(
      lambda r: {k: v for k, v in r.items() if k != 'score'})
  assert_that(stripped, equal_to([
      dict(r, truncated=n > 24, num_tokens=min(n, 24))
      for r, n in zip(pairs, lengths)]), label='Fields')
  p.run().wait_until_finish()


def test_handler_run_inference_activations(tiny_cross_encoder_dir):
  pairs = _pairs()[:5]
  texts = [(r['query_text'], r['passage_text']) for r in pairs]
  for activation in ('identity', 'sigmoid', 'model'):
    handler = CrossEncoderHandler(
        tiny_cross_encoder_dir, InferenceSettings(device='cpu'), activation=activation)
    model = handler.load_model()
    scored = handler.run_inference(pairs, model)
    assert [r['doc_id'] for r in scored] == [r['doc_id'] for r in pairs]
    got = np.array([r['score'] for r in scored], dtype=np.float32)
    np.testing.assert_allclose(got, predict(tiny_cross_encoder_dir, texts, activation),
                               atol=1e-5)
    assert 'score' not in pairs[0]  # inputs are not mutated


def test_two_label_model_batches_become_dead_letters(tiny_two_label_cross_encoder_dir):
  pairs = _pairs()[:4]
  p, out = _score_pipeline(tiny_two_label_cross_encoder_dir, pairs, 512)
  reason = ('score_error: ValueError: the cross-encoder returns 2 scores per pair; '
            'ranking needs a 1-label model')
  assert_that(out['scored'], equal_to([]), label='NothingScored')
  assert_that(out[DEAD_LETTER_TAG], equal_to([
      {'stage': 'rerank/score', 'record_id': f'{r["query_id"]}\t{r["doc_id"]}',
       'reason': reason,
       'payload': f'{{"doc_id": "{r["doc_id"]}", "query_id": "{r["query_id"]}"}}'}
      for r in pairs]), label='DeadLetters')
  p.run().wait_until_finish()
  from transforms.core.errors import UserInputError
  with pytest.raises(UserInputError, match='has 2 labels'):
    inspect_cross_encoder(tiny_two_label_cross_encoder_dir)
